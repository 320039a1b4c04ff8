"""Redis restarts under two server processes (issue 6): the relay rides them out.

Each test runs a redis-server of its own (tests.live.PrivateRedis: no persistence, as
production runs it, so a restart comes back empty) and points both server processes at it
through REDIS_URL. The shared Redis on 6379 serves other test runs and is never restarted.
The test process needs no Redis: it reaches the servers only through their sockets and
REST API, so every control event travels through the private Redis whatever REDIS_URL the
test process itself was given.

Skipped without PostgreSQL (DATABASE_URL; SQLite is private to one process) or without
redis-server. Timings are printed for the record, never asserted; the bounds are timeouts.

The servers run the relay's channel layer (`connector.relay.redis_layer.RedisChannelLayer`, as
portal/settings.py configures it): with channels_redis's own, a Redis restart closes every
socket with 1011, and each of these tests fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from django.db import connection

from connector import protocol
from connector.clients import PosClient, SimulatedTerminal
from connector.clients.pos import Claim, SessionSocket
from tests.connector.test_fault_tolerance import (
    FAST_HEARTBEAT,
    TRANSACTION,
    frames_flow_both_ways,
    socket_pids,
    terminal_on,
)
from tests.factories import make_access_token, make_pos, make_provisioning_client, make_usable_device
from tests.live import REDIS_SERVER, LiveServer, PrivateRedis, run_bounded, start_server

pytestmark = [
    pytest.mark.live,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(REDIS_SERVER is None, reason="needs redis-server: the test restarts a Redis of its own"),
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="two server processes need a shared database: run with DATABASE_URL (PostgreSQL)",
    ),
]

BOUND = 15  # seconds: a timeout for what should take well under one
SCENARIO_TIMEOUT = 120


@dataclass
class Deployment:
    redis: PrivateRedis
    a: LiveServer
    b: LiveServer


@pytest.fixture(params=["daphne", "uvicorn"])
def deployment(request, tmp_path: Path) -> Iterator[Deployment]:
    redis = PrivateRedis(tmp_path)
    redis.start()
    servers: list[LiveServer] = []
    try:
        for _ in range(2):
            servers.append(start_server(tmp_path, server=request.param, REDIS_URL=redis.url, **FAST_HEARTBEAT))
        yield Deployment(redis, *servers)
    finally:
        for server in servers:
            server.stop()
            print(f"--- {request.param} on port {server.port} ---\n{server.log()[-8000:]}")
        redis.stop()


def run(scenario: Coroutine[Any, Any, None]) -> None:
    run_bounded(scenario, timeout=SCENARIO_TIMEOUT)


def provisioning_token(device) -> str:
    return make_access_token(make_provisioning_client(tenant=device.tenant))


async def disable_through_the_api(server: LiveServer, device, admin_token: str) -> None:
    answer = await asyncio.to_thread(
        requests.patch,
        f"{server.http_url}/api/v1/devices/{device.pk}/",
        json={"enabled": False},
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text


async def device_close_code(terminal: SimulatedTerminal) -> int | None:
    """The code the terminal's socket was closed with, waiting up to BOUND for it."""
    async with asyncio.timeout(BOUND):
        while not terminal.closes:
            await asyncio.sleep(0.05)
    return terminal.closes[0].code


@dataclass
class Interruption:
    restart: float  # kill to Redis answering again
    silence: float  # longest time the POS heard no device frame, around the restart
    sent: int
    received: int


async def device_frames_across(terminal: SimulatedTerminal, session, restart) -> Interruption:
    """The terminal sends a frame every 20 ms while Redis restarts; the POS side reads them.
    Device frames are dropped (and counted) when undeliverable, never close a socket, so the
    stream goes on through the outage and shows how long the relay was interrupted."""
    arrivals: list[float] = []
    sent = 0
    after_restart = asyncio.Event()
    restarted_at = float("inf")
    loop = asyncio.get_running_loop()

    async def ticking() -> None:
        nonlocal sent
        while not after_restart.is_set():
            await terminal.send(TRANSACTION, f"tick {sent}".encode())
            sent += 1
            await asyncio.sleep(0.02)
        await terminal.send(TRANSACTION, b"last tick")

    async def reading() -> None:
        while (frame := await session.recv()) != b"last tick":
            assert frame.startswith(b"tick "), frame
            arrivals.append(loop.time())
            if arrivals[-1] > restarted_at and sum(t > restarted_at for t in arrivals) >= 10:
                after_restart.set()

    ticker, reader = asyncio.create_task(ticking()), asyncio.create_task(reading())
    while len(arrivals) < 10:  # the stream runs before Redis goes
        await asyncio.sleep(0.02)
    killed = loop.time()
    await asyncio.to_thread(restart)
    restarted_at = loop.time()
    async with asyncio.timeout(BOUND):
        await asyncio.gather(ticker, reader)
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    return Interruption(restart=restarted_at - killed, silence=max(gaps), sent=sent, received=len(arrivals))


def test_after_a_redis_restart_frames_flow_on_the_same_sockets_and_control_events_still_arrive(deployment):
    a, b, redis = deployment.a, deployment.b, deployment.redis
    device = make_usable_device()
    first, second = make_pos(store=device.store), make_pos(store=device.store)
    first_token, second_token = make_access_token(first.application), make_access_token(second.application)
    admin = provisioning_token(device)

    async def scenario() -> None:
        terminal = terminal_on(a, device.serial, first)
        async with terminal, PosClient(b.ws_url, token=first_token) as holder:
            claim = await holder.claim(device.serial)
            session = await holder.open_session(claim, TRANSACTION)
            assert await asyncio.to_thread(socket_pids, claim.session_id) == {
                "device": a.process.pid,
                "pos": b.process.pid,
            }
            await frames_flow_both_ways(terminal, session, "before")

            interruption = await device_frames_across(terminal, session, redis.restart)
            print(f"redis restart: {interruption}")

            # The same sockets, never closed, carry frames both ways again.
            assert (terminal.registrations, list(terminal.closes)) == (1, [])
            assert session.close_code is None and holder.closed is None
            await frames_flow_both_ways(terminal, session, "after")

            # Group events reach sockets of both processes again (Redis forgot every group):
            # a takeover from A closes the holder's socket on B (session group) and tells its
            # listener on B (listener group).
            async with (
                PosClient(a.ws_url, token=second_token) as taker,
                PosClient(b.ws_url, token=second_token) as on_b,
            ):
                taken = await taker.claim(device.serial, force=True)
                assert taken.session_id == claim.session_id
                assert (await session.wait_closed(timeout=BOUND)).code == 4409
                event = await holder.next_event("session_taken_over", timeout=BOUND)
                assert (event.session_id, event.tsn) == (claim.session_id, device.tsn)

                new_session = await on_b.open_session(protocol.session_url(b.ws_url, claim.session_id), TRANSACTION)
                await frames_flow_both_ways(terminal, new_session, "taken over")

                # Disabling the device through A's REST API closes both ends with 4410 (the
                # device's socket on A, the session socket on B); the new holder hears it on A.
                await disable_through_the_api(a, device, admin)
                assert (await new_session.wait_closed(timeout=BOUND)).code == 4410
                assert await device_close_code(terminal) == 4410
                ended = await taker.next_event("session_ended", timeout=BOUND)
                assert ended.session_id == claim.session_id

    run(scenario())


def device_and_pos() -> tuple[Any, Any, str]:
    """A usable device, a POS of its store and a token of that POS."""
    device = make_usable_device()
    pos = make_pos(store=device.store)
    return device, pos, make_access_token(pos.application)


@asynccontextmanager
async def relaying_across(
    deployment: Deployment, device, pos, token: str
) -> AsyncIterator[tuple[SimulatedTerminal, PosClient, Claim, SessionSocket]]:
    """The device on A, its POS (listener and session socket) on B, frames crossing."""
    terminal = terminal_on(deployment.a, device.serial, pos)
    async with terminal, PosClient(deployment.b.ws_url, token=token) as client:
        claim = await client.claim(device.serial)
        session = await client.open_session(claim, TRANSACTION)
        await frames_flow_both_ways(terminal, session, "before")
        yield terminal, client, claim, session


def test_a_device_disabled_while_redis_is_down_has_its_sockets_closed_once_redis_is_back(deployment):
    a, redis = deployment.a, deployment.redis
    device, pos, token = device_and_pos()
    admin = provisioning_token(device)

    async def scenario() -> None:
        async with relaying_across(deployment, device, pos, token) as (terminal, client, claim, session):
            await asyncio.to_thread(redis.kill)
            # The session ends in the database; the event that would close its sockets cannot
            # be sent. Once Redis is back, each process compares its sockets with the database.
            await disable_through_the_api(a, device, admin)
            starting = time.monotonic()
            await asyncio.to_thread(redis.start)
            assert (await session.wait_closed(timeout=BOUND)).code == 4410
            assert await device_close_code(terminal) == 4410
            print(f"both ends closed {time.monotonic() - starting:.2f} s after Redis was being started again")

    run(scenario())


async def rows_of(session_id: str, expected: dict[str, int]) -> None:
    """Wait up to BOUND for the session's socket rows to name exactly these processes."""
    async with asyncio.timeout(BOUND):
        while await asyncio.to_thread(socket_pids, session_id) != expected:
            await asyncio.sleep(0.05)


def test_a_socket_closed_while_redis_is_down_leaves_no_row_behind_and_the_session_carries_on(deployment):
    a, redis = deployment.a, deployment.redis
    device, pos, token = device_and_pos()

    async def scenario() -> None:
        async with relaying_across(deployment, device, pos, token) as (terminal, client, claim, session):
            await asyncio.to_thread(redis.kill)
            await session.close()
            # B cannot take the socket out of its groups; it must still forget its row, or
            # the session would keep a POS socket that is gone.
            await rows_of(claim.session_id, {"device": a.process.pid})
            await asyncio.to_thread(redis.start)

            reopened = await client.open_session(claim, TRANSACTION)
            await frames_flow_both_ways(terminal, reopened, "reopened")
            assert (terminal.registrations, list(terminal.closes)) == (1, [])

    run(scenario())


def test_a_token_revoked_while_redis_is_down_has_its_pos_sockets_closed_once_redis_is_back(deployment):
    a, redis = deployment.a, deployment.redis
    device, pos, token = device_and_pos()
    revoke_url = f"{a.http_url}/oauth2/v1/{device.tenant.domain}/revoke"

    async def scenario() -> None:
        async with relaying_across(deployment, device, pos, token) as (terminal, client, claim, session):
            await asyncio.to_thread(redis.kill)
            # The token row goes at once; the event that would close its sockets cannot be
            # sent. Once Redis is back, each process checks its POS sockets' tokens.
            answer = await asyncio.to_thread(
                requests.post,
                revoke_url,
                data={"token": token},
                auth=(pos.application.client_id, pos.client_secret),
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            await asyncio.to_thread(redis.start)
            assert (await session.wait_closed(timeout=BOUND)).code == 4410
            assert (await client.wait_closed(timeout=BOUND)).code == 4401
            assert list(terminal.closes) == []  # the terminal keeps its session

    run(scenario())


def test_a_device_that_went_offline_while_redis_was_down_is_told_to_its_pos_once_redis_is_back(deployment):
    redis = deployment.redis
    device, pos, token = device_and_pos()

    async def scenario() -> None:
        async with relaying_across(deployment, device, pos, token) as (terminal, client, claim, session):
            await asyncio.to_thread(redis.kill)
            # A's database row says offline at once; the §5 event for B's listener cannot be sent.
            await terminal.drop_connection(reconnect=False)
            await rows_of(claim.session_id, {"pos": deployment.b.process.pid})
            await asyncio.to_thread(redis.start)
            offline = await client.next_event("device_offline", timeout=BOUND)
            assert (offline.session_id, offline.tsn) == (claim.session_id, device.tsn)
            terminal.reconnect()
            online = await client.next_event("device_online", timeout=BOUND)
            assert online.session_id == claim.session_id

    run(scenario())
