"""The baseline: a plain relay written directly on the `websockets` library.

A device connects to /device/<id>, a POS to /pos/<id>; every frame from one goes to the
other unchanged (no compression, frames up to 2 MiB). No authentication, no database, no
framework: the ceiling a Python relay can reach on this machine, against which Cloud
Connector is measured in the same run, on asyncio's own event loop or on uvloop (the loop
`make serve` runs Cloud Connector on).

    python bench/plain_relay.py --port 9001 [--loop uvloop]
"""

from __future__ import annotations

import argparse
import asyncio

from websockets.asyncio.server import ServerConnection, serve

MAX_SIZE = 2**21
peers: dict[str, dict[str, ServerConnection]] = {}


async def handler(ws: ServerConnection) -> None:
    parts = ws.request.path.strip("/").split("/")
    if len(parts) != 2 or parts[0] not in ("device", "pos"):
        await ws.close(4404)
        return
    side, session = parts
    other = "pos" if side == "device" else "device"
    pair = peers.setdefault(session, {})
    pair[side] = ws
    try:
        async for frame in ws:
            peer = pair.get(other)
            if peer is not None:
                await peer.send(frame)
    finally:
        if pair.get(side) is ws:
            del pair[side]
        if not pair:
            peers.pop(session, None)


async def main(host: str, port: int) -> None:
    async with serve(handler, host, port, max_size=MAX_SIZE, compression=None):
        await asyncio.Future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args.host, args.port))
    else:
        asyncio.run(main(args.host, args.port))
