"""What a delivery sends: the event's body (v1.1 §16) as compact JSON, and its headers."""

from __future__ import annotations

import json
import time
from typing import Any

from connector.clients.webhooks import SIGNATURE_HEADER, sign
from connector.models import Event
from connector.protocol import timestamp

USER_AGENT = "CloudConnector-Webhooks/1.1"


def event_body(event: Event) -> dict[str, Any]:
    """The body of an event: the same for every endpoint and every attempt (receivers
    deduplicate on `id`, order on `created` and `data.seq`)."""
    return {
        "id": str(event.id),
        "type": event.type,
        "created": timestamp(event.occurred_at),
        "data": {**event.data, "session_id": event.session_id or None, "seq": event.seq},
    }


def encode(body: dict[str, Any]) -> bytes:
    """Compact JSON bytes: the bytes signed are the bytes sent."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def headers(secret: str, raw: bytes, *, now: float | None = None) -> dict[str, str]:
    """The headers of one attempt, signed at the moment of sending (a retry a day later
    carries a fresh timestamp, so receivers' replay tolerance does not refuse it)."""
    moment = int(time.time() if now is None else now)
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(secret, raw, moment),
    }
