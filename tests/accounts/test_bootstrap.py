"""`manage.py bootstrap --domain <slug> [--name ...]` (rest-api.md, Bootstrap)."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session

from accounts.credentials import SCOPE_PROVISIONING, authenticate_bearer
from accounts.models import Application, AuditEntry, ProvisioningClient, Tenant
from accounts.scope import Level
from tests.factories import TenantFactory
from tests.live import ROOT, server_env


def bootstrap(*args: str) -> dict:
    out, err = StringIO(), StringIO()
    call_command("bootstrap", *args, stdout=out, stderr=err)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, out.getvalue()
    return json.loads(lines[0])


@pytest.mark.django_db
def test_it_creates_the_tenant_and_prints_the_new_clients_credentials():
    printed = bootstrap("--domain", "acme-payments", "--name", "Acme Payments")

    assert set(printed) == {"domain", "client_id", "client_secret"}
    assert printed["domain"] == "acme-payments"
    tenant = Tenant.objects.get(domain="acme-payments")
    assert tenant.name == "Acme Payments"
    client = ProvisioningClient.objects.select_related("application").get(tenant=tenant)
    assert client.application.client_id == printed["client_id"]
    assert client.application.kind == Application.Kind.PROVISIONING
    assert client.application.tenant == tenant
    # Hashed at rest: the printed secret is the only clear copy.
    assert client.application.client_secret != printed["client_secret"]
    assert client.application.client_secret.startswith("pbkdf2_")
    actions = set(AuditEntry.objects.filter(tenant=tenant).values_list("action", "actor"))
    assert actions == {("tenant.create", "system"), ("provisioning_client.create", "system")}


@pytest.mark.django_db
def test_the_name_defaults_to_the_domain():
    bootstrap("--domain", "plain")
    assert Tenant.objects.get(domain="plain").name == "plain"


@pytest.mark.django_db
def test_a_second_run_makes_another_client_for_the_same_tenant():
    first = bootstrap("--domain", "acme", "--name", "Acme")
    second = bootstrap("--domain", "acme", "--name", "Another name")

    assert first["client_id"] != second["client_id"]
    assert first["client_secret"] != second["client_secret"]
    tenant = Tenant.objects.get(domain="acme")
    assert tenant.name == "Acme"
    assert Tenant.objects.count() == 1
    assert set(tenant.provisioning_clients.values_list("application__client_id", flat=True)) == {
        first["client_id"],
        second["client_id"],
    }


@pytest.mark.django_db
def test_it_adds_a_client_to_an_existing_tenant():
    tenant = TenantFactory(domain="existing")
    printed = bootstrap("--domain", "existing")
    assert ProvisioningClient.objects.get(application__client_id=printed["client_id"]).tenant == tenant


@pytest.mark.django_db
@pytest.mark.parametrize("domain", ["Bad_Domain", "UPPER", "-leading", "trailing-", "a" * 64, "", "acme payments"])
def test_a_bad_domain_is_a_clear_command_error_and_creates_nothing(domain):
    with pytest.raises(CommandError) as raised:
        call_command("bootstrap", f"--domain={domain}", stdout=StringIO(), stderr=StringIO())
    assert "domain" in str(raised.value).lower()
    assert "lower-case letters, digits and hyphens" in str(raised.value)
    assert not Tenant.objects.exists()
    assert not Application.objects.exists()


@pytest.mark.django_db
def test_a_too_long_name_is_a_clear_command_error_and_creates_nothing():
    with pytest.raises(CommandError) as raised:
        call_command("bootstrap", "--domain", "acme", "--name", "n" * 101, stdout=StringIO(), stderr=StringIO())
    assert "name" in str(raised.value)
    assert not Tenant.objects.exists()
    assert not Application.objects.exists()


def test_a_bad_domain_exits_non_zero_without_a_traceback_and_prints_nothing_on_stdout():
    result = subprocess.run(
        [sys.executable, "manage.py", "bootstrap", "--domain", "Not A Domain"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert "CommandError: Invalid --domain 'Not A Domain'" in result.stderr


def test_a_missing_domain_exits_non_zero_with_usage(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "bootstrap"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert "--domain" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_real_command_prints_one_json_object_and_its_secret_obtains_a_token(live, monkeypatch):
    # The process as an operator runs it, on the test database the live server uses.
    result = subprocess.run(
        [sys.executable, "manage.py", "bootstrap", "--domain", "boot-live", "--name", "Boot"],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    printed = json.loads(result.stdout)
    assert printed["domain"] == "boot-live"

    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    session = OAuth2Session(client=BackendApplicationClient(client_id=printed["client_id"]))
    token = session.fetch_token(
        token_url=f"{live.http_url}/oauth2/v1/boot-live/token",
        client_id=printed["client_id"],
        client_secret=printed["client_secret"],
        timeout=30,
    )
    assert token["scope"] == [SCOPE_PROVISIONING]
    bearer = authenticate_bearer(token["access_token"])
    assert bearer.principal.level == Level.TENANT
    assert bearer.principal.tenant_id == Tenant.objects.get(domain="boot-live").pk
