"""The scope matrix through the API: every caller, on every object outside its scope, gets a
404 exactly as if the object did not exist, and nothing changes; an out-of-scope id in a body
is the same field error as an unknown id; a read-only role or a write above the caller's level
gets a 403 on what it can see."""

from __future__ import annotations

import re

import pytest
from rest_framework.test import APIClient

from accounts.scope import SYSTEM
from connector import services as connector_services
from tests.api.conftest import API, db_snapshot, make_session
from tests.world import World

pytestmark = pytest.mark.django_db

ACTIVATABLE = {"merchant-aggregators", "merchants", "devices"}
ROTATABLE = {"pos", "applications"}


def outside_objects(world: World, caller: str) -> list[tuple[str, int | str]]:
    """(resource, id) of objects outside the caller's scope."""
    far_tenant = [
        ("merchant-aggregators", world.far_ma.pk),
        ("merchants", world.far_merchant.pk),
        ("stores", world.far_store.pk),
        ("pos", world.far_pos.pk),
        ("applications", world.far_app.pk),
        ("devices", world.far_device.pk),
    ]
    sister_ma = [
        ("merchant-aggregators", world.sister_ma.pk),
        ("merchants", world.sister_merchant.pk),
        ("stores", world.sister_store.pk),
        ("pos", world.sister_pos.pk),
        ("applications", world.sister_app.pk),
        ("devices", world.sister_device.pk),
    ]
    other_merchant = [
        ("merchants", world.other_merchant.pk),
        ("stores", world.other_store.pk),
        ("pos", world.other_pos.pk),
        ("devices", world.other_device.pk),
        # A merchant user never sees the applications of its MA.
        ("applications", world.app.pk),
    ]
    return {
        "provisioning": far_tenant,
        "ma_admin": far_tenant + sister_ma,
        "ma_viewer": far_tenant + sister_ma,
        "merchant_admin": far_tenant + sister_ma + other_merchant,
        "merchant_viewer": far_tenant + sister_ma + other_merchant,
    }[caller]


def change_body(resource: str, world: World) -> dict:
    return {"devices": {"enabled": False}, "applications": {"roles": []}}.get(resource, {"name": "Taken over"})


def replace_body(resource: str, world: World) -> dict:
    """A full, otherwise valid representation for PUT."""
    return {
        "merchant-aggregators": {"name": "Taken over"},
        "merchants": {"merchant_aggregator": world.ma.pk, "name": "Taken over"},
        "stores": {"merchant": world.merchant.pk, "name": "Taken over"},
        "pos": {"store": world.store.pk, "name": "Taken over"},
        "applications": {"merchant_aggregator": world.ma.pk, "name": "Taken over"},
        "devices": {
            "merchant": world.merchant.pk,
            "store": world.store.pk,
            "make": "X",
            "model": "Y",
            "serial": "Z",
        },
    }[resource]


def attempts(resource: str, pk, world: World) -> list[tuple[str, str, dict | None]]:
    url = f"{API}/{resource}/{pk}/"
    tries = [
        ("get", url, None),
        ("patch", url, change_body(resource, world)),
        ("put", url, replace_body(resource, world)),
        ("delete", url, None),
    ]
    if resource in ACTIVATABLE:
        tries += [("post", f"{url}cloud-connector/", None), ("delete", f"{url}cloud-connector/", None)]
    if resource in ROTATABLE:
        tries.append(("post", f"{url}rotate-secret/", None))
    return tries


def call(client: APIClient, method: str, url: str, body: dict | None):
    return getattr(client, method)(url, body, format="json") if body is not None else getattr(client, method)(url)


@pytest.mark.parametrize("caller", ["provisioning", "ma_admin", "ma_viewer", "merchant_admin", "merchant_viewer"])
def test_every_object_outside_the_scope_answers_404_and_stays_unchanged(world: World, callers, caller):
    client = callers[caller]
    before = db_snapshot()
    for resource, pk in outside_objects(world, caller):
        for method, url, body in attempts(resource, pk, world):
            response = call(client, method, url, body)
            assert response.status_code == 404, (caller, method, url, response.content)
            assert set(response.json()) == {"detail"}
        listed = {item["id"] for item in client.get(f"{API}/{resource}/", {"page_size": 200}).json()["results"]}
        assert pk not in listed, (caller, resource, pk)
    assert db_snapshot() == before


@pytest.mark.parametrize("caller", ["provisioning", "ma_admin", "merchant_admin"])
def test_an_object_outside_the_scope_answers_exactly_like_one_that_does_not_exist(world: World, callers, caller):
    client = callers[caller]
    for resource, pk in outside_objects(world, caller):
        outside = client.get(f"{API}/{resource}/{pk}/")
        absent = client.get(f"{API}/{resource}/987654321/")
        assert (outside.status_code, outside.json()) == (absent.status_code, absent.json())


def test_sessions_and_subscriptions_outside_the_scope_answer_404(world: World, callers):
    connector_services.subscription_create(tenant=world.far_tenant, actor=SYSTEM)
    far_subscription = world.far_tenant.subscriptions.get()
    far_session = make_session(world.far_device)
    other_merchants_session = make_session(world.other_device)
    before = db_snapshot()
    cases = {
        "provisioning": [("sessions", far_session.pk), ("subscriptions", far_subscription.pk)],
        "ma_admin": [("sessions", far_session.pk), ("subscriptions", far_subscription.pk)],
        "merchant_admin": [("sessions", far_session.pk), ("sessions", other_merchants_session.pk)],
        "merchant_viewer": [("sessions", other_merchants_session.pk)],
    }
    for caller, objects in cases.items():
        for resource, pk in objects:
            for method in ("get", "delete"):
                response = getattr(callers[caller], method)(f"{API}/{resource}/{pk}/")
                assert response.status_code == 404, (caller, method, resource)
            listed = callers[caller].get(f"{API}/{resource}/").json()["results"]
            assert pk not in {item["id"] for item in listed}
    assert db_snapshot() == before


def _without_ids(message: str) -> str:
    return re.sub(r"\d+", "N", message)


@pytest.mark.parametrize("caller", ["provisioning", "ma_admin", "merchant_admin"])
def test_an_id_outside_the_scope_in_a_body_is_the_same_400_as_an_unknown_id(world: World, callers, caller):
    client = callers[caller]
    before = db_snapshot()
    outside = dict(outside_objects(world, caller))
    own = {"merchant_aggregator": world.ma.pk, "merchant": world.merchant.pk, "store": world.store.pk}
    bodies = [
        ("merchants", "merchant_aggregator", {"name": "M"}),
        ("stores", "merchant", {"name": "S"}),
        ("pos", "store", {"name": "P"}),
        ("applications", "merchant_aggregator", {"name": "A"}),
        ("devices", "merchant", {"store": own["store"], "make": "Ingenico", "model": "Lane3000", "serial": "X1"}),
        ("devices", "store", {"merchant": own["merchant"], "make": "Ingenico", "model": "Lane3000", "serial": "X2"}),
    ]
    if caller == "merchant_admin":  # may create neither merchants nor applications (403)
        bodies = [body for body in bodies if body[0] not in ("merchants", "applications")]
    resource_of = {"merchant_aggregator": "merchant-aggregators", "merchant": "merchants", "store": "stores"}
    for resource, field, rest in bodies:
        foreign = outside[resource_of[field]]
        got = client.post(f"{API}/{resource}/", {**rest, field: foreign}, format="json")
        unknown = client.post(f"{API}/{resource}/", {**rest, field: 987654321}, format="json")
        assert got.status_code == 400, (resource, field, got.content)
        assert field in got.json()
        assert "does not exist" in got.json()[field][0]
        assert _without_ids(got.json()[field][0]) == _without_ids(unknown.json()[field][0])
    assert db_snapshot() == before


def test_a_tenant_outside_the_scope_in_a_body_is_the_same_400_as_an_unknown_tenant(world: World, provisioning):
    before = db_snapshot()
    for resource, body in (("merchant-aggregators", {"name": "MA"}), ("subscriptions", {"service": "cloud-connector"})):
        globex = provisioning.post(f"{API}/{resource}/", {**body, "tenant": "globex"}, format="json")
        unknown = provisioning.post(f"{API}/{resource}/", {**body, "tenant": "gamma"}, format="json")
        assert globex.status_code == unknown.status_code == 400
        assert globex.json()["tenant"] == [m.replace("gamma", "globex") for m in unknown.json()["tenant"]]
    assert db_snapshot() == before


def test_a_device_cannot_be_moved_into_a_store_outside_the_scope(world: World, merchant_admin):
    before = db_snapshot()
    for store in (world.other_store, world.far_store):
        response = merchant_admin.patch(f"{API}/devices/{world.device.pk}/", {"store": store.pk}, format="json")
        assert response.status_code == 400
        assert "does not exist" in response.json()["store"][0]
    assert db_snapshot() == before


VIEWER_WRITES = [
    ("post", "/merchants/", lambda w: {"merchant_aggregator": w.ma.pk, "name": "New"}),
    ("post", "/stores/", lambda w: {"merchant": w.merchant.pk, "name": "New"}),
    ("post", "/pos/", lambda w: {"store": w.store.pk, "name": "New"}),
    ("post", "/applications/", lambda w: {"merchant_aggregator": w.ma.pk, "name": "New"}),
    (
        "post",
        "/devices/",
        lambda w: {"merchant": w.merchant.pk, "store": w.store.pk, "make": "I", "model": "L", "serial": "9"},
    ),
    ("patch", "/stores/{store}/", lambda w: {"name": "Renamed"}),
    ("put", "/stores/{store}/", lambda w: {"merchant": w.merchant.pk, "name": "Renamed"}),
    ("delete", "/stores/{sibling_store}/", None),
    ("patch", "/pos/{pos}/", lambda w: {"name": "Renamed"}),
    ("post", "/pos/{pos}/rotate-secret/", None),
    ("delete", "/pos/{pos}/", None),
    ("patch", "/devices/{device}/", lambda w: {"enabled": False}),
    ("delete", "/devices/{device}/", None),
    ("post", "/devices/{device}/cloud-connector/", None),
    ("delete", "/devices/{device}/cloud-connector/", None),
    ("delete", "/sessions/{session}/", None),
]


@pytest.mark.parametrize("caller", ["ma_viewer", "merchant_viewer"])
def test_a_viewer_reads_in_scope_but_every_write_is_refused_with_403(world: World, callers, caller):
    client = callers[caller]
    session = make_session(world.device)
    ids = {
        "store": world.store.pk,
        "sibling_store": world.sibling_store.pk,
        "pos": world.pos.pk,
        "device": world.device.pk,
        "session": session.pk,
    }
    assert client.get(f"{API}/devices/{world.device.pk}/").status_code == 200
    before = db_snapshot()
    for method, path, body in VIEWER_WRITES:
        url = API + path.format(**ids)
        response = call(client, method, url, body(world) if body else None)
        assert response.status_code == 403, (caller, method, url, response.content)
        assert "read-only" in response.json()["detail"]
    assert db_snapshot() == before


def test_an_ma_viewer_may_not_write_its_merchants_or_applications(world: World, ma_viewer):
    before = db_snapshot()
    for method, url in (
        ("patch", f"{API}/merchants/{world.merchant.pk}/"),
        ("post", f"{API}/merchants/{world.merchant.pk}/cloud-connector/"),
        ("patch", f"{API}/applications/{world.app.pk}/"),
        ("post", f"{API}/applications/{world.app.pk}/rotate-secret/"),
    ):
        response = call(ma_viewer, method, url, {"name": "x"} if method == "patch" else None)
        assert response.status_code == 403
    assert db_snapshot() == before


ABOVE_LEVEL = {
    "merchant_admin": [
        ("post", "/merchants/", lambda w: {"merchant_aggregator": w.ma.pk, "name": "Sibling"}),
        ("patch", "/merchants/{merchant}/", lambda w: {"name": "Renamed"}),
        ("delete", "/merchants/{merchant}/", None),
        ("post", "/merchants/{merchant}/cloud-connector/", None),
        ("delete", "/merchants/{merchant}/cloud-connector/", None),
        ("patch", "/merchant-aggregators/{ma}/", lambda w: {"name": "Renamed"}),
        ("post", "/merchant-aggregators/{ma}/cloud-connector/", None),
        ("post", "/merchant-aggregators/", lambda w: {"name": "New MA"}),
        ("post", "/subscriptions/", lambda w: {"service": "cloud-connector"}),
    ],
    "ma_admin": [
        ("post", "/merchant-aggregators/", lambda w: {"name": "New MA"}),
        ("patch", "/merchant-aggregators/{ma}/", lambda w: {"name": "Renamed"}),
        ("delete", "/merchant-aggregators/{ma}/", None),
        ("post", "/subscriptions/", lambda w: {"service": "cloud-connector"}),
    ],
}


@pytest.mark.parametrize("caller", ["ma_admin", "merchant_admin"])
def test_a_write_on_what_is_managed_above_the_caller_is_refused_with_403(world: World, callers, caller):
    client = callers[caller]
    ids = {"merchant": world.merchant.pk, "ma": world.ma.pk}
    before = db_snapshot()
    for method, path, body in ABOVE_LEVEL[caller]:
        url = API + path.format(**ids)
        assert client.get(url).status_code in (200, 405)  # visible...
        response = call(client, method, url, body(world) if body else None)
        assert response.status_code == 403, (caller, method, url, response.content)  # ...but not theirs
        assert set(response.json()) == {"detail"}
    assert db_snapshot() == before


def test_staff_reach_every_tenant(world: World, staff):
    for resource, pk in (("merchants", world.far_merchant.pk), ("devices", world.far_device.pk)):
        assert staff.get(f"{API}/{resource}/{pk}/").status_code == 200
    response = staff.patch(f"{API}/stores/{world.far_store.pk}/", {"name": "Renamed by staff"}, format="json")
    assert response.status_code == 200
    world.far_store.refresh_from_db()
    assert world.far_store.name == "Renamed by staff"


def test_a_merchant_admin_manages_its_own_stores_pos_and_devices(world: World, merchant_admin):
    store = merchant_admin.post(f"{API}/stores/", {"merchant": world.merchant.pk, "name": "New"}, format="json")
    assert store.status_code == 201
    pos = merchant_admin.post(f"{API}/pos/", {"store": store.json()["id"], "name": "Till"}, format="json")
    assert pos.status_code == 201
    activated = merchant_admin.post(f"{API}/devices/{world.device.pk}/cloud-connector/")
    assert activated.status_code == 201
