"""Receiving Cloud Connector webhooks: verify the signature, drop the duplicates.

Nothing here imports Django or anything beyond the standard library, so a receiver can copy
this file as it is. docs/webhooks.md shows a receiver of twenty lines built on it.

Every delivery is a POST whose raw body is signed in the header

    Cloud-Connector-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">

keyed with the endpoint's secret (the whole `whsec_...` string, UTF-8). While a secret is
being rotated a header may hold several `v1=` values; one matching is enough. The timestamp
is signed too, so a captured delivery replayed later than `tolerance` seconds is refused.
Delivery is at least once: the same event (same `id`) may arrive twice, which
`Deduplicator` absorbs.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict

SIGNATURE_HEADER = "Cloud-Connector-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE = 300


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of `<timestamp>.<body>` keyed with the secret."""
    signed = str(int(timestamp)).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The value of the Cloud-Connector-Signature header for this body at this time
    (`t=<timestamp>,v1=<signature>`); the server signs every delivery with it."""
    return f"t={int(timestamp)},{SCHEME}={signature(secret, body, timestamp)}"


def parse_header(header: str) -> tuple[int | None, list[str]]:
    """The timestamp and the v1 signatures of a header; (None, []) parts when absent or
    malformed. Unknown schemes are ignored, so a future `v2=` does not break this reader."""
    timestamp: int | None = None
    candidates: list[str] = []
    for item in (header or "").split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif key == SCHEME and value:
            candidates.append(value)
    return timestamp, candidates


def verify(
    secret: str, header: str, body: bytes, *, tolerance: int = DEFAULT_TOLERANCE, now: float | None = None
) -> bool:
    """Whether `header` is a valid signature of `body` by `secret`, made within `tolerance`
    seconds of `now` (either way: clocks drift). Compared in constant time; any of several
    `v1=` values may match (secret rotation)."""
    timestamp, candidates = parse_header(header)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = signature(secret, body, timestamp)
    # Every candidate is compared, matched or not: the time taken says nothing about which.
    matches = [hmac.compare_digest(expected, candidate) for candidate in candidates]
    return any(matches)


class Deduplicator:
    """The event ids seen lately, at most `capacity` of them (the oldest forgotten first):
    `seen(id)` is False the first time an id comes and True on every repeat it still
    remembers. Thread-safe, for a threading HTTP server. A receiver that must never act twice
    across restarts keeps the ids in its database instead (a unique key on `id`)."""

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, event_id: str) -> bool:
        with self._lock:
            if event_id in self._ids:
                self._ids.move_to_end(event_id)
                return True
            self._ids[event_id] = None
            if len(self._ids) > self.capacity:
                self._ids.popitem(last=False)
            return False

    def __len__(self) -> int:
        return len(self._ids)
