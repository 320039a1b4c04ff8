"""The listener's `ping` (v1.1 §12) is bounded: at most PING_IN_FLIGHT pings wait per listener
socket (one more is answered 429 at once), the device's socket never waits for a pong in its
channel-message loop, and pings asked while one is in flight share it (one WebSocket ping)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.db import database_sync_to_async

from connector import sessions
from connector.consumers import relay_sockets
from connector.consumers.pos_listener import PING_IN_FLIGHT
from connector.relay import servers
from tests.connector.relay_world import TIMEOUT, Listener, device_socket, hang_up, register, request

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.cloud_connector_on,
    pytest.mark.usefixtures("fresh_state"),
]


class StuckTerminal:
    """`servers.ping` (which WebsocketCommunicator does not offer) for a terminal that answers
    no ping until `answer(rtt)`; counts the WebSocket pings sent and the `device.ping`
    messages its socket heard."""

    def __init__(self, monkeypatch) -> None:
        self.pings_sent = 0
        self.pings_heard = 0
        self.released = asyncio.Event()
        self.rtt: float | None = None
        monkeypatch.setattr(servers, "ping", self.ping)
        heard = relay_sockets.DeviceSocketConsumer.device_ping

        async def device_ping(consumer, message: dict) -> None:
            self.pings_heard += 1
            await heard(consumer, message)

        monkeypatch.setattr(relay_sockets.DeviceSocketConsumer, "device_ping", device_ping)

    async def ping(self, send: Any, *, timeout: float) -> float | None:
        self.pings_sent += 1
        await self.released.wait()
        return self.rtt

    def answer(self, rtt: float) -> None:
        self.rtt = rtt
        self.released.set()

    async def heard(self, count: int) -> None:
        """Wait until the device's socket has handled `count` `device.ping` messages."""
        for _ in range(500):
            if self.pings_heard >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the device socket heard {self.pings_heard} pings, not {count}")


async def ping(listener: Listener, tsn: str, flow_id: str) -> None:
    await listener.comm.send_to(text_data=request({"action": "ping", "tsn": tsn}, flow_id=flow_id))


async def answers(listener: Listener, count: int, timeout: float = TIMEOUT) -> dict[str, dict]:
    """The next `count` responses of a listener, by flow_id."""
    found: dict[str, dict] = {}
    while len(found) < count:
        message = json.loads(await listener.comm.receive_from(timeout))
        if "response" in message:
            found[message["response"]["flow_id"]] = message["response"]["resource"]
    return found


async def online_terminal(world):
    registration = await register(world.device.tsn, world.pos_credentials)
    return registration, await device_socket(registration)


async def test_a_ping_past_the_bound_is_answered_429_at_once_while_the_others_wait(world, monkeypatch):
    terminal = StuckTerminal(monkeypatch)
    _registration, device = await online_terminal(world)
    listener = await Listener.open(world.pos_token)
    tsn = world.device.tsn
    try:
        for n in range(1, PING_IN_FLIGHT + 2):
            await ping(listener, tsn, f"p{n}")
        late = f"p{PING_IN_FLIGHT + 1}"
        refused = await answers(listener, 1, timeout=1)
        assert list(refused) == [late], refused
        assert refused[late]["status_code"] == 429 and refused[late]["error"] == "rate_limited", refused
        assert str(PING_IN_FLIGHT) in refused[late]["message"]
        assert await listener.comm.receive_nothing(0.2), "a ping in flight was answered before its pong"

        terminal.answer(12.5)
        waited = await answers(listener, PING_IN_FLIGHT)
        assert set(waited) == {f"p{n}" for n in range(1, PING_IN_FLIGHT + 1)}
        assert all(answer == {"status": "ok", "status_code": 200, "rtt_ms": 12.5} for answer in waited.values()), waited
        assert terminal.pings_sent == 1  # the four shared one WebSocket ping

        # Their places are free again.
        again = await listener.ask({"action": "ping", "tsn": tsn})
        assert again == {"status": "ok", "status_code": 200, "rtt_ms": 12.5}, again
    finally:
        terminal.answer(12.5)
    await listener.close()
    await hang_up(device)


async def test_the_device_socket_ends_its_session_promptly_while_pings_wait(world, monkeypatch):
    terminal = StuckTerminal(monkeypatch)
    registration, device = await online_terminal(world)
    listener = await Listener.open(world.pos_token)
    try:
        for n in range(1, PING_IN_FLIGHT + 1):
            await ping(listener, world.device.tsn, f"p{n}")
        await terminal.heard(PING_IN_FLIGHT)  # all four wait in the device's socket

        await database_sync_to_async(sessions.sessions_end)(session_ids=[registration["session_id"]], reason="test")
        closed = await device.receive_output(1)
        assert closed == {"type": "websocket.close", "code": 4410}, closed
        await device.send_input({"type": "websocket.disconnect", "code": 4410})
        await device.wait(TIMEOUT)
    finally:
        terminal.answer(3.0)
    waited = await answers(listener, PING_IN_FLIGHT)
    assert set(waited) == {f"p{n}" for n in range(1, PING_IN_FLIGHT + 1)}
    assert terminal.pings_sent == 1
    await listener.close()


async def test_concurrent_pings_of_three_listeners_cost_one_websocket_ping(world, monkeypatch):
    terminal = StuckTerminal(monkeypatch)
    _registration, device = await online_terminal(world)
    listeners = [
        await Listener.open(world.pos_token),
        await Listener.open(world.pos_token),
        await Listener.open(world.app_token),  # the aggregator's application
    ]
    try:
        for listener in listeners:
            await ping(listener, world.device.tsn, "p1")
        await terminal.heard(len(listeners))
        assert terminal.pings_sent == 1
        terminal.answer(7.25)
        for listener in listeners:
            assert await answers(listener, 1) == {"p1": {"status": "ok", "status_code": 200, "rtt_ms": 7.25}}
        assert terminal.pings_sent == 1

        # The next ping, once that one is answered, is a ping of its own.
        terminal.rtt = 8.5
        assert await listeners[0].ask({"action": "ping", "tsn": world.device.tsn}) == {
            "status": "ok",
            "status_code": 200,
            "rtt_ms": 8.5,
        }
        assert terminal.pings_sent == 2
    finally:
        terminal.answer(7.25 if terminal.rtt is None else terminal.rtt)
    for listener in listeners:
        await listener.close()
    await hang_up(device)
