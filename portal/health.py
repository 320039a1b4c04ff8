"""`/healthz`, `/readyz` and `/metrics` of each worker (docs/operations.md).

- `/healthz`: the process serves HTTP. No dependency is asked; always 200 while it runs.
- `/readyz`: the database answers, Redis and the channel layer answer a round trip (when
  configured), and the process is not shutting down. 200, or 503 with a JSON body naming what
  failed; every check with its time, each bounded by READINESS_TIMEOUT, all run at once.
- `/metrics`: the Prometheus exposition of accounts.metrics.REGISTRY (prometheus-client's own
  encoder, OpenMetrics when the scraper asks for it) for the worker that answers: scrape each
  worker on its own port. Only for METRICS_ALLOWED_ADDRESSES (default: loopback) and, when
  METRICS_TOKEN is set, with `Authorization: Bearer <METRICS_TOKEN>`. A request that passed
  through a proxy (it carries X-Forwarded-For, Forwarded or X-Real-IP) is refused whatever its
  address: behind nginx every request would otherwise come from 127.0.0.1. A refused request is
  handed on to the URL resolver, so it gets the same 404 as any path that does not exist; a
  wrong or missing token from an allowed address gets 403.

`HealthMiddleware` answers these paths before any other middleware: probes address a worker by
its internal address over plain HTTP (ALLOWED_HOSTS and SECURE_SSL_REDIRECT would turn them
away), need no session, CSRF, user or CSP, and are never rate limited or sent to sign in.

Shutting down: `set_shutting_down()` (or a function given to `register_drain_source` that answers
True) makes `/readyz` answer 503 while the process still serves, so that a load balancer takes the
worker out before its sockets close.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import hmac
import ipaddress
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache

import redis.asyncio
from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import load_backend
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from accounts.metrics import REGISTRY
from connector import metrics
from connector.relay.redis_connections import cancel_safe_pool

logger = logging.getLogger(__name__)

HEALTHZ, READYZ, METRICS = "/healthz", "/readyz", "/metrics"
DEFAULT_READINESS_TIMEOUT = 1.0
FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")
NO_STORE = "no-store"


# --- shutting down -----------------------------------------------------------------------------------

_shutting_down = False
_drain_sources: list[Callable[[], bool]] = []


def set_shutting_down(value: bool = True) -> None:
    global _shutting_down
    _shutting_down = value


def register_drain_source(source: Callable[[], bool]) -> None:
    """`/readyz` fails while `source()` answers True (e.g. the relay registry's shutting_down)."""
    if source not in _drain_sources:
        _drain_sources.append(source)


def unregister_drain_source(source: Callable[[], bool]) -> None:
    if source in _drain_sources:
        _drain_sources.remove(source)


def shutting_down() -> bool:
    return _shutting_down or any(source() for source in list(_drain_sources))


# --- readiness -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    seconds: float
    error: str = ""

    def as_json(self) -> dict:
        body: dict = {"ok": self.ok, "ms": round(self.seconds * 1000, 1)}
        if self.error:
            body["error"] = self.error
        return body


def readiness_timeout() -> float:
    return float(getattr(settings, "READINESS_TIMEOUT", DEFAULT_READINESS_TIMEOUT))


_db_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="readyz-db")
_db_pending: concurrent.futures.Future | None = None


def database_ping(*, timeout: float) -> None:
    """`SELECT 1` on a connection of its own, opened and closed here: the check tells whether
    a new connection can be had now, and never leaves one behind in a thread. On PostgreSQL the
    connection attempt is bounded (libpq's connect_timeout, at least 2 s), so a database that
    accepts TCP and never answers cannot hold the check's thread for long."""
    settings_dict = copy.deepcopy(connections[DEFAULT_DB_ALIAS].settings_dict)
    if "postgresql" in settings_dict["ENGINE"]:
        settings_dict["OPTIONS"] = {**settings_dict.get("OPTIONS", {}), "connect_timeout": max(2, math.ceil(timeout))}
    wrapper = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, alias="readiness")
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        wrapper.close()


async def _database() -> None:
    # One ping at a time, shared by concurrent checks: a ping still waiting (a database that
    # does not answer) is waited for again rather than a second thread started behind it.
    global _db_pending
    if _db_pending is None or _db_pending.done():
        _db_pending = _db_executor.submit(database_ping, timeout=readiness_timeout())
    await asyncio.shield(asyncio.wrap_future(_db_pending))


async def _redis() -> None:
    timeout = readiness_timeout()
    client = redis.asyncio.from_url(settings.REDIS_URL, socket_connect_timeout=timeout, socket_timeout=timeout)
    cancel_safe_pool(client.connection_pool)  # the check's timeout cancels the PING
    try:
        if not await client.ping():
            raise ConnectionError("Redis did not answer PING")
    finally:
        await client.aclose()


async def _channel_layer() -> None:
    # A channel of its own (not this process's "!" channel, whose reader delivers to sockets):
    # a message sent and received back through the layer, Redis included when it is Redis.
    layer = get_channel_layer()
    channel = f"cloud-connector.readyz.{uuid.uuid4().hex}"
    await layer.send(channel, {"type": "readyz.ping"})
    message = await layer.receive(channel)
    if message.get("type") != "readyz.ping":
        raise ValueError("the channel layer answered another message")


async def _not_shutting_down() -> None:
    if shutting_down():
        raise RuntimeError("shutting down")


def checks() -> dict[str, Callable[[], Awaitable[None]]]:
    """The readiness checks of this configuration, by name."""
    found: dict[str, Callable[[], Awaitable[None]]] = {"database": _database}
    if getattr(settings, "REDIS_URL", ""):
        found["redis"] = _redis
    if settings.CHANNEL_LAYERS.get("default"):
        found["channel_layer"] = _channel_layer
    found["shutdown"] = _not_shutting_down
    return found


_failing: set[str] = set()


async def _run(name: str, check: Callable[[], Awaitable[None]], timeout: float) -> CheckResult:
    started = time.perf_counter()
    error = detail = ""
    try:
        async with asyncio.timeout(timeout):
            await check()
    except TimeoutError:
        error, detail = "timeout", f"no answer in {timeout:g} s"
    except Exception as failure:  # noqa: BLE001 - whatever it is, the check failed: say which
        # The body names the exception's class only: /readyz is public, and a message may
        # name hosts and ports. The log has the message.
        error = "shutting down" if name == "shutdown" else type(failure).__name__
        detail = str(failure) or error
    seconds = time.perf_counter() - started
    # Logged when a check starts or stops failing, not at every probe of a load balancer.
    if error and name not in _failing:
        _failing.add(name)
        logger.warning("readiness: %s failing (%s)", name, detail)
    elif not error and name in _failing:
        _failing.discard(name)
        logger.warning("readiness: %s answers again", name)
    return CheckResult(ok=not error, seconds=seconds, error=error)


@dataclass(frozen=True)
class Readiness:
    checks: dict[str, CheckResult]
    at: float

    @property
    def ready(self) -> bool:
        return all(result.ok for result in self.checks.values())

    def as_json(self) -> dict:
        body: dict = {
            "status": "ready" if self.ready else "not ready",
            "checks": {name: result.as_json() for name, result in self.checks.items()},
        }
        failing = [name for name, result in self.checks.items() if not result.ok]
        if failing:
            body["failing"] = failing
        return body


last_readiness: Readiness | None = None


async def readiness() -> Readiness:
    """Every check at once, each bounded by READINESS_TIMEOUT."""
    global last_readiness
    timeout = readiness_timeout()
    found = checks()
    results = await asyncio.gather(*(_run(name, check, timeout) for name, check in found.items()))
    last_readiness = Readiness(checks=dict(zip(found, results, strict=True)), at=time.monotonic())
    return last_readiness


READINESS_MAX_AGE = 5.0  # seconds a scrape reuses the last /readyz answer


def _readiness_is_fresh() -> bool:
    return last_readiness is not None and time.monotonic() - last_readiness.at < READINESS_MAX_AGE


class ReadinessCollector:
    """The last readiness checks as gauges (a scrape runs them unless /readyz just did)."""

    def _families(self, result: Readiness | None):
        ready = GaugeMetricFamily("cloud_connector_ready", "1 while this worker's /readyz answers 200")
        ok = GaugeMetricFamily(
            "cloud_connector_readiness_check_ok", "1 while a readiness check of this worker passes", labels=["check"]
        )
        seconds = GaugeMetricFamily(
            "cloud_connector_readiness_check_seconds",
            "How long the last readiness check took, in seconds",
            labels=["check"],
        )
        if result is not None:
            ready.add_metric([], 1 if result.ready else 0)
            for name, check in result.checks.items():
                ok.add_metric([name], 1 if check.ok else 0)
                seconds.add_metric([name], check.seconds)
        return [ready, ok, seconds]

    def describe(self):
        return self._families(None)

    def collect(self):
        return self._families(last_readiness)


REGISTRY.register(ReadinessCollector())


# --- metrics access ------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _networks(addresses: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(address, strict=False) for address in addresses)


def address_allowed(address: str | None, allowed: tuple[str, ...]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in _networks(allowed))


def metrics_access(request: HttpRequest) -> int:
    """200 if the request may read /metrics, 404 if it must not learn that it exists, 403 for
    an allowed address without the right token."""
    if any(header in request.META for header in FORWARDING_HEADERS):
        return 404
    allowed = tuple(getattr(settings, "METRICS_ALLOWED_ADDRESSES", ("127.0.0.1/8", "::1/128")))
    if not address_allowed(request.META.get("REMOTE_ADDR"), allowed):
        return 404
    token = getattr(settings, "METRICS_TOKEN", "")
    if token:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
            return 403
    return 200


def exposition(request: HttpRequest) -> HttpResponse:
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = HttpResponse(encoder(REGISTRY), content_type=content_type)
    response["Cache-Control"] = NO_STORE
    return response


# --- the middleware ---------------------------------------------------------------------------------


def _method_not_allowed() -> HttpResponse:
    response = HttpResponse(status=405)
    response["Allow"] = "GET, HEAD"
    return response


def _json(request: HttpRequest, body: dict, status: int) -> HttpResponse:
    response = JsonResponse(body, status=status)
    response["Cache-Control"] = NO_STORE
    if request.method == "HEAD":
        response.content = b""
    return response


def healthz(request: HttpRequest) -> HttpResponse:
    return _json(request, {"status": "ok"}, 200)


def readyz_response(request: HttpRequest, result: Readiness) -> HttpResponse:
    return _json(request, result.as_json(), 200 if result.ready else 503)


class HealthMiddleware:
    """Answers HEALTHZ, READYZ and METRICS before the rest of the middleware (see the module's
    notes); everything else goes on down the chain."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        path = request.path_info
        if path not in (HEALTHZ, READYZ, METRICS):
            return self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            return _method_not_allowed()
        if path == HEALTHZ:
            return healthz(request)
        if path == READYZ:
            return readyz_response(request, async_to_sync(readiness)())
        access = metrics_access(request)
        if access == 404:
            return self.get_response(request)
        if access == 403:
            return HttpResponse(status=403)
        if not _readiness_is_fresh():
            async_to_sync(readiness)()
        if not metrics.deployment.fresh():
            metrics.deployment.refresh_here()
        return exposition(request)

    async def __acall__(self, request: HttpRequest):
        path = request.path_info
        if path not in (HEALTHZ, READYZ, METRICS):
            return await self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            return _method_not_allowed()
        if path == HEALTHZ:
            return healthz(request)
        if path == READYZ:
            return readyz_response(request, await readiness())
        access = metrics_access(request)
        if access == 404:
            return await self.get_response(request)
        if access == 403:
            return HttpResponse(status=403)
        # Both bounded: a scrape answers within about one READINESS_TIMEOUT whatever hangs.
        await asyncio.gather(
            readiness() if not _readiness_is_fresh() else asyncio.sleep(0),
            metrics.deployment.arefresh(timeout=readiness_timeout()),
        )
        # Encoded here, on the event loop: the sources read the loop's socket registry.
        return exposition(request)
