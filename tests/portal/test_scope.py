"""Every portal view answers according to the user's scope: anonymous people are sent to
sign in, outsiders get 404 for objects that are not theirs, viewers never write."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.urls import reverse

from tests.portal.conftest import client_for
from tests.world import World

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Route:
    name: str
    args: Callable[[World], list]
    write: bool  # a page whose GET is a form or confirmation and whose POST changes things

    def url(self, world: World) -> str:
        return reverse(f"portal:{self.name}", args=self.args(world))

    def __str__(self) -> str:
        return self.name


# Objects of the merchant "Corner Shop": its merchant users and its MA's users reach them.
MERCHANT_OBJECT_ROUTES = [
    Route("store_detail", lambda w: [w.store.pk], write=False),
    Route("store_rename", lambda w: [w.store.pk], write=True),
    Route("store_delete", lambda w: [w.store.pk], write=True),
    Route("pos_create", lambda w: [w.store.pk], write=True),
    Route("pos_detail", lambda w: [w.pos.pk], write=False),
    Route("pos_rename", lambda w: [w.pos.pk], write=True),
    Route("pos_rotate", lambda w: [w.pos.pk], write=True),
    Route("pos_delete", lambda w: [w.pos.pk], write=True),
    Route("device_detail", lambda w: [w.device.pk], write=False),
    Route("device_state", lambda w: [w.device.pk], write=False),
    Route("device_switch", lambda w: [w.device.pk, "activate"], write=True),
    Route("device_session_end", lambda w: [w.device.pk], write=True),
]

# Objects of the merchant aggregator "Acme Aggregation": only its MA users reach them.
MA_OBJECT_ROUTES = [
    Route("application_detail", lambda w: [w.app.pk], write=False),
    Route("application_rotate", lambda w: [w.app.pk], write=True),
    Route("application_delete", lambda w: [w.app.pk], write=True),
    Route("merchant_detail", lambda w: [w.merchant.pk], write=False),
    Route("aggregator_switch", lambda w: [w.ma.pk, "activate"], write=True),
    Route("merchant_switch", lambda w: [w.merchant.pk, "activate"], write=True),
]

LIST_ROUTES = [
    Route("home", lambda w: [], write=False),
    Route("store_list", lambda w: [], write=False),
    Route("store_create", lambda w: [], write=True),
    Route("device_list", lambda w: [], write=False),
    Route("device_rows", lambda w: [], write=False),
    Route("cloud_connector", lambda w: [], write=False),
]
MA_LIST_ROUTES = [
    Route("merchant_list", lambda w: [], write=False),
    Route("application_list", lambda w: [], write=False),
    Route("application_create", lambda w: [], write=True),
]

ALL_ROUTES = MERCHANT_OBJECT_ROUTES + MA_OBJECT_ROUTES + LIST_ROUTES + MA_LIST_ROUTES


@pytest.mark.parametrize("route", ALL_ROUTES, ids=str)
def test_it_sends_anonymous_people_to_sign_in(world, route):
    url = route.url(world)
    for response in (client_for(None).get(url), client_for(None).post(url)):
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")


@pytest.mark.parametrize("route", MERCHANT_OBJECT_ROUTES + MA_OBJECT_ROUTES + LIST_ROUTES + MA_LIST_ROUTES, ids=str)
def test_it_shows_the_owner_every_page(world, route):
    owner = world.ma_admin
    response = client_for(owner).get(route.url(world))
    assert response.status_code == 200


@pytest.mark.parametrize("route", MERCHANT_OBJECT_ROUTES + LIST_ROUTES, ids=str)
def test_it_shows_the_merchant_user_the_merchant_pages(world, route):
    response = client_for(world.merchant_admin).get(route.url(world))
    assert response.status_code == 200


@pytest.mark.parametrize("route", MERCHANT_OBJECT_ROUTES, ids=str)
@pytest.mark.parametrize("outsider", ["other_merchant_admin", "far_ma_admin"])
def test_it_answers_not_found_to_outsiders_of_a_merchant_object(world, route, outsider):
    client = client_for(getattr(world, outsider))
    url = route.url(world)
    assert client.get(url).status_code == 404
    assert client.post(url).status_code == 404


@pytest.mark.parametrize("route", MA_OBJECT_ROUTES + MA_LIST_ROUTES, ids=str)
def test_it_answers_not_found_to_merchant_users_on_aggregator_pages(world, route):
    # Aggregator switches are the exception: the merchant user sees its merchant and MA.
    client = client_for(world.merchant_admin)
    status = client.get(route.url(world)).status_code
    if route.name in {"aggregator_switch", "merchant_switch"}:
        assert status == 403
    else:
        assert status == 404


@pytest.mark.parametrize("route", MA_OBJECT_ROUTES, ids=str)
def test_it_answers_not_found_to_another_aggregators_users(world, route):
    client = client_for(world.far_ma_admin)
    url = route.url(world)
    assert client.get(url).status_code == 404
    assert client.post(url).status_code == 404


@pytest.mark.parametrize("route", [r for r in ALL_ROUTES if r.write], ids=str)
def test_it_refuses_every_write_to_a_viewer(world, route):
    viewer = world.ma_viewer
    client = client_for(viewer)
    url = route.url(world)
    assert client.get(url).status_code == 403
    assert client.post(url, {"name": "Changed"}).status_code == 403


@pytest.mark.parametrize("route", [r for r in MERCHANT_OBJECT_ROUTES + LIST_ROUTES if not r.write], ids=str)
def test_it_lets_a_viewer_look_without_forms(world, route):
    response = client_for(world.merchant_viewer).get(route.url(world))
    assert response.status_code == 200
    assert _only_logout_form(response.content)


def _only_logout_form(content: bytes) -> bool:
    """No form that writes: a full page has the sign-out form only, a fragment none."""
    forms = content.count(b'method="post"')
    return forms == 0 or (forms == 1 and b'action="/accounts/logout/"' in content)


def test_a_viewer_cannot_change_an_application_configuration(world):
    client = client_for(world.ma_viewer)
    url = reverse("portal:application_detail", args=[world.app.pk])
    page = client.get(url)
    assert _only_logout_form(page.content)
    response = client.post(url, {"name": "x", "services": ["retail-api"]})
    assert response.status_code == 403
    world.app.refresh_from_db()
    assert world.app.name == "Acme POS cloud" and world.app.missing_for_cloud_connector() == []


def test_it_never_lets_a_viewer_change_data(world):
    client = client_for(world.merchant_viewer)
    client.post(reverse("portal:store_rename", args=[world.store.pk]), {"name": "Renamed"})
    client.post(reverse("portal:pos_delete", args=[world.pos.pk]))
    client.post(reverse("portal:store_create"), {"name": "New"})
    world.store.refresh_from_db()
    assert world.store.name == "High Street"
    assert world.store.pos.count() == 1
    assert set(world.merchant.stores.all()) == {world.store, world.sibling_store}


def test_a_user_of_another_merchant_sees_none_of_the_first_merchants_objects_in_lists(world):
    client = client_for(world.other_merchant_admin)
    stores = client.get(reverse("portal:store_list")).content.decode()
    devices = client.get(reverse("portal:device_list")).content.decode()
    assert "Market Square" in stores and "High Street" not in stores
    assert world.other_device.tsn in devices and world.device.tsn not in devices


def test_an_aggregator_user_sees_every_merchants_objects_but_not_another_aggregators(world):
    client = client_for(world.ma_admin)
    devices = client.get(reverse("portal:device_list")).content.decode()
    assert world.device.tsn in devices and world.other_device.tsn in devices
    assert world.far_device.tsn not in devices
    apps = client.get(reverse("portal:application_list")).content.decode()
    assert "Acme POS cloud" in apps and "Globex app" not in apps


def test_staff_use_the_portal_with_platform_scope_and_are_pointed_to_the_admin(world):
    client = client_for(world.staff)
    home = client.get(reverse("portal:home")).content.decode()
    assert reverse("admin:index") in home
    devices = client.get(reverse("portal:device_list")).content.decode()
    assert world.device.tsn in devices and world.far_device.tsn in devices


def test_a_user_without_a_place_sees_nothing_and_is_told_why(db):
    from tests.factories import make_user as plain_user

    user = plain_user(username="nobody", merchant=None, merchant_aggregator=None, is_staff=True)
    user.is_staff = False
    user.save()
    client = client_for(user)
    home = client.get(reverse("portal:home")).content.decode()
    assert "not attached" in home
    assert client.get(reverse("portal:cloud_connector")).status_code == 404


def test_a_polling_fragment_whose_session_expired_reloads_the_page_at_sign_in(world):
    response = client_for(None).get(
        reverse("portal:device_rows"),
        headers={"HX-Request": "true", "HX-Current-URL": "http://testserver/devices/?store=1"},
    )
    assert response.status_code == 204
    assert response["HX-Redirect"] == "/accounts/login/?next=/devices/%3Fstore%3D1"
