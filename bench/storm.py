"""The reconnect storm (issue 13): N terminals on one uvicorn worker, the worker restarted
(SIGTERM, wait for it to exit, start it again on the same port with the same environment),
and how the fleet comes back.

    .venv/bin/python bench/storm.py [--terminals 5000] [--claims 200]

Needs PostgreSQL and Redis as bench/run.py does (BENCH_DATABASE_URL, dropped and created
afresh; BENCH_REDIS_URL, flushed). This process is the fleet: light terminals, each a plain
`websockets` client that registers on device-listener, opens its device socket, echoes what
the POS sends, and after a loss registers again with the client library's backoff and retry
hints (connector.clients.common: full jitter, a 1013's `retry_after=N`, a 429's
`retry_after`), as docs/protocol.md ("Reconnecting after a loss or a restart") asks of a
terminal. A POS (one token, one pos-listener) claims `claims` of the sessions before the
restart.

Measured: seconds from the SIGTERM until every terminal is online again (the target: 60),
1013 sheds, registration attempts per terminal, terminals that gave up (after MAX_ATTEMPTS
consecutive failures: far above what a storm needs), failed attempts by kind, apart for the
restart itself (SIGTERM until the new worker listens) and, after it, those without a close
code (timeouts, resets), the new worker's CPU seconds from listening to all online
(bench/cpu.py), the load generator's own CPU and event-loop lag over that window (when it
lags, the fleet itself is part of the limit and some of its timeouts are its own), and that
the claims held: every claimed session kept its id, the POS's new pos-listener lists it
claimed by it, and on RELAY_CHECKS of them a frame goes through the session socket without
claiming again. Every wait is bounded (BOUND); every loop by a count.

`storm(demo, tsns, terminals, claims)` and `storm_table(result)` are what bench/run.py uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    MAX_SIZE,
    ROOT,
    Control,
    Demo,
    Server,
    Tsns,
    fetch_token,
    free_port,
    fresh_backends,
    open_listener,
    raise_fd_limit,
    server_command,
    server_env,
)
from common import wait_listening as common_wait_listening  # noqa: E402
from cpu import cpu_seconds  # noqa: E402

from connector.clients.common import (  # noqa: E402
    TRY_AGAIN_LATER,
    close_retry_after,
    retry_after_value,
    retry_delay,
)

BOUND = 180.0  # seconds: any wait of the storm past this fails it
TARGET_SECONDS = 60.0  # issue 13: every terminal online again within 60 s of the restart
MAX_ATTEMPTS = 50  # consecutive failures after which a light terminal gives up
MAX_CYCLES = 1000  # registrations of one terminal over the whole run, a bound for its loop
MIN_DELAY, MAX_DELAY = 0.5, 30.0  # the client library's defaults (SimulatedTerminal)
SETUP_CONCURRENCY = 32  # terminals registering at once before the restart
SETUP_RATE_FLOOR = 20.0  # terminals/s: the set-up's bound is BOUND or terminals / this
HANDSHAKE_TIMEOUT = 10.0  # websockets' open_timeout, and the wait for the registration answer
RELAY_CHECKS = 20  # claimed sessions on which the POS relays a frame after the restart
POS_ATTEMPTS = 10  # a POS socket shed or refused after the restart is tried this often
POLL = 0.1  # seconds between two looks at the fleet
PROGRESS_POLLS = 100  # looks between two progress lines
LAG_NOTICED = 0.05  # seconds: a timer of the fleet's loop this late counts as lagging
SETTLE_POLLS = 10  # all online for this many looks in a row: nobody is being shed any more
DEVICE_LISTENER = "/cloud-connector/v1/device-listener"
# Close codes of a session socket that say the claim did not hold (§9): not retried.
CLAIM_LOST = frozenset({4403, 4404, 4409, 4410})


# --- the fleet -------------------------------------------------------------------------------


class Failure(Exception):
    """An attempt that did not bring the terminal online: `kind` for the tally, `code` the
    close code if the server sent one, `hint` the retry_after it asked for."""

    def __init__(self, kind: str, *, code: int | None = None, hint: float | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.code = code
        self.hint = hint


class GaveUp(Exception):
    """A terminal that stops for good: MAX_ATTEMPTS failures, or a refusal that is final."""


def handshake_failure(exc: BaseException) -> Failure:
    """An opening handshake that failed without a close code, by kind."""
    if isinstance(exc, ConnectionRefusedError):
        return Failure("connection refused")
    if isinstance(exc, TimeoutError):
        return Failure("handshake timeout")
    if isinstance(exc, ConnectionResetError):
        return Failure("connection reset")
    if isinstance(exc, InvalidStatus):
        return Failure(f"HTTP {exc.response.status_code}")
    if isinstance(exc, InvalidHandshake):
        return Failure(f"handshake: {type(exc).__name__}")
    return Failure(f"{type(exc).__name__}")


def closed_failure(exc: ConnectionClosed, step: str) -> Failure:
    if exc.rcvd is None:
        return Failure(f"{step} closed without a close frame")
    code, reason = exc.rcvd.code, exc.rcvd.reason
    return Failure(f"{step} closed {code}", code=code, hint=close_retry_after(code, reason))


@dataclass
class Tally:
    """What the fleet saw, for the whole run and since the restart."""

    restarted_at: float | None = None  # perf_counter of the SIGTERM
    listening_at: float | None = None  # perf_counter when the new worker listened
    online: int = 0
    sheds: int = 0
    sheds_before_restart: int = 0
    largest_hint: float = 0.0  # the longest retry_after the server asked for (capped by the library)
    closes: Counter = field(default_factory=Counter)  # close codes of served device sockets
    # Failed attempts by kind: while the old worker stopped and nothing listened, and once
    # the new worker listened; of the latter, the ones the server ended without a close code.
    during_restart: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    without_code: Counter = field(default_factory=Counter)
    gave_up: list[str] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)

    def failed(self, failure: Failure) -> None:
        if failure.hint is not None:
            self.largest_hint = max(self.largest_hint, failure.hint)
        if failure.code == TRY_AGAIN_LATER:
            if self.restarted_at is None:
                self.sheds_before_restart += 1
            else:
                self.sheds += 1
        if self.restarted_at is None:
            return
        if self.listening_at is None:
            self.during_restart[failure.kind] += 1
            return
        self.failures[failure.kind] += 1
        if failure.code is None:
            self.without_code[failure.kind] += 1


class LightTerminal:
    """A terminal as its application would be written with `websockets` and the library's
    backoff: register, open the device socket, echo, come back after a loss."""

    def __init__(self, ws_url: str, demo: Demo, tsn: str, tally: Tally) -> None:
        self.ws_url = ws_url
        self.tsn = tsn
        self.tally = tally
        self.credentials = {"client_id": demo.client_id, "client_secret": demo.client_secret}
        self.session_id: str | None = None
        self.online_at: float | None = None  # perf_counter of the last device socket opened
        self.is_online = False
        self.attempts_since_restart = 0
        self.socket: ClientConnection | None = None

    async def register(self) -> dict:
        request = {
            "request": {"flow_id": "1", "resource": {"tsn": self.tsn, "custom_registration_data": self.credentials}}
        }
        try:
            listener = await connect(
                self.ws_url + DEVICE_LISTENER, compression=None, open_timeout=HANDSHAKE_TIMEOUT, ping_interval=None
            )
        except ConnectionClosed as exc:  # lost while the request was being sent
            raise closed_failure(exc, "device-listener handshake") from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise handshake_failure(exc) from None
        try:
            async with listener, asyncio.timeout(HANDSHAKE_TIMEOUT):
                await listener.send(json.dumps(request))
                answer = json.loads(await listener.recv())["response"]["resource"]
        except ConnectionClosed as exc:
            raise closed_failure(exc, "device-listener") from None
        except TimeoutError:
            raise Failure("registration answer timeout") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise GaveUp(f"{self.tsn}: not a registration answer ({exc})") from None
        if answer.get("status") == "ok":
            return answer
        if answer.get("status_code") == 429:
            raise Failure("429 rate_limited", code=429, hint=retry_after_value(answer.get("retry_after")))
        raise GaveUp(f"{self.tsn}: registration refused: {answer}")

    async def open_device_socket(self, answer: dict) -> ClientConnection:
        try:
            return await connect(
                answer["connection_url"],
                additional_headers=answer["authorization_header"],
                compression=None,
                max_size=MAX_SIZE,
                open_timeout=HANDSHAKE_TIMEOUT,
                ping_interval=None,
            )
        except ConnectionClosed as exc:  # lost while the request was being sent
            raise closed_failure(exc, "device socket handshake") from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise handshake_failure(exc) from None

    async def attempt(self) -> ClientConnection:
        if self.tally.restarted_at is not None:
            self.attempts_since_restart += 1
        answer = await self.register()
        self.session_id = answer["session_id"]
        return await self.open_device_socket(answer)

    async def serve(self, ws: ClientConnection) -> tuple[int | None, str]:
        """Online until the socket closes: echo every frame; the close code and reason."""
        self.socket, self.is_online, self.online_at = ws, True, time.perf_counter()
        self.tally.online += 1
        try:
            async for frame in ws:
                await ws.send(frame)
        except ConnectionClosed:
            pass
        finally:
            self.socket, self.is_online = None, False
            self.tally.online -= 1
        return ws.close_code, ws.close_reason or ""

    async def run(self, gate: asyncio.Semaphore) -> None:
        """Come online (the first time through `gate`), and back after every loss."""
        failures = 0
        first = True
        for _ in range(MAX_CYCLES):
            try:
                if first:
                    async with gate:
                        ws = await self.attempt()
                else:
                    ws = await self.attempt()
            except Failure as failure:
                self.tally.failed(failure)
                failures += 1
                hint = failure.hint
            else:
                first = False
                code, reason = await self.serve(ws)
                hint = close_retry_after(code, reason)
                if code == TRY_AGAIN_LATER:
                    self.tally.failed(Failure("device socket closed 1013", code=code, hint=hint))
                    failures += 1  # shed right after opening: not served, the series goes on
                else:
                    self.tally.closes[code] += 1
                    failures = 1  # served, then lost: a new series, this loss its first failure
            if failures > MAX_ATTEMPTS:
                raise GaveUp(f"{self.tsn}: gave up after {MAX_ATTEMPTS} attempts")
            await asyncio.sleep(retry_delay(failures, min_delay=MIN_DELAY, max_delay=MAX_DELAY, retry_after=hint))
        raise GaveUp(f"{self.tsn}: {MAX_CYCLES} registrations in one run")

    async def run_logged(self, gate: asyncio.Semaphore) -> None:
        """`run()`, and a terminal that stops is counted: one that gave up, or one the load
        generator failed (a bug of this file, reported as such rather than lost in a task)."""
        try:
            await self.run(gate)
        except GaveUp as exc:
            self.tally.gave_up.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - reported in the table's notes
            self.tally.crashed.append(f"{self.tsn}: the light terminal crashed: {exc!r}")


class LoopLag:
    """How late the fleet's own event loop runs a timer: when it lags, the load generator is
    the limit, and its timeouts are partly its own. `run()` until cancelled."""

    def __init__(self) -> None:
        self.max_lag = 0.0
        self.lagging = 0.0  # seconds spent in timers more than LAG_NOTICED late

    def reset(self) -> None:
        self.max_lag, self.lagging = 0.0, 0.0

    async def run(self, looks: int) -> None:
        for _ in range(looks):
            before = time.perf_counter()
            await asyncio.sleep(POLL)
            lag = time.perf_counter() - before - POLL
            self.max_lag = max(self.max_lag, lag)
            if lag > LAG_NOTICED:
                self.lagging += lag + POLL


# --- the worker ---------------------------------------------------------------------------------


@dataclass
class Worker(Server):
    """A uvicorn worker (common.Server) with its log, which both workers of a run append to."""

    log_path: Path

    def tracebacks(self) -> int:
        return self.log_path.read_text(errors="replace").count("Traceback")


def start_worker(port: int, log_path: Path) -> Worker:
    """One uvicorn worker as `make serve` runs it, on `port`, logging to `log_path` (appended:
    the worker started again after the restart writes after the first)."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            server_command("uvicorn", port), cwd=ROOT, env=server_env(port=port), stdout=log, stderr=subprocess.STDOUT
        )
    return Worker(process, port, log_path)


async def wait_listening(worker: Worker, bound: float = BOUND) -> None:
    """common.wait_listening in a thread: the fleet keeps running meanwhile."""
    try:
        await asyncio.to_thread(common_wait_listening, worker.port, worker.process, bound)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; see {worker.log_path}") from None


async def wait_exited(worker: Worker, bound: float = BOUND) -> None:
    for _ in range(int(bound / POLL)):
        if worker.process.poll() is not None:
            return
        await asyncio.sleep(POLL)
    raise RuntimeError(f"the worker did not exit within {bound:.0f} s of SIGTERM")


def stop_worker(worker: Worker) -> None:
    if worker.process.poll() is None:
        worker.process.terminate()
        try:
            worker.process.wait(30)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait(10)


# --- the POS ----------------------------------------------------------------------------------


async def claim_all(worker: Worker, demo: Demo, tsns: list[str], token: str) -> dict[str, dict]:
    """One pos-listener claims every tsn; the claim answers by tsn."""
    listener = await open_listener(worker.ws, token)
    pos = Control(listener)
    claims = {}
    try:
        async with asyncio.timeout(BOUND):
            for tsn in tsns:
                answer = await pos.request({"action": "claim", "tsn": tsn})
                if answer.get("status") != "ok":
                    raise RuntimeError(f"claim of {tsn} refused: {answer}")
                claims[tsn] = answer
    finally:
        await listener.close()
    return claims


async def with_retries(step, what: str):
    """Run `step()` (a POS socket's whole use) until it is not shed or refused: the POS side
    of docs/protocol.md's reconnecting, with the library's delay; POS_ATTEMPTS at most, and
    BOUND seconds in all. RuntimeError says what failed last."""
    last = "nothing tried"
    try:
        async with asyncio.timeout(BOUND):
            for attempt in range(1, POS_ATTEMPTS + 1):
                try:
                    async with asyncio.timeout(HANDSHAKE_TIMEOUT * 3):
                        return await step()
                except ConnectionClosed as exc:
                    failure = closed_failure(exc, what)
                except (OSError, TimeoutError, InvalidHandshake) as exc:
                    failure = handshake_failure(exc)
                last = failure.kind
                if failure.code in CLAIM_LOST:
                    break
                delay = retry_delay(attempt, min_delay=MIN_DELAY, max_delay=MAX_DELAY, retry_after=failure.hint)
                await asyncio.sleep(delay)
    except TimeoutError:
        raise RuntimeError(f"{what}: still failing after {BOUND:.0f} s; last: {last}") from None
    raise RuntimeError(f"{what}: failed after {attempt} attempt(s); last: {last}")


async def claimed_by_us(worker: Worker, token: str) -> set[str]:
    """The tsns a new pos-listener of the POS lists as claimed by it (no claim sent)."""

    async def devices() -> set[str]:
        async with connect(
            f"{worker.ws}/cloud-connector/v1/pos-listener",
            additional_headers={"Authorization": f"Bearer {token}"},
            compression=None,
            max_size=16 * MAX_SIZE,
        ) as listener:
            answer = await Control(listener).request({"action": "devices"})
        return {d["tsn"] for d in answer.get("devices", []) if d.get("claimed_by_you")}

    return await with_retries(devices, "pos-listener")


async def relay_once(session_url: str, token: str, tag: str) -> bool:
    """Open the session socket with the POS's token (no claim) and send one frame; the
    terminal echoes it."""

    async def round_trip() -> bool:
        async with connect(
            session_url, additional_headers={"Authorization": f"Bearer {token}"}, compression=None, ping_interval=None
        ) as session:
            await session.send(tag)
            return await session.recv() == tag

    return await with_retries(round_trip, "session socket")


async def relay_checks(checks: list[tuple[str, str]], token: str) -> tuple[int, Counter]:
    """A frame through each claimed session's socket (`relay_once`); how many went through,
    and why the others did not. BOUND seconds for all of them."""
    relayed, refused = 0, Counter()
    try:
        async with asyncio.timeout(BOUND):
            for i, (tsn, url) in enumerate(checks):
                try:
                    relayed += await relay_once(url, token, f"storm check {i} {tsn}")
                except RuntimeError as exc:
                    refused[str(exc).split("; last: ", 1)[-1]] += 1
    except TimeoutError:
        refused[f"not checked within {BOUND:.0f} s"] += len(checks) - relayed - sum(refused.values())
    return relayed, refused


# --- the storm ------------------------------------------------------------------------------------


@dataclass
class StormResult:
    terminals: int
    claims: int
    setup_seconds: float
    connected_before: int
    downtime_seconds: float  # SIGTERM until the new worker listened
    recovery_seconds: float | None  # SIGTERM until every terminal was online again (None: not within BOUND)
    online_after: int
    sheds: int
    sheds_before_restart: int
    largest_hint: float
    attempts_max: int
    attempts_p99: int
    attempts_median: float
    gave_up: int
    during_restart: dict[str, int]  # failed attempts by kind, SIGTERM until the new worker listened
    failures: dict[str, int]  # failed attempts by kind, once the new worker listened
    without_code: dict[str, int]  # of those, the ones the server ended without a close code
    closes: dict[int, int]  # close codes that ended served device sockets
    back_p50: float | None  # seconds from the SIGTERM until a terminal was online again: median
    back_p90: float | None
    back_p99: float | None
    cpu_seconds: float  # the new worker's, from listening until every terminal was online (or the bound)
    cpu_window: float  # the seconds that CPU was measured over
    loadgen_cpu_seconds: float  # this process's (the fleet's) over the same window: is the load generator the limit?
    loadgen_max_lag: float  # the fleet's event loop over the same window: its latest timer, seconds late
    loadgen_lagging: float  # and the seconds it ran more than LAG_NOTICED late
    sessions_kept: int  # claimed sessions whose terminal came back with the same session id
    claims_listed: int  # claimed sessions the POS's new pos-listener lists as claimed by it
    relayed: int
    relay_checks: int
    tracebacks: int
    notes: list[str] = field(default_factory=list)

    @property
    def without_close_code(self) -> int:
        """Failed attempts since the new worker listened that carried no close code."""
        return sum(self.without_code.values())

    @property
    def met(self) -> bool:
        return (
            self.recovery_seconds is not None
            and self.recovery_seconds <= TARGET_SECONDS
            and self.gave_up == 0
            and self.without_close_code == 0
            and self.sessions_kept == self.claims == self.claims_listed
            and self.relayed == self.relay_checks
        )


def percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] if ordered else 0


def percentile_of(ordered: list[float], q: float) -> float | None:
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] if ordered else None


async def wait_all_online(fleet: list[LightTerminal], tally: Tally, bound: float, label: str) -> bool:
    """Until every terminal has been online for SETTLE_POLLS looks in a row (a socket shed
    right after opening shows online for an instant only); False once `bound` seconds have
    passed (or as many looks: a busy loop makes each look longer). Says how far it got
    every PROGRESS_POLLS looks, on stderr."""
    steady = 0
    started = time.perf_counter()
    for poll in range(int(bound / POLL)):
        elapsed = time.perf_counter() - started
        if elapsed > bound:
            break
        if poll and poll % PROGRESS_POLLS == 0:
            failures = tally.failures.most_common(4) or tally.during_restart.most_common(4)
            print(
                f"  {label}, {elapsed:.0f} s: {tally.online:,} of {len(fleet):,} online, {tally.sheds:,} sheds, "
                f"failures {dict(failures)}"
                + (f", stopped {len(tally.gave_up) + len(tally.crashed)}" if tally.gave_up or tally.crashed else ""),
                file=sys.stderr,
                flush=True,
            )
        if tally.online == len(fleet) and all(t.is_online for t in fleet):
            steady += 1
            if steady >= SETTLE_POLLS:
                return True
        else:
            steady = 0
        stopped = len(tally.gave_up) + len(tally.crashed)
        if stopped and stopped + tally.online >= len(fleet):
            return False
        await asyncio.sleep(POLL)
    return False


async def _storm(demo: Demo, tsns: list[str], claims: int, log_path: Path) -> StormResult:
    port = free_port()
    tally = Tally()
    worker = start_worker(port, log_path)
    fleet = [LightTerminal(f"ws://127.0.0.1:{port}", demo, tsn, tally) for tsn in tsns]
    lag = LoopLag()
    tasks: list[asyncio.Task] = [asyncio.create_task(lag.run(int(4 * BOUND / POLL) + len(tsns)))]
    notes: list[str] = []
    try:
        await wait_listening(worker)
        token = await asyncio.to_thread(fetch_token, worker.http, demo)
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)
        started = time.perf_counter()
        tasks = [asyncio.create_task(t.run_logged(gate), name=t.tsn) for t in fleet]
        setup_bound = max(BOUND, len(fleet) / SETUP_RATE_FLOOR)
        if not await wait_all_online(fleet, tally, setup_bound, "set-up"):
            raise RuntimeError(
                f"only {tally.online} of {len(fleet)} terminals online within {setup_bound:.0f} s of the start"
                + (f"; gave up: {tally.gave_up[:3]}" if tally.gave_up else "")
            )
        setup_seconds = time.perf_counter() - started - SETTLE_POLLS * POLL
        connected_before = tally.online
        print(f"  {connected_before:,} terminals online in {setup_seconds:.1f} s", file=sys.stderr, flush=True)

        step = max(1, len(fleet) // claims) if claims else 1
        claimed_terminals = fleet[::step][:claims]
        answers = await claim_all(worker, demo, [t.tsn for t in claimed_terminals], token)
        claimed = {t.tsn: (t, answers[t.tsn]["session_id"], answers[t.tsn]["session_url"]) for t in claimed_terminals}
        mismatched = [tsn for tsn, (t, sid, _) in claimed.items() if t.session_id != sid]
        if mismatched:
            notes.append(f"{len(mismatched)} claims answered another session id than the terminal's")

        # The restart: SIGTERM, wait for the exit, the same command on the same port.
        tally.restarted_at = time.perf_counter()
        worker.process.send_signal(signal.SIGTERM)
        await wait_exited(worker)
        worker = start_worker(port, log_path)
        await wait_listening(worker)
        tally.listening_at = time.perf_counter()
        cpu_start, own_cpu_start = cpu_seconds(worker.process.pid), cpu_seconds(os.getpid())
        lag.reset()
        downtime = tally.listening_at - tally.restarted_at

        print(f"  the worker listened again {downtime:.1f} s after SIGTERM", file=sys.stderr, flush=True)
        recovered = await wait_all_online(fleet, tally, BOUND, "after the restart")
        cpu = cpu_seconds(worker.process.pid) - cpu_start
        own_cpu = cpu_seconds(os.getpid()) - own_cpu_start
        cpu_window = time.perf_counter() - tally.listening_at
        back = sorted(t.online_at - tally.restarted_at for t in fleet if t.is_online and t.online_at)
        recovery = back[-1] if recovered else None
        if not recovered:
            notes.append(f"only {tally.online:,} of {len(fleet):,} terminals online {BOUND:.0f} s after the restart")

        kept = [tsn for tsn, (t, sid, _) in claimed.items() if t.is_online and t.session_id == sid]
        listed: set[str] = set()
        try:
            listed = await claimed_by_us(worker, token) if claimed else set()
        except RuntimeError as exc:
            notes.append(str(exc))
        checks = [(tsn, url) for tsn, (_, _, url) in list(claimed.items())[:RELAY_CHECKS]]
        relayed, refused = await relay_checks(checks, token)
        notes += [f"{n} of the session sockets checked: {why}" for why, n in refused.items()]
        attempts = [t.attempts_since_restart for t in fleet]
        return StormResult(
            terminals=len(fleet),
            claims=len(claimed),
            setup_seconds=setup_seconds,
            connected_before=connected_before,
            downtime_seconds=downtime,
            recovery_seconds=recovery,
            online_after=tally.online,
            sheds=tally.sheds,
            sheds_before_restart=tally.sheds_before_restart,
            largest_hint=tally.largest_hint,
            attempts_max=max(attempts),
            attempts_p99=percentile(attempts, 0.99),
            attempts_median=percentile(attempts, 0.5),
            gave_up=len(tally.gave_up),
            failures=dict(tally.failures.most_common()),
            without_code=dict(tally.without_code.most_common()),
            during_restart=dict(tally.during_restart.most_common()),
            closes=dict(tally.closes.most_common()),
            back_p50=percentile_of(back, 0.5),
            back_p90=percentile_of(back, 0.9),
            back_p99=percentile_of(back, 0.99),
            cpu_seconds=cpu,
            cpu_window=cpu_window,
            loadgen_cpu_seconds=own_cpu,
            loadgen_max_lag=lag.max_lag,
            loadgen_lagging=lag.lagging,
            sessions_kept=len(kept),
            claims_listed=len(listed & set(claimed)),
            relayed=relayed,
            relay_checks=len(checks),
            tracebacks=worker.tracebacks(),
            notes=notes
            + tally.gave_up[:3]
            + tally.crashed[:3]
            + ([f"{len(tally.crashed)} light terminals crashed"] if tally.crashed else []),
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(t.socket.close() for t in fleet if t.socket is not None), return_exceptions=True)
        await asyncio.to_thread(stop_worker, worker)


def storm(demo: Demo, tsns: Tsns, terminals: int, claims: int) -> StormResult:
    """The storm on `terminals` terminals of `tsns`, `claims` of them claimed by one POS."""
    if terminals < 1 or not 0 <= claims <= terminals:
        raise ValueError(f"the storm needs at least 1 terminal and 0 to {terminals} claims, not {claims}")
    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="storm-") as tmp:
        # BENCH_STORM_LOG keeps the workers' log (with BENCH_LOG_LEVEL=INFO, their lifecycle lines).
        log_path = Path(os.environ.get("BENCH_STORM_LOG") or Path(tmp) / "worker.log")
        try:
            # uvloop, as the server runs: the fleet's own event loop costs less and stays
            # further from being what limits the storm.
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(_storm(demo, tsns.take(terminals), claims, log_path))
        finally:
            if log_path.exists() and "Traceback" in (text := log_path.read_text(errors="replace")):
                first = text.rfind("\n", 0, text.index("Traceback")) + 1
                print(
                    f"--- the workers' log, from its first traceback ---\n{text[first : first + 4000]}", file=sys.stderr
                )


# --- the report ---------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return f"not within {BOUND:.0f} s" if value is None else f"{value:.1f} s"


def storm_table(result: StormResult) -> list[str]:
    r = result
    failures = ", ".join(f"{kind}: {n:,}" for kind, n in r.failures.items()) or "none"
    during = ", ".join(f"{kind}: {n:,}" for kind, n in r.during_restart.items()) or "none"
    closes = ", ".join(f"{code}: {n}" for code, n in r.closes.items()) or "none"
    cpu = f"{r.cpu_seconds:.1f} s over {r.cpu_window:.1f} s ({r.cpu_seconds / r.terminals * 1000:.1f} ms per terminal)"
    back = ", ".join("—" if v is None else f"{v:.1f}" for v in (r.back_p50, r.back_p90, r.back_p99))
    rows = [
        (
            "terminals connected before the restart",
            f"{r.connected_before:,} of {r.terminals:,} in {r.setup_seconds:.1f} s",
            "",
        ),
        ("SIGTERM until the new worker listened", _seconds(r.downtime_seconds), ""),
        ("SIGTERM until every terminal online again", _seconds(r.recovery_seconds), f"≤ {TARGET_SECONDS:.0f} s"),
        ("SIGTERM until a terminal was online again: median, p90, p99 (s)", back, ""),
        ("terminals online at the end", f"{r.online_after:,} of {r.terminals:,}", f"{r.terminals:,}"),
        ("terminals that gave up", str(r.gave_up), "0"),
        (
            "1013 sheds after the restart (before it); longest retry_after",
            f"{r.sheds:,} ({r.sheds_before_restart:,}); {r.largest_hint:.0f} s",
            "",
        ),
        (
            "registration attempts per terminal after the restart: median, p99, max",
            f"{r.attempts_median:.0f}, {r.attempts_p99}, {r.attempts_max}",
            "",
        ),
        ("failed attempts after the worker listened, by kind", failures, ""),
        ("of those, without a close code (timeouts, resets)", f"{r.without_close_code:,}", "0"),
        ("failed attempts while the old worker stopped and no worker listened", during, ""),
        ("close codes that ended served device sockets", closes, ""),
        ("new worker's CPU, listening until all online (or the bound)", cpu, ""),
        (
            "load generator (the fleet, one process) over the same window: CPU, event loop's worst lag, time lagging",
            f"{r.loadgen_cpu_seconds:.1f} s, {r.loadgen_max_lag:.2f} s, {r.loadgen_lagging:.0f} s",
            "",
        ),
        ("claimed sessions back with the same session id", f"{r.sessions_kept} of {r.claims}", f"{r.claims}"),
        (
            "claimed sessions listed as claimed by the POS (no claim sent)",
            f"{r.claims_listed} of {r.claims}",
            f"{r.claims}",
        ),
        (
            "session sockets relaying a frame without a new claim",
            f"{r.relayed} of {r.relay_checks}",
            f"{r.relay_checks}",
        ),
        ("tracebacks in the workers' log", str(r.tracebacks), "0"),
    ]
    lines = ["| storm: one uvicorn worker restarted | measured | target |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {target} |" for name, value, target in rows]
    lines += [f"- {note}" for note in r.notes]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--terminals", type=int, default=5000)
    parser.add_argument("--claims", type=int, default=200)
    args = parser.parse_args()
    if args.terminals < 1 or not 0 <= args.claims <= args.terminals:
        parser.error(f"--terminals must be at least 1 and --claims between 0 and --terminals ({args.terminals})")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(f"preparing {args.terminals:,} terminals …", flush=True)
    demo = fresh_backends(args.terminals)
    result = storm(demo, Tsns(demo), args.terminals, args.claims)
    print("\n".join(storm_table(result)))
    sys.exit(0 if result.met else 1)


if __name__ == "__main__":
    main()
