"""The portal in a real browser (Chromium through Playwright) against the live daphne server:
the seed's onboarding steps end to end, a device going online and offline on an open page,
and an outsider refused. Each test saves screenshots of the pages it walks through: to its
temporary folder, or to the folder SCREENSHOTS_DIR names (`make screenshots` names
docs/screenshots/, and only it refreshes them)."""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from django.contrib.auth.hashers import check_password

from accounts.models import POS, CloudApplication
from tests.factories import PASSWORD, DeviceFactory, MerchantFactory, make_user

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Generous waits for a page to reach a state: the machine is shared, and these bound how
# long a broken page makes the test hang, they are not what the test asserts.
WAIT_MS = 15_000

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; Django's ORM would then
    # refuse to run here, though nothing of it is asynchronous.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def new_page(browser, live):
    contexts = []

    def open_page(*, width: int = 1280, height: int = 800):
        context = browser.new_context(
            base_url=live.http_url,
            viewport={"width": width, "height": height},
            permissions=["clipboard-read", "clipboard-write"],
        )
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def shot(tmp_path) -> Callable[..., None]:
    """Save a screenshot of a page under a name. A test run must leave the work tree as it
    found it, so only a run that names a folder in SCREENSHOTS_DIR writes outside tmp_path."""
    folder = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def take(page, name: str, *, full_page: bool = True) -> None:
        page.screenshot(path=str(folder / f"{name}.png"), full_page=full_page)

    return take


def sign_in(page, username: str, password: str = PASSWORD) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/$"))


def nav(page, name: str):
    return page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True)


def copy_and_read(page, button_selector: str) -> str:
    page.locator(button_selector).click()
    # Locator waits, not wait_for_function: the page's Content-Security-Policy forbids the
    # eval that a polled JavaScript predicate needs.
    page.locator(button_selector, has_text="Copied").wait_for()
    return page.evaluate("navigator.clipboard.readText()")


def test_a_merchant_user_gets_store_pos_credentials_end_to_end(world, new_page, live, shot):
    # A merchant just onboarded under the world's aggregator: no store yet.
    merchant = MerchantFactory(merchant_aggregator=world.ma, name="New Shop")
    make_user(username="nina", merchant=merchant)
    page = new_page()

    page.goto("/")
    page.wait_for_url(re.compile(r"/accounts/login/\?next=/$"))
    shot(page, "01-sign-in")
    sign_in(page, "nina")
    shot(page, "02-merchant-overview")

    # Step 2: create a store.
    nav(page, "Stores & POS").click()
    page.get_by_text("No stores yet.").wait_for()
    page.locator("main").get_by_role("link", name="Create a store").click()
    page.get_by_label("Name").fill("")
    page.get_by_role("button", name="Create store").click()
    page.get_by_text("This field is required.").wait_for()
    page.get_by_label("Name").fill("High Street")
    page.get_by_role("button", name="Create store").click()
    page.get_by_role("heading", name="High Street").wait_for()
    assert page.locator('nav.main a[aria-current="page"]').inner_text() == "Stores & POS"

    # Step 3: create a POS.
    page.locator(".page-head").get_by_role("link", name="Create a POS").click()
    page.get_by_label("Name").fill("Till 1")
    page.get_by_role("button", name="Create POS").click()
    page.get_by_text("Copy the key now: it will not be shown again.").wait_for()
    shot(page, "03-pos-created-credentials-shown-once")

    # Step 4: gather the client id and key, with the copy buttons.
    client_id = copy_and_read(page, 'button[data-copy="#client-id"]')
    secret = copy_and_read(page, 'button[data-copy="#client-secret"]')
    pos = POS.objects.select_related("application").get(name="Till 1", store__merchant=merchant)
    assert client_id == pos.application.client_id
    assert check_password(secret, pos.application.client_secret)
    config = copy_and_read(page, 'button[data-copy="#config-block"]')
    assert f'\\"client_secret\\":\\"{secret}\\"' in config
    assert f"ep_register_url: {live.ws_url}/cloud-connector/v1/device-listener" in config

    # The key is never shown again, not even by going back.
    page.get_by_role("link", name="I have copied the key: go to the POS").click()
    page.get_by_role("heading", name="POS Till 1").wait_for()
    assert secret not in page.content()
    shot(page, "04-pos-detail")
    from playwright.sync_api import Error as PlaywrightError

    try:
        page.go_back()
    except PlaywrightError as error:
        assert "ERR_CACHE_MISS" in str(error)  # no-store: the browser kept no copy of that page
    else:
        assert secret not in page.content()

    # The credentials work: the POS gets a Cloud Connector token.
    token = requests.post(
        f"{live.http_url}/oauth2/v1/{world.tenant.domain}/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
        timeout=10,
    )
    assert token.status_code == 200, token.text
    assert "cloud-connector" in token.json()["scope"].split()


def test_an_aggregator_user_gets_developer_application_credentials_end_to_end(world, new_page, live, shot):
    page = new_page()
    sign_in(page, world.ma_admin.username)
    shot(page, "05-aggregator-overview")

    # Step 2: create a Cloud API application; its key is shown once.
    nav(page, "Applications").click()
    page.locator("main").get_by_role("link", name="Create an application").click()
    page.get_by_label("Name").fill("Till software")
    page.get_by_role("button", name="Create application").click()
    page.get_by_text("Copy the key now: it will not be shown again.").wait_for()
    shot(page, "06-application-created-credentials-shown-once")
    client_id = copy_and_read(page, 'button[data-copy="#client-id"]')
    secret = copy_and_read(page, 'button[data-copy="#client-secret"]')

    # Without the service, grant and role it cannot reach Cloud Connector, and says so.
    page.get_by_role("link", name="I have copied the key: configure the application").click()
    page.get_by_text("This application cannot reach Cloud Connector yet.").wait_for()
    refused = requests.post(
        f"{live.http_url}/oauth2/v1/{world.tenant.domain}/token",
        data={"grant_type": "client_credentials", "scope": "cloud-connector"},
        auth=(client_id, secret),
        timeout=10,
    )
    assert refused.status_code in (400, 401), refused.text

    # Steps 3 to 5: API > Retail API; Credentials & Security > Credentials > Client
    # Credentials Grant; Credentials & Security > Roles > Point-of-sale Terminal.
    page.locator("fieldset#api").get_by_label("Retail API").check()
    page.locator("fieldset#credentials").get_by_label("Client Credentials Grant").check()
    page.locator("fieldset#roles").get_by_label("Point-of-sale Terminal").check()
    shot(page, "07-application-configuration")
    page.get_by_role("button", name="Save configuration").click()
    page.get_by_text("Ready for Cloud Connector.").wait_for()
    app = CloudApplication.objects.get(name="Till software")
    assert app.missing_for_cloud_connector() == []

    # Step 6: the credentials shown on the page get a token.
    token = requests.post(
        f"{live.http_url}/oauth2/v1/{world.tenant.domain}/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
        timeout=10,
    )
    assert token.status_code == 200, token.text
    assert "cloud-connector" in token.json()["scope"].split()

    # Activate Cloud Connector for the aggregator: the consequence is shown first.
    nav(page, "Cloud Connector").click()
    page.locator(".card", has_text="Merchant aggregator Acme Aggregation").get_by_role("link", name="Activate…").click()
    page.get_by_text("This affects 2 devices:").wait_for()  # Corner Shop's and Rival Shop's
    shot(page, "08-activation-confirm")
    page.get_by_role("button", name="Activate").click()
    page.get_by_text("Cloud Connector is now active for merchant aggregator").wait_for()
    shot(page, "09-cloud-connector")


class TerminalThread:
    """A simulated terminal (connector/clients/terminal.py) on its own event loop, so that
    the test's thread stays free for the browser."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.terminal = None

    def run(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def connect(self, url: str, device, pos):
        """Start a terminal for `device` with `pos`'s credentials, registered once it returns."""
        from connector.clients.terminal import SimulatedTerminal

        async def start():
            terminal = SimulatedTerminal(
                url,
                tsn=device.serial,
                client_id=pos.application.client_id,
                client_secret=pos.client_secret,
                max_attempts=1,
            )
            await terminal.start()
            return terminal

        self.terminal = self.run(start())
        return self.terminal

    def disconnect(self) -> None:
        self.run(self.terminal.stop())
        self.terminal = None

    def close(self) -> None:
        """Stop the terminal if a test failed before disconnecting it, then the loop."""
        if self.terminal is not None:
            self.disconnect()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.mark.cloud_connector_on
def test_a_device_goes_online_and_offline_on_the_open_page(world, new_page, live, shot):
    from connector.clients.pos import PosClient, fetch_token

    device, pos = world.device, world.pos
    DeviceFactory(store=world.store, serial="230123457")  # created after activation: not active
    page = new_page()
    sign_in(page, world.merchant_admin.username)
    page.goto("/devices/")
    row = page.locator(f"#device-{device.pk}")
    assert row.get_attribute("data-connection") == "none"

    worker = TerminalThread()
    try:
        worker.connect(live.ws_url, device, pos)
        page.wait_for_selector(f'#device-{device.pk}[data-connection="online"]')
        assert "free" in row.inner_text()

        async def claim_and_relay():
            token = await fetch_token(
                live.http_url,
                domain=world.tenant.domain,
                client_id=pos.application.client_id,
                client_secret=pos.client_secret,
            )
            client = PosClient(live.http_url, token=token.access_token)
            await client.connect()
            claim = await client.claim(device.tsn)
            session = await client.open_session(claim)
            for n in range(3):
                await session.send(f"ping {n}")
                await session.recv(timeout=10)
            return client

        pos_client = worker.run(claim_and_relay())
        # Presence is pushed to the open page (tests/portal/test_browser_devices_push.py); the
        # frame counts are not (they change with every frame): a reload shows them, once the
        # relay has flushed its counters.
        frames = page.locator(f"#device-{device.pk} td.num", has_text=re.compile(r"^\s*([6-9]|\d{2,})\s*$"))
        for _attempt in range(30):
            page.reload()
            if frames.count():
                break
            page.wait_for_timeout(500)
        page.locator(f"#device-{device.pk}", has_text="by POS Till 1").wait_for()
        frames.wait_for()
        shot(page, "10-devices-live")

        page.get_by_role("link", name=device.tsn).click()
        page.wait_for_selector('#device-state[data-connection="online"]')
        shot(page, "11-device-detail")
        worker.run(pos_client.close())

        worker.disconnect()
        page.wait_for_selector('#device-state[data-connection="offline"]')
        page.goto("/devices/")
        page.wait_for_selector(f'#device-{device.pk}[data-connection="offline"]')
    finally:
        worker.close()


@pytest.mark.cloud_connector_on
def test_the_portal_is_usable_at_phone_width(world, new_page, live, shot):
    page = new_page(width=390, height=844)
    sign_in(page, world.merchant_admin.username)
    page.goto("/devices/")
    nav(page, "Devices").wait_for()
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    shot(page, "12-phone-devices", full_page=False)


def test_a_user_of_another_merchant_gets_not_found_on_the_first_users_objects(world, new_page, live):
    store, pos, device = world.store, world.pos, world.device
    page = new_page()
    sign_in(page, world.other_merchant_admin.username)
    for path in (f"/stores/{store.pk}/", f"/pos/{pos.pk}/", f"/pos/{pos.pk}/rotate/", f"/devices/{device.pk}/"):
        response = page.goto(path)
        assert response.status == 404, path
    page.goto("/devices/")
    assert device.tsn not in page.content()
