"""The probes behind docs/nginx/cloud-connector.conf, for real: nginx (TLS) in front of `bin/serve`
with two workers, the fixtures of tests/connector/test_deploy_nginx.py (skipped, with the reason,
where nginx, PostgreSQL or Redis is missing)."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.connector.test_deploy_nginx import backends, nginx, nginx_port  # noqa: F401 - its fixtures

pytestmark = [pytest.mark.live, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_through_nginx_health_and_readiness_answer_and_metrics_does_not(nginx, nginx_port, backends):  # noqa: F811
    public = f"https://127.0.0.1:{nginx_port}"
    cert = str(nginx / "cert.pem")
    assert requests.get(f"{public}/healthz", verify=cert, timeout=10).status_code == 200
    ready = requests.get(f"{public}/readyz", verify=cert, timeout=10)
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {"database", "redis", "channel_layer", "shutdown"}
    assert requests.get(f"{public}/metrics", verify=cert, timeout=10).status_code == 404
    for backend in backends:
        # Each worker, scraped on its own port from loopback, as docs/prometheus/prometheus.yml does.
        scrape = requests.get(f"http://127.0.0.1:{backend.port}/metrics", timeout=10)
        assert scrape.status_code == 200
        names = {family.name for family in text_string_to_metric_families(scrape.text)}
        assert {"cloud_connector_ready", "cloud_connector_sessions", "process_open_fds"} <= names
        # A request that nginx forwarded (it adds X-Forwarded-For) is refused by the worker too.
        forwarded = requests.get(
            f"http://127.0.0.1:{backend.port}/metrics", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10
        )
        assert forwarded.status_code == 404
