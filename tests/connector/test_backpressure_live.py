"""Backpressure on real servers (daphne, and uvicorn as `make serve` runs it): a client that
stops reading is closed once its server holds more than CC_MAX_SOCKET_BUFFER bytes for it,
the frames past that are not kept, and the server's memory comes back.

The reader that stops is a `websockets` client with `max_queue=1` whose frames nobody
receives: the library pauses reading its TCP connection, the kernel's buffers fill, and
what the relay goes on writing waits in the server. Loops are bounded by count; the
waits are timeouts, never assertions on speed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.connector.test_relay_e2e import Terminal, bearer, claimed, register
from tests.live import LiveServer, run_bounded, start_server

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

KIB = 1024
MIB = 1024 * KIB
FRAME = b"\x5a" * (64 * KIB)
FRAMES = 640  # 40 MiB: ten times the default bound, more than the kernel's buffers hold
# What the server may keep once the slow socket is gone: far below the 40 MiB it was sent,
# which it kept (and never gave back) before the bound.
RSS_SLACK = 16 * MIB
SCENARIO_TIMEOUT = 120
STEP_TIMEOUT = 30
SLOW_CLOSES = {4503, 1006}  # the close frame, or the TCP connection dropped under it
# glibc's malloc serves 64 KiB blocks from its heap once its adaptive mmap threshold has
# risen, and gives freed heap back only above the last block still in use: how much of a
# 40 MiB stream stays resident then depends on which small objects happened to land after
# it (2 to 19 MiB seen on one busy machine). With the threshold fixed below a frame, each
# frame's memory goes back to the system when Python frees it, and RSS measures what the
# server still holds, which is what these tests are about.
FRAMES_OFF_THE_HEAP = {"MALLOC_MMAP_THRESHOLD_": str(64 * KIB)}


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KIB
    raise AssertionError("no VmRSS")


@pytest.fixture(params=["daphne", "uvicorn"])
def server(request, tmp_path, transactional_db) -> Iterator[LiveServer]:
    live = start_server(tmp_path, server=request.param, **FRAMES_OFF_THE_HEAP)
    try:
        yield live
    finally:
        live.stop()
        print(f"--- {request.param} log ---\n{live.log()[-5000:]}")


async def device_socket(registration: dict, **options) -> ClientConnection:
    headers = registration["authorization_header"]
    return await connect(registration["connection_url"], additional_headers=headers, max_size=None, **options)


async def session_socket(claim: dict, token: str, **options) -> ClientConnection:
    return await connect(claim["session_url"], additional_headers=bearer(token), max_size=None, **options)


async def send_all(ws: ClientConnection, count: int) -> int:
    """Send `count` frames; how many were sent before the socket closed."""
    for sent in range(count):
        try:
            await ws.send(FRAME)
        except ConnectionClosed:
            return sent
    return count


async def drain_until_closed(ws: ClientConnection) -> int:
    """Read what the server still delivers, up to its close; how many frames came."""
    received = 0
    with pytest.raises(ConnectionClosed):
        for _ in range(FRAMES + 1):
            await asyncio.wait_for(ws.recv(), STEP_TIMEOUT)
            received += 1
    return received


async def warm_up(sender: ClientConnection, receiver: ClientConnection) -> None:
    # Frames that are read: the server's allocator reaches its working size before the
    # baseline is taken.
    for _ in range(32):
        await sender.send(FRAME)
        assert await asyncio.wait_for(receiver.recv(), STEP_TIMEOUT) == FRAME


async def memory_back(pid: int, baseline: int) -> int:
    """The server's RSS once it is within RSS_SLACK of `baseline`, or after 20 s."""
    now = rss(pid)
    for _ in range(200):
        if now < baseline + RSS_SLACK:
            break
        await asyncio.sleep(0.1)
        now = rss(pid)
    return now


def test_a_pos_session_socket_that_stops_reading_is_closed_and_the_server_gives_its_memory_back(server):
    terminal = Terminal()
    pid = server.process.pid

    async def scenario() -> None:
        registration = await register(server.ws_url, terminal, ["/"])
        device = await device_socket(registration)
        listener, claim = await claimed(server.ws_url, terminal.token, terminal.device.tsn)
        pos = await session_socket(claim, terminal.token, max_queue=1)
        await warm_up(device, pos)
        baseline = rss(pid)

        sent = await asyncio.wait_for(send_all(device, FRAMES), STEP_TIMEOUT)
        assert sent == FRAMES  # the device is never held up by the POS that does not read
        received = await drain_until_closed(pos)
        assert pos.close_code in SLOW_CLOSES, (pos.close_code, pos.close_reason)
        assert received < FRAMES  # the frames past the bound were not kept for it
        after = await memory_back(pid, baseline)
        assert after < baseline + RSS_SLACK, f"RSS {baseline // MIB} MiB before, {after // MIB} MiB after"

        # The device's socket lives on: a new session socket of the holder hears it (after
        # what the server had not read from the device yet when the new socket came).
        pos = await session_socket(claim, terminal.token)
        await device.send("still here")
        for _ in range(FRAMES + 1):
            if await asyncio.wait_for(pos.recv(), STEP_TIMEOUT) == "still here":
                break
        else:
            raise AssertionError("the device's frame never came")
        await asyncio.gather(pos.close(), device.close(), listener.close())

    run_bounded(scenario(), timeout=SCENARIO_TIMEOUT)


def test_a_device_socket_that_stops_reading_is_closed_with_1013_and_the_pos_then_with_4503(server):
    terminal = Terminal()
    pid = server.process.pid

    async def scenario() -> None:
        registration = await register(server.ws_url, terminal, ["/"])
        device = await device_socket(registration, max_queue=1)
        listener, claim = await claimed(server.ws_url, terminal.token, terminal.device.tsn)
        pos = await session_socket(claim, terminal.token)
        await warm_up(pos, device)
        baseline = rss(pid)

        sent = await asyncio.wait_for(send_all(pos, FRAMES), STEP_TIMEOUT)
        assert sent < FRAMES  # closed on the way: its frames could not be delivered
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(pos.recv(), STEP_TIMEOUT)
        assert pos.close_code == 4503, (pos.close_code, pos.close_reason)
        received = await drain_until_closed(device)
        assert device.close_code in {1013, 1006}, (device.close_code, device.close_reason)
        assert received < FRAMES
        after = await memory_back(pid, baseline)
        assert after < baseline + RSS_SLACK, f"RSS {baseline // MIB} MiB before, {after // MIB} MiB after"
        await listener.close()

    run_bounded(scenario(), timeout=SCENARIO_TIMEOUT)


@pytest.fixture
def device_and_pos_servers(tmp_path, transactional_db) -> Iterator[tuple[LiveServer, LiveServer]]:
    if connection.vendor != "postgresql" or not os.environ.get("REDIS_URL"):
        pytest.skip("two server processes need PostgreSQL (DATABASE_URL) and Redis (REDIS_URL)")
    servers = [start_server(tmp_path, server=kind, **FRAMES_OFF_THE_HEAP) for kind in ("uvicorn", "daphne")]
    try:
        yield servers[0], servers[1]
    finally:
        for live in servers:
            live.stop()
            print(f"--- log of the server on {live.port} ---\n{live.log()[-5000:]}")


def test_across_processes_a_pos_that_stops_reading_is_closed_and_its_server_gives_its_memory_back(
    device_and_pos_servers,
):
    # The device on one process, the POS on another: the frames cross the channel layer,
    # whose capacity bounds what waits in Redis; the POS's server bounds what waits for it.
    device_server, pos_server = device_and_pos_servers
    terminal = Terminal()

    async def scenario() -> None:
        registration = await register(device_server.ws_url, terminal, ["/"])
        device = await device_socket(registration)
        listener, claim = await claimed(pos_server.ws_url, terminal.token, terminal.device.tsn)
        pos = await session_socket(claim, terminal.token, max_queue=1)
        await warm_up(device, pos)
        baseline = rss(pos_server.process.pid)

        await asyncio.wait_for(send_all(device, FRAMES), STEP_TIMEOUT)
        received = await drain_until_closed(pos)
        assert pos.close_code in SLOW_CLOSES, (pos.close_code, pos.close_reason)
        assert received < FRAMES
        after = await memory_back(pos_server.process.pid, baseline)
        assert after < baseline + RSS_SLACK, f"RSS {baseline // MIB} MiB before, {after // MIB} MiB after"
        await asyncio.gather(device.close(), listener.close())

    run_bounded(scenario(), timeout=SCENARIO_TIMEOUT)
