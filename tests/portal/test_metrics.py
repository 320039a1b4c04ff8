"""/metrics: the families of the deployment's registry, read back with prometheus-client's own
parser, the counters moving when the relay's recording functions are called, the gauges read
from sources and from the database at scrape time, and who may read it.

Counters are process-wide: each test compares a scrape before and after what it does."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError, connection
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from accounts import metrics as account_metrics
from accounts.metrics import LoopHistogram, Operation, RefusalLog
from connector import metrics
from connector.models import DeviceSession, NodeHeartbeat
from portal import health
from tests.factories import DeviceFactory, make_pos

ROOT = Path(__file__).resolve().parents[2]

# What docs/operations.md documents; tests/test_operations_docs.py checks the document itself.
FAMILIES = {
    "cloud_connector_sockets_open": "gauge",
    "cloud_connector_sockets_opened": "counter",
    "cloud_connector_socket_closes": "counter",
    "cloud_connector_sessions": "gauge",
    "cloud_connector_sessions_held": "gauge",
    "cloud_connector_claims_held": "gauge",
    "cloud_connector_registrations": "counter",
    "cloud_connector_registration_seconds": "histogram",
    "cloud_connector_claims": "counter",
    "cloud_connector_claim_seconds": "histogram",
    "cloud_connector_token_requests": "counter",
    "cloud_connector_token_request_seconds": "histogram",
    "cloud_connector_frames_relayed": "counter",
    "cloud_connector_relayed_bytes": "counter",
    "cloud_connector_frames_dropped": "counter",
    "cloud_connector_frames_held": "counter",
    "cloud_connector_channel_layer_send_seconds": "histogram",
    "cloud_connector_channel_layer_send_failures": "counter",
    "cloud_connector_redis_outages": "counter",
    "cloud_connector_redis_outage_seconds": "counter",
    "cloud_connector_redis_unreachable": "gauge",
    "cloud_connector_db_seconds": "histogram",
    "cloud_connector_webhook_deliveries": "counter",
    "cloud_connector_webhook_backlog": "gauge",
    "cloud_connector_node_heartbeats": "counter",
    "cloud_connector_node_heartbeat_timestamp_seconds": "gauge",
    "cloud_connector_nodes_presumed_dead": "counter",
    "cloud_connector_node_reasserts": "counter",
    "cloud_connector_nodes_alive": "gauge",
    "cloud_connector_ready": "gauge",
    "cloud_connector_readiness_check_ok": "gauge",
    "cloud_connector_readiness_check_seconds": "gauge",
    "cloud_connector_metrics_errors": "counter",
}


def scrape(client: Client | None = None, **headers: str) -> dict:
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.status_code
    assert response["Content-Type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.content.decode())}


def value(families: dict, name: str, **labels: str) -> float:
    """The value of the sample `name` (a sample name: `..._total`, `..._count`) with these labels."""
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == want for key, want in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name} {labels}")


@pytest.fixture(autouse=True)
def nothing_reused_from_an_earlier_scrape() -> None:
    # A scrape reuses readiness and database figures younger than 5 s: not another test's.
    health.last_readiness = None
    metrics.deployment.figures = None


@pytest.fixture
def sources() -> Iterator[None]:
    # The relay's registry registers its sources at import: the test's own replace them, and
    # the registry's are put back after it.
    registered = {name: metrics._sources[name] for name in metrics.SOURCES if name in metrics._sources}
    for name in metrics.SOURCES:
        metrics.unregister_source(name)
    yield
    for name in metrics.SOURCES:
        metrics.unregister_source(name)
    for name, read in registered.items():
        metrics.register_source(name, read)


@pytest.mark.django_db
def test_every_documented_family_is_exposed_with_its_type():
    families = scrape()
    for name, kind in FAMILIES.items():
        assert name in families, f"{name} is not exposed"
        assert families[name].type == kind, f"{name} is a {families[name].type}, not a {kind}"
    assert "process_open_fds" in families and "python_info" in families


@pytest.mark.django_db
def test_registrations_and_claims_count_by_outcome_and_time_their_answers():
    before = scrape()
    metrics.registrations.record(outcome="ok", seconds=0.004)
    metrics.registrations.record(outcome="invalid_client", seconds=0.02)
    metrics.registrations.record(outcome="something a client made up", seconds=0.001)
    with pytest.raises(RuntimeError), metrics.claims.timed():
        raise RuntimeError("a bug")
    with metrics.claims.timed() as attempt:
        attempt.outcome = "device_offline"
    after = scrape()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("cloud_connector_registrations_total", outcome="ok") == 1
    assert value(after, "cloud_connector_registrations_total", outcome="invalid_client") >= 1
    assert value(after, "cloud_connector_registrations_total", outcome="other") >= 1  # never the client's words
    assert moved("cloud_connector_registration_seconds_count") == 3
    assert moved("cloud_connector_registration_seconds_bucket", le="0.005") == 2
    assert value(after, "cloud_connector_claims_total", outcome="server_error") >= 1
    assert value(after, "cloud_connector_claims_total", outcome="device_offline") >= 1
    assert moved("cloud_connector_claim_seconds_count") == 2
    assert not any("made up" in str(sample.labels) for family in after.values() for sample in family.samples)


@pytest.mark.django_db
def test_token_requests_are_counted_with_the_oauth_error_code():
    before = scrape()
    account_metrics.token_requests.record(outcome="ok", seconds=0.003)
    account_metrics.token_requests.record(outcome="invalid_scope", seconds=0.002)
    after = scrape()
    assert (
        value(after, "cloud_connector_token_requests_total", outcome="ok")
        - value(before, "cloud_connector_token_requests_total", outcome="ok")
        == 1
    )
    assert value(after, "cloud_connector_token_requests_total", outcome="invalid_scope") >= 1


@pytest.mark.django_db
def test_the_frame_path_integers_appear_as_counters_by_direction_and_reason():
    before = scrape()
    metrics.frames.to_device += 3
    metrics.frames.bytes_to_device += 300
    metrics.frames.to_pos += 2
    metrics.frames.bytes_to_pos += 20
    metrics.frames.dropped_slow_peer += 1
    metrics.layer.unavailable += 1
    metrics.layer_send.observe(0.0002)
    metrics.layer_send.observe(2.0)
    after = scrape()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("cloud_connector_frames_relayed_total", direction="pos_to_device") == 3
    assert moved("cloud_connector_frames_relayed_total", direction="device_to_pos") == 2
    assert moved("cloud_connector_relayed_bytes_total", direction="pos_to_device") == 300
    assert moved("cloud_connector_relayed_bytes_total", direction="device_to_pos") == 20
    assert moved("cloud_connector_frames_dropped_total", reason="slow_peer") == 1
    assert moved("cloud_connector_frames_dropped_total", reason="no_peer") == 0
    assert moved("cloud_connector_channel_layer_send_failures_total", reason="unavailable") == 1
    assert moved("cloud_connector_channel_layer_send_seconds_count") == 2
    assert moved("cloud_connector_channel_layer_send_seconds_bucket", le="0.00025") == 1
    assert moved("cloud_connector_channel_layer_send_seconds_bucket", le="3.0") == 2


@pytest.mark.django_db
def test_a_redis_outage_is_counted_while_it_lasts_and_after():
    outages = metrics.redis.outages
    metrics.redis.went_down()
    metrics.redis.went_down()  # the same outage, reported by a second failing call
    during = scrape()
    assert value(during, "cloud_connector_redis_unreachable") == 1
    assert value(during, "cloud_connector_redis_outages_total") == outages + 1
    metrics.redis.came_back()
    after = scrape()
    assert value(after, "cloud_connector_redis_unreachable") == 0
    assert value(after, "cloud_connector_redis_outage_seconds_total") >= value(
        during, "cloud_connector_redis_outage_seconds_total"
    )


@pytest.mark.django_db
def test_socket_opens_closes_and_refusals_are_counted_by_kind_and_code():
    before = scrape()
    metrics.socket_opened(kind="session")
    metrics.socket_closed(kind="session", code=4503)
    metrics.socket_refused(kind="device", code=4401)
    metrics.socket_closed(kind="device", code=4401)
    metrics.socket_closed(kind="pos_listener", code=3999)  # not a code of ours: "other"
    after = scrape()
    assert (
        value(after, "cloud_connector_sockets_opened_total", kind="session")
        - value(before, "cloud_connector_sockets_opened_total", kind="session")
        == 1
    )
    assert value(after, "cloud_connector_socket_closes_total", kind="session", code="4503") >= 1
    assert value(after, "cloud_connector_socket_closes_total", kind="device", code="4401") >= 1
    assert value(after, "cloud_connector_socket_closes_total", kind="pos_listener", code="other") >= 1
    with pytest.raises(ValueError, match="unknown socket kind"):
        metrics.socket_opened(kind="browser")


@pytest.mark.django_db
def test_heartbeats_and_database_time_are_recorded():
    before = scrape()
    metrics.heartbeat_recorded(ok=True, at=1_800_000_000.0)
    metrics.heartbeat_recorded(ok=False)
    metrics.nodes_presumed_dead(2)
    metrics.db_observe(operation="device_register", seconds=0.012)
    after = scrape()
    assert value(after, "cloud_connector_node_heartbeat_timestamp_seconds") == 1_800_000_000.0
    assert (
        value(after, "cloud_connector_node_heartbeats_total", outcome="failed")
        - value(before, "cloud_connector_node_heartbeats_total", outcome="failed")
        == 1
    )
    assert (
        value(after, "cloud_connector_nodes_presumed_dead_total")
        - value(before, "cloud_connector_nodes_presumed_dead_total")
        == 2
    )
    assert value(after, "cloud_connector_db_seconds_count", operation="device_register") >= 1


@pytest.mark.django_db
def test_sockets_open_and_sessions_held_are_read_from_the_registered_sources(sources):
    empty = scrape()
    assert not empty["cloud_connector_sockets_open"].samples  # no source: no figure, not a false 0
    metrics.register_source("sockets_open", lambda: {"device": 4, "session": 3, "pos_listener": 1})
    metrics.register_source("sessions_held", lambda: 3)
    families = scrape()
    assert value(families, "cloud_connector_sockets_open", kind="device") == 4
    assert value(families, "cloud_connector_sockets_open", kind="device_listener") == 0
    assert value(families, "cloud_connector_sessions_held") == 3
    with pytest.raises(ValueError, match="unknown metric source"):
        metrics.register_source("sockets", lambda: {})


@pytest.mark.django_db
def test_a_failing_source_leaves_its_family_out_and_is_counted(sources):
    def broken() -> dict:
        raise KeyError("registry moved")

    metrics.register_source("sessions_held", broken)
    families = scrape()
    assert not families["cloud_connector_sessions_held"].samples
    assert value(families, "cloud_connector_metrics_errors_total", source="sessions_held") >= 1
    assert value(families, "cloud_connector_ready") == 1  # the rest of the scrape is there


@pytest.mark.django_db
def test_sessions_by_state_claims_and_live_nodes_come_from_the_database():
    now = timezone.now()
    pos = make_pos()
    for number, state in enumerate(["registered", "online", "online", "offline", "ended"]):
        DeviceSession.objects.create(
            id=f"session-{number}",
            device=DeviceFactory(),
            state=state,
            jwt_expires_at=now + timedelta(minutes=5),
            claimed_by=pos.application if state == "online" else None,
        )
    NodeHeartbeat.objects.create(node="alive", seen_at=now)
    NodeHeartbeat.objects.create(node="silent", seen_at=now - timedelta(minutes=5))
    families = scrape()
    assert value(families, "cloud_connector_sessions", state="registered") == 1
    assert value(families, "cloud_connector_sessions", state="online") == 2
    assert value(families, "cloud_connector_sessions", state="offline") == 1
    assert not any(sample.labels.get("state") == "ended" for sample in families["cloud_connector_sessions"].samples)
    assert value(families, "cloud_connector_claims_held") == 2
    assert value(families, "cloud_connector_nodes_alive") == 1


@pytest.mark.django_db
def test_a_database_that_fails_leaves_its_figures_out_of_a_scrape_that_still_answers(monkeypatch):
    def refused() -> None:
        raise OperationalError("connection refused")

    before = scrape()
    monkeypatch.setattr(metrics, "deployment_figures", refused)
    metrics.deployment.figures = None
    families = scrape()
    assert not families["cloud_connector_sessions"].samples
    assert not families["cloud_connector_claims_held"].samples
    errors_before = sum(
        sample.value
        for sample in before["cloud_connector_metrics_errors"].samples
        if sample.labels.get("source") == "database"
    )
    assert value(families, "cloud_connector_metrics_errors_total", source="database") == errors_before + 1
    assert value(families, "cloud_connector_frames_relayed_total", direction="pos_to_device") >= 0


@pytest.mark.django_db(transaction=True)
async def test_a_database_that_hangs_does_not_hold_the_scrape(async_client, monkeypatch, settings):
    settings.READINESS_TIMEOUT = 0.3

    def hangs() -> None:
        time.sleep(2)
        raise OperationalError("too late")

    monkeypatch.setattr(metrics, "deployment_figures", hangs)
    metrics.deployment.figures = None
    started = time.monotonic()
    response = await async_client.get("/metrics")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(response.content.decode())}
    assert not families["cloud_connector_sessions"].samples
    assert elapsed < 1.5, f"the scrape waited {elapsed:.2f} s for a hanging database"
    await asyncio.sleep(2)  # the hanging read finishes before the next test


@pytest.mark.django_db
def test_readiness_is_part_of_the_scrape():
    families = scrape()
    assert value(families, "cloud_connector_ready") == 1
    assert value(families, "cloud_connector_readiness_check_ok", check="database") == 1
    assert value(families, "cloud_connector_readiness_check_seconds", check="database") >= 0


@pytest.mark.django_db
def test_openmetrics_is_served_to_a_scraper_that_asks_for_it():
    response = Client().get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().rstrip().endswith("# EOF")


# --- who may read it ------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_address_outside_the_allowed_ones_gets_the_404_of_a_path_that_does_not_exist():
    outsider = Client(REMOTE_ADDR="203.0.113.7")
    refused = outsider.get("/metrics")
    nowhere = outsider.get("/no-such-page-at-all")
    assert refused.status_code == nowhere.status_code == 404
    assert b"cloud_connector" not in refused.content


@pytest.mark.django_db
def test_a_request_that_came_through_a_proxy_is_refused_even_from_loopback():
    response = Client(REMOTE_ADDR="127.0.0.1").get("/metrics", HTTP_X_FORWARDED_FOR="198.51.100.4")
    assert response.status_code == 404
    assert Client().get("/metrics", HTTP_FORWARDED="for=198.51.100.4").status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("address", ["127.0.0.1", "127.3.4.5", "::1", "::ffff:127.0.0.1"])
def test_loopback_addresses_may_read_it_by_default(address):
    assert Client(REMOTE_ADDR=address).get("/metrics").status_code == 200


@pytest.mark.django_db
def test_the_allowed_addresses_may_be_networks(settings):
    settings.METRICS_ALLOWED_ADDRESSES = ["10.20.0.0/16", "2001:db8::/32"]
    assert Client(REMOTE_ADDR="10.20.3.4").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="2001:db8::9").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="10.21.3.4").get("/metrics").status_code == 404
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 404


@pytest.mark.django_db
def test_with_a_token_set_only_its_bearer_may_read_it(settings):
    settings.METRICS_TOKEN = "scrape-token-0123456789abcdef"
    assert Client().get("/metrics").status_code == 403
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-token").status_code == 403
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Basic scrape-token-0123456789abcdef").status_code == 403
    allowed = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-0123456789abcdef")
    assert allowed.status_code == 200
    # The address rule still holds for the token's bearer.
    assert (
        Client(REMOTE_ADDR="203.0.113.7")
        .get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-0123456789abcdef")
        .status_code
        == 404
    )


@pytest.mark.django_db(transaction=True)
async def test_the_asgi_handler_serves_the_scrape_with_the_database_figures(async_client):
    metrics.deployment.figures = None

    @sync_to_async
    def a_registered_session() -> None:
        DeviceSession.objects.create(
            id="async-scrape", device=DeviceFactory(), jwt_expires_at=timezone.now() + timedelta(minutes=5)
        )
        connection.close()  # this thread outlives the test: its connection must not keep the test database

    await a_registered_session()
    response = await async_client.get("/metrics")
    assert response.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(response.content.decode())}
    assert value(families, "cloud_connector_sessions", state="registered") == 1
    assert value(families, "cloud_connector_ready") == 1


# --- the primitives -------------------------------------------------------------------------


def test_a_loop_histogram_counts_cumulatively_like_prometheus_clients_own():
    histogram = LoopHistogram("test_loop_seconds", "a test", buckets=(0.1, 1.0))
    for observation in (0.05, 0.1, 0.5, 2.0, 3.0):
        histogram.observe(observation)
    [family] = histogram.collect()
    buckets = {sample.labels["le"]: sample.value for sample in family.samples if sample.name.endswith("_bucket")}
    assert buckets == {"0.1": 2, "1.0": 3, "+Inf": 5}
    assert [sample.value for sample in family.samples if sample.name.endswith("_count")] == [5]
    assert [sample.value for sample in family.samples if sample.name.endswith("_sum")] == [5.65]


def test_the_refusal_log_hands_each_change_once_and_forgets_the_old():
    log = RefusalLog()
    log.add("registration:invalid_client", now=600.0)  # minute 10
    log.add("registration:invalid_client", now=610.0)
    log.add("claim:device_offline", now=700.0)  # minute 11
    assert log.take_changed(now=700.0) == {(10, "registration:invalid_client"): 2, (11, "claim:device_offline"): 1}
    assert log.take_changed(now=700.0) == {}
    log.add("registration:invalid_client", now=620.0)
    assert log.take_changed(now=700.0) == {(10, "registration:invalid_client"): 3}  # the minute's whole count
    log.give_back([(10, "registration:invalid_client")])
    assert log.take_changed(now=700.0) == {(10, "registration:invalid_client"): 3}
    assert log.take_changed(now=600.0 + 63 * 60) == {}
    assert log.counts() == {}


def test_an_operation_counts_its_refusals_for_the_fleet_page(monkeypatch):
    log = RefusalLog()
    monkeypatch.setattr(account_metrics, "refusals", log)
    operation = metrics.registrations
    operation.record(outcome="rate_limited")
    operation.record(outcome="ok")
    assert set(reason for _minute, reason in log.counts()) == {"registration:rate_limited"}
    assert isinstance(operation, Operation)


# --- settings ---------------------------------------------------------------------------------

SETTINGS_DUMP = """
import json, django
django.setup()
from django.conf import settings as s
print(json.dumps({"allowed": s.METRICS_ALLOWED_ADDRESSES, "token": bool(s.METRICS_TOKEN),
                  "timeout": s.READINESS_TIMEOUT, "log_format": s.LOG_FORMAT,
                  "formatter": s.LOGGING["handlers"]["console"]["formatter"]}))
"""
PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "k" * 20 + "-production-secret-key-0123456789",
    "CC_JWT_KEYS": "k1:" + "j" * 16 + "-device-token-signing-key-0123456789",
    "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
}


def settings_with(**variables: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DJANGO_SETTINGS_MODULE": "portal.settings", **variables}
    return subprocess.run(
        [sys.executable, "-c", SETTINGS_DUMP], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_default_allows_loopback_only_without_a_token():
    process = settings_with()
    assert process.returncode == 0, process.stderr
    configured = json.loads(process.stdout.strip().splitlines()[-1])
    assert configured["allowed"] == ["127.0.0.0/8", "::1/128"]
    assert configured["token"] is False
    assert configured["timeout"] == 1.0


def test_production_refuses_to_let_every_address_read_metrics_without_a_token():
    refused = settings_with(**PRODUCTION, METRICS_ALLOWED_ADDRESSES="0.0.0.0/0")
    assert refused.returncode != 0
    assert "METRICS_ALLOWED_ADDRESSES lets every address read /metrics" in refused.stderr
    with_token = settings_with(**PRODUCTION, METRICS_ALLOWED_ADDRESSES="0.0.0.0/0", METRICS_TOKEN="t" * 32)
    assert with_token.returncode == 0, with_token.stderr


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"METRICS_ALLOWED_ADDRESSES": "prometheus.internal"}, "is not an IP address or network"),
        ({"READINESS_TIMEOUT": "soon"}, "READINESS_TIMEOUT must be a number of seconds"),
        ({"READINESS_TIMEOUT": "0"}, "READINESS_TIMEOUT must be more than 0"),
    ],
)
def test_malformed_operations_settings_stop_the_start_with_the_reason(variables, message):
    process = settings_with(**variables)
    assert process.returncode != 0
    assert message in process.stderr
