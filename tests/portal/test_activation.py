"""Cloud Connector switched on and off for the aggregator, its merchants and devices."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.scope import SYSTEM
from connector import services as connector_services
from connector.models import Activation, DeviceSession
from tests.factories import DeviceFactory
from tests.portal.conftest import client_for

pytestmark = pytest.mark.django_db


def live_session(device, state=DeviceSession.State.ONLINE, **fields) -> DeviceSession:
    from datetime import timedelta

    from django.utils import timezone

    return DeviceSession.objects.create(
        id=f"s-{device.pk}-{state}",
        device=device,
        state=state,
        jwt_expires_at=timezone.now() + timedelta(minutes=5),
        **fields,
    )


def test_activating_the_aggregator_shows_how_many_devices_it_touches_first(world):
    client = client_for(world.ma_admin)
    url = reverse("portal:aggregator_switch", args=[world.ma.pk, "activate"])
    page = client.get(url).content.decode()
    assert "This affects 2 devices" in page
    assert not Activation.objects.filter(merchant_aggregator=world.ma).exists()
    response = client.post(url)
    assert response["Location"] == reverse("portal:cloud_connector")
    assert connector_services.is_active(obj=world.ma)
    assert connector_services.is_active(obj=world.device)
    assert connector_services.is_active(obj=world.other_device)


def test_activating_a_merchant_activates_its_devices_and_says_how_many(world):
    client = client_for(world.ma_admin)
    url = reverse("portal:merchant_switch", args=[world.merchant.pk, "activate"])
    assert "This affects 1 device:" in client.get(url).content.decode()
    response = client.post(url, follow=True)
    assert "1 device was activated with it." in response.content.decode()
    assert connector_services.is_active(obj=world.merchant)
    assert connector_services.is_active(obj=world.device)
    assert not connector_services.is_active(obj=world.other_device)


def test_deactivating_a_merchant_says_which_sessions_end_and_ends_them(world):
    connector_services.subscription_create(tenant=world.tenant, actor=SYSTEM)
    connector_services.service_activate(obj=world.ma, actor=SYSTEM)
    connector_services.service_activate(obj=world.merchant, actor=SYSTEM)
    session = live_session(world.device)
    client = client_for(world.ma_admin)
    url = reverse("portal:merchant_switch", args=[world.merchant.pk, "deactivate"])
    page = client.get(url).content.decode()
    assert "This affects 1 device:" in page and "1 live session ends now" in page
    client.post(url)
    assert not connector_services.is_active(obj=world.merchant)
    session.refresh_from_db()
    assert session.state == DeviceSession.State.ENDED


def test_a_merchant_user_may_not_switch_the_merchant_or_the_aggregator(world):
    client = client_for(world.merchant_admin)
    for url in (
        reverse("portal:merchant_switch", args=[world.merchant.pk, "activate"]),
        reverse("portal:aggregator_switch", args=[world.ma.pk, "activate"]),
    ):
        assert client.post(url).status_code == 403
    assert not Activation.objects.exists()
    page = client.get(reverse("portal:cloud_connector")).content.decode()
    assert "Activate…" not in page


def test_an_unknown_switch_action_is_not_found(world):
    client = client_for(world.ma_admin)
    assert client.post(reverse("portal:merchant_switch", args=[world.merchant.pk, "explode"])).status_code == 404


def test_a_device_created_after_its_merchant_was_activated_is_activated_on_its_page(world):
    connector_services.subscription_create(tenant=world.tenant, actor=SYSTEM)
    connector_services.service_activate(obj=world.ma, actor=SYSTEM)
    connector_services.service_activate(obj=world.merchant, actor=SYSTEM)
    late = DeviceFactory(store=world.store, serial="230000099")
    client = client_for(world.merchant_admin)
    page = client.get(reverse("portal:device_detail", args=[late.pk])).content.decode()
    assert "it was created after its merchant was activated, so it must be activated itself" in page
    assert "Activate Cloud Connector" in page
    client.post(reverse("portal:device_switch", args=[late.pk, "activate"]))
    assert connector_services.device_unusable_reason(device=late) is None


def test_the_cloud_connector_page_shows_each_level(world):
    connector_services.service_activate(obj=world.merchant, actor=SYSTEM)
    page = client_for(world.ma_admin).get(reverse("portal:cloud_connector")).content.decode()
    assert "not subscribed" in page
    marker = f'id="merchant-{world.merchant.pk}"'
    assert marker in page
    row = page.split(marker)[1].split("</tr>")[0]
    assert "active" in row and "Deactivate…" in row


def test_the_cloud_connector_page_shows_a_subscribed_tenant_as_subscribed(world):
    connector_services.subscription_create(tenant=world.tenant, actor=SYSTEM)
    page = client_for(world.ma_admin).get(reverse("portal:cloud_connector")).content.decode()
    assert '<span class="badge ok">subscribed</span>' in page
    assert "not subscribed" not in page
