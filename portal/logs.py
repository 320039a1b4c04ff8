"""Log lines: JSON in production (`LOG_FORMAT=json`, one object per line), readable text in
development; a request id on every line of a request; never a secret.

Configured by portal/settings.py's LOGGING (docs/operations.md, "Logs"). Each line carries
`timestamp`, `level`, `logger`, `message`, `worker` (host:pid, the start of the relay's node
name), and those of CONTEXT_FIELDS that apply: `request_id` from `RequestIdMiddleware`, and
`session_id`, `tsn`, `flow_id`, `client_id`... from the record (`extra=` or a
`logging.LoggerAdapter`, which is how connector and accounts attach them: they do not import
portal) or from `bind`.

`ScrubSecrets` rewrites anything that looks like a secret before any handler formats it: a
`client_secret`, `access_token`, `refresh_token` or `password` value (form, query or JSON),
the credentials of an `Authorization` header, and JWTs.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

# What a line may carry besides the basics, in this order. Nothing else from a record's
# `extra` is written: an arbitrary object could hold anything, a secret included.
CONTEXT_FIELDS = (
    "request_id",
    "session_id",
    "tsn",
    "flow_id",
    "client_id",
    "endpoint",
    "close_code",
    "event",
)

_NOTHING: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "cloud_connector_log_context", default=_NOTHING
)


def bind(**fields: Any) -> contextvars.Token:
    """Add fields to every line logged from this context (this task, this request) from now on;
    `unbind(token)` undoes it. Unknown field names are refused: see CONTEXT_FIELDS."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"not a log context field: {', '.join(sorted(unknown))}")
    return _context.set({**_context.get(), **fields})


def unbind(token: contextvars.Token) -> None:
    _context.reset(token)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def context() -> Mapping[str, Any]:
    return _context.get()


def worker() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}"


# --- secrets out ---------------------------------------------------------------------------------

SCRUBBED = "[scrubbed]"
_SECRET_NAMES = r"client_secret|access_token|refresh_token|id_token|password|secret|token"
_SCRUBS: list[tuple[re.Pattern[str], str]] = [
    # "Authorization: Bearer x", authorization=Basic x, 'Authorization': 'Bearer x'
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1\2{SCRUBBED}"),
    # "client_secret": "x", 'access_token': 'x'
    (
        re.compile(rf"""(?i)(["']?\b(?:{_SECRET_NAMES})["']?\s*:\s*)(["'])(?:\\.|(?!\2).)*\2"""),
        rf"\1\2{SCRUBBED}\2",
    ),
    # client_secret=x (forms, query strings, reprs)
    (re.compile(rf"(?i)(\b(?:{_SECRET_NAMES})=)[^&\s\"',;)]+"), rf"\1{SCRUBBED}"),
    # JSON Web Tokens anywhere (a device's authorization_header, a token pasted into a message)
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), SCRUBBED),
]


def scrub(text: str) -> str:
    for pattern, replacement in _SCRUBS:
        text = pattern.sub(replacement, text)
    return text


class ScrubSecrets(logging.Filter):
    """On the handler: the message is rendered and scrubbed once, the traceback likewise, so
    that every formatter writes the scrubbed text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: log what there is, never fail
            message = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
            record.exc_info = None  # formatted and scrubbed: the formatters use exc_text
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, scrub(value))
        return True


class AddContext(logging.Filter):
    """On the handler: the fields bound in the logging call's context (`bind`, the request id)
    onto the record, while that context is still current. A field set on the record itself
    (`extra=`) wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        # django.request logs an error answer after the middleware returned (the id's context
        # is gone by then), with the request on the record.
        request_id = getattr(getattr(record, "request", None), "request_id", None)
        if request_id is not None and getattr(record, "request_id", None) is None:
            record.request_id = request_id
        return True


PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class QuietProbes(logging.Filter):
    """On uvicorn's access log: no line for a successful health, readiness or metrics request
    (a load balancer and Prometheus make them every few seconds); failures are logged. On
    django.request: no line for a probe's error answer either (a 503 of /readyz at every probe
    while a backend is down); portal.health logs when a check starts and stops failing."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        if request is not None and getattr(request, "path_info", None) in PROBE_PATHS:
            return False
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:  # client, method, path, http version, status
            path, status = str(args[2]).split("?", 1)[0], args[4]
            if path in PROBE_PATHS and isinstance(status, int) and status < 400:
                return False
        return True


# --- formats -------------------------------------------------------------------------------------


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: value for name in CONTEXT_FIELDS if (value := getattr(record, name, None)) is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp (UTC, ISO 8601), level, logger, message, worker,
    the context fields that apply, and `exception` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "worker": worker(),
            **_fields(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2026-12-02 10:31:02,123 INFO connector.x: message [request_id=... session_id=...]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if not fields:
            return text
        first, newline, rest = text.partition("\n")
        context_text = " ".join(f"{name}={value}" for name, value in fields.items())
        return f"{first} [{context_text}]{newline}{rest}"


# --- the request id ------------------------------------------------------------------------------

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_from(header: str | None) -> str:
    """The caller's X-Request-ID when it is a sane token (a proxy's or a client's), else a new one."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Every HTTP request gets an id (its X-Request-ID, or a new one), bound to the log lines
    written while it is handled and sent back in the response's X-Request-ID."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        request.request_id = request_id
        with bound(request_id=request_id):
            response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response

    async def __acall__(self, request):
        request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        request.request_id = request_id
        with bound(request_id=request_id):
            response = await self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response
