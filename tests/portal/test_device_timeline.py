"""Presence and history in the portal: the devices list reads the stored presence (it outlives
the session), and the device page shows a timeline merged from the connection rows and the
recorded events, newest first, bounded, in a fixed number of queries, refused to outsiders."""

from __future__ import annotations

import html
import re
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from connector.models import Device, DeviceConnection, DisconnectReason, Event
from portal.device_status import DISCONNECT_TEXT
from portal.device_timeline import END_TEXT, TIMELINE_LIMIT, device_timeline
from tests.portal.conftest import client_for

pytestmark = pytest.mark.django_db


def row_of(body: str, device: Device) -> str:
    return body.split(f'id="device-{device.pk}"')[1].split("</tr>")[0]


def rows(client) -> str:
    return html.unescape(client.get(reverse("portal:device_rows")).content.decode())


def timeline_html(client, device: Device) -> str:
    response = client.get(reverse("portal:device_timeline", args=[device.pk]))
    assert response.status_code == 200
    return html.unescape(response.content.decode())


def entries(body: str) -> list[tuple[str, str]]:
    """(kind, text) of each timeline row, top to bottom."""
    found = re.findall(r'<tr class="timeline-entry" data-kind="([a-z_]+)">(.*?)</tr>', body, flags=re.S)
    return [(kind, " ".join(re.sub(r"<[^>]+>", " ", cells).split())) for kind, cells in found]


class History:
    """Writes a device's history as connector.history does, at chosen times."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.seq = 0
        self.start = timezone.now() - timedelta(hours=2)

    def at(self, minutes: float):
        return self.start + timedelta(minutes=minutes)

    def event(self, type_: str, minutes: float, session_id: str = "s1", **data) -> Event:
        self.seq += 1
        return Event.objects.create(
            id=uuid.uuid4(),
            device=self.device,
            type=type_,
            session_id=session_id,
            seq=self.seq,
            occurred_at=self.at(minutes),
            data={"tsn": self.device.tsn, **data},
        )

    def period(self, start: float, end: float | None, *, session_id: str = "s1", reason: str = "", **fields):
        self.event(Event.Type.DEVICE_ONLINE, start, session_id)
        row = DeviceConnection.objects.create(
            device=self.device,
            session_id=session_id,
            connected_at=self.at(start),
            disconnected_at=None if end is None else self.at(end),
            reason=reason,
            **fields,
        )
        if end is not None:
            self.event(Event.Type.DEVICE_OFFLINE, end, session_id, reason=reason)
        return row


def a_morning(device: Device) -> History:
    """Connected, claimed, lost to a ping timeout, back in the same session, taken over by
    the application, released, offline when the session ended, deactivated, a new session."""
    history = History(device)
    history.period(0, 20, reason=DisconnectReason.PING_TIMEOUT, claimed_by="POS Till 1", frames_relayed=1234)
    history.event(Event.Type.SESSION_CLAIMED, 1, claimed_by="POS Till 1")
    history.period(21, 50, reason=DisconnectReason.SESSION_ENDED, claimed_by="Application Acme POS cloud")
    history.event(Event.Type.DEVICE_REPLACED, 22, endpoint="/upp/v1/transaction")
    history.event(Event.Type.SESSION_TAKEN_OVER, 30, claimed_by="Application Acme POS cloud", previous="POS Till 1")
    history.event(Event.Type.SESSION_RELEASED, 40, released_by="Application Acme POS cloud")
    history.event(Event.Type.SESSION_ENDED, 50, reason="ended_by_operator")
    history.event(Event.Type.DEVICE_ACTIVATION_CHANGED, 60, session_id="", active=False)
    history.event(Event.Type.DEVICE_ACTIVATION_CHANGED, 70, session_id="", active=True)
    history.period(80, None, session_id="s2", frames_relayed=7, frames_dropped=1)
    return history


# --- the devices list ------------------------------------------------------------------------


def test_the_list_shows_a_device_offline_since_when_and_why_after_its_session_ended(world):
    now = timezone.now()
    Device.objects.filter(pk=world.device.pk).update(
        online=False,
        offline_since=now - timedelta(minutes=5),
        last_seen_at=now - timedelta(minutes=6),
        last_disconnect_reason=DisconnectReason.PING_TIMEOUT,
    )
    DeviceConnection.objects.create(
        device=world.device,
        session_id="gone",
        connected_at=now - timedelta(hours=3),
        disconnected_at=now - timedelta(minutes=5),
        reason=DisconnectReason.PING_TIMEOUT,
        frames_relayed=4321,
    )
    row = row_of(rows(client_for(world.merchant_admin)), world.device)
    assert 'data-connection="offline"' in row[:40]
    assert f"since 5\xa0minutes ago: {DISCONNECT_TEXT[DisconnectReason.PING_TIMEOUT]}" in row
    # Last seen and the frames of the last connection survive the session (no session here).
    assert "6\xa0minutes ago" in row
    assert ">4321<" in row


def test_the_list_shows_an_online_device_from_its_stored_presence_alone(world):
    now = timezone.now()
    Device.objects.filter(pk=world.device.pk).update(
        online=True, online_since=now - timedelta(minutes=42), last_seen_at=now
    )
    row = row_of(rows(client_for(world.merchant_admin)), world.device)
    assert 'data-connection="online"' in row[:40]
    assert "since 42\xa0minutes ago" in row
    assert "just now" in row


def test_the_list_says_when_a_device_never_connected(world):
    row = row_of(rows(client_for(world.merchant_admin)), world.device)
    assert 'data-connection="none"' in row[:40]
    assert "never connected" in row
    assert ">never<" in row  # last seen


def test_the_list_filters_on_the_stored_presence(world):
    Device.objects.filter(pk=world.other_device.pk).update(online=True, online_since=timezone.now())
    client = client_for(world.ma_admin)
    online = client.get(reverse("portal:device_rows") + "?online=yes").content.decode()
    offline = client.get(reverse("portal:device_rows") + "?online=no").content.decode()
    assert world.other_device.tsn in online and world.device.tsn not in online
    assert world.device.tsn in offline and world.other_device.tsn not in offline


# --- the device page -------------------------------------------------------------------------


def test_the_state_says_since_when_and_why_the_device_is_offline(world):
    Device.objects.filter(pk=world.device.pk).update(
        offline_since=timezone.now() - timedelta(minutes=3),
        last_seen_at=timezone.now() - timedelta(minutes=3),
        last_disconnect_reason=DisconnectReason.SERVER_SHUTDOWN,
    )
    client = client_for(world.merchant_admin)
    body = html.unescape(client.get(reverse("portal:device_state", args=[world.device.pk])).content.decode())
    assert 'data-connection="offline"' in body
    assert "since 3\xa0minutes ago" in body
    assert f'<dd class="disconnect-reason">{DISCONNECT_TEXT[DisconnectReason.SERVER_SHUTDOWN]}</dd>' in body


def test_the_timeline_tells_the_devices_story_newest_first(world):
    a_morning(world.device)
    shown = entries(timeline_html(client_for(world.merchant_admin), world.device))
    kinds = [kind for kind, _ in shown]
    assert kinds == [
        "connected",  # s2, still online
        "activated",
        "deactivated",
        "offline",  # session ended
        "ended",
        "released",
        "taken_over",
        "replaced",
        "back",  # same session s1 after the ping timeout
        "offline",
        "claimed",
        "connected",
    ]
    text = dict(enumerate(t for _, t in shown))
    assert "Connected" in text[0] and "online now, not claimed" in text[0] and text[0].endswith("7 1")
    assert "Cloud Connector usable" in text[1] and "Cloud Connector not usable" in text[2]
    assert DISCONNECT_TEXT[DisconnectReason.SESSION_ENDED] in text[3]
    assert "online for 29 min 0 s, claimed by Application Acme POS cloud" in text[3]
    assert "Session ended" in text[4] and END_TEXT["ended_by_operator"] in text[4]
    assert "Released by Application Acme POS cloud" in text[5]
    assert "Taken over by Application Acme POS cloud from POS Till 1" in text[6]
    assert "on /upp/v1/transaction" in text[7]
    assert "Back online" in text[8]
    assert DISCONNECT_TEXT[DisconnectReason.PING_TIMEOUT] in text[9] and text[9].endswith("1234 0")
    assert "claimed by POS Till 1" in text[9]
    assert "Claimed by POS Till 1" in text[10]
    # Online and offline come from the connection rows once, not again from their events.
    assert len(shown) == 12


def test_the_device_page_shows_the_presence_and_the_timeline(world):
    a_morning(world.device)
    Device.objects.filter(pk=world.device.pk).update(online=True, online_since=timezone.now())
    page = client_for(world.merchant_admin).get(reverse("portal:device_detail", args=[world.device.pk]))
    body = html.unescape(page.content.decode())
    assert "<h2>Timeline</h2>" in body and "kept 30 days" in body
    assert body.count('class="timeline-entry"') == 12
    assert f'hx-get="/devices/{world.device.pk}/timeline/"' in body
    assert 'data-connection="online"' in body


def test_the_timeline_shows_the_last_hundred_entries_and_where_the_rest_are(world):
    history = History(world.device)
    for n in range(TIMELINE_LIMIT):
        history.period(n, n + 0.5, session_id=f"s{n}", reason=DisconnectReason.CLOSED)
    body = timeline_html(client_for(world.merchant_admin), world.device)
    shown = entries(body)
    assert len(shown) == TIMELINE_LIMIT
    # The newest half of the periods: their ends and starts, alternating from the newest end.
    assert [kind for kind, _ in shown[:4]] == ["offline", "connected", "offline", "connected"]
    assert f"Showing the last {TIMELINE_LIMIT} entries" in body
    assert f'href="/api/v1/devices/{world.device.pk}/connections/"' in body


def test_a_short_timeline_does_not_send_anyone_to_the_api(world):
    History(world.device).period(0, 1, reason=DisconnectReason.CLOSED)
    body = timeline_html(client_for(world.merchant_admin), world.device)
    assert len(entries(body)) == 2
    assert "Showing the last" not in body


def test_a_device_with_no_history_says_so(world):
    body = timeline_html(client_for(world.merchant_admin), world.device)
    assert "Nothing has happened to this device yet." in body
    assert entries(body) == []


def test_the_timeline_costs_two_queries_however_long_it_is(world):
    history = History(world.device)
    history.period(0, 1, reason=DisconnectReason.CLOSED)
    with CaptureQueriesContext(connection) as few:
        device_timeline(device=world.device)
    for n in range(2, 60):
        history.period(n, n + 0.5, reason=DisconnectReason.CLOSED)
        history.event(Event.Type.SESSION_CLAIMED, n + 0.2, claimed_by="POS Till 1")
    with CaptureQueriesContext(connection) as many:
        timeline = device_timeline(device=world.device)
    assert len(few.captured_queries) == len(many.captured_queries) == 2
    assert len(timeline.entries) == TIMELINE_LIMIT and timeline.truncated


def test_an_unknown_event_type_is_shown_as_it_is_stored(world):
    event = History(world.device).event("device.something_new", 1)
    [(kind, text)] = entries(timeline_html(client_for(world.merchant_admin), world.device))
    assert kind == "event"
    assert text.startswith(f"{event.occurred_at:%Y-%m-%d %H:%M:%S} device.something_new")


def test_the_timeline_of_a_device_outside_the_scope_is_not_found(world):
    a_morning(world.device)
    for user in (world.other_merchant_admin, world.far_ma_admin):
        client = client_for(user)
        assert client.get(reverse("portal:device_timeline", args=[world.device.pk])).status_code == 404
        assert client.get(reverse("portal:device_detail", args=[world.device.pk])).status_code == 404


def test_a_viewer_of_the_merchant_sees_the_timeline(world):
    a_morning(world.device)
    assert len(entries(timeline_html(client_for(world.merchant_viewer), world.device))) == 12


def test_signed_out_visitors_are_sent_to_sign_in(world):
    response = client_for(None).get(reverse("portal:device_timeline", args=[world.device.pk]))
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]
