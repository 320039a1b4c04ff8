"""Reconnecting in the client library (docs/protocol.md, "Reconnecting after a loss or a
restart"): the full-jitter backoff, the server's retry hints (the `retry_after=N` of a 1013
close, the `retry_after` of a 429 answer), and a terminal and a POS that honour them against
small real `websockets` servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve

from connector.clients import PosClient, SimulatedTerminal, SocketClosed, TerminalStopped
from connector.clients.common import (
    MAX_RETRY_AFTER,
    TRY_AGAIN_LATER,
    close_retry_after,
    parse_envelope,
    retry_after_from_reason,
    retry_after_value,
    retry_delay,
)
from connector.clients.terminal import backoff_delay

DEVICE_LISTENER = "/cloud-connector/v1/device-listener"
POS_LISTENER = "/cloud-connector/v1/pos-listener"
SHED_REASON = "try again later; retry_after={}"
DRAWS = 4000
FAST = {"min_delay": 0.01, "max_delay": 0.05}


@pytest.fixture(autouse=True)
def seeded_random():
    """The draws are random; a fixed seed makes a failure reproducible."""
    state = random.getstate()
    random.seed(20240613)
    yield
    random.setstate(state)


# -- the backoff ----------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 12])
def test_the_backoff_draws_from_zero_to_the_exponential_ceiling_capped_at_max_delay(attempt):
    ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
    draws = [backoff_delay(attempt, min_delay=0.5, max_delay=30.0) for _ in range(DRAWS)]
    assert all(0 <= d <= ceiling for d in draws)
    # Full jitter uses the whole window, from zero: not [ceiling/2, ceiling] (equal jitter).
    assert min(draws) < 0.02 * ceiling
    assert max(draws) > 0.98 * ceiling
    assert statistics.fmean(draws) == pytest.approx(ceiling / 2, rel=0.05)
    below_half = sum(d < ceiling / 2 for d in draws) / DRAWS
    assert below_half == pytest.approx(0.5, abs=0.04)


def test_the_backoff_of_a_very_late_attempt_is_still_bounded_by_max_delay():
    for attempt in (64, 1100, 10**6):
        assert 0 <= backoff_delay(attempt, min_delay=1.0, max_delay=60.0) <= 60.0


def test_the_backoff_with_no_minimum_waits_nothing():
    assert backoff_delay(7, min_delay=0.0, max_delay=0.0) == 0.0


@pytest.mark.parametrize(
    ("attempt", "min_delay", "max_delay", "message"),
    [
        (0, 1.0, 60.0, "attempt counts failures from 1"),
        (-3, 1.0, 60.0, "attempt counts failures from 1"),
        (1.5, 1.0, 60.0, "attempt counts failures from 1"),
        (True, 1.0, 60.0, "attempt counts failures from 1"),
        (1, 2.0, 1.0, "0 <= min_delay <= max_delay"),
        (1, -1.0, 1.0, "0 <= min_delay <= max_delay"),
        (1, 1.0, float("inf"), "0 <= min_delay <= max_delay"),
        (1, float("nan"), 1.0, "0 <= min_delay <= max_delay"),
    ],
)
def test_the_backoff_refuses_bad_arguments_with_a_clear_error(attempt, min_delay, max_delay, message):
    with pytest.raises(ValueError, match=message):
        backoff_delay(attempt, min_delay=min_delay, max_delay=max_delay)


# -- the hints ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "seconds"),
    [
        ("try again later; retry_after=5", 5.0),
        ("retry_after=1", 1.0),
        ("try again later, retry_after=12 (shedding)", 12.0),
        ("retry_after=0", 0.0),
        ("try again later; retry_after=999999999999999999999999", MAX_RETRY_AFTER),
        ("try again later; retry_after=601", MAX_RETRY_AFTER),
    ],
)
def test_a_well_formed_retry_after_in_a_close_reason_is_read_in_seconds_and_capped(reason, seconds):
    assert retry_after_from_reason(reason) == seconds


@pytest.mark.parametrize(
    "reason",
    [
        None,
        "",
        "try again later",
        "retry_after=",
        "retry_after=soon",
        "retry_after=-5",
        "retry_after=2.5",
        "retry_after=5s",
        "x_retry_after=5",
        "retry_after=\u0663",  # an Arabic-Indic digit: not a number of the contract
        "retry-after=5",
    ],
)
def test_a_close_reason_without_a_well_formed_retry_after_gives_no_hint(reason):
    assert retry_after_from_reason(reason) is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (37, 37.0),
        (0, 0.0),
        (2.5, 2.5),
        ("8", 8.0),
        (10**400, MAX_RETRY_AFTER),
        (float("inf"), MAX_RETRY_AFTER),
        ("9" * 5000, MAX_RETRY_AFTER),
    ],
)
def test_a_429_retry_after_value_is_read_in_seconds_and_capped(value, seconds):
    assert retry_after_value(value) == seconds


@pytest.mark.parametrize("value", [None, -1, -0.5, True, False, float("nan"), "", "soon", "-3", "1e3", [5], {"s": 5}])
def test_a_429_retry_after_that_is_not_a_non_negative_number_gives_no_hint(value):
    assert retry_after_value(value) is None


def test_only_a_1013_close_carries_a_hint():
    assert close_retry_after(TRY_AGAIN_LATER, SHED_REASON.format(4)) == 4.0
    assert close_retry_after(1001, SHED_REASON.format(4)) is None
    assert close_retry_after(None, SHED_REASON.format(4)) is None
    assert close_retry_after(TRY_AGAIN_LATER, "try again later") is None


def test_the_delay_after_a_hint_is_the_hint_and_at_most_min_delay_more_without_one_the_backoff():
    draws = [retry_delay(3, min_delay=1.0, max_delay=60.0, retry_after=5.0) for _ in range(DRAWS)]
    assert all(5.0 <= d <= 6.0 for d in draws)
    # Spread within the hint's second (the server spreads the hints themselves), and the
    # backoff is not added on top: the client is back when the server said it has room.
    assert min(draws) < 5.1 and max(draws) > 5.9
    assert all(0 <= retry_delay(3, min_delay=1.0, max_delay=60.0) <= 4.0 for _ in range(100))
    assert retry_delay(1, min_delay=0.0, max_delay=0.0, retry_after=10**9) == MAX_RETRY_AFTER
    assert retry_delay(1, min_delay=0.0, max_delay=0.0, retry_after=-7) == 0.0


# -- against real servers -------------------------------------------------------------------

Handler = Callable[[ServerConnection], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0) as running:
        yield f"ws://127.0.0.1:{running.sockets[0].getsockname()[1]}"


def registration_answer(ws: ServerConnection, flow_id: str | None, session_id: str) -> str:
    host = ws.request.headers["Host"]
    resource = {
        "status": "ok",
        "status_code": 200,
        "session_id": session_id,
        "connection_url": f"ws://{host}/cloud-connector/v1/device/{session_id}",
        "authorization_header": {"Authorization": f"Bearer jwt-{session_id}"},
        "endpoints": ["/"],
        "expires_in": 300,
    }
    return json.dumps({"response": {"flow_id": flow_id, "resource": resource}})


class SheddingDeviceSide:
    """A device side that sheds: the first `shed_listener` device-listener sockets and the
    first `shed_device` device sockets are accepted and closed at once with 1013 and
    `reason`, before any message is read, as an overloaded worker does; then it serves.
    `rate_limit` answers the first registration 429 with that retry_after instead.
    Records when each socket arrived and when each was shed (monotonic seconds)."""

    def __init__(
        self,
        *,
        shed_listener: int = 0,
        shed_device: int = 0,
        reason: str = "",
        rate_limit: object = None,
    ) -> None:
        self.shed_listener = shed_listener
        self.shed_device = shed_device
        self.reason = reason
        self.rate_limit = rate_limit
        self.arrivals: list[tuple[str, float]] = []
        self.refusals: list[tuple[str, float]] = []
        self.served = asyncio.Event()

    async def __call__(self, ws: ServerConnection) -> None:
        kind = "listener" if ws.request.path == DEVICE_LISTENER else "device"
        self.arrivals.append((kind, time.monotonic()))
        if kind == "listener":
            await self._listener(ws)
        else:
            await self._device(ws)

    async def _listener(self, ws: ServerConnection) -> None:
        if self.shed_listener > 0:
            self.shed_listener -= 1
            await self._shed(ws, "listener")
            return
        envelope = parse_envelope(await ws.recv())
        if self.rate_limit is not None:
            refusal = {"status": "error", "status_code": 429, "error": "rate_limited", "message": "slow down"}
            refusal["retry_after"], self.rate_limit = self.rate_limit, None
            await ws.send(json.dumps({"response": {"flow_id": envelope.flow_id, "resource": refusal}}))
            self.refusals.append(("429", time.monotonic()))
        else:
            await ws.send(registration_answer(ws, envelope.flow_id, "sess-1"))
        await ws.close(1000)

    async def _device(self, ws: ServerConnection) -> None:
        if self.shed_device > 0:
            self.shed_device -= 1
            await self._shed(ws, "device")
            return
        self.served.set()
        async for frame in ws:
            await ws.send(frame)

    async def _shed(self, ws: ServerConnection, kind: str) -> None:
        await ws.close(TRY_AGAIN_LATER, self.reason)
        self.refusals.append((kind, time.monotonic()))

    def gaps(self) -> list[float]:
        """Seconds from each refusal to the next registration that followed it."""
        listeners = [t for kind, t in self.arrivals if kind == "listener"]
        return [min(t for t in listeners if t > refused) - refused for _, refused in self.refusals]


def terminal(url: str, **options) -> SimulatedTerminal:
    return SimulatedTerminal(url, tsn="230000001", client_id="c", client_secret="s", **(FAST | options))


async def test_a_terminal_shed_by_the_device_listener_waits_at_least_the_hint_then_comes_back():
    side = SheddingDeviceSide(shed_listener=1, reason=SHED_REASON.format(1))
    retries: list[float] = []
    async with server(side) as url:
        async with terminal(url, on_retry=lambda why, delay: retries.append(delay)) as online:
            assert online.registration is not None and online.registration.session_id == "sess-1"
            await asyncio.wait_for(side.served.wait(), 10)
            assert (online.sheds, online.attempts, online.stopped_by) == (1, 2, None)
    [gap] = side.gaps()
    assert gap >= 1.0
    assert 1.0 <= retries[0] <= 1.0 + FAST["min_delay"]


async def test_a_terminal_whose_device_socket_is_shed_waits_at_least_the_hint_then_comes_back():
    side = SheddingDeviceSide(shed_device=2, reason=SHED_REASON.format(1))
    async with server(side) as url:
        async with terminal(url) as online:
            await asyncio.wait_for(side.served.wait(), 10)
            await online.wait_online()
            assert (online.sheds, online.registrations, online.stopped_by) == (2, 3, None)
    assert [kind for kind, _ in side.refusals] == ["device", "device"]
    assert all(gap >= 1.0 for gap in side.gaps())


async def test_a_1013_without_a_hint_is_retried_with_the_backoff_alone_and_never_stops_the_terminal():
    side = SheddingDeviceSide(shed_listener=4, shed_device=4, reason="try again later")
    async with server(side) as url:
        async with terminal(url) as online:
            await asyncio.wait_for(side.served.wait(), 10)
            assert (online.sheds, online.stopped_by) == (8, None)
    assert all(gap < 1.0 for gap in side.gaps())


async def test_a_rate_limited_registration_waits_its_retry_after_then_comes_back():
    side = SheddingDeviceSide(rate_limit=1)
    async with server(side) as url:
        async with terminal(url) as online:
            await asyncio.wait_for(side.served.wait(), 10)
            assert online.attempts == 2
    [gap] = side.gaps()
    assert gap >= 1.0


async def test_a_garbage_hint_is_ignored_and_a_huge_one_capped_not_obeyed_for_ever():
    side = SheddingDeviceSide(shed_listener=1, reason="try again later; retry_after=tomorrow")
    async with server(side) as url:
        async with terminal(url):
            await asyncio.wait_for(side.served.wait(), 10)
    assert side.gaps()[0] < 1.0
    retries: list[float] = []
    huge = SheddingDeviceSide(shed_listener=1, reason=SHED_REASON.format(10**30))
    async with server(huge) as url:
        shed = terminal(url, on_retry=lambda why, delay: retries.append(delay))
        with pytest.raises(TimeoutError):
            await shed.start(timeout=0.5)
        await shed.stop()
    assert retries and MAX_RETRY_AFTER <= retries[0] <= MAX_RETRY_AFTER + FAST["min_delay"]


async def test_a_terminal_shed_more_often_than_max_attempts_gives_up_with_the_last_reason():
    side = SheddingDeviceSide(shed_listener=10, reason="try again later")
    async with server(side) as url:
        with pytest.raises(TerminalStopped, match="gave up after 3 attempts; last: device-listener closed: 1013"):
            await terminal(url, max_attempts=3).start()


class SheddingPosListener:
    """A pos-listener whose first `shed` sockets are closed with 1013 and a hint at once;
    later ones answer every request with an empty `devices` list."""

    def __init__(self, *, shed: int, reason: str) -> None:
        self.shed = shed
        self.reason = reason
        self.arrivals: list[float] = []

    async def __call__(self, ws: ServerConnection) -> None:
        self.arrivals.append(time.monotonic())
        if self.shed > 0:
            self.shed -= 1
            await ws.close(TRY_AGAIN_LATER, self.reason)
            return
        async for frame in ws:
            envelope = parse_envelope(frame)
            resource = {"status": "ok", "status_code": 200, "devices": []}
            await ws.send(json.dumps({"response": {"flow_id": envelope.flow_id, "resource": resource}}))


async def test_a_pos_shed_by_the_listener_reconnects_after_the_hint_and_its_requests_are_answered():
    listener = SheddingPosListener(shed=1, reason=SHED_REASON.format(1))
    async with server(listener) as url:
        pos = await PosClient(url, token="t").connect()
        with pytest.raises(SocketClosed, match="1013"):
            await pos.devices()
        assert pos.closed is not None and pos.closed.code == TRY_AGAIN_LATER
        await pos.reconnect(**FAST)
        assert await pos.devices() == []
        await pos.close()
    assert listener.arrivals[1] - listener.arrivals[0] >= 1.0


async def test_a_pos_that_cannot_reconnect_says_so_after_max_attempts():
    async with server(SheddingPosListener(shed=0, reason="")) as url:
        pass  # nothing listens on that port any more
    pos = PosClient(url, token="t")
    with pytest.raises(SocketClosed, match="not reopened after 2 attempts"):
        await pos.reconnect(max_attempts=2, **FAST)
    with pytest.raises(ValueError, match="max_attempts"):
        await pos.reconnect(max_attempts=0)
