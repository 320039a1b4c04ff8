"""The OpenAPI schema: valid, complete (every operation documents its errors), served with a
self-contained Swagger UI, and true to the running server (Schemathesis)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from django.contrib.staticfiles import finders

from accounts import services as account_services
from accounts.scope import SYSTEM
from connector.models import WebhookEndpoint
from tests.api.conftest import make_session
from tests.factories import DeviceFactory, StoreFactory, make_cloud_application, make_pos
from tests.live import ROOT, LiveServer

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def schema() -> dict:
    from rest_framework.test import APIClient

    response = APIClient().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return json.loads(response.content)


def operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_the_schema_validates_without_a_warning(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "manage.py", "spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "s.yml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stderr


def test_every_resource_of_the_contract_is_documented(schema):
    paths = set(schema["paths"])
    for resource in ("subscriptions", "merchant-aggregators", "merchants", "stores", "pos", "applications"):
        assert f"/api/v1/{resource}/" in paths
        assert f"/api/v1/{resource}/{{id}}/" in paths
    assert "/api/v1/devices/{id}/" in paths
    assert "/api/v1/sessions/{id}/" in paths
    for level in ("merchant-aggregators", "merchants", "devices"):
        assert set(schema["paths"][f"/api/v1/{level}/{{id}}/cloud-connector/"]) == {"post", "delete"}
    for resource in ("pos", "applications"):
        assert "post" in schema["paths"][f"/api/v1/{resource}/{{id}}/rotate-secret/"]


def test_every_operation_documents_its_error_answers(schema):
    for path, method, operation in operations(schema):
        codes = set(operation["responses"])
        where = f"{method.upper()} {path}"
        assert {"401", "403"} <= codes, where
        if "{id}" in path:
            assert "404" in codes, where
        if method in ("post", "put", "patch") and "requestBody" in operation:
            assert "400" in codes, where
        if method == "delete":
            assert "409" in codes or "cloud-connector" in path, where
        assert operation["security"] == [{"bearerAuth": []}, {"cookieAuth": []}], where
    components = schema["components"]["schemas"]
    assert components["ErrorDetail"]["required"] == ["detail"]
    assert components["FieldErrors"]["additionalProperties"] == {"type": "array", "items": {"type": "string"}}


def test_the_tenant_field_is_documented_where_platform_callers_need_it(schema):
    components = schema["components"]["schemas"]
    for name in ("MerchantAggregatorRequest", "SubscriptionRequest"):
        assert "tenant" in components[name]["properties"]
        assert "tenant" not in components[name].get("required", [])
        assert "platform" in components[name]["properties"]["tenant"]["description"]


def test_the_swagger_ui_is_served_from_local_static_files(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "cdn.jsdelivr.net" not in page
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"):
        assert finders.find(f"drf_spectacular_sidecar/swagger-ui-dist/{asset}"), asset


@pytest.mark.live
def test_the_swagger_ui_and_its_assets_load_from_the_running_server(live: LiveServer):
    page = requests.get(f"{live.http_url}/api/docs/", timeout=30)
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="(/static/drf_spectacular_sidecar/[^"]+)"', page.text)
    assert {asset.rsplit("/", 1)[-1] for asset in assets} >= {
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
    }
    for asset in assets:
        assert requests.get(f"{live.http_url}{asset}", timeout=30).status_code == 200, asset
    schema = requests.get(f"{live.http_url}/api/schema/", timeout=30)
    assert schema.status_code == 200
    assert schema.text.startswith("openapi: 3")


SCHEMATHESIS_CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "ignored_auth",
    ]
)


def schemathesis_config(ids: dict[str, int | str]) -> str:
    """Known ids, offered to generated requests some of the time, so that the run reaches
    existing objects (reads, changes, actions) and valid parents in bodies, not only 404s.
    Deletes keep random ids, so that the objects live through the run."""
    lines = [f"[dictionaries.{name}]\nvalues = [{json.dumps(value)}]\n" for name, value in ids.items()]
    lines.append(
        "[parameters]\n"
        '"body.merchant_aggregator" = { dictionary = "merchant_aggregator", probability = 0.5 }\n'
        '"body.merchant" = { dictionary = "merchant", probability = 0.5 }\n'
        '"body.store" = { dictionary = "store", probability = 0.5 }\n'
    )
    for resource, name in (
        ("merchant-aggregators", "merchant_aggregator"),
        ("merchants", "merchant"),
        ("stores", "store"),
        ("pos", "pos"),
        ("applications", "application"),
        ("devices", "device"),
        ("sessions", "session"),
        ("webhook-endpoints", "webhook_endpoint"),
    ):
        lines.append(
            "[[operations]]\n"
            f'include-path-regex = "^/api/v1/{resource}/\\\\{{id\\\\}}/"\n'
            'include-method = ["GET", "PUT", "PATCH", "POST"]\n'
            f'parameters = {{ "path.id" = {{ dictionary = "{name}", probability = 0.7 }} }}\n'
        )
    return "\n".join(lines)


def provisioning_token_over_http(live: LiveServer, *, domain: str, client_id: str, client_secret: str) -> str:
    response = requests.post(
        f"{live.http_url}/oauth2/v1/{domain}/token",
        data={"grant_type": "client_credentials", "scope": "provisioning"},
        auth=(client_id, client_secret),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "provisioning"
    return response.json()["access_token"]


@pytest.mark.live
def test_the_running_api_conforms_to_its_schema_under_schemathesis(live: LiveServer, tmp_path: Path):
    """Generated requests (valid and invalid) against every operation: no 500, every status
    code documented, every body matching the schema, invalid input refused, no answer
    without authentication.

    Bounded by examples, not by the clock, so that a seed always sends the same requests:
    under `--max-time` the fuzzing phase keeps drawing new cases until the time is spent,
    and what a run covers would depend on the machine's load. A longer exploration:
    SCHEMATHESIS_MAX_EXAMPLES=200 SCHEMATHESIS_CONTINUE=1 SCHEMATHESIS_SEED=<n>."""
    tenant = account_services.tenant_create(domain="fuzz", name="Fuzz", actor=SYSTEM)
    provisioning = account_services.provisioning_client_create(tenant=tenant, actor=SYSTEM)
    store = StoreFactory(merchant__merchant_aggregator__tenant=tenant)
    device = DeviceFactory(store=store)
    ids = {
        "merchant_aggregator": store.merchant.merchant_aggregator_id,
        "merchant": store.merchant_id,
        "store": store.pk,
        "pos": make_pos(store=store).pk,
        "application": make_cloud_application(merchant_aggregator=store.merchant.merchant_aggregator).pk,
        "device": device.pk,
        "session": make_session(device).pk,
        "webhook_endpoint": WebhookEndpoint.objects.create(
            tenant=tenant,
            merchant_aggregator=store.merchant.merchant_aggregator,
            url="https://hooks.example.com/cc",
            events=["device.online"],
            secret="whsec_fuzz",
        ).pk,
    }
    (tmp_path / "schemathesis.toml").write_text(schemathesis_config(ids))
    token = provisioning_token_over_http(
        live, domain="fuzz", client_id=provisioning.client_id, client_secret=provisioning.client_secret
    )

    command = [
        str(Path(sys.executable).parent / "st"),
        "--config-file",
        str(tmp_path / "schemathesis.toml"),
        "run",
        f"{live.http_url}/api/schema/?format=json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        SCHEMATHESIS_CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "6"),
        *(["--max-time", os.environ["SCHEMATHESIS_MAX_TIME"]] if "SCHEMATHESIS_MAX_TIME" in os.environ else []),
        *(["--continue-on-failure"] if os.environ.get("SCHEMATHESIS_CONTINUE") else []),
        "--seed",
        os.environ.get("SCHEMATHESIS_SEED", "20260101"),
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--generation-database",
        "none",
        "--no-color",
    ]
    result = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=int(os.environ.get("SCHEMATHESIS_TIMEOUT", "600")),
    )
    output = result.stdout + result.stderr
    print(output[-20_000:])  # shown with -s, or on failure
    assert result.returncode == 0, output[-20_000:] + "\n--- server log ---\n" + live.log()[-5_000:]
    # Every operation of the schema: 51 of v1, 10 of v1.1 (webhook endpoints, connections).
    assert "64 passed" in output, output[-5_000:]
