"""Authorisation changes against a real daphne process (the `live` fixture) with the
`websockets` client: a rotation through the REST API closes the terminal registered with
the old secret, a move through the REST API releases the old store POS's claim, and a
replaced device socket is told to the claim holder. The contract's 1 s is used as a
timeout from the REST answer on, never as a timing assertion. The two-process case runs
on PostgreSQL with Redis only (tests/connector/test_fault_tolerance.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import requests
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from connector.models import DeviceSession
from tests.connector.test_fault_tolerance import FAST_HEARTBEAT, require_shared_backends
from tests.connector.test_relay_e2e import (
    Terminal,
    bearer,
    claimed,
    control,
    device_sockets,
    next_event,
    provisioning_token,
    register,
    run,
    server_log_on_failure,  # noqa: F401 - an autouse fixture, used here too
    session_sockets,
)
from tests.factories import StoreFactory, make_access_token, make_pos
from tests.live import LiveServer, start_server

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

CONTRACT_BOUND = 1.0  # §8: closed within 1 s


async def closed_within_bound(ws: ClientConnection, code: int) -> None:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), CONTRACT_BOUND)
    assert ws.close_code == code, (ws.close_code, ws.close_reason)


def api(method: str, live: LiveServer, path: str, token: str, **kwargs) -> requests.Response:
    return requests.request(method, f"{live.http_url}/api/v1/{path}", headers=bearer(token), timeout=30, **kwargs)


def session_row(session_id: str) -> DeviceSession:
    from django.db import connection

    try:
        return DeviceSession.objects.get(pk=session_id)
    finally:
        connection.close()  # ran in a worker thread


def test_rotating_the_pos_secret_through_the_rest_api_closes_its_terminal_with_4410(live):
    terminal = Terminal()
    admin = provisioning_token(terminal)

    async def scenario() -> None:
        registration = await register(live.ws_url, terminal, ["/"])
        devices = await device_sockets(registration, ["/"])
        answer = await asyncio.to_thread(api, "POST", live, f"pos/{terminal.pos.pk}/rotate-secret/", admin)
        assert answer.status_code == 200, answer.text
        await closed_within_bound(devices["/"], 4410)
        # The leaked secret registers nothing any more; the new one does.
        async with connect(f"{live.ws_url}/cloud-connector/v1/device-listener") as ws:
            refused = await control(
                ws, {"tsn": terminal.device.tsn, "custom_registration_data": terminal.registration_data}
            )
        assert refused["error"] == "invalid_client"
        terminal.pos.client_secret = answer.json()["client_secret"]
        again = await register(live.ws_url, terminal, ["/"])
        assert again["session_id"] != registration["session_id"]

    run(scenario())


def test_moving_the_device_through_the_rest_api_releases_the_old_store_pos_claim(live):
    terminal = Terminal()
    admin = provisioning_token(terminal)
    new_store = StoreFactory(merchant=terminal.device.merchant)
    newcomer = make_pos(store=new_store)
    newcomer_token = make_access_token(newcomer.application)

    async def scenario() -> None:
        registration = await register(live.ws_url, terminal, ["/"])
        devices = await device_sockets(registration, ["/"])
        listener, claim = await claimed(live.ws_url, terminal.token, terminal.device.tsn)
        poses = await session_sockets(claim, terminal.token, ["/"])
        answer = await asyncio.to_thread(
            api, "PATCH", live, f"devices/{terminal.device.pk}/", admin, json={"store": new_store.pk}
        )
        assert answer.status_code == 200, answer.text
        await closed_within_bound(poses["/"], 4410)
        session = await asyncio.to_thread(session_row, claim["session_id"])
        assert (session.state, session.claimed_by_id) == ("online", None)
        refused = await control(listener, {"action": "claim", "tsn": terminal.device.tsn}, flow_id="again")
        assert (refused["status_code"], refused["error"]) == (404, "unknown_device")
        other, again = await claimed(live.ws_url, newcomer_token, terminal.device.tsn)
        assert again["session_id"] == claim["session_id"]
        # The old holder's listener hears nothing of the device going away; the new one does.
        await devices["/"].close()
        assert (await next_event(other))["type"] == "device_offline"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(listener.recv(), 0.5)
        await asyncio.gather(listener.close(), other.close())

    run(scenario())


def test_a_replaced_device_socket_is_told_to_the_claim_holder(live):
    terminal = Terminal()

    async def scenario() -> None:
        registration = await register(live.ws_url, terminal, ["/upp/v1/transaction"])
        first = await device_sockets(registration, ["/upp/v1/transaction"])
        listener, claim = await claimed(live.ws_url, terminal.token, terminal.device.tsn)
        again = await register(live.ws_url, terminal, ["/upp/v1/transaction"])
        second = await device_sockets(again, ["/upp/v1/transaction"])
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(first["/upp/v1/transaction"].recv(), 10)
        assert first["/upp/v1/transaction"].close_code == 4409
        assert await next_event(listener) == {
            "type": "device_replaced",
            "session_id": claim["session_id"],
            "tsn": terminal.device.tsn,
            "endpoint": "/upp/v1/transaction",
        }
        await asyncio.gather(second["/upp/v1/transaction"].close(), listener.close())

    run(scenario())


def test_a_rotation_on_one_process_closes_the_terminal_on_another(live, tmp_path: Path):
    require_shared_backends()
    terminal = Terminal()
    admin = provisioning_token(terminal)
    servers = [start_server(tmp_path, **FAST_HEARTBEAT) for _ in range(2)]
    a, b = servers
    try:

        async def scenario() -> None:
            registration = await register(a.ws_url, terminal, ["/"])
            devices = await device_sockets(registration, ["/"])
            answer = await asyncio.to_thread(api, "POST", b, f"pos/{terminal.pos.pk}/rotate-secret/", admin)
            assert answer.status_code == 200, answer.text
            await closed_within_bound(devices["/"], 4410)

        run(scenario())
    finally:
        for server in servers:
            server.stop()
