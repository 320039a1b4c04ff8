"""Two real server processes on one PostgreSQL database and one Redis: frames across
processes, a process killed (SIGKILL) or stopped (SIGTERM), and a claim race across processes.

Skipped without DATABASE_URL (PostgreSQL) and REDIS_URL: SQLite and the in-memory channel
layer are private to one process. CI runs the suite a second time with both set.

The servers run with a short heartbeat (CC_SWEEP_INTERVAL=1, CC_NODE_TIMEOUT=5) so that a
killed process is noticed well within the contract's 15 s; that bound is used as a timeout,
never as a timing assertion.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from connector.clients import Claim, ControlError, PosClient, SimulatedTerminal, echo
from tests.factories import make_access_token, make_pos, make_usable_device
from tests.live import LiveServer, run_bounded, start_server

pytestmark = [pytest.mark.live, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TRANSACTION = "/upp/v1/transaction"
OFFLINE_BOUND = 15  # protocol: the POS learns of a lost device within 15 s
SCENARIO_TIMEOUT = 90
FAST_HEARTBEAT = {"CC_SWEEP_INTERVAL": "1", "CC_NODE_TIMEOUT": "5", "CC_COUNTER_FLUSH_INTERVAL": "1"}


def require_shared_backends() -> None:
    if connection.vendor != "postgresql" or not os.environ.get("REDIS_URL"):
        pytest.skip(
            "two server processes need a shared database and channel layer: run with DATABASE_URL "
            "(PostgreSQL) and REDIS_URL; SQLite and the in-memory layer are single-process"
        )


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    require_shared_backends()
    servers: list[LiveServer] = []
    try:
        for _ in range(2):
            servers.append(start_server(tmp_path, **FAST_HEARTBEAT))
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()
            print(f"--- server on port {server.port} ---\n{server.log()[-5000:]}")


def run(scenario: Coroutine[Any, Any, None]) -> None:
    run_bounded(scenario, timeout=SCENARIO_TIMEOUT)


def terminal_on(server: LiveServer, tsn: str, pos) -> SimulatedTerminal:
    return SimulatedTerminal(
        server.ws_url,
        tsn=tsn,
        client_id=pos.application.client_id,
        client_secret=pos.client_secret,
        endpoints=[TRANSACTION],
        responder=echo,
        record=True,
        min_delay=0.05,
        max_delay=0.5,
    )


def socket_pids(session_id: str) -> dict[str, int]:
    """The pid of the process holding each end of the session (SessionSocket.node is host:pid:nonce)."""
    from connector.models import SessionSocket

    try:
        return {row.side: int(row.node.split(":")[-2]) for row in SessionSocket.objects.filter(session_id=session_id)}
    finally:
        connection.close()  # ran in a worker thread: its connection must not outlive the test


async def frames_flow_both_ways(terminal: SimulatedTerminal, session, tag: str) -> None:
    for i in range(20):
        await session.send(f"{tag} pos->device {i}")
        assert await session.recv(timeout=10) == f"{tag} pos->device {i}"  # the terminal echoes
    inbox = terminal.inbox[TRANSACTION]
    while not inbox.empty():
        inbox.get_nowait()
    await terminal.send(TRANSACTION, f"{tag} device->pos".encode())
    assert await session.recv(timeout=10) == f"{tag} device->pos".encode()


def test_a_device_on_one_process_and_its_pos_on_another_relay_frames_both_ways(two_servers):
    a, b = two_servers
    device = make_usable_device()
    pos = make_pos(store=device.store)
    token = make_access_token(pos.application)

    async def scenario() -> None:
        async with terminal_on(a, device.serial, pos) as terminal, PosClient(b.ws_url, token=token) as client:
            await terminal.wait_online()
            claim = await client.claim(device.serial)
            session = await client.open_session(claim, TRANSACTION)
            assert await asyncio.to_thread(socket_pids, claim.session_id) == {
                "device": a.process.pid,
                "pos": b.process.pid,
            }
            await frames_flow_both_ways(terminal, session, "across")
            await client.release(claim.session_id)

    run(scenario())


def test_a_killed_process_takes_its_device_offline_and_the_session_resumes_on_another(two_servers):
    a, b = two_servers
    device = make_usable_device()
    pos = make_pos(store=device.store)
    token = make_access_token(pos.application)

    async def scenario() -> None:
        async with PosClient(b.ws_url, token=token) as client:
            first = terminal_on(a, device.serial, pos)
            await first.start()
            claim = await client.claim(device.serial)
            session = await client.open_session(claim, TRANSACTION)
            await frames_flow_both_ways(first, session, "before")

            a.process.kill()  # SIGKILL: no close frame, no cleanup, the heartbeat stops
            a.process.wait(10)
            offline = await client.next_event("device_offline", timeout=OFFLINE_BOUND)
            assert (offline.session_id, offline.tsn) == (claim.session_id, device.tsn)
            await first.stop()

            async with terminal_on(b, device.serial, pos) as second:
                registration = await second.wait_online()
                assert registration.session_id == claim.session_id
                online = await client.next_event("device_online", timeout=OFFLINE_BOUND)
                assert online.session_id == claim.session_id
                await frames_flow_both_ways(second, session, "after")
                again = await client.claim(device.serial)
                assert again.session_id == claim.session_id
                [status] = [d for d in await client.devices() if d.tsn == device.tsn]
                assert (status.online, status.claimed, status.claimed_by_you) == (True, True, True)
                await client.release(claim.session_id)

    run(scenario())


def test_two_pos_on_two_processes_racing_for_one_device_one_wins(two_servers):
    a, b = two_servers
    store_devices = [make_usable_device()]
    store = store_devices[0].store
    store_devices += [make_usable_device(store=store) for _ in range(4)]
    first, second = make_pos(store=store, name="Till 1"), make_pos(store=store, name="Till 2")
    tokens = make_access_token(first.application), make_access_token(second.application)

    async def race(device, pos_a: PosClient, pos_b: PosClient) -> None:
        results = await asyncio.gather(pos_a.claim(device.serial), pos_b.claim(device.serial), return_exceptions=True)
        wins = [r for r in results if isinstance(r, Claim)]
        losses = [r for r in results if isinstance(r, ControlError)]
        assert len(wins) == 1 and len(losses) == 1, results
        assert (losses[0].status_code, losses[0].error) == (409, "session_claimed")
        winner = pos_a if results[0] is wins[0] else pos_b
        [status] = [d for d in await winner.devices() if d.tsn == device.tsn]
        assert status.claimed_by_you

    async def scenario() -> None:
        terminals = [terminal_on(a if i % 2 else b, d.serial, first) for i, d in enumerate(store_devices)]
        for terminal in terminals:
            await terminal.start()
        try:
            async with PosClient(a.ws_url, token=tokens[0]) as pos_a, PosClient(b.ws_url, token=tokens[1]) as pos_b:
                for device in store_devices:
                    await race(device, pos_a, pos_b)
        finally:
            for terminal in terminals:
                await terminal.stop()

    run(scenario())


async def sigterm_and_collect_closes(live: LiveServer, device, pos, token: str) -> dict[str, int | None]:
    """SIGTERM the server with a terminal, a POS listener and a POS session socket on it;
    the close code each of them saw."""
    terminal = terminal_on(live, device.serial, pos)
    terminal.max_attempts = 1  # the server is going away for good: do not retry forever
    async with terminal, PosClient(live.ws_url, token=token) as client:
        claim = await client.claim(device.serial)
        session = await client.open_session(claim, TRANSACTION)
        await frames_flow_both_ways(terminal, session, "before")
        live.process.send_signal(signal.SIGTERM)
        closes = {
            "session": (await session.wait_closed(timeout=OFFLINE_BOUND)).code,
            "pos-listener": (await client.wait_closed(timeout=OFFLINE_BOUND)).code,
        }
        for _ in range(OFFLINE_BOUND * 10):
            if terminal.closes:
                break
            await asyncio.sleep(0.1)
        closes["device"] = terminal.closes[0].code if terminal.closes else None
        return closes


@pytest.fixture(params=["daphne", "uvicorn"])
def sigterm_closes(request, tmp_path) -> dict[str, int | None]:
    require_shared_backends()
    live = start_server(tmp_path, server=request.param, **FAST_HEARTBEAT)
    device = make_usable_device()
    pos = make_pos(store=device.store)
    token = make_access_token(pos.application)

    async def bounded() -> dict[str, int | None]:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            return await sigterm_and_collect_closes(live, device, pos, token)

    try:
        closes = asyncio.run(bounded())
        live.process.wait(30)  # exits on its own after the one SIGTERM (TimeoutExpired fails the test)
        return closes
    finally:
        live.stop()
        print(f"--- {request.param} log ---\n{live.log()[-5000:]}")


def test_sigterm_closes_every_socket_of_the_process_with_1001_and_the_process_exits(sigterm_closes):
    assert sigterm_closes == {"device": 1001, "session": 1001, "pos-listener": 1001}
