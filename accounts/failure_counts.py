"""Fixed-window failure counters in the cache: the sign-in throttle's (portal.login_throttle)
and the relay's limit on failed registrations (connector.sessions).

The cache is Redis when REDIS_URL is set, so that every process of a deployment shares the
counts. While it cannot be reached the counters fail open: nothing is counted and nobody is
locked out, with a warning in the log. Refusing every sign-in and every terminal
registration for the length of a Redis outage would do more harm than not counting failures
for that long.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

from django.core.cache import cache

logger = logging.getLogger(__name__)


def counts(keys: Iterable[str]) -> dict[str, int]:
    """The failures counted under each key in its current window (absent: none)."""
    keys = list(keys)
    try:
        return cache.get_many(keys)
    except Exception as error:  # noqa: BLE001 - each cache backend raises its client's own errors
        logger.warning("failure counts unavailable (%s): not limiting %s", error, keys)
        return {}


def record(key: str, *, window: int) -> None:
    """Count one failure. The window opens at the first failure and is not moved by later
    ones: add() sets the expiry, incr() keeps it."""
    try:
        if not cache.add(key, 1, timeout=window):
            try:
                cache.incr(key)
            except ValueError:  # expired between add() and incr()
                cache.add(key, 1, timeout=window)
    except Exception as error:  # noqa: BLE001 - see counts()
        logger.warning("failure not counted (%s): %s", error, key)


def reset(key: str) -> None:
    try:
        cache.delete(key)
    except Exception as error:  # noqa: BLE001 - see counts()
        logger.warning("failure count not reset (%s): %s", error, key)


def window_bucket(window: int, *, now: float | None = None) -> tuple[int, int]:
    """The fixed window of `window` seconds that `now` falls in: its number, to put in a
    counter's key, and the whole seconds until it closes (what a refusal's Retry-After
    says). Windows aligned on the clock, unlike record()'s, let every process tell when a
    count expires without asking the cache."""
    now = time.time() if now is None else now
    number = int(now // window)
    return number, max(1, math.ceil((number + 1) * window - now))
