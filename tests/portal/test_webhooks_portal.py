"""The portal's Webhooks pages: the list, create with the secret shown once, edit with field
errors, rotate, delete, and the delivery log with its "Retry now" button; each scoped, so that
another merchant's endpoint is a 404 and a read-only role only reads."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from accounts.models import User
from accounts.scope import SYSTEM
from connector import webhook_endpoints
from connector.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tests.portal.conftest import client_for

pytestmark = pytest.mark.django_db

HOOK = "https://backoffice.example.com/cc"


def shown_secret(body: str) -> str:
    return re.search(r'<code id="webhook-secret">([^<]+)</code>', body).group(1)


def endpoint_of(*, merchant=None, merchant_aggregator=None, url: str = HOOK) -> WebhookEndpoint:
    return webhook_endpoints.webhook_endpoint_create(
        url=url, events=["device.online"], merchant=merchant, merchant_aggregator=merchant_aggregator, actor=SYSTEM
    )


@pytest.fixture
def home_hook(world) -> WebhookEndpoint:
    return endpoint_of(merchant=world.merchant, url="https://corner.example.com/hooks")


@pytest.fixture
def ma_hook(world) -> WebhookEndpoint:
    return endpoint_of(merchant_aggregator=world.ma, url="https://acme.example.com/hooks")


@pytest.fixture
def rival_hook(world) -> WebhookEndpoint:
    return endpoint_of(merchant=world.other_merchant, url="https://rival.example.com/hooks")


def delivery_for(endpoint: WebhookEndpoint, device, **fields) -> WebhookDelivery:
    now = timezone.now()
    event = Event.objects.create(
        device=device,
        type=fields.pop("type", "device.offline"),
        seq=Event.objects.filter(device=device).count() + 1,
        occurred_at=now,
        data={"tsn": device.tsn, "reason": "ping_timeout"},
    )
    return WebhookDelivery.objects.create(endpoint=endpoint, event=event, created_at=now, **fields)


# --- the list ------------------------------------------------------------------------------------


def test_the_navigation_offers_webhooks_to_merchants_and_aggregators(world):
    for user in (world.ma_admin, world.merchant_viewer):
        page = client_for(user).get(reverse("portal:home")).content.decode()
        assert f'href="{reverse("portal:webhook_list")}">Webhooks</a>' in page


def test_the_list_shows_the_endpoints_in_scope_with_their_last_delivery(world, home_hook, ma_hook, rival_hook):
    delivery_for(home_hook, world.device, status=WebhookDelivery.Status.FAILED)
    page = client_for(world.ma_admin).get(reverse("portal:webhook_list")).content.decode()
    for hook in (home_hook, ma_hook, rival_hook):
        assert hook.url in page
    assert "Aggregator Acme Aggregation (all its merchants)" in page
    assert "Merchant Corner Shop (Acme Aggregation)" in page
    assert '<span class="badge bad">failed</span>' in page
    assert "none yet" in page

    merchant_page = client_for(world.merchant_admin).get(reverse("portal:webhook_list")).content.decode()
    assert home_hook.url in merchant_page
    assert ma_hook.url not in merchant_page and rival_hook.url not in merchant_page


def test_a_user_without_a_place_gets_no_webhooks_page(world):
    drifter = User.objects.create_user(username="drifter", password="a long enough passphrase 42")
    assert client_for(drifter).get(reverse("portal:webhook_list")).status_code == 404
    assert client_for(drifter).get(reverse("portal:webhook_create")).status_code == 404


# --- create --------------------------------------------------------------------------------------


def test_a_merchant_admin_adds_an_endpoint_and_sees_its_secret_once(world):
    client = client_for(world.merchant_admin)
    form = client.get(reverse("portal:webhook_create")).content.decode()
    assert 'name="scope"' not in form  # one merchant: nothing to choose
    assert 'value="device.offline"' in form and 'value="device.replaced"' not in form
    response = client.post(
        reverse("portal:webhook_create"), {"url": HOOK, "events": ["device.online", "device.offline"], "enabled": "on"}
    )
    assert response.status_code == 200
    body = response.content.decode()
    endpoint = WebhookEndpoint.objects.get()
    assert (endpoint.merchant, endpoint.merchant_aggregator, endpoint.tenant) == (world.merchant, None, world.tenant)
    assert endpoint.events == ["device.online", "device.offline"] and endpoint.enabled
    assert shown_secret(body) == endpoint.secret
    assert "it will not be shown again" in body
    assert "no-store" in response["Cache-Control"]
    detail = client.get(reverse("portal:webhook_detail", args=[endpoint.pk])).content.decode()
    assert endpoint.secret not in detail
    assert endpoint.secret not in client.get(reverse("portal:webhook_list")).content.decode()


def test_an_aggregator_admin_chooses_the_aggregator_or_one_of_its_merchants(world):
    client = client_for(world.ma_admin)
    form = client.get(reverse("portal:webhook_create")).content.decode()
    assert f'value="ma-{world.ma.pk}"' in form
    assert f'value="merchant-{world.other_merchant.pk}"' in form
    assert f'value="ma-{world.sister_ma.pk}"' not in form
    assert f'value="merchant-{world.far_merchant.pk}"' not in form
    response = client.post(
        reverse("portal:webhook_create"), {"scope": f"ma-{world.ma.pk}", "url": HOOK, "events": ["session.claimed"]}
    )
    assert response.status_code == 200
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.merchant_aggregator == world.ma and endpoint.merchant is None
    assert endpoint.enabled is False  # the box was left unticked


def test_a_scope_outside_the_users_reach_is_refused(world):
    client = client_for(world.ma_admin)
    response = client.post(
        reverse("portal:webhook_create"),
        {"scope": f"merchant-{world.far_merchant.pk}", "url": HOOK, "events": ["device.online"]},
    )
    assert "Select a valid choice" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"url": "http://backoffice.example.com/cc", "events": ["device.online"]}, "must use https://"),
        ({"url": "https://192.168.0.10/cc", "events": ["device.online"]}, "private, loopback"),
        ({"url": "not a url", "events": ["device.online"]}, "Enter a valid URL."),
        ({"url": "", "events": ["device.online"]}, "This field is required."),
        ({"url": HOOK}, "Choose at least one event type."),
        ({"url": HOOK, "events": ["device.replaced"]}, "Select a valid choice."),
    ],
)
def test_the_form_shows_field_errors_inline(world, data, message):
    response = client_for(world.merchant_admin).post(reverse("portal:webhook_create"), data)
    assert response.status_code == 200
    body = response.content.decode()
    assert message in body
    assert 'class="field has-error"' in body
    assert not WebhookEndpoint.objects.exists()


def test_http_is_accepted_in_debug(world, settings):
    settings.DEBUG = True
    response = client_for(world.merchant_admin).post(
        reverse("portal:webhook_create"), {"url": "http://127.0.0.1:9000/in", "events": ["device.online"]}
    )
    assert response.status_code == 200
    assert WebhookEndpoint.objects.get().url == "http://127.0.0.1:9000/in"


# --- edit, rotate, delete ------------------------------------------------------------------------


def test_the_admin_edits_the_url_events_and_switch(world, home_hook):
    client = client_for(world.merchant_admin)
    edit = reverse("portal:webhook_edit", args=[home_hook.pk])
    form = client.get(edit).content.decode()
    assert f'value="{home_hook.url}"' in form
    assert re.search(r'value="device.online"[^>]*checked', form)
    response = client.post(edit, {"url": "https://new.example.com/in", "events": ["session.ended", "device.offline"]})
    assert response.status_code == 302
    home_hook.refresh_from_db()
    assert home_hook.url == "https://new.example.com/in"
    assert home_hook.events == ["session.ended", "device.offline"]
    assert home_hook.enabled is False


def test_a_bad_edit_shows_the_error_and_changes_nothing(world, home_hook):
    edit = reverse("portal:webhook_edit", args=[home_hook.pk])
    response = client_for(world.merchant_admin).post(
        edit, {"url": "https://127.0.0.1/in", "events": ["device.online"], "enabled": "on"}
    )
    assert response.status_code == 200
    assert "private, loopback" in response.content.decode()
    home_hook.refresh_from_db()
    assert home_hook.url == "https://corner.example.com/hooks"


def test_rotating_shows_the_new_secret_once(world, home_hook):
    client = client_for(world.merchant_admin)
    rotate = reverse("portal:webhook_rotate", args=[home_hook.pk])
    assert "signs nothing from now on" in client.get(rotate).content.decode()
    old = home_hook.secret
    response = client.post(rotate)
    home_hook.refresh_from_db()
    assert home_hook.secret != old
    assert shown_secret(response.content.decode()) == home_hook.secret
    assert "no-store" in response["Cache-Control"]


def test_deleting_removes_the_endpoint(world, home_hook):
    client = client_for(world.merchant_admin)
    delete = reverse("portal:webhook_delete", args=[home_hook.pk])
    assert client.get(delete).status_code == 200
    response = client.post(delete)
    assert response.status_code == 302 and response["Location"] == reverse("portal:webhook_list")
    assert not WebhookEndpoint.objects.exists()


# --- the delivery log ----------------------------------------------------------------------------


def test_the_delivery_log_shows_attempts_status_code_duration_and_next_retry(world, home_hook):
    now = timezone.now()
    delivery = delivery_for(
        home_hook,
        world.device,
        status=WebhookDelivery.Status.RETRYING,
        attempts=2,
        response_code=503,
        duration_ms=87,
        error="HTTP 503",
        last_attempt_at=now,
        next_attempt_at=now + timedelta(minutes=3),
    )
    WebhookAttempt.objects.create(
        delivery=delivery, attempted_at=now, response_code=503, duration_ms=87, error="HTTP 503"
    )
    WebhookAttempt.objects.create(
        delivery=delivery, attempted_at=now - timedelta(seconds=20), duration_ms=10_000, error="timed out"
    )
    page = client_for(world.merchant_admin).get(reverse("portal:webhook_detail", args=[home_hook.pk])).content.decode()
    assert "device.offline" in page and str(delivery.event_id) in page
    assert '<span class="badge warn">retrying</span>' in page
    assert "503" in page and "87 ms" in page and "10000 ms" in page and "timed out" in page
    assert (now + timedelta(minutes=3)).strftime("%Y-%m-%d %H:%M") in page
    assert "Attempts (2)" in page
    retry = reverse("portal:webhook_retry", args=[home_hook.pk, delivery.pk])
    assert re.search(rf'<form method="post" action="{retry}"><input type="hidden" name="csrfmiddlewaretoken"', page)
    assert "Retry now" in page


def test_retry_now_queues_the_delivery(world, home_hook):
    delivery = delivery_for(home_hook, world.device, status=WebhookDelivery.Status.FAILED, attempts=9)
    client = client_for(world.merchant_admin)
    retry = reverse("portal:webhook_retry", args=[home_hook.pk, delivery.pk])
    assert client.get(retry).status_code == 405
    response = client.post(retry, follow=True)
    assert response.redirect_chain == [(reverse("portal:webhook_detail", args=[home_hook.pk]), 302)]
    assert "queued to be sent again now" in response.content.decode()
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.RETRYING
    assert DBTaskResult.objects.filter(queue_name="webhooks", status="READY").count() == 1


def test_retry_now_needs_the_csrf_token(world, home_hook):
    delivery = delivery_for(home_hook, world.device, status=WebhookDelivery.Status.FAILED)
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.merchant_admin)
    assert client.post(reverse("portal:webhook_retry", args=[home_hook.pk, delivery.pk])).status_code == 403
    assert not DBTaskResult.objects.exists()


# --- scope and roles -----------------------------------------------------------------------------


def test_a_read_only_user_reads_but_is_offered_and_allowed_no_write(world, home_hook):
    delivery = delivery_for(home_hook, world.device, status=WebhookDelivery.Status.FAILED)
    client = client_for(world.merchant_viewer)
    assert "Add an endpoint" not in client.get(reverse("portal:webhook_list")).content.decode()
    page = client.get(reverse("portal:webhook_detail", args=[home_hook.pk])).content.decode()
    assert home_hook.url in page
    assert "Retry now" not in page and "Rotate secret" not in page
    for name, args in (
        ("portal:webhook_create", []),
        ("portal:webhook_edit", [home_hook.pk]),
        ("portal:webhook_rotate", [home_hook.pk]),
        ("portal:webhook_delete", [home_hook.pk]),
        ("portal:webhook_retry", [home_hook.pk, delivery.pk]),
    ):
        assert client.post(reverse(name, args=args), {"url": HOOK, "events": ["device.online"]}).status_code == 403
    assert WebhookEndpoint.objects.count() == 1
    assert not DBTaskResult.objects.exists()


@pytest.mark.parametrize("outsider", ["other_merchant_admin", "far_ma_admin"])
def test_another_merchants_endpoint_is_a_404_on_every_page(world, home_hook, outsider):
    delivery = delivery_for(home_hook, world.device)
    client = client_for(getattr(world, outsider))
    assert home_hook.url not in client.get(reverse("portal:webhook_list")).content.decode()
    for name, args in (
        ("portal:webhook_detail", [home_hook.pk]),
        ("portal:webhook_edit", [home_hook.pk]),
        ("portal:webhook_rotate", [home_hook.pk]),
        ("portal:webhook_delete", [home_hook.pk]),
    ):
        assert client.get(reverse(name, args=args)).status_code == 404, name
        assert client.post(reverse(name, args=args)).status_code == 404, name
    assert client.post(reverse("portal:webhook_retry", args=[home_hook.pk, delivery.pk])).status_code == 404
    home_hook.refresh_from_db()
    assert WebhookEndpoint.objects.filter(pk=home_hook.pk, secret=home_hook.secret).exists()


def test_a_merchant_admin_cannot_reach_its_aggregators_endpoint(world, ma_hook):
    client = client_for(world.merchant_admin)
    assert client.get(reverse("portal:webhook_detail", args=[ma_hook.pk])).status_code == 404
    assert client.post(reverse("portal:webhook_delete", args=[ma_hook.pk])).status_code == 404
    assert WebhookEndpoint.objects.filter(pk=ma_hook.pk).exists()


def test_a_delivery_of_another_endpoint_cannot_be_retried_through_this_one(world, home_hook, rival_hook):
    theirs = delivery_for(rival_hook, world.other_device, status=WebhookDelivery.Status.FAILED)
    response = client_for(world.ma_admin).post(reverse("portal:webhook_retry", args=[home_hook.pk, theirs.pk]))
    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == WebhookDelivery.Status.FAILED
