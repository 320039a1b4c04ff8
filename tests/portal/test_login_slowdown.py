"""Sign-in throttling by address slows an address down instead of locking out everyone
behind it; the lock per username and address stays (portal/login_throttle.py)."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from portal import login_throttle
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db

SHOP = "203.0.113.50"  # one office's NAT address


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The delays the throttle asked for, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(login_throttle, "_sleep", recorded.append)
    return recorded


def throttle(settings, **values) -> None:
    settings.PORTAL_LOGIN_THROTTLE = {
        "FAILURES_PER_USER_ADDRESS": 3,
        "FAILURES_PER_ADDRESS": 2,
        "WINDOW": 600,
        "SLOWDOWN_BASE": 1,
        "SLOWDOWN_MAX": 4,
        "SLOWDOWN_CONCURRENCY": 4,
        **values,
    }


def sign_in(username: str, password: str = PASSWORD, *, address: str = SHOP, path: str | None = None):
    return Client(REMOTE_ADDR=address).post(
        path or reverse("portal:login"), {"username": username, "password": password}
    )


def fail_from_shop(*usernames: str) -> None:
    for username in usernames:
        assert sign_in(username, "wrong").status_code == 200


@pytest.mark.parametrize(("username", "path"), [("alice", None), ("sam", "/admin/login/")])
def test_the_right_password_from_an_address_that_keeps_failing_still_signs_in(world, settings, waits, username, path):
    throttle(settings)
    fail_from_shop("someone", "anyone", "nobody")
    response = sign_in(username, path=path)
    assert response.status_code == 302 and "login" not in response["Location"]
    assert waits, "the check was not slowed down"


def test_each_check_from_a_slowed_address_waits_longer_up_to_the_cap(world, settings, waits):
    throttle(settings)
    fail_from_shop("u1", "u2")  # the address's count: no wait yet
    assert waits == []
    fail_from_shop("u3", "u4", "u5", "u6")
    assert waits == [1, 2, 4, 4]
    sign_in("alice", address="198.51.100.9")  # another address is not slowed
    assert waits == [1, 2, 4, 4]


def test_the_username_lock_still_holds_at_a_slowed_address_and_spares_the_other_users(world, settings, waits):
    throttle(settings)
    fail_from_shop("alice", "alice", "alice")
    locked = sign_in("alice")
    assert "Too many failed sign-ins" in locked.content.decode()
    assert sign_in("agnes").status_code == 302


def test_a_check_arriving_while_another_waits_is_refused_at_once_unchecked_and_uncounted(world, settings, waits):
    throttle(settings, FAILURES_PER_USER_ADDRESS=1)
    fail_from_shop("u1", "u2")
    cache.add(login_throttle._address_mark(SHOP), 1, timeout=60)  # another check of the shop is waiting
    for _ in range(3):
        busy = sign_in("alice")
        assert busy.status_code == 200
        assert "try again in a few seconds" in busy.content.decode()
    assert waits == []
    # Those refusals were not failures: with a lock after one failure, alice is not locked.
    assert not login_throttle.login_locked(username="alice", address=SHOP)
    cache.delete(login_throttle._address_mark(SHOP))
    assert sign_in("alice").status_code == 302


def test_the_process_bounds_how_many_checks_wait_at_once(world, settings, waits, monkeypatch):
    throttle(settings, SLOWDOWN_CONCURRENCY=2)
    fail_from_shop("u1", "u2")
    monkeypatch.setattr(login_throttle, "_waiting", 2)  # two checks of other addresses are waiting
    assert login_throttle.login_slowdown_wait(address=SHOP) is False
    assert "try again in a few seconds" in sign_in("alice").content.decode()
    monkeypatch.setattr(login_throttle, "_waiting", 1)
    assert sign_in("alice").status_code == 302
    assert login_throttle._waiting == 1  # the slot it took is given back
