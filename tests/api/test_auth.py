"""Who may call the API: tokens with the provisioning scope and portal sessions (with CSRF)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.middleware.csrf import _get_new_csrf_string, _mask_cipher_secret
from rest_framework.test import APIClient

from accounts.models import AuditEntry, Merchant
from tests.api.conftest import API, bearer_client, session_client
from tests.factories import make_access_token, make_user
from tests.world import World

pytestmark = pytest.mark.django_db


def test_it_refuses_a_request_without_credentials(world: World):
    response = APIClient().get(f"{API}/merchants/")
    assert response.status_code == 401
    assert response.json() == {"detail": "Authentication credentials were not provided."}
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_it_refuses_an_unknown_token(world: World):
    response = bearer_client("not-a-token").get(f"{API}/merchants/")
    assert response.status_code == 401
    assert "invalid" in response.json()["detail"]


def test_it_refuses_an_expired_token(world: World):
    token = make_access_token(world.provisioning, expires_in=-1)
    assert bearer_client(token).get(f"{API}/merchants/").status_code == 401


def test_it_refuses_a_malformed_authorization_header(world: World):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer two words")
    response = client.get(f"{API}/merchants/")
    assert response.status_code == 401
    assert "detail" in response.json()


def test_it_refuses_a_pos_token_without_the_provisioning_scope(world: World, pos_token_client):
    response = pos_token_client.get(f"{API}/devices/")
    assert response.status_code == 403
    assert "provisioning" in response.json()["detail"]
    response = pos_token_client.post(f"{API}/stores/", {"merchant": world.merchant.pk, "name": "x"}, format="json")
    assert response.status_code == 403
    assert not world.merchant.stores.filter(name="x").exists()


def test_a_provisioning_token_acts_for_its_whole_tenant(world: World, provisioning):
    response = provisioning.get(f"{API}/merchants/")
    assert response.status_code == 200
    names = {m["name"] for m in response.json()["results"]}
    assert names == {"Corner Shop", "Rival Shop", "Cash and Carry"}


def test_a_token_in_a_query_string_is_not_accepted(world: World):
    response = APIClient().get(f"{API}/merchants/", {"access_token": world.provisioning_token})
    assert response.status_code == 401


def test_a_portal_session_works_on_the_same_endpoints(world: World, merchant_admin):
    response = merchant_admin.get(f"{API}/stores/")
    assert response.status_code == 200
    assert {s["name"] for s in response.json()["results"]} == {"High Street", "Mill Lane"}


def test_a_session_post_without_the_csrf_token_is_refused(world: World):
    user = make_user(username="csrf-user", merchant=world.merchant)
    client = session_client(user, enforce_csrf=True)
    response = client.post(f"{API}/stores/", {"merchant": world.merchant.pk, "name": "No CSRF"}, format="json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert not world.merchant.stores.filter(name="No CSRF").exists()


def test_a_session_post_with_the_csrf_token_is_accepted(world: World):
    user = make_user(username="csrf-user", merchant=world.merchant)
    client = session_client(user, enforce_csrf=True)
    secret = _get_new_csrf_string()
    client.cookies["csrftoken"] = secret
    response = client.post(
        f"{API}/stores/",
        {"merchant": world.merchant.pk, "name": "With CSRF"},
        format="json",
        HTTP_X_CSRFTOKEN=_mask_cipher_secret(secret),
    )
    assert response.status_code == 201, response.json()
    entry = AuditEntry.objects.get(action="store.create", object_id=str(response.json()["id"]))
    assert entry.actor == "user:csrf-user"
    assert entry.actor_user_id == user.pk


def test_a_user_without_a_membership_sees_nothing_and_changes_nothing(world: World):
    user = get_user_model().objects.create_user(username="nobody", password="x" * 20)
    client = session_client(user)
    for resource in ("merchant-aggregators", "merchants", "stores", "pos", "applications", "devices", "sessions"):
        response = client.get(f"{API}/{resource}/")
        assert response.status_code == 200
        assert response.json()["count"] == 0
    response = client.post(f"{API}/merchants/", {"merchant_aggregator": world.ma.pk, "name": "x"}, format="json")
    assert response.status_code == 403
    assert not Merchant.objects.filter(name="x").exists()


def test_an_inactive_user_is_not_authenticated(world: World):
    user = make_user(username="gone", merchant=world.merchant)
    client = session_client(user)
    user.is_active = False
    user.save()
    assert client.get(f"{API}/stores/").status_code in (401, 403)
