"""Client secrets: shown once (create and rotate), never again; rotation and deletion revoke."""

from __future__ import annotations

import pytest
from django.contrib.auth.hashers import check_password
from oauth2_provider.models import AccessToken

from accounts.models import Application, AuditEntry
from tests.api.conftest import API
from tests.factories import make_access_token
from tests.world import World

pytestmark = pytest.mark.django_db


def secret_matches(client_id: str, secret: str) -> bool:
    return check_password(secret, Application.objects.get(client_id=client_id).client_secret)


@pytest.mark.parametrize(
    ("resource", "body"),
    [
        ("pos", lambda w: {"store": w.store.pk, "name": "Till"}),
        ("applications", lambda w: {"merchant_aggregator": w.ma.pk, "name": "App"}),
    ],
)
def test_the_secret_is_shown_on_create_and_never_again(world: World, provisioning, resource, body):
    created = provisioning.post(f"{API}/{resource}/", body(world), format="json").json()
    secret = created["client_secret"]
    assert secret and secret_matches(created["client_id"], secret)
    # Stored hashed, not in clear.
    assert Application.objects.get(client_id=created["client_id"]).client_secret != secret

    shown = provisioning.get(f"{API}/{resource}/{created['id']}/").json()
    assert shown["client_id"] == created["client_id"]
    assert shown["client_secret"] is None
    listed = provisioning.get(f"{API}/{resource}/").json()["results"]
    assert all(item["client_secret"] is None for item in listed)
    changed = provisioning.patch(f"{API}/{resource}/{created['id']}/", {"name": "Renamed"}, format="json").json()
    assert changed["client_secret"] is None
    assert secret not in str(AuditEntry.objects.values_list("data", flat=True))


@pytest.mark.parametrize("resource", ["pos", "applications"])
def test_rotating_issues_a_new_secret_and_revokes_the_old_one_and_its_tokens(world: World, provisioning, resource):
    credential = world.pos if resource == "pos" else world.app
    old_secret = credential.client_secret
    make_access_token(credential)
    assert AccessToken.objects.filter(application=credential.application).exists()

    response = provisioning.post(f"{API}/{resource}/{credential.pk}/rotate-secret/")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == credential.pk
    assert body["client_id"] == credential.application.client_id
    new_secret = body["client_secret"]
    assert new_secret and new_secret != old_secret
    assert secret_matches(body["client_id"], new_secret)
    assert not secret_matches(body["client_id"], old_secret)
    assert not AccessToken.objects.filter(application=credential.application).exists()
    model_name = "pos" if resource == "pos" else "cloudapplication"
    assert AuditEntry.objects.filter(action=f"{model_name}.rotate_secret", object_id=str(credential.pk)).exists()

    assert provisioning.get(f"{API}/{resource}/{credential.pk}/").json()["client_secret"] is None


def test_deleting_a_pos_revokes_its_credential_and_tokens(world: World, provisioning):
    application = world.pos.application
    make_access_token(world.pos)
    assert provisioning.delete(f"{API}/pos/{world.pos.pk}/").status_code == 204
    assert not Application.objects.filter(pk=application.pk).exists()
    assert not AccessToken.objects.filter(application_id=application.pk).exists()


def test_a_rotated_provisioning_token_no_longer_works_once_revoked(world: World, provisioning):
    from accounts.services import credential_revoke_tokens

    assert provisioning.get(f"{API}/stores/").status_code == 200
    credential_revoke_tokens(application=world.provisioning.application)
    assert provisioning.get(f"{API}/stores/").status_code == 401


def test_an_application_that_loses_its_role_loses_its_tokens(world: World, provisioning):
    make_access_token(world.app)
    response = provisioning.patch(f"{API}/applications/{world.app.pk}/", {"roles": []}, format="json")
    assert response.status_code == 200
    assert response.json()["cloud_connector_ready"] is False
    assert not AccessToken.objects.filter(application=world.app.application).exists()
