"""accounts.credentials with tokens from the token endpoint, stored by checksum only."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.test import Client
from django.utils import timezone
from oauth2_provider.models import AccessToken

from accounts import services
from accounts.credentials import SCOPE_CLOUD_CONNECTOR, authenticate_bearer, bearer_from_header, token_checksum
from accounts.scope import SYSTEM, Level
from tests.factories import make_cloud_application, make_pos

pytestmark = pytest.mark.django_db


def issue(credential, domain: str) -> str:
    """A token from the real endpoint, with the form-field client authentication."""
    response = Client().post(
        f"/oauth2/v1/{domain}/token",
        urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": credential.application.client_id,
                "client_secret": credential.client_secret,
            }
        ),
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200, response.content
    return response.json()["access_token"]


def pos_token() -> tuple[object, str]:
    pos = make_pos()
    return pos, issue(pos, pos.application.tenant.domain)


def test_an_issued_token_authenticates_as_its_pos():
    pos, raw = pos_token()
    bearer = authenticate_bearer(raw)
    assert bearer.client_id == pos.application.client_id
    assert bearer.application_id == pos.application_id
    assert bearer.scopes == {SCOPE_CLOUD_CONNECTOR}
    assert bearer.token_checksum == hashlib.sha256(raw.encode()).hexdigest()
    assert bearer.principal.level == Level.STORE
    assert bearer.principal.store_id == pos.store_id


def test_the_raw_token_is_not_stored():
    _, raw = pos_token()
    stored = AccessToken.objects.get()
    assert stored.token == ""
    assert stored.token_checksum == token_checksum(raw)
    assert raw not in str(AccessToken.objects.values().get())


def test_an_empty_or_unknown_token_does_not_authenticate():
    pos_token()  # a stored token with a blank value column must not match an empty token
    assert authenticate_bearer("") is None
    assert authenticate_bearer("no-such-token") is None


def test_an_expired_token_does_not_authenticate():
    _, raw = pos_token()
    AccessToken.objects.update(expires=timezone.now() - timedelta(seconds=1))
    assert authenticate_bearer(raw) is None


def test_a_token_of_a_deleted_pos_does_not_authenticate():
    pos, raw = pos_token()
    services.pos_delete(pos=pos, actor=SYSTEM)
    assert authenticate_bearer(raw) is None


def test_a_token_from_before_a_rotation_does_not_authenticate():
    pos, raw = pos_token()
    rotated = services.credential_rotate(obj=pos, actor=SYSTEM)
    assert authenticate_bearer(raw) is None
    pos.client_secret = rotated.client_secret
    assert authenticate_bearer(issue(pos, pos.application.tenant.domain)) is not None


def test_a_token_of_a_cloud_application_that_lost_its_role_does_not_authenticate():
    app = make_cloud_application()
    raw = issue(app, app.merchant_aggregator.tenant.domain)
    assert authenticate_bearer(raw).principal.merchant_aggregator_id == app.merchant_aggregator_id
    services.cloud_application_update(app=app, actor=SYSTEM, roles=[])
    assert authenticate_bearer(raw) is None


@pytest.mark.parametrize(
    "header, token",
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        (b"Bearer abc", "abc"),
        ("  Bearer   abc  ", "abc"),
        ("Bearer", None),
        ("Bearer a b", None),
        ("Basic abc", None),
        ("", None),
        (None, None),
    ],
)
def test_the_bearer_header_is_read_strictly(header, token):
    assert bearer_from_header(header) == token


def test_a_secret_sent_with_an_unknown_client_id_is_hashed_like_a_client_secret(monkeypatch):
    # Not with the password hasher (a million rounds): an unknown client id would cost a
    # thousand times a wrong secret, telling which ids exist and burning CPU on demand.
    from oauth2_provider.settings import oauth2_settings

    from accounts import credentials

    monkeypatch.setattr(credentials, "_unknown_client_hash", [])
    credentials.unknown_client_secret_check("a guess")
    assert credentials._unknown_client_hash[0].startswith(f"{oauth2_settings.CLIENT_SECRET_HASHER}$")
