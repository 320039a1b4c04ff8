"""Presence on the device resource and the connection history (v1.1 §11): the stored fields
in the wire's time format, nulls where nothing is known, the `online` filter, and
`devices/{id}/connections/` newest first, paginated, scoped exactly as the device detail."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from connector.models import Device, DeviceConnection, DisconnectReason
from tests.api.conftest import API, bearer_client, session_client
from tests.world import World

pytestmark = pytest.mark.django_db

# RFC 3339, UTC, milliseconds: the format of every v1.1 time.
WIRE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
T0 = datetime(2026, 12, 2, 17, 6, 23, 123456, tzinfo=UTC)


def device_body(client, device: Device) -> dict:
    response = client.get(f"{API}/devices/{device.pk}/")
    assert response.status_code == 200, response.content
    return response.json()


def connections_url(device: Device) -> str:
    return f"{API}/devices/{device.pk}/connections/"


def period(device: Device, *, minutes_ago: int, length: int | None = 5, **fields) -> DeviceConnection:
    """An online period that began `minutes_ago` before T0 and lasted `length` minutes
    (None: still open)."""
    start = T0 - timedelta(minutes=minutes_ago)
    defaults = {"session_id": f"s-{device.pk}", "connected_at": start}
    if length is not None:
        defaults.update(disconnected_at=start + timedelta(minutes=length), reason=DisconnectReason.CLOSED)
    defaults.update(fields)
    return DeviceConnection.objects.create(device=device, **defaults)


# --- the device resource ---------------------------------------------------------------------


def test_a_device_never_seen_is_offline_with_every_presence_field_null(world: World, provisioning):
    body = device_body(provisioning, world.device)
    assert body["online"] is False
    assert body["online_since"] is None
    assert body["offline_since"] is None
    assert body["last_seen_at"] is None
    # Stored blank, shown null: a client tests for null, never for "".
    assert body["last_disconnect_reason"] is None


def test_an_online_device_shows_since_when_and_when_last_seen_in_the_wire_format(world: World, provisioning):
    Device.objects.filter(pk=world.device.pk).update(
        online=True,
        online_since=T0,
        offline_since=None,
        last_seen_at=T0 + timedelta(seconds=20),
        last_disconnect_reason=DisconnectReason.PING_TIMEOUT,  # of an earlier period: kept
    )
    body = device_body(provisioning, world.device)
    assert body["online"] is True
    assert body["online_since"] == "2026-12-02T17:06:23.123Z"
    assert body["last_seen_at"] == "2026-12-02T17:06:43.123Z"
    assert body["offline_since"] is None
    assert body["last_disconnect_reason"] == "ping_timeout"


def test_an_offline_device_says_since_when_and_why(world: World, merchant_admin):
    Device.objects.filter(pk=world.device.pk).update(
        online=False,
        online_since=None,
        offline_since=T0,
        last_seen_at=T0 - timedelta(seconds=3),
        last_disconnect_reason=DisconnectReason.NODE_LOST,
    )
    body = device_body(merchant_admin, world.device)
    assert body["online"] is False
    assert body["online_since"] is None
    assert body["offline_since"] == "2026-12-02T17:06:23.123Z"
    assert body["last_seen_at"] == "2026-12-02T17:06:20.123Z"
    assert body["last_disconnect_reason"] == "node_lost"
    listed = merchant_admin.get(f"{API}/devices/").json()["results"]
    assert next(item for item in listed if item["id"] == world.device.pk)["offline_since"] == body["offline_since"]


def test_a_time_in_another_zone_is_written_in_utc(world: World, provisioning):
    from zoneinfo import ZoneInfo

    local = datetime(2026, 12, 2, 18, 6, 23, 5000, tzinfo=ZoneInfo("Europe/Paris"))
    Device.objects.filter(pk=world.device.pk).update(last_seen_at=local)
    assert device_body(provisioning, world.device)["last_seen_at"] == "2026-12-02T17:06:23.005Z"


def test_the_online_filter_reads_the_stored_presence(world: World, provisioning):
    Device.objects.filter(pk=world.other_device.pk).update(online=True, online_since=T0)

    def ids(value: str) -> set[int]:
        response = provisioning.get(f"{API}/devices/", {"online": value})
        assert response.status_code == 200
        return {item["id"] for item in response.json()["results"]}

    assert ids("true") == {world.other_device.pk}
    assert world.other_device.pk not in ids("false")
    assert world.device.pk in ids("false")
    refused = provisioning.get(f"{API}/devices/", {"online": "maybe"})
    assert refused.status_code == 400
    assert "online" in refused.json()


# --- the connection history ------------------------------------------------------------------


def test_the_connections_are_listed_newest_first_with_every_field(world: World, provisioning):
    device = world.device
    oldest = period(device, minutes_ago=60, reason=DisconnectReason.PING_TIMEOUT, frames_relayed=40, frames_dropped=2)
    middle = period(device, minutes_ago=30, claimed_by="POS Till 1", frames_relayed=12)
    current = period(device, minutes_ago=10, length=None, session_id="s-new", claimed_by="")
    period(world.other_device, minutes_ago=5)  # another device's: not listed

    response = provisioning.get(connections_url(device))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["count"] == 3
    assert body["next"] is None and body["previous"] is None
    results = body["results"]
    assert [item["connected_at"] for item in results] == [
        "2026-12-02T16:56:23.123Z",
        "2026-12-02T16:36:23.123Z",
        "2026-12-02T16:06:23.123Z",
    ]
    assert results[0] == {
        "session_id": current.session_id,
        "connected_at": "2026-12-02T16:56:23.123Z",
        "disconnected_at": None,
        "reason": None,
        "frames_relayed": 0,
        "frames_dropped": 0,
        "claimed_by": None,
    }
    assert results[1] == {
        "session_id": middle.session_id,
        "connected_at": "2026-12-02T16:36:23.123Z",
        "disconnected_at": "2026-12-02T16:41:23.123Z",
        "reason": "closed",
        "frames_relayed": 12,
        "frames_dropped": 0,
        "claimed_by": "POS Till 1",
    }
    assert results[2]["reason"] == "ping_timeout"
    assert (results[2]["frames_relayed"], results[2]["frames_dropped"]) == (40, 2)
    assert results[2]["session_id"] == oldest.session_id
    for item in results:
        for key in ("connected_at", "disconnected_at"):
            assert item[key] is None or WIRE_TIME.match(item[key]), item[key]


def test_an_open_connection_has_no_reason_even_if_one_was_stored(world: World, provisioning):
    # A reason belongs to a period that ended; an open row never shows one.
    period(world.device, minutes_ago=1, length=None, reason=DisconnectReason.CLOSED)
    assert provisioning.get(connections_url(world.device)).json()["results"][0]["reason"] is None


def test_the_connections_are_paginated_like_every_list(world: World, provisioning):
    for n in range(7):
        period(world.device, minutes_ago=10 * (n + 1))
    first = provisioning.get(connections_url(world.device), {"page_size": 3}).json()
    assert first["count"] == 7
    assert len(first["results"]) == 3
    assert first["next"].endswith(f"{connections_url(world.device)}?page=2&page_size=3")
    second = provisioning.get(first["next"]).json()
    third = provisioning.get(second["next"]).json()
    assert third["next"] is None and len(third["results"]) == 1
    times = [item["connected_at"] for page in (first, second, third) for item in page["results"]]
    assert times == sorted(times, reverse=True) and len(set(times)) == 7
    assert provisioning.get(connections_url(world.device), {"page": 4, "page_size": 3}).status_code == 404


@pytest.mark.parametrize("size", ["0", "-1", "x", ""])
def test_a_page_size_that_is_not_a_positive_integer_is_a_400(world: World, provisioning, size):
    response = provisioning.get(connections_url(world.device), {"page_size": size})
    assert response.status_code == 400
    assert response.json() == {"page_size": ["A positive integer is required."]}


def test_the_device_list_filters_do_not_apply_to_its_connections(world: World, provisioning):
    period(world.device, minutes_ago=5)
    # `online` filters devices; here it is no parameter at all, not a reason to hide the device.
    response = provisioning.get(connections_url(world.device), {"online": "true"})
    assert response.status_code == 200
    assert response.json()["count"] == 1


def test_every_caller_who_sees_the_device_sees_its_connections(world: World, callers):
    period(world.device, minutes_ago=5)
    for name, client in callers.items():
        response = client.get(connections_url(world.device))
        assert response.status_code == 200, name
        assert response.json()["count"] == 1, name


@pytest.mark.parametrize(
    "outsider", ["other_merchant_admin", "far_ma_admin"], ids=["another merchant", "another tenant"]
)
def test_a_device_outside_the_callers_scope_answers_404_like_its_detail(world: World, outsider):
    period(world.device, minutes_ago=5)
    client = session_client(getattr(world, outsider))
    detail = client.get(f"{API}/devices/{world.device.pk}/")
    history = client.get(connections_url(world.device))
    assert detail.status_code == history.status_code == 404
    assert history.json() == detail.json()


def test_an_unknown_device_answers_404(world: World, provisioning):
    response = provisioning.get(f"{API}/devices/999999/connections/")
    assert response.status_code == 404
    assert "detail" in response.json()


def test_a_token_without_the_provisioning_scope_is_refused(world: World):
    response = bearer_client(world.pos_token).get(connections_url(world.device))
    assert response.status_code == 403


def test_anonymous_callers_are_refused(world: World):
    from rest_framework.test import APIClient

    assert APIClient().get(connections_url(world.device)).status_code in (401, 403)


def test_the_connections_are_read_only(world: World, ma_admin):
    for method in ("post", "put", "patch", "delete"):
        assert getattr(ma_admin, method)(connections_url(world.device)).status_code == 405, method


def test_listing_connections_costs_the_same_for_two_rows_or_fifty(world: World, provisioning):
    period(world.device, minutes_ago=500)
    provisioning.get(connections_url(world.device))  # warm the token and the principal
    with CaptureQueriesContext(connection) as few:
        provisioning.get(connections_url(world.device))
    for n in range(49):
        period(world.device, minutes_ago=n + 1)
    with CaptureQueriesContext(connection) as many:
        assert provisioning.get(connections_url(world.device)).json()["count"] == 50
    assert len(many.captured_queries) == len(few.captured_queries)


# --- the schema ------------------------------------------------------------------------------


def test_the_schema_documents_the_presence_fields_and_the_connections(client):
    import json

    schema = json.loads(client.get("/api/schema/", {"format": "json"}).content)
    operation = schema["paths"]["/api/v1/devices/{id}/connections/"]["get"]
    assert {"200", "400", "401", "403", "404", "429"} <= set(operation["responses"])
    parameters = {parameter["name"] for parameter in operation["parameters"]}
    assert parameters == {"id", "page", "page_size"}  # no device-list filters
    page = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    item = schema["components"]["schemas"][page]["properties"]["results"]["items"]["$ref"].rsplit("/", 1)[1]
    fields = schema["components"]["schemas"][item]["properties"]
    assert set(fields) == {
        "session_id",
        "connected_at",
        "disconnected_at",
        "reason",
        "frames_relayed",
        "frames_dropped",
        "claimed_by",
    }
    assert fields["disconnected_at"]["nullable"] is True and fields["claimed_by"]["nullable"] is True
    device = schema["components"]["schemas"]["Device"]["properties"]
    for name in ("online_since", "offline_since", "last_seen_at"):
        assert device[name]["format"] == "date-time" and device[name]["nullable"] is True
    reasons = schema["components"]["schemas"]["DisconnectReasonEnum"]["enum"]
    assert set(reasons) == set(DisconnectReason.values)
