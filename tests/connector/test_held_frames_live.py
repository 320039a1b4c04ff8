"""Held answers (v1.1 §13) against real servers, with the client library: a POS session socket
lost while the simulated terminal answers gets the answers when it comes back, byte-exact and
in order, before live frames; a release in between discards them (counted in the session's
`frames_dropped`); the bounds trigger `frames_dropped`. On daphne and on uvicorn (the
production worker), and across two workers on PostgreSQL and Redis: the terminal on one, the
POS on the other (skipped without them, as test_fault_tolerance is).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from connector.clients import Claim, PosClient, SimulatedTerminal
from tests.connector.test_fault_tolerance import require_shared_backends
from tests.factories import make_access_token, make_pos, make_usable_device
from tests.live import LiveServer, run_bounded, start_server

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

TRANSACTION = "/upp/v1/transaction"
SCENARIO_TIMEOUT = 90
WAIT = 20.0  # generous: several servers share two cores in CI
FAST = {"CC_COUNTER_FLUSH_INTERVAL": "1", "CC_SWEEP_INTERVAL": "1", "CC_NODE_TIMEOUT": "5"}
# The terminal's answers while the POS is away: text, non-ASCII text, binary, and a larger frame.
ANSWERS: list[str | bytes] = [
    '{"response": {"flow_id": "sale-1", "resource": {"result": "approved"}}}',
    "reçu ✓ €10,00",
    bytes(range(256)),
    "x" * 100_000,
]


def run(scenario: Coroutine[Any, Any, None]) -> None:
    run_bounded(scenario, timeout=SCENARIO_TIMEOUT)


@pytest.fixture(params=["daphne", "uvicorn"])
def server(request, tmp_path: Path, transactional_db) -> Iterator[LiveServer]:
    live = start_server(tmp_path, server=request.param, CC_HELD_FRAMES="5", **FAST)
    try:
        yield live
    finally:
        live.stop()
        print(f"--- {request.param} on port {live.port} ---\n{live.log()[-5000:]}")


@pytest.fixture
def two_workers(tmp_path: Path, transactional_db) -> Iterator[tuple[LiveServer, LiveServer]]:
    require_shared_backends()
    servers: list[LiveServer] = []
    try:
        for _ in range(2):
            servers.append(start_server(tmp_path, server="uvicorn", CC_HELD_FRAMES="5", **FAST))
        yield servers[0], servers[1]
    finally:
        for live in servers:
            live.stop()
            print(f"--- server on port {live.port} ---\n{live.log()[-5000:]}")


class Shop:
    """A usable terminal and its POS credential, in the database the servers share."""

    def __init__(self) -> None:
        self.device = make_usable_device()
        self.pos = make_pos(store=self.device.store)
        self.token = make_access_token(self.pos.application)

    def terminal(self, server: LiveServer) -> SimulatedTerminal:
        # Answers nothing by itself: each test sends the terminal's answers when it wants them.
        return SimulatedTerminal(
            server.ws_url,
            tsn=self.device.tsn,
            client_id=self.pos.application.client_id,
            client_secret=self.pos.client_secret,
            endpoints=[TRANSACTION],
            responder=None,
            record=True,
            min_delay=0.05,
            max_delay=0.5,
        )


def in_thread_db(fn):
    """A database read for asyncio.to_thread: its connection closed after, so that none is
    left open in a worker thread when the test database is flushed or dropped."""

    def run(*args: Any) -> Any:
        try:
            return fn(*args)
        finally:
            connection.close()

    return run


@in_thread_db
def pos_sockets(session_id: str) -> int:
    from connector.models import SessionSocket

    return SessionSocket.objects.filter(session_id=session_id, side=SessionSocket.Side.POS).count()


@in_thread_db
def counters(session_id: str) -> tuple[int, int]:
    from connector.models import DeviceSession

    row = DeviceSession.objects.get(pk=session_id)
    return row.frames_relayed, row.frames_dropped


def metric(server: LiveServer, name: str) -> float:
    text = requests.get(f"{server.http_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


async def until(check, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.05)


async def pos_link_lost(session, claim: Claim) -> None:
    """The till's link drops (no close frame); wait until the server has noticed."""
    session.ws.transport.abort()

    async def gone() -> bool:
        return await asyncio.to_thread(pos_sockets, claim.session_id) == 0

    await until(gone, "the server noticed the POS socket was gone")


async def held_on(server: LiveServer, count: float) -> None:
    async def held() -> bool:
        return await asyncio.to_thread(metric, server, "cloud_connector_frames_held_total") >= count

    await until(held, f"{count} frames held on port {server.port}")


async def answers_come_back(terminal_server: LiveServer, pos_server: LiveServer, shop: Shop) -> None:
    """The scenario of "done when": a payment request, the till's link lost, the terminal's
    answers, the till back: the answers first, unchanged and in order, then a live frame."""
    terminal = shop.terminal(terminal_server)
    await terminal.start(timeout=WAIT)
    async with PosClient(pos_server.http_url, token=shop.token) as pos:
        claim = await pos.claim(shop.device.tsn)
        assert claim.resource["local_url"] is None
        session = await pos.open_session(claim, TRANSACTION)
        inbox = terminal.inbox.setdefault(TRANSACTION, asyncio.Queue())
        await session.send('{"request": {"flow_id": "sale-1"}}')
        assert await asyncio.wait_for(inbox.get(), WAIT) == '{"request": {"flow_id": "sale-1"}}'
        await pos_link_lost(session, claim)
        held_before = await asyncio.to_thread(metric, terminal_server, "cloud_connector_frames_held_total")
        for answer in ANSWERS:
            await terminal.send(TRANSACTION, answer)
        await held_on(terminal_server, held_before + len(ANSWERS))
        back = await pos.open_session(claim, TRANSACTION)
        await terminal.send(TRANSACTION, "live")
        received = [await back.recv(timeout=WAIT) for _ in range(len(ANSWERS) + 1)]
        assert received == [*ANSWERS, "live"]
        await pos.release(claim.session_id)
    await terminal.stop()


async def release_discards(server: LiveServer, shop: Shop) -> None:
    terminal = shop.terminal(server)
    await terminal.start(timeout=WAIT)
    async with PosClient(server.http_url, token=shop.token) as pos:
        claim = await pos.claim(shop.device.tsn)
        session = await pos.open_session(claim, TRANSACTION)
        await pos_link_lost(session, claim)
        held_before = await asyncio.to_thread(metric, server, "cloud_connector_frames_held_total")
        for answer in ANSWERS[:2]:
            await terminal.send(TRANSACTION, answer)
        await held_on(server, held_before + 2)
        await pos.release(claim.session_id)
        again = await pos.claim(shop.device.tsn)
        fresh = await pos.open_session(again, TRANSACTION)
        await terminal.send(TRANSACTION, "after the release")
        assert await fresh.recv(timeout=WAIT) == "after the release"  # nothing held came before it

        async def counted() -> bool:
            return (await asyncio.to_thread(counters, claim.session_id))[1] >= 2

        await until(counted, "the two discarded frames counted in frames_dropped")
        await pos.release(again.session_id)
    await terminal.stop()


async def bounds_tell_frames_dropped(server: LiveServer, shop: Shop) -> None:
    terminal = shop.terminal(server)
    await terminal.start(timeout=WAIT)
    async with PosClient(server.http_url, token=shop.token) as pos:
        claim = await pos.claim(shop.device.tsn)
        for n in range(8):  # CC_HELD_FRAMES=5: three dropped
            await terminal.send(TRANSACTION, f"answer {n}")
        event = await pos.next_event("frames_dropped", timeout=WAIT)
        assert event.resource["endpoint"] == TRANSACTION and event.resource["count"] == 3
        assert event.session_id == claim.session_id and event.tsn == shop.device.tsn
        session = await pos.open_session(claim, TRANSACTION)
        assert [await session.recv(timeout=WAIT) for _ in range(5)] == [f"answer {n}" for n in range(5)]
        await pos.release(claim.session_id)
    await terminal.stop()


def test_a_dropped_pos_socket_gets_the_terminals_answers_when_it_reconnects(server):
    run(answers_come_back(server, server, Shop()))


def test_a_release_in_between_discards_the_held_answers(server):
    run(release_discards(server, Shop()))


def test_the_bounds_drop_and_tell_frames_dropped(server):
    run(bounds_tell_frames_dropped(server, Shop()))


@pytest.mark.postgres
def test_answers_held_on_one_worker_reach_the_pos_on_another(two_workers):
    terminal_side, pos_side = two_workers
    run(answers_come_back(terminal_side, pos_side, Shop()))


@pytest.mark.postgres
def test_a_release_on_another_worker_discards_the_held_answers(two_workers):
    terminal_side, pos_side = two_workers
    shop = Shop()

    async def scenario() -> None:
        terminal = shop.terminal(terminal_side)
        await terminal.start(timeout=WAIT)
        async with PosClient(pos_side.http_url, token=shop.token) as pos:
            claim = await pos.claim(shop.device.tsn)
            session = await pos.open_session(claim, TRANSACTION)
            await pos_link_lost(session, claim)
            before = await asyncio.to_thread(metric, terminal_side, "cloud_connector_frames_held_total")
            await terminal.send(TRANSACTION, "approved")
            await held_on(terminal_side, before + 1)
            await pos.release(claim.session_id)
            again = await pos.claim(shop.device.tsn)
            fresh = await pos.open_session(again, TRANSACTION)
            await terminal.send(TRANSACTION, "live")
            assert await fresh.recv(timeout=WAIT) == "live"
            await pos.release(again.session_id)
        await terminal.stop()

    run(scenario())
