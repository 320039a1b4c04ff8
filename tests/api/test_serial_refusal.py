"""A taken serial number is refused with one neutral answer on every path that creates or
changes a device (REST API, admin form, CSV import, services, the model's own validation),
whoever holds it; refusals are audited and rate limited per caller
(connector/serial_refusals.py)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from accounts.models import AuditEntry
from accounts.scope import principal_for_user
from connector import serial_refusals
from connector import services as connector_services
from connector.csv_import import devices_import_csv
from connector.models import Device
from tests.api.conftest import API, db_snapshot
from tests.world import World

REFUSED = {"serial": ["This serial number cannot be used."]}


@pytest.fixture(autouse=True)
def serial_refusal_settings(settings):
    """A cache of the test's own (clearing a shared Redis would flush the channel layer's
    database too), and a day's window: windows are aligned on the clock, and one must not
    close mid-test."""
    from django.core.cache import cache

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "serial"}}
    settings.CLOUD_CONNECTOR = {
        **settings.CLOUD_CONNECTOR,
        "SERIAL_REFUSAL_LIMIT": 3,
        "SERIAL_REFUSAL_WINDOW": 86400,
    }
    cache.clear()
    yield
    cache.clear()


def device_body(world: World, **overrides) -> dict:
    return {
        "merchant": world.merchant.pk,
        "store": world.store.pk,
        "make": "Ingenico",
        "model": "Lane3000",
        "serial": "FREE0001",
        **overrides,
    }


def refusals() -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action="device.serial_refused").order_by("id"))


def test_a_serial_held_outside_the_callers_scope_is_refused_without_describing_the_device(world: World, merchant_admin):
    # The sister aggregator's terminal belongs to the tenant's other aggregator: alice cannot see it.
    taken = world.sister_device
    response = merchant_admin.post(
        f"{API}/devices/", device_body(world, make=taken.make, serial=taken.serial), format="json"
    )
    assert (response.status_code, response.json()) == (400, REFUSED)
    assert taken.model not in response.content.decode()
    assert not Device.objects.filter(store=world.store, serial=taken.serial).exists()


def test_the_refusal_is_the_same_whether_the_holder_is_in_scope_or_not(world: World, ma_admin, settings):
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "SERIAL_REFUSAL_LIMIT": 10}
    inside, outside = world.other_device, world.sister_device  # the aggregator's other merchant, and the sister's
    answers = []
    for taken in (inside, outside):
        created = ma_admin.post(
            f"{API}/devices/", device_body(world, make=taken.make, serial=taken.serial), format="json"
        )
        changed = ma_admin.patch(
            f"{API}/devices/{world.device.pk}/", {"serial": taken.serial.lower()}, format="json"
        )
        answers.append([(r.status_code, r.json()) for r in (created, changed)])
    assert answers[0] == answers[1] == [(400, REFUSED), (400, REFUSED)]


def test_each_refusal_is_audited_with_the_actor_the_serial_tried_and_the_outcome(world: World, merchant_admin):
    taken = world.sister_device
    merchant_admin.post(f"{API}/devices/", device_body(world, make=taken.make, serial=taken.serial), format="json")
    merchant_admin.patch(f"{API}/devices/{world.device.pk}/", {"serial": taken.serial}, format="json")
    entries = refusals()
    assert [(e.actor, e.tenant_id, e.data) for e in entries] == [
        ("user:alice", world.tenant.pk, {"make": taken.make, "serial": taken.serial, "outcome": "refused"})
    ] * 2
    assert entries[0].actor_user == world.merchant_admin
    assert [e.object_id for e in entries] == ["", str(world.device.pk)]


def test_too_many_refusals_answer_429_with_retry_after_even_for_a_free_serial(world: World, provisioning):
    taken = world.sister_device
    for _ in range(3):
        refused = provisioning.post(
            f"{API}/devices/", device_body(world, make=taken.make, serial=taken.serial), format="json"
        )
        assert refused.status_code == 400
    before = db_snapshot()["Device"]
    limited = provisioning.post(f"{API}/devices/", device_body(world, serial="NEVERUSED1"), format="json")
    assert limited.status_code == 429
    assert 0 < int(limited["Retry-After"]) <= 86400
    assert "try again" in limited.json()["detail"]
    changed = provisioning.patch(f"{API}/devices/{world.device.pk}/", {"serial": "NEVERUSED2"}, format="json")
    assert changed.status_code == 429
    assert db_snapshot()["Device"] == before
    assert [e.data["outcome"] for e in refusals()] == ["refused"] * 3 + ["rate_limited"] * 2


def test_the_limit_is_per_caller_and_spares_other_changes(world: World, provisioning, ma_admin):
    taken = world.sister_device
    for _ in range(3):
        provisioning.post(f"{API}/devices/", device_body(world, make=taken.make, serial=taken.serial), format="json")
    # Switching a terminal off, or repeating its serial in a PUT, is not a probe.
    disabled = provisioning.patch(f"{API}/devices/{world.device.pk}/", {"enabled": False}, format="json")
    assert disabled.status_code == 200
    same = provisioning.patch(
        f"{API}/devices/{world.device.pk}/", {"serial": world.device.serial.lower()}, format="json"
    )
    assert same.status_code == 200
    other = ma_admin.post(f"{API}/devices/", device_body(world, serial="OTHERFREE1"), format="json")
    assert other.status_code == 201
    mine = provisioning.post(f"{API}/devices/", device_body(world, serial="OTHERFREE2"), format="json")
    assert mine.status_code == 429


def test_the_service_refuses_with_the_neutral_message(world: World):
    actor = principal_for_user(world.merchant_admin)
    taken = world.sister_device
    with pytest.raises(serial_refusals.SerialRefused) as refused:
        connector_services.device_create(
            merchant=world.merchant,
            store=world.store,
            make=taken.make.upper(),
            model="Other",
            serial=taken.serial.lower(),
            actor=actor,
        )
    assert refused.value.errors == REFUSED
    assert [e.data["serial"] for e in refusals()] == [taken.serial.lower()]


def test_the_models_own_validation_does_not_describe_the_device_either(world: World):
    taken = world.sister_device
    twin = Device(
        tenant=world.tenant,
        merchant=world.merchant,
        store=world.store,
        make=taken.make,
        model="Other",
        serial=taken.serial,
    )
    with pytest.raises(ValidationError) as refused:
        twin.full_clean()
    assert refused.value.messages == ["This serial number cannot be used."]


def test_the_admin_form_refuses_neutrally_and_the_refusal_survives_the_forms_rollback(world: World, client):
    client.force_login(world.staff)
    taken = world.sister_device
    form = {
        "merchant": world.merchant.pk,
        "store": world.store.pk,
        "make": taken.make,
        "model": "Lane3000",
        "serial": taken.serial,
        "enabled": "on",
        "provisioned": "on",
    }
    response = client.post(reverse("admin:connector_device_add"), form)
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["serial"] == ["This serial number cannot be used."]
    assert [(e.actor, e.data["outcome"]) for e in refusals()] == [("user:sam", "refused")]


def test_the_csv_import_refuses_taken_serials_neutrally_and_audits_them(world: World):
    actor = principal_for_user(world.staff)
    taken = world.sister_device
    text = (
        "make,model,serial,merchant,store\n"
        f"{taken.make},Lane3000,{taken.serial},{world.merchant.name},{world.store.name}\n"
    )
    result = devices_import_csv(tenant=world.tenant, file=text.encode(), actor=actor)
    assert [(e.line, e.reason) for e in result.errors] == [
        (2, f"{taken.make} serial {taken.serial!r}: This serial number cannot be used.")
    ]
    assert taken.store.name not in str(result.errors) and taken.merchant.name not in str(result.errors)
    assert [(e.actor, e.data["serial"], e.data["outcome"]) for e in refusals()] == [
        ("user:sam", taken.serial, "refused")
    ]


def test_the_api_description_states_the_rule(world: World, provisioning):
    schema = provisioning.get("/api/schema/?format=json").json()
    create = schema["paths"]["/api/v1/devices/"]["post"]
    assert "This serial number cannot be used." in create["description"]
    assert "429" in create["responses"]
    assert "429" in schema["paths"]["/api/v1/devices/{id}/"]["patch"]["responses"]
