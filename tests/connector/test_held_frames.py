"""Held answers (v1.1 §13, connector.relay.held), in process: a terminal's frames sent while
the claim holder's POS has no session socket on the endpoint reach that POS first, in order
and unchanged, when it comes back; a release, a takeover or the end discards them; the bounds
drop, count and tell `frames_dropped`. On one process and across two (the channel layer)."""

from __future__ import annotations

import asyncio
import json

import pytest

from connector import sessions
from connector.models import DeviceSession
from connector.relay import held
from connector.relay.registry import flush_counters, registry
from tests.connector.relay_world import (
    TIMEOUT,
    Listener,
    communicator,
    device_socket,
    expect_close,
    hang_up,
    local_path,
    register,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.cloud_connector_on,
    pytest.mark.usefixtures("fresh_state"),
]

WAIT = 5.0


@pytest.fixture(params=[True, False], ids=["same process", "across processes"])
def fast_path(request, monkeypatch) -> bool:
    """Both ways a POS socket meets its device socket: in process, or through the channel
    layer only, as on two workers."""
    monkeypatch.setattr(registry, "local_fast_path", request.param)
    return request.param


def bounds(settings, **values) -> None:
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, **values}


async def session_socket(claim: dict, token: str, endpoint: str = "/"):
    """A POS session socket, opened: unlike relay_world's, held frames may come at once."""
    url = claim["session_url"] + ("" if endpoint == "/" else endpoint)
    comm = communicator(local_path(url), token=token)
    connected, _ = await comm.connect(TIMEOUT)
    assert connected
    return comm


def device_consumer():
    return next(sock for sock in registry.sockets.values() if getattr(sock, "side", None) == "device")


async def until(condition, what: str) -> None:
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {WAIT} s: {what}")


def held_count() -> int:
    found = device_consumer().held
    return len(found.frames) if found is not None else 0


async def pos_gone() -> None:
    await until(lambda: device_consumer().peer_channel is None, "the device socket heard its POS leave")


async def claimed_world(world, endpoint: str = "/"):
    registration = await register(world.device.tsn, world.pos_credentials)
    device = await device_socket(registration)
    listener = await Listener.open(world.pos_token)
    claim = await listener.claim(world.device.tsn)
    await until(lambda: device_consumer().holder is not None, "the device socket heard of the claim")
    return registration, device, listener, claim


async def frames_dropped_event(listener: Listener) -> dict:
    for _ in range(10):
        event = await listener.event()
        if event["type"] == "frames_dropped":
            return event
    raise AssertionError("no frames_dropped event")


async def test_answers_sent_while_the_pos_is_away_reach_it_first_in_order_and_unchanged(world, fast_path):
    registration, device, listener, claim = await claimed_world(world)
    pos = await session_socket(claim, world.pos_token)
    await pos.send_to(text_data='{"sale": 1}')
    assert await device.receive_from(WAIT) == '{"sale": 1}'
    await hang_up(pos)  # the till's link blips in the middle of the payment
    await pos_gone()
    answers = ['{"approved": true, "amount": "10.00"}', "ünïcode ✓", b"\x00\xffbinary\x80"]
    for answer in answers:
        if isinstance(answer, bytes):
            await device.send_to(bytes_data=answer)
        else:
            await device.send_to(text_data=answer)
    await until(lambda: held_count() == 3, "three frames held")
    back = await session_socket(claim, world.pos_token)
    await device.send_to(text_data="live after")  # may race the delivery: must still come last
    received = []
    for _ in range(4):
        output = await back.receive_output(WAIT)
        received.append(output.get("text", output.get("bytes")))
    assert received == [*answers, "live after"]
    assert device_consumer().held is None and held.budget.bytes == 0
    await flush_counters()
    row = await DeviceSession.objects.aget(pk=registration["session_id"])
    assert row.frames_dropped == 0 and row.frames_relayed >= 5
    for comm in (device, back):
        await hang_up(comm)
    await listener.close()


async def test_a_release_in_between_discards_the_held_answers_and_counts_them(world, fast_path):
    registration, device, listener, claim = await claimed_world(world)
    await device.send_to(text_data="approved")
    await until(lambda: held_count() == 1, "the answer held")
    assert (await listener.ask({"action": "release", "session_id": claim["session_id"]}))["status"] == "ok"
    await until(lambda: device_consumer().held is None, "the held answer discarded")
    again = await listener.claim(world.device.tsn)
    pos = await session_socket(again, world.pos_token)
    assert await pos.receive_nothing(0.3)  # discarded, not delivered after a new claim
    await flush_counters()
    assert (await DeviceSession.objects.aget(pk=registration["session_id"])).frames_dropped == 1
    for comm in (device, pos):
        await hang_up(comm)
    await listener.close()


async def test_a_takeover_never_hands_the_answers_to_the_new_holder(world, fast_path):
    registration, device, listener, claim = await claimed_world(world)
    pos_application = device_consumer().holder
    await device.send_to(text_data="approved for the first till")
    await until(lambda: held_count() == 1, "the answer held")
    other = await Listener.open(world.app_token)
    taken = await other.claim(world.device.tsn, force=True)
    assert taken["status"] == "ok"
    await until(lambda: device_consumer().holder not in (None, pos_application), "the device heard of the takeover")
    assert device_consumer().held is None
    theirs = await session_socket(taken, world.app_token)
    assert await theirs.receive_nothing(0.3)
    await device.send_to(text_data="live")
    assert await theirs.receive_from(WAIT) == "live"
    await flush_counters()
    assert (await DeviceSession.objects.aget(pk=registration["session_id"])).frames_dropped == 1
    for comm in (device, theirs):
        await hang_up(comm)
    await listener.close()
    await other.close()


async def test_the_end_of_the_session_discards_the_held_answers(world):
    registration, device, listener, claim = await claimed_world(world)
    await device.send_to(text_data="approved")
    await until(lambda: held_count() == 1, "the answer held")
    await asyncio.to_thread(sessions.sessions_end, session_ids=[registration["session_id"]], reason="operator")
    await expect_close(device, 4410)
    assert held.budget.bytes == 0
    await flush_counters()
    assert (await DeviceSession.objects.aget(pk=registration["session_id"])).frames_dropped == 1
    await listener.close()


async def test_frames_beyond_the_count_bound_are_dropped_counted_and_told_once(world, settings, fast_path):
    bounds(settings, HELD_FRAMES=3)
    registration, device, listener, claim = await claimed_world(world)
    for n in range(8):
        await device.send_to(text_data=f"answer {n}")
    await until(lambda: device_consumer().counter.dropped == 5, "five frames dropped")
    event = await frames_dropped_event(listener)
    # event_id, occurred_at and seq are checked by the Listener (relay_world.EventNumbers).
    assert event == {
        "type": "frames_dropped",
        "session_id": registration["session_id"],
        "tsn": world.device.tsn,
        "endpoint": "/",
        "count": 5,
    }
    assert await listener.comm.receive_nothing(0.8)  # coalesced: one event, not five
    pos = await session_socket(claim, world.pos_token)
    assert [await pos.receive_from(WAIT) for _ in range(3)] == ["answer 0", "answer 1", "answer 2"]
    assert await pos.receive_nothing(0.2)
    await flush_counters()
    assert (await DeviceSession.objects.aget(pk=registration["session_id"])).frames_dropped == 5
    for comm in (device, pos):
        await hang_up(comm)
    await listener.close()


async def test_the_byte_bounds_per_endpoint_and_per_process_hold(world, settings):
    bounds(settings, HELD_BYTES=10)
    _registration, device, listener, claim = await claimed_world(world)
    await device.send_to(text_data="12345678")
    await device.send_to(text_data="abc")  # 11 bytes: past the endpoint's bound
    await until(lambda: device_consumer().counter.dropped == 1, "the second frame dropped")
    assert held_count() == 1 and held.budget.bytes == 8
    bounds(settings, HELD_BYTES=1000, HELD_TOTAL_BYTES=9)
    await device.send_to(text_data="xy")  # 10 bytes held in the process: past its bound
    await until(lambda: device_consumer().counter.dropped == 2, "the third frame dropped")
    assert (await frames_dropped_event(listener))["count"] >= 1
    pos = await session_socket(claim, world.pos_token)
    assert await pos.receive_from(WAIT) == "12345678"
    assert await pos.receive_nothing(0.2)
    for comm in (device, pos):
        await hang_up(comm)
    await listener.close()


async def test_frames_held_longer_than_the_grace_period_are_dropped_and_told(world, settings):
    bounds(settings, GRACE_PERIOD=1)
    _registration, device, listener, claim = await claimed_world(world)
    await device.send_to(text_data="too late")
    await until(lambda: held_count() == 1, "the answer held")
    event = await frames_dropped_event(listener)
    assert event["count"] == 1
    assert device_consumer().held is None and held.budget.bytes == 0
    pos = await session_socket(claim, world.pos_token)
    assert await pos.receive_nothing(0.3)
    for comm in (device, pos):
        await hang_up(comm)
    await listener.close()


async def test_an_unclaimed_session_drops_as_in_v1(world):
    registration = await register(world.device.tsn, world.pos_credentials)
    device = await device_socket(registration)
    await device.send_to(text_data="anyone?")
    await until(lambda: device_consumer().counter.dropped == 1, "the frame dropped")
    assert device_consumer().held is None
    listener = await Listener.open(world.pos_token)
    claim = await listener.claim(world.device.tsn)
    pos = await session_socket(claim, world.pos_token)
    assert await pos.receive_nothing(0.3)
    for comm in (device, pos):
        await hang_up(comm)
    await listener.close()


async def test_a_claim_taken_before_any_pos_socket_opens_already_holds(world, fast_path):
    # The claim comes after the device socket attached: claim.changed tells it whom to hold for.
    registration = await register(world.device.tsn, world.pos_credentials)
    device = await device_socket(registration)
    assert device_consumer().holder is None
    listener = await Listener.open(world.pos_token)
    claim = await listener.claim(world.device.tsn)
    await until(lambda: device_consumer().holder is not None, "the device heard of the claim")
    await device.send_to(text_data="ready")
    await until(lambda: held_count() == 1, "the frame held")
    pos = await session_socket(claim, world.pos_token)
    assert await pos.receive_from(WAIT) == "ready"
    for comm in (device, pos):
        await hang_up(comm)
    await listener.close()


async def test_a_pos_frame_for_a_terminal_that_is_not_connected_still_closes_4503(world):
    registration = await register(world.device.tsn, world.pos_credentials, endpoints=["/", "/other"])
    device = await device_socket(registration)
    listener = await Listener.open(world.pos_token)
    claim = await listener.claim(world.device.tsn)
    pos = await session_socket(claim, world.pos_token, "/other")
    await pos.send_to(text_data=json.dumps({"sale": 1}))  # never queued: a payment must not start late
    await expect_close(pos, 4503)
    await hang_up(device)
    await listener.close()


async def test_a_device_socket_that_closes_gives_its_held_bytes_back(world):
    _registration, device, listener, _claim = await claimed_world(world)
    await device.send_to(text_data="approved")
    await until(lambda: held_count() == 1, "the answer held")
    assert held.budget.bytes == len("approved")
    await hang_up(device)
    await until(lambda: held.budget.bytes == 0, "the bytes given back")
    await listener.close()
