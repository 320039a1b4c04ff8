"""The Content-Security-Policy header (django-csp, portal/settings.py): sent on the portal,
the admin and the Swagger UI, with no 'unsafe-inline' or 'unsafe-eval'; the Swagger UI's
inline blocks carry the request's nonce; and in a real browser none of these pages meets a
CSP violation (htmx, the portal's script, Swagger UI and the admin all still work)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import PASSWORD, MerchantFactory, TenantFactory, make_user

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 15_000


def directives(header: str) -> dict[str, list[str]]:
    parsed = {}
    for part in header.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/", "/api/docs/"])
def test_every_page_gets_a_policy_without_unsafe_inline_or_eval(client, path):
    response = client.get(path)
    assert response.status_code == 200
    policy = directives(response["Content-Security-Policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    for name in ("script-src", "style-src"):
        assert "'unsafe-inline'" not in policy[name]
        assert "'unsafe-eval'" not in policy[name]


@pytest.mark.django_db
def test_the_swagger_uis_inline_blocks_carry_the_requests_nonce(client):
    response = client.get("/api/docs/")
    nonce = re.search(r"'nonce-([^']+)'", response["Content-Security-Policy"]).group(1)
    page = response.content.decode()
    assert f'<style nonce="{nonce}">' in page
    assert f'<script nonce="{nonce}">' in page
    assert client.get("/api/docs/")["Content-Security-Policy"] != response["Content-Security-Policy"]  # fresh


def test_no_template_of_ours_has_inline_script_style_or_handlers():
    """What the policy would block, kept out of the templates (a nonce'd block excepted)."""
    offending = re.compile(
        r"<script(?![^>]*\bsrc=)(?![^>]*\bnonce=)[^>]*>|<style(?![^>]*\bnonce=)[^>]*>|\son[a-z]+=|\sstyle=|javascript:",
        re.IGNORECASE,
    )
    found = [
        f"{path.relative_to(ROOT)}: {match.group()}"
        for path in (ROOT / "templates").rglob("*.html")
        for match in offending.finditer(path.read_text())
    ]
    assert found == []


# --- in a real browser --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, live):
    context = browser.new_context(base_url=live.http_url)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    # Chromium reports every blocked script, style or handler on the console.
    page.violations = []

    def record(message) -> None:
        if "Content Security Policy" in message.text:
            page.violations.append(message.text)

    page.on("console", record)
    yield page
    context.close()


def sign_in(page, username: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


@pytest.mark.live
def test_the_portal_and_its_htmx_run_under_the_policy(page, live):
    make_user(username="csp-user", merchant=MerchantFactory())
    sign_in(page, "csp-user")
    page.wait_for_url(re.compile(r"/$"))
    # The device list's script runs and its push socket opens under the policy.
    with page.expect_websocket(lambda socket: socket.url.endswith("/ws/portal/devices/")):
        page.goto("/devices/")
    page.wait_for_selector('#live-status[data-state="live"]')
    assert page.violations == []


@pytest.mark.live
def test_the_swagger_ui_renders_under_the_policy(page, live):
    page.goto("/api/docs/")
    page.locator(".swagger-ui .info .title").wait_for()
    page.locator(".opblock").first.wait_for()
    assert page.violations == []


@pytest.mark.live
def test_the_admin_works_under_the_policy(page, live):
    staff = make_user(username="csp-staff", is_staff=True)
    staff.is_superuser = True
    staff.save(update_fields=["is_superuser"])
    page.goto("/admin/login/")
    page.get_by_label("Username").fill("csp-staff")
    page.get_by_label("Password").fill(PASSWORD)
    page.locator("input[type=submit]").click()
    page.wait_for_url(re.compile(r"/admin/$"))
    TenantFactory()
    page.goto("/admin/accounts/tenant/")
    page.locator("#result_list").wait_for()
    # The admin's scripts ran: the action bar's "select all" checkbox toggles the rows.
    page.locator("#action-toggle").check()
    assert page.locator("input.action-select:checked").count() >= 1
    assert page.violations == []
