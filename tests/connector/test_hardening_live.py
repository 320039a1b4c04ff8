"""Hostile control messages (issue 10, item 4) and WebSocket paths outside the routes (item
6) against real servers: daphne, and the production uvicorn worker (portal.serve), each
a process of its own for this module. A client is the `websockets` library; every answer
must be strict JSON, the socket must end (or stay open) as the contract says, and the
server's log must show no traceback and no "No route found".
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from tests.connector.test_hardening_input import HOSTILE, strict_json, the_error
from tests.factories import make_access_token, make_pos, make_usable_device
from tests.live import LiveServer, run_bounded, start_server

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

TIMEOUT = 60
DEVICE_LISTENER = "/cloud-connector/v1/device-listener"
POS_LISTENER = "/cloud-connector/v1/pos-listener"
OUTSIDE_THE_ROUTES = ["/", "/foo", "/api/v1/", "/admin/", "/cloud-connector", "/%FF", "/a/%ED%A0%80"]
NOT_UTF8 = b'{"request":{"flow_id":"f\xff","resource":{"action":"devices"}}}'


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def server(request, django_db_setup, tmp_path_factory) -> Iterator[LiveServer]:
    # Invalid credentials count towards 429; this module's messages never get that far,
    # but a limit must not decide what they are answered.
    live = start_server(
        tmp_path_factory.mktemp(request.param),
        server=request.param,
        CC_FAILED_REGISTRATION_LIMIT="100000",
        CC_FAILED_REGISTRATION_ADDRESS_LIMIT="100000",
    )
    yield live
    live.stop()


@contextmanager
def logged_cleanly(server: LiveServer) -> Iterator[None]:
    """The server logs no traceback and no routing failure meanwhile."""
    start = server.log_path.stat().st_size
    yield
    with server.log_path.open("rb") as log:
        log.seek(start)
        written = log.read().decode(errors="replace")
    print(f"--- server log during this test ---\n{written[-20000:]}")
    assert server.process.poll() is None, "the server died"
    assert "Traceback" not in written
    assert "No route found" not in written


def run(server: LiveServer, scenario) -> None:
    with logged_cleanly(server):
        run_bounded(scenario, timeout=TIMEOUT)


def pos_token() -> str:
    device = make_usable_device()
    return make_access_token(make_pos(store=device.store).application)


async def close_code(ws: ClientConnection) -> int | None:
    """The code the server closed with, once it has (the client answers its close)."""
    await asyncio.wait_for(ws.wait_closed(), 10)
    return ws.close_code


async def answer(ws: ClientConnection, message: str | bytes) -> tuple[Any, int, str]:
    await ws.send(message)
    return the_error(await asyncio.wait_for(ws.recv(), 10))


def test_device_listener_answers_each_hostile_registration_with_400_then_closes_1000(server):
    async def scenario() -> None:
        for name, message, flow_id in HOSTILE:
            async with connect(server.ws_url + DEVICE_LISTENER, max_size=None) as ws:
                assert await answer(ws, message) == (flow_id, 400, "invalid_request"), name
                assert await close_code(ws) == 1000, name

    run(server, scenario())


def test_pos_listener_answers_each_hostile_request_with_400_and_stays_open(server):
    token = pos_token()

    async def scenario() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with connect(server.ws_url + POS_LISTENER, additional_headers=headers, max_size=None) as ws:
            for name, message, flow_id in HOSTILE:
                assert await answer(ws, message) == (flow_id, 400, "invalid_request"), name
            assert ws.state is State.OPEN
            await ws.send('{"request":{"flow_id":"last","resource":{"action":"devices"}}}')
            response = strict_json(await asyncio.wait_for(ws.recv(), 10))["response"]
            assert (response["flow_id"], response["resource"]["status_code"]) == ("last", 200)

    run(server, scenario())


@pytest.mark.parametrize("path", [DEVICE_LISTENER, POS_LISTENER])
def test_a_text_frame_that_is_not_utf8_is_closed_by_the_server_with_1007_without_a_traceback(server, path):
    # RFC 6455 §8.1: the server fails such a connection itself; the frame never reaches the
    # application, so no 400 can answer it.
    token = pos_token()

    async def scenario() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with connect(server.ws_url + path, additional_headers=headers) as ws:
            await ws.send(NOT_UTF8, text=True)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert await close_code(ws) == 1007

    run(server, scenario())


def test_a_socket_on_a_path_outside_the_routes_is_closed_with_4404(server):
    async def scenario() -> None:
        for path in OUTSIDE_THE_ROUTES:
            async with connect(server.ws_url + path) as ws:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                assert await close_code(ws) == 4404, path

    run(server, scenario())
