"""What held answers (v1.1 §13, connector.relay.held) cost the frame path when nothing is held:
one uvicorn worker as `make serve` runs it (PostgreSQL and Redis), bench/run.py's frame
scenarios (closed-loop round trips, 1 and 50 pairs, 100 B frames), served by

- "as shipped": portal.asgi:application;
- "held test removed": bench/held_off_app.py, the same application with the one test the
  held-answers code adds to every relayed frame (`self.held is not None`) taken out.

The two run in turns, `--rounds` times each, on the same terminals, and the medians of each
are compared: server CPU per round trip (from /proc) and round trips per second. A third line
shows the path when it is busy: a POS that was away comes back to `--held` frames waiting,
and how long they take to arrive (the cost of holding is paid only then).

    .venv/bin/python bench/held.py [--seconds 5] [--rounds 5] [--held 256] [--no-write]

`held_frame_path(demo, tsns, seconds, rounds)` and `held_table(result)` are what bench/run.py
uses (part `held`, `make bench`); run alone, it records its own section of docs/benchmarks.md unless
--no-write.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ROOT,
    Demo,
    Server,
    Tsns,
    close_pairs,
    cloud_connector_pairs,
    free_port,
    fresh_backends,
    machine,
    now,
    process_tree,
    publish,
    raise_fd_limit,
    server_command,
    server_env,
    wait_listening,
)
from cpu import CpuMeter  # noqa: E402
from loadgen import round_trips  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

SCENARIOS = [(1, 100), (50, 100)]
TERMINALS = max(p for p, _ in SCENARIOS) + 1  # the pairs, and one for the delivery figure
ROUNDS = 5  # per variant, in bench/run.py
VARIANTS = {"shipped": "as shipped", "off": "held test removed"}
DELIVERY_TIMEOUT = 60.0


@dataclass
class Measured:
    cpu_us: list[float] = field(default_factory=list)
    per_second: list[float] = field(default_factory=list)


@dataclass
class HeldResult:
    rounds: int
    by_key: dict[tuple[str, int, int], Measured]
    held: int
    delivery_ms: float

    def cpu(self, variant: str, key: tuple[int, int]) -> float:
        return statistics.median(self.by_key[(variant, *key)].cpu_us)

    def rate(self, variant: str, key: tuple[int, int]) -> float:
        return statistics.median(self.by_key[(variant, *key)].per_second)

    def spread(self, variant: str, key: tuple[int, int]) -> float:
        """How far apart the rounds of one variant were: max minus min CPU per round trip."""
        values = self.by_key[(variant, *key)].cpu_us
        return max(values) - min(values)

    def within_noise(self, key: tuple[int, int]) -> bool:
        """Whether the two medians differ by less than the rounds of either vary."""
        delta = abs(self.cpu("shipped", key) - self.cpu("off", key))
        return delta <= max(self.spread("shipped", key), self.spread("off", key))


def start_variant(variant: str) -> Server:
    port = free_port()
    command = server_command("uvicorn", port)
    if variant == "off":
        command[command.index("portal.asgi:application")] = "held_off_app:application"
    process = subprocess.Popen(command, cwd=ROOT, env=server_env(port=port), stdout=subprocess.DEVNULL)
    wait_listening(port, process)
    return Server(process, port)


async def _one_round(variant: str, demo: Demo, tsns: list[str], seconds: float, into: dict) -> None:
    server = start_variant(variant)
    try:
        for pairs_wanted, size in SCENARIOS:
            pairs, extra = await cloud_connector_pairs(server, server, demo, tsns[:pairs_wanted])
            meters = [CpuMeter(pid) for pid in process_tree(server.process.pid)]
            result = await round_trips(pairs, size=size, seconds=seconds, meters=meters)
            measured = into.setdefault((variant, pairs_wanted, size), Measured())
            measured.cpu_us.append(result.cpu_us)
            measured.per_second.append(result.per_second)
            await close_pairs(pairs, extra)
    finally:
        server.stop()


async def _delivery(demo: Demo, tsn: str, count: int) -> float:
    """A POS session socket gone, `count` terminal frames held, the socket back: milliseconds
    from its reopening to the last held frame."""
    server = start_variant("shipped")
    try:
        pairs, extra = await cloud_connector_pairs(server, server, demo, [tsn])
        pair = pairs[0]
        url = pair.pos.request.path
        headers = pair.pos.request.headers
        await pair.pos.close()
        await asyncio.sleep(1.0)  # the server detaches the POS socket
        for n in range(count):
            await pair.device.send(f"held {n}")
        await asyncio.sleep(1.0)
        started = time.perf_counter()
        async with asyncio.timeout(DELIVERY_TIMEOUT):
            async with connect(
                f"{server.ws}{url}", additional_headers={"Authorization": headers["Authorization"]}
            ) as back:
                for n in range(count):
                    if await back.recv() != f"held {n}":
                        raise AssertionError("held frames came out of order")
                elapsed = time.perf_counter() - started
        await pair.device.close()
        await extra.close()
        return elapsed * 1000
    finally:
        server.stop()


def held_frame_path(demo: Demo, tsns: Tsns, seconds: float, rounds: int, held: int = 256) -> HeldResult:
    chosen = tsns.take(max(p for p, _ in SCENARIOS))
    into: dict[tuple[str, int, int], Measured] = {}
    for n in range(rounds):
        for variant in VARIANTS if n % 2 == 0 else reversed(VARIANTS):
            print(f"  round {n + 1}/{rounds}: {VARIANTS[variant]}", flush=True)
            asyncio.run(_one_round(variant, demo, chosen, seconds, into))
    delivery = asyncio.run(_delivery(demo, tsns.take(1)[0], held))
    return HeldResult(rounds=rounds, by_key=into, held=held, delivery_ms=delivery)


def held_table(result: HeldResult) -> list[str]:
    lines = [
        "| pairs | frame | server | round trips/s | server CPU µs per round trip | its rounds (min–max) |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for key in SCENARIOS:
        for variant, label in VARIANTS.items():
            values = result.by_key[(variant, *key)].cpu_us
            lines.append(
                f"| {key[0]} | {key[1]:,} B | {label} | {result.rate(variant, key):,.0f} | "
                f"{result.cpu(variant, key):.0f} | {min(values):.0f}–{max(values):.0f} |"
            )
    deltas = [
        f"{key[0]} pair{'s' if key[0] > 1 else ''}: {result.cpu('shipped', key) - result.cpu('off', key):+.0f} µs "
        f"({100 * (result.cpu('shipped', key) / result.cpu('off', key) - 1):+.1f} %, "
        f"{'within' if result.within_noise(key) else 'beyond'} the rounds' spread)"
        for key in SCENARIOS
    ]
    return [
        *lines,
        "",
        f"Medians of {result.rounds} rounds each, the two variants in turns. The held-answers test costs the "
        f"frame path, as shipped minus removed, {'; '.join(deltas)} of server CPU per round trip (the test "
        "itself is one attribute read and a comparison per frame). When a POS comes back to "
        f"{result.held} held frames, they all reach it within {result.delivery_ms:.0f} ms of its reopening.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per scenario")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds per variant")
    parser.add_argument("--held", type=int, default=256, help="frames held for the delivery figure")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 20 or not 1 <= args.seconds <= 120 or not 1 <= args.held <= 256:
        parser.error("--rounds 1..20, --seconds 1..120, --held 1..256 (CC_HELD_FRAMES)")
    raise_fd_limit()
    print("preparing PostgreSQL and Redis...", flush=True)
    demo = fresh_backends(TERMINALS)
    result = held_frame_path(demo, Tsns(demo), args.seconds, args.rounds, args.held)
    body = [
        "### Held answers: the frame path when nothing is held (one uvicorn worker)",
        "",
        f"- Run: {now()}, `bench/held.py --seconds {args.seconds:g} --rounds {args.rounds} --held {args.held}`",
        f"- Machine: {machine()} (shared with other work: the rounds' spread shows how much)",
        "",
        *held_table(result),
    ]
    publish("bench-held", body, write=not args.no_write)


if __name__ == "__main__":
    main()
