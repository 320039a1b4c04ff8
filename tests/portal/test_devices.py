"""Devices: state at a glance, filters, the live fragment, ending sessions, configuration."""

from __future__ import annotations

import html
import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.scope import SYSTEM, principal_for_user
from connector import services as connector_services
from connector.models import Device, DeviceSession
from connector.services import Unusable
from portal.device_status import REASON_TEXT, devices_for_portal
from tests.factories import DeviceFactory, make_pos, make_usable_device
from tests.portal.conftest import client_for

pytestmark = pytest.mark.django_db


def session_for(device, state=DeviceSession.State.ONLINE, **fields) -> DeviceSession:
    """A session in `state`; an online one also makes the device online, as the relay's
    presence transition does (connector.history.went_online)."""
    now = timezone.now()
    defaults = {"jwt_expires_at": now + timedelta(minutes=5)}
    if state == DeviceSession.State.ONLINE:
        defaults.update(online_at=now - timedelta(minutes=3), last_seen_at=now)
        Device.objects.filter(pk=device.pk).update(
            online=True, online_since=defaults["online_at"], offline_since=None, last_seen_at=now
        )
    defaults.update(fields)
    return DeviceSession.objects.create(id=f"sess-{device.pk}-{state}", device=device, state=state, **defaults)


def rows(client, query: str = "") -> str:
    return client.get(reverse("portal:device_rows") + query).content.decode()


def test_each_reason_a_device_cannot_use_cloud_connector_is_said_plainly(world):
    device = world.device
    client = client_for(world.merchant_admin)

    def page() -> str:
        return html.unescape(client.get(reverse("portal:device_detail", args=[device.pk])).content.decode())

    assert REASON_TEXT[Unusable.SUBSCRIPTION] in page()
    connector_services.subscription_create(tenant=world.tenant, actor=SYSTEM)
    assert REASON_TEXT[Unusable.MERCHANT_AGGREGATOR] in page()
    from connector.models import Activation

    Activation.objects.create(service=connector_services.cloud_connector(), merchant_aggregator=world.ma)
    assert REASON_TEXT[Unusable.MERCHANT] in page()
    Activation.objects.create(service=connector_services.cloud_connector(), merchant=world.merchant)
    assert REASON_TEXT[Unusable.DEVICE] in page()
    connector_services.service_activate(obj=device, actor=SYSTEM)
    assert 'Cloud Connector</dt>\n    <dd class="activation"><span class="badge ok">active</span>' in page()
    device.enabled = False
    device.save()
    assert REASON_TEXT[Unusable.DISABLED] in page()


@pytest.mark.parametrize("step", range(6))
def test_the_reason_read_from_annotations_agrees_with_the_service(world, step):
    device = world.device
    service = connector_services.cloud_connector()
    from connector.models import Activation

    if step >= 1:
        connector_services.subscription_create(tenant=world.tenant, actor=SYSTEM)
    if step >= 2:
        Activation.objects.create(service=service, merchant_aggregator=world.ma)
    if step >= 3:
        Activation.objects.create(service=service, merchant=world.merchant)
    if step >= 4:
        Activation.objects.create(service=service, device=device)
    if step == 5:
        device.provisioned = False
        device.save()
    annotated = devices_for_portal(principal=principal_for_user(world.merchant_admin)).get(pk=device.pk)
    assert connector_services.unusable_reason_from_flags(annotated) == connector_services.device_unusable_reason(
        device=device
    )


def test_the_list_shows_who_holds_a_device_since_when_and_the_frames_relayed(world):
    device = make_usable_device(store=world.store, serial="230000050")
    session_for(
        device,
        claimed_by=world.pos.application,
        claimed_at=timezone.now() - timedelta(minutes=2),
        frames_relayed=1234,
    )
    app_device = DeviceFactory(store=world.store, serial="230000051")
    session_for(app_device, claimed_by=world.app.application, claimed_at=timezone.now())
    body = rows(client_for(world.merchant_admin))
    row = body.split(f'id="device-{device.pk}"')[1].split("</tr>")[0]
    assert "online" in row and "claimed" in row and "by POS Till 1" in row
    assert "since 2\xa0minutes ago" in row and "1234" in row and "just now" in row
    app_row = body.split(f'id="device-{app_device.pk}"')[1].split("</tr>")[0]
    assert "by Application Acme POS cloud" in app_row


def test_a_free_offline_and_a_registered_device_read_as_such(world):
    session_for(world.device, state=DeviceSession.State.OFFLINE)
    registered = DeviceFactory(store=world.store, serial="230000060")
    session_for(registered, state=DeviceSession.State.REGISTERED)
    body = rows(client_for(world.merchant_admin))
    assert 'data-connection="offline"' in body.split(f'id="device-{world.device.pk}"')[1][:40]
    assert 'data-connection="registered"' in body.split(f'id="device-{registered.pk}"')[1][:40]


def test_an_ended_session_is_not_the_devices_state(world):
    session_for(world.device, state=DeviceSession.State.ENDED, ended_at=timezone.now())
    body = rows(client_for(world.merchant_admin))
    assert 'data-connection="none"' in body.split(f'id="device-{world.device.pk}"')[1][:40]


def test_the_list_filters_by_store_make_active_and_online(world):
    client = client_for(world.ma_admin)
    usable = make_usable_device(store=world.store, serial="230000070")
    verifone = DeviceFactory(store=world.other_store, make="Verifone", model="V400m", serial="230000071")
    session_for(usable)
    assert world.other_device.tsn not in rows(client, f"?store={world.store.pk}")
    assert world.device.tsn in rows(client, f"?store={world.store.pk}")
    by_make = rows(client, "?make=Verifone")
    assert verifone.tsn in by_make and world.device.tsn not in by_make
    # Activating the merchant of `usable` activated world.device too; other_device is not.
    active = rows(client, "?active=yes")
    assert usable.tsn in active and world.other_device.tsn not in active
    inactive = rows(client, "?active=no")
    assert usable.tsn not in inactive and world.other_device.tsn in inactive
    online = rows(client, "?online=yes")
    assert usable.tsn in online and world.device.tsn not in online
    assert usable.tsn not in rows(client, "?online=no")


def test_a_filter_for_a_store_outside_the_scope_is_refused(world):
    client = client_for(world.merchant_admin)
    page = client.get(reverse("portal:device_list") + f"?store={world.other_store.pk}").content.decode()
    assert "Select a valid choice" in page
    assert world.other_device.tsn not in page


def test_the_list_is_pushed_not_polled_and_catches_up_with_the_same_filters(world):
    client = client_for(world.merchant_admin)
    page = client.get(reverse("portal:device_list") + "?make=Ingenico&online=yes").content.decode()
    assert "hx-trigger" not in page.split('<table id="devices"')[1]
    assert 'data-live-url="/ws/portal/devices/"' in page
    assert 'data-rows-url="/devices/rows/?make=Ingenico&amp;online=yes"' in page
    assert "/static/portal/devices.js" in page


def test_the_list_says_what_to_do_when_empty(world):
    client = client_for(world.merchant_admin)
    assert "No device matches these filters." in rows(client, "?make=Nothing")
    world.device.delete()
    assert "No devices yet." in rows(client)


def test_the_list_takes_the_same_number_of_queries_for_one_device_or_many(world):
    client = client_for(world.ma_admin)
    session_for(world.device, claimed_by=world.pos.application, claimed_at=timezone.now())
    client.get(reverse("portal:device_rows"))  # warm the session and the principal
    with CaptureQueriesContext(connection) as few:
        client.get(reverse("portal:device_rows"))
    for n in range(12):
        device = DeviceFactory(store=world.store, serial=f"23009{n:04d}")
        pos = make_pos(store=world.store, name=f"Till x{n}")
        session_for(device, claimed_by=pos.application, claimed_at=timezone.now())
    with CaptureQueriesContext(connection) as many:
        body = client.get(reverse("portal:device_rows")).content.decode()
    assert body.count("by POS Till x") == 12
    assert len(many.captured_queries) == len(few.captured_queries)


def test_ending_a_live_session_asks_first(world):
    session = session_for(world.device, claimed_by=world.pos.application, claimed_at=timezone.now())
    client = client_for(world.merchant_admin)
    url = reverse("portal:device_session_end", args=[world.device.pk])
    confirm = client.get(url).content.decode()
    assert "POS Till 1" in confirm and "is disconnected" in confirm
    response = client.post(url)
    assert response["Location"] == reverse("portal:device_detail", args=[world.device.pk])
    session.refresh_from_db()
    assert session.state == DeviceSession.State.ENDED
    assert session.end_reason == "ended_by_operator"
    from accounts.models import AuditEntry

    assert AuditEntry.objects.filter(
        action="device.session_end", object_id=str(world.device.pk), data={"session_id": session.pk}, actor="user:alice"
    ).exists()


def test_ending_a_session_that_is_already_gone_says_so(world):
    client = client_for(world.merchant_admin)
    url = reverse("portal:device_session_end", args=[world.device.pk])
    assert "The device has no live session." in client.get(url).content.decode()
    response = client.post(url, follow=True)
    assert "has no live session any more" in response.content.decode()


# --- terminal configuration ------------------------------------------------------------


def config_text(body: str) -> str:
    return html.unescape(body.split('<pre class="config" id="config-block">')[1].split("</pre>")[0])


def test_the_device_page_offers_the_configuration_block_for_a_pos_of_its_store(world):
    client = client_for(world.merchant_admin)
    body = client.get(reverse("portal:device_detail", args=[world.device.pk])).content.decode()
    text = config_text(body)
    client_id = world.pos.application.client_id
    placeholder = "<client secret shown when the POS was created>"
    data = {"client_id": client_id, "client_secret": placeholder}
    expected_data = json.dumps(json.dumps(data, separators=(",", ":")))
    assert text.splitlines() == [
        "ws_client:",
        f"  custom_registration_data: {expected_data}",
        "  ep_register_url: ws://testserver/cloud-connector/v1/device-listener",
        "  enable_ssl: 0",
        '  ssl_profile_name: "INGETRUST"',
        "  ssl_profile_crt: <location of the pem file on the device>",
    ]
    assert expected_data.startswith('"{\\"client_id\\":\\"')
    assert reverse("portal:pos_rotate", args=[world.pos.pk]) in body


def test_the_block_uses_wss_and_ssl_behind_tls_and_the_configured_public_url(world, settings):
    client = client_for(world.merchant_admin)
    url = reverse("portal:device_detail", args=[world.device.pk])
    text = config_text(client.get(url, secure=True).content.decode())
    assert "ep_register_url: wss://testserver/cloud-connector/v1/device-listener" in text
    assert "enable_ssl: 1" in text
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "PUBLIC_WS_URL": "wss://cc.example.com/"}
    text = config_text(client.get(url).content.decode())
    assert "ep_register_url: wss://cc.example.com/cloud-connector/v1/device-listener" in text


def test_the_block_takes_the_chosen_credential_and_the_pem_location(world):
    second = make_pos(store=world.store, name="Till 2")
    client = client_for(world.ma_admin)
    url = reverse("portal:device_detail", args=[world.device.pk])
    text = config_text(
        client.get(url, {"credential": f"pos-{second.pk}", "ssl_profile_crt": "/HOST/ingetrust.pem"}).content.decode()
    )
    assert second.application.client_id in text
    assert "ssl_profile_crt: /HOST/ingetrust.pem" in text
    text = config_text(client.get(url, {"credential": f"app-{world.app.pk}"}).content.decode())
    assert world.app.application.client_id in text


def test_the_block_never_offers_a_credential_that_does_not_reach_the_device(world):
    client = client_for(world.ma_admin)
    url = reverse("portal:device_detail", args=[world.device.pk])
    body = client.get(url, {"credential": f"pos-{world.other_pos.pk}"}).content.decode()
    assert world.other_pos.application.client_id not in body
    body = client.get(url, {"credential": f"app-{world.far_app.pk}"}).content.decode()
    assert world.far_app.application.client_id not in body
    # A merchant user never sees the aggregator's applications.
    body = client_for(world.merchant_admin).get(url).content.decode()
    assert f"app-{world.app.pk}" not in body


def test_a_pem_location_that_would_break_the_file_is_refused(world):
    client = client_for(world.merchant_admin)
    url = reverse("portal:device_detail", args=[world.device.pk])
    body = client.get(url, {"ssl_profile_crt": 'x"\nenable_ssl: 0'}).content.decode()
    assert "A file location may not contain quotes or line breaks." in body
    assert "<location of the pem file on the device>" in config_text(body)


def test_a_device_of_a_store_without_pos_says_how_to_get_credentials(world):
    world.pos.delete()
    url = reverse("portal:device_detail", args=[world.device.pk])
    body = client_for(world.merchant_admin).get(url).content.decode()
    assert "No credential can register this device yet." in body


def test_the_state_fragment_reflects_the_session_now(world):
    client = client_for(world.merchant_admin)
    url = reverse("portal:device_state", args=[world.device.pk])
    assert 'data-connection="none"' in client.get(url).content.decode()
    session = session_for(world.device)
    assert 'data-connection="online"' in client.get(url).content.decode()
    session.state = DeviceSession.State.OFFLINE
    session.save()
    Device.objects.filter(pk=world.device.pk).update(online=False, online_since=None, offline_since=timezone.now())
    assert 'data-connection="offline"' in client.get(url).content.decode()


def test_static_assets_are_served_with_caching_and_an_etag(client):
    response = client.get("/static/portal/portal.css")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")
    assert "max-age" in response["Cache-Control"]
    again = client.get("/static/portal/portal.css", headers={"If-None-Match": response["ETag"]})
    assert again.status_code == 304
    assert client.get("/static/portal/../settings.py").status_code == 404
    assert client.get("/static/portal/nothing.js").status_code == 404
