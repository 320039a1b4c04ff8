"""The devices list at estate scale (issue 17): search by serial or tsn, pages, orders, the
merchant filter of aggregator users, store names qualified by their merchant, the CSV export
of the filtered list, the search of the stores page, and scope throughout; the rough edges of
the list and the device page (long names, "free", the legend, a disabled device's page)."""

from __future__ import annotations

import csv
import html
import io
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.scope import SYSTEM
from connector import services as connector_services
from connector.models import Device, DeviceSession
from portal.device_status import REASON_TEXT
from portal.views.devices import PAGE_SIZE
from tests.factories import DeviceFactory, StoreFactory, make_pos
from tests.portal.conftest import client_for

pytestmark = pytest.mark.django_db


def listed(client, query: str = "") -> str:
    return client.get(reverse("portal:device_list") + query).content.decode()


def row_ids(body: str) -> list[int]:
    return [int(pk) for pk in re.findall(r'<tr id="device-(\d+)"', body)]


def many_devices(store, count: int, prefix: str = "77") -> list[Device]:
    return [DeviceFactory(store=store, serial=f"{prefix}{n:05d}") for n in range(count)]


def exported(client, query: str = "") -> list[dict[str, str]]:
    response = client.get(reverse("portal:device_export") + query)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="devices-')
    return list(csv.DictReader(io.StringIO(response.content.decode())))


# --- search ----------------------------------------------------------------------------------


def test_it_finds_a_device_by_part_of_its_serial_whatever_the_case(world):
    target = DeviceFactory(store=world.store, serial="ZX9-Wanted-01")
    body = listed(client_for(world.merchant_admin), "?q=wanted")
    assert row_ids(body) == [target.pk]


def test_it_finds_a_device_by_its_fully_qualified_tsn(world):
    target = DeviceFactory(store=world.store, make="Verifone", model="V400m", serial="230000999")
    DeviceFactory(store=world.store, make="Ingenico", model="Lane3000", serial="230000999b")
    body = listed(client_for(world.merchant_admin), "?q=verifone-v400m-230000999")
    assert row_ids(body) == [target.pk]


def test_a_search_never_finds_a_device_outside_the_scope(world):
    body = listed(client_for(world.merchant_admin), f"?q={world.other_device.serial}")
    assert row_ids(body) == []
    assert "No device matches these filters." in body


def test_a_search_finds_device_501_that_the_old_page_never_showed(world):
    devices = many_devices(world.store, 520)
    last = devices[-1]
    body = listed(client_for(world.merchant_admin), f"?q={last.serial}")
    assert row_ids(body) == [last.pk]


# --- pages and orders --------------------------------------------------------------------------


def test_the_list_is_paged_and_every_device_is_on_exactly_one_page(world):
    many_devices(world.store, 2 * PAGE_SIZE + 7)
    client = client_for(world.merchant_admin)
    expected = set(Device.objects.filter(merchant=world.merchant).values_list("pk", flat=True))
    seen: list[int] = []
    for number in (1, 2, 3):
        body = listed(client, f"?page={number}")
        ids = row_ids(body)
        assert len(ids) == (PAGE_SIZE if number < 3 else len(expected) - 2 * PAGE_SIZE)
        seen += ids
        assert f"Page {number} of 3" in body
    assert len(seen) == len(set(seen)) and set(seen) == expected
    assert f"of {len(expected)}" in listed(client)


def test_a_page_past_the_end_is_the_last_and_a_bad_one_the_first(world):
    many_devices(world.store, PAGE_SIZE + 3)
    client = client_for(world.merchant_admin)
    assert row_ids(listed(client, "?page=999")) == row_ids(listed(client, "?page=2"))
    assert row_ids(listed(client, "?page=abc")) == row_ids(listed(client, "?page=1"))


def test_the_pager_keeps_the_search_and_the_order(world):
    many_devices(world.store, PAGE_SIZE + 3)
    body = listed(client_for(world.merchant_admin), "?q=77&sort=-tsn")
    assert 'href="?q=77&amp;sort=-tsn&amp;page=2"' in body


def test_the_list_sorts_by_tsn_both_ways_and_by_last_seen(world):
    a = DeviceFactory(store=world.store, serial="100")
    b = DeviceFactory(store=world.sibling_store, serial="300")
    c = DeviceFactory(store=world.store, serial="200")
    client = client_for(world.merchant_admin)
    ours = {a.pk, b.pk, c.pk}

    def order(sort: str) -> list[int]:
        return [pk for pk in row_ids(listed(client, f"?q=Ingenico-Lane3000-&sort={sort}")) if pk in ours]

    assert order("tsn") == [a.pk, c.pk, b.pk]
    assert order("-tsn") == [b.pk, c.pk, a.pk]
    assert order("store") == [a.pk, c.pk, b.pk]  # High Street, then Mill Lane; by tsn within
    assert order("-store") == [b.pk, c.pk, a.pk]
    now = timezone.now()
    Device.objects.filter(pk=c.pk).update(last_seen_at=now)
    Device.objects.filter(pk=a.pk).update(last_seen_at=now - timezone.timedelta(hours=1))
    seen = order("-last_seen")
    assert seen[:2] == [c.pk, a.pk] and seen[-1] == b.pk  # never seen: last either way
    assert order("last_seen")[-1] == b.pk


def test_an_unknown_order_is_refused_as_a_choice_not_a_crash(world):
    response = client_for(world.merchant_admin).get(reverse("portal:device_list") + "?sort=password")
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert row_ids(response.content.decode()) == []


# --- aggregator users ----------------------------------------------------------------------------


def test_an_aggregator_user_filters_by_merchant(world):
    client = client_for(world.ma_admin)
    body = listed(client, f"?merchant={world.other_merchant.pk}")
    assert row_ids(body) == [world.other_device.pk]
    assert world.device.pk not in row_ids(listed(client, f"?merchant={world.other_merchant.pk}"))


def test_a_merchant_outside_the_aggregator_is_refused(world):
    body = listed(client_for(world.ma_admin), f"?merchant={world.far_merchant.pk}")
    assert "Select a valid choice" in body
    assert row_ids(body) == []


def test_a_merchant_user_has_no_merchant_filter(world):
    body = listed(client_for(world.merchant_admin))
    assert 'name="merchant"' not in body
    assert 'name="merchant"' in listed(client_for(world.ma_admin))


def test_store_names_are_qualified_by_their_merchant_for_an_aggregator_user(world):
    StoreFactory(merchant=world.other_merchant, name="High Street")  # the same name, another merchant
    body = html.unescape(listed(client_for(world.ma_admin)))
    assert "Corner Shop › High Street" in body and "Rival Shop › High Street" in body
    row = body.split(f'id="device-{world.other_device.pk}"')[1].split("</tr>")[0]
    assert "Rival Shop" in row
    merchant_body = html.unescape(listed(client_for(world.merchant_admin)))
    assert "Corner Shop › High Street" not in merchant_body and ">High Street<" in merchant_body


def test_a_page_takes_the_same_number_of_queries_for_one_page_of_many(world, django_assert_max_num_queries):
    many_devices(world.store, 3 * PAGE_SIZE)
    client = client_for(world.ma_admin)
    listed(client)  # warm the session
    with django_assert_max_num_queries(14):
        body = listed(client, "?page=2")
    assert len(row_ids(body)) == PAGE_SIZE


# --- CSV export -------------------------------------------------------------------------------------


def test_the_export_holds_every_device_of_the_filters_not_only_the_page(world):
    many_devices(world.store, PAGE_SIZE + 5)
    DeviceFactory(store=world.store, make="Verifone", model="V400m", serial="X1")
    client = client_for(world.merchant_admin)
    rows = exported(client, "?make=Ingenico&page=1")
    assert len(rows) == Device.objects.filter(merchant=world.merchant, make="Ingenico").count() == PAGE_SIZE + 6
    assert {row["make"] for row in rows} == {"Ingenico"}
    assert list(rows[0]) == [
        "tsn",
        "make",
        "model",
        "serial",
        "merchant",
        "store",
        "enabled",
        "cloud_connector",
        "connection",
        "online_since",
        "offline_since",
        "last_seen_at",
        "last_disconnect_reason",
        "claimed_by",
        "frames_relayed",
    ]


def test_the_export_says_the_state_of_each_device(world):
    now = timezone.now()
    Device.objects.filter(pk=world.device.pk).update(online=True, online_since=now, last_seen_at=now)
    DeviceSession.objects.create(
        id="sess-csv",
        device=world.device,
        state=DeviceSession.State.ONLINE,
        jwt_expires_at=now + timezone.timedelta(minutes=5),
        claimed_by=world.pos.application,
        claimed_at=now,
    )
    rows = exported(client_for(world.merchant_admin), f"?q={world.device.serial}")
    assert len(rows) == 1
    row = rows[0]
    assert row["tsn"] == world.device.tsn and row["store"] == "High Street" and row["merchant"] == "Corner Shop"
    assert row["connection"] == "online" and row["claimed_by"] == "POS Till 1"
    assert row["cloud_connector"] == "Not subscribed" and row["enabled"] == "yes"
    assert row["online_since"] == now.isoformat()


def test_the_export_never_holds_a_device_outside_the_scope(world):
    tsns = {row["tsn"] for row in exported(client_for(world.merchant_admin))}
    assert world.device.tsn in tsns
    assert world.other_device.tsn not in tsns and world.far_device.tsn not in tsns


def test_the_export_quotes_text_a_spreadsheet_would_run(world):
    store = StoreFactory(merchant=world.merchant, name='=HYPERLINK("http://evil")')
    DeviceFactory(store=store, serial="CSV1")
    rows = exported(client_for(world.merchant_admin), "?q=CSV1")
    assert rows[0]["store"] == '\'=HYPERLINK("http://evil")'


def test_an_export_with_a_refused_filter_is_a_400_not_an_empty_estate(world):
    response = client_for(world.merchant_admin).get(reverse("portal:device_export") + f"?store={world.other_store.pk}")
    assert response.status_code == 400
    assert "store" in response.content.decode()


def test_an_anonymous_export_is_sent_to_sign_in(client):
    response = client.get(reverse("portal:device_export"))
    assert response.status_code == 302


def test_the_list_links_the_export_with_its_filters(world):
    body = listed(client_for(world.merchant_admin), "?make=Ingenico&page=2")
    assert 'href="/devices/export.csv?make=Ingenico"' in body


# --- the stores page's search -------------------------------------------------------------------------


def stores_page(client, query: str = "") -> str:
    return html.unescape(client.get(reverse("portal:store_list") + query).content.decode())


def test_the_stores_page_finds_a_store_by_name_and_a_store_by_its_pos(world):
    client = client_for(world.merchant_admin)
    by_name = stores_page(client, "?q=mill")
    assert "Mill Lane" in by_name and ">High Street<" not in by_name
    make_pos(store=world.store, name="Back office")
    by_pos = stores_page(client, "?q=back off")
    assert ">High Street<" in by_pos and "Mill Lane" not in by_pos
    assert "POS: " in by_pos and ">Back office<" in by_pos


def test_the_stores_page_search_stays_in_scope_and_says_when_nothing_matches(world):
    body = stores_page(client_for(world.merchant_admin), "?q=Market")
    assert "Market Square" not in body
    assert "No store or POS matches “Market”." in body
    assert "Market Square" in stores_page(client_for(world.ma_admin), "?q=Rival")  # by merchant name


def test_the_stores_page_is_paged(world):
    for n in range(55):
        StoreFactory(merchant=world.merchant, name=f"Branch {n:02d}")
    client = client_for(world.merchant_admin)
    first, second = stores_page(client, "?q=Branch"), stores_page(client, "?q=Branch&page=2")
    assert "Branch 00" in first and "Branch 49" in first and "Branch 50" not in first
    assert "Branch 54" in second and 'href="?q=Branch&amp;page=1"' not in second  # previous keeps q
    assert "?q=Branch&page=1" in second


# --- rough edges -------------------------------------------------------------------------------------


def test_a_long_serial_and_store_name_are_cut_with_the_full_value_on_hover(world):
    store = StoreFactory(merchant=world.merchant, name="S" * 100)
    device = DeviceFactory(store=store, serial="9" * 60)
    body = listed(client_for(world.merchant_admin), f"?q={device.serial}")
    row = body.split(f'id="device-{device.pk}"')[1].split("</tr>")[0]
    assert f'class="mono tsn clip" title="{device.tsn}"' in row
    assert f'<span class="clip" title="{"S" * 100}">' in row


def test_an_offline_device_with_a_kept_session_is_not_free(world):
    now = timezone.now()
    DeviceSession.objects.create(
        id="sess-kept",
        device=world.device,
        state=DeviceSession.State.OFFLINE,
        jwt_expires_at=now + timezone.timedelta(minutes=5),
    )
    Device.objects.filter(pk=world.device.pk).update(online=False, offline_since=now)
    body = listed(client_for(world.merchant_admin))
    row = body.split(f'id="device-{world.device.pk}"')[1].split("</tr>")[0]
    assert ">free<" not in row
    Device.objects.filter(pk=world.device.pk).update(online=True, online_since=now, offline_since=None)
    DeviceSession.objects.filter(pk="sess-kept").update(state=DeviceSession.State.ONLINE)
    row = listed(client_for(world.merchant_admin)).split(f'id="device-{world.device.pk}"')[1].split("</tr>")[0]
    assert ">free<" in row


def test_the_list_has_a_legend_for_every_badge_it_uses(world):
    body = listed(client_for(world.merchant_admin))
    legend = body.split('id="legend"')[1].split("</details>")[0]
    for badge in ("enabled", "disabled", "active", "online", "registering", "offline", "claimed", "free"):
        assert f">{badge}</span>" in legend, badge
    assert "Never connected." in legend


def test_a_disabled_devices_page_says_why_once_and_that_its_own_activation_is_on(world):
    connector_services.subscription_create(tenant=world.tenant, actor=SYSTEM)
    for obj in (world.ma, world.merchant, world.device):
        connector_services.service_activate(obj=obj, actor=SYSTEM)
    Device.objects.filter(pk=world.device.pk).update(enabled=False)
    body = html.unescape(
        client_for(world.merchant_admin).get(reverse("portal:device_detail", args=[world.device.pk])).content.decode()
    )
    assert body.count(REASON_TEXT[connector_services.Unusable.DISABLED]) == 1
    assert "not active</span> because the device is disabled (see above)." in body
    assert "Cloud Connector is switched on for this device itself: it will work as soon as the device is" in body


def test_a_device_page_names_every_level_that_keeps_it_off(world):
    connector_services.subscription_create(tenant=world.tenant, actor=SYSTEM)
    body = html.unescape(
        client_for(world.merchant_admin).get(reverse("portal:device_detail", args=[world.device.pk])).content.decode()
    )
    unusable = connector_services.Unusable
    assert REASON_TEXT[unusable.MERCHANT_AGGREGATOR] in body and REASON_TEXT[unusable.MERCHANT] in body
    # Activating the merchant activates its devices: the device's own step is not named yet.
    assert REASON_TEXT[unusable.DEVICE] not in body
