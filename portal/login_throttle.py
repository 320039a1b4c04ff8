"""Sign-in throttling: too many failed password checks lock a username/address pair for a
while, and slow down an address.

- The lock: after FAILURES_PER_USER_ADDRESS failures for one username from one address
  within WINDOW seconds, every sign-in of that username from that address is refused,
  the right password included, until the window ends.
- The slowdown: an address with FAILURES_PER_ADDRESS failures or more in its window (any
  usernames) is not locked out, because the people behind one shop's or one office's NAT
  share it and one of them typing a wrong password must not refuse the others. Instead
  each password check from it waits first: SLOWDOWN_BASE seconds, doubling with every
  further failure, at most SLOWDOWN_MAX. Only one check per address waits at a time (a
  mark in the cache, shared by every process); one that arrives meanwhile is refused at
  once, unchecked and uncounted, with "try again in a few seconds", so that parallel
  requests cannot beat the delay nor race the username lock (which is read again after
  the wait). Each process lets at most SLOWDOWN_CONCURRENCY checks wait at once and
  refuses the same way beyond that, so the delays never tie up more than that many
  threads. An address past its count thus gets at most one password check per
  SLOWDOWN_MAX seconds once its delay has grown, and never more than the username lock
  allows for any one username.

Counts live in the cache (accounts.failure_counts: Redis when REDIS_URL is set, so that
every process of a deployment shares them; per process otherwise; not counted while Redis
is unreachable). An authentication backend placed before ModelBackend refuses the check
outright while a lock holds, so that a correct password guessed during the lock does not
sign anyone in, and waits out the slowdown; the `user_login_failed` and `user_logged_in`
signals count and reset. It covers every password sign-in, the portal's and the admin's
alike, because both go through `django.contrib.auth.authenticate`.

Why not django-axes: it needs the request in every `authenticate()` call (the test
client's `login()` passes none), writes a database row for each attempt and brings a
migration and a dependency; a fixed-window counter in the cache is all that this needs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from accounts import failure_counts

logger = logging.getLogger(__name__)

DEFAULTS = {
    "FAILURES_PER_USER_ADDRESS": 5,
    "FAILURES_PER_ADDRESS": 20,
    "WINDOW": 900,
    "SLOWDOWN_BASE": 1,
    "SLOWDOWN_MAX": 10,
    "SLOWDOWN_CONCURRENCY": 4,
}

# Set on the request when the throttle refused a sign-in without checking its password, so
# that the refusal is not counted as a failure and the form can say why (see `throttled`).
BUSY = "busy"
LOCKED = "locked"


@dataclass(frozen=True)
class Limit:
    key: str
    failures: int


def _config() -> dict[str, float]:
    return {**DEFAULTS, **getattr(settings, "PORTAL_LOGIN_THROTTLE", {})}


def client_address(request: HttpRequest | None) -> str:
    # REMOTE_ADDR only: X-Forwarded-For is whatever the client wants it to be unless a
    # trusted proxy rewrites REMOTE_ADDR itself.
    if request is None:
        return "-"
    return request.META.get("REMOTE_ADDR") or "-"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def _limits(*, username: str, address: str) -> list[Limit]:
    config = _config()
    return [
        Limit(f"login-fail:ua:{_digest(username.casefold() + '|' + address)}", config["FAILURES_PER_USER_ADDRESS"]),
        Limit(f"login-fail:a:{_digest(address)}", config["FAILURES_PER_ADDRESS"]),
    ]


def login_locked(*, username: str, address: str) -> bool:
    """Is a sign-in for this username from this address refused for now?"""
    pair = _limits(username=username, address=address)[0]
    return failure_counts.counts([pair.key]).get(pair.key, 0) >= pair.failures


def login_delay(*, address: str) -> float:
    """How long a password check from this address waits first: 0 until the address has
    FAILURES_PER_ADDRESS failures in its window, then SLOWDOWN_BASE seconds, doubling with
    each failure beyond, at most SLOWDOWN_MAX."""
    config = _config()
    limit = _limits(username="", address=address)[1]
    excess = failure_counts.counts([limit.key]).get(limit.key, 0) - limit.failures
    if excess < 0:
        return 0.0
    return float(min(config["SLOWDOWN_BASE"] * 2 ** min(excess, 32), config["SLOWDOWN_MAX"]))


# The process's bound on password checks waiting at once, whatever their addresses.
_waiting_lock = threading.Lock()
_waiting = 0


def _wait_slot_take(limit: int) -> bool:
    global _waiting
    with _waiting_lock:
        if _waiting >= limit:
            return False
        _waiting += 1
        return True


def _wait_slot_give_back() -> None:
    global _waiting
    with _waiting_lock:
        _waiting -= 1


def _address_mark(address: str) -> str:
    return f"login-slow:{_digest(address)}"


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # a seam for the tests, which record the delays instead of waiting


def login_slowdown_wait(*, address: str) -> bool:
    """Wait out the address's delay before its password check. False, without waiting,
    when another check of the address is waiting already or the process has as many
    waiting as it allows: that sign-in is refused unchecked."""
    delay = login_delay(address=address)
    if delay <= 0:
        return True
    config = _config()
    if not _wait_slot_take(int(config["SLOWDOWN_CONCURRENCY"])):
        return False
    mark = _address_mark(address)
    try:
        try:
            # Expires by itself should this process die while it waits.
            if not cache.add(mark, 1, timeout=math.ceil(delay) + 5):
                return False
        except Exception as error:  # noqa: BLE001 - as failure_counts: the cache fails open
            logger.warning("sign-in slowdown mark unavailable (%s): waiting without it", error)
            mark = None
        try:
            _sleep(delay)
        finally:
            if mark is not None:
                failure_counts.reset(mark)
        return True
    finally:
        _wait_slot_give_back()


def login_failure_record(*, username: str, address: str) -> None:
    window = _config()["WINDOW"]
    # The lock ends WINDOW seconds after the first failure, not the last.
    for limit in _limits(username=username, address=address):
        failure_counts.record(limit.key, window=window)


def login_success_reset(*, username: str, address: str) -> None:
    # Only the pair: a success must not wipe what an address did against other accounts.
    failure_counts.reset(_limits(username=username, address=address)[0].key)


def lockout_minutes() -> int:
    return max(1, int(_config()["WINDOW"]) // 60)


def throttled(request: HttpRequest | None) -> str | None:
    """Why the throttle refused this request's sign-in unchecked (BUSY, LOCKED), or None."""
    return getattr(request, "_login_throttled", None)


def _refuse(request: HttpRequest | None, reason: str) -> None:
    if request is not None:
        request._login_throttled = reason
    raise PermissionDenied("Too many failed sign-ins.")


class LoginThrottleBackend:
    """First in AUTHENTICATION_BACKENDS: refuses every password check while locked.

    It deliberately has no `get_user`, so sessions and `force_login` keep naming
    ModelBackend."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None, password=None, **kwargs):
        if username is None:
            return None
        address = client_address(request)
        if login_locked(username=username, address=address):
            _refuse(request, LOCKED)
        if not login_slowdown_wait(address=address):
            _refuse(request, BUSY)
        # Again after the wait: a failure recorded meanwhile may have locked the pair.
        if login_locked(username=username, address=address):
            _refuse(request, LOCKED)
        return None

    async def aauthenticate(self, request: HttpRequest | None, username: str | None = None, password=None, **kwargs):
        from asgiref.sync import sync_to_async

        return await sync_to_async(self.authenticate)(request, username=username, password=password, **kwargs)


def on_login_failed(sender, credentials: dict, request: HttpRequest | None = None, **kwargs) -> None:
    username = credentials.get("username")
    # A sign-in refused unchecked while another waited guessed nothing: not a failure, or a
    # person behind a busy address would lock their own username by trying again.
    if username and throttled(request) != BUSY:
        login_failure_record(username=username, address=client_address(request))


def on_logged_in(sender, request: HttpRequest | None, user, **kwargs) -> None:
    login_success_reset(username=user.get_username(), address=client_address(request))
