"""Pings on demand and pongs (connector.relay.servers: `watch_pongs`, `ping`, `ping_timed_out`)
inside real servers: daphne, and uvicorn as `make serve` runs it (portal.serve's worker
command, websockets-sansio on uvloop), each serving tests/connector/ping_app.py.

Two keepalive settings per server, each a process of its own for this module: "quiet" (a ping
a minute, so that every ping and pong a test sees is its own) and "brisk" (a ping every
second, a short pong timeout). A client that answers pings is the `websockets` library; one
that does not is `RawClient`, a handshake written by hand and frames read and written by the
test only. Every wait is bounded; nothing asserts on speed beyond what the contract states
(a round trip on 127.0.0.1 well under a second).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from websockets.asyncio.client import ClientConnection, connect

from connector.relay.servers import PING_PAYLOAD_SIZE, PingUnsupported, ping, ping_timed_out, watch_pongs
from portal.serve import worker_command
from tests.live import ROOT, LiveServer, free_port

pytestmark = [pytest.mark.live]

APP = "tests.connector.ping_app:application"
STEP = 10.0  # seconds: the bound of one wait
KEEPALIVE = {"quiet": (60, 60), "brisk": (1, 2)}  # ping interval, pong timeout (seconds)
PING, PONG, CLOSE, TEXT = 0x9, 0xA, 0x8, 0x1


def server_command(server: str, port: int, interval: int, timeout: int) -> list[str]:
    if server == "daphne":
        return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)] + [
            "--ping-interval",
            str(interval),
            "--ping-timeout",
            str(timeout),
            APP,
        ]
    # `make serve`'s own uvicorn command, with this module's application and keepalive.
    with mock.patch.dict(os.environ, {"CC_PING_INTERVAL": str(interval), "CC_PING_TIMEOUT": str(timeout)}):
        command = worker_command("127.0.0.1", port)
    assert command.count("portal.asgi:application") == 1 and "websockets-sansio" in command
    return [APP if part == "portal.asgi:application" else part for part in command]


def start(tmp_dir: Path, command: list[str], port: int) -> LiveServer:
    log_path = tmp_dir / f"server-{port}.log"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings", "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    live = LiveServer(process=process, port=port, log_path=log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{live.log()}")
        try:
            urllib.request.urlopen(f"{live.http_url}/report/none", timeout=1)
        except urllib.error.HTTPError:
            return live  # the application answered (404)
        except OSError:
            time.sleep(0.1)
    live.stop()
    raise RuntimeError(f"server did not answer within 30 s:\n{live.log()}")


def serve(kind: str, request, tmp_path_factory) -> Iterator[LiveServer]:
    port = free_port()
    live = start(
        tmp_path_factory.mktemp(f"{request.param}-{kind}"), server_command(request.param, port, *KEEPALIVE[kind]), port
    )
    yield live
    live.stop()
    print(f"--- {request.param} ({kind}) log ---\n{live.log()[-5000:]}")
    assert "Traceback" not in live.log()


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def quiet(request, tmp_path_factory) -> Iterator[LiveServer]:
    yield from serve("quiet", request, tmp_path_factory)


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def brisk(request, tmp_path_factory) -> Iterator[LiveServer]:
    yield from serve("brisk", request, tmp_path_factory)


# --- clients ------------------------------------------------------------------------------------


class RawClient:
    """A WebSocket client by hand: it does the handshake, then only what the test does. It
    never answers a ping unless told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: LiveServer, path: str) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        assert len(payload) < 126
        self.writer.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    async def frame(self) -> tuple[int, bytes]:
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack(">Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(length)

    async def next_of(self, wanted: Callable[[int, bytes], bool]) -> tuple[int, bytes]:
        async with asyncio.timeout(STEP):
            while True:
                opcode, payload = await self.frame()
                if wanted(opcode, payload):
                    return opcode, payload

    async def answer(self, key: str) -> Any:
        """The application's next JSON message with `key`; pings and other messages pass."""
        _, payload = await self.next_of(lambda op, data: op == TEXT and key in json.loads(data))
        return json.loads(payload)[key]

    async def our_pings(self, count: int) -> list[bytes]:
        """The payloads of the next `count` pings of `ping` (not the servers' keepalive)."""
        return [
            (await self.next_of(lambda op, data: op == PING and len(data) == PING_PAYLOAD_SIZE))[1]
            for _ in range(count)
        ]

    async def until_dropped(self) -> None:
        async with asyncio.timeout(3 * STEP):
            while True:
                try:
                    opcode, _ = await self.frame()
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if opcode == CLOSE:
                    return  # read no further: the server drops the connection after its close frame

    def abort(self) -> None:
        self.writer.transport.abort()


async def websocket(server: LiveServer, path: str) -> ClientConnection:
    return await connect(f"{server.ws_url}{path}", ping_interval=None, open_timeout=STEP)


async def next_message(ws: ClientConnection, key: str) -> dict:
    async with asyncio.timeout(STEP):
        while True:
            message = json.loads(await ws.recv())
            if key in message:
                return message


def socket_path() -> tuple[str, str]:
    name = uuid.uuid4().hex
    return name, f"/ws/{name}"


async def report_when(server: LiveServer, name: str, ready: Callable[[dict], bool]) -> dict:
    """The application's report on socket `name`, once `ready` says it is complete."""
    deadline = time.monotonic() + STEP
    while True:
        with urllib.request.urlopen(f"{server.http_url}/report/{name}", timeout=STEP) as response:
            found = json.loads(response.read())
        if ready(found) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


def went(report: dict) -> bool:
    return report["disconnected"] is not None


# --- a client that answers pings ------------------------------------------------------------------


async def test_a_client_that_answers_gets_its_round_trip_in_milliseconds(quiet):
    name, path = socket_path()
    async with await websocket(quiet, path) as ws:
        hello = await next_message(ws, "hello")
        assert hello["watching"] is True
        await ws.send("ping 5")
        rtt = (await next_message(ws, "ping"))["ping"]
    assert isinstance(rtt, float) and 0 <= rtt < 1000
    report = await report_when(quiet, name, went)
    assert report["pings"] == [rtt]
    assert report["disconnected"]["ping_timed_out"] is False


async def test_concurrent_pings_on_one_socket_each_get_their_own_answer(quiet):
    _, path = socket_path()
    async with await websocket(quiet, path) as ws:
        await next_message(ws, "hello")
        await ws.send("pings 5 5")
        rtts = (await next_message(ws, "pings"))["pings"]
    assert len(rtts) == 5
    assert all(isinstance(rtt, float) and 0 <= rtt < 1000 for rtt in rtts), rtts


async def test_a_pong_to_the_latest_ping_answers_the_earlier_ones_too(quiet):
    # RFC 6455 5.5.3: a peer may answer only the most recent of several pings.
    _, path = socket_path()
    client = await RawClient.open(quiet, path)
    try:
        client.send(TEXT, b"pings 3 5")
        payloads = await client.our_pings(3)
        assert len(set(payloads)) == 3  # a fresh payload each
        client.send(PONG, payloads[-1])
        rtts = await client.answer("pings")
    finally:
        client.abort()
    assert len(rtts) == 3 and all(isinstance(rtt, float) and rtt >= 0 for rtt in rtts), rtts


async def test_a_pong_to_the_first_ping_leaves_the_later_ones_waiting(quiet):
    _, path = socket_path()
    client = await RawClient.open(quiet, path)
    try:
        client.send(TEXT, b"pings 3 1")
        payloads = await client.our_pings(3)
        client.send(PONG, payloads[0])
        client.send(PONG, b"not one of ours")
        rtts = await client.answer("pings")
    finally:
        client.abort()
    assert isinstance(rtts[0], float) and rtts[1:] == [None, None]


# --- a client that does not answer ----------------------------------------------------------------


async def test_a_client_that_does_not_answer_gets_none_after_the_timeout(quiet):
    name, path = socket_path()
    client = await RawClient.open(quiet, path)
    try:
        client.send(TEXT, b"ping 0.5")
        assert await client.answer("ping") is None
        report = await report_when(quiet, name, lambda found: bool(found["pings"]))
        assert report["pings"] == [None] and report["disconnected"] is None  # the timeout, not a close
    finally:
        client.abort()


async def test_a_ping_waiting_when_the_socket_goes_ends_with_none_at_once(quiet):
    name, path = socket_path()
    client = await RawClient.open(quiet, path)
    client.send(TEXT, b"ping 60")
    await client.our_pings(1)  # the ping is out and waiting
    client.abort()
    # Within STEP (10 s), far before the ping's own 60 s.
    report = await report_when(quiet, name, lambda found: went(found) and bool(found["pings"]))
    assert went(report), report
    assert report["pings"] == [None]


# --- pongs ------------------------------------------------------------------------------------------


async def test_unsolicited_pongs_call_the_listener_on_the_applications_thread_and_loop(quiet):
    _, path = socket_path()
    async with await websocket(quiet, path) as ws:
        await next_message(ws, "hello")
        seen = []
        for payload in (b"one", b"two", b"three"):
            await ws.pong(payload)
            seen.append(await next_message(ws, "pong"))
    assert [pong["pong"] for pong in seen] == [1, 2, 3]
    assert all(pong["on_app_thread"] and pong["in_app_loop"] for pong in seen), seen


async def test_pongs_to_the_servers_keepalive_call_the_listener(brisk):
    _, path = socket_path()
    async with await websocket(brisk, path) as ws:  # websockets answers every ping
        await next_message(ws, "hello")
        seen = await next_message(ws, "pong")  # sending nothing: only the keepalive pings
    assert seen["pong"] == 1 and seen["on_app_thread"] and seen["in_app_loop"]


async def test_our_pings_leave_the_servers_keepalive_working(brisk):
    name, path = socket_path()
    async with await websocket(brisk, path) as ws:
        await next_message(ws, "hello")
        await ws.send("pings 2 5")
        assert None not in (await next_message(ws, "pings"))["pings"]
        # Three keepalive rounds answered after ours (each longer than the pong timeout
        # would allow a broken keepalive): the socket is still open and pings still work.
        pongs = 0
        while pongs < 2 + 3:
            pongs = (await next_message(ws, "pong"))["pong"]
        await ws.send("ping 5")
        rtt = (await next_message(ws, "ping"))["ping"]
        assert isinstance(rtt, float)
    report = await report_when(brisk, name, went)
    assert report["disconnected"]["ping_timed_out"] is False


# --- why the socket went ----------------------------------------------------------------------------


async def test_a_socket_dropped_by_the_keepalive_timeout_reports_ping_timed_out(brisk):
    name, path = socket_path()
    client = await RawClient.open(brisk, path)
    try:
        await client.until_dropped()  # reads the keepalive pings, never answers them
    finally:
        client.abort()
    report = await report_when(brisk, name, went)
    assert report["disconnected"]["ping_timed_out"] is True, report


async def test_a_socket_closed_by_its_client_does_not_report_ping_timed_out(brisk):
    name, path = socket_path()
    async with await websocket(brisk, path) as ws:
        await next_message(ws, "hello")
    report = await report_when(brisk, name, went)
    assert report["disconnected"] == {"code": 1000, "ping_timed_out": False}


async def test_a_connection_the_client_drops_does_not_report_ping_timed_out(quiet):
    name, path = socket_path()
    client = await RawClient.open(quiet, path)
    await client.answer("hello")
    client.abort()
    report = await report_when(quiet, name, went)
    assert report["disconnected"]["ping_timed_out"] is False, report


# --- servers without the reach ------------------------------------------------------------------------


async def test_without_the_servers_reach_nothing_is_watched_and_ping_refuses():
    async def plain_send(message: dict) -> None: ...

    called: list[bool] = []
    assert watch_pongs(plain_send, lambda: called.append(True)) is False
    with pytest.raises(PingUnsupported):
        await ping(plain_send, timeout=1)
    assert ping_timed_out(plain_send) is False
    assert called == []
