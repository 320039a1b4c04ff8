// A plain relay on Node's `ws`: the reference the frame path is measured against (issue 13:
// Cloud Connector's server CPU per round trip at most 1.3 times this relay's).
//
// The same protocol as bench/plain_relay.py: a device connects to /device/<id>, a POS to
// /pos/<id>; every message from one goes to the other unchanged (text stays text, binary stays
// binary), no compression, messages up to 2 MiB (a larger one closes its sender with 1009).
// Any other path is closed with 4404. A message for a peer that is not connected is dropped.
//
//     node bench/node_relay/relay.js --port 9001 [--host 127.0.0.1]
"use strict";

const { WebSocketServer } = require("ws");

const MAX_SIZE = 2 ** 21;

function option(name, fallback) {
  const index = process.argv.indexOf(`--${name}`);
  return index >= 0 && index + 1 < process.argv.length ? process.argv[index + 1] : fallback;
}

const host = option("host", "127.0.0.1");
const port = Number(option("port", "9001"));
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  console.error(`relay.js: --port must be a port number, not ${option("port")}`);
  process.exit(2);
}

// session id -> { device, pos }: the two sockets of a pair, whichever is connected.
const peers = new Map();

const server = new WebSocketServer({ host, port, perMessageDeflate: false, maxPayload: MAX_SIZE });

server.on("connection", (ws, request) => {
  const parts = new URL(request.url, "http://relay").pathname.replace(/^\/+|\/+$/g, "").split("/");
  if (parts.length !== 2 || !["device", "pos"].includes(parts[0]) || !parts[1]) {
    ws.close(4404);
    return;
  }
  const [side, session] = parts;
  const other = side === "device" ? "pos" : "device";
  let pair = peers.get(session);
  if (pair === undefined) {
    pair = {};
    peers.set(session, pair);
  }
  pair[side] = ws;
  ws.on("message", (data, isBinary) => {
    const peer = pair[other];
    if (peer !== undefined) {
      peer.send(data, { binary: isBinary });
    }
  });
  // A protocol error (a message over the limit, bad UTF-8): ws closes the socket with the
  // matching code (1009, 1007) after this event, which must have a listener or it would end
  // the whole process.
  ws.on("error", () => {});
  ws.on("close", () => {
    if (pair[side] === ws) {
      delete pair[side];
    }
    if (pair.device === undefined && pair.pos === undefined) {
      peers.delete(session);
    }
  });
});

server.on("error", (error) => {
  console.error(`relay.js: ${error.message}`);
  process.exit(1);
});

// SIGTERM (the bench stopping the server): exit at once, as the Python relays do.
process.on("SIGTERM", () => process.exit(0));
