"""Sign-in and out, password change and reset, session expiry and sign-in throttling."""

from __future__ import annotations

import re
import uuid

import pytest
from django.conf import settings
from django.core import mail
from django.test import Client, override_settings
from django.urls import reverse

from tests.factories import PASSWORD
from tests.portal.conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def django_settings_cache(clear_login_throttle):
    """The deployment's own cache (Redis when REDIS_URL is set), not the per-test one."""
    from django.conf import settings as live_settings
    from django.test.utils import override_settings as override

    from portal import settings as project_settings

    with override(CACHES=getattr(project_settings, "CACHES", live_settings.CACHES)):
        yield


def sign_in(client: Client, username: str, password: str = PASSWORD, **extra):
    return client.post(reverse("portal:login"), {"username": username, "password": password}, **extra)


def test_a_merchant_user_signs_in_and_lands_on_the_overview(world):
    client = Client()
    response = sign_in(client, "alice")
    assert response.status_code == 302 and response["Location"] == "/"
    page = client.get("/").content.decode()
    assert "Get your store POS credentials" in page
    assert "Merchant Corner Shop" in page


def test_staff_land_on_the_admin_but_may_open_portal_pages(world):
    client = Client()
    assert sign_in(client, "sam")["Location"] == reverse("admin:index")
    assert client.get(reverse("portal:device_list")).status_code == 200


def test_a_signed_in_user_visiting_the_sign_in_page_goes_home(world):
    client = client_for(world.merchant_admin)
    assert client.get(reverse("portal:login"))["Location"] == "/"


def test_it_returns_to_the_page_asked_for_after_sign_in(world):
    client = Client()
    wanted = reverse("portal:store_list")
    response = client.post(
        f"{settings.LOGIN_URL}?next={wanted}", {"username": "alice", "password": PASSWORD, "next": wanted}
    )
    assert response["Location"] == wanted


def test_a_wrong_password_is_refused_with_a_message(world):
    response = sign_in(Client(), "alice", "wrong")
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()


def test_signing_out_ends_the_session(world):
    client = client_for(world.merchant_admin)
    response = client.post(reverse("portal:logout"))
    assert response["Location"] == settings.LOGIN_URL
    assert client.get("/").status_code == 302


def test_sessions_expire(world):
    client = Client()
    sign_in(client, "alice")
    assert settings.SESSION_COOKIE_AGE > 0
    assert client.session.get_expiry_age() <= settings.SESSION_COOKIE_AGE
    assert client.cookies[settings.SESSION_COOKIE_NAME]["max-age"] == settings.SESSION_COOKIE_AGE


def test_it_locks_sign_in_after_repeated_failures_even_with_the_right_password(world, settings):
    settings.PORTAL_LOGIN_THROTTLE = {"FAILURES_PER_USER_ADDRESS": 3, "FAILURES_PER_ADDRESS": 20, "WINDOW": 600}
    client = Client()
    for _ in range(3):
        sign_in(client, "alice", "wrong")
    response = sign_in(client, "alice")
    assert response.status_code == 200
    assert "Too many failed sign-ins" in response.content.decode()
    assert client.get("/").status_code == 302


def test_the_lock_is_per_address_and_username(world, settings):
    settings.PORTAL_LOGIN_THROTTLE = {"FAILURES_PER_USER_ADDRESS": 3, "FAILURES_PER_ADDRESS": 20, "WINDOW": 600}
    attacker = Client(REMOTE_ADDR="203.0.113.9")
    for _ in range(3):
        sign_in(attacker, "alice", "wrong")
    assert sign_in(Client(REMOTE_ADDR="198.51.100.7"), "alice").status_code == 302
    assert sign_in(attacker, "agnes").status_code == 302


def test_an_address_that_tries_many_usernames_is_slowed_down_not_locked(world, settings, monkeypatch):
    # Formerly locked: the address's bound now delays its checks (tests/portal/test_login_slowdown.py).
    from portal import login_throttle

    waits: list[float] = []
    monkeypatch.setattr(login_throttle, "_sleep", waits.append)
    settings.PORTAL_LOGIN_THROTTLE = {"FAILURES_PER_USER_ADDRESS": 5, "FAILURES_PER_ADDRESS": 4, "WINDOW": 600}
    attacker = Client(REMOTE_ADDR="203.0.113.9")
    for name in ("a", "b", "c", "d"):
        sign_in(attacker, name, "wrong")
    assert sign_in(attacker, "alice").status_code == 302
    assert waits == [login_throttle.DEFAULTS["SLOWDOWN_BASE"]]


def test_the_lock_also_guards_the_admin_sign_in(world, settings):
    settings.PORTAL_LOGIN_THROTTLE = {"FAILURES_PER_USER_ADDRESS": 2, "FAILURES_PER_ADDRESS": 20, "WINDOW": 600}
    client = Client()
    for _ in range(2):
        client.post("/admin/login/", {"username": "sam", "password": "wrong"})
    client.post("/admin/login/", {"username": "sam", "password": PASSWORD})
    assert client.get("/admin/").status_code == 302


def test_a_successful_sign_in_clears_earlier_failures(world, settings):
    settings.PORTAL_LOGIN_THROTTLE = {"FAILURES_PER_USER_ADDRESS": 3, "FAILURES_PER_ADDRESS": 20, "WINDOW": 600}
    client = Client()
    for _ in range(2):
        sign_in(client, "alice", "wrong")
    assert sign_in(client, "alice").status_code == 302
    client.post(reverse("portal:logout"))
    for _ in range(2):
        sign_in(client, "alice", "wrong")
    assert sign_in(client, "alice").status_code == 302


def test_a_user_changes_their_password(world):
    client = client_for(world.merchant_admin)
    page = client.get(reverse("portal:password_change"))
    assert page.status_code == 200
    response = client.post(
        reverse("portal:password_change"),
        {
            "old_password": PASSWORD,
            "new_password1": "a new long passphrase 42",
            "new_password2": "a new long passphrase 42",
        },
    )
    assert response["Location"] == reverse("portal:password_change_done")
    assert sign_in(Client(), "alice", "a new long passphrase 42").status_code == 302


def test_a_password_change_shows_its_errors_inline(world):
    client = client_for(world.merchant_admin)
    response = client.post(
        reverse("portal:password_change"), {"old_password": "nope", "new_password1": "x", "new_password2": "y"}
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert "Your old password was entered incorrectly" in body
    assert "errorlist" in body


def test_a_user_resets_a_forgotten_password_through_the_e_mailed_link(world):
    world.merchant_admin.email = "alice@example.com"
    world.merchant_admin.save()
    client = Client()
    response = client.post(reverse("portal:password_reset"), {"email": "alice@example.com"})
    assert response["Location"] == reverse("portal:password_reset_done")
    assert len(mail.outbox) == 1
    link = re.search(r"http://testserver(/accounts/reset/\S+/)", mail.outbox[0].body).group(1)
    form_page = client.get(link, follow=True)
    assert "Choose a new password" in form_page.content.decode()
    response = client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": "brand new passphrase 7", "new_password2": "brand new passphrase 7"},
    )
    assert response["Location"] == reverse("portal:password_reset_complete")
    assert sign_in(Client(), "alice", "brand new passphrase 7").status_code == 302


def test_the_console_e_mail_backend_is_the_default():
    from portal import settings as project_settings

    assert project_settings.EMAIL_BACKEND == "django.core.mail.backends.console.EmailBackend"


def test_the_throttle_counts_in_the_deployments_cache(django_settings_cache):
    """With REDIS_URL set, the counters live in Redis, shared by every process."""
    from django.core.cache import caches

    from portal import login_throttle

    username = f"probe-{uuid.uuid4().hex}"
    address = "192.0.2.1"
    config = {"FAILURES_PER_USER_ADDRESS": 2, "FAILURES_PER_ADDRESS": 50, "WINDOW": 60}
    keys = [limit.key for limit in login_throttle._limits(username=username, address=address)]
    try:
        with override_settings(PORTAL_LOGIN_THROTTLE=config):
            login_throttle.login_failure_record(username=username, address=address)
            assert not login_throttle.login_locked(username=username, address=address)
            login_throttle.login_failure_record(username=username, address=address)
            assert login_throttle.login_locked(username=username, address=address)
            assert caches["default"].get(keys[0]) == 2
            login_throttle.login_success_reset(username=username, address=address)
            assert not login_throttle.login_locked(username=username, address=address)
    finally:
        caches["default"].delete_many(keys)


UNREACHABLE_REDIS_CACHE = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}
}


def test_while_the_cache_is_unreachable_sign_in_still_works_and_failures_are_not_counted(world, settings, caplog):
    # Redis down must not lock everybody out, nor answer a 500: the throttle fails open.
    settings.PORTAL_LOGIN_THROTTLE = {"FAILURES_PER_USER_ADDRESS": 1, "FAILURES_PER_ADDRESS": 1, "WINDOW": 600}
    with override_settings(CACHES=UNREACHABLE_REDIS_CACHE):
        client = Client()
        wrong = sign_in(client, "alice", "wrong")
        assert wrong.status_code == 200
        assert "Too many failed sign-ins" not in wrong.content.decode()
        assert sign_in(client, "alice").status_code == 302
    assert "failure not counted" in caplog.text
