"""List filters, and lists that cost the same number of queries however long they are."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.scope import SYSTEM
from connector import services as connector_services
from connector.models import Device
from tests.api.conftest import API, make_session
from tests.factories import DeviceFactory, make_cloud_application, make_pos
from tests.world import World

pytestmark = pytest.mark.django_db


def ids(client, resource: str, **params) -> set:
    response = client.get(f"{API}/{resource}/", params)
    assert response.status_code == 200, response.json()
    return {item["id"] for item in response.json()["results"]}


def test_merchants_by_merchant_aggregator(world: World, provisioning):
    assert ids(provisioning, "merchants", merchant_aggregator=world.ma.pk) == {
        world.merchant.pk,
        world.other_merchant.pk,
    }
    assert ids(provisioning, "merchants", merchant_aggregator=world.far_ma.pk) == set()


def test_stores_by_merchant(world: World, provisioning):
    assert ids(provisioning, "stores", merchant=world.merchant.pk) == {world.store.pk, world.sibling_store.pk}


def test_pos_by_store_and_merchant(world: World, provisioning):
    extra = make_pos(store=world.sibling_store)
    assert ids(provisioning, "pos", store=world.store.pk) == {world.pos.pk}
    assert ids(provisioning, "pos", merchant=world.merchant.pk) == {world.pos.pk, world.neighbour.pk, extra.pk}


def test_applications_by_merchant_aggregator(world: World, provisioning):
    assert ids(provisioning, "applications", merchant_aggregator=world.sister_ma.pk) == {world.sister_app.pk}


def test_devices_by_merchant_store_make_and_state(world: World, provisioning):
    verifone = DeviceFactory(store=world.sibling_store, make="Verifone", model="V400m", serial="V1", enabled=False)
    connector_services.service_activate(obj=world.other_device, actor=SYSTEM)
    make_session(world.sister_device)
    Device.objects.filter(pk=world.sister_device.pk).update(online=True)  # what the relay writes with it

    assert ids(provisioning, "devices", merchant=world.merchant.pk) == {world.device.pk, verifone.pk}
    assert ids(provisioning, "devices", store=world.sibling_store.pk) == {verifone.pk}
    assert ids(provisioning, "devices", make="verifone") == {verifone.pk}
    assert ids(provisioning, "devices", enabled="false") == {verifone.pk}
    assert verifone.pk not in ids(provisioning, "devices", enabled="true")
    assert ids(provisioning, "devices", active="true") == {world.other_device.pk}
    assert world.other_device.pk not in ids(provisioning, "devices", active="false")
    assert ids(provisioning, "devices", online="true") == {world.sister_device.pk}
    assert world.sister_device.pk not in ids(provisioning, "devices", online="false")


def test_devices_by_tsn_and_search(world: World, provisioning):
    device = world.device
    assert ids(provisioning, "devices", tsn=device.tsn.lower()) == {device.pk}
    assert ids(provisioning, "devices", tsn=device.serial) == {device.pk}
    assert ids(provisioning, "devices", tsn=device.serial[:-1]) == set()
    assert ids(provisioning, "devices", search="a1000") == {device.pk}
    assert ids(provisioning, "devices", search="lane3000-a") == {
        world.device.pk,
        world.other_device.pk,
        world.sister_device.pk,
    }
    assert ids(provisioning, "devices", search="%") == set()
    # Globex's device is not found by its serial either.
    assert ids(provisioning, "devices", tsn=world.far_device.serial) == set()


def test_device_filters_combine(world: World, provisioning):
    assert ids(provisioning, "devices", merchant=world.merchant.pk, store=world.other_store.pk) == set()


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as context:
        assert client.get(url).status_code == 200
    return len(context.captured_queries)


@pytest.mark.parametrize(
    ("resource", "grow"),
    [
        ("devices", lambda w, n: [make_session(DeviceFactory(store=w.store)) for _ in range(n)]),
        ("pos", lambda w, n: [make_pos(store=w.sibling_store) for _ in range(n)]),
        ("applications", lambda w, n: [make_cloud_application(merchant_aggregator=w.ma) for _ in range(n)]),
        ("sessions", lambda w, n: [make_session(DeviceFactory(store=w.store)) for _ in range(n)]),
    ],
)
def test_a_list_costs_the_same_queries_however_long_it_is(world: World, provisioning, resource, grow):
    grow(world, 1)
    short = _queries(provisioning, f"{API}/{resource}/")
    grow(world, 6)
    assert _queries(provisioning, f"{API}/{resource}/") == short
