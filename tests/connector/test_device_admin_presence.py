"""The device admin shows the presence the relay writes (v1.1 §11) and never lets it be
edited: a staff member's form must not contradict the device's sockets."""

from __future__ import annotations

import html
from datetime import UTC, datetime

import pytest
from django.urls import reverse

from connector.models import Device, DisconnectReason
from tests.factories import make_user

pytestmark = pytest.mark.django_db

SEEN = datetime(2026, 12, 2, 17, 6, 23, tzinfo=UTC)


@pytest.fixture
def staff(client):
    client.force_login(make_user(username="ops", is_staff=True))
    return client


def test_the_change_page_shows_the_presence_read_only(world, staff):
    Device.objects.filter(pk=world.device.pk).update(
        online=False, offline_since=SEEN, last_seen_at=SEEN, last_disconnect_reason=DisconnectReason.PING_TIMEOUT
    )
    response = staff.get(reverse("admin:connector_device_change", args=[world.device.pk]))
    assert response.status_code == 200
    form = response.context["adminform"].form
    for name in ("online", "online_since", "offline_since", "last_seen_at", "last_disconnect_reason"):
        assert name not in form.fields, name
    body = html.unescape(response.content.decode())
    for label in ("Online", "Online since", "Offline since", "Last seen at", "Last disconnect reason"):
        assert f">{label}:<" in body, label
    assert "ping_timeout" in body
    assert "Dec. 2, 2026, 5:06 p.m." in body


def test_posting_presence_values_changes_nothing(world, staff):
    device = world.device
    url = reverse("admin:connector_device_change", args=[device.pk])
    data = {
        "merchant": device.merchant_id,
        "store": device.store_id,
        "make": device.make,
        "model": device.model,
        "serial": device.serial,
        "enabled": "on",
        "provisioned": "on",
        "online": "on",
        "last_seen_at_0": "2030-01-01",
        "last_seen_at_1": "00:00:00",
        "last_disconnect_reason": "closed",
        "_save": "Save",
        # The client-certificates inline's management form, as the page sends it.
        "certificates-TOTAL_FORMS": "0",
        "certificates-INITIAL_FORMS": "0",
    }
    response = staff.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    device.refresh_from_db()
    assert device.online is False
    assert device.last_seen_at is None
    assert device.last_disconnect_reason == ""


def test_the_list_shows_online_and_last_seen(world, staff):
    Device.objects.filter(pk=world.device.pk).update(online=True, online_since=SEEN, last_seen_at=SEEN)
    response = staff.get(reverse("admin:connector_device_changelist"), {"online": "yes"})
    assert [device.pk for device in response.context["cl"].result_list] == [world.device.pk]
    assert "column-last_seen_at" in response.content.decode()
