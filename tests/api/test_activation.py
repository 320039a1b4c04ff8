"""Activation of Cloud Connector through the API, and what it means for devices."""

from __future__ import annotations

import pytest

from accounts.models import AuditEntry
from connector.models import Device, DeviceSession
from connector.services import Unusable, device_unusable_reason
from tests.api.conftest import API, make_session
from tests.world import World

pytestmark = pytest.mark.django_db


def activate(client, level: str, pk: int):
    return client.post(f"{API}/{level}/{pk}/cloud-connector/")


def device_view(client, device) -> dict:
    return client.get(f"{API}/devices/{device.pk}/").json()


def test_activating_an_ma_activates_the_devices_beneath_it_now(world: World, provisioning):
    response = activate(provisioning, "merchant-aggregators", world.ma.pk)
    assert response.status_code == 201
    assert response.json() == {"cloud_connector_active": True, "devices_activated": 2}
    assert provisioning.get(f"{API}/merchant-aggregators/{world.ma.pk}/").json()["cloud_connector_active"] is True
    assert device_view(provisioning, world.device)["cloud_connector_active"] is True
    assert device_view(provisioning, world.other_device)["cloud_connector_active"] is True
    assert device_view(provisioning, world.sister_device)["cloud_connector_active"] is False
    entry = AuditEntry.objects.get(action="merchant_aggregator.cloud_connector.activate")
    assert entry.data == {"devices_activated": 2}
    assert entry.actor.startswith("provisioning:")


def test_activating_twice_is_harmless(world: World, provisioning):
    activate(provisioning, "merchants", world.merchant.pk)
    again = activate(provisioning, "merchants", world.merchant.pk)
    assert again.status_code == 201
    assert again.json() == {"cloud_connector_active": True, "devices_activated": 0}


def test_a_device_created_after_its_merchant_was_activated_is_not_active_until_activated_itself(
    world: World, provisioning
):
    assert provisioning.post(f"{API}/subscriptions/", {"service": "cloud-connector"}, format="json").status_code == 201
    assert activate(provisioning, "merchant-aggregators", world.ma.pk).status_code == 201
    assert activate(provisioning, "merchants", world.merchant.pk).status_code == 201
    assert device_view(provisioning, world.device)["cloud_connector_usable"] is True

    created = provisioning.post(
        f"{API}/devices/",
        {
            "merchant": world.merchant.pk,
            "store": world.store.pk,
            "make": "Ingenico",
            "model": "Lane3000",
            "serial": "LATE0001",
        },
        format="json",
    ).json()
    assert created["cloud_connector_active"] is False
    assert created["cloud_connector_usable"] is False
    assert created["unusable_reason"] == "device"
    from connector.models import Device

    late = Device.objects.get(pk=created["id"])
    assert device_unusable_reason(device=late) == Unusable.DEVICE

    response = activate(provisioning, "devices", late.pk)
    assert response.status_code == 201
    assert response.json() == {"cloud_connector_active": True, "devices_activated": 1}
    assert device_unusable_reason(device=late) is None
    shown = device_view(provisioning, late)
    assert shown["cloud_connector_active"] is True
    assert shown["cloud_connector_usable"] is True
    assert shown["unusable_reason"] is None


def test_deactivating_the_ma_makes_its_devices_unusable_and_ends_their_sessions(world: World, provisioning):
    provisioning.post(f"{API}/subscriptions/", {"service": "cloud-connector"}, format="json")
    activate(provisioning, "merchant-aggregators", world.ma.pk)
    activate(provisioning, "merchants", world.merchant.pk)
    assert device_unusable_reason(device=world.device) is None
    session = make_session(world.device)

    response = provisioning.delete(f"{API}/merchant-aggregators/{world.ma.pk}/cloud-connector/")
    assert response.status_code == 204
    assert device_unusable_reason(device=world.device) == Unusable.MERCHANT_AGGREGATOR
    shown = device_view(provisioning, world.device)
    assert shown["cloud_connector_active"] is True  # its own activation is kept...
    assert shown["cloud_connector_usable"] is False  # ...but the MA above is off
    assert shown["unusable_reason"] == "merchant_aggregator"
    session.refresh_from_db()
    assert session.state == DeviceSession.State.ENDED
    assert AuditEntry.objects.filter(action="merchant_aggregator.cloud_connector.deactivate").exists()

    # Reactivating the MA brings the device back: its own activation was never lost.
    activate(provisioning, "merchant-aggregators", world.ma.pk)
    assert device_unusable_reason(device=world.device) is None


def test_deactivating_a_device(world: World, merchant_admin):
    assert activate(merchant_admin, "devices", world.device.pk).status_code == 201
    assert merchant_admin.delete(f"{API}/devices/{world.device.pk}/cloud-connector/").status_code == 204
    assert device_view(merchant_admin, world.device)["cloud_connector_active"] is False


def test_the_unusable_reason_of_the_api_agrees_with_the_service_in_every_state(world: World, provisioning):
    device = world.device
    steps = [
        lambda: None,
        lambda: provisioning.post(f"{API}/subscriptions/", {"service": "cloud-connector"}, format="json"),
        lambda: activate(provisioning, "merchant-aggregators", world.ma.pk),
        lambda: activate(provisioning, "merchants", world.merchant.pk),
        lambda: provisioning.patch(f"{API}/devices/{device.pk}/", {"enabled": False}, format="json"),
        lambda: provisioning.patch(f"{API}/devices/{device.pk}/", {"enabled": True}, format="json"),
        lambda: provisioning.delete(f"{API}/devices/{device.pk}/cloud-connector/"),
        lambda: activate(provisioning, "devices", device.pk),
        lambda: provisioning.delete(f"{API}/merchants/{world.merchant.pk}/cloud-connector/"),
    ]
    seen = set()
    for step in steps:
        step()
        device.refresh_from_db()
        expected = device_unusable_reason(device=device)
        shown = device_view(provisioning, device)
        assert shown["unusable_reason"] == (expected.value if expected else None)
        assert shown["cloud_connector_usable"] is (expected is None)
        seen.add(shown["unusable_reason"])
    assert seen == {"subscription", "merchant_aggregator", "merchant", "disabled", "device", None}


def test_disabling_a_device_ends_its_live_session(world: World, provisioning):
    session = make_session(world.device)
    Device.objects.filter(pk=world.device.pk).update(online=True)  # what the relay writes with it
    assert device_view(provisioning, world.device)["online"] is True
    provisioning.patch(f"{API}/devices/{world.device.pk}/", {"enabled": False}, format="json")
    session.refresh_from_db()
    assert session.state == DeviceSession.State.ENDED
    assert device_view(provisioning, world.device)["online"] is False


def test_an_aggregator_user_switches_cloud_connector_for_its_own_aggregator_and_merchants(world: World, ma_admin):
    assert activate(ma_admin, "merchant-aggregators", world.ma.pk).status_code == 201
    assert activate(ma_admin, "merchants", world.merchant.pk).status_code == 201
    assert ma_admin.delete(f"{API}/merchant-aggregators/{world.ma.pk}/cloud-connector/").status_code == 204
    actions = set(AuditEntry.objects.filter(actor="user:agnes").values_list("action", flat=True))
    assert {"merchant_aggregator.cloud_connector.activate", "merchant.cloud_connector.activate"} <= actions
    assert "merchant_aggregator.cloud_connector.deactivate" in actions
