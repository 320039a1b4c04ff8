"""Sign-in throttling: too many failed password checks lock a username/address pair, and
an address, for a while.

Counts live in the cache (accounts.failure_counts: Redis when REDIS_URL is set, so that
every process of a deployment shares them; per process otherwise; not counted while Redis
is unreachable). An authentication backend placed before
ModelBackend refuses the check outright while a lock holds, so that a correct password
guessed during the lock does not sign anyone in; the `user_login_failed` and
`user_logged_in` signals count and reset. It covers every password sign-in, the portal's
and the admin's alike, because both go through `django.contrib.auth.authenticate`.

Why not django-axes: it needs the request in every `authenticate()` call (the test
client's `login()` passes none), writes a database row for each attempt and brings a
migration and a dependency; a fixed-window counter in the cache is all that this needs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from accounts import failure_counts

DEFAULTS = {"FAILURES_PER_USER_ADDRESS": 5, "FAILURES_PER_ADDRESS": 20, "WINDOW": 900}


@dataclass(frozen=True)
class Limit:
    key: str
    failures: int


def _config() -> dict[str, int]:
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
    limits = _limits(username=username, address=address)
    counted = failure_counts.counts(limit.key for limit in limits)
    return any(counted.get(limit.key, 0) >= limit.failures for limit in limits)


def login_failure_record(*, username: str, address: str) -> None:
    window = _config()["WINDOW"]
    # The lock ends WINDOW seconds after the first failure, not the last.
    for limit in _limits(username=username, address=address):
        failure_counts.record(limit.key, window=window)


def login_success_reset(*, username: str, address: str) -> None:
    # Only the pair: a success must not wipe what an address did against other accounts.
    failure_counts.reset(_limits(username=username, address=address)[0].key)


def lockout_minutes() -> int:
    return max(1, _config()["WINDOW"] // 60)


class LoginThrottleBackend:
    """First in AUTHENTICATION_BACKENDS: refuses every password check while locked.

    It deliberately has no `get_user`, so sessions and `force_login` keep naming
    ModelBackend."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None, password=None, **kwargs):
        if username is not None and login_locked(username=username, address=client_address(request)):
            raise PermissionDenied("Too many failed sign-ins.")
        return None

    async def aauthenticate(self, request: HttpRequest | None, username: str | None = None, password=None, **kwargs):
        from asgiref.sync import sync_to_async

        return await sync_to_async(self.authenticate)(request, username=username, password=password, **kwargs)


def on_login_failed(sender, credentials: dict, request: HttpRequest | None = None, **kwargs) -> None:
    username = credentials.get("username")
    if username:
        login_failure_record(username=username, address=client_address(request))


def on_logged_in(sender, request: HttpRequest | None, user, **kwargs) -> None:
    login_success_reset(username=user.get_username(), address=client_address(request))
