"""The baseline: a plain relay written directly on the `websockets` library.

A device connects to /device/<id>, a POS to /pos/<id>; every frame from one goes to the
other unchanged. No authentication, no database, no framework: the ceiling a Python relay
can reach on this machine, against which Cloud Connector is measured in the same run.

    python bench/plain_relay.py --port 9001
"""

from __future__ import annotations

import argparse
import asyncio

from websockets.asyncio.server import ServerConnection, serve

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
    async with serve(handler, host, port, max_size=2**20, compression=None):
        await asyncio.Future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
