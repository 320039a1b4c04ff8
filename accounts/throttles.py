"""Request rate limits on the shared cache: the token endpoint's (accounts/oauth.py) and the
REST API's (connector/api/throttles.py), per credential and per client address.

DRF throttles, with DRF's rate syntax (`"1200/min"`) and rates from
`REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]` (read per request, so that tests may override
them), counted differently from DRF's SimpleRateThrottle: that one reads a list of
timestamps, appends and writes it back, which loses counts when several processes serve
one address at once (exactly a flood) and moves a list of thousands of floats per request.
Here each window is one integer that the cache increments atomically (`add` then `incr`,
Redis INCR when REDIS_URL is set): a fixed window, so that a client may reach twice the
rate across the boundary of two windows, which is no help to a flood.

While the cache cannot be reached the limits fail open, as the sign-in throttle does
(accounts/failure_counts.py): refusing every token and every API call for the length of a
Redis outage would do more harm than not counting for that long.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import time

from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

logger = logging.getLogger(__name__)

RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$")
PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """(requests, seconds) of a rate such as `1200/min`; ImproperlyConfigured if malformed."""
    match = RATE.match(rate)
    if match is None or int(match.group(1)) < 1:
        raise ImproperlyConfigured(
            f"{rate!r} is not a rate: use <requests>/<s|min|hour|day> with at least 1 request, e.g. 1200/min"
        )
    return int(match.group(1)), PERIODS[match.group(2)[0]]


def address_ident(address: str | None) -> str:
    """Whom an address stands for: itself, or for IPv6 its /64, the block one subscriber
    gets, from which a client could otherwise draw a fresh address for every request."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or "-"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class WindowRateThrottle(BaseThrottle):
    """One scope's limit; subclasses say whom a request counts against (`ident`)."""

    scope: str = ""

    def ident(self, request, view) -> str | None:
        raise NotImplementedError

    def rate(self) -> tuple[int, int] | None:
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)
        return parse_rate(rate) if rate else None

    def allow_request(self, request, view) -> bool:
        ident = self.ident(request, view)
        return ident is None or self.allow(ident)

    def allow(self, ident: str) -> bool:
        """Count one request of `ident`; False when its window is spent."""
        rate = self.rate()
        self.retry_after = 0
        if rate is None:
            return True
        limit, period = rate
        now = time.time()
        window = int(now // period)
        key = f"throttle:{self.scope}:{ident}:{window}"
        try:
            # The key outlives its window by a little, so that incr() never meets it gone.
            count = 1 if cache.add(key, 1, timeout=period + 5) else cache.incr(key)
        except ValueError:  # expired between add() and incr()
            return True
        except Exception as error:  # noqa: BLE001 - each cache backend raises its client's own errors
            logger.warning("rate limit %s not counted (%s): allowing the request", self.scope, error)
            return True
        if count <= limit:
            return True
        self.retry_after = max(1, math.ceil((window + 1) * period - now))
        return False

    def wait(self) -> float:
        return self.retry_after


class AddressRateThrottle(WindowRateThrottle):
    """Counts every request of a client address (REMOTE_ADDR: uvicorn sets it from a trusted
    proxy's X-Forwarded-For; the header itself is whatever the client wants it to be)."""

    def ident(self, request, view) -> str | None:
        return address_ident(request.META.get("REMOTE_ADDR"))


class TokenAddressRateThrottle(AddressRateThrottle):
    scope = "token_address"


class TokenClientRateThrottle(WindowRateThrottle):
    """Counts the requests of a client that proved its secret: nobody can spend another
    client's allowance by sending its client_id with a wrong secret."""

    scope = "token_client"

    def ident(self, request, view) -> str | None:
        return request.client_id
