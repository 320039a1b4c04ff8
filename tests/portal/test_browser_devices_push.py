"""The devices list at estate scale in a real browser (Chromium through Playwright) against the
live server: pages, a search, a simulated terminal connecting and disconnecting while the
page is open (the row changes without a reload: pushed, not polled), long names kept inside
the table, the legend, and a disabled device's page. Screenshots as in
tests/portal/test_browser.py (SCREENSHOTS_DIR, `make screenshots`)."""

from __future__ import annotations

import re

import pytest

from accounts.scope import SYSTEM
from connector import services as connector_services
from connector.models import Device
from tests.factories import DeviceFactory, StoreFactory

# The browser, page and screenshot fixtures of the portal's browser tests, its sign-in, and
# the thread a simulated terminal runs on.
from tests.portal.test_browser import CHROMIUM, TerminalThread, browser, new_page, shot, sign_in  # noqa: F401

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]

EXTRA_DEVICES = 120  # three pages of 50 with the world's own


def estate(world) -> None:
    """The world's merchant with a few pages of terminals, one of them with a 60-character
    serial in a store with a 100-character name."""
    for n in range(EXTRA_DEVICES):
        DeviceFactory(store=world.sibling_store, serial=f"31{n:05d}")
    long_store = StoreFactory(merchant=world.merchant, name="Northern Distribution Centre " + "X" * 71)
    DeviceFactory(store=long_store, serial="9" * 60)


def wait_live(page) -> None:
    page.wait_for_selector('#live-status[data-state="live"]')


@pytest.mark.cloud_connector_on
def test_search_pages_and_a_terminal_connecting_show_without_a_reload(world, new_page, live, shot):  # noqa: F811
    estate(world)
    device, pos = world.device, world.pos
    page = new_page()
    sign_in(page, world.merchant_admin.username)

    # Pages: 122 devices, 50 a page.
    page.goto("/devices/")
    wait_live(page)
    assert "Page 1 of 3" in page.locator(".pager").inner_text()
    shot(page, "30-devices-paged")
    page.locator(".pager").get_by_role("link", name="Next").click()
    page.wait_for_url(re.compile(r"page=2"))
    assert "Page 2 of 3" in page.locator(".pager").inner_text()
    assert page.locator("#device-rows tr[data-device]").count() == 50

    # Long names stay inside their column: the table does not scroll sideways at 1280 px.
    page.goto("/devices/?q=999999")
    long_row = page.locator("#device-rows tr[data-device]")
    assert long_row.count() == 1
    overflow = page.evaluate(
        "document.querySelector('.table-wrap').scrollWidth - document.querySelector('.table-wrap').clientWidth"
    )
    assert overflow <= 0
    assert long_row.locator("a.tsn").get_attribute("title").endswith("9" * 60)
    shot(page, "31-devices-long-names")

    # Search by serial: the home terminal alone; the page opens its push socket.
    page.goto("/devices/")
    page.get_by_label("Search serial or TSN").fill(device.serial)
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(re.compile(rf"q={device.serial}"))
    wait_live(page)
    row = page.locator(f"#device-{device.pk}")
    assert page.locator("#device-rows tr[data-device]").count() == 1
    assert row.get_attribute("data-connection") == "none"
    page.evaluate("window.notReloaded = true")

    worker = TerminalThread()
    try:
        worker.connect(live.ws_url, device, pos)
        page.wait_for_selector(f'#device-{device.pk}[data-connection="online"]')
        assert "free" in row.inner_text()
        assert page.evaluate("window.notReloaded") is True
        shot(page, "32-devices-pushed-online")

        worker.disconnect()
        page.wait_for_selector(f'#device-{device.pk}[data-connection="offline"]')
        assert "free" not in row.inner_text()  # an offline device is never free
        assert page.evaluate("window.notReloaded") is True
    finally:
        worker.close()

    page.locator("#legend summary").click()
    page.locator("#legend").scroll_into_view_if_needed()
    shot(page, "33-devices-legend")


def test_the_export_link_downloads_the_filtered_list(world, new_page, live):  # noqa: F811
    estate(world)
    page = new_page()
    sign_in(page, world.merchant_admin.username)
    page.goto("/devices/?q=3100001")
    with page.expect_download() as download:
        page.locator("#export-csv").click()
    with open(download.value.path(), encoding="utf-8") as exported:
        lines = exported.read().splitlines()
    assert lines[0].startswith("tsn,make,model,serial")
    assert [line.split(",")[3] for line in lines[1:]] == ["3100001"]


def test_a_disabled_devices_page_says_it_once_and_fits_its_box(world, new_page, live, shot):  # noqa: F811
    connector_services.subscription_create(tenant=world.tenant, actor=SYSTEM)
    for obj in (world.ma, world.merchant, world.device):
        connector_services.service_activate(obj=obj, actor=SYSTEM)
    long_store = StoreFactory(merchant=world.merchant, name="Y" * 100)
    Device.objects.filter(pk=world.device.pk).update(enabled=False, store=long_store, serial="8" * 60)
    page = new_page()
    sign_in(page, world.merchant_admin.username)
    page.goto(f"/devices/{world.device.pk}/")
    state = page.locator("#device-state")
    assert state.inner_text().count("The device is not provisioned and enabled in PPaaS.") == 1
    assert "switched on for this device itself" in state.inner_text()
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    shot(page, "34-device-disabled")
