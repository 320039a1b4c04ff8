"""The Webhooks pages in a real browser (Chromium through Playwright) against the live daphne
server: an aggregator's admin adds an endpoint for one of its merchants (a field error first),
copies the signing secret shown once, reads the delivery log and presses "Retry now". Screenshots
as in tests/portal/test_browser.py (SCREENSHOTS_DIR, or the test's temporary folder)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from connector.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tests.portal import test_browser
from tests.portal.test_browser import CHROMIUM, copy_and_read, nav, sign_in

# The browser, its pages and the screenshots of the portal's browser tests.
browser = test_browser.browser
new_page = test_browser.new_page
shot = test_browser.shot

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]

HOOK = "https://backoffice.example.com/cloud-connector/events"


def failed_delivery(endpoint: WebhookEndpoint, device) -> WebhookDelivery:
    """A delivery the retries gave up on, with its attempts, as the worker leaves it."""
    now = timezone.now()
    event = Event.objects.create(
        device=device, type="device.offline", seq=1, occurred_at=now - timedelta(hours=27), data={"tsn": device.tsn}
    )
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint,
        event=event,
        created_at=event.occurred_at,
        status=WebhookDelivery.Status.FAILED,
        attempts=2,
        response_code=503,
        duration_ms=140,
        error="HTTP 503",
        last_attempt_at=now - timedelta(hours=1),
    )
    WebhookAttempt.objects.create(
        delivery=delivery, attempted_at=now - timedelta(hours=1), response_code=503, duration_ms=140, error="HTTP 503"
    )
    WebhookAttempt.objects.create(
        delivery=delivery, attempted_at=now - timedelta(hours=27), duration_ms=10_000, error="timed out"
    )
    return delivery


def test_an_aggregator_admin_adds_a_webhook_and_retries_a_delivery(world, new_page, live, shot):
    page = new_page()
    sign_in(page, world.ma_admin.username)

    nav(page, "Webhooks").click()
    page.get_by_text("No webhook endpoints yet.").wait_for()
    page.locator("main").get_by_role("link", name="Add an endpoint").click()
    page.get_by_label("Events of the devices of").select_option(label="Merchant Corner Shop (Acme Aggregation)")
    page.get_by_label("URL").fill("backoffice.example.com/in")
    page.get_by_role("button", name="Add endpoint").click()
    page.get_by_text("Enter a valid URL.").wait_for()
    page.get_by_text("Choose at least one event type.").wait_for()
    shot(page, "webhooks-01-field-errors")
    assert not WebhookEndpoint.objects.exists()

    page.get_by_label("URL").fill(HOOK)
    page.get_by_label("device.online: a device connected").check()
    page.get_by_label("device.offline: a device went offline (with the reason)").check()
    page.get_by_role("button", name="Add endpoint").click()
    page.get_by_text("Copy the signing secret now: it will not be shown again.").wait_for()
    shot(page, "webhooks-02-secret-shown-once")
    secret = copy_and_read(page, 'button[data-copy="#webhook-secret"]')
    endpoint = WebhookEndpoint.objects.get()
    assert secret == endpoint.secret
    assert (endpoint.url, endpoint.merchant_id, endpoint.events) == (
        HOOK,
        world.merchant.pk,
        ["device.online", "device.offline"],
    )

    delivery = failed_delivery(endpoint, world.device)
    page.get_by_role("link", name="I have copied the secret: go to the endpoint").click()
    page.locator("#deliveries").wait_for()
    assert secret not in page.content()
    row = page.locator(f"#delivery-{delivery.pk}")
    assert "failed" in row.inner_text() and "503" in row.inner_text()
    page.get_by_text("Attempts (2)").click()
    page.get_by_text("timed out").wait_for()
    shot(page, "webhooks-03-delivery-log")

    row.get_by_role("button", name="Retry now").click()
    page.get_by_text("queued to be sent again now").wait_for()
    assert "retrying" in page.locator(f"#delivery-{delivery.pk}").inner_text()
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.RETRYING
    assert DBTaskResult.objects.filter(queue_name="webhooks").exists()
    shot(page, "webhooks-04-retried")

    nav(page, "Webhooks").click()
    listed = page.locator("table").inner_text()
    assert HOOK in listed and re.search(r"retrying", listed)
