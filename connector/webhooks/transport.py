"""One POST of a webhook: to a vetted address, bounded in time, no redirects, little read.

The connection goes to the address the guard vetted, not to the name: a urllib3 pool is
opened on the IP itself, the request carries the name in `Host`, and for https the TLS
handshake sends the name as SNI and checks the certificate against it (`server_hostname`,
`assert_hostname`). A resolver that answers a public address to the check and a private one
to the connection (DNS rebinding) is therefore harmless: there is no second resolution.

Whatever happens, `post` returns an `Outcome` and never raises for the receiver's sake: a
refused connection, a reset, a TLS failure, a redirect, a timeout are all answers to record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from connector.webhooks.guard import AddressNotAllowed, vetted_addresses

# The most of an answer read (then discarded: bodies are never stored). Enough to let a
# receiver finish a short answer, too little for a hostile one to cost memory.
MAX_ANSWER_BYTES = 4096
MAX_ERROR_LENGTH = 300
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: the status code if an answer came, else the error."""

    response_code: int | None
    error: str
    duration_ms: int

    @property
    def succeeded(self) -> bool:
        return self.response_code is not None and 200 <= self.response_code < 300 and not self.error


def _elapsed_ms(started: float) -> int:
    return max(0, round((time.monotonic() - started) * 1000))


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 1] + "…"


def _error_text(error: Exception, timeout: float) -> str:
    """A short, secret-free description of a failed connection (urllib3's own messages name
    the pool, which is an IP, and sometimes repeat the whole request line)."""
    if isinstance(error, NewConnectionError):
        reason = error.__context__ or error
        return _short(f"connection failed: {getattr(reason, 'strerror', None) or reason}")
    # After NewConnectionError, which urllib3 2 derives from ConnectTimeoutError.
    if isinstance(error, ConnectTimeoutError):
        return f"timeout: no connection within {timeout:g} s"
    if isinstance(error, ReadTimeoutError):
        return f"timeout: no answer within {timeout:g} s"
    if isinstance(error, SSLError):
        return _short(f"TLS error: {error.__context__ or error}")
    if isinstance(error, ProtocolError):
        return "connection closed without an answer"
    return _short(f"{type(error).__name__}: {error}")


def _host_header(host: str, port: int, scheme: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == DEFAULT_PORTS[scheme] else f"{shown}:{port}"


def _pool(scheme: str, address: str, port: int, host: str, timeout: urllib3.Timeout) -> urllib3.HTTPConnectionPool:
    if scheme == "https":
        return urllib3.HTTPSConnectionPool(
            address,
            port,
            timeout=timeout,
            maxsize=1,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            server_hostname=host,
            assert_hostname=host,
        )
    return urllib3.HTTPConnectionPool(address, port, timeout=timeout, maxsize=1, retries=False)


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> Outcome:
    """POST `body` to `url` within `timeout` seconds in all (resolution included); an answer
    that comes later is a timeout, as the contract counts only a 2xx within the bound."""
    started = time.monotonic()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS.get(scheme, 0)
    if scheme not in DEFAULT_PORTS or not host:
        return Outcome(None, "not an http(s) URL", _elapsed_ms(started))
    try:
        addresses = vetted_addresses(host, port)
    except AddressNotAllowed as refused:
        return Outcome(None, _short(str(refused)), _elapsed_ms(started))
    remaining = timeout - (time.monotonic() - started)
    if remaining <= 0:
        return Outcome(None, f"timeout: no answer within {timeout:g} s", _elapsed_ms(started))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    pool = _pool(scheme, str(addresses[0]), port, host, urllib3.Timeout(total=remaining))
    try:
        response = pool.urlopen(
            "POST",
            target,
            body=body,
            headers={**headers, "Host": _host_header(host, port, scheme)},
            redirect=False,
            retries=False,
            preload_content=False,
            assert_same_host=False,
        )
        duration = _elapsed_ms(started)
        try:
            response.read(MAX_ANSWER_BYTES, decode_content=False)
        except HTTPError:
            pass  # the status line came: what follows it does not change the answer
        finally:
            response.close()
    except HTTPError as error:
        return Outcome(None, _error_text(error, timeout), _elapsed_ms(started))
    except OSError as error:
        return Outcome(None, _short(f"connection failed: {error}"), _elapsed_ms(started))
    finally:
        pool.close()
    if duration > timeout * 1000:
        return Outcome(response.status, f"timeout: answered after {timeout:g} s", duration)
    if 300 <= response.status < 400:
        return Outcome(response.status, "redirect not followed", duration)
    return Outcome(response.status, "", duration)
