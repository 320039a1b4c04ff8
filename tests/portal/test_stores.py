"""Stores and POS: the seed's "Store POS Credentials" steps, and their validation."""

from __future__ import annotations

import pytest
from django.urls import reverse
from oauth2_provider.models import AccessToken

from accounts.models import POS, AuditEntry, Store
from tests.portal.conftest import client_for

pytestmark = pytest.mark.django_db

LONG = "x" * 101


def test_a_merchant_user_creates_a_store(world):
    client = client_for(world.merchant_admin)
    response = client.post(reverse("portal:store_create"), {"name": "  Station Road  "})
    store = Store.objects.get(name="Station Road")
    assert store.merchant == world.merchant
    assert response["Location"] == reverse("portal:store_detail", args=[store.pk])
    assert AuditEntry.objects.filter(action="store.create", object_id=str(store.pk), actor="user:alice").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "This field is required."),
        ("   ", "This field is required."),
        (LONG, "Ensure this value has at most 100 characters (it has 101)."),
        ("high street", "Corner Shop already has a store called “high street”. Choose another name."),
    ],
)
def test_the_store_form_shows_its_errors_inline(world, name, message):
    client = client_for(world.merchant_admin)
    response = client.post(reverse("portal:store_create"), {"name": name})
    assert response.status_code == 200
    assert message in response.content.decode()
    assert set(world.merchant.stores.all()) == {world.store, world.sibling_store}


def test_a_store_name_may_repeat_in_another_merchant(world):
    client = client_for(world.other_merchant_admin)
    client.post(reverse("portal:store_create"), {"name": "High Street"})
    assert world.other_merchant.stores.filter(name="High Street").exists()


def test_an_aggregator_user_chooses_the_merchant_and_only_among_its_own(world):
    client = client_for(world.ma_admin)
    form = client.get(reverse("portal:store_create")).content.decode()
    assert "Rival Shop" in form and "Globex Shop" not in form
    far_merchant = world.far_store.merchant
    response = client.post(reverse("portal:store_create"), {"name": "Sneaky", "merchant": far_merchant.pk})
    assert "Select a valid choice" in response.content.decode()
    assert not Store.objects.filter(name="Sneaky").exists()
    response = client.post(reverse("portal:store_create"), {"name": "Depot", "merchant": world.other_merchant.pk})
    assert Store.objects.get(name="Depot").merchant == world.other_merchant
    response = client.post(reverse("portal:store_create"), {"name": "No merchant"})
    assert "This field is required." in response.content.decode()


def test_a_store_is_renamed(world):
    client = client_for(world.merchant_admin)
    client.post(reverse("portal:store_rename", args=[world.store.pk]), {"name": "Main Street"})
    world.store.refresh_from_db()
    assert world.store.name == "Main Street"


@pytest.mark.parametrize(("name", "message"), [("", "This field is required."), (LONG, "at most 100 characters")])
def test_the_rename_form_shows_its_errors(world, name, message):
    client = client_for(world.merchant_admin)
    response = client.post(reverse("portal:store_rename", args=[world.store.pk]), {"name": name})
    assert message in response.content.decode()


def test_a_store_cannot_take_the_name_of_a_sibling(world):
    from tests.factories import StoreFactory

    StoreFactory(merchant=world.merchant, name="Harbour")
    client = client_for(world.merchant_admin)
    response = client.post(reverse("portal:store_rename", args=[world.store.pk]), {"name": "HARBOUR"})
    assert "There is already a store called “HARBOUR” here" in response.content.decode()
    response = client.post(reverse("portal:store_rename", args=[world.store.pk]), {"name": "High Street"})
    assert response.status_code == 302  # its own name again is fine


def test_a_store_without_devices_is_deleted_with_its_pos_and_their_tokens(world):
    client = client_for(world.merchant_admin)
    world.device.delete()
    application = world.pos.application
    assert AccessToken.objects.filter(application=application).exists()  # the world's pos_token
    page = client.get(reverse("portal:store_delete", args=[world.store.pk])).content.decode()
    assert "1 POS credential will be deleted" in page
    response = client.post(reverse("portal:store_delete", args=[world.store.pk]))
    assert response["Location"] == reverse("portal:store_list")
    assert not Store.objects.filter(pk=world.store.pk).exists()
    assert not POS.objects.filter(pk=world.pos.pk).exists()
    assert not AccessToken.objects.filter(application_id=application.pk).exists()


def test_a_store_with_devices_cannot_be_deleted_and_says_why(world):
    client = client_for(world.merchant_admin)
    page = client.get(reverse("portal:store_delete", args=[world.store.pk])).content.decode()
    assert "A store with devices cannot be deleted" in page
    response = client.post(reverse("portal:store_delete", args=[world.store.pk]))
    assert response.status_code == 409
    assert "The store still has devices; move or delete them first." in response.content.decode()
    assert Store.objects.filter(pk=world.store.pk).exists()


def test_creating_a_pos_shows_its_client_id_and_key_once(world):
    client = client_for(world.merchant_admin)
    response = client.post(reverse("portal:pos_create", args=[world.store.pk]), {"name": "Till 2"})
    body = response.content.decode()
    pos = POS.objects.get(name="Till 2")
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    assert pos.application.client_id in body
    assert "it will not be shown again" in body
    secret = _shown_secret(body)
    assert pos.application.client_secret != secret  # stored hashed
    from django.contrib.auth.hashers import check_password

    assert check_password(secret, pos.application.client_secret)
    assert secret not in response.get("Location", "")
    assert secret not in str(dict(client.session))
    # The block for the terminal carries the real key, escaped as the configuration file wants it.
    client_id = pos.application.client_id
    expected = f'custom_registration_data: "{{\\"client_id\\":\\"{client_id}\\",\\"client_secret\\":\\"{secret}\\"}}"'
    assert expected in _unescape(body)
    # Never again: the POS page has the client id but not the key.
    detail = client.get(reverse("portal:pos_detail", args=[pos.pk])).content.decode()
    assert pos.application.client_id in detail and secret not in detail
    assert "&lt;client secret shown when the POS was created&gt;" in detail


def _shown_secret(body: str) -> str:
    import re

    return re.search(r'<code id="client-secret">([^<]+)</code>', body).group(1)


def _unescape(body: str) -> str:
    import html

    return html.unescape(body)


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "This field is required."), (LONG, "at most 100 characters"), ("till 1", "There is already a POS called")],
)
def test_the_pos_form_shows_its_errors_inline(world, name, message):
    client = client_for(world.merchant_admin)
    response = client.post(reverse("portal:pos_create", args=[world.store.pk]), {"name": name})
    assert message in response.content.decode()
    assert world.store.pos.count() == 1


def test_rotating_a_pos_key_asks_first_then_shows_the_new_key_once(world):
    client = client_for(world.merchant_admin)
    url = reverse("portal:pos_rotate", args=[world.pos.pk])
    confirm = client.get(url).content.decode()
    assert "The current key stops working at once" in confirm
    old_hash = world.pos.application.client_secret
    response = client.post(url)
    body = response.content.decode()
    world.pos.application.refresh_from_db()
    assert world.pos.application.client_secret != old_hash
    secret = _shown_secret(body)
    from django.contrib.auth.hashers import check_password

    assert check_password(secret, world.pos.application.client_secret)
    assert not check_password(world.pos.client_secret, world.pos.application.client_secret)
    assert secret in _unescape(body).split("custom_registration_data:")[1]


def test_deleting_a_pos_asks_first_and_revokes_its_tokens(world):
    client = client_for(world.merchant_admin)
    application = world.pos.application
    assert AccessToken.objects.filter(application=application).exists()  # the world's pos_token
    url = reverse("portal:pos_delete", args=[world.pos.pk])
    assert "every token issued to it is revoked" in client.get(url).content.decode()
    response = client.post(url)
    assert response["Location"] == reverse("portal:store_detail", args=[world.store.pk])
    assert not POS.objects.filter(pk=world.pos.pk).exists()
    assert not AccessToken.objects.filter(application_id=application.pk).exists()


def test_a_pos_is_renamed_and_names_are_checked(world):
    client = client_for(world.merchant_admin)
    url = reverse("portal:pos_rename", args=[world.pos.pk])
    assert "This field is required." in client.post(url, {"name": ""}).content.decode()
    client.post(url, {"name": "Front till"})
    world.pos.refresh_from_db()
    assert world.pos.name == "Front till"


def test_empty_states_say_what_to_do_next(world):
    client = client_for(world.other_merchant_admin)
    world.other_pos.delete()
    page = client.get(reverse("portal:store_detail", args=[world.other_store.pk])).content.decode()
    assert "No POS in this store yet." in page and "Create a POS" in page
    world.other_device.delete()
    page = client.get(reverse("portal:store_detail", args=[world.other_store.pk])).content.decode()
    assert "No devices in this store." in page
