"""What the terminal simulator and the POS client share: URLs, the control envelope, errors.

Nothing here imports Django: the clients run in tests, benchmarks and scripts alike.
The wire format is the one of docs/protocol.md (§2, the control envelope).
"""

from __future__ import annotations

import json
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
    1009: "message too big",
    1011: "server error",
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
