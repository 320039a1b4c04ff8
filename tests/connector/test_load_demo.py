"""`manage.py load_demo`: the demo world, made through the services, and credentials that work."""

from __future__ import annotations

import base64
import io
import re
import stat

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.hashers import check_password
from django.core.management import CommandError, call_command

from accounts import services as account_services
from accounts.models import POS, Application, AuditEntry, CloudApplication, ProvisioningClient, Tenant, User
from accounts.scope import SYSTEM, Level, principal_for_user
from connector import services
from connector.models import Device
from connector.services import Unusable
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db

# A secret is letters and digits; "(unknown: ...)" stands where none is known.
CREDENTIALS = re.compile(r"client_id: (\S+)\s+client_secret: ([A-Za-z0-9]+)\b")


@pytest.fixture(autouse=True)
def development(settings):
    settings.DEBUG = True


@pytest.fixture
def credentials_file(tmp_path):
    return tmp_path / ".demo-credentials.txt"


def load_demo(credentials_file, *args: str) -> str:
    out = io.StringIO()
    call_command("load_demo", "--credentials-file", str(credentials_file), *args, stdout=out)
    return out.getvalue()


def printed_credentials(output: str) -> dict[str, str]:
    return dict(CREDENTIALS.findall(output))


def test_it_refuses_to_run_with_debug_off(settings, credentials_file):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG is off"):
        load_demo(credentials_file)
    assert not Tenant.objects.exists()
    assert not credentials_file.exists()


def test_force_runs_it_with_debug_off(settings, credentials_file):
    settings.DEBUG = False
    load_demo(credentials_file, "--force")
    assert Tenant.objects.filter(domain="demo").exists()


def test_it_loads_the_demo_world_through_the_services(credentials_file):
    load_demo(credentials_file)

    tenant = Tenant.objects.get()
    assert tenant.domain == "demo" and services.tenant_is_subscribed(tenant=tenant)
    ma = tenant.merchant_aggregators.get()
    merchant = ma.merchants.get()
    store_1, store_2 = merchant.stores.order_by("id")
    assert services.is_active(obj=ma) and services.is_active(obj=merchant)
    devices = list(Device.objects.order_by("serial"))
    assert [(d.make, d.model, d.serial) for d in devices] == [
        ("Ingenico", "Lane3000", "230000001"),
        ("Ingenico", "Move5000", "230000002"),
        ("Ingenico", "Lane3000", "230000003"),
        ("Ingenico", "Move5000", "230000004"),
        ("Ingenico", "Lane3000", "230000005"),
    ]
    assert [services.device_unusable_reason(device=d) for d in devices] == [None] * 4 + [Unusable.DEVICE]
    assert [d.store for d in devices] == [store_1, store_1, store_2, store_2, store_1]
    assert POS.objects.get().store == store_1
    assert CloudApplication.objects.get(merchant_aggregator=ma).missing_for_cloud_connector() == []
    assert ProvisioningClient.objects.get().tenant == tenant
    # Every object was made by a service: the audit log names the command.
    assert AuditEntry.objects.filter(actor="command:load_demo", action="device.create").count() == 5
    assert not AuditEntry.objects.exclude(actor="command:load_demo").exists()


def test_it_prints_the_urls_logins_tsns_and_relay_commands(credentials_file):
    output = load_demo(credentials_file)
    pos = POS.objects.get()
    pos_secret = printed_credentials(output)[pos.application.client_id]

    for text in (
        "http://127.0.0.1:8000/",
        "http://127.0.0.1:8000/admin/",
        "/oauth2/v1/demo/token",
        "admin / admin",
        "ma-admin / ma-admin",
        "merchant-admin / merchant-admin",
        "Ingenico-Lane3000-230000001",
        "Ingenico-Move5000-230000004",
        "Ingenico-Lane3000-230000005   NOT active",
    ):
        assert text in output
    assert (
        ".venv/bin/python manage.py simulate_device --url ws://127.0.0.1:8000 --tsn Ingenico-Lane3000-230000001 "
        f"--client-id {pos.application.client_id} --client-secret {pos_secret}"
    ) in output
    assert (
        ".venv/bin/python manage.py pos_client --url http://127.0.0.1:8000 --domain demo "
        f"--client-id {pos.application.client_id} --client-secret {pos_secret} --tsn Ingenico-Lane3000-230000001 "
        """--message '{"hello": "terminal"}'"""
    ) in output


def test_the_urls_follow_the_address_make_run_serves_on_first_and_later_runs(credentials_file):
    first = load_demo(credentials_file, "--address", "0.0.0.0:9000")
    saved_first = credentials_file.read_text()
    again = load_demo(credentials_file, "--address", "127.0.0.1:8100")
    saved_again = credentials_file.read_text()

    for output, address in (
        (first, "0.0.0.0:9000"),
        (saved_first, "0.0.0.0:9000"),
        (again, "127.0.0.1:8100"),
        (saved_again, "127.0.0.1:8100"),
    ):
        assert f"Portal:    http://{address}/" in output
        assert f"simulate_device --url ws://{address} --tsn" in output
        assert f"pos_client --url http://{address} --domain demo" in output
        assert "127.0.0.1:8000" not in output
    assert printed_credentials(again) == printed_credentials(first)


def test_a_later_run_shows_the_demo_as_it_is_now(credentials_file):
    first = load_demo(credentials_file)
    later = Device.objects.get(serial="230000005")
    services.service_activate(obj=later, actor=SYSTEM)
    store = later.store
    added = account_services.pos_create(store=store, name="Till 2", actor=SYSTEM)
    User.objects.filter(username="merchant-viewer").update(is_active=False)

    output = load_demo(credentials_file)

    assert "Ingenico-Lane3000-230000005   usable" in output
    assert "NOT active" not in output
    assert "POS 'Till 2' of Store 1" in output
    assert f"client_id: {added.client_id}  client_secret: (unknown" in output
    assert "merchant-viewer / merchant-viewer   merchant viewer, read-only (Demo Coffee) (deactivated since)" in output
    assert printed_credentials(output) == printed_credentials(first)
    assert credentials_file.read_text() in output


def test_it_makes_and_prints_a_viewer_of_the_merchant_and_one_of_the_aggregator(credentials_file):
    output = load_demo(credentials_file)
    assert "ma-viewer / ma-viewer   merchant aggregator viewer, read-only (Demo Aggregator)" in output
    assert "merchant-viewer / merchant-viewer   merchant viewer, read-only (Demo Coffee)" in output
    for username, level in (("ma-viewer", Level.MERCHANT_AGGREGATOR), ("merchant-viewer", Level.MERCHANT)):
        principal = principal_for_user(authenticate(username=username, password=username))
        assert principal.level == level and not principal.can_write


def test_every_printed_secret_matches_its_hashed_credential(credentials_file):
    output = load_demo(credentials_file)
    printed = printed_credentials(output)
    assert set(printed) == set(Application.objects.values_list("client_id", flat=True))
    assert len(printed) == 3
    for client_id, secret in printed.items():
        stored = Application.objects.get(client_id=client_id).client_secret
        assert stored != secret and check_password(secret, stored)


@pytest.mark.parametrize(
    ("owner", "scope"),
    [("pos", "cloud-connector"), ("cloud_application", "cloud-connector"), ("provisioning_client", "provisioning")],
)
def test_the_printed_credentials_obtain_a_token(client, credentials_file, owner, scope):
    printed = printed_credentials(load_demo(credentials_file))
    application = Application.objects.get(**{f"{owner}__isnull": False})
    basic = base64.b64encode(f"{application.client_id}:{printed[application.client_id]}".encode()).decode()
    response = client.post(
        "/oauth2/v1/demo/token",
        "grant_type=client_credentials",
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=f"Basic {basic}",
    )
    assert response.status_code == 200, response.content
    assert scope in response.json()["scope"].split()


def test_the_printed_logins_work_and_stand_where_they_should(credentials_file):
    load_demo(credentials_file)
    admin = authenticate(username="admin", password="admin")
    assert admin is not None and admin.is_staff and admin.is_superuser
    ma_admin = authenticate(username="ma-admin", password="ma-admin")
    assert principal_for_user(ma_admin).level == Level.MERCHANT_AGGREGATOR and principal_for_user(ma_admin).can_write
    merchant_admin = authenticate(username="merchant-admin", password="merchant-admin")
    assert principal_for_user(merchant_admin).level == Level.MERCHANT


def test_the_block_is_saved_for_the_owner_only(credentials_file):
    output = load_demo(credentials_file)
    assert credentials_file.read_text() in output
    assert printed_credentials(credentials_file.read_text()) == printed_credentials(output)
    assert stat.S_IMODE(credentials_file.stat().st_mode) == 0o600


def test_a_second_run_prints_the_saved_block_and_creates_nothing(credentials_file):
    first = load_demo(credentials_file)
    counts = {model: model.objects.count() for model in (Tenant, Device, POS, Application, User, AuditEntry)}

    second = load_demo(credentials_file)

    assert {model: model.objects.count() for model in counts} == counts
    assert printed_credentials(second) == printed_credentials(first)
    assert "no longer matches" not in second


def test_a_second_run_without_the_saved_block_says_how_to_get_a_secret(credentials_file):
    load_demo(credentials_file)
    credentials_file.unlink()
    output = load_demo(credentials_file)
    assert "already loaded" in output and "Rotate the client secret" in output
    assert not credentials_file.exists()
    assert Tenant.objects.count() == 1


def test_a_second_run_warns_about_a_secret_rotated_since(credentials_file):
    load_demo(credentials_file)
    pos = POS.objects.get()
    account_services.credential_rotate(obj=pos, actor=SYSTEM)
    output = load_demo(credentials_file)
    assert f"the secret of {pos.application.client_id} no longer matches" in output
    # The block itself no longer offers the dead secret, nor relay commands built on it.
    assert pos.application.client_id not in printed_credentials(output)
    assert f"client_id: {pos.application.client_id}  client_secret: (unknown" in output
    assert "simulate_device" not in output
    assert "no POS with a known secret" in output
    # Said once: the saved block no longer holds the dead secret.
    assert "no longer matches" not in load_demo(credentials_file)


def test_it_leaves_a_database_with_other_tenants_alone(credentials_file):
    TenantFactory(domain="production-client")
    output = load_demo(credentials_file)
    assert "only fills an empty database" in output
    assert list(Tenant.objects.values_list("domain", flat=True)) == ["production-client"]
    assert not User.objects.exists()
