"""CRUD of every resource through the API, each write recorded in the audit log with the
API caller as its actor."""

from __future__ import annotations

import pytest

from accounts.models import POS, AuditEntry, CloudApplication, Merchant, MerchantAggregator, Store
from connector.models import Device, Subscription
from tests.api.conftest import API
from tests.world import World

pytestmark = pytest.mark.django_db


def audited(action: str, object_id) -> AuditEntry:
    return AuditEntry.objects.get(action=action, object_id=str(object_id))


def provisioning_actor(world: World) -> str:
    return f"provisioning:{world.provisioning.application.client_id}"


def test_subscriptions_can_be_created_listed_read_and_deleted(world: World, provisioning):
    created = provisioning.post(f"{API}/subscriptions/", {"service": "cloud-connector"}, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["service"] == "cloud-connector"
    assert body["tenant"] == "acme"
    assert provisioning.get(f"{API}/subscriptions/").json()["count"] == 1
    assert provisioning.get(f"{API}/subscriptions/{body['id']}/").json()["service"] == "cloud-connector"
    assert audited("subscription.create", body["id"]).actor == provisioning_actor(world)

    again = provisioning.post(f"{API}/subscriptions/", {"service": "cloud-connector"}, format="json")
    assert again.status_code == 409
    assert "already subscribed" in again.json()["detail"]

    assert provisioning.delete(f"{API}/subscriptions/{body['id']}/").status_code == 204
    assert not Subscription.objects.filter(pk=body["id"]).exists()
    assert audited("subscription.delete", body["id"]).tenant_id == world.tenant.pk


def test_subscriptions_cannot_be_changed(world: World, provisioning):
    created = provisioning.post(f"{API}/subscriptions/", {"service": "cloud-connector"}, format="json").json()
    response = provisioning.patch(f"{API}/subscriptions/{created['id']}/", {"service": "x"}, format="json")
    assert response.status_code == 405
    assert "detail" in response.json()


def test_merchant_aggregators_crud(world: World, provisioning):
    created = provisioning.post(f"{API}/merchant-aggregators/", {"name": "New MA"}, format="json")
    assert created.status_code == 201
    body = created.json()
    assert body == {
        "id": body["id"],
        "name": "New MA",
        "tenant": "acme",
        "cloud_connector_active": False,
        "created_at": body["created_at"],
    }
    assert MerchantAggregator.objects.get(pk=body["id"]).tenant == world.tenant
    assert audited("merchant_aggregator.create", body["id"]).actor == provisioning_actor(world)

    listed = provisioning.get(f"{API}/merchant-aggregators/").json()
    assert {ma["name"] for ma in listed["results"]} == {"Acme Aggregation", "Acme Wholesale", "New MA"}

    renamed = provisioning.patch(f"{API}/merchant-aggregators/{body['id']}/", {"name": "Renamed"}, format="json")
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "Renamed"
    assert audited("merchantaggregator.rename", body["id"]).data == {"name": "Renamed"}

    replaced = provisioning.put(f"{API}/merchant-aggregators/{body['id']}/", {"name": "Replaced"}, format="json")
    assert replaced.status_code == 200
    assert replaced.json()["name"] == "Replaced"

    assert provisioning.delete(f"{API}/merchant-aggregators/{body['id']}/").status_code == 204
    assert not MerchantAggregator.objects.filter(pk=body["id"]).exists()
    assert provisioning.get(f"{API}/merchant-aggregators/{body['id']}/").status_code == 404
    audited("merchant_aggregator.delete", body["id"])


def test_staff_create_a_merchant_aggregator_for_a_named_tenant(world: World, staff):
    missing = staff.post(f"{API}/merchant-aggregators/", {"name": "MA"}, format="json")
    assert missing.status_code == 400
    assert "tenant" in missing.json()
    created = staff.post(f"{API}/merchant-aggregators/", {"name": "MA", "tenant": "globex"}, format="json")
    assert created.status_code == 201
    assert MerchantAggregator.objects.get(pk=created.json()["id"]).tenant == world.far_tenant
    assert audited("merchant_aggregator.create", created.json()["id"]).actor == "user:sam"

    subscribed = staff.post(f"{API}/subscriptions/", {"service": "cloud-connector", "tenant": "globex"}, format="json")
    assert subscribed.status_code == 201
    assert subscribed.json()["tenant"] == "globex"


def test_the_tenant_of_a_merchant_aggregator_cannot_be_changed(world: World, staff):
    response = staff.patch(f"{API}/merchant-aggregators/{world.ma.pk}/", {"tenant": "globex"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"tenant": ["This field cannot be changed."]}
    same = staff.patch(f"{API}/merchant-aggregators/{world.ma.pk}/", {"tenant": "acme"}, format="json")
    assert same.status_code == 200


def test_merchants_crud(world: World, ma_admin):
    created = ma_admin.post(f"{API}/merchants/", {"merchant_aggregator": world.ma.pk, "name": "Shop"}, format="json")
    assert created.status_code == 201
    body = created.json()
    assert body["merchant_aggregator"] == world.ma.pk
    assert body["cloud_connector_active"] is False
    assert audited("merchant.create", body["id"]).actor == "user:agnes"

    assert ma_admin.get(f"{API}/merchants/{body['id']}/").json()["name"] == "Shop"
    moved = ma_admin.patch(f"{API}/merchants/{body['id']}/", {"merchant_aggregator": world.sister_ma.pk}, format="json")
    assert moved.status_code == 400  # out of scope: not found as a choice
    renamed = ma_admin.put(
        f"{API}/merchants/{body['id']}/", {"merchant_aggregator": world.ma.pk, "name": "Shop 2"}, format="json"
    )
    assert renamed.status_code == 200
    assert Merchant.objects.get(pk=body["id"]).name == "Shop 2"

    assert ma_admin.delete(f"{API}/merchants/{body['id']}/").status_code == 204
    assert not Merchant.objects.filter(pk=body["id"]).exists()
    audited("merchant.delete", body["id"])


def test_the_parent_of_a_merchant_cannot_be_changed(world: World, provisioning):
    response = provisioning.patch(
        f"{API}/merchants/{world.merchant.pk}/", {"merchant_aggregator": world.sister_ma.pk}, format="json"
    )
    assert response.status_code == 400
    assert response.json() == {"merchant_aggregator": ["This field cannot be changed."]}


def test_stores_crud(world: World, merchant_admin):
    created = merchant_admin.post(f"{API}/stores/", {"merchant": world.merchant.pk, "name": "Depot"}, format="json")
    assert created.status_code == 201
    store_id = created.json()["id"]
    assert created.json()["merchant"] == world.merchant.pk
    assert audited("store.create", store_id).actor == "user:alice"
    renamed = merchant_admin.patch(f"{API}/stores/{store_id}/", {"name": "Depot 2"}, format="json")
    assert renamed.json()["name"] == "Depot 2"
    assert merchant_admin.delete(f"{API}/stores/{store_id}/").status_code == 204
    assert not Store.objects.filter(pk=store_id).exists()
    audited("store.delete", store_id)


def test_a_store_with_devices_cannot_be_deleted(world: World, provisioning):
    response = provisioning.delete(f"{API}/stores/{world.store.pk}/")
    assert response.status_code == 409
    assert "devices" in response.json()["detail"]
    assert Store.objects.filter(pk=world.store.pk).exists()


def test_a_merchant_with_devices_cannot_be_deleted(world: World, provisioning):
    assert provisioning.delete(f"{API}/merchants/{world.merchant.pk}/").status_code == 409
    assert provisioning.delete(f"{API}/merchant-aggregators/{world.ma.pk}/").status_code == 409
    assert Merchant.objects.filter(pk=world.merchant.pk).exists()
    assert MerchantAggregator.objects.filter(pk=world.ma.pk).exists()


def test_pos_crud(world: World, merchant_admin):
    created = merchant_admin.post(f"{API}/pos/", {"store": world.store.pk, "name": "Till 9"}, format="json")
    assert created.status_code == 201
    body = created.json()
    assert body["store"] == world.store.pk
    assert body["client_id"] and body["client_secret"]
    assert audited("pos.create", body["id"]).data == {"client_id": body["client_id"]}
    renamed = merchant_admin.patch(f"{API}/pos/{body['id']}/", {"name": "Till 10"}, format="json")
    assert renamed.json()["name"] == "Till 10"
    assert renamed.json()["client_secret"] is None
    moved = merchant_admin.patch(f"{API}/pos/{body['id']}/", {"store": world.sibling_store.pk}, format="json")
    assert moved.json() == {"store": ["This field cannot be changed."]}
    assert merchant_admin.delete(f"{API}/pos/{body['id']}/").status_code == 204
    assert not POS.objects.filter(pk=body["id"]).exists()
    audited("pos.delete", body["id"])


def test_applications_crud(world: World, ma_admin):
    created = ma_admin.post(
        f"{API}/applications/",
        {
            "merchant_aggregator": world.ma.pk,
            "name": "Integrator",
            "services": ["retail-api"],
            "grant_types": ["client_credentials"],
            "roles": [],
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["services"] == ["retail-api"]
    assert body["roles"] == []
    assert body["cloud_connector_ready"] is False
    assert body["client_secret"]
    audited("application.create", body["id"])

    changed = ma_admin.patch(f"{API}/applications/{body['id']}/", {"roles": ["pos-terminal"]}, format="json")
    assert changed.status_code == 200
    assert changed.json()["roles"] == ["pos-terminal"]
    assert changed.json()["services"] == ["retail-api"]
    assert changed.json()["cloud_connector_ready"] is True
    assert audited("application.update", body["id"]).data == {"roles": ["pos-terminal"]}

    renamed = ma_admin.patch(f"{API}/applications/{body['id']}/", {"name": "Integrator 2"}, format="json")
    assert renamed.json()["name"] == "Integrator 2"
    assert ma_admin.get(f"{API}/applications/", {"merchant_aggregator": world.ma.pk}).json()["count"] == 2

    assert ma_admin.delete(f"{API}/applications/{body['id']}/").status_code == 204
    assert not CloudApplication.objects.filter(pk=body["id"]).exists()
    audited("application.delete", body["id"])


def test_devices_crud(world: World, merchant_admin):
    created = merchant_admin.post(
        f"{API}/devices/",
        {
            "merchant": world.merchant.pk,
            "store": world.sibling_store.pk,
            "make": "Ingenico",
            "model": "Move5000",
            "serial": "230000777",
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["tsn"] == "Ingenico-Move5000-230000777"
    assert body["enabled"] is True
    assert body["cloud_connector_active"] is False
    assert body["online"] is False
    assert body["cloud_connector_usable"] is False
    assert body["unusable_reason"] == "subscription"
    assert audited("device.create", body["id"]).actor == "user:alice"

    disabled = merchant_admin.patch(f"{API}/devices/{body['id']}/", {"enabled": False}, format="json")
    assert disabled.status_code == 200
    assert disabled.json()["enabled"] is False
    assert disabled.json()["unusable_reason"] == "disabled"
    assert audited("device.update", body["id"]).data == {"enabled": False}

    moved = merchant_admin.patch(f"{API}/devices/{body['id']}/", {"store": world.store.pk}, format="json")
    assert moved.json()["store"] == world.store.pk

    replaced = merchant_admin.put(
        f"{API}/devices/{body['id']}/",
        {
            "merchant": world.merchant.pk,
            "store": world.store.pk,
            "make": "Ingenico",
            "model": "Lane3000",
            "serial": "230000778",
        },
        format="json",
    )
    assert replaced.status_code == 200
    assert replaced.json()["tsn"] == "Ingenico-Lane3000-230000778"
    assert replaced.json()["enabled"] is True

    assert merchant_admin.delete(f"{API}/devices/{body['id']}/").status_code == 204
    assert not Device.objects.filter(pk=body["id"]).exists()
    audited("device.delete", body["id"])


def test_the_merchant_of_a_device_cannot_be_changed(world: World, provisioning):
    response = provisioning.patch(
        f"{API}/devices/{world.device.pk}/", {"merchant": world.other_merchant.pk}, format="json"
    )
    assert response.status_code == 400
    assert response.json() == {"merchant": ["This field cannot be changed."]}


def test_an_empty_patch_changes_nothing_and_writes_no_audit_entry(world: World, provisioning):
    count = AuditEntry.objects.count()
    response = provisioning.patch(f"{API}/stores/{world.store.pk}/", {}, format="json")
    assert response.status_code == 200
    assert response.json()["name"] == "High Street"
    assert AuditEntry.objects.count() == count


def test_lists_are_paginated(world: World, provisioning):
    page = provisioning.get(f"{API}/stores/", {"page_size": 2}).json()
    assert set(page) == {"count", "next", "previous", "results"}
    assert page["count"] == 4
    assert len(page["results"]) == 2
    assert page["previous"] is None
    assert "page=2" in page["next"]
    second = provisioning.get(page["next"]).json()
    assert len(second["results"]) == 2
    assert second["next"] is None
    assert {s["id"] for s in page["results"]}.isdisjoint({s["id"] for s in second["results"]})


def test_a_page_beyond_the_last_is_a_404(world: World, provisioning):
    response = provisioning.get(f"{API}/stores/", {"page": 99})
    assert response.status_code == 404
    assert response.json() == {"detail": "Invalid page."}


def test_the_page_size_is_capped(world: World, provisioning, monkeypatch):
    from connector.api.views import Pagination

    monkeypatch.setattr(Pagination, "max_page_size", 3)
    page = provisioning.get(f"{API}/stores/", {"page_size": 1000}).json()
    assert page["count"] == 4
    assert len(page["results"]) == 3
