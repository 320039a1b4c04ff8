"""The parts of `make bench` beyond one process's frame path (bench/run.py runs them):

- `cross`: two processes through Redis. Device sockets on process A, POS sockets on process
  B, so every frame crosses the channel layer; closed-loop round trips (bench/loadgen.py) for
  1 and 50 pairs, 100-byte frames, on RedisChannelLayer and on RedisPubSubChannelLayer
  (bench/pubsub_settings.py), next to the plain relay of the same run.
- `one`: one uvicorn process, grown step by step:
  1. sessions set up per second: register on device-listener, open the device socket, fetch
     a token, open pos-listener, claim, open the session socket; 8 at a time;
  2. `live` live device sessions, then devices disabled through the service
     (connector.services.device_set_enabled, from another process, as the admin or the
     REST API would): time until the clients saw the device and session sockets close;
  3. grown to `terminals` connected idle terminals: RSS growth per terminal.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from common import (
    ROOT,
    Control,
    Demo,
    Server,
    Tsns,
    claim_session,
    close_pairs,
    cloud_connector_pairs,
    fetch_token,
    open_listener,
    plain_pairs,
    register_device,
    server_env,
    start,
)
from loadgen import Result, round_trips

LAYERS = {"RedisChannelLayer": "portal.settings", "RedisPubSubChannelLayer": "pubsub_settings"}
CROSS_PAIRS = (1, 50)
SESSION_WORKERS = 8


# --- two processes through Redis ---------------------------------------------------------------


async def _cross(a: Server, b: Server, demo: Demo, tsns: list[str], seconds: float) -> dict[int, Result]:
    results = {}
    for count in CROSS_PAIRS:
        pairs, listener = await cloud_connector_pairs(a, b, demo, tsns[:count])
        results[count] = await round_trips(pairs, size=100, seconds=seconds)
        await close_pairs(pairs, listener)
    return results


async def _plain(seconds: float) -> dict[int, Result]:
    server = start("plain")
    try:
        results = {}
        for count in CROSS_PAIRS:
            pairs, _ = await plain_pairs(server, count)
            results[count] = await round_trips(pairs, size=100, seconds=seconds)
            await close_pairs(pairs)
        return results
    finally:
        server.stop()


def cross_process(demo: Demo, tsns: Tsns, seconds: float) -> dict[str, dict[int, Result]]:
    print("  plain relay", flush=True)
    results = {"plain relay (one process)": asyncio.run(_plain(seconds))}
    for layer, settings in LAYERS.items():
        print(f"  uvicorn x2, {layer}", flush=True)
        a, b = start("uvicorn", settings), start("uvicorn", settings)
        try:
            results[f"uvicorn x2, {layer}"] = asyncio.run(_cross(a, b, demo, tsns.take(max(CROSS_PAIRS)), seconds))
        finally:
            a.stop()
            b.stop()
    return results


# --- one process: sessions/s, disable, memory ---------------------------------------------------


async def set_up_session(server: Server, demo: Demo, tsn: str, steps: dict[str, list[float]]):
    t0 = time.perf_counter()
    device = await register_device(server.ws, demo, tsn)
    t1 = time.perf_counter()
    token = await asyncio.to_thread(fetch_token, server.http, demo)
    t2 = time.perf_counter()
    listener = await open_listener(server.ws, token)
    session = await claim_session(Control(listener), token, tsn)
    t3 = time.perf_counter()
    for name, value in (
        ("register + device socket", t1 - t0),
        ("token", t2 - t1),
        ("pos-listener + claim + session socket", t3 - t2),
    ):
        steps.setdefault(name, []).append(value)
    return device, session, listener


async def sessions_per_second(server: Server, demo: Demo, tsns: list[str], seconds: float):
    queue = list(reversed(tsns))
    opened: list = []
    steps: dict[str, list[float]] = {}
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while queue and time.perf_counter() < deadline:
            opened.append(await set_up_session(server, demo, queue.pop(), steps))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(SESSION_WORKERS)))
    elapsed = time.perf_counter() - started
    # Close side by side, session sockets first, then pos-listeners, then terminals: a
    # pos-listener hears `device_offline` for every terminal of its credential that leaves,
    # which these clients never read; once more than websockets' max_queue (16) are
    # waiting, the client stops reading and its close waits out close_timeout (10 s).
    sessions, listeners, devices = [s for _, s, _ in opened], [li for _, _, li in opened], [d for d, _, _ in opened]
    for sockets in (sessions, listeners, devices):
        await asyncio.gather(*(ws.close() for ws in sockets))
    medians = {name: statistics.median(values) * 1000 for name, values in steps.items()}
    return len(opened) / elapsed, len(opened), medians, not queue


async def connect_terminals(server: Server, demo: Demo, tsns: list[str], budget: float, concurrency: int = 32):
    queue = list(reversed(tsns))
    sockets: dict[str, object] = {}
    deadline = time.perf_counter() + budget

    async def worker() -> None:
        while queue and time.perf_counter() < deadline:
            tsn = queue.pop()
            sockets[tsn] = await register_device(server.ws, demo, tsn)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sockets


DISABLE = """
import json, sys, time, django
django.setup()
from accounts.scope import SYSTEM
from connector import services
from connector.models import Device
for tsn in sys.argv[1:]:
    device = Device.objects.get(serial=tsn.rsplit("-", 1)[1])
    started = time.time()
    services.device_set_enabled(device=device, enabled=False, actor=SYSTEM)
    print(json.dumps({"tsn": tsn, "started": started}), flush=True)
    time.sleep(0.5)
"""


async def disable_devices(server: Server, demo: Demo, devices: dict[str, object], targets: list[str]) -> list[float]:
    """Claim each target and open its session socket, then disable the targets one by one
    from another process; for each, seconds from the service call until both its sockets
    were closed (infinity if they were not within 15 s)."""
    token = await asyncio.to_thread(fetch_token, server.http, demo)
    listener = await open_listener(server.ws, token)
    control = Control(listener)
    sessions = {tsn: await claim_session(control, token, tsn) for tsn in targets}
    closed_at: dict[tuple[str, str], float] = {}

    async def watch(tsn: str, side: str, ws) -> None:
        await ws.wait_closed()
        closed_at[(tsn, side)] = time.time()

    watchers = [asyncio.create_task(watch(t, "device", devices[t])) for t in targets]
    watchers += [asyncio.create_task(watch(t, "pos", sessions[t])) for t in targets]
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", DISABLE, *targets],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"disabling failed:\n{out.stderr}")
    try:
        async with asyncio.timeout(15):
            await asyncio.gather(*watchers)
    except TimeoutError:
        pass
    await listener.close()
    delays = []
    for line in out.stdout.strip().splitlines():
        record = json.loads(line)
        ends = [closed_at.get((record["tsn"], side)) for side in ("device", "pos")]
        delays.append(max(ends) - record["started"] if None not in ends else float("inf"))
    return delays


@dataclass
class OneProcess:
    sessions_per_second: float
    sessions: int
    pool_ran_out: bool
    steps_ms: dict[str, float]
    live: int
    terminals_per_second: float
    disable_seconds: list[float]
    terminals: int
    terminals_wanted: int
    rss_baseline_kib: int
    rss_kib: int

    @property
    def kib_per_terminal(self) -> float:
        return (self.rss_kib - self.rss_baseline_kib) / self.terminals if self.terminals else float("nan")


async def _one_process(demo: Demo, tsns: Tsns, seconds: float, terminals: int, live: int) -> OneProcess:
    server = start("uvicorn")
    try:
        # Warm up (imports, first queries, connections) before anything is measured.
        warm = await connect_terminals(server, demo, tsns.take(20), 60)
        for ws in warm.values():
            await ws.close()
        await asyncio.to_thread(fetch_token, server.http, demo)  # the HTTP side's first request
        rate, count, steps, ran_out = await sessions_per_second(server, demo, tsns.take(1000), seconds)
        await asyncio.sleep(2)
        baseline = server.rss_kib()
        started = time.perf_counter()
        devices = await connect_terminals(server, demo, tsns.take(live), 300)
        live_rate = len(devices) / (time.perf_counter() - started)
        targets = list(devices)[:5]
        delays = await disable_devices(server, demo, devices, targets)
        still = len(devices) - len(targets)
        more = await connect_terminals(server, demo, tsns.take(max(0, terminals - still)), 600)
        await asyncio.sleep(3)
        grown = server.rss_kib()
        connected = len(devices) - len(targets) + len(more)
        for ws in list(devices.values()) + list(more.values()):
            await ws.close()
        return OneProcess(
            sessions_per_second=rate,
            sessions=count,
            pool_ran_out=ran_out,
            steps_ms=steps,
            live=len(devices),
            terminals_per_second=live_rate,
            disable_seconds=delays,
            terminals=connected,
            terminals_wanted=terminals,
            rss_baseline_kib=baseline,
            rss_kib=grown,
        )
    finally:
        server.stop()


def one_process(demo: Demo, tsns: Tsns, seconds: float, terminals: int, live: int) -> OneProcess:
    return asyncio.run(_one_process(demo, tsns, seconds, terminals, live))


def devices_needed(terminals: int, live: int) -> int:
    return len(LAYERS) * max(CROSS_PAIRS) + 20 + 1000 + max(terminals, live) + 10
