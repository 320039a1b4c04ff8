"""A tiny ASGI application that tests/connector/test_server_ping.py serves with real daphne and
uvicorn processes, so that connector.relay.servers' `watch_pongs`, `ping` and `ping_timed_out`
run inside the servers they reach into, without the project's routing, database or channel
layer in the way.

A WebSocket on `/ws/<id>` is accepted at once and watched for pongs; the application answers
in JSON text frames:

- at once, `{"hello": id, "watching": bool}` (what `watch_pongs` returned);
- for every pong, `{"pong": count, "on_app_thread": bool, "in_app_loop": bool}`: whether the
  callback ran on the thread and inside the event loop of the application;
- to `ping <timeout>`, `{"ping": rtt_ms | null}`; to `pings <n> <timeout>`, `{"pings": [...]}`,
  n pings at once.

`GET /report/<id>` answers what became of socket `id`: the ping results in the order they
ended (also those that ended after the socket went) and, once it went, the disconnect code
and `ping_timed_out`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any

from connector.relay.servers import ping, ping_timed_out, watch_pongs

REPORTS: dict[str, dict[str, Any]] = {}
WIND_DOWN = 5.0  # seconds a socket's pending pings get to end after it went


async def application(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
    elif scope["type"] == "http":
        await report(scope, receive, send)


async def report(scope: dict, receive: Any, send: Any) -> None:
    found = REPORTS.get(scope["path"].removeprefix("/report/"))
    status, body = (200, json.dumps(found).encode()) if found is not None else (404, b"null")
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def websocket(scope: dict, receive: Any, send: Any) -> None:
    record: dict[str, Any] = {"pings": [], "disconnected": None}
    REPORTS[scope["path"].rsplit("/", 1)[-1]] = record
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    loop = asyncio.get_running_loop()
    outbox: asyncio.Queue[dict] = asyncio.Queue()
    watching = watch_pongs(send, _pong_counter(outbox, loop, threading.get_ident()))
    outbox.put_nowait({"hello": scope["path"], "watching": watching})
    writer = asyncio.ensure_future(_write(outbox, send))
    commands: set[asyncio.Task] = set()
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            record["disconnected"] = {"code": message.get("code"), "ping_timed_out": ping_timed_out(send)}
            break
        task = asyncio.ensure_future(_command(message.get("text") or "", send, record, outbox))
        commands.add(task)
        task.add_done_callback(commands.discard)
    if commands:
        await asyncio.wait(commands, timeout=WIND_DOWN)
    writer.cancel()


def _pong_counter(outbox: asyncio.Queue, loop: asyncio.AbstractEventLoop, app_thread: int) -> Any:
    count = 0

    def on_pong() -> None:
        nonlocal count
        count += 1
        try:
            in_app_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            in_app_loop = False
        seen = {"pong": count, "on_app_thread": threading.get_ident() == app_thread, "in_app_loop": in_app_loop}
        # Thread-safe on purpose: were the callback on another thread, the test must see it
        # say so rather than hang.
        loop.call_soon_threadsafe(outbox.put_nowait, seen)

    return on_pong


async def _command(text: str, send: Any, record: dict, outbox: asyncio.Queue) -> None:
    name, *arguments = text.split()
    if name == "ping":
        rtt = await ping(send, timeout=float(arguments[0]))
        record["pings"].append(rtt)
        outbox.put_nowait({"ping": rtt})
    elif name == "pings":
        count, timeout = int(arguments[0]), float(arguments[1])
        rtts = await asyncio.gather(*(ping(send, timeout=timeout) for _ in range(count)))
        record["pings"].extend(rtts)
        outbox.put_nowait({"pings": rtts})


async def _write(outbox: asyncio.Queue, send: Any) -> None:
    while True:
        message = await outbox.get()
        with contextlib.suppress(Exception):  # the socket went; the report keeps the results
            await send({"type": "websocket.send", "text": json.dumps(message)})
