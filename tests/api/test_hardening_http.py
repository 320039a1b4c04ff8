"""The REST API against hostile bodies and floods: every unparsable JSON body is a 400 with
a JSON error (never a 500), and the address and credential limits answer 429 with
Retry-After, before authentication for the address."""

from __future__ import annotations

import itertools

import pytest
from django.conf import settings
from django.test import override_settings

from connector.api.parsers import MAX_DEPTH, nesting_depth
from tests.api.conftest import API, bearer_client
from tests.factories import make_access_token, make_provisioning_client
from tests.world import World

_addresses = itertools.count(1)


@pytest.fixture
def address() -> str:
    n = next(_addresses)
    return f"10.88.{n // 250}.{n % 250 + 1}"


def post_raw(client, path: str, body: bytes, **extra):
    return client.generic("POST", path, body, content_type="application/json", **extra)


def assert_parse_error(response, contains: str) -> None:
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/json"
    messages = response.json()["non_field_errors"]
    assert any(contains in message for message in messages), messages


# --- bodies that are not plain JSON ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "contains"),
    [
        (b"[" * 100_000, "nest deeper than"),
        (b"{" * 100_000, "nest deeper than"),
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nest deeper than"),
        (b'{"name": "\\ud800", "merchant": 1}', "lone UTF-16 surrogate"),
        (b'{"\\udfff": "S", "merchant": 1}', "lone UTF-16 surrogate"),
        (b'{"name": "S", "merchant": 1, "x": ["\\udc00"]}', "lone UTF-16 surrogate"),
        (b'{"name": NaN, "merchant": 1}', "NaN"),
        (b'{"name": "S", "merchant": -Infinity}', "Infinity"),
        (b'{"name": "S", "merchant": 1e999}', "out of range"),
        (b'{"name": "\xff\xfe", "merchant": 1}', "not valid utf-8"),
        (b'{"name": "\xc3", "merchant": 1}', "not valid utf-8"),
        (b'{"name": "\xed\xa0\x80", "merchant": 1}', "not valid utf-8"),  # a surrogate encoded in UTF-8
        (b'{"name": "S", "merchant": 1', "JSON parse error"),
        (b'{"name": "S", "merchant": ' + b"9" * 5000 + b"}", "JSON parse error"),
    ],
)
def test_a_body_that_is_not_plain_json_is_a_400_not_a_500(world: World, provisioning, body, contains):
    assert_parse_error(post_raw(provisioning, f"{API}/stores/", body), contains)


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_changes_refuse_a_deeply_nested_body_too(world: World, provisioning, method):
    response = provisioning.generic(
        method, f"{API}/stores/{world.store.pk}/", b"[" * 100_000, content_type="application/json"
    )
    assert_parse_error(response, "nest deeper than")


def test_brackets_inside_strings_do_not_count_as_nesting(world: World, provisioning):
    name = "[[[[{{{{" * 10 + '\\"]'
    body = f'{{"merchant": {world.merchant.pk}, "name": "{name}"}}'.encode()
    response = post_raw(provisioning, f"{API}/stores/", body)
    assert response.status_code == 201, response.content
    assert response.json()["name"] == name.replace('\\"', '"')


def test_a_plain_body_with_escaped_pairs_and_accents_is_still_accepted(world: World, provisioning):
    body = f'{{"merchant": {world.merchant.pk}, "name": "Caf\\u00e9 \\ud83d\\ude00 Z\u00fcrich"}}'.encode()
    response = post_raw(provisioning, f"{API}/stores/", body)
    assert response.status_code == 201, response.content
    assert response.json()["name"] == "Café 😀 Zürich"


def test_the_depth_counter_counts_only_real_nesting():
    assert nesting_depth('{"a": [1, {"b": "]]]"}]}') == 3
    assert nesting_depth('"[[[["') == 0
    assert nesting_depth("[" * (MAX_DEPTH + 10)) == MAX_DEPTH + 1  # stops counting past the limit


# --- rate limits --------------------------------------------------------------------------------


def rates(**scopes: str):
    rest = {**settings.REST_FRAMEWORK}
    rest["DEFAULT_THROTTLE_RATES"] = {**rest["DEFAULT_THROTTLE_RATES"], **scopes}
    return override_settings(REST_FRAMEWORK=rest)


def assert_throttled(response) -> None:
    assert response.status_code == 429, response.content
    assert response["Content-Type"] == "application/json"
    assert 1 <= int(response["Retry-After"]) <= 60
    assert "throttled" in response.json()["detail"]


def test_an_address_over_its_limit_gets_429_with_retry_after(world: World, provisioning, address):
    with rates(api_address="3/min"):
        for _ in range(3):
            assert provisioning.get(f"{API}/stores/", REMOTE_ADDR=address).status_code == 200
        assert_throttled(provisioning.get(f"{API}/stores/", REMOTE_ADDR=address))
        # Another address is not affected.
        assert provisioning.get(f"{API}/stores/", REMOTE_ADDR=address + "0").status_code == 200


def test_made_up_tokens_meet_the_address_limit_before_authentication(world: World, address):
    outsider = bearer_client("made-up-token")
    with rates(api_address="3/min"):
        for _ in range(3):
            assert outsider.get(f"{API}/stores/", REMOTE_ADDR=address).status_code == 401
        assert_throttled(outsider.get(f"{API}/stores/", REMOTE_ADDR=address))


def test_a_forwarded_for_header_does_not_escape_the_address_limit(world: World, provisioning, address):
    with rates(api_address="2/min"):
        for n in range(2):
            provisioning.get(f"{API}/stores/", REMOTE_ADDR=address, HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")
        assert_throttled(provisioning.get(f"{API}/stores/", REMOTE_ADDR=address, HTTP_X_FORWARDED_FOR="192.0.2.9"))


def test_a_credential_over_its_limit_gets_429_from_any_address(world: World, provisioning, address):
    other = make_provisioning_client(tenant=world.tenant)
    with rates(api_credential="2/min"):
        for n in range(2):
            assert provisioning.get(f"{API}/stores/", REMOTE_ADDR=f"{address}{n}").status_code == 200
        assert_throttled(provisioning.get(f"{API}/stores/", REMOTE_ADDR=address + "9"))
        # Another credential is not affected.
        other_client = bearer_client(make_access_token(other))
        assert other_client.get(f"{API}/stores/", REMOTE_ADDR=address).status_code == 200


def test_a_portal_session_counts_against_itself(world: World, ma_admin, address):
    with rates(api_credential="1/min"):
        assert ma_admin.get(f"{API}/stores/", REMOTE_ADDR=address).status_code == 200
        assert_throttled(ma_admin.get(f"{API}/stores/", REMOTE_ADDR=address + "1"))


def test_the_schema_is_limited_per_address_too(world: World, client, address):
    with rates(api_address="1/min"):
        assert client.get("/api/schema/", REMOTE_ADDR=address).status_code == 200
        assert client.get("/api/schema/", REMOTE_ADDR=address).status_code == 429


def test_every_operation_documents_the_429(client):
    schema = client.get("/api/schema/", {"format": "json"}, REMOTE_ADDR="10.88.255.1").json()
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            assert "429" in operation["responses"], f"{method.upper()} {path}"
