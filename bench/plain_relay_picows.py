"""A plain relay on picows (a Cython WebSocket library) and uvloop: the fastest Python relay
the bench knows, beside bench/plain_relay.py and the Node `ws` relay (bench/node_relay/).

The same protocol as bench/plain_relay.py: a device connects to /device/<id>, a POS to
/pos/<id>; every data frame from one goes to the other unchanged (opcode, payload and FIN
bit, so a fragmented message stays fragmented), no compression, frames up to 2 MiB. Any
other path is refused with 404 at the handshake. A frame for a peer that is not connected
is dropped, as the other relays drop it. No bound on what a slow peer leaves unread: the
load generator reads every echo before it sends again.

    python bench/plain_relay_picows.py --port 9001
"""

from __future__ import annotations

import argparse

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

MAX_SIZE = 2**21
DATA = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION)
SIDES = (b"device", b"pos")
peers: dict[bytes, dict[str, Relay]] = {}


class Relay(WSListener):
    """One socket of a pair: forwards its data frames to the socket on the other side."""

    def __init__(self, side: str, session: bytes) -> None:
        self.side = side
        self.other = "pos" if side == "device" else "device"
        self.session = session
        self.pair = peers.setdefault(session, {})
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.pair[self.side] = self

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in DATA:
            peer = self.pair.get(self.other)
            if peer is not None and peer.transport is not None:
                # The payload view is valid only inside this callback; send() copies it out.
                peer.transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.pair.get(self.side) is self:
            del self.pair[self.side]
        if not self.pair:
            peers.pop(self.session, None)


def route(request: WSUpgradeRequest) -> Relay | None:
    """/device/<id> or /pos/<id>; None (404) for anything else."""
    parts = request.path.strip(b"/").split(b"/")
    if len(parts) != 2 or parts[0] not in SIDES or not parts[1]:
        return None
    return Relay(parts[0].decode(), parts[1])


async def main(host: str, port: int) -> None:
    server = await ws_create_server(route, host, port, max_frame_size=MAX_SIZE)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args()
    uvloop.run(main(args.host, args.port))
