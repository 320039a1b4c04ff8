"""Admission (connector.relay.admission): a worker admits new sockets while its control work
in flight stays under max(ADMISSION_MIN_PENDING, rate × ADMISSION_MAX_WAIT) and sheds the
rest with 1013 and `retry_after=<seconds>` in the reason, before any database or Redis work;
what it admitted is served as before."""

from __future__ import annotations

import random
import re

import pytest
from channels.db import database_sync_to_async

from connector.models import DeviceSession
from connector.relay import admission as admission_module
from connector.relay.admission import SHED_CODE, Admission, admission
from tests.connector.relay_world import (
    TIMEOUT,
    Listener,
    communicator,
    device_socket,
    hang_up,
    register,
)

HINT = re.compile(r"^try again later; retry_after=(\d+)$")
DEVICE_LISTENER = "/cloud-connector/v1/device-listener"
POS_LISTENER = "/cloud-connector/v1/pos-listener"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gate(settings, *, minimum: int = 4, wait: float = 2.0) -> tuple[Admission, Clock]:
    settings.CLOUD_CONNECTOR = {
        **settings.CLOUD_CONNECTOR,
        "ADMISSION_MIN_PENDING": minimum,
        "ADMISSION_MAX_WAIT": wait,
    }
    clock = Clock()
    gate_ = Admission(clock=clock)
    gate_.draw = random.Random(7).randint
    return gate_, clock


# --- the gate -----------------------------------------------------------------------------------


def test_it_admits_up_to_the_minimum_while_nothing_has_finished_and_sheds_the_rest(settings):
    gate_, _ = gate(settings, minimum=4)
    assert [gate_.enter() for _ in range(6)] == [True] * 4 + [False] * 2
    assert (gate_.pending, gate_.shed_total) == (4, 2)
    gate_.leave()
    assert gate_.enter() and not gate_.enter()


def test_the_limit_follows_the_rate_it_finishes_work_at(settings):
    gate_, clock = gate(settings, minimum=4, wait=2.0)
    for _ in range(50):  # 50 operations in one second...
        gate_.enter()
        gate_.leave()
        clock.now += 0.02
    # A worker that has lived less than the 5 s window is judged by what it did since its
    # first completion (at least a second): 50/s, not 50 spread over 5 s.
    assert gate_.rate() == pytest.approx(50.0)
    assert gate_.limit() == 100  # 50/s × 2 s
    clock.now += 4
    assert gate_.rate() == pytest.approx(50 / 5.0)  # the whole window lived: 10/s
    assert gate_.limit() == 20
    clock.now += 10  # ...and forgotten once the window has passed
    assert gate_.rate() == 0 and gate_.limit() == 4


def test_shed_clients_are_given_turns_at_the_rate_after_the_work_pending_and_the_hint_is_bounded(settings):
    gate_, clock = gate(settings, minimum=4, wait=2.0)  # a cold process assumes 4 / 2 s = 2/s
    for _ in range(4):
        gate_.enter()
    hints = [gate_.retry_after() for _ in range(6)]
    # 4 pending take 2 s at 2/s; then one slot each half second: 2.5, 3, 3.5, 4, 4.5, 5 s.
    assert hints == [3, 3, 4, 4, 5, 5]
    # Past the longest hint, the schedule stops growing and the overflow is spread over the
    # hint's second half, not all told the longest hint (they would come back together).
    longest = admission_module.MAX_RETRY_AFTER
    overflow = [gate_.retry_after() for _ in range(1000)][200:]
    assert all(longest // 2 <= hint <= longest for hint in overflow)
    assert len(set(overflow)) > 5
    clock.now += 1000  # the schedule has passed: the next turn starts after the work pending
    assert gate_.retry_after() == 3


def test_turns_follow_the_measured_rate(settings):
    gate_, clock = gate(settings, minimum=4, wait=2.0)
    for _ in range(100):  # 100 operations in one second: 100/s
        gate_.enter()
        gate_.leave()
        clock.now += 0.01
    hints = [gate_.retry_after() for _ in range(300)]
    assert hints[0] == 1 and hints[-1] == 3  # 300 clients at 100/s: spread over three seconds
    assert hints == sorted(hints) and {hints.count(second) for second in (1, 2)} == {100}
    assert HINT.match(gate_.reason())


def test_a_minimum_of_zero_turns_admission_control_off(settings):
    gate_, _ = gate(settings, minimum=0)
    assert all(gate_.enter() for _ in range(10_000))


# --- the sockets ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_gate():
    """The process's gate as a new worker has it: what other tests' sockets did would count
    in its rate (and raise its limit) for five seconds."""
    admission.__init__()
    yield
    admission.__init__()


async def shed(comm) -> int:
    connected, _ = await comm.connect(TIMEOUT)
    assert connected
    message = await comm.receive_output(TIMEOUT)
    assert message["type"] == "websocket.close" and message["code"] == SHED_CODE, message
    hint = HINT.match(message.get("reason", ""))
    assert hint, message
    await comm.send_input({"type": "websocket.disconnect", "code": SHED_CODE})
    await comm.wait(TIMEOUT)
    return int(hint.group(1))


@pytest.mark.django_db(transaction=True)
@pytest.mark.cloud_connector_on
@pytest.mark.usefixtures("fresh_state")
async def test_a_full_worker_sheds_new_listeners_with_1013_and_a_hint_but_lets_admitted_work_finish(settings, world):
    registration = await register(world.device.tsn, world.pos_credentials)
    assert registration["status"] == "ok"
    sessions_before = await database_sync_to_async(DeviceSession.objects.count)()
    admission.pending, before = 2, admission.pending
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "ADMISSION_MIN_PENDING": 2}
    try:
        # Where work enters: shed, before anything is read or written.
        for comm in (communicator(DEVICE_LISTENER), communicator(POS_LISTENER, token=world.pos_token)):
            assert 1 <= await shed(comm) <= admission_module.MAX_RETRY_AFTER
        assert await database_sync_to_async(DeviceSession.objects.count)() == sessions_before
        # The device socket of a registration admitted a moment ago completes that work: it is
        # let in whatever the load (shedding it would send the terminal to register again).
        device = await device_socket(registration, "/")
    finally:
        admission.pending = before
    session = await database_sync_to_async(DeviceSession.objects.get)(pk=registration["session_id"])
    assert session.state == DeviceSession.State.ONLINE
    await hang_up(device)


@pytest.mark.django_db(transaction=True)
@pytest.mark.cloud_connector_on
@pytest.mark.usefixtures("fresh_state")
async def test_once_work_drains_the_same_terminal_comes_in_and_its_work_is_counted_out(settings, world):
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "ADMISSION_MIN_PENDING": 2}
    admission.pending = 2
    await shed(communicator(DEVICE_LISTENER))
    admission.pending = 0
    registration = await register(world.device.tsn, world.pos_credentials)
    device = await device_socket(registration, "/")
    listener = await Listener.open(world.pos_token)
    assert (await listener.claim(world.device.tsn))["status"] == "ok"
    # Every admitted socket and registration left the gate when its work was done.
    assert admission.pending == 0
    await listener.close()
    await hang_up(device)


# --- a live server ------------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_a_live_worker_under_a_burst_sheds_with_1013_and_a_hint_and_answers_what_it_admitted(
    server, tmp_path, transactional_db
):
    import asyncio
    import contextlib
    import json

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from tests.factories import make_pos, make_usable_device
    from tests.live import run_bounded, start_server

    device = make_usable_device()
    pos = make_pos(store=device.store)
    live = start_server(tmp_path, server=server, CC_ADMISSION_MIN_PENDING="1", CC_ADMISSION_MAX_WAIT="1")
    request = {
        "request": {
            "flow_id": "1",
            "resource": {
                "tsn": device.serial,
                "custom_registration_data": {
                    "client_id": pos.application.client_id,
                    "client_secret": pos.client_secret,
                },
            },
        }
    }
    outcomes: list[tuple[str, object]] = []

    sent: list[int] = []
    first_wave_sent = asyncio.Event()

    async def one() -> None:
        async with connect(f"{live.ws_url}{DEVICE_LISTENER}", open_timeout=20) as ws:
            try:
                await ws.send(json.dumps(request))
                sent.append(1)
                if len(sent) >= 20:
                    first_wave_sent.set()
                answer = json.loads(await asyncio.wait_for(ws.recv(), 20))
                outcomes.append(("answered", answer["response"]["resource"]["status"]))
            except ConnectionClosed as closed:
                outcomes.append(("closed", (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else None))

    async def second_wave() -> None:
        # Connects while the first wave's registrations are being answered (or the first
        # wave was shed in part already: then it never sends 20, and this one goes at 2 s).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(first_wave_sent.wait(), 2)
        await asyncio.gather(*(one() for _ in range(20)))

    async def burst() -> None:
        await asyncio.gather(*(one() for _ in range(20)), second_wave())

    try:
        run_bounded(burst(), timeout=90)
    finally:
        live.stop()
    shed = [value for kind, value in outcomes if kind == "closed"]
    answered = [value for kind, value in outcomes if kind == "answered"]
    assert len(outcomes) == 40
    assert shed, "a burst of 40 against a gate of 1 shed nothing"
    for code_and_reason in shed:
        assert code_and_reason is not None and code_and_reason[0] == SHED_CODE, code_and_reason
        assert HINT.match(code_and_reason[1]), code_and_reason
    assert answered and all(status == "ok" for status in answered), answered
    assert "Traceback" not in live.log()
