"""The Cloud Connector wire protocol, v1: envelopes, error codes, close codes, validation.

Pure functions and constants only (no database, no sockets), so that every rule of the
contract that can be checked without I/O is checked here and unit-tested here.

Decisions where the contract is silent:

- An endpoint path is at most 255 characters long (a URL path beyond that is a mistake,
  not a terminal); a repeated endpoint in a registration is accepted once; an empty
  `endpoints` list is refused (a terminal that serves nothing cannot come online).
- A `flow_id` is echoed when it is a string or a number (numbers are echoed as sent).
  Anything else cannot be echoed and the response carries `null`.
- A control message is read totally (`read_json`): JSON that Python reads but that cannot
  travel back out as strict JSON in UTF-8 is a 400 `invalid_request` wherever it sits,
  with the `flow_id` echoed when the `flow_id` itself is fine: `NaN` and `Infinity`,
  numbers beyond a float's range or past Python's 4300-digit integer limit, lone
  surrogates (`"\\ud800"`), and nesting deeper than `MAX_DEPTH`. Text frames that are not
  UTF-8 never reach the application: the server closes them with 1007 (RFC 6455 §8.1).
- Control messages on `device-listener` and `pos-listener` are small JSON documents: one
  larger than `CONTROL_MESSAGE_LIMIT` closes the socket with 1009 like an oversized relay
  frame would.
- The contract's §3 ("the server sends the error response, then closes with 1000") is
  more specific than §2 ("the socket stays open"), so on `device-listener` every error,
  malformed messages included, ends the registration socket; on `pos-listener` a
  malformed message leaves the socket open.

`ERRORS` is the one translation table from domain errors (by their `code`) to the wire:
the response's `status_code` and `error`, and the close code a socket that cannot answer
(a device or POS session socket at connect) closes with.
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from accounts import errors as domain

API_PREFIX = "/cloud-connector/v1"
DEVICE_LISTENER_PATH = f"{API_PREFIX}/device-listener"
POS_LISTENER_PATH = f"{API_PREFIX}/pos-listener"
DEVICE_PATH = f"{API_PREFIX}/device"
SESSION_PATH = f"{API_PREFIX}/session"

MAX_ENDPOINTS = 16
MAX_ENDPOINT_LENGTH = 255
MAX_TSN_LENGTH = 200
CONTROL_MESSAGE_LIMIT = 64 * 1024
# Control messages are a few levels deep; this leaves room for any data a client attaches
# while keeping every walk over a message far from Python's recursion limit.
MAX_DEPTH = 32
DEFAULT_ENDPOINTS = ("/",)

ENDPOINT_RE = re.compile(r"^/([A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*)?$")
TSN_RE = re.compile(r"^[A-Za-z0-9._-]+$")
# token_urlsafe(24) is 32 characters; accept a little range so the format can grow.
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{22,64}$")
# The patterns above are used with fullmatch: their `$` alone would let a trailing "\n" in.
SURROGATE_RE = re.compile("[\ud800-\udfff]")
# A JSON string token (an unterminated one runs to the end, so that a scan stays linear),
# or a bracket: enough to measure nesting without parsing.
_JSON_NESTING_RE = re.compile(r'"(?:[^"\\]++|\\.)*+"?|[\[\]{}]', re.DOTALL)


class Close(enum.IntEnum):
    """Close codes of §9."""

    NORMAL = 1000
    GOING_AWAY = 1001
    TOO_BIG = 1009
    PROTOCOL_VIOLATION = 4400
    UNAUTHENTICATED = 4401
    FORBIDDEN = 4403
    NOT_FOUND = 4404
    REGISTRATION_TIMEOUT = 4408
    REPLACED = 4409
    GONE = 4410
    RATE_LIMITED = 4429
    PEER_UNAVAILABLE = 4503


@dataclass(frozen=True)
class WireError:
    """An error as the client sees it: a response resource and, for sockets that cannot
    answer, a close code."""

    status_code: int
    error: str
    message: str
    close_code: int
    extra: dict[str, Any] = field(default_factory=dict)

    def resource(self) -> dict[str, Any]:
        return {
            "status": "error",
            "status_code": self.status_code,
            "error": self.error,
            "message": self.message,
            **self.extra,
        }


# code -> (status_code, error, close code). Domain errors carry `code`; the generic classes
# of accounts.errors fall back on their HTTP-like meaning.
ERRORS: dict[str, tuple[int, str, int]] = {
    "invalid_request": (400, "invalid_request", Close.PROTOCOL_VIOLATION),
    "invalid_client": (401, "invalid_client", Close.UNAUTHENTICATED),
    "invalid_token": (401, "invalid_token", Close.UNAUTHENTICATED),
    "insufficient_scope": (403, "insufficient_scope", Close.FORBIDDEN),
    "forbidden_origin": (403, "forbidden_origin", Close.FORBIDDEN),
    "device_disabled": (403, "device_disabled", Close.GONE),
    "service_not_active": (403, "service_not_active", Close.GONE),
    "not_claim_holder": (403, "not_claim_holder", Close.FORBIDDEN),
    "unknown_device": (404, "unknown_device", Close.NOT_FOUND),
    "unknown_session": (404, "unknown_session", Close.NOT_FOUND),
    "unknown_endpoint": (404, "unknown_endpoint", Close.NOT_FOUND),
    "session_ended": (410, "session_ended", Close.GONE),
    "device_offline": (409, "device_offline", Close.PEER_UNAVAILABLE),
    "session_claimed": (409, "session_claimed", Close.FORBIDDEN),
    "ambiguous_tsn": (409, "ambiguous_tsn", Close.NOT_FOUND),
    "not_claimed": (409, "not_claimed", Close.FORBIDDEN),
    "rate_limited": (429, "rate_limited", Close.RATE_LIMITED),
    "device_unresponsive": (504, "device_unresponsive", Close.PEER_UNAVAILABLE),
    "mtls_required": (403, "mtls_required", Close.FORBIDDEN),
    # Generic domain errors, for a service that raises one of accounts.errors directly.
    domain.Invalid.code: (400, "invalid_request", Close.PROTOCOL_VIOLATION),
    domain.NotFound.code: (404, "not_found", Close.NOT_FOUND),
    domain.NotAllowed.code: (403, "not_allowed", Close.FORBIDDEN),
    domain.Conflict.code: (409, "conflict", Close.FORBIDDEN),
}


class ProtocolError(domain.DomainError):
    """A request the protocol refuses before any business rule is asked; carries the
    `flow_id` when one could be read so that the error response can echo it."""

    code = "invalid_request"

    def __init__(self, message: str, *, flow_id: Any = None, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.flow_id = flow_id
        self.code = code


def translate(error: domain.DomainError) -> WireError:
    """The one translation of a domain error to the wire."""
    status_code, wire_code, close_code = ERRORS.get(error.code, (500, "server_error", 1011))
    extra = dict(getattr(error, "extra", None) or {})
    return WireError(status_code, wire_code, error.message, int(close_code), extra)


# --- envelopes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    flow_id: Any
    resource: dict[str, Any]


def _echoable(flow_id: Any) -> Any:
    """The flow_id as it can be sent back in strict JSON and UTF-8, else None."""
    if isinstance(flow_id, str):
        return None if SURROGATE_RE.search(flow_id) else flow_id
    if isinstance(flow_id, float):
        return flow_id if math.isfinite(flow_id) else None
    if isinstance(flow_id, bool) or not isinstance(flow_id, int):
        return None
    return flow_id


class _Unusable:
    """Stands in, while a message is read, for a value that JSON allows but the protocol
    cannot carry back (NaN, infinities, numbers out of range); never leaves `read_json`."""


_UNUSABLE = _Unusable()


def _finite_float(literal: str) -> float | _Unusable:
    value = float(literal)  # 1e999 reads as inf
    return value if math.isfinite(value) else _UNUSABLE


def _bounded_int(literal: str) -> int | _Unusable:
    try:
        return int(literal)
    except ValueError:  # past sys.get_int_max_str_digits() (4300) digits
        return _UNUSABLE


_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_int=_bounded_int, parse_constant=lambda _name: _UNUSABLE)


def _nesting_cut(text: str) -> str | None:
    """`text` with every array or object deeper than MAX_DEPTH replaced by `null`, or None
    when nothing is that deep. Lets the flow_id of a too-deep message be read without
    recursing into its depths."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return None  # cannot be deeper than it has brackets
    depth, cut_from, kept, start = 0, None, [], 0
    for token in _JSON_NESTING_RE.finditer(text):
        mark = token.group()
        if mark in "[{":
            depth += 1
            if depth == MAX_DEPTH + 1:
                cut_from = token.start()
        elif mark in "]}":
            if depth == MAX_DEPTH + 1 and cut_from is not None:
                kept += [text[start:cut_from], "null"]
                start, cut_from = token.end(), None
            depth = max(depth - 1, 0)
    if cut_from is not None:  # never closed: the text is not JSON anyway
        kept.append(text[start:cut_from])
        start = len(text)
    return None if not kept else "".join(kept) + text[start:]


def _flaw(document: Any) -> str | None:
    """What in a decoded document the protocol cannot carry, or None. Iterative: the
    document may be MAX_DEPTH deep."""
    pending = [document]
    while pending:
        value = pending.pop()
        if value is _UNUSABLE:
            return "Numbers must be finite JSON numbers (no NaN or Infinity) of at most 4300 digits."
        if isinstance(value, str) and SURROGATE_RE.search(value):
            return "Strings must be valid Unicode (no lone surrogates such as \\ud800)."
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return None


def read_json(text: str) -> tuple[Any, str | None]:
    """A JSON document from a client, and what makes it unusable (None when nothing does):
    NaN, infinities, numbers out of range, lone surrogates, nesting beyond MAX_DEPTH. The
    document is read even when flawed so that a usable flow_id can be echoed. Text that
    is not JSON at all is a ProtocolError."""
    cut = _nesting_cut(text)
    try:
        document = _DECODER.decode(text if cut is None else cut)
    except (ValueError, RecursionError):
        raise ProtocolError("The message is not JSON.") from None
    if cut is not None:
        return document, f"JSON nested deeper than {MAX_DEPTH} levels."
    return document, _flaw(document)


def parse_request(text: str | None) -> Request:
    """A control request from a text frame, or ProtocolError (with the flow_id if readable)."""
    if text is None:
        raise ProtocolError("Control messages are JSON text frames, not binary.")
    document, flaw = read_json(text)
    if not isinstance(document, dict) or not isinstance(document.get("request"), dict):
        raise ProtocolError('Expected {"request": {"flow_id": ..., "resource": {...}}}.')
    request = document["request"]
    flow_id = _echoable(request.get("flow_id"))
    if flaw is not None:
        raise ProtocolError(flaw, flow_id=flow_id)
    if "flow_id" not in request or flow_id is None:
        raise ProtocolError("The request has no usable flow_id (a string).", flow_id=flow_id)
    resource = request.get("resource")
    if not isinstance(resource, dict):
        raise ProtocolError("The request has no resource object.", flow_id=flow_id)
    return Request(flow_id=flow_id, resource=resource)


def dumps(document: dict[str, Any]) -> str:
    # allow_nan=False: an answer is strict JSON or nothing; what a client sent reaches an
    # answer only through _echoable and shown, which keep NaN and surrogates out.
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def shown(value: Any, limit: int = 60) -> str:
    """A client's value quoted in an error message: repr escapes surrogates, and the
    length is bounded whatever the client sent."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def ok_response(flow_id: Any, **fields: Any) -> str:
    return dumps({"response": {"flow_id": flow_id, "resource": {"status": "ok", "status_code": 200, **fields}}})


def timestamp(moment: datetime | None) -> str | None:
    """A time as v1.1 writes it: RFC 3339 in UTC with milliseconds (`2026-12-02T17:06:23.123Z`)."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_response(flow_id: Any, error: WireError) -> str:
    return dumps({"response": {"flow_id": flow_id, "resource": error.resource()}})


_event_ids = itertools.count(1)


def event(event_type: str, **fields: Any) -> str:
    """An event envelope; its flow_id is chosen by the server (unique per process)."""
    return dumps({"event": {"flow_id": f"evt-{next(_event_ids)}", "resource": {"type": event_type, **fields}}})


# --- resources ----------------------------------------------------------------------------


def validate_endpoints(value: Any) -> list[str]:
    """The endpoints of a registration: default ["/"], at most 16, each matching the
    contract's pattern; duplicates are kept once, in their first position."""
    if value is None:
        return list(DEFAULT_ENDPOINTS)
    if not isinstance(value, list) or not value:
        raise ProtocolError("endpoints must be a non-empty list of paths.")
    endpoints: list[str] = []
    for item in value:
        if not isinstance(item, str) or len(item) > MAX_ENDPOINT_LENGTH or not ENDPOINT_RE.fullmatch(item):
            raise ProtocolError(f"Invalid endpoint {shown(item)}: expected a path such as /upp/v1/transaction.")
        if item not in endpoints:
            endpoints.append(item)
    if len(endpoints) > MAX_ENDPOINTS:
        raise ProtocolError(f"At most {MAX_ENDPOINTS} endpoints.")
    return endpoints


def endpoint_from_path(rest: str | None) -> str | None:
    """The endpoint named by the part of a socket URL after the session id, or None when
    it is not a valid endpoint path. `""` and `"/"` both mean the root endpoint."""
    if not rest or rest == "/":
        return "/"
    endpoint = rest if rest.startswith("/") else f"/{rest}"
    if len(endpoint) > MAX_ENDPOINT_LENGTH or not ENDPOINT_RE.fullmatch(endpoint):
        return None
    return endpoint


def is_session_id(value: str) -> bool:
    return bool(SESSION_ID_RE.fullmatch(value))


def parse_tsn(value: Any) -> str:
    """A terminal serial number as sent: the serial alone or `{make}-{model}-{serial}`.
    Case is kept; lookups compare case-insensitively."""
    if not isinstance(value, str) or not value.strip():
        raise ProtocolError("tsn is required: the serial number or {make}-{model}-{serial}.")
    tsn = value.strip()
    if len(tsn) > MAX_TSN_LENGTH or not TSN_RE.fullmatch(tsn):
        raise ProtocolError("tsn may contain only letters, digits, '.', '_' and '-'.")
    return tsn


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    client_secret: str


def parse_registration_data(value: Any) -> ClientCredentials | None:
    """`custom_registration_data`: an object with client_id and client_secret, or a string
    holding that JSON object (as written in a terminal's configuration file)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value, flaw = read_json(value)
        except ProtocolError:
            raise ProtocolError("custom_registration_data is a string but not a JSON object.") from None
        if flaw is not None:
            raise ProtocolError(f"custom_registration_data: {flaw}")
    if not isinstance(value, dict):
        raise ProtocolError("custom_registration_data must be an object with client_id and client_secret.")
    client_id, secret = value.get("client_id"), value.get("client_secret")
    if not isinstance(client_id, str) or not isinstance(secret, str) or not client_id or not secret:
        raise ProtocolError("custom_registration_data needs client_id and client_secret strings.")
    if "\x00" in client_id or "\x00" in secret:
        # No credential holds one, and PostgreSQL refuses it in a query parameter.
        raise ProtocolError("client_id and client_secret cannot contain NUL characters.")
    return ClientCredentials(client_id=client_id, client_secret=secret)


MAX_LOCAL_URL_LENGTH = 2048
# v1.1 §14: where a terminal's own server may be, on the shop's network: private (RFC 1918,
# RFC 4193), link-local or loopback; never an address the internet routes. Listed rather
# than `ipaddress.is_private`, which also admits documentation and benchmarking ranges.
LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "127.0.0.0/8",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    )
)
_LOCAL_NAME_RE = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+local$")


def _local_host(host: str) -> bool:
    """An IP address in LOCAL_NETWORKS (an IPv4-mapped IPv6 one as its IPv4), or a `.local`
    (mDNS) name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return bool(_LOCAL_NAME_RE.fullmatch(host))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in LOCAL_NETWORKS)


def parse_local_url(value: Any) -> str:
    """A registration's `local_url` (v1.1 §14): the terminal's WebSocket server on the shop's
    network, `ws://` or `wss://` on a local host (`_local_host`), an optional port and path,
    nothing else (no credentials, query or fragment); "" when absent."""
    if value is None:
        return ""
    if not isinstance(value, str) or not value or len(value) > MAX_LOCAL_URL_LENGTH:
        raise ProtocolError(f"local_url must be a ws:// or wss:// URL of at most {MAX_LOCAL_URL_LENGTH} characters.")
    if SURROGATE_RE.search(value) or not value.isprintable() or " " in value:
        raise ProtocolError("local_url must be a URL without spaces or control characters.")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ProtocolError(f"local_url {shown(value)} is not a URL.") from None
    if parts.scheme not in ("ws", "wss"):
        raise ProtocolError("local_url must start with ws:// or wss://.")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ProtocolError("local_url takes a host, a port and a path; no credentials, query or fragment.")
    host = (parts.hostname or "").rstrip(".")
    if not host or not _local_host(host):
        raise ProtocolError(
            f"local_url {shown(value)} must name a private, link-local or loopback address, or a .local name."
        )
    if port == 0:
        raise ProtocolError("local_url has port 0.")
    return value


def parse_claim(resource: dict[str, Any]) -> tuple[str, bool]:
    tsn = parse_tsn(resource.get("tsn"))
    force = resource.get("force", False)
    if not isinstance(force, bool):
        raise ProtocolError("force must be true or false.")
    return tsn, force


def parse_session_id(resource: dict[str, Any]) -> str:
    session_id = resource.get("session_id")
    if not isinstance(session_id, str) or not session_id:
        raise ProtocolError("session_id is required.")
    if not is_session_id(session_id):
        # No session has such an id: answered as any unknown session is, without a query
        # (PostgreSQL would refuse a NUL in it).
        raise ProtocolError("No such session.", code="unknown_session")
    return session_id


def text_size_exceeds(text: str, limit: int) -> bool:
    """Is the UTF-8 encoding of `text` longer than `limit` bytes? Encodes only when the
    character count alone cannot decide (a character is 1 to 4 bytes)."""
    length = len(text)
    if length > limit:
        return True
    if length * 4 <= limit:
        return False
    return len(text.encode("utf-8")) > limit


def ws_base_url(*, public_url: str, host: str | None, secure: bool) -> str:
    """The scheme and authority that URLs handed to clients start with."""
    if public_url:
        return public_url.rstrip("/")
    return f"{'wss' if secure else 'ws'}://{host or 'localhost'}"


def connection_url(base: str, session_id: str) -> str:
    return f"{base}{DEVICE_PATH}/{session_id}"


def session_url(base: str, session_id: str) -> str:
    return f"{base}{SESSION_PATH}/{session_id}"
