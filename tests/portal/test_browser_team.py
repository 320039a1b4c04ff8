"""Team management and the viewer's view in a real browser (Chromium through Playwright) against
the live server: an administrator invites a viewer, who chooses a password through the one-time
link and then sees the portal read-only; an administrator deactivates someone; an aggregator's
administrator changes a merchant administrator's role; long names stay inside the page.
Screenshots as tests/portal/test_browser.py takes them (`make screenshots` refreshes them)."""

from __future__ import annotations

import re

import pytest

from accounts.models import Membership, User
from tests.factories import PASSWORD, StoreFactory, make_pos
from tests.portal import test_browser as first_browser_test
from tests.portal.test_browser import CHROMIUM, copy_and_read, nav, sign_in

# The fixtures of the portal's first browser test: one browser per module, a context per page,
# screenshots where SCREENSHOTS_DIR says.
browser = first_browser_test.browser
new_page = first_browser_test.new_page
shot = first_browser_test.shot

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium"),
]

NEW_PASSWORD = "a long and quiet harbour"
LONG = ("Supercalifragilisticexpialidocious" * 3)[:100]  # the longest name, not one space


def width_overflow(page) -> int:
    """How many pixels the page is wider than the window (0 when nothing sticks out)."""
    return page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


def sticking_out(page) -> list[str]:
    """The elements whose right edge passes the window's, for the failure message."""
    return page.evaluate(
        """[...document.querySelectorAll('main *')]
          .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
          .map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))
          .slice(0, 12)"""
    )


def assert_fits(page) -> None:
    assert width_overflow(page) <= 0, sticking_out(page)


def test_an_admin_invites_a_viewer_who_then_sees_the_portal_read_only(world, new_page, live, shot):
    page = new_page()
    sign_in(page, "alice")
    nav(page, "Team").click()
    page.get_by_role("heading", name="Team").wait_for()
    shot(page, "team-01-merchant-admin-team")

    page.locator(".page-head").get_by_role("link", name="Invite someone").click()
    page.get_by_label("Username").fill("nadia")
    page.get_by_label("Role").select_option("viewer")
    page.get_by_role("button", name="Create the account").click()
    page.get_by_text("Give nadia this link now: it will not be shown again.").wait_for()
    shot(page, "team-02-invitation-link-shown-once")
    link = copy_and_read(page, 'button[data-copy="#invite-link"]')
    assert re.fullmatch(rf"{re.escape(live.http_url)}/accounts/reset/[^/]+/[^/]+/", link)
    nadia = User.objects.get(username="nadia")
    assert nadia.membership.merchant_id == world.merchant.pk and nadia.membership.role == Membership.Role.VIEWER

    # Nadia, in a browser of her own, chooses her password through the link, once.
    own = new_page()
    own.goto(link)
    own.get_by_role("heading", name="Choose a new password").wait_for()
    own.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    own.get_by_label("New password confirmation").fill(NEW_PASSWORD)
    own.get_by_role("button", name="Set password").click()
    own.wait_for_url(re.compile(r"/accounts/reset/done/$"))
    own.goto(link)
    own.get_by_role("heading", name="This link no longer works").wait_for()

    sign_in(own, "nadia", NEW_PASSWORD)
    shot(own, "team-03-viewer-overview")
    main = own.locator("main")
    assert main.get_by_role("link", name="Create a store").count() == 0
    nav(own, "Stores & POS").click()
    own.get_by_role("link", name="High Street").click()
    own.get_by_role("heading", name="High Street").wait_for()
    for action in ("Create a POS", "Rename", "Delete"):
        assert main.get_by_role("link", name=action).count() == 0
    own.get_by_role("link", name="Till 1").click()
    own.get_by_role("heading", name="POS Till 1").wait_for()
    assert main.get_by_role("link", name=re.compile("Rotate")).count() == 0
    assert main.get_by_text("ask an administrator to rotate the key").count() == 1
    shot(own, "team-04-viewer-pos-read-only")
    nav(own, "Team").click()
    own.locator("#team").wait_for()
    assert main.get_by_role("link", name="Invite someone").count() == 0
    own.get_by_role("link", name="alice").click()
    own.get_by_role("heading", name="alice").wait_for()
    assert main.locator("form").count() == 0
    assert main.get_by_role("link", name=re.compile("Deactivate")).count() == 0
    shot(own, "team-05-viewer-sees-a-member")


def test_an_admin_deactivates_someone_who_is_signed_out_and_cannot_sign_in(world, new_page, live, shot):
    victor = new_page()
    sign_in(victor, "victor")

    page = new_page()
    sign_in(page, "alice")
    nav(page, "Team").click()
    page.locator("#team").get_by_role("link", name="victor").click()
    page.get_by_role("heading", name="victor").wait_for()
    shot(page, "team-06-member-page")
    page.get_by_role("link", name="Deactivate…").click()
    page.get_by_role("heading", name="Deactivate “victor”?").wait_for()
    page.get_by_role("button", name="Deactivate").click()
    page.get_by_text("victor can no longer sign in.").wait_for()
    assert page.locator(".badge", has_text="deactivated").count() == 1
    shot(page, "team-07-member-deactivated")

    victor.reload()
    victor.wait_for_url(re.compile(r"/accounts/login/"))
    victor.get_by_label("Username").fill("victor")
    victor.get_by_label("Password").fill(PASSWORD)
    victor.get_by_role("button", name="Sign in").click()
    victor.locator(".form-errors").wait_for()
    assert "/accounts/login/" in victor.url

    # Alice cannot deactivate herself: her own page offers nothing of the kind.
    nav(page, "Team").click()
    page.locator("#team").get_by_role("link", name="alice").click()
    page.get_by_text("This is you.").wait_for()
    assert page.locator("main").get_by_role("link", name=re.compile("Deactivate")).count() == 0


def test_an_aggregator_admin_makes_a_merchant_admin_a_viewer(world, new_page, live, shot):
    page = new_page()
    sign_in(page, "agnes")
    nav(page, "Team").click()
    page.locator("#team").wait_for()
    assert page.locator("#team").get_by_text("Corner Shop").count() >= 1
    shot(page, "team-08-aggregator-team")
    page.locator("#team").get_by_role("link", name="mallory").click()
    page.get_by_label("Role").select_option("viewer")
    page.get_by_role("button", name="Save role").click()
    page.get_by_text("mallory is now viewer (read-only).").wait_for()
    world.other_merchant_admin.refresh_from_db()
    assert world.other_merchant_admin.membership.role == Membership.Role.VIEWER


def test_long_unbroken_names_stay_inside_the_page(world, new_page, live, shot):
    store = StoreFactory(merchant=world.merchant, name=LONG)
    make_pos(store=store, name=LONG)
    page = new_page()
    sign_in(page, "alice")

    page.goto(f"/stores/{store.pk}/")
    page.locator("h1").wait_for()
    assert_fits(page)
    shot(page, "team-09-store-with-a-long-name")
    pos_link = page.locator("main table").get_by_role("link", name=LONG)
    assert pos_link.get_attribute("title") == LONG  # the full name on hover

    pos_link.click()
    page.locator("pre.config").wait_for()
    assert_fits(page)
    # The configuration block scrolls inside its own box instead of widening the page.
    box, card = page.locator("pre.config").bounding_box(), page.locator("pre.config").locator("..").bounding_box()
    assert box["x"] + box["width"] <= card["x"] + card["width"] + 1

    page.goto("/stores/")
    page.locator("main table").get_by_role("link", name=LONG).wait_for()
    assert_fits(page)

    page.goto(f"/stores/{store.pk}/rename/")
    assert_fits(page)

    phone = new_page(width=390, height=844)
    sign_in(phone, "alice")
    phone.goto(f"/stores/{store.pk}/")
    phone.locator("h1").wait_for()
    assert_fits(phone)
