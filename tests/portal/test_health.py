"""/healthz and /readyz through Django's test clients (the synchronous handler and the ASGI one).

The faults of real backends (a Redis stopped and started, a database cut off behind a proxy)
are in tests/portal/test_readiness_live.py, against a live server."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
from django.db import OperationalError
from django.test import Client

from connector.relay.redis_connections import CancelSafeSend
from portal import health

ALL_CHECKS = {"database", "channel_layer", "shutdown"}


@pytest.fixture(autouse=True)
def not_shutting_down() -> Iterator[None]:
    health.set_shutting_down(False)
    yield
    health.set_shutting_down(False)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) and never answers a byte."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_healthz_answers_200_without_touching_the_database(client):
    # No django_db mark: pytest-django fails any database access of this test.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"] == "no-store"


def test_healthz_answers_a_probe_by_internal_address_over_plain_http_in_production(settings):
    settings.DEBUG = False
    settings.ALLOWED_HOSTS = ["api.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    probe = Client(HTTP_HOST="10.0.0.5:8000")
    assert probe.get("/healthz").status_code == 200
    # Any other path from that host is still refused by Django's host check.
    assert probe.get("/accounts/login/").status_code == 400


@pytest.mark.django_db
def test_readyz_answers_200_with_every_check_and_its_time(client, settings):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ready"
    expected = ALL_CHECKS | ({"redis"} if settings.REDIS_URL else set())
    assert set(body["checks"]) == expected
    for result in body["checks"].values():
        assert result["ok"] is True
        assert 0 <= result["ms"] < 1000
    assert "failing" not in body


@pytest.mark.django_db
def test_readyz_answers_503_naming_the_shutdown_while_the_process_is_stopping(client):
    health.set_shutting_down()
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["failing"] == ["shutdown"]
    assert body["checks"]["shutdown"] == {"ok": False, "ms": body["checks"]["shutdown"]["ms"], "error": "shutting down"}
    assert body["checks"]["database"]["ok"] is True
    assert client.get("/healthz").status_code == 200  # alive all the same


@pytest.mark.django_db
def test_readyz_fails_while_a_registered_drain_source_says_the_process_stops(client):
    stopping = {"now": False}

    def relay_is_stopping() -> bool:
        return stopping["now"]

    health.register_drain_source(relay_is_stopping)
    try:
        assert client.get("/readyz").status_code == 200
        stopping["now"] = True
        assert client.get("/readyz").json()["failing"] == ["shutdown"]
    finally:
        health.unregister_drain_source(relay_is_stopping)


@pytest.mark.django_db
def test_readyz_names_the_database_and_hides_its_message_when_it_refuses(client, monkeypatch, caplog):
    def refused(*, timeout: float) -> None:
        raise OperationalError('connection to server at "db.internal" (10.0.0.9), port 5432 failed')

    monkeypatch.setattr(health, "database_ping", refused)
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["database"]
    assert body["checks"]["database"]["error"] == "OperationalError"
    assert b"db.internal" not in response.content  # public answer: no host names
    assert "db.internal" in caplog.text  # the log has the detail


@pytest.mark.django_db
def test_readyz_gives_up_on_a_redis_that_never_answers_within_the_timeout(client, settings, silent_port):
    settings.REDIS_URL = f"redis://127.0.0.1:{silent_port}/0"
    settings.READINESS_TIMEOUT = 0.3
    started = time.monotonic()
    response = client.get("/readyz")
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["redis"]
    assert body["checks"]["redis"]["error"] == "timeout"
    assert body["checks"]["database"]["ok"] is True
    assert elapsed < 5, f"a check must give up after READINESS_TIMEOUT, /readyz took {elapsed:.1f} s"


@pytest.mark.django_db
def test_the_redis_check_talks_through_connections_that_keep_its_timeout_s_cancel(
    client, settings, silent_port, monkeypatch
):
    # The check's timeout cancels its PING: redis-py's own connections can swallow that
    # cancel on Python 3.11 (connector.relay.redis_connections, tested there).
    settings.REDIS_URL = f"redis://127.0.0.1:{silent_port}/0"
    settings.READINESS_TIMEOUT = 0.3
    made = []
    from_url = health.redis.asyncio.from_url

    def recording_from_url(*args, **kwargs):
        made.append(from_url(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(health.redis.asyncio, "from_url", recording_from_url)
    assert client.get("/readyz").json()["checks"]["redis"]["error"] == "timeout"
    (redis_client,) = made
    assert issubclass(redis_client.connection_pool.connection_class, CancelSafeSend)


@pytest.mark.django_db
def test_readyz_names_redis_when_nothing_listens_where_it_should_be(client, settings, closed_port):
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port}/0"
    body = client.get("/readyz").json()
    assert body["failing"] == ["redis"]
    assert body["checks"]["redis"]["error"] in {"ConnectionError", "ConnectionRefusedError", "OSError"}


@pytest.mark.django_db
def test_the_checks_run_at_once_so_two_slow_ones_cost_one_timeout(client, settings, silent_port, monkeypatch):
    settings.REDIS_URL = f"redis://127.0.0.1:{silent_port}/0"
    settings.READINESS_TIMEOUT = 0.5

    def slow_database(*, timeout: float) -> None:
        time.sleep(2)

    monkeypatch.setattr(health, "database_ping", slow_database)
    started = time.monotonic()
    body = client.get("/readyz").json()
    elapsed = time.monotonic() - started
    assert set(body["failing"]) == {"database", "redis"}
    assert body["checks"]["database"]["error"] == body["checks"]["redis"]["error"] == "timeout"
    assert elapsed < 1.5, f"checks run one after the other: {elapsed:.2f} s for two 0.5 s timeouts"
    time.sleep(2)  # let the slow ping finish before the next test's ping


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_the_probe_paths_refuse_other_methods_with_405(client, path):
    response = client.post(path)
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_head_answers_the_status_without_a_body(client, path):
    response = client.head(path)
    assert response.status_code == 200
    assert response.content == b""


@pytest.mark.django_db
def test_probes_need_no_sign_in_and_answer_with_the_request_id(client):
    response = client.get("/readyz", HTTP_X_REQUEST_ID="lb-probe-42")
    assert response.status_code == 200
    assert response["X-Request-ID"] == "lb-probe-42"


@pytest.mark.django_db(transaction=True)
async def test_readyz_and_healthz_answer_through_the_asgi_handler(async_client):
    healthz = await async_client.get("/healthz")
    assert healthz.status_code == 200
    readyz = await async_client.get("/readyz")
    assert readyz.status_code == 200, readyz.content
    assert json.loads(readyz.content)["status"] == "ready"
    health.set_shutting_down()
    try:
        assert (await async_client.get("/readyz")).status_code == 503
    finally:
        health.set_shutting_down(False)
