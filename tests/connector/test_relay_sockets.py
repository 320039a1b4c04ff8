"""The drop path of the relay sockets (connector.consumers.relay_sockets): a terminal that talks
while no POS is attached asks the database once, not once per frame, and hears its POS
again as soon as one attaches, on one process or across two."""

from __future__ import annotations

import asyncio

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts import db_threads
from connector.relay.registry import registry
from tests.connector.relay_world import Listener, device_socket, hang_up, late_peer_attached, register, session_socket

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.cloud_connector_on,
    pytest.mark.usefixtures("fresh_state"),
]


def counting_queries(monkeypatch) -> list[dict]:
    """Every SQL query the consumers' database work (connector.consumers.base.db) runs from
    now on, captured in the database thread that runs it."""
    queries: list[dict] = []
    real_run = db_threads.run

    def captured(fn):
        def run(*args, **kwargs):
            # The database threads live across tests: a log that earlier DEBUG tests filled to
            # its bound (9,000) would hide every new query from the slice CaptureQueriesContext
            # takes of it.
            connection.queries_log.clear()
            with CaptureQueriesContext(connection) as context:
                try:
                    return fn(*args, **kwargs)
                finally:
                    queries.extend(context.captured_queries)

        return run

    async def run(fn, /, *args, **kwargs):
        return await real_run(captured(fn), *args, **kwargs)

    monkeypatch.setattr(db_threads, "run", run)
    return queries


async def dropped(session_id: str, count: int) -> None:
    """Wait until the device's socket has dropped `count` frames (its frames are handled in
    its own task, after the communicator hands them over)."""
    for _ in range(200):
        counter = registry.counters.get(session_id)
        if counter is not None and counter.dropped >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the device socket did not drop {count} frames")


async def device_knows_no_pos() -> None:
    """Wait until this process's device socket has heard that its POS left."""
    for _ in range(200):
        device = next(sock for sock in registry.sockets.values() if getattr(sock, "side", None) == "device")
        if device.peer_channel is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the device socket did not hear that its POS left")


@pytest.mark.parametrize("same_process", [True, False], ids=["same process", "across processes"])
async def test_frames_dropped_for_want_of_a_pos_query_nothing_after_the_first(world, monkeypatch, same_process):
    # Across processes, peers hear of each other only through the channel layer's events.
    monkeypatch.setattr(registry, "local_fast_path", same_process)
    registration = await register(world.device.tsn, world.pos_credentials)
    device = await device_socket(registration)
    session_id = registration["session_id"]
    queries = counting_queries(monkeypatch)
    await device.send_to(text_data="anyone?")
    await dropped(session_id, 1)
    assert len(queries) >= 1  # the first dropped frame asks the database
    asked = len(queries)
    for n in range(20):
        await device.send_to(text_data=f"anyone? {n}")
    await dropped(session_id, 21)
    assert len(queries) == asked  # zero queries for each of the twenty frames after it

    listener = await Listener.open(world.pos_token)
    claim = await listener.claim(world.device.tsn)
    pos = await session_socket(claim, world.pos_token)
    await device.send_to(text_data="there you are")
    assert await pos.receive_from(1) == "there you are"  # "no POS" was forgotten when it attached
    for comm in (device, pos):
        await hang_up(comm)
    await listener.close()


async def test_a_pos_that_came_and_went_makes_the_next_frame_ask_the_database_again(world, monkeypatch):
    # Across processes: the device remembered "no POS", then heard a POS attach and leave;
    # a new POS's attach event is still on its way when the device talks, and the database
    # finds it.
    monkeypatch.setattr(registry, "local_fast_path", False)
    registration = await register(world.device.tsn, world.pos_credentials)
    device = await device_socket(registration)
    await device.send_to(text_data="anyone?")
    await dropped(registration["session_id"], 1)
    listener = await Listener.open(world.pos_token)
    claim = await listener.claim(world.device.tsn)
    first = await session_socket(claim, world.pos_token)
    await device.send_to(text_data="hello first till")
    assert await first.receive_from(1) == "hello first till"
    await hang_up(first)
    await device_knows_no_pos()
    late_peer_attached(monkeypatch)
    second = await session_socket(claim, world.pos_token)
    await device.send_to(text_data="for the new till")
    assert await second.receive_from(0.3) == "for the new till"
    for comm in (device, second):
        await hang_up(comm)
    await listener.close()


async def test_a_frame_from_a_pos_the_device_never_heard_of_lets_its_answer_find_that_pos(world, monkeypatch):
    # Across processes, with the POS's attach event lost (a channel-layer hiccup): the
    # device remembered "no POS", but a frame from one proves otherwise.
    monkeypatch.setattr(registry, "local_fast_path", False)
    registration = await register(world.device.tsn, world.pos_credentials)
    device = await device_socket(registration)
    await device.send_to(text_data="anyone?")
    await dropped(registration["session_id"], 1)
    late_peer_attached(monkeypatch, lost=True)
    listener = await Listener.open(world.pos_token)
    claim = await listener.claim(world.device.tsn)
    pos = await session_socket(claim, world.pos_token)
    await pos.send_to(text_data="pay 10.00")
    assert await device.receive_from(1) == "pay 10.00"
    await device.send_to(text_data="approved")
    assert await pos.receive_from(1) == "approved"
    for comm in (device, pos):
        await hang_up(comm)
    await listener.close()
