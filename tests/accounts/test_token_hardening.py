"""The token and revoke endpoints refuse repeated parameters (RFC 6749 §3.2) and limit the
requests of an address and of a client (429 `rate_limited` with Retry-After), in process.

Each test uses an address of its own (REMOTE_ADDR) and fresh credentials, so that counts
left in the cache by other tests never reach it."""

from __future__ import annotations

import base64
import itertools
from urllib.parse import urlencode

import pytest
from django.conf import settings
from django.test import Client, override_settings

from accounts.throttles import address_ident
from tests.factories import make_pos

pytestmark = pytest.mark.django_db

_addresses = itertools.count(1)


@pytest.fixture
def address() -> str:
    """An address no other test has used in this process."""
    n = next(_addresses)
    return f"10.77.{n // 250}.{n % 250 + 1}"


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def post(path: str, body: str | list[tuple[str, str]], *, address: str = "127.0.0.1", auth: str | None = None):
    data = body if isinstance(body, str) else urlencode(body)
    headers = {"HTTP_AUTHORIZATION": auth} if auth else {}
    return Client(enforce_csrf_checks=True).post(
        path, data, content_type="application/x-www-form-urlencoded", REMOTE_ADDR=address, **headers
    )


def token_path(pos) -> str:
    return f"/oauth2/v1/{pos.store.merchant.merchant_aggregator.tenant.domain}/token"


def assert_oauth_error(response, status: int, error: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert body["error"] == error
    assert body["error_description"]
    return body


def rates(**scopes: str):
    rest = {**settings.REST_FRAMEWORK}
    rest["DEFAULT_THROTTLE_RATES"] = {**rest["DEFAULT_THROTTLE_RATES"], **scopes}
    return override_settings(REST_FRAMEWORK=rest)


# --- repeated parameters ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "repeated"),
    [
        ([("grant_type", "client_credentials"), ("grant_type", "client_credentials")], "grant_type"),
        ([("grant_type", "client_credentials"), ("scope", "cloud-connector"), ("scope", "provisioning")], "scope"),
        ([("grant_type", "client_credentials"), ("grant_type", "password")], "grant_type"),
    ],
)
def test_a_parameter_given_twice_in_the_body_is_an_invalid_request(body, repeated):
    pos = make_pos()
    response = post(token_path(pos), body, auth=basic(pos.application.client_id, pos.client_secret))
    error = assert_oauth_error(response, 400, "invalid_request")
    assert repeated in error["error_description"]


def test_client_credentials_given_twice_in_the_form_fields_are_an_invalid_request():
    pos = make_pos()
    client_id, secret = pos.application.client_id, pos.client_secret
    for body in (
        [("grant_type", "client_credentials"), ("client_id", client_id), ("client_id", client_id),
         ("client_secret", secret)],
        [("grant_type", "client_credentials"), ("client_id", client_id), ("client_secret", secret),
         ("client_secret", "other")],
    ):  # fmt: skip
        error = assert_oauth_error(post(token_path(pos), body), 400, "invalid_request")
        assert "Repeated parameter" in error["error_description"]


def test_a_parameter_in_the_query_as_well_as_the_body_is_an_invalid_request():
    pos = make_pos()
    response = post(
        token_path(pos) + "?grant_type=client_credentials",
        [("grant_type", "client_credentials")],
        auth=basic(pos.application.client_id, pos.client_secret),
    )
    assert_oauth_error(response, 400, "invalid_request")


def test_the_revoke_endpoint_refuses_a_repeated_token_parameter():
    pos = make_pos()
    path = token_path(pos).replace("/token", "/revoke")
    response = post(path, [("token", "a"), ("token", "b")], auth=basic(pos.application.client_id, pos.client_secret))
    error = assert_oauth_error(response, 400, "invalid_request")
    assert "token" in error["error_description"]


def test_each_parameter_once_still_gets_a_token():
    pos = make_pos()
    body = [("grant_type", "client_credentials"), ("scope", "cloud-connector")]
    response = post(token_path(pos), body, auth=basic(pos.application.client_id, pos.client_secret))
    assert response.status_code == 200, response.content


# --- rate limits -----------------------------------------------------------------------------


def test_an_address_over_its_limit_gets_429_rate_limited_with_retry_after(address):
    pos = make_pos()
    wrong = basic(pos.application.client_id, "wrong")
    with rates(token_address="3/min"):
        for _ in range(3):
            assert_oauth_error(post(token_path(pos), "grant_type=client_credentials", address=address, auth=wrong),
                               401, "invalid_client")  # fmt: skip
        response = post(token_path(pos), "grant_type=client_credentials", address=address, auth=wrong)
        body = assert_oauth_error(response, 429, "rate_limited")
        assert 1 <= int(response["Retry-After"]) <= 60
        assert "this address" in body["error_description"]
        # Even with the right secret: the address is refused before any client is looked at.
        right = basic(pos.application.client_id, pos.client_secret)
        assert_oauth_error(post(token_path(pos), "grant_type=client_credentials", address=address, auth=right),
                           429, "rate_limited")  # fmt: skip


def test_another_address_is_not_limited_by_a_flooding_one(address):
    pos = make_pos()
    wrong = basic(pos.application.client_id, "wrong")
    with rates(token_address="2/min"):
        for _ in range(3):
            post(token_path(pos), "grant_type=client_credentials", address=address, auth=wrong)
        other = address.rsplit(".", 1)[0] + ".251"
        right = basic(pos.application.client_id, pos.client_secret)
        assert post(token_path(pos), "grant_type=client_credentials", address=other, auth=right).status_code == 200


def test_the_revoke_endpoint_counts_against_the_same_address_limit(address):
    pos = make_pos()
    auth = basic(pos.application.client_id, pos.client_secret)
    revoke = token_path(pos).replace("/token", "/revoke")
    with rates(token_address="2/min"):
        assert post(token_path(pos), "grant_type=client_credentials", address=address, auth=auth).status_code == 200
        assert post(revoke, "token=unknown", address=address, auth=auth).status_code == 200
        assert_oauth_error(post(revoke, "token=unknown", address=address, auth=auth), 429, "rate_limited")


def test_a_client_over_its_limit_gets_429_from_any_address(address):
    pos = make_pos()
    auth = basic(pos.application.client_id, pos.client_secret)
    with rates(token_client="2/min"):
        for _ in range(2):
            assert post(token_path(pos), "grant_type=client_credentials", address=address, auth=auth).status_code == 200
        other = address.rsplit(".", 1)[0] + ".252"
        response = post(token_path(pos), "grant_type=client_credentials", address=other, auth=auth)
        body = assert_oauth_error(response, 429, "rate_limited")
        assert "this client" in body["error_description"]
        assert int(response["Retry-After"]) >= 1
        # Another client is not affected.
        pos2 = make_pos()
        auth2 = basic(pos2.application.client_id, pos2.client_secret)
        assert post(token_path(pos2), "grant_type=client_credentials", address=other, auth=auth2).status_code == 200


def test_wrong_secrets_do_not_spend_a_clients_allowance(address):
    pos = make_pos()
    with rates(token_client="2/min"):
        for _ in range(5):
            wrong = basic(pos.application.client_id, "wrong")
            assert_oauth_error(post(token_path(pos), "grant_type=client_credentials", address=address, auth=wrong),
                               401, "invalid_client")  # fmt: skip
        right = basic(pos.application.client_id, pos.client_secret)
        for _ in range(2):
            response = post(token_path(pos), "grant_type=client_credentials", address=address, auth=right)
            assert response.status_code == 200


def test_the_addresses_of_one_ipv6_64_count_together():
    pos = make_pos()
    wrong = basic(pos.application.client_id, "wrong")
    with rates(token_address="2/min"):
        for host in ("1", "2"):
            assert_oauth_error(post(token_path(pos), "grant_type=client_credentials", address=f"2001:db8:7:1::{host}",
                                    auth=wrong), 401, "invalid_client")  # fmt: skip
        response = post(token_path(pos), "grant_type=client_credentials", address="2001:db8:7:1::3", auth=wrong)
        assert_oauth_error(response, 429, "rate_limited")
        response = post(token_path(pos), "grant_type=client_credentials", address="2001:db8:7:2::1", auth=wrong)
        assert_oauth_error(response, 401, "invalid_client")


@pytest.mark.parametrize(
    ("address", "ident"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8::1", "2001:db8::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("", "-"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_an_address_stands_for_itself_or_its_ipv6_64(address, ident):
    assert address_ident(address) == ident


def test_the_limits_fail_open_while_the_cache_is_unreachable(address):
    pos = make_pos()
    unreachable = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}}
    with rates(token_address="1/min", token_client="1/min"), override_settings(CACHES=unreachable):
        auth = basic(pos.application.client_id, pos.client_secret)
        for _ in range(3):
            assert post(token_path(pos), "grant_type=client_credentials", address=address, auth=auth).status_code == 200
