"""List filters, and lists that cost the same number of queries however long they are."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.scope import SYSTEM
from connector import services as connector_services
from tests.api.conftest import API, World, make_session
from tests.factories import DeviceFactory, make_cloud_application, make_pos

pytestmark = pytest.mark.django_db


def ids(client, resource: str, **params) -> set:
    response = client.get(f"{API}/{resource}/", params)
    assert response.status_code == 200, response.json()
    return {item["id"] for item in response.json()["results"]}


def test_merchants_by_merchant_aggregator(world: World, provisioning):
    assert ids(provisioning, "merchants", merchant_aggregator=world.ma_a1.pk) == {
        world.merchant_a1.pk,
        world.merchant_a2.pk,
    }
    assert ids(provisioning, "merchants", merchant_aggregator=world.ma_b.pk) == set()


def test_stores_by_merchant(world: World, provisioning):
    assert ids(provisioning, "stores", merchant=world.merchant_a1.pk) == {world.store_a1.pk, world.store_a1b.pk}


def test_pos_by_store_and_merchant(world: World, provisioning):
    extra = make_pos(store=world.store_a1b)
    assert ids(provisioning, "pos", store=world.store_a1.pk) == {world.pos_a1.pk}
    assert ids(provisioning, "pos", merchant=world.merchant_a1.pk) == {world.pos_a1.pk, extra.pk}


def test_applications_by_merchant_aggregator(world: World, provisioning):
    assert ids(provisioning, "applications", merchant_aggregator=world.ma_a2.pk) == {world.app_a2.pk}


def test_devices_by_merchant_store_make_and_state(world: World, provisioning):
    verifone = DeviceFactory(store=world.store_a1b, make="Verifone", model="V400m", serial="V1", enabled=False)
    connector_services.service_activate(obj=world.device_a2, actor=SYSTEM)
    make_session(world.device_a3)

    assert ids(provisioning, "devices", merchant=world.merchant_a1.pk) == {world.device_a1.pk, verifone.pk}
    assert ids(provisioning, "devices", store=world.store_a1b.pk) == {verifone.pk}
    assert ids(provisioning, "devices", make="verifone") == {verifone.pk}
    assert ids(provisioning, "devices", enabled="false") == {verifone.pk}
    assert verifone.pk not in ids(provisioning, "devices", enabled="true")
    assert ids(provisioning, "devices", active="true") == {world.device_a2.pk}
    assert world.device_a2.pk not in ids(provisioning, "devices", active="false")
    assert ids(provisioning, "devices", online="true") == {world.device_a3.pk}
    assert world.device_a3.pk not in ids(provisioning, "devices", online="false")


def test_devices_by_tsn_and_search(world: World, provisioning):
    device = world.device_a1
    assert ids(provisioning, "devices", tsn=device.tsn.lower()) == {device.pk}
    assert ids(provisioning, "devices", tsn=device.serial) == {device.pk}
    assert ids(provisioning, "devices", tsn=device.serial[:-1]) == set()
    assert ids(provisioning, "devices", search="a1000") == {device.pk}
    assert ids(provisioning, "devices", search="lane3000-a") == {
        world.device_a1.pk,
        world.device_a2.pk,
        world.device_a3.pk,
    }
    assert ids(provisioning, "devices", search="%") == set()
    # Tenant B's device is not found by its serial either.
    assert ids(provisioning, "devices", tsn=world.device_b.serial) == set()


def test_device_filters_combine(world: World, provisioning):
    assert ids(provisioning, "devices", merchant=world.merchant_a1.pk, store=world.store_a2.pk) == set()


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as context:
        assert client.get(url).status_code == 200
    return len(context.captured_queries)


@pytest.mark.parametrize(
    ("resource", "grow"),
    [
        ("devices", lambda w, n: [make_session(DeviceFactory(store=w.store_a1)) for _ in range(n)]),
        ("pos", lambda w, n: [make_pos(store=w.store_a1b) for _ in range(n)]),
        ("applications", lambda w, n: [make_cloud_application(merchant_aggregator=w.ma_a1) for _ in range(n)]),
        ("sessions", lambda w, n: [make_session(DeviceFactory(store=w.store_a1)) for _ in range(n)]),
    ],
)
def test_a_list_costs_the_same_queries_however_long_it_is(world: World, provisioning, resource, grow):
    grow(world, 1)
    short = _queries(provisioning, f"{API}/{resource}/")
    grow(world, 6)
    assert _queries(provisioning, f"{API}/{resource}/") == short
