"""What the ASGI servers need adjusted per socket: daphne (Twisted, autobahn) and uvicorn.
Each adjustment is feature-detected and does nothing on other servers.

Message size: `MAX_MESSAGE_SIZE` (default 1 MiB); a larger message closes its sender with
1009. Under daphne, autobahn checks every incoming message against daphne's own limit
(`--websocket-max-message-size`, default 1 MiB) before the application sees it and, by
default, fails the connection by dropping TCP (the client sees 1006, not 1009); autobahn
also refuses to let an application close with any code but 1000 and 3000-4999 (it fails
the socket with 1011 instead). So `server_socket_tune` sets, per socket, autobahn's limit
to ours and failing to a close frame, and `close_with` sends 1001 and 1009 as close frames
on daphne's protocol object, reached through the ASGI `send` daphne hands over (a
`partial(server.handle_reply, protocol)`). Uvicorn hands every message up to
`--ws-max-size` (default 16 MiB) to the application, which checks `MAX_MESSAGE_SIZE` itself
and closes with 1009 through ASGI; run uvicorn with `--ws-max-size` at least
`MAX_MESSAGE_SIZE`. Daphne drops empty frames it is asked to send (its send path tests the
payload's truth), so an empty frame is not relayed under daphne; it is under uvicorn.

Backpressure (`MAX_SOCKET_BUFFER`, default 4 MiB per socket): neither server bounds what
it holds for a client that does not read. Daphne (Twisted) appends every write to its
transport's buffer, without limit and without telling the application, and keeps it until
the connection ends. Uvicorn (websockets-sansio) makes `send` wait once its transport holds
more than the high-water mark (64 KiB): the wait would fall on the sender's socket (on the
fast path the device's own task) and on the close frame behind it, and its graceful close
waits for the buffer to drain, forever. So each relay socket finds its server's write
buffer at connect (`socket_buffer`; uvicorn's high-water mark raised above the bound, so
that it never makes a relay send wait) and reads its size before each frame written to it
(attribute reads, no system call, no lock). Past the bound the socket is closed, a POS
session socket with 4503 and a device socket with 1013 (try again later), and its TCP
connection is dropped SLOW_CLOSE_GRACE later with the bytes it did not take, which gives the
memory back. The frame that found its peer too slow is not delivered: a device frame is
dropped and counted; a POS frame closes its POS socket with 4503 (its device is gone).
Across processes the receiving socket applies the same bound (`relay_frame`). Between
processes, what waits for one socket is bounded in messages by the channel layer's capacity
(`CHANNEL_LAYER_CAPACITY`, in Redis and in the receiving process's buffer per channel); a
full channel drops device frames and closes the POS with 4503, as above; the receiving
socket never waits on its client, so its channel drains as fast as its process runs.
Incoming frames: uvicorn reads a socket's next message once the application took the last;
daphne reads on, but the relay's consumers never wait on a write, so its queue drains too.

Liveness (§8, "a socket that answers no ping within 30 s is closed"): ASGI gives an
application no ping, so the servers do it. Daphne pings a socket after `--ping-interval`
seconds without a frame from it (default 20, checked every 2 s) and autobahn drops it when
no pong comes within its ping timeout: daphne's `--ping-timeout` (default 30), which
`server_socket_tune` sets per socket to `PING_TIMEOUT` (default 30). Uvicorn pings every
`--ws-ping-interval` (default 20) and closes after `--ws-ping-timeout` (default 20, which
is stricter than the contract and may close a slow but live client): run it with
`--ws-ping-interval 10 --ws-ping-timeout 30` (`PING_INTERVAL`, `PING_TIMEOUT`).

Pings on demand and pongs (§11-§12: the listener's `ping`, `last_seen_at`, `ping_timeout`):
ASGI has no ping and does not show pongs either, so the relay reaches the server's protocol
object, once per socket and only for control frames (a data frame costs nothing more).
`watch_pongs` calls back on every pong the socket receives, whoever's ping it answers or none;
`ping` sends a ping of its own with a fresh 16-byte payload (neither daphne's 12-byte keepalive
payload nor uvicorn's 4-byte one, so the servers ignore its pong) and waits for that pong, or
for a later one: RFC 6455 lets a peer answer only the latest of several pings. Our pongs never
count as the servers' keepalive answers, and theirs never answer ours. The callbacks run where
the server handles the socket's frames: uvicorn's event loop, and under daphne the Twisted
reactor, which daphne installs on the asyncio loop that also runs the application, so one
thread in both cases. Pings waiting when the socket goes are answered None at once.
`ping_timed_out` reads, after the socket went, whether the server dropped it for a keepalive
ping without pong: autobahn's `wasNotCleanReason` says so under daphne (the client sees 1006,
as for a lost connection), the close frame uvicorn sent (1011, "keepalive ping timeout") under
uvicorn. Daphne sends its keepalive ping once a socket has sent no data message for
`--ping-interval` seconds, checked every 2 s (an interval of 1 s pings every 2 s), and autobahn
times the pong out on 0.2 s buckets.

Reaches into the servers' internals, each pinned by tests/test_private_internals.py:
daphne's protocol object inside its ASGI `send` (`_daphne_protocol`); on it, autobahn's
per-connection options `failByDrop`, `maxMessagePayloadSize`, `maxFramePayloadSize` and
`autoPingTimeout` (autobahn copies them from its factory at connect unless a connection
has its own; daphne's factory is shared by every socket, and the limits differ per
route), autobahn's `sendCloseFrame` (its public `sendClose` refuses 1001 and 1009) and
`state`; Twisted's transport buffers (`twisted_unsent`); uvicorn's protocol behind its
`send` (`send.__self__.transport`). For pings and pongs (`watch_pongs`, `ping`,
`ping_timed_out`): autobahn's `onPong` replaced on the protocol object, its `is_closed`,
`sendPing`, `state` and `wasNotCleanReason`; uvicorn's `handle_pong` and `connection_lost`
replaced on its protocol object, its `conn` (websockets' sans-I/O protocol: `send_ping`,
`data_to_send`, `close_sent`), `handshake_complete`, `close_sent` and `transport`. Memory
(`handshake_forget`): uvicorn's `request` and `response`, read only during the handshake.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connector.conf import connector_settings

logger = logging.getLogger(__name__)


def _daphne_protocol(send: Any) -> Any:
    """The daphne (autobahn) protocol object behind an ASGI `send`, if that is what it is:
    daphne passes `partial(server.handle_reply, protocol)`."""
    if isinstance(send, functools.partial) and send.args:
        candidate = send.args[0]
        if hasattr(candidate, "sendCloseFrame") and hasattr(candidate, "handle_reply"):
            return candidate
    return None


def server_socket_tune(consumer: Any, *, max_message: int) -> None:
    """Make daphne enforce our message limit with a 1009 close frame and our ping timeout,
    whatever it was started with (see the module's notes). Nothing on other servers,
    which hand every message to the application (it checks `max_message` itself)."""
    protocol = _daphne_protocol(consumer.base_send)
    if protocol is None:
        return
    protocol.failByDrop = False
    protocol.maxMessagePayloadSize = max_message
    protocol.maxFramePayloadSize = max_message
    protocol.autoPingTimeout = connector_settings.PING_TIMEOUT


async def close_with(consumer: Any, code: int, reason: str | None = None) -> None:
    """Close a socket with any close code of the contract, and a reason if given.

    Autobahn, under daphne, lets an application close only with 1000 or 3000-4999 and
    fails the socket with 1011 for anything else, so 1001 (going away), 1009 (too big) and
    1013 (try again later) go to daphne's protocol object directly as a close frame; every
    other server takes them through ASGI.
    """
    if code == 1000 or 3000 <= code <= 4999:
        await consumer.close(code, reason)
        return
    protocol = _daphne_protocol(consumer.base_send)
    if protocol is None:
        await consumer.close(code, reason)
    elif protocol.state == protocol.STATE_OPEN:
        protocol.sendCloseFrame(code=code, reasonUtf8=reason.encode() if reason else None, isReply=False)
    elif protocol.state == protocol.STATE_CONNECTING:
        await consumer.close()  # not accepted yet: daphne refuses the handshake


MAX_FRAME_OVERHEAD = 64 * 1024  # more than a frame's header and a ping or close frame
SLOW_CLOSE_GRACE = 1.0  # seconds


@dataclass(frozen=True, slots=True)
class SocketBuffer:
    """What the server of one socket holds that its client has not taken yet (`size()`, in
    bytes; read from memory, no system call) and how to drop the connection with it
    (`drop()`); see "Backpressure" in the module's notes."""

    size: Callable[[], int]
    drop: Callable[[], None]


def twisted_unsent(tcp: Any) -> int:
    """The bytes a Twisted TCP transport holds unsent. twisted.internet.abstract.FileDescriptor
    keeps written bytes in `_tempDataBuffer` (`_tempDataLen` of them) until the reactor moves
    them to `dataBuffer`, sent up to `offset` (tests/test_private_internals.py)."""
    return len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen


def _twisted_tcp(transport: Any) -> Any:
    # Under TLS the application's transport is twisted's TLS protocol; the encrypted bytes
    # wait in the TCP transport beneath it.
    while transport is not None and not hasattr(transport, "_tempDataLen"):
        transport = getattr(transport, "transport", None)
    return transport


def socket_buffer(send: Any, *, limit: int) -> SocketBuffer | None:
    """The write buffer of the socket behind an ASGI `send`: daphne's (Twisted's TCP
    transport) or uvicorn's (an asyncio transport), None on any other server. Under uvicorn
    the transport's high-water mark is raised above `limit`, so that uvicorn never makes a
    send wait for the client before the relay has closed it (a wait that would stall the
    sender's own socket, and a close frame behind it)."""
    protocol = _daphne_protocol(send)
    if protocol is not None:
        tcp = _twisted_tcp(protocol.transport)
        if tcp is None:
            return None
        return SocketBuffer(size=functools.partial(twisted_unsent, tcp), drop=tcp.abortConnection)
    # uvicorn's `send` is a method of its protocol, which holds the transport (a reach:
    # tests/test_private_internals.py).
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "get_write_buffer_size"):
        return None
    transport.set_write_buffer_limits(high=limit + 2 * MAX_FRAME_OVERHEAD + _max_message())
    return SocketBuffer(size=transport.get_write_buffer_size, drop=transport.abort)


def _max_message() -> int:
    return connector_settings.MAX_MESSAGE_SIZE


def drop_later(buffer: SocketBuffer) -> None:
    """Drop a slow socket's connection, and the bytes it did not take, after SLOW_CLOSE_GRACE:
    time for a client that is merely slow to read its close frame. Uvicorn would not: it
    closes its transport gracefully, which waits for the buffer to drain, forever for a
    client that reads nothing (autobahn, under daphne, aborts after its own 1 s)."""
    asyncio.get_running_loop().call_later(SLOW_CLOSE_GRACE, buffer.drop)


# --- Pings on demand and pongs (see "Pings on demand and pongs" in the module's notes) ----------

PING_PAYLOAD_SIZE = 16  # daphne's keepalive payload has 12 bytes, uvicorn's 4: never ours
AUTOBAHN_PING_TIMEOUT_REASON = "WebSocket ping timeout (peer did not respond with pong in time)"
UVICORN_PING_TIMEOUT_CLOSE = (1011, "keepalive ping timeout")
_PONGS = "_cloud_connector_pongs"  # where a protocol object keeps its _Pongs


class PingUnsupported(Exception):
    """The server behind this `send` is neither daphne nor uvicorn with websockets-sansio, so
    the application can neither ping its client nor see its pongs."""


class _Pongs:
    """One socket's pong listeners and the pings of ours waiting for their pong, by payload
    (in the order sent). Touched only on the thread that runs the server and the application."""

    __slots__ = ("closed", "listeners", "waiting")

    def __init__(self) -> None:
        self.listeners: list[Callable[[], None]] = []
        self.waiting: dict[bytes, tuple[float, asyncio.Future[float | None]]] = {}
        self.closed = False

    def received(self, payload: bytes) -> None:
        for listener in self.listeners:
            try:
                listener()
            except Exception:  # noqa: BLE001 - a listener's bug must not fail the server's frame handling
                logger.exception("pong listener failed")
        if payload in self.waiting:
            self._answer(payload)

    def _answer(self, payload: bytes) -> None:
        # RFC 6455 (5.5.3) lets a peer answer only the latest of several pings: a pong
        # answers its own ping and every ping sent before it.
        now = time.monotonic()
        for key in list(self.waiting):
            sent, future = self.waiting.pop(key)
            if not future.done():
                future.set_result((now - sent) * 1000)
            if key == payload:
                return

    def close(self) -> None:
        self.closed = True
        for _sent, future in self.waiting.values():
            if not future.done():
                future.set_result(None)
        self.waiting.clear()


class _DaphneSocket:
    """Daphne's protocol object, an autobahn WebSocketServerProtocol."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    def install(self, pongs: _Pongs) -> None:
        # autobahn calls the protocol's onPong(payload) for every pong, after its own
        # keepalive bookkeeping; daphne does not define one. is_closed fires once, when the
        # state becomes closed, whichever way (close handshake, lost TCP, dropped by a timeout).
        protocol = self.protocol
        server_on_pong = protocol.onPong

        def on_pong(payload: bytes) -> None:
            pongs.received(bytes(payload))
            server_on_pong(payload)

        protocol.onPong = on_pong
        protocol.is_closed.addBoth(_closing(pongs))

    def is_open(self) -> bool:
        return self.protocol.state == self.protocol.STATE_OPEN

    def send_ping(self, payload: bytes) -> bool:
        self.protocol.sendPing(payload)
        return True

    def timed_out(self) -> bool:
        return self.protocol.wasNotCleanReason == AUTOBAHN_PING_TIMEOUT_REASON


class _UvicornSocket:
    """Uvicorn's WebSocketsSansIOProtocol, wrapping websockets' sans-I/O ServerProtocol (`conn`)."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    def install(self, pongs: _Pongs) -> None:
        # handle_events calls self.handle_pong(frame) for every pong frame, and the asyncio
        # transport calls connection_lost once the connection is gone, whichever way.
        protocol = self.protocol
        server_handle_pong = protocol.handle_pong
        server_connection_lost = protocol.connection_lost

        def handle_pong(event: Any) -> None:
            pongs.received(bytes(event.data))
            server_handle_pong(event)

        def connection_lost(exc: Exception | None) -> None:
            try:
                server_connection_lost(exc)
            finally:
                pongs.close()

        protocol.handle_pong = handle_pong
        protocol.connection_lost = connection_lost

    def is_open(self) -> bool:
        protocol = self.protocol
        return protocol.handshake_complete and not protocol.close_sent and not protocol.transport.is_closing()

    def send_ping(self, payload: bytes) -> bool:
        # As uvicorn's own keepalive ping does (send_keepalive_ping).
        conn = self.protocol.conn
        try:
            conn.send_ping(payload)
        except Exception:  # noqa: BLE001 - websockets' InvalidState: the connection is closing
            return False
        self.protocol.transport.write(b"".join(conn.data_to_send()))
        return True

    def timed_out(self) -> bool:
        close = self.protocol.conn.close_sent
        return close is not None and (close.code, close.reason) == UVICORN_PING_TIMEOUT_CLOSE


def _closing(pongs: _Pongs) -> Callable[[Any], Any]:
    def closed(result: Any) -> Any:
        pongs.close()
        return result  # a Deferred's callbacks chain: hand the result on unchanged

    return closed


def handshake_forget(send: Any) -> None:
    """Once a socket is accepted, let uvicorn drop the handshake's request and response it
    keeps on its protocol object (`request`, `response`: websockets' objects with their
    headers, about 3 KiB a socket that an idle terminal would hold for its whole life; the
    scope keeps the headers the application reads). uvicorn reads them only while it
    answers the handshake. Nothing on other servers."""
    protocol = getattr(send, "__self__", None)
    if getattr(protocol, "handshake_complete", False) and hasattr(protocol, "response"):
        protocol.request = None
        protocol.response = None


def _server_socket(send: Any) -> _DaphneSocket | _UvicornSocket | None:
    protocol = _daphne_protocol(send)
    if protocol is not None:
        return _DaphneSocket(protocol) if hasattr(protocol, "is_closed") else None
    protocol = getattr(send, "__self__", None)
    if hasattr(protocol, "handle_pong") and hasattr(getattr(protocol, "conn", None), "send_ping"):
        return _UvicornSocket(protocol)
    return None


def _pongs(server_socket: _DaphneSocket | _UvicornSocket) -> _Pongs:
    pongs = getattr(server_socket.protocol, _PONGS, None)
    if pongs is None:
        pongs = _Pongs()
        setattr(server_socket.protocol, _PONGS, pongs)
        server_socket.install(pongs)
    return pongs


def watch_pongs(send: Any, on_pong: Callable[[], None]) -> bool:
    """Call `on_pong()` for every pong the socket behind this ASGI `send` receives from now
    on: answers to the server's keepalive pings, to `ping`, and unsolicited ones (a client's
    own heartbeat). It runs on the thread of the server and the application, inside the
    server's frame handling: it must be quick and not block. False, and nothing done, on a
    server the relay cannot reach into."""
    server_socket = _server_socket(send)
    if server_socket is None:
        return False
    _pongs(server_socket).listeners.append(on_pong)
    return True


async def ping(send: Any, *, timeout: float) -> float | None:
    """Ping the client of this ASGI `send` now and wait for the pong: the round trip in
    milliseconds, or None when no pong came within `timeout` seconds or the socket is not
    open (or closes meanwhile). Concurrent pings each wait for their own pong.

    Raises PingUnsupported on a server the relay cannot reach into."""
    server_socket = _server_socket(send)
    if server_socket is None:
        raise PingUnsupported("this ASGI server gives the application no WebSocket ping")
    pongs = _pongs(server_socket)
    if pongs.closed or not server_socket.is_open():
        return None
    payload = os.urandom(PING_PAYLOAD_SIZE)
    answer: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
    pongs.waiting[payload] = (time.monotonic(), answer)
    try:
        if not server_socket.send_ping(payload):
            return None
        async with asyncio.timeout(timeout):
            return await answer
    except TimeoutError:
        return None
    finally:
        pongs.waiting.pop(payload, None)


def ping_timed_out(send: Any) -> bool:
    """Whether the server closed the socket behind this ASGI `send` because its keepalive
    ping got no pong in time (§12 `ping_timeout`, rather than `closed`): for a disconnect
    handler, once the socket is gone. False on a server the relay cannot reach into."""
    server_socket = _server_socket(send)
    return server_socket is not None and server_socket.timed_out()
