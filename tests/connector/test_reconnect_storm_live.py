"""A reconnect storm in small (issue 13): a uvicorn worker holding 300 terminals is restarted
(SIGTERM, then the same command on the same port, on the same database), and every
terminal comes back by itself, with its session and the POS's claim.

The terminals are the client library's SimulatedTerminal (connector/clients/terminal.py)
with its own backoff (full jitter, the server's retry hints), in this process; a POS
(connector/clients/pos.py) claims 30 of them before the restart and, after it, reopens its
pos-listener (`PosClient.reconnect`) and its session sockets without claiming again.
The 5,000-terminal figure is bench/storm.py's; here the point is that nobody is lost.

Runs on both CI databases: SQLite with the in-memory channel layer (one process is all this
needs), and PostgreSQL with Redis (REDIS_URL is passed on to the worker). Bounds are
timeouts, never timing assertions.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.clients import PosClient, SimulatedTerminal, SocketClosed, echo
from connector.clients.common import close_retry_after, retry_delay
from connector.clients.pos import Claim, SessionSocket
from tests.factories import DeviceFactory, StoreFactory, make_access_token, make_pos, switch_cloud_connector_on
from tests.live import LiveServer, free_port, run_bounded, start_server

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

TERMINALS = 300
CLAIMS = 30
TRANSACTION = "/upp/v1/transaction"
START_BATCH = 25  # terminals started at once before the restart: the set-up is not the storm
ONLINE_BOUND = 90  # seconds for all of them to be online again after the restart
POLL = 0.1
SETTLE_POLLS = 10  # online this many looks in a row: no socket is being shed any more
POS_ATTEMPTS = 10  # a POS socket shed (1013) or refused after the restart is tried this often
SCENARIO_TIMEOUT = 240
# The library's defaults (0.5 s, 30 s) but a lower ceiling: it bounds the last terminal's
# wait after the restart gap and keeps the test short; the backoff's shape is the same.
BACKOFF = {"min_delay": 0.5, "max_delay": 8.0}


def start_worker(tmp_path: Path, port: int) -> LiveServer:
    """The production uvicorn worker (`make serve`'s) on `port` and the test database."""
    return start_server(tmp_path, server="uvicorn", port=port)


class Restartable:
    """One worker on a fixed port, restarted in place: `restart()` sends SIGTERM, waits for
    the exit (it closes every socket with 1001 first) and starts the same command again."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.tmp_path = tmp_path
        self.worker = start_worker(tmp_path, self.port)
        self.exit_code: int | None = None

    @property
    def url(self) -> str:
        return self.worker.ws_url

    async def restart(self) -> None:
        self.worker.process.send_signal(signal.SIGTERM)
        for _ in range(300):
            if self.worker.process.poll() is not None:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the worker did not exit within 30 s of SIGTERM")
        self.exit_code = self.worker.process.returncode
        self.worker = await asyncio.to_thread(start_worker, self.tmp_path, self.port)

    def log(self) -> str:
        return self.worker.log()  # both workers' output: one file per port, appended

    def stop(self) -> None:
        self.worker.stop()


@pytest.fixture
def restartable(transactional_db, tmp_path: Path) -> Iterator[Restartable]:
    server = Restartable(tmp_path)
    try:
        yield server
    finally:
        server.stop()
        print(f"--- worker log ---\n{server.log()[-8000:]}")


def store_with_terminals(count: int):
    """One store with `count` usable devices and a POS; Cloud Connector on for all."""
    store = StoreFactory()
    devices = [DeviceFactory(store=store) for _ in range(count)]
    switch_cloud_connector_on(store.merchant)
    return devices, make_pos(store=store)


async def start_all(terminals: list[SimulatedTerminal]) -> None:
    for first in range(0, len(terminals), START_BATCH):
        await asyncio.gather(*(t.start(timeout=60) for t in terminals[first : first + START_BATCH]))


async def wait_all_online(terminals: list[SimulatedTerminal], bound: float) -> int:
    """Polls until every terminal has been online SETTLE_POLLS looks in a row; the number
    online when the bound ran out otherwise."""
    steady = 0
    for _ in range(int(bound / POLL)):
        if all(t.online for t in terminals):
            steady += 1
            if steady >= SETTLE_POLLS:
                return len(terminals)
        else:
            steady = 0
        if any(t.stopped_by is not None for t in terminals):
            break
        await asyncio.sleep(POLL)
    return sum(t.online for t in terminals)


async def reconnect_pos(pos: PosClient) -> set[str]:
    """Reopen the pos-listener after the restart (PosClient.reconnect: backoff, hint) and
    list the devices claimed by this POS; a listener shed with 1013 is reopened again."""
    for _ in range(POS_ATTEMPTS):
        await pos.reconnect(**BACKOFF)
        try:
            return {d.tsn for d in await pos.devices() if d.claimed_by_you}
        except SocketClosed as exc:
            if exc.code not in (1001, 1006, 1013):
                raise
    raise AssertionError(f"the pos-listener was not served after {POS_ATTEMPTS} attempts: {pos.closed}")


async def frames_both_ways(pos: PosClient, claim: Claim, terminal: SimulatedTerminal, tag: str) -> None:
    """Open the claimed session's socket (no claim sent) and relay a frame each way; a
    session socket shed or refused is opened again after the library's delay."""
    for attempt in range(1, POS_ATTEMPTS + 1):
        session: SessionSocket | None = None
        try:
            session = await pos.open_session(claim, TRANSACTION)
            await session.send(f"{tag} pos->device")
            assert await session.recv(timeout=15) == f"{tag} pos->device"  # the terminal echoes
            await terminal.send(TRANSACTION, f"{tag} device->pos".encode())
            assert await session.recv(timeout=15) == f"{tag} device->pos".encode()
            await session.close()
            return
        except SocketClosed as exc:
            if exc.code in (4403, 4404, 4409, 4410):
                raise AssertionError(f"{tag}: the claim did not hold: {exc}") from None
            hint = close_retry_after(exc.code, exc.reason)
        await asyncio.sleep(retry_delay(attempt, retry_after=hint, **BACKOFF))
    raise AssertionError(f"{tag}: the session socket was not served after {POS_ATTEMPTS} attempts")


def test_a_restarted_worker_gets_every_terminal_back_with_its_session_and_the_claims_hold(restartable):
    devices, pos_record = store_with_terminals(TERMINALS)
    token = make_access_token(pos_record.application)
    claimed_devices = devices[:: TERMINALS // CLAIMS][:CLAIMS]

    async def scenario() -> None:
        terminals = {
            d.serial: SimulatedTerminal(
                restartable.url,
                tsn=d.serial,
                client_id=pos_record.application.client_id,
                client_secret=pos_record.client_secret,
                endpoints=[TRANSACTION],
                responder=echo,
                **BACKOFF,
            )
            for d in devices
        }
        fleet = list(terminals.values())
        pos = PosClient(restartable.url, token=token)
        try:
            begun = time.monotonic()
            await start_all(fleet)
            print(f"{TERMINALS} terminals online in {time.monotonic() - begun:.1f} s")
            await pos.connect()
            claims = {d.serial: await pos.claim(d.serial) for d in claimed_devices}
            before = {serial: terminals[serial].registration.session_id for serial in claims}
            assert {serial: claim.session_id for serial, claim in claims.items()} == before

            started = time.monotonic()
            await restartable.restart()
            print(f"the worker listened again {time.monotonic() - started:.1f} s after SIGTERM")
            online = await wait_all_online(fleet, ONLINE_BOUND)
            print(
                f"{online} of {TERMINALS} terminals online {time.monotonic() - started:.1f} s after SIGTERM; "
                f"registration attempts {sum(t.attempts for t in fleet)}, sheds {sum(t.sheds for t in fleet)}"
            )
            stopped = {t.tsn: repr(t.stopped_by) for t in fleet if t.stopped_by is not None}
            assert stopped == {}, "terminals gave up"
            assert online == TERMINALS
            assert restartable.exit_code is not None

            after = {serial: terminals[serial].registration.session_id for serial in claims}
            assert after == before, "a claimed terminal came back with another session"
            assert await reconnect_pos(pos) == {d.tsn for d in claimed_devices}
            for i, device in enumerate(claimed_devices):
                await frames_both_ways(pos, claims[device.serial], terminals[device.serial], f"claim {i}")
        finally:
            await pos.close()
            await asyncio.gather(*(t.stop() for t in fleet))

    run_bounded(scenario(), timeout=SCENARIO_TIMEOUT)
    log = restartable.log()
    assert "Traceback" not in log
