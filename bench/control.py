"""The control plane: registrations and whole sessions per second on one worker, with the
server's CPU per operation read from /proc (steadier than throughput on a shared machine).

    .venv/bin/python bench/control.py [--count 400] [--concurrency 8] [--profile out.svg]

A registration is what a terminal does after every deploy: register on device-listener, then
open its device socket. A session adds what a till does: claim on a pos-listener (the POS
reusing its token, one listener per POS worker) and open the session socket.

Beside the server's CPU, the table gives PostgreSQL's (the benchmark database's backends),
Redis's and this load generator's over the same seconds, and the rate these cores could reach
at most at those costs (the cores over the sum): the machine's ceiling for the operation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ROOT,
    BackendsCpu,
    Control,
    Demo,
    Server,
    claim_session,
    fetch_token,
    free_port,
    fresh_backends,
    open_listener,
    raise_fd_limit,
    register_device,
    server_env,
    start,
    wait_listening,
    worker_command,
)
from cpu import cpu_seconds  # noqa: E402

CONCURRENCY = 8


@dataclass
class ControlResult:
    name: str
    operations: int
    seconds: float
    cpu_seconds: float
    latencies: list[float]
    # The rest of the machine over the same seconds: PostgreSQL, Redis, this load generator.
    database_seconds: float = 0.0
    redis_seconds: float = 0.0
    loadgen_seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.operations / self.seconds

    @property
    def cpu_ms(self) -> float:
        return self.cpu_seconds / self.operations * 1000

    def per_operation_ms(self, seconds: float) -> float:
        return seconds / self.operations * 1000

    @property
    def ceiling(self) -> float:
        """Operations per second these cores could do at most, if every process's CPU per
        operation stayed what it was: the cores over the machine's CPU per operation."""
        total = self.cpu_seconds + self.database_seconds + self.redis_seconds + self.loadgen_seconds
        return (os.cpu_count() or 1) * self.operations / total if total else float("nan")

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


async def _measure(name: str, server: Server, items: list, operation, concurrency: int) -> tuple[ControlResult, list]:
    queue = list(reversed(items))
    latencies: list[float] = []
    kept: list = []

    async def worker(index: int) -> None:
        while queue:
            item = queue.pop()
            t0 = time.perf_counter()
            kept.append(await operation(index, item))
            latencies.append(time.perf_counter() - t0)

    backends = BackendsCpu().start()
    loadgen0 = cpu_seconds(os.getpid())
    cpu0, t0 = cpu_seconds(server.process.pid), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(server.process.pid) - cpu0
    loadgen = cpu_seconds(os.getpid()) - loadgen0
    backends.stop()
    result = ControlResult(name, len(latencies), elapsed, cpu, latencies, backends.database, backends.redis, loadgen)
    return result, kept


async def registrations(server: Server, demo: Demo, tsns: list[str], concurrency: int = CONCURRENCY):
    """Register + device socket for each terminal, `concurrency` at a time; the sockets stay
    open (as a fleet's do) until every registration is done."""

    async def register(_index: int, tsn: str):
        return await register_device(server.ws, demo, tsn)

    result, sockets = await _measure("registration (register + device socket)", server, tsns, register, concurrency)

    async def close() -> None:
        await asyncio.gather(*(ws.close() for ws in sockets))

    return result, close


async def sessions(server: Server, demo: Demo, tsns: list[str], concurrency: int = CONCURRENCY):
    """A whole session per terminal: registration, then a claim on the POS worker's
    pos-listener with the token it reuses, then the session socket. Each of `concurrency`
    POS workers holds one token and one pos-listener, as a till's software does."""
    token = await asyncio.to_thread(fetch_token, server.http, demo)
    listeners = [await open_listener(server.ws, token) for _ in range(concurrency)]
    controls = [Control(listener) for listener in listeners]

    async def session(index: int, tsn: str):
        device = await register_device(server.ws, demo, tsn)
        return device, await claim_session(controls[index], token, tsn)

    result, opened = await _measure("whole session (token reused)", server, tsns, session, concurrency)

    async def close() -> None:
        # A session socket the server closed already was refused (a quota, a claim lost):
        # the figures would count work that was not done.
        refused = [pair[1].close_code for pair in opened if pair[1].close_code is not None]
        if refused:
            raise RuntimeError(f"{len(refused)} session sockets were closed by the server: codes {set(refused)}")
        for side in (1, 0):
            await asyncio.gather(*(pair[side].close() for pair in opened))
        await asyncio.gather(*(listener.close() for listener in listeners))

    return result, close


def table(results: list[ControlResult], floors: dict[str, ControlResult] | None = None) -> list[str]:
    """Cloud Connector's rows, each with the floor's CPU for the same steps beside it."""
    lines = [
        "| operation | server | count | per second | server CPU ms each | p50 ms | p99 ms "
        "| PostgreSQL, Redis, load generator: CPU ms each | these cores at most, per second |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows = [("Cloud Connector", r)]
        floor = (floors or {}).get(r.name)
        if floor is not None:
            rows.append(("floor (bare ASGI app)", floor))
        for server, x in rows:
            rest = (x.database_seconds, x.redis_seconds, x.loadgen_seconds)
            others = ", ".join(f"{x.per_operation_ms(seconds):.2f}" for seconds in rest)
            lines.append(
                f"| {r.name} | {server} | {x.operations} | {x.per_second:,.1f} | {x.cpu_ms:.2f} | "
                f"{x.p50_ms:.1f} | {x.p99_ms:.1f} | {others} | {x.ceiling:,.0f} |"
            )
    return lines


def start_floor() -> Server:
    """bench/floor_app.py under uvicorn with `make serve`'s flags (portal.serve)."""
    port = free_port()
    command = [("floor_app:app" if part == "portal.asgi:application" else part) for part in worker_command(
        "127.0.0.1", port
    )] + ["--log-level", "warning", "--no-access-log"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=server_env(port=port), stdout=subprocess.DEVNULL)
    wait_listening(port, process)
    return Server(process, port)


class Profiler:
    """py-spy recording a server while the measured parts run (`--profile`)."""

    def __init__(self, args, pid: int) -> None:
        self.process = None
        if args.profile:
            command = ["py-spy", "record", "-o", args.profile, "-p", str(pid), "-r", "200", "-f", args.format]
            command += ["--gil"] if args.gil else []
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(30)
            self.process = None


async def measure_server(server: Server, demo: Demo, tsns: list[str], count: int, concurrency: int, args=None):
    """Registrations then whole sessions, `count` of each, after a warm-up; sockets closed
    after both are measured (and after the profiler stopped)."""
    # Warm up both parts: the first registrations, token request and claims pay for imports
    # (the URL configuration on the first HTTP request), connections and caches.
    warm, tsns = tsns[:20], tsns[20:]
    for part, chunk in ((registrations, warm[:10]), (sessions, warm[10:])):
        _, close = await part(server, demo, chunk, concurrency)
        await close()
    profiler = Profiler(args, server.process.pid) if args is not None else None
    if profiler is not None and profiler.process is not None:
        await asyncio.sleep(1.0)
    results, closes = [], []
    try:
        for part, chunk in ((registrations, tsns[:count]), (sessions, tsns[count : 2 * count])):
            result, close = await part(server, demo, chunk, concurrency)
            results.append(result)
            closes.append(close)
    finally:
        if profiler is not None:
            profiler.stop()
    for close in closes:
        await close()
    return results


def control_plane(demo: Demo, tsns: list[str], count: int, concurrency: int = CONCURRENCY, args=None):
    """Cloud Connector (one `make serve` worker) and the floor, same steps, same counts:
    returns (results, floors by operation name). Needs 2 * count + 20 unused terminals."""

    async def run() -> tuple[list[ControlResult], dict[str, ControlResult]]:
        server = start("uvicorn")
        try:
            results = await measure_server(server, demo, tsns, count, concurrency, args)
        finally:
            server.stop()
        floor = start_floor()
        try:
            fake = [f"floor-{i}" for i in range(2 * count + 20)]
            floors = await measure_server(floor, demo, fake, count, concurrency)
        finally:
            floor.stop()
        return results, {r.name: r for r in floors}

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--profile", help="py-spy output file (the Cloud Connector server)")
    parser.add_argument("--format", default="raw", help="py-spy format: raw, flamegraph, speedscope")
    parser.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL (CPU)")
    args = parser.parse_args()
    raise_fd_limit()
    demo = fresh_backends(2 * args.count + 20)
    results, floors = control_plane(demo, demo.tsns, args.count, args.concurrency, args)
    print("\n".join(table(results, floors)))


if __name__ == "__main__":
    main()
