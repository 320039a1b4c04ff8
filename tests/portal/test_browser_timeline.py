"""The device page's presence and timeline in a real browser (Chromium through Playwright)
against the live server: the story of a morning read newest first, a new fact appearing on
the open page without a reload, the page usable at phone width, and a screenshot of each
(to the test's temporary folder, or to SCREENSHOTS_DIR as in tests/portal/test_browser.py).

The history is written directly, as connector.history writes it; the relay writing it
end to end is tested with the relay."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from connector.models import Device, DeviceConnection, DisconnectReason, Event
from portal.device_status import DISCONNECT_TEXT

# The browser, page and screenshot fixtures of the portal's browser tests, and its sign-in.
from tests.portal.test_browser import CHROMIUM, browser, new_page, shot, sign_in  # noqa: F401

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]


def write_morning(device: Device) -> None:
    """Activated, then connected and claimed by the POS, lost to a ping timeout, back, taken
    over by the application, the session ended by an operator; online again in a new session."""
    start = timezone.now() - timedelta(hours=3)
    # Cloud Connector was switched on for the device (the world's marker) before all this.
    Event.objects.filter(device=device).update(occurred_at=start - timedelta(minutes=10))
    device.refresh_from_db()
    seq = iter(range(device.event_seq + 1, device.event_seq + 100))

    def event(type_: str, minutes: int, session_id: str = "sess-morning", **data) -> None:
        Event.objects.create(
            id=uuid.uuid4(),
            device=device,
            type=type_,
            session_id=session_id,
            seq=next(seq),
            occurred_at=start + timedelta(minutes=minutes),
            data={"tsn": device.tsn, **data},
        )

    def period(begin: int, end: int | None, reason: str = "", session_id: str = "sess-morning", **fields) -> None:
        DeviceConnection.objects.create(
            device=device,
            session_id=session_id,
            connected_at=start + timedelta(minutes=begin),
            disconnected_at=None if end is None else start + timedelta(minutes=end),
            reason=reason,
            **fields,
        )

    period(0, 45, DisconnectReason.PING_TIMEOUT, claimed_by="POS Till 1", frames_relayed=1834, frames_dropped=3)
    event(Event.Type.SESSION_CLAIMED, 1, claimed_by="POS Till 1")
    period(46, 120, DisconnectReason.SESSION_ENDED, claimed_by="Application Acme POS cloud", frames_relayed=912)
    event(Event.Type.SESSION_TAKEN_OVER, 60, claimed_by="Application Acme POS cloud", previous="POS Till 1")
    event(Event.Type.SESSION_ENDED, 120, reason="ended_by_operator")
    period(125, None, session_id="sess-afternoon", frames_relayed=42)
    Device.objects.filter(pk=device.pk).update(
        online=True,
        online_since=start + timedelta(minutes=125),
        offline_since=None,
        last_seen_at=timezone.now() - timedelta(seconds=4),
        last_disconnect_reason=DisconnectReason.SESSION_ENDED,
        event_seq=next(seq) - 1,
    )


@pytest.mark.cloud_connector_on
def test_the_device_page_shows_presence_and_the_timeline_live(world, new_page, live, shot):  # noqa: F811
    device = world.device
    write_morning(device)
    page = new_page()
    sign_in(page, world.merchant_admin.username)

    page.goto("/devices/")
    row = page.locator(f"#device-{device.pk}")
    assert row.get_attribute("data-connection") == "online"
    assert "since 55" in row.inner_text()  # online since 55 minutes ago

    page.get_by_role("link", name=device.tsn).click()
    page.wait_for_selector('#device-state[data-connection="online"]')
    assert DISCONNECT_TEXT[DisconnectReason.SESSION_ENDED] in page.locator(".disconnect-reason").inner_text()
    timeline = page.locator("#timeline tr.timeline-entry")
    kinds = [timeline.nth(i).get_attribute("data-kind") for i in range(timeline.count())]
    assert kinds == [
        "connected",
        "offline",
        "ended",
        "taken_over",
        "back",
        "offline",
        "claimed",
        "connected",
        "activated",
    ]
    assert "Taken over by Application Acme POS cloud" in timeline.nth(3).inner_text()
    assert "1834" in timeline.nth(5).inner_text()
    page.locator("#history").scroll_into_view_if_needed()
    shot(page, "13-device-timeline")

    # The terminal drops off: the relay closes the period and the page shows it by itself.
    went = timezone.now()
    DeviceConnection.objects.filter(device=device, disconnected_at__isnull=True).update(
        disconnected_at=went, reason=DisconnectReason.CLOSED
    )
    Device.objects.filter(pk=device.pk).update(
        online=False, online_since=None, offline_since=went, last_disconnect_reason=DisconnectReason.CLOSED
    )
    page.wait_for_selector('#device-state[data-connection="offline"]')
    page.wait_for_selector('#timeline tbody tr:first-child[data-kind="offline"]')
    assert DISCONNECT_TEXT[DisconnectReason.CLOSED] in page.locator("#timeline tr.timeline-entry").first.inner_text()
    assert DISCONNECT_TEXT[DisconnectReason.CLOSED] in page.locator(".disconnect-reason").inner_text()
    shot(page, "14-device-timeline-offline")


@pytest.mark.cloud_connector_on
def test_the_device_page_with_its_timeline_fits_a_phone(world, new_page, live, shot):  # noqa: F811
    write_morning(world.device)
    page = new_page(width=390, height=844)
    sign_in(page, world.merchant_admin.username)
    page.goto(f"/devices/{world.device.pk}/")
    page.locator("#timeline tr.timeline-entry").first.wait_for()
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    page.locator("#history").scroll_into_view_if_needed()
    shot(page, "15-phone-device-timeline", full_page=False)


def test_an_outsider_gets_not_found_on_the_timeline(world, new_page, live):  # noqa: F811
    write_morning(world.device)
    page = new_page()
    sign_in(page, world.other_merchant_admin.username)
    for path in (f"/devices/{world.device.pk}/", f"/devices/{world.device.pk}/timeline/"):
        assert page.goto(path).status == 404, path
