"""The relay against a real daphne process (the `live` fixture) with the `websockets`
client library: the main flow, bulk frames, the error rows that need a real server, and
revocations triggered inside the server (through its REST API and token revocation).

Tests build their data in the test process (committed, the server shares the database)
and run one asyncio scenario each.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import weakref
from collections.abc import Coroutine
from typing import Any

import pytest
import requests
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.connector.relay_world import EventNumbers
from tests.factories import make_access_token, make_pos, make_provisioning_client, make_usable_device
from tests.live import LiveServer, run_bounded, server_log_printed, start_server

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

TIMEOUT = 60
MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def server_log_on_failure(live: LiveServer):
    with server_log_printed(live):
        yield


def run(scenario: Coroutine[Any, Any, None]) -> None:
    run_bounded(scenario, timeout=TIMEOUT)


class Terminal:
    """A store with a usable terminal and its POS credential, in the shared database."""

    def __init__(self) -> None:
        self.device = make_usable_device()
        self.pos = make_pos(store=self.device.store)
        self.token = make_access_token(self.pos.application)
        self.domain = self.device.tenant.domain

    @property
    def registration_data(self) -> str:
        # As a terminal's configuration file holds it: a JSON object in a string.
        return json.dumps({"client_id": self.pos.application.client_id, "client_secret": self.pos.client_secret})


def provisioning_token(terminal: Terminal) -> str:
    return make_access_token(make_provisioning_client(tenant=terminal.device.tenant))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def control(ws: ClientConnection, resource: dict, flow_id: str = "1") -> dict:
    await ws.send(json.dumps({"request": {"flow_id": flow_id, "resource": resource}}))
    while True:
        message = json.loads(await ws.recv())
        if "response" in message:
            assert message["response"]["flow_id"] == flow_id
            return message["response"]["resource"]


_numbers: weakref.WeakKeyDictionary[ClientConnection, EventNumbers] = weakref.WeakKeyDictionary()


async def next_event(ws: ClientConnection) -> dict:
    """The next event on a listener socket, its v1.1 envelope checked and taken off."""
    message = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert "event" in message, message
    return _numbers.setdefault(ws, EventNumbers()).checked(message["event"]["resource"])


async def closed_with(ws: ClientConnection, code: int) -> None:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == code, (ws.close_code, ws.close_reason)


async def register(base: str, terminal: Terminal, endpoints: list[str]) -> dict:
    async with connect(f"{base}/cloud-connector/v1/device-listener/") as ws:
        resource = await control(
            ws,
            {
                "tsn": terminal.device.serial,
                "endpoints": endpoints,
                "custom_registration_data": terminal.registration_data,
            },
        )
        await closed_with(ws, 1000)
    assert resource["status"] == "ok", resource
    return resource


async def device_sockets(registration: dict, endpoints: list[str]) -> dict[str, ClientConnection]:
    return {
        endpoint: await connect(
            registration["connection_url"] + ("" if endpoint == "/" else endpoint),
            additional_headers=registration["authorization_header"],
            max_size=None,
        )
        for endpoint in endpoints
    }


async def claimed(base: str, token: str, tsn: str) -> tuple[ClientConnection, dict]:
    listener = await connect(f"{base}/cloud-connector/v1/pos-listener", additional_headers=bearer(token))
    claim = await control(listener, {"action": "claim", "tsn": tsn})
    assert claim["status"] == "ok", claim
    return listener, claim


async def session_sockets(claim: dict, token: str, endpoints: list[str]) -> dict[str, ClientConnection]:
    return {
        endpoint: await connect(
            claim["session_url"] + ("" if endpoint == "/" else endpoint),
            additional_headers=bearer(token),
            max_size=None,
        )
        for endpoint in endpoints
    }


async def pair(live: LiveServer, terminal: Terminal, endpoints: list[str], token: str | None = None):
    token = token or terminal.token
    registration = await register(live.ws_url, terminal, endpoints)
    devices = await device_sockets(registration, endpoints)
    listener, claim = await claimed(live.ws_url, token, terminal.device.tsn)
    poses = await session_sockets(claim, token, endpoints)
    return registration, devices, listener, claim, poses


async def close_all(*sockets: ClientConnection) -> None:
    await asyncio.gather(*(ws.close() for ws in sockets))


def test_the_main_flow_with_a_token_from_the_token_endpoint(live):
    terminal = Terminal()
    answer = requests.post(
        f"{live.http_url}/oauth2/v1/{terminal.domain}/token",
        data={"grant_type": "client_credentials", "scope": "cloud-connector"},
        auth=(terminal.pos.application.client_id, terminal.pos.client_secret),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]

    async def scenario() -> None:
        registration, devices, listener, claim, poses = await pair(live, terminal, ["/upp/v1/transaction"], token)
        assert registration["connection_url"] == f"{live.ws_url}/cloud-connector/v1/device/{claim['session_id']}"
        assert claim["session_url"] == f"{live.ws_url}/cloud-connector/v1/session/{claim['session_id']}"
        assert claim["tsn"] == terminal.device.tsn
        pos, device = poses["/upp/v1/transaction"], devices["/upp/v1/transaction"]
        await pos.send('{"request": "sale", "amount": 100}')
        assert await device.recv() == '{"request": "sale", "amount": 100}'
        await device.send(b"\x02APPROVED\x03")
        assert await pos.recv() == b"\x02APPROVED\x03"
        await close_all(pos, device, listener)

    run(scenario())


def random_frame(rng: random.Random, binary: bool) -> str | bytes:
    size = rng.choice([0, 1, 7, 100, 1000, 20000]) or 1  # daphne does not send empty frames
    if binary:
        return rng.randbytes(size)
    return "".join(rng.choice('aé✓😀{}"\\ \n0') for _ in range(size))


def test_two_thousand_frames_each_way_on_two_endpoints_arrive_byte_for_byte_and_in_order(live):
    terminal = Terminal()
    endpoints = ["/upp/v1/transaction", "/upp/v1/printer"]
    rng = random.Random(20261127)
    planned = {
        (endpoint, direction): [random_frame(rng, binary=i % 2 == 1) for i in range(2000)]
        for endpoint in endpoints
        for direction in ("pos->device", "device->pos")
    }

    async def pump(sender: ClientConnection, receiver: ClientConnection, frames: list) -> None:
        async def send() -> None:
            for frame in frames:
                await sender.send(frame)

        async def receive() -> list:
            return [await receiver.recv() for _ in frames]

        _, received = await asyncio.gather(send(), receive())
        assert len(received) == len(frames)
        for index, (got, sent) in enumerate(zip(received, frames, strict=True)):
            assert type(got) is type(sent) and got == sent, f"frame {index} differs"

    async def scenario() -> None:
        registration, devices, listener, claim, poses = await pair(live, terminal, endpoints)
        await asyncio.gather(
            *(pump(poses[e], devices[e], planned[(e, "pos->device")]) for e in endpoints),
            *(pump(devices[e], poses[e], planned[(e, "device->pos")]) for e in endpoints),
        )
        await close_all(*devices.values(), *poses.values(), listener)

    run(scenario())


def test_a_message_of_the_limit_passes_and_a_larger_one_closes_its_sender_with_1009(live):
    terminal = Terminal()

    async def scenario() -> None:
        registration, devices, listener, claim, poses = await pair(live, terminal, ["/"])
        await poses["/"].send(b"x" * MIB)
        assert await devices["/"].recv() == b"x" * MIB
        await poses["/"].send(b"x" * (MIB + 1))
        await closed_with(poses["/"], 1009)
        await devices["/"].send("y" * (MIB + 1))
        await closed_with(devices["/"], 1009)
        await listener.close()

    run(scenario())


def test_a_pos_frame_for_an_unconnected_device_endpoint_closes_the_pos_socket_with_4503(live):
    terminal = Terminal()

    async def scenario() -> None:
        registration = await register(live.ws_url, terminal, ["/a", "/b"])
        devices = await device_sockets(registration, ["/a"])
        listener, claim = await claimed(live.ws_url, terminal.token, terminal.device.tsn)
        poses = await session_sockets(claim, terminal.token, ["/a", "/b"])
        await poses["/b"].send("anyone on /b?")
        await closed_with(poses["/b"], 4503)
        await poses["/a"].send("still fine on /a")
        assert await devices["/a"].recv() == "still fine on /a"
        await close_all(devices["/a"], poses["/a"], listener)

    run(scenario())


def test_refusals_at_the_handshake_arrive_as_close_codes(live):
    terminal = Terminal()

    async def scenario() -> None:
        registration = await register(live.ws_url, terminal, ["/"])
        base = live.ws_url + "/cloud-connector/v1"
        cases = [
            (f"{base}/pos-listener", {}, 4401),
            (f"{base}/pos-listener", {"Origin": "https://evil.example"}, 4403),
            (registration["connection_url"], {"Authorization": "Bearer forged.jwt.value"}, 4401),
            (registration["connection_url"] + "/not-registered", registration["authorization_header"], 4404),
            (f"{base}/session/{registration['session_id']}", bearer(terminal.token), 4403),
        ]
        for url, headers, code in cases:
            async with connect(url, additional_headers=headers) as ws:
                await closed_with(ws, code)

    run(scenario())


def test_disabling_the_device_through_the_rest_api_closes_its_session_with_4410(live):
    terminal = Terminal()
    admin = provisioning_token(terminal)

    async def scenario() -> None:
        registration, devices, listener, claim, poses = await pair(live, terminal, ["/"])
        answer = await asyncio.to_thread(
            requests.patch,
            f"{live.http_url}/api/v1/devices/{terminal.device.pk}/",
            json={"enabled": False},
            headers=bearer(admin),
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        await closed_with(devices["/"], 4410)
        await closed_with(poses["/"], 4410)
        assert await next_event(listener) == {
            "type": "session_ended",
            "session_id": claim["session_id"],
            "tsn": terminal.device.tsn,
        }
        await listener.close()

    run(scenario())


def test_ending_the_session_through_the_rest_api_closes_it_with_4410(live):
    terminal = Terminal()
    admin = provisioning_token(terminal)

    async def scenario() -> None:
        registration, devices, listener, claim, poses = await pair(live, terminal, ["/"])
        answer = await asyncio.to_thread(
            requests.delete,
            f"{live.http_url}/api/v1/sessions/{claim['session_id']}/",
            headers=bearer(admin),
            timeout=30,
        )
        assert answer.status_code == 204, answer.text
        await closed_with(devices["/"], 4410)
        await closed_with(poses["/"], 4410)
        await listener.close()

    run(scenario())


def test_revoking_the_token_at_the_revocation_endpoint_closes_the_sockets_that_used_it(live):
    terminal = Terminal()

    async def scenario() -> None:
        registration, devices, listener, claim, poses = await pair(live, terminal, ["/"])
        answer = await asyncio.to_thread(
            requests.post,
            f"{live.http_url}/oauth2/v1/{terminal.domain}/revoke",
            data={"token": terminal.token},
            auth=(terminal.pos.application.client_id, terminal.pos.client_secret),
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        await closed_with(listener, 4401)
        await closed_with(poses["/"], 4410)
        await devices["/"].send("the device stays")
        await asyncio.sleep(0.2)
        assert devices["/"].close_code is None
        await devices["/"].close()

    run(scenario())


def test_under_uvicorn_frames_cross_and_the_contracts_close_codes_hold(live, tmp_path):
    terminal = Terminal()
    own = start_server(tmp_path, server="uvicorn")
    try:

        async def scenario() -> None:
            registration, devices, listener, claim, poses = await pair(own, terminal, ["/a", "/b"])
            await poses["/a"].send("é ✓ text")
            assert await devices["/a"].recv() == "é ✓ text"
            await devices["/a"].send(b"\x00binary")
            assert await poses["/a"].recv() == b"\x00binary"
            await poses["/a"].send(b"x" * MIB)
            assert await devices["/a"].recv() == b"x" * MIB
            await poses["/a"].send(b"x" * (MIB + 1))
            await closed_with(poses["/a"], 1009)
            await devices["/b"].close()
            await asyncio.sleep(0.2)
            await poses["/b"].send("to a gone endpoint")
            await closed_with(poses["/b"], 4503)
            await close_all(devices["/a"], listener)

        run(scenario())
    finally:
        own.stop()


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
def test_a_server_stopping_closes_every_socket_with_1001(live, tmp_path, server):
    terminal = Terminal()
    own = start_server(tmp_path, server=server)
    try:

        async def scenario() -> None:
            registration = await register(own.ws_url, terminal, ["/"])
            devices = await device_sockets(registration, ["/"])
            listener, claim = await claimed(own.ws_url, terminal.token, terminal.device.tsn)
            poses = await session_sockets(claim, terminal.token, ["/"])
            idle = await connect(f"{own.ws_url}/cloud-connector/v1/device-listener")
            stopping = asyncio.create_task(asyncio.to_thread(own.stop, signal.SIGTERM, 15))
            for ws in (devices["/"], poses["/"], listener, idle):
                await closed_with(ws, 1001)
            # The server then stops by itself (not killed after the stop's wait).
            assert await stopping != -signal.SIGKILL

        run(scenario())
        assert own.process.returncode is not None
    finally:
        own.stop()


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL: two processes share Redis")
def test_frames_cross_between_two_server_processes_through_redis(live, tmp_path):
    terminal = Terminal()
    other = start_server(tmp_path)
    try:

        async def scenario() -> None:
            registration = await register(live.ws_url, terminal, ["/"])
            devices = await device_sockets(registration, ["/"])
            listener, claim = await claimed(other.ws_url, terminal.token, terminal.device.tsn)
            url = claim["session_url"].replace(other.ws_url, other.ws_url)
            pos = await connect(url, additional_headers=bearer(terminal.token))
            for i in range(200):
                await pos.send(f"p{i}")
                await devices["/"].send(bytes([i % 256]))
            assert [await devices["/"].recv() for _ in range(200)] == [f"p{i}" for i in range(200)]
            assert [await pos.recv() for _ in range(200)] == [bytes([i % 256]) for i in range(200)]
            await close_all(pos, devices["/"], listener)

        run(scenario())
    finally:
        other.stop()
