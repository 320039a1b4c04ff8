"""What the admin's fleet page shows (connector.fleet_admin), drawn from the same data as
`/metrics`: each worker's heartbeat carries a snapshot of its metric sources
(`node_snapshot`, the sources of connector.metrics), refusals are the ones the counters count
(accounts.metrics.refusals), written per worker and minute (`refusals_flush`), and sessions by
state come from connector.metrics.deployment_figures, as the gauges do.

The heartbeat (connector.nodes and connector.relay.housekeeping) calls `node_snapshot()` on
the event loop and writes the result with its row, and calls `refusals_flush(node=...)` in its
database thread.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db.models import Sum
from django.utils import timezone

from accounts import metrics as account_metrics
from accounts.metrics import RefusalLog
from connector import metrics
from connector.conf import connector_settings
from connector.models import NodeHeartbeat, RefusalTally

TALLY_RETENTION = timedelta(hours=2)
TOP_REFUSALS = 10
STARTED_AT = time.time()


def node_snapshot() -> dict:
    """This worker's figures for its heartbeat row: the sources `/metrics` reads, and a few of
    its totals. Call it on the event loop (the sources read the loop's registry)."""
    sockets = metrics.source_value("sockets_open")
    return {
        "sockets": {kind: int(sockets.get(kind, 0)) for kind in metrics.KINDS} if isinstance(sockets, dict) else {},
        "sessions_held": int(metrics.source_value("sessions_held") or 0),
        "frames_relayed": metrics.frames.to_device + metrics.frames.to_pos,
        "redis_unreachable": metrics.redis.unreachable,
        "pid": os.getpid(),
        "started_at": datetime.fromtimestamp(STARTED_AT, tz=UTC).isoformat(),
    }


def refusals_flush(*, node: str, log: RefusalLog | None = None, now: datetime | None = None) -> int:
    """Write this worker's refusal counts that changed since the last flush (absolute counts,
    one upsert per minute and reason, so a flush repeated after a failure stays right), and
    delete tallies older than TALLY_RETENTION. Returns how many rows were written."""
    now = now or timezone.now()
    log = log or account_metrics.refusals
    changed = log.take_changed(now=now.timestamp())
    try:
        if changed:
            RefusalTally.objects.bulk_create(
                [
                    RefusalTally(
                        node=node, minute=datetime.fromtimestamp(minute * 60, tz=UTC), reason=reason, count=count
                    )
                    for (minute, reason), count in changed.items()
                ],
                update_conflicts=True,
                unique_fields=["node", "minute", "reason"],
                update_fields=["count"],
            )
        RefusalTally.objects.filter(minute__lt=now - TALLY_RETENTION).delete()
    except Exception:
        log.give_back(changed)
        raise
    return len(changed)


@dataclass(frozen=True)
class Worker:
    node: str
    seen_at: datetime
    age: float  # seconds since its last heartbeat
    alive: bool  # within NODE_TIMEOUT
    sockets: dict[str, int]
    sessions_held: int
    frames_relayed: int
    redis_unreachable: bool
    started_at: str

    @property
    def sockets_total(self) -> int:
        return sum(self.sockets.values())


@dataclass(frozen=True)
class Refusal:
    reason: str
    count: int


@dataclass(frozen=True)
class Overview:
    workers: list[Worker]
    sockets: dict[str, int]  # of the live workers, by kind
    sessions_held: int
    figures: metrics.DeploymentFigures
    refusals: list[Refusal]
    refusals_total: int
    since: datetime
    kinds: tuple[str, ...] = field(default=metrics.KINDS)


def _worker(row: NodeHeartbeat, *, now: datetime, timeout: float) -> Worker:
    snapshot = row.snapshot if isinstance(row.snapshot, dict) else {}
    sockets = snapshot.get("sockets") if isinstance(snapshot.get("sockets"), dict) else {}
    age = max(0.0, (now - row.seen_at).total_seconds())
    return Worker(
        node=row.node,
        seen_at=row.seen_at,
        age=age,
        alive=age <= timeout,
        sockets={kind: _int(sockets.get(kind)) for kind in metrics.KINDS},
        sessions_held=_int(snapshot.get("sessions_held")),
        frames_relayed=_int(snapshot.get("frames_relayed")),
        redis_unreachable=bool(snapshot.get("redis_unreachable")),
        started_at=str(snapshot.get("started_at") or ""),
    )


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def top_refusals(*, since: datetime, limit: int = TOP_REFUSALS) -> tuple[list[Refusal], int]:
    """The most frequent refusal reasons since `since`, over every worker, and their total."""
    rows = (
        RefusalTally.objects.filter(minute__gte=since)
        .values("reason")
        .annotate(total=Sum("count"))
        .order_by("-total", "reason")
    )
    every = [Refusal(reason=row["reason"], count=row["total"]) for row in rows]
    return every[:limit], sum(refusal.count for refusal in every)


def fleet_overview(*, now: datetime | None = None) -> Overview:
    now = now or timezone.now()
    timeout = float(connector_settings.NODE_TIMEOUT)
    workers = [_worker(row, now=now, timeout=timeout) for row in NodeHeartbeat.objects.order_by("node")]
    live = [worker for worker in workers if worker.alive]
    since = (now - timedelta(hours=1)).replace(second=0, microsecond=0)
    top, total = top_refusals(since=since)
    return Overview(
        workers=workers,
        sockets={kind: sum(worker.sockets[kind] for worker in live) for kind in metrics.KINDS},
        sessions_held=sum(worker.sessions_held for worker in live),
        figures=metrics.deployment_figures(),
        refusals=top,
        refusals_total=total,
        since=since,
    )
