"""Presence you can trust (v1.1 §11) and the listener's additions (§12) against real server
processes: daphne, and uvicorn as `make serve` runs it (portal.serve's worker command),
wherever the behaviour lives in the server (keepalive pings, pongs, `ping`, ping timeouts).

The servers of this module run with short intervals (`last_seen_at` written every second,
frame counters flushed every second) in two keepalive settings, each started on first use
and shared by the module's tests: "brisk" (a keepalive ping every second, 3 s for its pong:
pongs move `last_seen_at`, a silent terminal is dropped quickly) and "quiet" (a ping a
minute, 30 s for its pong: every ping a terminal sees is a listener's). Tests that stop or
kill a server start their own.

A terminal that answers pings is the `websockets` library; one that never does is
test_server_ping's `RawClient` with a device socket's handshake. The REST API (with the
tenant's provisioning token) and the listener's `devices` answer show the presence; the
listener's events are checked as test_relay_e2e's are (`event_id`, `occurred_at`, `seq`
with no gap, relay_world.EventNumbers), also while a request waits for its answer. Every
wait is bounded; nothing asserts on speed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
import requests
from websockets.asyncio.client import ClientConnection, connect

from accounts.models import POS, Store
from connector.models import Device, DeviceConnection
from tests.connector.relay_world import RFC3339_MS, EventNumbers
from tests.connector.test_relay_e2e import (
    Terminal,
    bearer,
    closed_with,
    device_sockets,
    provisioning_token,
    register,
    session_sockets,
)
from tests.connector.test_server_ping import RawClient
from tests.factories import (
    MerchantFactory,
    StoreFactory,
    make_access_token,
    make_cloud_application,
    make_pos,
    make_usable_device,
)
from tests.live import LiveServer, run_bounded, start_server

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

SERVERS = ["daphne", "uvicorn"]
TIMEOUT = 60  # seconds: the bound of one scenario
STEP = 10.0  # seconds: the bound of one wait
KEEPALIVE = {"brisk": (1, 3), "quiet": (60, 30)}  # ping interval, pong timeout (seconds)
# Whole seconds: portal/settings.py reads these variables as integers.
SHORT_INTERVALS = {"CC_LAST_SEEN_INTERVAL": "1", "CC_COUNTER_FLUSH_INTERVAL": "1", "CC_SWEEP_INTERVAL": "1"}
PRESENCE = ("online", "online_since", "offline_since", "last_seen_at", "last_disconnect_reason")
NEVER_SEEN = dict.fromkeys(PRESENCE) | {"online": False}
OK = {"status": "ok", "status_code": 200}


# --- servers --------------------------------------------------------------------------------------


def serve(tmp_dir: Path, server: str, kind: str, **env: str) -> LiveServer:
    """A server with `kind`'s keepalive and this module's short intervals (plus `env`)."""
    interval, timeout = KEEPALIVE[kind]
    settings = {"CC_PING_INTERVAL": str(interval), "CC_PING_TIMEOUT": str(timeout), **SHORT_INTERVALS, **env}
    # uvicorn's keepalive is on its command line, which portal.serve's worker_command writes
    # from this process's environment; daphne's interval is its own flag, and the relay sets
    # its pong timeout on every socket from CC_PING_TIMEOUT (connector.relay.servers).
    with mock.patch.dict(os.environ, settings):
        return start_server(
            tmp_dir,
            server=server,
            daphne_args=["--ping-interval", str(interval)] if server == "daphne" else None,
            **settings,
        )


@pytest.fixture(scope="module")
def servers(django_db_setup, tmp_path_factory) -> Iterator[Callable[[str, str], LiveServer]]:
    """`servers(kind, server)`: the module's server of that keepalive and kind, started once."""
    started: dict[tuple[str, str], LiveServer] = {}

    def server_of(kind: str, server: str) -> LiveServer:
        if (kind, server) not in started:
            started[kind, server] = serve(tmp_path_factory.mktemp(f"{server}-{kind}"), server, kind)
        live = started[kind, server]
        if live.process.poll() is not None:
            pytest.fail(f"the {server} ({kind}) server died:\n{live.log()[-5000:]}")
        return live

    yield server_of
    for (kind, server), live in started.items():
        live.stop()
        print(f"--- {server} ({kind}) log ---\n{live.log()[-5000:]}")


def run(scenario: Coroutine[Any, Any, None], *servers: LiveServer) -> None:
    """Run a scenario; what the servers logged meanwhile is printed (pytest shows it when the
    test fails) and must hold no traceback."""
    starts = [(server, server.log_path.stat().st_size) for server in servers]
    try:
        run_bounded(scenario, timeout=TIMEOUT)
    finally:
        written = []
        for server, start in starts:
            with server.log_path.open("rb") as log:
                log.seek(start)
                written.append(log.read().decode(errors="replace"))
            print(f"--- server on port {server.port} during this test ---\n{written[-1][-20000:]}")
    for text in written:
        assert "Traceback" not in text


# --- clients --------------------------------------------------------------------------------------


class StoreTerminal(Terminal):
    """Another terminal of a store, registering with the credential of a POS given (a POS
    reaches every terminal of its store)."""

    def __init__(self, *, store: Store, pos: POS) -> None:
        self.device = make_usable_device(store=store)
        self.pos = pos
        self.token = make_access_token(pos.application)
        self.domain = self.device.tenant.domain


class Listener:
    """A pos-listener socket. Its events are checked (EventNumbers) and kept in order as they
    arrive, also while a request waits for its answer; answers are kept by flow id, so that
    a request may wait (`ping`) while others are answered."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.numbers = EventNumbers()
        self.events: deque[dict] = deque()
        self.answers: dict[str, dict] = {}
        self.flows = 0

    @classmethod
    async def open(cls, server: LiveServer, token: str) -> Listener:
        return cls(await connect(f"{server.ws_url}/cloud-connector/v1/pos-listener", additional_headers=bearer(token)))

    async def receive(self, timeout: float = STEP) -> None:
        message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        if "event" in message:
            self.events.append(self.numbers.checked(message["event"]["resource"]))
        else:
            self.answers[message["response"]["flow_id"]] = message["response"]["resource"]

    async def send(self, resource: dict) -> str:
        self.flows += 1
        flow_id = f"f{self.flows}"
        await self.ws.send(json.dumps({"request": {"flow_id": flow_id, "resource": resource}}))
        return flow_id

    async def answer(self, flow_id: str) -> dict:
        while flow_id not in self.answers:
            await self.receive()
        return self.answers.pop(flow_id)

    async def ask(self, resource: dict) -> dict:
        return await self.answer(await self.send(resource))

    async def subscribe(self, presence: Any = True) -> dict:
        return await self.ask({"action": "subscribe", "presence": presence})

    async def claim(self, tsn: str) -> dict:
        claim = await self.ask({"action": "claim", "tsn": tsn})
        assert claim["status"] == "ok", claim
        return claim

    async def event(self, timeout: float = STEP) -> dict:
        while not self.events:
            await self.receive(timeout)
        return self.events.popleft()

    async def silent(self, seconds: float = 0.5) -> None:
        """No event within `seconds` (called once a listener that should hear the same fact did)."""
        try:
            await self.receive(seconds)
        except TimeoutError:
            pass
        assert not self.events, list(self.events)

    async def close(self) -> None:
        await self.ws.close()


def presence_event(kind: str, registration: dict, terminal: Terminal, **fields: str) -> dict:
    return {"type": kind, "session_id": registration["session_id"], "tsn": terminal.device.tsn, **fields}


async def raw_device_socket(server: LiveServer, registration: dict) -> RawClient:
    """A terminal's device socket that never answers a ping: RawClient's handshake, with the
    registration's authorization header."""
    path = urlsplit(registration["connection_url"]).path
    authorization = registration["authorization_header"]["Authorization"]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: {authorization}\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP)
    assert head.startswith(b"HTTP/1.1 101"), head
    return RawClient(reader, writer)


# --- the REST API -----------------------------------------------------------------------------------


def api(server: LiveServer, method: str, path: str, token: str) -> requests.Response:
    return requests.request(method, f"{server.http_url}/api/v1/{path}", headers=bearer(token), timeout=30)


async def presence(server: LiveServer, device: Device, token: str) -> dict:
    """The device's presence fields in its REST detail."""
    answer = await asyncio.to_thread(api, server, "GET", f"devices/{device.pk}/", token)
    assert answer.status_code == 200, answer.text
    return {key: answer.json()[key] for key in PRESENCE}


async def connections(server: LiveServer, device: Device, token: str) -> list[dict]:
    answer = await asyncio.to_thread(api, server, "GET", f"devices/{device.pk}/connections/", token)
    assert answer.status_code == 200, answer.text
    return answer.json()["results"]


async def eventually(read: Callable[[], Awaitable[Any]], ready: Callable[[Any], bool], timeout: float = STEP) -> Any:
    """What `read` answers once `ready` says so, or its last answer after `timeout` seconds
    (the caller's assertion then says what was wrong)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await read()
        if ready(found) or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.2)


def timestamped(value: Any) -> bool:
    return isinstance(value, str) and RFC3339_MS.fullmatch(value) is not None


# --- §11: presence ------------------------------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_presence_follows_a_terminal_from_its_connection_to_its_close_and_outlives_its_session(servers, server):
    live = servers("brisk", server)
    terminal = Terminal()
    admin = provisioning_token(terminal)
    device = terminal.device

    async def scenario() -> None:
        assert await presence(live, device, admin) == NEVER_SEEN
        registration = await register(live.ws_url, terminal, ["/"])
        devices = await device_sockets(registration, ["/"])
        online = await presence(live, device, admin)
        assert online["online"] is True
        assert timestamped(online["online_since"]) and timestamped(online["last_seen_at"]), online
        assert (online["offline_since"], online["last_disconnect_reason"]) == (None, None)

        listener = await Listener.open(live, terminal.token)
        listed = await listener.ask({"action": "devices"})
        assert [entry["tsn"] for entry in listed["devices"]] == [device.tsn]
        entry = listed["devices"][0]
        assert entry["online"] is True and entry["online_since"] == online["online_since"]
        assert entry["last_seen_at"] >= online["last_seen_at"]
        assert (entry["offline_since"], entry["last_disconnect_reason"]) == (None, None)

        # Idle: the terminal sends nothing, it only answers the keepalive pings; its pongs
        # move last_seen_at (fixed-width RFC 3339 in UTC: text order is time order).
        idle = await eventually(
            lambda: presence(live, device, admin), lambda found: found["last_seen_at"] > online["last_seen_at"]
        )
        assert idle["last_seen_at"] > online["last_seen_at"], idle
        assert (idle["online"], idle["online_since"]) == (True, online["online_since"])

        claim = await listener.claim(device.tsn)
        poses = await session_sockets(claim, terminal.token, ["/"])
        for i in range(3):
            await poses["/"].send(f"to the terminal {i}")
            assert await devices["/"].recv() == f"to the terminal {i}"
            await devices["/"].send(f"to the POS {i}")
            assert await poses["/"].recv() == f"to the POS {i}"

        await devices["/"].close()
        assert await listener.event() == presence_event("device_offline", registration, terminal, reason="closed")
        offline = await presence(live, device, admin)
        assert (offline["online"], offline["online_since"], offline["last_disconnect_reason"]) == (
            False,
            None,
            "closed",
        )
        assert timestamped(offline["offline_since"]) and offline["offline_since"] >= idle["last_seen_at"]
        assert offline["last_seen_at"] >= idle["last_seen_at"]

        await poses["/"].close()
        ended = await asyncio.to_thread(api, live, "DELETE", f"sessions/{claim['session_id']}/", admin)
        assert ended.status_code == 204, ended.text
        assert await listener.event() == presence_event("session_ended", registration, terminal)
        # The session is gone; what the device did is not.
        assert await presence(live, device, admin) == offline
        history = await eventually(
            lambda: connections(live, device, admin), lambda rows: rows and rows[0]["frames_relayed"] == 6
        )
        assert history == [
            {
                "session_id": claim["session_id"],
                "connected_at": online["online_since"],
                "disconnected_at": offline["offline_since"],
                "reason": "closed",
                "frames_relayed": 6,
                "frames_dropped": 0,
                "claimed_by": f"POS {terminal.pos.name}",
            }
        ]
        await listener.close()

    run(scenario(), live)


# --- §12: subscribe ------------------------------------------------------------------------------------


def test_a_subscribed_listener_hears_every_device_of_its_scope_once_and_no_other(servers):
    live = servers("quiet", "daphne")
    home = Terminal()  # its POS holds the claim on the home terminal
    store = home.device.store
    watcher = make_pos(store=store)  # subscribed, holding no claim
    second = StoreTerminal(store=store, pos=home.pos)  # claimed by nobody
    ma = store.merchant.merchant_aggregator
    neighbour_store = StoreFactory(merchant=MerchantFactory(merchant_aggregator=ma))
    neighbour = StoreTerminal(store=neighbour_store, pos=make_pos(store=neighbour_store))
    far = Terminal()  # another tenant
    app = make_cloud_application(merchant_aggregator=ma)
    tokens = {"watcher": make_access_token(watcher.application), "app": make_access_token(app)}
    admin = provisioning_token(home)

    async def scenario() -> None:
        store_listener = await Listener.open(live, tokens["watcher"])
        ma_listener = await Listener.open(live, tokens["app"])
        holder = await Listener.open(live, home.token)
        for listener in (store_listener, ma_listener, holder):
            assert await listener.subscribe() == {**OK, "presence": True}

        home_registration = await register(live.ws_url, home, ["/"])
        claim = await holder.claim(home.device.tsn)
        home_sockets = await device_sockets(home_registration, ["/"])
        home_online = presence_event("device_online", home_registration, home)
        for listener in (store_listener, ma_listener, holder):
            # The holder reaches it through its claim and its subscription: told once.
            assert await listener.event() == home_online

        neighbour_registration = await register(live.ws_url, neighbour, ["/"])
        neighbour_sockets = await device_sockets(neighbour_registration, ["/"])
        assert await ma_listener.event() == presence_event("device_online", neighbour_registration, neighbour)
        far_registration = await register(live.ws_url, far, ["/"])
        far_sockets = await device_sockets(far_registration, ["/"])
        second_registration = await register(live.ws_url, second, ["/"])
        second_sockets = await device_sockets(second_registration, ["/"])
        second_online = presence_event("device_online", second_registration, second)
        # Each listener's next event is the second terminal's: nothing came of the terminals
        # outside its scope (the neighbour's for the store's POS, the far one for anyone),
        # and the holder was not told of its own terminal twice.
        for listener in (store_listener, ma_listener, holder):
            assert await listener.event() == second_online

        await second_sockets["/"].close()
        second_offline = presence_event("device_offline", second_registration, second, reason="closed")
        for listener in (store_listener, ma_listener, holder):
            assert await listener.event() == second_offline

        assert await store_listener.subscribe(False) == {**OK, "presence": False}
        await neighbour_sockets["/"].close()
        assert await ma_listener.event() == presence_event(
            "device_offline", neighbour_registration, neighbour, reason="closed"
        )
        ended = await asyncio.to_thread(api, live, "DELETE", f"sessions/{claim['session_id']}/", admin)
        assert ended.status_code == 204, ended.text
        home_offline = presence_event("device_offline", home_registration, home, reason="session_ended")
        assert await ma_listener.event() == home_offline
        # Presence and claim events on one socket, numbered 1, 2, 3 ... without a gap
        # (EventNumbers checks every event as it comes).
        assert await holder.event() == home_offline
        assert await holder.event() == presence_event("session_ended", home_registration, home)
        assert holder.numbers.seq == 5
        await closed_with(home_sockets["/"], 4410)
        await store_listener.silent()
        await holder.silent()
        await ma_listener.silent()
        assert (store_listener.numbers.seq, ma_listener.numbers.seq) == (3, 6)

        listed = await ma_listener.ask({"action": "devices"})
        assert sorted(entry["tsn"] for entry in listed["devices"]) == sorted(
            terminal.device.tsn for terminal in (home, second, neighbour)
        )
        await far_sockets["/"].close()
        for listener in (store_listener, ma_listener, holder):
            await listener.close()

    run(scenario(), live)


def test_subscribe_wants_presence_true_or_false(servers):
    live = servers("quiet", "daphne")
    terminal = Terminal()

    async def scenario() -> None:
        listener = await Listener.open(live, terminal.token)
        for bad in ("yes", 1, None, [True]):
            refused = await listener.subscribe(bad)
            assert (refused["status_code"], refused["error"]) == (400, "invalid_request"), refused
            assert "presence" in refused["message"]
        refused = await listener.ask({"action": "subscribe"})
        assert (refused["status_code"], refused["error"]) == (400, "invalid_request"), refused
        # The socket stays open and unsubscribed: a terminal coming online is not told.
        registration = await register(live.ws_url, terminal, ["/"])
        sockets = await device_sockets(registration, ["/"])
        await listener.silent()
        assert await listener.subscribe(True) == {**OK, "presence": True}
        await sockets["/"].close()
        assert await listener.event() == presence_event("device_offline", registration, terminal, reason="closed")
        await listener.close()

    run(scenario(), live)


# --- §12: ping ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_ping_answers_the_round_trip_to_a_connected_terminal_without_a_claim(servers, server):
    live = servers("brisk", server)
    terminal = Terminal()

    async def scenario() -> None:
        registration = await register(live.ws_url, terminal, ["/a", "/b"])
        sockets = await device_sockets(registration, ["/a", "/b"])
        listener = await Listener.open(live, terminal.token)
        for tsn in (terminal.device.tsn, terminal.device.serial):
            answer = await listener.ask({"action": "ping", "tsn": tsn})
            assert answer.keys() == {"status", "status_code", "rtt_ms"}, answer
            assert answer["status_code"] == 200
            assert isinstance(answer["rtt_ms"], int | float) and answer["rtt_ms"] >= 0
        await asyncio.gather(listener.close(), *(ws.close() for ws in sockets.values()))

    run(scenario(), live)


def test_ping_refuses_an_offline_terminal_one_outside_the_scope_and_a_bad_tsn(servers):
    live = servers("quiet", "daphne")
    terminal = Terminal()
    silent = StoreTerminal(store=terminal.device.store, pos=terminal.pos)  # never registers
    neighbour_store = StoreFactory(merchant=terminal.device.merchant)
    neighbour = StoreTerminal(store=neighbour_store, pos=make_pos(store=neighbour_store))
    far = Terminal()

    async def scenario() -> None:
        listener = await Listener.open(live, terminal.token)
        registration = await register(live.ws_url, terminal, ["/"])  # registered, no socket yet
        for tsn in (terminal.device.tsn, silent.device.tsn):
            answer = await listener.ask({"action": "ping", "tsn": tsn})
            assert (answer["status_code"], answer["error"]) == (409, "device_offline"), answer
        # Connected but outside the POS's scope (a store of the same merchant, another tenant).
        others = []
        for other in (neighbour, far):
            others.append(await device_sockets(await register(live.ws_url, other, ["/"]), ["/"]))
            answer = await listener.ask({"action": "ping", "tsn": other.device.tsn})
            assert (answer["status_code"], answer["error"]) == (404, "unknown_device"), answer
        for bad in (None, "", "not a tsn!", 42, ["x"]):
            answer = await listener.ask({"action": "ping", "tsn": bad})
            assert (answer["status_code"], answer["error"]) == (400, "invalid_request"), answer
            assert "tsn" in answer["message"]
        answer = await listener.ask({"action": "ping"})
        assert (answer["status_code"], answer["error"]) == (400, "invalid_request"), answer
        # Once its socket is there, the same listener's ping is answered.
        sockets = await device_sockets(registration, ["/"])
        assert (await listener.ask({"action": "ping", "tsn": terminal.device.tsn}))["status_code"] == 200
        await asyncio.gather(listener.close(), sockets["/"].close(), *(s["/"].close() for s in others))

    run(scenario(), live)


@pytest.mark.parametrize("server", SERVERS)
def test_a_ping_the_terminal_never_answers_is_504_and_the_listener_serves_meanwhile(servers, server):
    # The quiet keepalive waits 30 s for a pong: the 504 is the ping's own 5 s wait.
    live = servers("quiet", server)
    terminal = Terminal()
    admin = provisioning_token(terminal)

    async def scenario() -> None:
        listener = await Listener.open(live, terminal.token)
        assert await listener.subscribe() == {**OK, "presence": True}
        registration = await register(live.ws_url, terminal, ["/"])
        raw = await raw_device_socket(live, registration)
        try:
            assert await listener.event() == presence_event("device_online", registration, terminal)
            pinging = await listener.send({"action": "ping", "tsn": terminal.device.tsn})
            await raw.our_pings(1)  # the listener's ping reached the terminal's socket; it stays unanswered
            listed = await listener.ask({"action": "devices"})
            assert listed["status_code"] == 200 and listed["devices"][0]["online"] is True
            assert pinging not in listener.answers
            answer = await listener.answer(pinging)
            assert (answer["status_code"], answer["error"]) == (504, "device_unresponsive"), answer
            # The socket is still there: not dropped by the keepalive.
            assert (await presence(live, terminal.device, admin))["online"] is True
            await listener.silent()
        finally:
            raw.abort()
        assert await listener.event() == presence_event("device_offline", registration, terminal, reason="closed")
        await listener.close()

    run(scenario(), live)


# --- §11: why a terminal went --------------------------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_a_terminal_that_answers_no_keepalive_ping_goes_offline_with_ping_timeout(servers, server):
    live = servers("brisk", server)
    terminal = Terminal()
    admin = provisioning_token(terminal)

    async def scenario() -> None:
        listener = await Listener.open(live, terminal.token)
        assert await listener.subscribe() == {**OK, "presence": True}
        registration = await register(live.ws_url, terminal, ["/"])
        raw = await raw_device_socket(live, registration)
        try:
            assert await listener.event() == presence_event("device_online", registration, terminal)
            await raw.until_dropped()  # reads the keepalive pings, never answers one
        finally:
            raw.abort()
        assert await listener.event() == presence_event("device_offline", registration, terminal, reason="ping_timeout")
        found = await presence(live, terminal.device, admin)
        assert (found["online"], found["last_disconnect_reason"]) == (False, "ping_timeout"), found
        [period] = await connections(live, terminal.device, admin)
        assert (period["session_id"], period["reason"]) == (registration["session_id"], "ping_timeout")
        await listener.close()

    run(scenario(), live)


def test_a_new_socket_replacing_a_live_one_is_told_to_the_holder_and_recorded_as_replaced(servers):
    live = servers("quiet", "daphne")
    terminal = Terminal()
    admin = provisioning_token(terminal)
    watcher = make_access_token(make_pos(store=terminal.device.store).application)

    async def scenario() -> None:
        holder = await Listener.open(live, terminal.token)
        subscribed = await Listener.open(live, watcher)
        assert await subscribed.subscribe() == {**OK, "presence": True}
        registration = await register(live.ws_url, terminal, ["/upp/v1/transaction"])
        first = await device_sockets(registration, ["/upp/v1/transaction"])
        claim = await holder.claim(terminal.device.tsn)
        assert await subscribed.event() == presence_event("device_online", registration, terminal)
        again = await register(live.ws_url, terminal, ["/upp/v1/transaction"])
        assert again["session_id"] == registration["session_id"]
        second = await device_sockets(again, ["/upp/v1/transaction"])
        await closed_with(first["/upp/v1/transaction"], 4409)
        assert await holder.event() == presence_event(
            "device_replaced", registration, terminal, endpoint="/upp/v1/transaction"
        )
        found = await presence(live, terminal.device, admin)
        assert (found["online"], found["last_disconnect_reason"]) == (True, "replaced"), found
        # Replaced, not offline: the online period goes on.
        [period] = await connections(live, terminal.device, admin)
        assert (period["session_id"], period["disconnected_at"], period["reason"]) == (claim["session_id"], None, None)
        await subscribed.silent()
        await holder.silent()
        await second["/upp/v1/transaction"].close()
        assert await holder.event() == presence_event("device_offline", registration, terminal, reason="closed")
        await asyncio.gather(holder.close(), subscribed.close())

    run(scenario(), live)


def test_ending_a_session_or_revoking_its_credential_takes_the_terminal_offline_with_that_reason(servers):
    live = servers("quiet", "daphne")
    ended = Terminal()
    revoked = StoreTerminal(store=ended.device.store, pos=make_pos(store=ended.device.store))
    watcher = make_access_token(make_pos(store=ended.device.store).application)
    admin = provisioning_token(ended)

    async def scenario() -> None:
        listener = await Listener.open(live, watcher)
        assert await listener.subscribe() == {**OK, "presence": True}
        registrations, sockets = {}, {}
        for name, terminal in (("ended", ended), ("revoked", revoked)):
            registrations[name] = await register(live.ws_url, terminal, ["/"])
            sockets[name] = (await device_sockets(registrations[name], ["/"]))["/"]
            assert await listener.event() == presence_event("device_online", registrations[name], terminal)

        answer = await asyncio.to_thread(
            api, live, "DELETE", f"sessions/{registrations['ended']['session_id']}/", admin
        )
        assert answer.status_code == 204, answer.text
        await closed_with(sockets["ended"], 4410)
        assert await listener.event() == presence_event(
            "device_offline", registrations["ended"], ended, reason="session_ended"
        )
        # The secret the terminal registered with is rotated: its session ends, revoked.
        answer = await asyncio.to_thread(api, live, "POST", f"pos/{revoked.pos.pk}/rotate-secret/", admin)
        assert answer.status_code == 200, answer.text
        await closed_with(sockets["revoked"], 4410)
        assert await listener.event() == presence_event(
            "device_offline", registrations["revoked"], revoked, reason="revoked"
        )
        for name, terminal in (("ended", ended), ("revoked", revoked)):
            found = await presence(live, terminal.device, admin)
            reason = "session_ended" if name == "ended" else "revoked"
            assert (found["online"], found["last_disconnect_reason"]) == (False, reason), found
            [period] = await connections(live, terminal.device, admin)
            assert (period["session_id"], period["reason"]) == (registrations[name]["session_id"], reason)
        await listener.close()

    run(scenario(), live)


@pytest.mark.parametrize("server", SERVERS)
def test_a_server_stopping_takes_its_terminals_offline_with_server_shutdown(tmp_path, server):
    own = serve(tmp_path, server, "quiet")
    terminal = Terminal()
    try:

        async def scenario() -> None:
            registration = await register(own.ws_url, terminal, ["/"])
            sockets = await device_sockets(registration, ["/"])
            stopping = asyncio.create_task(asyncio.to_thread(own.stop, signal.SIGTERM, 15))
            await closed_with(sockets["/"], 1001)
            assert await stopping != -signal.SIGKILL  # it stopped by itself, not killed after the wait

        run(scenario(), own)
    finally:
        own.stop()
    device = Device.objects.get(pk=terminal.device.pk)
    assert (device.online, device.online_since, device.last_disconnect_reason) == (False, None, "server_shutdown")
    assert device.offline_since is not None
    period = DeviceConnection.objects.get(device=device)
    assert (period.disconnected_at, period.reason) == (device.offline_since, "server_shutdown")


def test_a_killed_server_s_terminals_go_offline_with_node_lost_when_another_sweeps(tmp_path):
    terminal = Terminal()
    admin = provisioning_token(terminal)
    doomed = serve(tmp_path, "daphne", "quiet")
    survivor: LiveServer | None = None
    try:

        async def connected() -> None:
            registration = await register(doomed.ws_url, terminal, ["/"])
            sockets = await device_sockets(registration, ["/"])
            assert (await presence(doomed, terminal.device, admin))["online"] is True
            doomed.stop(signal.SIGKILL)  # no goodbye: no close frame, no detach, no shutdown
            await asyncio.wait_for(sockets["/"].wait_closed(), STEP)

        run(connected(), doomed)
        survivor = serve(tmp_path, "daphne", "quiet", CC_NODE_TIMEOUT="2")

        async def swept() -> None:
            listener = await Listener.open(survivor, terminal.token)  # its first socket starts its sweeps
            found = await eventually(
                lambda: presence(survivor, terminal.device, admin), lambda found: not found["online"], timeout=20
            )
            assert (found["online"], found["last_disconnect_reason"]) == (False, "node_lost"), found
            [period] = await connections(survivor, terminal.device, admin)
            assert (period["reason"], period["disconnected_at"]) == ("node_lost", found["offline_since"])
            await listener.close()

        run(swept(), survivor)
    finally:
        doomed.stop()
        if survivor is not None:
            survivor.stop()
