"""What the terminal simulator and the POS client share: URLs, the control envelope, errors.

Nothing here imports Django: the clients run in tests, benchmarks and scripts alike.
The wire format is the one of docs/protocol.md (§2, the control envelope).
"""

from __future__ import annotations

import json
import math
import random
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import ConnectionClosed, InvalidStatus

Frame = str | bytes

DEVICE_LISTENER_PATH = "/cloud-connector/v1/device-listener"
POS_LISTENER_PATH = "/cloud-connector/v1/pos-listener"

CLOSE_MEANINGS: dict[int, str] = {
    1000: "normal closure",
    1001: "server going away",
    1006: "connection lost without a close frame",
    1007: "text frame that is not UTF-8",
    1009: "message too big",
    1011: "server error",
    1013: "try again later",
    4400: "protocol violation",
    4401: "not authenticated",
    4403: "not allowed",
    4404: "no such session or endpoint",
    4408: "timed out waiting for registration",
    4409: "replaced by another socket or claim taken over",
    4410: "session ended",
    4429: "rate limited",
    4503: "device endpoint not connected",
}


#: Close code of a socket the server sheds under overload (contract v1.1 §17), or of a device
#: socket that stopped reading (§7): never final, come back after the reason's retry_after.
TRY_AGAIN_LATER = 1013

#: Bound of a server's retry hint, in seconds. The server's own hints are short (the
#: failed-registration window is 60 s by default); the bound keeps a wrong or hostile hint
#: (retry_after=10**9) from silencing a terminal for good.
MAX_RETRY_AFTER = 600.0

# 2**40 times any sensible min_delay is far above any max_delay; past it the exponent only
# risks an OverflowError (a float cannot hold 2**1100).
_MAX_EXPONENT = 40

# `retry_after=N` in a close reason ("try again later; retry_after=5"): N whole seconds,
# a word of its own (not "retry_after=5s", not "x_retry_after=5").
_RETRY_AFTER_IN_REASON = re.compile(r"(?:^|[\s;,])retry_after=([0-9]+)(?=$|[\s;,])")


class ClientError(Exception):
    """Base of every error the clients raise; `str()` is one line meant for a person."""


class ControlError(ClientError):
    """The server answered a control request with `"status": "error"`."""

    def __init__(self, resource: Mapping[str, Any], *, action: str = "request") -> None:
        self.resource = dict(resource)
        self.action = action
        self.status_code = int(resource.get("status_code") or 0)
        self.error = str(resource.get("error") or "error")
        self.message = str(resource.get("message") or "")
        super().__init__(f"{action} refused: {self.status_code} {self.error} – {self.message}".rstrip(" –"))


class SocketClosed(ClientError):
    """A socket closed (or was refused) before the exchange was complete."""

    def __init__(self, what: str, code: int | None, reason: str = "") -> None:
        self.what = what
        self.code = code
        self.reason = reason
        super().__init__(f"{what} closed: {describe_close(code, reason)}")


class ProtocolViolation(ClientError):
    """The server sent something that is not a control message of the contract."""


@dataclass(frozen=True)
class CloseReport:
    """How one socket ended: the code and reason the server sent (1006: none)."""

    endpoint: str
    code: int | None
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.endpoint}: {describe_close(self.code, self.reason)}"


@dataclass(frozen=True)
class Envelope:
    """A parsed control message: `kind` is request, response or event."""

    kind: str
    flow_id: str | None
    resource: dict[str, Any] = field(default_factory=dict)


def describe_close(code: int | None, reason: str = "") -> str:
    if code is None:
        return reason or "no close code"
    meaning = CLOSE_MEANINGS.get(code, "unknown close code")
    return f"{code} {meaning}" + (f" ({reason})" if reason and reason != meaning else "")


def new_flow_id() -> str:
    return secrets.token_hex(8)


def encode_request(flow_id: str, resource: Mapping[str, Any]) -> str:
    return json.dumps({"request": {"flow_id": flow_id, "resource": dict(resource)}})


def parse_envelope(frame: Frame) -> Envelope:
    """Read a control message; raise ProtocolViolation for anything else."""
    if isinstance(frame, bytes):
        raise ProtocolViolation("a binary frame on a control socket")
    try:
        message = json.loads(frame)
    except ValueError:
        raise ProtocolViolation(f"not JSON: {frame[:80]!r}") from None
    if not isinstance(message, dict) or len(message) != 1:
        raise ProtocolViolation(f"not a control envelope: {frame[:80]!r}")
    kind, body = next(iter(message.items()))
    if kind not in {"request", "response", "event"} or not isinstance(body, dict):
        raise ProtocolViolation(f"not a control envelope: {frame[:80]!r}")
    resource = body.get("resource")
    if not isinstance(resource, dict):
        raise ProtocolViolation(f"a control message without a resource: {frame[:80]!r}")
    flow_id = body.get("flow_id")
    return Envelope(kind=kind, flow_id=None if flow_id is None else str(flow_id), resource=resource)


def websocket_base(url: str) -> str:
    """The ws(s) base of a deployment given as http(s) or ws(s), without a trailing slash."""
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ClientError(f"not a base URL: {url!r} (expected http(s)://host[:port] or ws(s)://host[:port])")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def http_base(url: str) -> str:
    """The http(s) base of a deployment given as http(s) or ws(s), without a trailing slash."""
    parts = urlsplit(websocket_base(url))
    return urlunsplit(({"ws": "http", "wss": "https"}[parts.scheme], parts.netloc, parts.path, "", ""))


def endpoint_url(base: str, endpoint: str) -> str:
    """`connection_url + E` and `session_url + E`; for `E` = `/`, the URL itself (§4, §6)."""
    if endpoint in ("", "/"):
        return base
    return base.rstrip("/") + endpoint


def bearer_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def close_of(exc: BaseException) -> tuple[int | None, str]:
    """The close code and reason a closed connection or refused handshake carries."""
    if isinstance(exc, ConnectionClosed):
        if exc.rcvd is not None:
            return exc.rcvd.code, exc.rcvd.reason
        return 1006, ""
    if isinstance(exc, InvalidStatus):
        return None, f"HTTP {exc.response.status_code} on the handshake"
    return None, str(exc) or type(exc).__name__


def preview(frame: Frame, limit: int = 500) -> str:
    """A frame shown to a person: text as is, binary as its size and leading bytes in hex."""
    if isinstance(frame, bytes):
        head = frame[:32].hex(" ")
        return f"<binary, {len(frame)} bytes: {head}{' …' if len(frame) > 32 else ''}>"
    return frame if len(frame) <= limit else f"{frame[:limit]} … ({len(frame)} characters)"


# -- reconnecting: backoff with full jitter and the server's retry hint ----------------------


def backoff_delay(attempt: int, *, min_delay: float, max_delay: float) -> float:
    """Exponential backoff with full jitter ("full jitter" of the AWS architecture blog): a
    delay drawn uniformly from [0, min(max_delay, min_delay * 2**(attempt - 1))].

    `attempt` counts the consecutive failures, from 1. Drawing from zero, not from half the
    bound, spreads a fleet that lost its server at the same instant over the whole window,
    so that it does not come back in waves."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt counts failures from 1, not {attempt!r}")
    if not (math.isfinite(min_delay) and math.isfinite(max_delay)) or not 0 <= min_delay <= max_delay:
        raise ValueError(f"the backoff needs 0 <= min_delay <= max_delay, not {min_delay!r} and {max_delay!r}")
    ceiling = min(max_delay, min_delay * 2 ** min(attempt - 1, _MAX_EXPONENT))
    return random.uniform(0, ceiling)


def retry_after_from_reason(reason: str | None) -> float | None:
    """The `retry_after=N` of a close reason (`try again later; retry_after=5`), in seconds,
    capped at MAX_RETRY_AFTER; None when the reason carries none or a malformed one."""
    if not reason:
        return None
    match = _RETRY_AFTER_IN_REASON.search(reason)
    if match is None:
        return None
    return _capped(int(match.group(1)))


def retry_after_value(value: object) -> float | None:
    """A `retry_after` field of an error resource (the 429 `rate_limited` answer, §3), in
    seconds, capped at MAX_RETRY_AFTER; None when it is absent, negative or not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value.isascii() or not value.isdecimal():
            return None
        if len(value) > 12:  # more than 30,000 years: capped without parsing (int() refuses 4,300 digits)
            return MAX_RETRY_AFTER
        value = int(value)
    if not isinstance(value, int | float) or (isinstance(value, float) and math.isnan(value)) or value < 0:
        return None
    return _capped(value)


def _capped(seconds: int | float) -> float:
    # Compared before float(): float(10**400) raises OverflowError.
    return MAX_RETRY_AFTER if seconds > MAX_RETRY_AFTER else float(seconds)


def close_retry_after(code: int | None, reason: str | None) -> float | None:
    """The retry hint of a close: only a 1013 (try again later) carries one."""
    return retry_after_from_reason(reason) if code == TRY_AGAIN_LATER else None


def retry_delay(attempt: int, *, min_delay: float, max_delay: float, retry_after: float | None = None) -> float:
    """How long to wait before the next attempt: the jittered backoff, or, when the server
    gave a hint, the hint and up to `min_delay` more.

    The server draws its hints evenly over the time it needs for the work it refused (a
    shed socket's `retry_after`, connector.relay.admission), so the clients it shed come back
    spread out already; the extra fraction keeps those given the same whole second from
    arriving in the same instant. Adding the full backoff on top would only keep the server
    idle once its queue has drained. Never shorter than what the server asked for."""
    if retry_after is None:
        return backoff_delay(attempt, min_delay=min_delay, max_delay=max_delay)
    hint = min(max(0.0, retry_after), MAX_RETRY_AFTER)
    return hint + random.uniform(0.0, min_delay)  # noqa: S311 - spreading retries, not a secret
