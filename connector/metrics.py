"""The relay's metric families (docs/operations.md, "Metrics reference"), on the deployment's
registry (accounts.metrics.REGISTRY), and what the relay calls to feed them.

Three ways in, by cost:

- The frame path adds to plain integers (`frames`, `layer`, `redis`) and times channel-layer
  sends with a lock-free histogram (`layer_send`); collectors read them at scrape time. One
  attribute increment per frame and direction: no lock, no prometheus-client call.
- The control path (registrations, claims, socket opens and closes, database work, heartbeats)
  calls the functions and `Operation`s below, which use prometheus-client's objects directly.
- Gauges of this worker's state (sockets open by kind, sessions held) are read at scrape time
  from sources the relay registers (`register_source`), and deployment-wide gauges (sessions by
  state, claims held, live nodes) from the database (`deployment_figures`).

Sources are called on the event loop when `/metrics` is served by the ASGI server (portal.health),
so they may read the loop's structures (the socket registry) directly; they must not block.

Every worker reports the same deployment-wide figures (it reads the same database): aggregate
them with `max`, never `sum` (docs/operations.md). Figures of this worker are its own: `sum` them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import close_old_connections
from django.db.models import Count, Q
from django.utils import timezone
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from accounts import metrics as account_metrics
from accounts.metrics import LATENCY_BUCKETS, OK, REGISTRY, LoopHistogram, Operation
from connector import protocol
from connector.conf import connector_settings
from connector.models import DeviceSession, NodeHeartbeat

logger = logging.getLogger(__name__)

# The socket kinds of the four routes (contract §3-§6), as the `kind` label spells them.
KINDS = ("device_listener", "device", "pos_listener", "session")
# The contract's error codes (protocol.ERRORS), the outcomes of registrations and claims.
WIRE_ERRORS = frozenset(wire for _status, wire, _close in protocol.ERRORS.values()) | {"server_error"}
# Close codes the server sends (§9, v1.1 §17, and 1011 for a crashed handler).
CLOSE_CODES = frozenset(int(code) for code in protocol.Close) | {1011, 1013}


# --- control path -------------------------------------------------------------------------------

registrations = Operation(
    singular="registration",
    plural="registrations",
    documentation="Terminal registrations on device-listener (contract §3)",
    outcomes=WIRE_ERRORS,
)
claims = Operation(
    singular="claim",
    plural="claims",
    documentation="Claims on pos-listener (contract §5)",
    outcomes=WIRE_ERRORS,
)

_sockets_opened = Counter(
    "cloud_connector_sockets_opened", "WebSockets accepted by this worker, by kind", ["kind"], registry=REGISTRY
)
_socket_closes = Counter(
    "cloud_connector_socket_closes",
    "WebSockets closed by this worker, by kind and close code (4503: peer unavailable)",
    ["kind", "code"],
    registry=REGISTRY,
)
_db_seconds = Histogram(
    "cloud_connector_db_seconds",
    "Database work of the control path (registration, attach, claim, heartbeat...), by operation, in seconds",
    ["operation"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
_heartbeats = Counter(
    "cloud_connector_node_heartbeats",
    "Heartbeats this worker wrote (ok) or failed to write (failed)",
    ["outcome"],
    registry=REGISTRY,
)
_heartbeat_at = Gauge(
    "cloud_connector_node_heartbeat_timestamp_seconds",
    "When this worker last wrote its heartbeat (Unix time)",
    registry=REGISTRY,
)
_nodes_presumed_dead = Counter(
    "cloud_connector_nodes_presumed_dead",
    "Silent workers (no heartbeat for NODE_TIMEOUT) whose sockets this worker's sweep forgot",
    registry=REGISTRY,
)
_node_reasserts = Counter(
    "cloud_connector_node_reasserts",
    "Times this worker found itself presumed dead by the others and wrote its sockets again",
    registry=REGISTRY,
)
_webhook_deliveries = Counter(
    "cloud_connector_webhook_deliveries",
    "Webhook delivery attempts, by outcome (delivered, failed, gave_up)",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_OUTCOMES = ("delivered", "failed", "gave_up")

for _kind in KINDS:
    _sockets_opened.labels(_kind)
for _outcome in ("ok", "failed"):
    _heartbeats.labels(_outcome)


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown socket kind {kind!r}: one of {', '.join(KINDS)}")
    return kind


def socket_opened(*, kind: str) -> None:
    """A socket was accepted (at its handshake)."""
    _sockets_opened.labels(_kind(kind)).inc()


def socket_closed(*, kind: str, code: int) -> None:
    """The server closed a socket with `code` (not the client's own closes)."""
    _socket_closes.labels(_kind(kind), str(code) if code in CLOSE_CODES else "other").inc()


def socket_refused(*, kind: str, code: int) -> None:
    """The server refuses a socket at connect (accepts it to close it with `code`): a refusal for
    the fleet page. The close itself is counted by `socket_closed`, as every close."""
    _kind(kind)
    account_metrics.refusals.add(f"{kind}_socket:{code if code in CLOSE_CODES else 'other'}")


# The control path's database calls (connector.consumers.base.db), their children created
# here once: a label child made on first use takes the family's lock and allocates while
# sockets are busy; an operation not listed gets its child on first use all the same.
DB_OPERATIONS = (
    "device_register_with_client",
    "device_register_checked",
    "device_register_with_token",
    "registration_failed",
    "device_socket_attach",
    "pos_socket_attach",
    "detach",
    "socket_channel",
    "socket_reassert",
    "pos_request",
    "caller_from_bearer",
)
_db_children: dict[str, Any] = {name: _db_seconds.labels(name) for name in DB_OPERATIONS}


def db_observe(*, operation: str, seconds: float) -> None:
    """Time of one database call of the control path; `operation` is the function's name (a
    label: never anything a client chose)."""
    child = _db_children.get(operation)
    if child is None:
        child = _db_children[operation] = _db_seconds.labels(operation)
    child.observe(seconds)


def heartbeat_recorded(*, ok: bool, at: float | None = None) -> None:
    _heartbeats.labels(OK if ok else "failed").inc()
    if ok:
        _heartbeat_at.set(time.time() if at is None else at)


def nodes_presumed_dead(count: int) -> None:
    if count:
        _nodes_presumed_dead.inc(count)


def node_reasserted() -> None:
    _node_reasserts.inc()


def webhook_delivery(*, outcome: str) -> None:
    """Fed by webhook delivery (contract v1.1 §16) once it exists."""
    if outcome not in WEBHOOK_OUTCOMES:
        raise ValueError(f"unknown webhook outcome {outcome!r}: one of {', '.join(WEBHOOK_OUTCOMES)}")
    _webhook_deliveries.labels(outcome).inc()


# --- frame path: plain integers, read at scrape time -----------------------------------------------


class FramePath:
    """This worker's frame totals. The relay adds to the attributes inline, on the event loop:
    `metrics.frames.to_device += 1; metrics.frames.bytes_to_device += len(payload)`."""

    __slots__ = (
        "to_device",
        "to_pos",
        "bytes_to_device",
        "bytes_to_pos",
        "held",
        "dropped_no_peer",
        "dropped_slow_peer",
        "dropped_channel_layer",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


class ChannelLayerTotals:
    """Channel-layer sends that failed: `full` (the peer's channel at capacity, ChannelFull) and
    `unavailable` (Redis unreachable past the send's wait)."""

    __slots__ = ("full", "unavailable")

    def __init__(self) -> None:
        self.full = 0
        self.unavailable = 0


class RedisOutages:
    """Redis outages this worker rode out (connector.relay's channel layer): `went_down` when
    it first fails, `came_back` when it answers again."""

    __slots__ = ("outages", "down_since", "seconds")

    def __init__(self) -> None:
        self.outages = 0
        self.down_since: float | None = None  # time.monotonic()
        self.seconds = 0.0  # of the outages that ended

    def went_down(self) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.outages += 1

    def came_back(self) -> None:
        if self.down_since is not None:
            self.seconds += time.monotonic() - self.down_since
            self.down_since = None

    @property
    def unreachable(self) -> bool:
        return self.down_since is not None

    def total_seconds(self) -> float:
        ongoing = time.monotonic() - self.down_since if self.down_since is not None else 0.0
        return self.seconds + ongoing


frames = FramePath()
layer = ChannelLayerTotals()
redis = RedisOutages()
layer_send = LoopHistogram(
    "cloud_connector_channel_layer_send_seconds",
    "Channel-layer sends of this worker (frames and events to another worker), in seconds",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0),
)


def _counter(name: str, documentation: str, label: str | None = None, values: Mapping[str, float] | None = None):
    family = CounterMetricFamily(name, documentation, labels=[label] if label else None)
    if values is not None:
        for key, value in values.items():
            family.add_metric([key] if label else [], value)
    return family


def _gauge(name: str, documentation: str, label: str | None = None, values: Mapping[str, float] | None = None):
    family = GaugeMetricFamily(name, documentation, labels=[label] if label else None)
    if values is not None:
        for key, value in values.items():
            family.add_metric([key] if label else [], value)
    return family


class FramePathCollector:
    """The frame path's integers as Prometheus families."""

    FAMILIES = {
        "cloud_connector_frames_relayed": ("counter", "Frames relayed by this worker, by direction", "direction"),
        "cloud_connector_relayed_bytes": ("counter", "Payload bytes relayed by this worker, by direction", "direction"),
        "cloud_connector_frames_dropped": (
            "counter",
            "Device frames not delivered, by reason (no_peer: no POS socket on the endpoint; slow_peer: its "
            "buffer past MAX_SOCKET_BUFFER; channel_layer: the layer refused the send)",
            "reason",
        ),
        "cloud_connector_frames_held": ("counter", "Frames held for a peer that was not there yet", None),
        "cloud_connector_channel_layer_send_failures": (
            "counter",
            "Channel-layer sends that failed, by reason (full, unavailable)",
            "reason",
        ),
        "cloud_connector_redis_outages": ("counter", "Redis outages this worker rode out (began)", None),
        "cloud_connector_redis_outage_seconds": ("counter", "Time this worker spent without Redis, in seconds", None),
        "cloud_connector_redis_unreachable": ("gauge", "1 while this worker cannot reach Redis", None),
    }

    def _values(self) -> dict[str, Mapping[str, float]]:
        return {
            "cloud_connector_frames_relayed": {"pos_to_device": frames.to_device, "device_to_pos": frames.to_pos},
            "cloud_connector_relayed_bytes": {
                "pos_to_device": frames.bytes_to_device,
                "device_to_pos": frames.bytes_to_pos,
            },
            "cloud_connector_frames_dropped": {
                "no_peer": frames.dropped_no_peer,
                "slow_peer": frames.dropped_slow_peer,
                "channel_layer": frames.dropped_channel_layer,
            },
            "cloud_connector_frames_held": {"": frames.held},
            "cloud_connector_channel_layer_send_failures": {"full": layer.full, "unavailable": layer.unavailable},
            "cloud_connector_redis_outages": {"": redis.outages},
            "cloud_connector_redis_outage_seconds": {"": redis.total_seconds()},
            "cloud_connector_redis_unreachable": {"": 1 if redis.unreachable else 0},
        }

    def _families(self, values: dict[str, Mapping[str, float]] | None):
        for name, (kind, documentation, label) in self.FAMILIES.items():
            make = _counter if kind == "counter" else _gauge
            yield make(name, documentation, label, None if values is None else values[name])

    def describe(self):
        return list(self._families(None))

    def collect(self):
        return list(self._families(self._values()))


# --- sources: this worker's state, read at scrape time -----------------------------------------------


@dataclass(frozen=True)
class SourceFamily:
    name: str
    documentation: str
    label: str | None = None
    label_values: tuple[str, ...] = ()


SOURCES: dict[str, SourceFamily] = {
    # () -> {kind: count} for the kinds of KINDS
    "sockets_open": SourceFamily(
        "cloud_connector_sockets_open", "WebSockets open on this worker, by kind", "kind", KINDS
    ),
    # () -> number of device sessions with at least one socket on this worker
    "sessions_held": SourceFamily(
        "cloud_connector_sessions_held", "Device sessions with at least one socket on this worker"
    ),
    # () -> webhook deliveries waiting (fed by webhook delivery, contract v1.1 §16, once it exists)
    "webhook_backlog": SourceFamily("cloud_connector_webhook_backlog", "Webhook deliveries waiting to be sent"),
    # () -> bytes of device frames held for an absent claim holder (v1.1 §13, connector.relay.held)
    "held_bytes": SourceFamily(
        "cloud_connector_held_bytes", "Bytes of terminal frames held on this worker for a POS that is away"
    ),
}

_sources: dict[str, Callable[[], object]] = {}
_errors = Counter(
    "cloud_connector_metrics_errors",
    "Metric sources that failed at scrape time (their families are left out of that scrape)",
    ["source"],
    registry=None,  # registered last (below): a scrape reports the failures of its own sources
)


def register_source(name: str, read: Callable[[], object]) -> None:
    """Have `/metrics` (and the heartbeat's snapshot) call `read()` for the family of `name`
    (SOURCES). A later registration of a name replaces the earlier one."""
    if name not in SOURCES:
        raise ValueError(f"unknown metric source {name!r}: one of {', '.join(SOURCES)}")
    _sources[name] = read


def unregister_source(name: str) -> None:
    _sources.pop(name, None)


def source_value(name: str) -> object | None:
    """What the source of `name` reads now; None if none is registered or it failed (counted
    and logged)."""
    read = _sources.get(name)
    if read is None:
        return None
    try:
        return read()
    except Exception:  # noqa: BLE001 - one broken source must not take the whole scrape down
        _errors.labels(name).inc()
        logger.warning("metric source %s failed", name, exc_info=True)
        return None


class SourcesCollector:
    def _family(self, spec: SourceFamily, value: object | None) -> GaugeMetricFamily:
        if spec.label is None:
            return _gauge(spec.name, spec.documentation, None, None if value is None else {"": float(value)})
        values = None
        if isinstance(value, Mapping):
            values = {key: float(value.get(key, 0)) for key in spec.label_values}
        return _gauge(spec.name, spec.documentation, spec.label, values)

    def describe(self):
        return [self._family(spec, None) for spec in SOURCES.values()]

    def collect(self):
        return [self._family(spec, source_value(name)) for name, spec in SOURCES.items()]


# --- deployment-wide figures, from the database -----------------------------------------------------


@dataclass(frozen=True)
class DeploymentFigures:
    sessions: dict[str, int]  # live sessions by state: registered, online, offline
    claims_held: int
    nodes_alive: int
    read_at: float = field(default_factory=time.monotonic)


LIVE_STATES = (DeviceSession.State.REGISTERED, DeviceSession.State.ONLINE, DeviceSession.State.OFFLINE)


def deployment_figures() -> DeploymentFigures:
    """Sessions by state, claims held and live workers, for the whole deployment: what
    `/metrics` reports and what the admin's fleet page shows (two queries)."""
    counts = DeviceSession.objects.filter(state__in=LIVE_STATES).aggregate(
        **{state.value: Count("pk", filter=Q(state=state)) for state in LIVE_STATES},
        claims=Count("pk", filter=Q(claimed_by__isnull=False)),
    )
    cutoff = timezone.now() - timedelta(seconds=connector_settings.NODE_TIMEOUT)
    return DeploymentFigures(
        sessions={state.value: counts[state.value] for state in LIVE_STATES},
        claims_held=counts["claims"],
        nodes_alive=NodeHeartbeat.objects.filter(seen_at__gte=cutoff).count(),
    )


class DeploymentCollector:
    """`deployment_figures`, refreshed before a scrape (`refresh`/`arefresh`) in a thread of its
    own and bounded in time: a database that hangs leaves these families out of the scrape
    (counted in cloud_connector_metrics_errors_total{source="database"}), never the scrape hanging.
    Figures younger than MAX_AGE are reused, so that several scrapers cost one query."""

    MAX_AGE = 5.0

    def __init__(self) -> None:
        self.figures: DeploymentFigures | None = None
        self.failing = False
        self._lock = threading.Lock()
        self._pending: concurrent.futures.Future | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-db")

    def fresh(self) -> bool:
        return self.figures is not None and time.monotonic() - self.figures.read_at < self.MAX_AGE

    def _start(self) -> concurrent.futures.Future:
        with self._lock:
            if self._pending is None or self._pending.done():
                self._pending = self._executor.submit(self._read)
            return self._pending

    def _read(self) -> DeploymentFigures:
        close_old_connections()
        try:
            return deployment_figures()
        finally:
            close_old_connections()

    def _keep(self, future: concurrent.futures.Future | None, error: BaseException | None) -> None:
        if error is None and future is not None:
            self.figures = future.result()
            if self.failing:
                self.failing = False
                logger.warning("deployment figures for /metrics available again")
            return
        self.figures = None
        _errors.labels("database").inc()
        if not self.failing:  # logged when it starts failing, not at every scrape
            self.failing = True
            logger.warning("deployment figures unavailable for /metrics: %s", type(error).__name__)

    def refresh_here(self) -> None:
        """In the calling thread, on its connection (a synchronous caller: the test client)."""
        try:
            figures = deployment_figures()
        except Exception as error:  # noqa: BLE001 - the scrape goes on without these families
            self._keep(None, error)
            return
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(figures)
        self._keep(future, None)

    async def arefresh(self, *, timeout: float) -> None:
        if self.fresh():
            return
        future = self._start()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(asyncio.wrap_future(future))
        except Exception as error:  # noqa: BLE001 - a timeout or the database's error
            self._keep(None, error)
            return
        self._keep(future, None)

    def _families(self, figures: DeploymentFigures | None):
        sessions = _gauge(
            "cloud_connector_sessions",
            "Live device sessions of the deployment, by state (the same on every worker: aggregate with max)",
            "state",
            None if figures is None else figures.sessions,
        )
        claims_held = _gauge(
            "cloud_connector_claims_held",
            "Live sessions claimed by a POS or application, in the deployment (aggregate with max)",
            None,
            None if figures is None else {"": figures.claims_held},
        )
        nodes = _gauge(
            "cloud_connector_nodes_alive",
            "Workers whose heartbeat is younger than NODE_TIMEOUT, in the deployment (aggregate with max)",
            None,
            None if figures is None else {"": figures.nodes_alive},
        )
        return [sessions, claims_held, nodes]

    def describe(self):
        return self._families(None)

    def collect(self):
        return self._families(self.figures)


frame_path_collector = FramePathCollector()
sources_collector = SourcesCollector()
deployment = DeploymentCollector()
for _collector in (frame_path_collector, layer_send, sources_collector, deployment, _errors):
    REGISTRY.register(_collector)
