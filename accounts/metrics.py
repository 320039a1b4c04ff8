"""The deployment's Prometheus registry, the primitives every app records with, and the token
endpoint's metrics (docs/operations.md has the reference of every family).

The registry lives here because accounts is the bottom layer: connector and portal import it,
accounts imports neither (the token metrics could not live anywhere else). `/metrics`
(portal.health) serves this registry, not prometheus-client's global default one: the global one
collects whatever any imported library registers there, and a family of ours registered twice
(a test re-importing a module) would fail at import instead of in a test.

Two kinds of recording:

- The control path (a registration, a claim, a token request: milliseconds each) uses
  prometheus-client's objects directly: an `Operation` is a counter by outcome and a latency
  histogram. Their lock costs a microsecond, nothing next to the database work around them.
- The frame path keeps plain integers in memory (connector.metrics.FramePath) and a
  `LoopHistogram` for timings, which a collector reads at scrape time: no lock and no call into
  prometheus-client per frame.

Refusals (a registration, claim, token request or socket answered with an error) are also
counted per minute and reason in `refusals`, which each worker's heartbeat writes to the
database for the admin's fleet page (connector.fleet): the same events as the counters.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import HistogramMetricFamily

# A `_created` series beside every counter and histogram doubles the series for nothing the
# dashboards use (Prometheus detects counter resets by itself).
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
# The worker process itself: CPU, resident memory, open file descriptors (one per socket), and
# the Python version. prometheus-client's standard families (process_*, python_info).
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

OK = "ok"
OTHER = "other"  # an outcome outside the declared set: a label must never grow without bound
# From a millisecond (a remembered secret, one round trip) to ten seconds (a stalled database).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# --- refusals per minute, for the fleet page --------------------------------------------------


class RefusalLog:
    """Refusals of this process by (minute, reason), kept for `KEEP_MINUTES`.

    Recorded from the event loop and from request threads alike, hence the lock: a refusal is
    a control-path event, never one per frame. `take_changed` hands the heartbeat the absolute
    count of every (minute, reason) that changed since its last call, which it writes as is (an
    upsert per row: a write that is repeated after a failure stays right)."""

    KEEP_MINUTES = 61

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[int, str], int] = {}
        self._changed: set[tuple[int, str]] = set()

    def add(self, reason: str, *, now: float | None = None) -> None:
        minute = int((time.time() if now is None else now) // 60)
        key = (minute, reason)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            self._changed.add(key)

    def take_changed(self, *, now: float | None = None) -> dict[tuple[int, str], int]:
        """{(minute, reason): count} for what changed since the last call; forgets what is older
        than KEEP_MINUTES."""
        oldest = int((time.time() if now is None else now) // 60) - self.KEEP_MINUTES
        with self._lock:
            changed = {key: self._counts[key] for key in self._changed if key in self._counts}
            self._changed.clear()
            for key in [key for key in self._counts if key[0] < oldest]:
                del self._counts[key]
        return {key: count for key, count in changed.items() if key[0] >= oldest}

    def give_back(self, changed: Iterable[tuple[int, str]]) -> None:
        """A write failed: mark these again, for the next heartbeat."""
        with self._lock:
            self._changed.update(key for key in changed if key in self._counts)

    def counts(self) -> dict[tuple[int, str], int]:
        with self._lock:
            return dict(self._counts)


refusals = RefusalLog()


# --- control-path operations -------------------------------------------------------------------


@dataclass
class Attempt:
    """What `Operation.timed` measures; the caller sets `outcome` before the block ends."""

    outcome: str = OK


class Operation:
    """An operation of the control path: `cloud_connector_<plural>_total{outcome}` and the
    histogram `cloud_connector_<singular>_seconds`.

    `outcome` is "ok" or one of the declared error codes (the contract's); anything else is
    counted as "other". Every outcome but "ok" is also a refusal (`refusals`), as
    "<singular>:<outcome>"."""

    def __init__(self, *, singular: str, plural: str, documentation: str, outcomes: Iterable[str]) -> None:
        self.singular = singular
        self.outcomes = frozenset(outcomes) | {OK, OTHER}
        self.total = Counter(
            f"cloud_connector_{plural}",
            f"{documentation}, by outcome: ok or the contract's error code",
            ["outcome"],
            registry=REGISTRY,
        )
        self.seconds = Histogram(
            f"cloud_connector_{singular}_seconds",
            f"{documentation}: time from request to answer, in seconds",
            buckets=LATENCY_BUCKETS,
            registry=REGISTRY,
        )
        self.total.labels(OK)  # the success series exists from the start, at 0

    def record(self, *, outcome: str, seconds: float | None = None) -> None:
        label = outcome if outcome in self.outcomes else OTHER
        self.total.labels(label).inc()
        if seconds is not None:
            self.seconds.observe(seconds)
        if label != OK:
            refusals.add(f"{self.singular}:{label}")

    @contextmanager
    def timed(self) -> Iterator[Attempt]:
        """Time a block and record its outcome: the one the block set on the attempt, or
        "server_error" when it raised."""
        attempt = Attempt()
        started = time.perf_counter()
        try:
            yield attempt
        except BaseException:
            attempt.outcome = "server_error" if attempt.outcome == OK else attempt.outcome
            raise
        finally:
            self.record(outcome=attempt.outcome, seconds=time.perf_counter() - started)


# --- a histogram for the frame path ------------------------------------------------------------


class LoopHistogram:
    """A histogram written by one thread (the event loop) without a lock: a bucket search and
    two additions per observation, read by `collect` at scrape time. A scrape in another thread
    may see an observation counted in its bucket and not yet in the sum: the next scrape is
    right again."""

    def __init__(self, name: str, documentation: str, *, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, count in zip((*map(_le, self.bounds), "+Inf"), list(self.counts), strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        return HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> list[HistogramMetricFamily]:
        return [self.family()]


def _le(bound: float) -> str:
    return repr(float(bound))


# --- the token endpoint ------------------------------------------------------------------------

# RFC 6749 §5.2, and this project's 429 (accounts/throttles.py, docs/deploy.md).
TOKEN_ERRORS = (
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "rate_limited",
    "server_error",
)

token_requests = Operation(
    singular="token_request",
    plural="token_requests",
    documentation="Requests to the OAuth2 token endpoint (contract §1)",
    outcomes=TOKEN_ERRORS,
)
