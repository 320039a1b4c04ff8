"""Cloud Connector benchmarks, next to plain relays measured in the same run.

    make bench     (or: .venv/bin/python bench/run.py [--seconds 5]
                        [--parts frame,cross,one,control,storm,held,presence] [--terminals 5000] [--live 1000]
                        [--control 400] [--storm-terminals 5000] [--storm-claims 200] [--no-write])

Needs PostgreSQL and Redis (`make bench` starts them when they are down): BENCH_DATABASE_URL
(default postgres://postgres@127.0.0.1:5432/cc_bench, dropped and created afresh) and
BENCH_REDIS_URL (default redis://127.0.0.1:6379/8, flushed). Every server is its own process
on 127.0.0.1, started as `make serve` starts its workers (portal/serve.py); this process is
the load generator (bench/loadgen.py) for every target.

Parts:
- `frame`: one process, the frame path: four plain relays (`websockets` on asyncio and on
  uvloop, bench/plain_relay.py; picows on uvloop, bench/plain_relay_picows.py; Node's `ws`,
  bench/node_relay/, its locked packages installed by `npm ci` when missing) and Cloud
  Connector under uvicorn, daphne and granian; closed-loop round trips for 1 and 50 pairs,
  100-byte and 16 KiB frames, with the server's CPU per round trip (from /proc) and its
  ratio to the Node relay's in the same scenario.
- `cross` and `one`: see bench/scale.py (two processes through Redis; sessions set up per
  second, disabling with live sessions, and memory per idle terminal on one process).
- `control`: see bench/control.py (registrations and whole sessions on one worker, with the
  server's CPU per operation, beside the same steps answered by a bare ASGI app).
- `storm`: see bench/storm.py (`--storm-terminals` terminals on one worker that is restarted:
  how long until every one is back, with its claims).
- `held`: see bench/held.py (the frame path's CPU per round trip with and without the test the
  held answers of v1.1 §13 add to it, when nothing is held).
- `presence`: see bench/presence.py (`--presence-terminals` idle terminals, the cost of keeping
  their `last_seen_at` current: presence writes on and off over the same window).

The portal's figures (issue 17) come from bench/portal.py, run on its own: it builds an estate of
its own (10,000 devices in one merchant) and records its section itself.

Prints each table and the targets (issues 6 and 13) with what was measured, and writes them into
the marked sections of docs/benchmarks.md with the machine, the versions and the date.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import control  # noqa: E402
import held  # noqa: E402
import presence  # noqa: E402
import scale  # noqa: E402
import storm  # noqa: E402
from common import (  # noqa: E402
    ASGI_SERVERS,
    PLAIN_RELAYS,
    Demo,
    Tsns,
    backends,
    close_pairs,
    cloud_connector_pairs,
    ensure_node_relay,
    fresh_backends,
    machine,
    now,
    plain_pairs,
    process_tree,
    raise_fd_limit,
    start,
    versions,
    write_section,
)
from cpu import CpuMeter  # noqa: E402
from loadgen import Result, round_trips  # noqa: E402

ALL_PARTS = ("frame", "cross", "one", "control", "storm", "held", "presence")
SCENARIOS = [(1, 100), (50, 100), (1, 16384), (50, 16384)]
FRAME_TARGETS = [*PLAIN_RELAYS, *ASGI_SERVERS]
FRAME_LABELS = {**PLAIN_RELAYS, **ASGI_SERVERS}
# Each Cloud Connector server registers terminals of its own (Tsns hands each out once).
FRAME_DEVICES = len(ASGI_SERVERS) * max(pairs for pairs, _ in SCENARIOS)
# What the frame path's CPU is measured against (issue 13), and the server `make serve` runs.
CPU_REFERENCE = "node"
CHOSEN_SERVER = "uvicorn"
PLAIN_CROSS = "plain relay (one process)"
CHOSEN_LAYER = "uvicorn x2, RedisChannelLayer"


# --- frame path, one process -------------------------------------------------------------------


async def _frame(kind: str, demo: Demo, tsns: list[str], seconds: float) -> dict[tuple[int, int], Result]:
    server = start(kind)
    try:
        results = {}
        for pairs_wanted, size in SCENARIOS:
            if kind in PLAIN_RELAYS:
                pairs, extra = await plain_pairs(server, pairs_wanted)
            else:
                pairs, extra = await cloud_connector_pairs(server, server, demo, tsns[:pairs_wanted])
            # Read the process tree once the sockets are up: granian's worker is a child process.
            meters = [CpuMeter(pid) for pid in process_tree(server.process.pid)]
            results[(pairs_wanted, size)] = await round_trips(pairs, size=size, seconds=seconds, meters=meters)
            await close_pairs(pairs, extra)
        return results
    finally:
        server.stop()


def frame_path(demo: Demo, tsns: Tsns, seconds: float) -> dict[str, dict[tuple[int, int], Result]]:
    if "node" in FRAME_TARGETS:
        ensure_node_relay()
    results = {}
    for kind in FRAME_TARGETS:
        print(f"  {FRAME_LABELS[kind]}", flush=True)
        wanted = [] if kind in PLAIN_RELAYS else tsns.take(max(p for p, _ in SCENARIOS))
        results[kind] = asyncio.run(_frame(kind, demo, wanted, seconds))
    return results


def frame_table(results: dict[str, dict[tuple[int, int], Result]]) -> list[str]:
    lines = [
        "| pairs | frame | server | round trips/s | p50 ms | p99 ms | server CPU µs per round trip | CPU vs Node ws |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for key in SCENARIOS:
        reference = results[CPU_REFERENCE][key]
        for kind, by_key in results.items():
            r = by_key[key]
            lines.append(
                f"| {key[0]} | {key[1]:,} B | {FRAME_LABELS[kind]} | {r.per_second:,.0f} | {r.p50_ms:.2f} | "
                f"{r.p99_ms:.2f} | {r.cpu_us:.0f} | {r.cpu_us / reference.cpu_us:.2f} |"
            )
    return lines


def cross_table(results: dict[str, dict[int, Result]]) -> list[str]:
    lines = ["| pairs | target | round trips/s | p50 ms | p99 ms | vs plain (rt/s) |", "|---:|---|---:|---:|---:|---:|"]
    for count in scale.CROSS_PAIRS:
        base = results[PLAIN_CROSS][count]
        for name, by_count in results.items():
            r = by_count[count]
            lines.append(
                f"| {count} | {name} | {r.per_second:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
                f"{r.per_second / base.per_second:.2f} |"
            )
    return lines


def one_process_lines(r: scale.OneProcess) -> list[str]:
    steps = ", ".join(f"{name} {ms:.1f} ms" for name, ms in r.steps_ms.items())
    delays = ", ".join(f"{d * 1000:.0f} ms" for d in r.disable_seconds)
    ran_out = " (the pool of terminals ran out before the time was up)" if r.pool_ran_out else ""
    return [
        f"- Sessions set up: {r.sessions_per_second:.1f}/s ({r.sessions} sessions, "
        f"{scale.SESSION_WORKERS} at a time{ran_out}). Median per step: {steps}.",
        f"- {r.live} live device sessions on the process (terminals connected at {r.terminals_per_second:.0f}/s); "
        f"disabling a device to both of its sockets closed: {delays}.",
        f"- {r.terminals:,} idle terminals connected (of {r.terminals_wanted:,} wanted): RSS "
        f"{r.rss_baseline_kib / 1024:.0f} MiB → {r.rss_kib / 1024:.0f} MiB, {r.kib_per_terminal:.1f} KiB per terminal.",
    ]


# --- the targets -----------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    goal: str
    measured: str
    met: bool


def targets(frame, cross, one: scale.OneProcess | None, control_plane=None, storm_result=None) -> list[Target]:
    rows = []
    if frame:
        plain, ours = frame["plain"][(50, 100)], frame[CHOSEN_SERVER][(50, 100)]
        ratio = ours.per_second / plain.per_second
        rows.append(
            Target(
                "one process, 50 pairs, 100 B: round trips/s",
                f"≥ 0.8 × {FRAME_LABELS['plain']}",
                f"{ratio:.2f} × ({ours.per_second:,.0f} vs {plain.per_second:,.0f}/s)",
                ratio >= 0.8,
            )
        )
        node = frame[CPU_REFERENCE][(50, 100)]
        cpu = ours.cpu_us / node.cpu_us
        rows.append(
            Target(
                "one process, 50 pairs, 100 B: server CPU per round trip",
                "≤ 1.3 × Node ws",
                f"{cpu:.2f} × ({ours.cpu_us:.0f} vs {node.cpu_us:.0f} µs)",
                cpu <= 1.3,
            )
        )
    if cross:
        for count in scale.CROSS_PAIRS:
            plain, ours = cross[PLAIN_CROSS][count], cross[CHOSEN_LAYER][count]
            ratio = ours.per_second / plain.per_second
            rows.append(
                Target(
                    f"two processes through Redis, {count} pair{'s' if count > 1 else ''}: round trips/s",
                    "≥ 0.3 × plain",
                    f"{ratio:.2f} × ({ours.per_second:,.0f} vs {plain.per_second:,.0f}/s)",
                    ratio >= 0.3,
                )
            )
    if one:
        full = one.terminals >= one.terminals_wanted
        rows.append(
            Target(
                f"memory per idle connected terminal, {one.terminals_wanted:,} terminals",
                "≤ 25 KiB",
                f"{one.kib_per_terminal:.1f} KiB ({one.terminals:,} connected)",
                one.kib_per_terminal <= 25 and full,
            )
        )
        worst = max(one.disable_seconds) if one.disable_seconds else float("inf")
        rows.append(
            Target(
                f"disable → all sockets closed, {one.live:,} live sessions",
                "≤ 1 s",
                f"worst {worst * 1000:.0f} ms of {len(one.disable_seconds)}",
                worst <= 1 and one.live >= 1000,
            )
        )
    if control_plane:
        rows += control_targets(*control_plane)
    if storm_result:
        r = storm_result
        rows.append(
            Target(
                f"restart of a worker holding {r.terminals:,} terminals: all online again",
                "≤ 60 s, none gives up, claims kept",
                f"{'not within the bound' if r.recovery_seconds is None else f'{r.recovery_seconds:.1f} s'}, "
                f"{r.gave_up} gave up, {r.sessions_kept}/{r.claims} claims kept",
                r.met,
            )
        )
    return rows


def control_targets(results: list[control.ControlResult], floors: dict[str, control.ControlResult]) -> list[Target]:
    """Issue 13's control-plane targets: per registration and per whole session, CPU and rate."""
    registration, session = results
    goals = ((registration, 5.0, 150.0), (session, 10.0, 100.0))
    rows = []
    for r, cpu_goal, rate_goal in goals:
        floor = floors.get(r.name)
        beside = f"; the floor {floor.cpu_ms:.2f} ms" if floor else ""
        rows.append(
            Target(
                f"{r.name}: server CPU each", f"≤ {cpu_goal:g} ms", f"{r.cpu_ms:.2f} ms{beside}", r.cpu_ms <= cpu_goal
            )
        )
        rows.append(
            Target(
                f"{r.name}: per second, one worker",
                f"≥ {rate_goal:g}/s",
                f"{r.per_second:.1f}/s",
                r.per_second >= rate_goal,
            )
        )
    return rows


def targets_table(rows: list[Target]) -> list[str]:
    lines = ["| target | goal | measured | |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.name} | {row.goal} | {row.measured} | {'met' if row.met else '**missed**'} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per round-trip scenario")
    parser.add_argument("--parts", default=",".join(ALL_PARTS))
    parser.add_argument("--presence-terminals", type=int, default=5000, help="idle terminals in the presence part")
    parser.add_argument("--terminals", type=int, default=5000, help="idle terminals for the memory figure")
    parser.add_argument("--live", type=int, default=1000, help="live sessions while devices are disabled")
    parser.add_argument("--control", type=int, default=400, help="registrations and sessions in the control part")
    parser.add_argument("--storm-terminals", type=int, default=5000, help="terminals on the restarted worker")
    parser.add_argument("--storm-claims", type=int, default=200, help="of those, claimed by one POS")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    print(f"file descriptors: {raise_fd_limit()}", flush=True)
    print("preparing PostgreSQL and Redis...", flush=True)
    devices = FRAME_DEVICES + scale.devices_needed(args.terminals, args.live)
    devices += (2 * args.control + 20) * ("control" in parts) + args.storm_terminals * ("storm" in parts)
    devices += held.TERMINALS * ("held" in parts)
    devices += args.presence_terminals * ("presence" in parts)
    demo = fresh_backends(devices=devices)
    tsns = Tsns(demo)
    header = [
        f"- Run: {now()}, `bench/run.py --seconds {args.seconds:g} --terminals {args.terminals} --live {args.live}`",
        f"- Machine: {machine()}",
        f"- Versions: {versions()}",
        f"- Backends: {backends()}",
        "- Servers: uvicorn as `make serve` runs it (portal/serve.py: uvloop, websockets sans-I/O, no "
        "compression); daphne as `make run` does; granian with one worker on uvloop (ASGI without lifespan, "
        "its WebSocket defaults); the plain relays are bench/plain_relay.py (websockets on asyncio and on "
        "uvloop), bench/plain_relay_picows.py and bench/node_relay/relay.js (Node ws). Server CPU is user + "
        "system time from /proc of the server's processes during the measured seconds.",
    ]
    print("\n".join(header), flush=True)
    frame = cross = one = control_plane = storm_result = None
    sections: dict[str, list[str]] = {}
    if "frame" in parts:
        print("frame path, one process...", flush=True)
        frame = frame_path(demo, tsns, args.seconds)
        sections["frame-path"] = [f"### Frame path, one process ({args.seconds:g} s per scenario)", ""] + frame_table(
            frame
        )
    if "cross" in parts:
        print("two processes through Redis...", flush=True)
        cross = scale.cross_process(demo, tsns, args.seconds)
        sections["cross"] = [
            "### Two processes through Redis (device sockets on A, POS sockets on B, 100 B frames)",
            "",
        ] + cross_table(cross)
    if "one" in parts:
        print("one process: sessions/s, disable with live sessions, memory...", flush=True)
        one = scale.one_process(demo, tsns, args.seconds, args.terminals, args.live)
        sections["one-process"] = ["### One uvicorn process: sessions, disabling, memory", ""] + one_process_lines(one)
    if "control" in parts:
        print("control plane: registrations and sessions on one worker, and the floor...", flush=True)
        control_plane = control.control_plane(demo, tsns.take(2 * args.control + 20), args.control)
        sections["control"] = [
            f"### Control plane, one uvicorn worker ({control.CONCURRENCY} at a time)",
            "",
            *control.table(*control_plane),
        ]
    if "storm" in parts:
        print(f"storm: {args.storm_terminals} terminals, the worker restarted...", flush=True)
        storm_result = storm.storm(demo, tsns, args.storm_terminals, args.storm_claims)
        sections["storm"] = ["### Reconnect storm, one uvicorn worker restarted", "", *storm.storm_table(storm_result)]
    if "held" in parts:
        print("held answers: the frame path with and without their test...", flush=True)
        held_result = held.held_frame_path(demo, tsns, args.seconds, held.ROUNDS)
        sections["held"] = [
            "### Held answers: the frame path when nothing is held (one uvicorn worker)",
            "",
            *held.held_table(held_result),
        ]
    if "presence" in parts:
        print(f"presence: {args.presence_terminals} idle terminals, last_seen_at written or not...", flush=True)
        presence_result = presence.presence(demo, tsns, args.presence_terminals, presence.DEFAULT_WINDOW)
        sections["presence"] = [
            f"### Presence: {args.presence_terminals:,} idle terminals on one uvicorn worker",
            "",
            *presence.presence_table(presence_result),
        ]
    rows = targets(frame, cross, one, control_plane, storm_result)
    sections = {"targets": ["### Targets", "", *header, "", *targets_table(rows)], **sections}
    for body in sections.values():
        print("\n" + "\n".join(body), flush=True)
    if args.no_write:
        return
    if parts != set(ALL_PARTS):
        print("\nnot written to docs/benchmarks.md: only a full run (all parts) is recorded")
        return
    for name, body in sections.items():
        write_section(f"bench-{name}", body)
    print("\nwritten to docs/benchmarks.md")


if __name__ == "__main__":
    main()
