"""`POST /oauth2/v1/{domain}/revoke` (RFC 7009), client-authenticated like the token endpoint."""

from __future__ import annotations

import asyncio
import base64

import pytest
import requests
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connections
from django.test import Client
from oauth2_provider.models import AccessToken

from accounts.credentials import authenticate_bearer, token_checksum
from accounts.models import AuditEntry
from connector import groups
from tests.factories import TenantFactory, make_pos

FORM = "application/x-www-form-urlencoded"


def domain_of(pos) -> str:
    return pos.store.merchant.merchant_aggregator.tenant.domain


def basic(pos) -> tuple[str, str]:
    return pos.application.client_id, pos.client_secret


def new_token(live, pos) -> str:
    response = requests.post(
        f"{live.http_url}/oauth2/v1/{domain_of(pos)}/token",
        data={"grant_type": "client_credentials"},
        auth=basic(pos),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def revoke(live, domain: str, data=None, *, auth=None, **kwargs) -> requests.Response:
    return requests.post(f"{live.http_url}/oauth2/v1/{domain}/revoke", data=data, auth=auth, timeout=30, **kwargs)


def assert_oauth_error(response: requests.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"] == error
    assert body["error_description"]


# --- live -------------------------------------------------------------------------------------


def test_a_client_revokes_its_own_token_and_only_that_one(live):
    pos = make_pos()
    revoked, kept = new_token(live, pos), new_token(live, pos)

    response = revoke(live, domain_of(pos), {"token": revoked}, auth=basic(pos))

    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["Cache-Control"] == "no-store"
    assert authenticate_bearer(revoked) is None
    assert not AccessToken.objects.filter(token_checksum=token_checksum(revoked)).exists()
    assert authenticate_bearer(kept) is not None
    entry = AuditEntry.objects.get(action="access_token.revoke")
    assert entry.actor == f"pos:{pos.application.client_id}"
    assert entry.data == {"client_id": pos.application.client_id}
    # The credential itself is untouched: it gets a new token at once.
    assert authenticate_bearer(new_token(live, pos)) is not None


def test_a_client_may_revoke_with_the_form_field_credentials(live):
    pos = make_pos()
    token = new_token(live, pos)
    response = revoke(
        live,
        domain_of(pos),
        {"token": token, "client_id": pos.application.client_id, "client_secret": pos.client_secret},
    )
    assert response.status_code == 200
    assert authenticate_bearer(token) is None


@pytest.mark.parametrize("hint", ["access_token", "something-else"])
def test_a_token_type_hint_for_access_tokens_or_an_unknown_one_is_honoured_or_ignored(live, hint):
    pos = make_pos()
    token = new_token(live, pos)
    response = revoke(live, domain_of(pos), {"token": token, "token_type_hint": hint}, auth=basic(pos))
    assert response.status_code == 200
    assert authenticate_bearer(token) is None


def test_a_refresh_token_hint_is_an_unsupported_token_type(live):
    pos = make_pos()
    token = new_token(live, pos)
    response = revoke(live, domain_of(pos), {"token": token, "token_type_hint": "refresh_token"}, auth=basic(pos))
    assert_oauth_error(response, 400, "unsupported_token_type")
    assert authenticate_bearer(token) is not None


def test_revoking_an_unknown_token_answers_200_and_changes_nothing(live):
    pos = make_pos()
    token = new_token(live, pos)

    response = revoke(live, domain_of(pos), {"token": "no-such-token"}, auth=basic(pos))

    assert response.status_code == 200
    assert response.content == b""
    assert AccessToken.objects.count() == 1
    assert authenticate_bearer(token) is not None
    assert not AuditEntry.objects.filter(action="access_token.revoke").exists()


def test_revoking_the_token_of_another_client_answers_200_and_changes_nothing(live):
    pos = make_pos()
    neighbour = make_pos(store=pos.store, name="Till 2")
    outsider = make_pos()
    neighbours_token, outsiders_token = new_token(live, neighbour), new_token(live, outsider)

    for token in (neighbours_token, outsiders_token):
        response = revoke(live, domain_of(pos), {"token": token}, auth=basic(pos))
        assert response.status_code == 200

    assert authenticate_bearer(neighbours_token) is not None
    assert authenticate_bearer(outsiders_token) is not None


def test_it_refuses_a_wrong_secret(live):
    pos = make_pos()
    token = new_token(live, pos)
    response = revoke(live, domain_of(pos), {"token": token}, auth=(pos.application.client_id, "wrong"))
    assert_oauth_error(response, 401, "invalid_client")
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert authenticate_bearer(token) is not None


def test_it_refuses_a_client_at_another_domain(live):
    pos = make_pos()
    token = new_token(live, pos)
    for domain in (TenantFactory().domain, "no-such-tenant"):
        response = revoke(live, domain, {"token": token}, auth=basic(pos))
        assert_oauth_error(response, 401, "invalid_client")
    assert authenticate_bearer(token) is not None


def test_it_refuses_a_request_without_credentials(live):
    pos = make_pos()
    token = new_token(live, pos)
    response = revoke(live, domain_of(pos), {"token": token})
    assert_oauth_error(response, 401, "invalid_client")
    assert authenticate_bearer(token) is not None


def test_a_missing_token_is_an_invalid_request(live):
    pos = make_pos()
    response = revoke(live, domain_of(pos), {"token_type_hint": "access_token"}, auth=basic(pos))
    assert_oauth_error(response, 400, "invalid_request")


def test_malformed_revocations_are_answered_not_crashed(live):
    pos = make_pos()
    domain = domain_of(pos)
    response = revoke(live, domain, b"token=\xff\xfe%00", auth=basic(pos), headers={"Content-Type": FORM})
    assert response.status_code == 200
    response = revoke(
        live, domain, b"token=" + b"a" * (5 * 1024 * 1024), auth=basic(pos), headers={"Content-Type": FORM}
    )
    assert_oauth_error(response, 400, "invalid_request")
    response = revoke(live, domain, {"token": "x"}, headers={"Authorization": "Basic %%%"})
    assert_oauth_error(response, 401, "invalid_client")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_any_other_method_is_not_allowed(live, method):
    response = requests.request(method, f"{live.http_url}/oauth2/v1/some-tenant/revoke", timeout=30)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


# --- in process: the event that closes the sockets ---------------------------------------------


def revoke_in_process(pos, token: str):
    credentials = base64.b64encode(f"{pos.application.client_id}:{pos.client_secret}".encode()).decode()
    return Client().post(
        f"/oauth2/v1/{domain_of(pos)}/revoke",
        f"token={token}",
        content_type=FORM,
        HTTP_AUTHORIZATION=f"Basic {credentials}",
    )


def token_in_process(pos) -> str:
    credentials = base64.b64encode(f"{pos.application.client_id}:{pos.client_secret}".encode()).decode()
    response = Client().post(
        f"/oauth2/v1/{domain_of(pos)}/token",
        "grant_type=client_credentials",
        content_type=FORM,
        HTTP_AUTHORIZATION=f"Basic {credentials}",
    )
    assert response.status_code == 200, response.content
    return response.json()["access_token"]


@pytest.mark.django_db(transaction=True)
async def test_revoking_a_token_tells_the_sockets_that_used_it_after_commit():
    layer = get_channel_layer()
    try:
        pos = await sync_to_async(make_pos)()
        token = await sync_to_async(token_in_process)(pos)
        socket = await layer.new_channel()
        await layer.group_add(groups.credential_group(pos.application_id), socket)

        response = await sync_to_async(revoke_in_process)(pos, token)

        assert response.status_code == 200
        revoked = {"type": "token.revoked", "token_checksum": token_checksum(token)}
        assert await asyncio.wait_for(layer.receive(socket), timeout=10) == revoked
    finally:
        # The worker thread's connection would otherwise outlive the test database.
        await sync_to_async(connections.close_all)()
        # On Redis the receive started the layer's reader for this process's sockets, which
        # waits in a blocking pop: stopped here, bounded, not left to the event loop's
        # teardown. A reader that swallowed its cancel (Python 3.11's wait_for in redis-py's
        # send: connector.relay.redis_connections) hung that teardown, then failed this bound
        # in CI; should it come back, this test fails with the reader's traceback.
        reader_stop = getattr(layer, "reader_stop", None)
        if reader_stop is not None:
            await asyncio.wait_for(reader_stop(), timeout=10)


@pytest.mark.django_db
def test_the_event_waits_for_the_commit_and_is_not_sent_for_an_unknown_token(django_capture_on_commit_callbacks):
    pos = make_pos()
    token = token_in_process(pos)
    with django_capture_on_commit_callbacks() as callbacks:
        assert revoke_in_process(pos, "no-such-token").status_code == 200
    assert callbacks == []

    with django_capture_on_commit_callbacks() as callbacks:
        assert revoke_in_process(pos, token).status_code == 200
    # Nothing is sent until the transaction commits; then exactly one message goes out.
    assert len(callbacks) == 1
