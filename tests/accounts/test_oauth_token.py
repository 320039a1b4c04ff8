"""`POST /oauth2/v1/{domain}/token` (protocol.md §1), against a real server with a real
OAuth2 client library, and plain `requests` where the exact answer matters."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.core.management import call_command
from django.test import Client, override_settings
from django.utils import timezone
from oauth2_provider.models import AccessToken
from oauthlib.oauth2 import (
    BackendApplicationClient,
    InvalidClientError,
    InvalidScopeError,
    LegacyApplicationClient,
    UnsupportedGrantTypeError,
    WebApplicationClient,
)
from requests_oauthlib import OAuth2Session

from accounts import services
from accounts.credentials import SCOPE_CLOUD_CONNECTOR, SCOPE_PROVISIONING, authenticate_bearer
from accounts.scope import SYSTEM, Level
from tests.factories import (
    MerchantAggregatorFactory,
    StoreFactory,
    TenantFactory,
    make_cloud_application,
    make_pos,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def plain_http_allowed(monkeypatch):
    # The live server speaks plain HTTP on loopback; oauthlib refuses that by default.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")


def token_url(live, domain: str) -> str:
    return f"{live.http_url}/oauth2/v1/{domain}/token"


def fetch_token(live, domain: str, client_id: str, secret: str, *, basic: bool = True, scope=None) -> dict:
    """A token through requests-oauthlib: HTTP Basic, or the form fields when not `basic`."""
    # The client sends the scope, the session checks that the answer grants exactly it.
    session = OAuth2Session(client=BackendApplicationClient(client_id=client_id, scope=scope), scope=scope)
    return session.fetch_token(
        token_url=token_url(live, domain),
        client_id=client_id,
        client_secret=secret,
        include_client_id=not basic,
        timeout=30,
    )


def post_token(live, domain: str, data=None, *, auth=None, **kwargs) -> requests.Response:
    return requests.post(token_url(live, domain), data=data, auth=auth, timeout=30, **kwargs)


def domain_of(pos) -> str:
    return pos.store.merchant.merchant_aggregator.tenant.domain


def assert_oauth_error(response: requests.Response, status: int, error: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["error"] == error
    assert body["error_description"]
    return body


# --- success ---------------------------------------------------------------------------------


def test_a_pos_gets_a_cloud_connector_token_with_http_basic(live):
    pos = make_pos()
    token = fetch_token(live, domain_of(pos), pos.application.client_id, pos.client_secret)

    assert token["token_type"] == "Bearer"
    assert token["scope"] == [SCOPE_CLOUD_CONNECTOR]
    assert token["expires_in"] == settings.OAUTH2_PROVIDER["ACCESS_TOKEN_EXPIRE_SECONDS"]
    bearer = authenticate_bearer(token["access_token"])
    assert bearer is not None
    assert bearer.client_id == pos.application.client_id
    assert bearer.scopes == {SCOPE_CLOUD_CONNECTOR}
    assert bearer.principal.level == Level.STORE
    assert bearer.principal.store_id == pos.store_id


def test_a_pos_gets_a_token_with_the_client_id_and_client_secret_form_fields(live):
    pos = make_pos()
    token = fetch_token(live, domain_of(pos), pos.application.client_id, pos.client_secret, basic=False)

    assert token["scope"] == [SCOPE_CLOUD_CONNECTOR]
    assert authenticate_bearer(token["access_token"]).client_id == pos.application.client_id


def test_the_success_answer_is_exactly_rfc6749_section_5_1(live):
    pos = make_pos()
    response = post_token(
        live, domain_of(pos), {"grant_type": "client_credentials"}, auth=(pos.application.client_id, pos.client_secret)
    )

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer"
    assert body["scope"] == SCOPE_CLOUD_CONNECTOR
    assert isinstance(body["expires_in"], int)


def test_the_token_is_stored_by_checksum_only(live):
    pos = make_pos()
    raw = fetch_token(live, domain_of(pos), pos.application.client_id, pos.client_secret)["access_token"]

    stored = AccessToken.objects.get(application=pos.application)
    assert stored.token_checksum == hashlib.sha256(raw.encode()).hexdigest()
    assert stored.token == ""
    assert not AccessToken.objects.filter(token=raw).exists()


def test_asking_for_the_scope_the_credential_has_succeeds(live):
    pos = make_pos()
    token = fetch_token(
        live, domain_of(pos), pos.application.client_id, pos.client_secret, scope=[SCOPE_CLOUD_CONNECTOR]
    )
    assert token["scope"] == [SCOPE_CLOUD_CONNECTOR]


def test_a_provisioning_client_gets_the_provisioning_scope(live):
    tenant = TenantFactory()
    issued = services.provisioning_client_create(tenant=tenant, actor=SYSTEM)
    token = fetch_token(live, tenant.domain, issued.client_id, issued.client_secret)

    assert token["scope"] == [SCOPE_PROVISIONING]
    bearer = authenticate_bearer(token["access_token"])
    assert bearer.scopes == {SCOPE_PROVISIONING}
    assert bearer.principal.level == Level.TENANT
    assert bearer.principal.tenant_id == tenant.pk


def test_a_complete_cloud_api_application_gets_the_cloud_connector_scope(live):
    app = make_cloud_application()
    domain = app.merchant_aggregator.tenant.domain
    token = fetch_token(live, domain, app.application.client_id, app.client_secret)

    assert token["scope"] == [SCOPE_CLOUD_CONNECTOR]
    bearer = authenticate_bearer(token["access_token"])
    assert bearer.principal.level == Level.MERCHANT_AGGREGATOR
    assert bearer.principal.merchant_aggregator_id == app.merchant_aggregator_id


# --- who is refused ------------------------------------------------------------------------


def test_it_refuses_a_wrong_secret(live):
    pos = make_pos()
    with pytest.raises(InvalidClientError):
        fetch_token(live, domain_of(pos), pos.application.client_id, "not-the-secret")

    response = post_token(
        live, domain_of(pos), {"grant_type": "client_credentials"}, auth=(pos.application.client_id, "nope")
    )
    assert_oauth_error(response, 401, "invalid_client")
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert not AccessToken.objects.exists()


def test_it_refuses_a_wrong_secret_in_the_form_fields(live):
    pos = make_pos()
    with pytest.raises(InvalidClientError):
        fetch_token(live, domain_of(pos), pos.application.client_id, "not-the-secret", basic=False)

    response = post_token(
        live,
        domain_of(pos),
        {"grant_type": "client_credentials", "client_id": pos.application.client_id, "client_secret": "nope"},
    )
    assert_oauth_error(response, 401, "invalid_client")


def test_it_refuses_an_unknown_client(live):
    tenant = TenantFactory()
    with pytest.raises(InvalidClientError):
        fetch_token(live, tenant.domain, "no-such-client", "whatever")

    response = post_token(live, tenant.domain, {"grant_type": "client_credentials"}, auth=("no-such-client", "x"))
    body = assert_oauth_error(response, 401, "invalid_client")
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    # The same words as for a wrong secret: the answer does not tell whether the client exists.
    assert body["error_description"] == "Client authentication failed: unknown client or wrong secret."


def test_it_refuses_the_client_of_another_tenant(live):
    pos = make_pos()
    other_tenant = TenantFactory()
    with pytest.raises(InvalidClientError):
        fetch_token(live, other_tenant.domain, pos.application.client_id, pos.client_secret)

    response = post_token(
        live,
        other_tenant.domain,
        {"grant_type": "client_credentials"},
        auth=(pos.application.client_id, pos.client_secret),
    )
    body = assert_oauth_error(response, 401, "invalid_client")
    assert "not registered in this domain" in body["error_description"]
    assert not AccessToken.objects.exists()


def test_it_refuses_an_unknown_domain(live):
    pos = make_pos()
    for domain in ("no-such-tenant", "Not_A.Domain"):
        with pytest.raises(InvalidClientError):
            fetch_token(live, domain, pos.application.client_id, pos.client_secret)
        response = post_token(
            live, domain, {"grant_type": "client_credentials"}, auth=(pos.application.client_id, pos.client_secret)
        )
        assert_oauth_error(response, 401, "invalid_client")


def test_it_refuses_a_request_without_credentials(live):
    pos = make_pos()
    response = post_token(live, domain_of(pos), {"grant_type": "client_credentials"})
    assert_oauth_error(response, 401, "invalid_client")
    # Only a client_id, as a public client would: still a confidential-only server.
    response = post_token(
        live, domain_of(pos), {"grant_type": "client_credentials", "client_id": pos.application.client_id}
    )
    assert_oauth_error(response, 401, "invalid_client")


@pytest.mark.parametrize("grant_type", ["password", "authorization_code", "refresh_token", "implicit"])
def test_it_refuses_every_other_grant_type(live, grant_type):
    pos = make_pos()
    response = post_token(
        live,
        domain_of(pos),
        {"grant_type": grant_type, "username": "u", "password": "p", "code": "c", "refresh_token": "r"},
        auth=(pos.application.client_id, pos.client_secret),
    )
    assert_oauth_error(response, 400, "unsupported_grant_type")


def test_a_real_client_asking_for_the_password_grant_is_refused(live):
    pos = make_pos()
    session = OAuth2Session(client=LegacyApplicationClient(client_id=pos.application.client_id))
    with pytest.raises(UnsupportedGrantTypeError):
        session.fetch_token(
            token_url=token_url(live, domain_of(pos)),
            username="alice",
            password="secret",
            client_id=pos.application.client_id,
            client_secret=pos.client_secret,
            timeout=30,
        )


def test_a_real_client_asking_for_the_authorization_code_grant_is_refused(live):
    pos = make_pos()
    session = OAuth2Session(client=WebApplicationClient(client_id=pos.application.client_id))
    with pytest.raises(UnsupportedGrantTypeError):
        session.fetch_token(
            token_url=token_url(live, domain_of(pos)),
            code="some-code",
            client_secret=pos.client_secret,
            timeout=30,
        )


def test_it_refuses_a_scope_the_credential_lacks(live):
    pos = make_pos()
    with pytest.raises(InvalidScopeError):
        fetch_token(live, domain_of(pos), pos.application.client_id, pos.client_secret, scope=[SCOPE_PROVISIONING])
    with pytest.raises(InvalidScopeError):
        fetch_token(
            live,
            domain_of(pos),
            pos.application.client_id,
            pos.client_secret,
            scope=[SCOPE_CLOUD_CONNECTOR, SCOPE_PROVISIONING],
        )
    response = post_token(
        live,
        domain_of(pos),
        {"grant_type": "client_credentials", "scope": "admin"},
        auth=(pos.application.client_id, pos.client_secret),
    )
    body = assert_oauth_error(response, 400, "invalid_scope")
    assert SCOPE_CLOUD_CONNECTOR in body["error_description"]
    assert not AccessToken.objects.exists()


def test_a_provisioning_client_may_not_ask_for_cloud_connector(live):
    tenant = TenantFactory()
    issued = services.provisioning_client_create(tenant=tenant, actor=SYSTEM)
    with pytest.raises(InvalidScopeError):
        fetch_token(live, tenant.domain, issued.client_id, issued.client_secret, scope=[SCOPE_CLOUD_CONNECTOR])


# --- credentials that change -----------------------------------------------------------------


def test_a_rotated_secret_replaces_the_old_one_and_revokes_its_tokens(live):
    pos = make_pos()
    domain, client_id = domain_of(pos), pos.application.client_id
    old_token = fetch_token(live, domain, client_id, pos.client_secret)["access_token"]
    assert authenticate_bearer(old_token) is not None

    rotated = services.credential_rotate(obj=pos, actor=SYSTEM)

    with pytest.raises(InvalidClientError):
        fetch_token(live, domain, client_id, pos.client_secret)
    assert authenticate_bearer(old_token) is None
    new_token = fetch_token(live, domain, client_id, rotated.client_secret)["access_token"]
    assert authenticate_bearer(new_token).client_id == client_id


def test_a_deleted_pos_gets_no_token_and_its_tokens_are_gone(live):
    pos = make_pos()
    domain, client_id, application_id = domain_of(pos), pos.application.client_id, pos.application_id
    token = fetch_token(live, domain, client_id, pos.client_secret)["access_token"]

    services.pos_delete(pos=pos, actor=SYSTEM)

    with pytest.raises(InvalidClientError):
        fetch_token(live, domain, client_id, pos.client_secret)
    assert authenticate_bearer(token) is None
    assert not AccessToken.objects.filter(application_id=application_id).exists()


@pytest.mark.parametrize(
    "field, complete_value",
    [("roles", ["pos-terminal"]), ("services", ["retail-api"]), ("grant_types", ["client_credentials"])],
)
def test_a_cloud_api_application_lacking_one_requirement_is_refused_until_it_has_it(live, field, complete_value):
    app = make_cloud_application()
    services.cloud_application_update(app=app, actor=SYSTEM, **{field: []})
    domain, client_id = app.merchant_aggregator.tenant.domain, app.application.client_id

    with pytest.raises(InvalidClientError):
        fetch_token(live, domain, client_id, app.client_secret)
    response = post_token(live, domain, {"grant_type": "client_credentials"}, auth=(client_id, app.client_secret))
    body = assert_oauth_error(response, 401, "invalid_client")
    assert app.missing_for_cloud_connector()[0] in body["error_description"]
    assert not AccessToken.objects.exists()

    services.cloud_application_update(app=app, actor=SYSTEM, **{field: complete_value})

    token = fetch_token(live, domain, client_id, app.client_secret)
    assert token["scope"] == [SCOPE_CLOUD_CONNECTOR]


def test_a_new_cloud_api_application_without_anything_is_refused(live):
    app = make_cloud_application(complete=False)
    response = post_token(
        live,
        app.merchant_aggregator.tenant.domain,
        {"grant_type": "client_credentials"},
        auth=(app.application.client_id, app.client_secret),
    )
    body = assert_oauth_error(response, 401, "invalid_client")
    for missing in ("Retail API service", "Client Credentials Grant", "Point-of-sale Terminal role"):
        assert missing in body["error_description"]


def test_an_application_of_another_aggregator_of_the_same_tenant_still_authenticates(live):
    # The domain is the tenant's: two aggregators of one tenant share it.
    tenant = TenantFactory()
    app = make_cloud_application(merchant_aggregator=MerchantAggregatorFactory(tenant=tenant))
    pos = make_pos(store=StoreFactory(merchant__merchant_aggregator__tenant=tenant))
    assert fetch_token(live, tenant.domain, app.application.client_id, app.client_secret)["access_token"]
    assert fetch_token(live, tenant.domain, pos.application.client_id, pos.client_secret)["access_token"]


# --- malformed input: a clear 4xx, never a 500 ------------------------------------------------


def test_a_missing_grant_type_is_an_invalid_request(live):
    pos = make_pos()
    for data in ({"scope": "x"}, None, {"grant_type": ""}):
        response = post_token(live, domain_of(pos), data, auth=(pos.application.client_id, pos.client_secret))
        body = assert_oauth_error(response, 400, "invalid_request")
        assert body["error_description"] == "Request is missing grant type."


@pytest.mark.parametrize(
    "header",
    [
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Basic",
        "basic " + base64.b64encode(b"a:b").decode(),
        "Basic \u00e9\u00e9\u00e9",
    ],
)
def test_a_garbage_basic_header_is_an_invalid_client(live, header):
    pos = make_pos()
    response = post_token(
        live, domain_of(pos), {"grant_type": "client_credentials"}, headers={"Authorization": header.encode("latin-1")}
    )
    body = assert_oauth_error(response, 401, "invalid_client")
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert body["error_description"] in {
        "Client authentication failed: malformed HTTP Basic credentials.",
        "Client authentication failed: unknown client or wrong secret.",
    }


def test_a_lower_case_basic_scheme_is_accepted(live):
    pos = make_pos()
    encoded = base64.b64encode(f"{pos.application.client_id}:{pos.client_secret}".encode()).decode()
    response = post_token(
        live, domain_of(pos), {"grant_type": "client_credentials"}, headers={"Authorization": f"basic {encoded}"}
    )
    assert response.status_code == 200, response.text


def test_a_client_id_with_a_nul_byte_is_an_invalid_client(live):
    pos = make_pos()
    response = post_token(
        live,
        domain_of(pos),
        {"grant_type": "client_credentials", "client_id": "abc\x00def", "client_secret": "x"},
    )
    assert_oauth_error(response, 401, "invalid_client")
    response = post_token(live, domain_of(pos), {"grant_type": "client_credentials"}, auth=("abc\x00def", "x"))
    assert_oauth_error(response, 401, "invalid_client")


def test_non_utf8_bytes_in_the_body_are_an_invalid_client(live):
    pos = make_pos()
    body = b"grant_type=client_credentials&client_id=%ff%fe\xff&client_secret=\xc3\x28"
    response = post_token(live, domain_of(pos), body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_oauth_error(response, 401, "invalid_client")


def test_a_five_megabyte_body_is_an_invalid_request(live):
    pos = make_pos()
    body = b"grant_type=client_credentials&padding=" + b"a" * (5 * 1024 * 1024)
    response = post_token(
        live,
        domain_of(pos),
        body,
        auth=(pos.application.client_id, pos.client_secret),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    body = assert_oauth_error(response, 400, "invalid_request")
    assert body["error_description"] == "The request body is too large or has too many fields."


def test_a_body_with_thousands_of_fields_is_an_invalid_request(live):
    pos = make_pos()
    body = "grant_type=client_credentials&" + "&".join(f"f{n}=x" for n in range(5000))
    response = post_token(
        live,
        domain_of(pos),
        body,
        auth=(pos.application.client_id, pos.client_secret),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    body = assert_oauth_error(response, 400, "invalid_request")
    assert body["error_description"] == "The request body is too large or has too many fields."


def test_a_json_body_is_an_invalid_request(live):
    pos = make_pos()
    response = post_token(
        live,
        domain_of(pos),
        json.dumps({"grant_type": "client_credentials"}),
        auth=(pos.application.client_id, pos.client_secret),
        headers={"Content-Type": "application/json"},
    )
    body = assert_oauth_error(response, 400, "invalid_request")
    assert "application/x-www-form-urlencoded" in body["error_description"]


def test_parameters_in_the_query_string_are_an_invalid_request(live):
    pos = make_pos()
    for query in ("grant_type=client_credentials", "a=%zz"):
        response = requests.post(
            f"{token_url(live, domain_of(pos))}?{query}",
            data={"grant_type": "client_credentials"},
            auth=(pos.application.client_id, pos.client_secret),
            timeout=30,
        )
        assert_oauth_error(response, 400, "invalid_request")


def test_basic_and_a_form_secret_together_are_an_invalid_request(live):
    pos = make_pos()
    response = post_token(
        live,
        domain_of(pos),
        {"grant_type": "client_credentials", "client_secret": pos.client_secret},
        auth=(pos.application.client_id, pos.client_secret),
    )
    assert_oauth_error(response, 400, "invalid_request")


def test_a_form_client_id_that_contradicts_basic_is_an_invalid_request(live):
    pos = make_pos()
    other = make_pos(store=pos.store, name="Till 2")
    response = post_token(
        live,
        domain_of(pos),
        {"grant_type": "client_credentials", "client_id": other.application.client_id},
        auth=(pos.application.client_id, pos.client_secret),
    )
    assert_oauth_error(response, 400, "invalid_request")
    # The same client id in both places is just redundant, and fine.
    response = post_token(
        live,
        domain_of(pos),
        {"grant_type": "client_credentials", "client_id": pos.application.client_id},
        auth=(pos.application.client_id, pos.client_secret),
    )
    assert response.status_code == 200, response.text


def test_the_device_code_grant_is_an_unsupported_grant_type_not_a_crash(live):
    pos = make_pos()
    response = post_token(
        live,
        domain_of(pos),
        {"grant_type": "urn:ietf:params:oauth:grant-type:device_code"},
        auth=(pos.application.client_id, pos.client_secret),
    )
    assert_oauth_error(response, 400, "unsupported_grant_type")


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
def test_any_other_method_is_not_allowed(live, method):
    response = requests.request(method, token_url(live, "some-tenant"), timeout=30)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    if method != "HEAD":
        assert response.json()["error"] == "invalid_request"


# --- in process: the lifetime follows the setting ---------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("lifetime", [120, 7200])
def test_expires_in_follows_the_access_token_lifetime_setting(lifetime):
    pos = make_pos()
    oauth2 = {**settings.OAUTH2_PROVIDER, "ACCESS_TOKEN_EXPIRE_SECONDS": lifetime}
    with override_settings(OAUTH2_PROVIDER=oauth2):
        before = timezone.now()
        response = Client(enforce_csrf_checks=True).post(
            f"/oauth2/v1/{domain_of(pos)}/token",
            "grant_type=client_credentials",
            content_type="application/x-www-form-urlencoded",
            HTTP_AUTHORIZATION="Basic "
            + base64.b64encode(f"{pos.application.client_id}:{pos.client_secret}".encode()).decode(),
        )
        after = timezone.now()

    assert response.status_code == 200, response.content
    assert response.json()["expires_in"] == lifetime
    stored = AccessToken.objects.get(application=pos.application)
    assert before + timedelta(seconds=lifetime) <= stored.expires <= after + timedelta(seconds=lifetime)


def test_the_token_lifetime_is_read_from_the_token_lifetime_environment_variable():
    env = {**os.environ, "TOKEN_LIFETIME": "123", "DJANGO_SETTINGS_MODULE": "portal.settings"}
    code = "from django.conf import settings; print(settings.OAUTH2_PROVIDER['ACCESS_TOKEN_EXPIRE_SECONDS'])"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "123"


# --- expired tokens: the toolkit's cleartokens removes them (docs/deploy.md) ---------------------


def token_in_process(pos) -> str:
    response = Client(enforce_csrf_checks=True).post(
        f"/oauth2/v1/{domain_of(pos)}/token",
        "grant_type=client_credentials",
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION="Basic "
        + base64.b64encode(f"{pos.application.client_id}:{pos.client_secret}".encode()).decode(),
    )
    assert response.status_code == 200, response.content
    return response.json()["access_token"]


@pytest.mark.django_db
def test_cleartokens_deletes_expired_tokens_and_keeps_the_valid_ones():
    pos = make_pos()
    expired, valid = token_in_process(pos), token_in_process(pos)
    stored_expired = AccessToken.objects.get(token_checksum=hashlib.sha256(expired.encode()).hexdigest())
    stored_expired.expires = timezone.now() - timedelta(seconds=1)
    stored_expired.save(update_fields=["expires"])
    assert authenticate_bearer(expired) is None

    call_command("cleartokens", stdout=io.StringIO(), stderr=io.StringIO())

    assert not AccessToken.objects.filter(pk=stored_expired.pk).exists()
    assert AccessToken.objects.filter(application=pos.application).count() == 1
    assert authenticate_bearer(valid) is not None
