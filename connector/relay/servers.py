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

Reaches into the servers' internals, each pinned by tests/test_private_internals.py:
daphne's protocol object inside its ASGI `send` (`_daphne_protocol`); on it, autobahn's
per-connection options `failByDrop`, `maxMessagePayloadSize`, `maxFramePayloadSize` and
`autoPingTimeout` (autobahn copies them from its factory at connect unless a connection
has its own; daphne's factory is shared by every socket, and the limits differ per
route), autobahn's `sendCloseFrame` (its public `sendClose` refuses 1001 and 1009) and
`state`; Twisted's transport buffers (`twisted_unsent`); uvicorn's protocol behind its
`send` (`send.__self__.transport`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connector.conf import connector_settings


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
