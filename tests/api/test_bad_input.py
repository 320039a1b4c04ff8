"""Bad input always gets a clear 4xx with a message in the contract's shape, never a 500."""

from __future__ import annotations

import pytest

from tests.api.conftest import API, db_snapshot
from tests.world import World

pytestmark = pytest.mark.django_db

LONG = "x" * 10_000


def assert_field_errors(response, field: str, *, contains: str = "") -> None:
    assert response.status_code == 400, response.content
    body = response.json()
    assert isinstance(body, dict) and all(
        isinstance(messages, list) and all(isinstance(m, str) for m in messages) for messages in body.values()
    ), body
    assert field in body, body
    if contains:
        assert any(contains in message for message in body[field]), body


def device_body(world: World, **overrides) -> dict:
    return {
        "merchant": world.merchant.pk,
        "store": world.store.pk,
        "make": "Ingenico",
        "model": "Lane3000",
        "serial": "NEW0001",
        **overrides,
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "Incorrect type"),
        ("12", "Incorrect type"),
        (1.5, "Incorrect type"),
        ("", "may not be null"),
        (True, "Incorrect type"),
        ([1], "Incorrect type"),
        ({"id": 1}, "Incorrect type"),
        (-1, "greater than or equal to 1"),
        (0, "greater than or equal to 1"),
        (2**70, "less than or equal to"),
        (None, "may not be null"),
        (987654321, "does not exist"),
    ],
)
def test_a_bad_parent_id_is_a_field_error(world: World, provisioning, value, message):
    response = provisioning.post(f"{API}/stores/", {"merchant": value, "name": "Store"}, format="json")
    assert_field_errors(response, "merchant", contains=message)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (LONG, "no more than 100 characters"),
        ("", "may not be blank"),
        ("   ", "may not be blank"),
        (None, "may not be null"),
        (["a"], "Not a valid string"),
        (42, "Not a valid string"),
        ({"a": 1}, "Not a valid string"),
        ("nul\x00byte", "Null characters are not allowed"),
    ],
)
def test_a_bad_name_is_a_field_error(world: World, provisioning, value, message):
    response = provisioning.post(
        f"{API}/merchants/", {"merchant_aggregator": world.ma.pk, "name": value}, format="json"
    )
    assert_field_errors(response, "name", contains=message)


def test_a_missing_field_is_a_field_error(world: World, provisioning):
    response = provisioning.post(f"{API}/pos/", {"name": "Till"}, format="json")
    assert_field_errors(response, "store", contains="required")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("make", LONG, "no more than 40 characters"),
        ("model", "Lane 3000", "Use only letters"),
        ("serial", LONG, "no more than 60 characters"),
        ("serial", "23/01", "Use only letters"),
        ("enabled", "perhaps", "valid boolean"),
        ("enabled", "true", "valid boolean"),
        ("enabled", 1, "valid boolean"),
        ("serial", 230123456, "Not a valid string"),
    ],
)
def test_bad_device_fields_are_field_errors(world: World, provisioning, field, value, message):
    response = provisioning.post(f"{API}/devices/", device_body(world, **{field: value}), format="json")
    assert_field_errors(response, field, contains=message)


def test_a_store_of_another_merchant_is_refused(world: World, provisioning):
    before = db_snapshot()
    response = provisioning.post(f"{API}/devices/", device_body(world, store=world.other_store.pk), format="json")
    assert_field_errors(response, "store", contains="does not belong to the merchant")
    moved = provisioning.patch(f"{API}/devices/{world.device.pk}/", {"store": world.other_store.pk}, format="json")
    assert_field_errors(moved, "store", contains="does not belong to the merchant")
    assert db_snapshot() == before


def test_a_duplicate_serial_is_refused_case_insensitively(world: World, provisioning):
    existing = world.device
    response = provisioning.post(
        f"{API}/devices/",
        device_body(world, make=existing.make.upper(), model="Other", serial=existing.serial.lower()),
        format="json",
    )
    assert_field_errors(response, "serial", contains="This serial number cannot be used.")
    other = provisioning.patch(
        f"{API}/devices/{world.other_device.pk}/", {"serial": existing.serial.swapcase()}, format="json"
    )
    assert_field_errors(other, "serial", contains="This serial number cannot be used.")


def test_the_same_serial_in_another_tenant_is_fine(world: World, provisioning):
    response = provisioning.post(f"{API}/devices/", device_body(world, serial=world.far_device.serial), format="json")
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("services", ["retail-api", "payments"], "not a valid choice"),
        ("grant_types", ["password"], "not a valid choice"),
        ("roles", ["admin"], "not a valid choice"),
        ("services", "retail-api", "Expected a list"),
        ("roles", ["pos-terminal"] * 1000, "no more than"),
        ("roles", [None], "may not be null"),
    ],
)
def test_unknown_application_values_are_field_errors(world: World, provisioning, field, value, message):
    response = provisioning.post(
        f"{API}/applications/",
        {"merchant_aggregator": world.ma.pk, "name": "App", field: value},
        format="json",
    )
    assert_field_errors(response, field, contains=message)


def test_an_unknown_service_cannot_be_subscribed(world: World, provisioning):
    response = provisioning.post(f"{API}/subscriptions/", {"service": "teleportation"}, format="json")
    assert_field_errors(response, "service", contains="not a valid choice")


@pytest.mark.parametrize("tenant", [LONG, "UPPER", "-x", 7, ["acme"], "nul\x00"])
def test_a_malformed_tenant_is_a_field_error(world: World, staff, tenant):
    response = staff.post(f"{API}/merchant-aggregators/", {"name": "MA", "tenant": tenant}, format="json")
    assert_field_errors(response, "tenant", contains="does not exist")


def test_a_body_that_is_not_json_is_refused(world: World, provisioning):
    response = provisioning.generic("POST", f"{API}/stores/", b"{not json", content_type="application/json")
    assert_field_errors(response, "non_field_errors", contains="JSON parse error")


def test_a_json_array_instead_of_an_object_is_refused(world: World, provisioning):
    response = provisioning.post(f"{API}/stores/", [{"merchant": world.merchant.pk, "name": "S"}], format="json")
    assert_field_errors(response, "non_field_errors", contains="Expected a dictionary")


@pytest.mark.parametrize("body", [b'"a string"', b"42", b"null", b"true"])
def test_a_json_scalar_instead_of_an_object_is_refused(world: World, provisioning, body):
    response = provisioning.generic("POST", f"{API}/stores/", body, content_type="application/json")
    assert response.status_code == 400
    assert "non_field_errors" in response.json()


def test_a_form_encoded_body_is_refused_as_unsupported(world: World, provisioning):
    response = provisioning.post(f"{API}/stores/", {"merchant": world.merchant.pk, "name": "S"})
    assert response.status_code == 415
    assert "detail" in response.json()


@pytest.mark.parametrize("pk", ["99999999999999999999999999", "9223372036854775808", "0"])
def test_an_id_out_of_range_in_the_path_is_a_404(world: World, provisioning, pk):
    for resource in ("merchants", "devices", "pos"):
        response = provisioning.get(f"{API}/{resource}/{pk}/")
        assert response.status_code == 404
        assert "detail" in response.json()


@pytest.mark.parametrize("path", ["/merchants/abc/", "/merchants/-1/", "/merchants/1.5/", "/nothing/", "/stores"])
def test_an_unknown_path_is_a_json_404(world: World, provisioning, path):
    response = provisioning.get(API + path)
    assert response.status_code == 404
    assert "detail" in response.json()


def test_a_post_without_the_trailing_slash_is_a_404_not_a_crash(world: World, provisioning):
    response = provisioning.post(f"{API}/stores", {"merchant": world.merchant.pk, "name": "S"}, format="json")
    assert response.status_code == 404
    assert "slash" in response.json()["detail"]


def test_an_unsupported_method_is_a_405(world: World, provisioning):
    response = provisioning.put(f"{API}/stores/", {}, format="json")
    assert response.status_code == 405
    assert "not allowed" in response.json()["detail"]


@pytest.mark.parametrize(
    ("resource", "params", "field"),
    [
        ("devices", {"merchant": "abc"}, "merchant"),
        ("devices", {"store": "-3"}, "store"),
        ("devices", {"store": str(2**70)}, "store"),
        ("devices", {"enabled": "maybe"}, "enabled"),
        ("devices", {"online": "2"}, "online"),
        ("devices", {"enabled": "1"}, "enabled"),
        ("devices", {"active": "yes please"}, "active"),
        ("devices", {"tsn": LONG}, "tsn"),
        ("devices", {"search": "nul\x00"}, "search"),
        ("devices", {"make": LONG}, "make"),
        ("merchants", {"merchant_aggregator": "1.5"}, "merchant_aggregator"),
        ("stores", {"merchant": "x"}, "merchant"),
        ("pos", {"merchant": "x"}, "merchant"),
        ("applications", {"merchant_aggregator": "x"}, "merchant_aggregator"),
        ("sessions", {"state": "sleeping"}, "state"),
        ("sessions", {"state": ""}, "state"),
        ("devices", {"store": ""}, "store"),
        ("devices", {"enabled": ""}, "enabled"),
        ("merchants", {"merchant_aggregator": ""}, "merchant_aggregator"),
    ],
)
def test_an_invalid_filter_value_is_a_400(world: World, provisioning, resource, params, field):
    assert_field_errors(provisioning.get(f"{API}/{resource}/", params), field)


@pytest.mark.parametrize("page_size", ["0", "-1", "ten", "1.5", "\u0661", ""])
def test_a_page_size_that_is_not_a_positive_integer_is_a_400(world: World, provisioning, page_size):
    assert_field_errors(provisioning.get(f"{API}/stores/", {"page_size": page_size}), "page_size")


@pytest.mark.parametrize("page", ["first", ""])
def test_a_page_that_is_not_a_number_is_a_404(world: World, provisioning, page):
    response = provisioning.get(f"{API}/stores/", {"page": page})
    assert response.status_code == 404
    assert response.json() == {"detail": "Invalid page."}


def test_an_empty_text_filter_filters_nothing(world: World, provisioning):
    everything = provisioning.get(f"{API}/devices/").json()["count"]
    assert provisioning.get(f"{API}/devices/", {"make": "", "tsn": "", "search": ""}).json()["count"] == everything


@pytest.mark.parametrize("path", ["/merchants/a%0Ab/", "/stores/%0A/", "/devices/%E2%98%83%0D%0A/"])
def test_control_characters_in_the_path_are_a_json_404(world: World, provisioning, path):
    for method in ("get", "delete"):
        response = getattr(provisioning, method)(API + path)
        assert response.status_code == 404
        assert response["Content-Type"] == "application/json"
