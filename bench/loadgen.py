"""The load generator shared by every target: closed-loop round trips over POS–device pairs.

Each pair is a POS socket and a device socket joined by the relay under test. The device
side echoes every frame; the POS side sends one frame, waits for its echo, and records the
round-trip time, for a fixed duration. Cloud Connector and the plain relay are driven by the
same code, so their figures compare. Given CPU meters (bench/cpu.py) on the server's
processes, it also reads the server CPU the measured round trips cost.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cpu import CpuMeter
from websockets.asyncio.client import ClientConnection


@dataclass
class Pair:
    pos: ClientConnection
    device: ClientConnection


@dataclass
class Result:
    round_trips: int
    seconds: float
    rtts: list[float] = field(repr=False)
    errors: int = 0
    # Server CPU (user + system, all of its processes) during the measured time; None when
    # the server was not metered.
    cpu_seconds: float | None = None

    @property
    def per_second(self) -> float:
        return self.round_trips / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.rtts:
            return float("nan")
        ordered = sorted(self.rtts)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.rtts) * 1000 if self.rtts else float("nan")

    @property
    def p99_ms(self) -> float:
        return self.percentile(0.99)

    @property
    def cpu_us(self) -> float:
        """Microseconds of server CPU per round trip (NaN when not metered or nothing done)."""
        if self.cpu_seconds is None or not self.round_trips:
            return float("nan")
        return self.cpu_seconds / self.round_trips * 1e6


async def _echo(device: ClientConnection) -> None:
    try:
        async for frame in device:
            await device.send(frame)
    except Exception:  # noqa: BLE001 - the pair is being torn down
        return


async def _drive(pair: Pair, payload: bytes | str, deadline: float, rtts: list[float]) -> int:
    count = 0
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        await pair.pos.send(payload)
        answer = await pair.pos.recv()
        rtts.append(time.perf_counter() - started)
        if answer != payload:
            raise AssertionError("the relay changed a frame")
        count += 1
    return count


async def round_trips(
    pairs: list[Pair], *, size: int, seconds: float, binary: bool = False, meters: Sequence[CpuMeter] = ()
) -> Result:
    """Run closed-loop round trips on every pair at once for `seconds`; `meters` (one per
    server process) read the server's CPU over the measured time, after the warm-up."""
    payload: bytes | str = os.urandom(size) if binary else ("x" * size)
    echoes = [asyncio.create_task(_echo(pair.device)) for pair in pairs]
    rtts: list[float] = []
    # A short warm-up so that connection set-up and first-frame costs are not measured.
    warm = time.perf_counter() + min(1.0, seconds / 5)
    await asyncio.gather(*(_drive(pair, payload, warm, []) for pair in pairs))
    for meter in meters:
        meter.start()
    started = time.perf_counter()
    counts = await asyncio.gather(*(_drive(pair, payload, started + seconds, rtts) for pair in pairs))
    elapsed = time.perf_counter() - started
    cpu = sum(meter.stop() for meter in meters) if meters else None
    for task in echoes:
        task.cancel()
    await asyncio.gather(*echoes, return_exceptions=True)
    return Result(round_trips=sum(counts), seconds=elapsed, rtts=rtts, cpu_seconds=cpu)
