"""One POST of a webhook: to a vetted address, bounded in time, no redirects, little read.

The connection goes to the address the guard vetted, not to the name: a urllib3 pool is
opened on the IP itself, the request carries the name in `Host`, and for https the TLS
handshake sends the name as SNI and checks the certificate against it (`server_hostname`,
`assert_hostname`). A resolver that answers a public address to the check and a private one
to the connection (DNS rebinding) is therefore harmless: there is no second resolution.

Whatever happens, `post` returns an `Outcome` and never raises for the receiver's sake: a
refused connection, a reset, a TLS failure, a redirect, a timeout are all answers to record.

The timeout bounds the whole attempt, not each socket operation: urllib3's timeouts apply to
each connect, send and receive, so a receiver that drips its status line, its headers or its
body a byte every few seconds would hold a delivery worker for as long as it likes. A
watchdog (`_Deadline`) shuts the connection's socket down when the time is up, which makes the
blocked read fail at once; the attempt is then a timeout.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
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
# Once the deadline has passed, how often the watchdog looks again for a socket to shut down
# (one the connection opened after the first look: a TCP connect that ended just too late).
DEADLINE_RECHECK = 0.05


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


def _deadline_error(timeout: float, *, answered: bool) -> str:
    if answered:
        return f"timeout: the answer exceeded the {timeout:g} s deadline"
    # Before the status line and headers are in, a deadline passed is a read that timed out:
    # the same words, whichever of the two came first.
    return f"timeout: no answer within {timeout:g} s"


class _Deadline:
    """A watchdog for one attempt: when `at` (time.monotonic()) passes before `stop`, it shuts
    down the socket of each connection it watches, so that a read or write blocked on it
    fails at once, whatever urllib3's per-operation timeouts allow. It keeps looking every
    DEADLINE_RECHECK seconds until stopped: a connection may get its socket after the first
    look. `stop` comes before the attempt closes its sockets: the watchdog never shuts down
    a socket it does not own (the lock makes the two exclusive)."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._fired = False
        self._connections: list[HTTPConnection] = []
        self._sockets: list[socket.socket] = []
        self._shut: set[int] = set()
        self._thread = threading.Thread(target=self._watch, name="webhook-deadline", daemon=True)

    def start(self) -> _Deadline:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()

    @property
    def fired(self) -> bool:
        """Whether the watchdog has shut sockets down: what was read since may be cut short
        (a shut socket reads as the end of the stream)."""
        return self._fired

    @property
    def passed(self) -> bool:
        return self._fired or time.monotonic() >= self.at

    def watch(self, connection: HTTPConnection) -> None:
        """The connection's socket, whichever it holds when the deadline passes (the TCP
        socket during a TLS handshake, the TLS one after)."""
        with self._lock:
            self._connections.append(connection)

    def watch_socket(self, sock: object) -> None:
        """A connected socket, kept: http.client lets go of it (`sock = None`) when it hands
        a response that closes the connection over to that response."""
        if isinstance(sock, socket.socket):
            with self._lock:
                self._sockets.append(sock)

    def _watch(self) -> None:
        if self._stopped.wait(max(0.0, self.at - time.monotonic())):
            return
        while True:
            with self._lock:
                if self._stopped.is_set():
                    return
                self._fired = True
                current = [getattr(connection, "sock", None) for connection in self._connections]
                for sock in [*self._sockets, *current]:
                    if isinstance(sock, socket.socket) and id(sock) not in self._shut:
                        self._shut.add(id(sock))
                        try:
                            # socket.socket's own shutdown, also for an SSLSocket: that one's
                            # would drop its TLS object under the reading thread's feet.
                            socket.socket.shutdown(sock, socket.SHUT_RDWR)
                        except OSError:
                            pass  # already closed or never connected: nothing blocks on it
            if self._stopped.wait(DEADLINE_RECHECK):
                return


class _Watched:
    """A urllib3 connection that puts itself and its socket under an attempt's `_Deadline`
    (given by the pool, which passes its extra keyword arguments to the connections)."""

    def __init__(self, *args: object, deadline: _Deadline, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.webhook_deadline = deadline
        deadline.watch(self)

    def connect(self) -> None:
        super().connect()
        self.webhook_deadline.watch_socket(self.sock)


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _TLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def _host_header(host: str, port: int, scheme: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == DEFAULT_PORTS[scheme] else f"{shown}:{port}"


def _pool(
    scheme: str, address: str, port: int, host: str, timeout: urllib3.Timeout, deadline: _Deadline
) -> urllib3.HTTPConnectionPool:
    if scheme == "https":
        return _TLSPool(
            address,
            port,
            timeout=timeout,
            maxsize=1,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            server_hostname=host,
            assert_hostname=host,
            deadline=deadline,
        )
    return _Pool(address, port, timeout=timeout, maxsize=1, retries=False, deadline=deadline)


def _read_some(response: urllib3.BaseHTTPResponse, deadline: _Deadline) -> bool:
    """Read (and drop) at most MAX_ANSWER_BYTES of the answer, one receive at a time: whether
    it was read before the deadline (to its end or to the limit). An error reading it is no
    matter (the status line came), unless the deadline caused it."""
    left = MAX_ANSWER_BYTES
    try:
        while left > 0 and not deadline.passed:
            chunk = response.read1(left, decode_content=False)
            if not chunk:
                return not deadline.passed  # the end, or the watchdog's shutdown
            left -= len(chunk)
    except Exception:  # noqa: BLE001 - whatever the socket shut down under it raised
        return not deadline.passed
    return left <= 0 or not deadline.passed


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> Outcome:
    """POST `body` to `url` within `timeout` seconds in all (resolution, connection, TLS
    handshake, request, answer and the little of its body read); an answer that comes later
    is a timeout, as the contract counts only a 2xx within the bound."""
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
    deadline = _Deadline(remaining)
    # urllib3's timeouts still bound each operation: the connect, before the watchdog can
    # reach a socket, in particular.
    pool = _pool(scheme, str(addresses[0]), port, host, urllib3.Timeout(total=remaining), deadline)
    response = None
    deadline.start()
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
        if deadline.fired:  # the headers read may be cut short: no whole answer came in time
            return Outcome(None, _deadline_error(timeout, answered=False), _elapsed_ms(started))
        duration = _elapsed_ms(started)
        read_in_time = _read_some(response, deadline)
    except HTTPError as error:
        text = _error_text(error, timeout)
        if deadline.passed and not text.startswith("timeout"):
            text = _deadline_error(timeout, answered=False)  # the watchdog's doing
        return Outcome(None, text, _elapsed_ms(started))
    except Exception as error:  # noqa: BLE001 - post answers, it does not raise
        if deadline.passed:
            return Outcome(None, _deadline_error(timeout, answered=False), _elapsed_ms(started))
        if isinstance(error, OSError):
            return Outcome(None, _short(f"connection failed: {error}"), _elapsed_ms(started))
        raise
    finally:
        deadline.stop()
        if response is not None:
            response.close()
        pool.close()
    if not read_in_time:
        return Outcome(response.status, _deadline_error(timeout, answered=True), _elapsed_ms(started))
    if duration > timeout * 1000:
        return Outcome(response.status, f"timeout: answered after {timeout:g} s", duration)
    if 300 <= response.status < 400:
        return Outcome(response.status, "redirect not followed", duration)
    return Outcome(response.status, "", duration)
