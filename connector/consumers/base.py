"""What every socket of the Cloud Connector routes shares: `db` (database work and the
events it committed), header access, the origin rule, groups, closing once, and the
consumer's own run loop (`BaseConsumer.serve`, in place of Channels' `__call__`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from typing import Any

from autobahn.exception import Disconnected as AutobahnDisconnected
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from accounts import db_threads
from connector import groups, metrics, protocol
from connector.conf import connector_settings
from connector.protocol import Close
from connector.relay import housekeeping, servers
from connector.relay.admission import SHED_CODE, admission
from connector.relay.registry import registry

logger = logging.getLogger(__name__)


_local_names = itertools.count(1)
LAYER_STOP_WAIT = 5.0  # seconds a closing socket waits for its channel-layer task to stop


async def db(fn, /, *args: Any, key: str | None = None, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a database thread (accounts.db_threads); the events its
    commits sent are delivered before this returns, also when it raised. Calls with the
    same `key` (a session id) take turns, events included, in the order they were made."""

    timed = _timed(groups.collecting(fn), getattr(fn, "__name__", "other").lstrip("_"))

    async def work() -> Any:
        outcome = await db_threads.run(timed, *args, **kwargs)
        return await outcome.unwrap()

    return await db_threads.in_turn(key, work)


def _timed(fn, operation: str):
    """`fn` recording, in the database thread, how long it took (metrics.db_observe): the
    database time of the control path, without the wait for a thread."""

    def run(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            metrics.db_observe(operation=operation, seconds=time.perf_counter() - started)

    return run


class BaseConsumer(AsyncWebsocketConsumer):
    """Header access, the origin rule, groups, closing once, and the socket's lifecycle in
    the metrics (`kind`, connector.metrics.KINDS) and the log (one line per event, none per frame)."""

    kind: str | None = None  # None: no route (NotFoundConsumer), not counted
    # Whether the socket takes channel-layer messages (groups, events, relayed frames). One
    # that never does (the device-listener, the 4404 catch-all) gets no channel and no layer
    # task: a registration storm then costs the layer nothing for them.
    layer_messages: bool = True
    # Whether the socket's admitted control work goes on past its connect handler (the
    # device-listener's registration): it then calls `release_admission` when that is done.
    holds_admission: bool = False
    # Whether admission control may shed this socket. Only the listeners, where work enters:
    # a device socket follows a registration this process admitted a moment ago (shedding it
    # would throw that work away and send the terminal to register again), a POS session
    # socket follows a claim. Those are counted, never shed.
    sheddable: bool = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.closed = False  # no more frames or events: closing, or closed
        self.disconnected = False  # the disconnect handler has run
        self.session_id: str | None = None
        self.admitted = False  # counted by connector.relay.admission until `release_admission`
        self.close_code_sent: int | None = None  # the code this side closed the socket with
        # What the socket's log lines carry (portal.logs.CONTEXT_FIELDS); never a secret.
        self.log_fields: dict[str, Any] = {}

    def log(self, message: str, *args: Any, level: int = logging.INFO, **fields: Any) -> None:
        extra = {"session_id": self.session_id, **self.log_fields, **fields}
        logger.log(level, f"%s socket: {message}", self.kind or "unrouted", *args, extra=extra)

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self.serve(scope, receive, send)
        except Exception:
            # A bug in a handler ends this socket (the server closes it with 1011), never the
            # session: clean up as a disconnect would, so that the session's row forgets the
            # socket, its peer hears of it and the registry does not keep it.
            logger.exception("socket %s crashed; cleaning up", self.channel_name)
            if not self.disconnected:
                with contextlib.suppress(Exception, StopConsumer):
                    await self.websocket_disconnect({"type": "websocket.disconnect", "code": 1011})
            raise
        finally:
            registry.remove(self)

    async def serve(self, scope, receive, send) -> None:
        """Channels' AsyncConsumer.__call__ (channels 4.3, pinned) without a new task and an
        `asyncio.wait` for every message (its `await_many_dispatch`: about a sixth of the
        relay's CPU at 50 pairs): the socket's own messages are awaited and dispatched in
        this task, one at a time as before; channel-layer messages are dispatched by a task
        of their own (`dispatch_layer`), started once the connect handler has finished.
        Both may run at once, as they already do for sockets of one process, whose peers
        call each other's handlers directly (connector.relay.registry.deliver)."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias) if self.layer_messages else None
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
        else:
            # Known to this process only (the registry, the logs): nothing is ever sent to it.
            self.channel_name = f"local!{next(_local_names)}"
        self.base_send = send
        layer_task: asyncio.Task | None = None
        try:
            while True:
                await self.dispatch(await receive())
                if layer_task is None and self.channel_layer is not None:
                    layer_task = asyncio.ensure_future(self.dispatch_layer())
        except StopConsumer:
            pass
        finally:
            if layer_task is not None:
                layer_task.cancel()
                # Bounded: a layer that ignored its cancellation must not keep this socket's
                # task (and a server's shutdown) waiting forever.
                await asyncio.wait([layer_task], timeout=LAYER_STOP_WAIT)
            closed = getattr(self.channel_layer, "channel_closed", None)
            if closed is not None:
                closed(self.channel_name)

    async def dispatch_layer(self) -> None:
        while True:
            message = await self.channel_receive()
            try:
                await self.dispatch(message)
            except (OSError, AutobahnDisconnected):
                # The client went away while an event was being sent to it (uvicorn's
                # ClientDisconnected; under daphne, autobahn's Disconnected once the client's
                # close frame has come): its disconnect follows in the socket's own task.
                logger.debug("socket %s: gone before %s could be sent", self.channel_name, message.get("type"))
            except Exception:
                # As a crash in the socket's own handler would: the socket closes (1011) and
                # its disconnect cleans up; the session lives on.
                logger.exception("socket %s: handling %s failed", self.channel_name, message.get("type"))
                with contextlib.suppress(Exception):
                    await self.close_socket(1011)

    # -- handshake helpers

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.scope.get("headers", []):
            if key.lower() == name:
                return value
        return None

    def origin_allowed(self) -> bool:
        origin = self.header(b"origin")
        if origin is None:
            return True  # terminals and POS software send none (§10)
        allowed = {o.rstrip("/").lower() for o in connector_settings.ALLOWED_ORIGINS}
        return origin.decode("latin-1").rstrip("/").lower() in allowed

    def client_address(self) -> str:
        client = self.scope.get("client")
        return str(client[0]) if client else "-"

    def public_base_url(self) -> str:
        host = (self.header(b"host") or b"").decode("latin-1")
        domain, _port = split_domain_port(host)
        if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
            server = self.scope.get("server")
            host = "localhost"
            if server:
                address = f"[{server[0]}]" if ":" in str(server[0]) else str(server[0])
                host = f"{address}:{server[1]}"
        return protocol.ws_base_url(public_url=connector_settings.PUBLIC_WS_URL, host=host, secure=not settings.DEBUG)

    async def dispatch(self, message: dict) -> None:
        # Channels' own dispatch first hops to its database thread to close stale
        # connections (`aclose_old_connections`) for every message; `db` does that around
        # each database call instead, and nothing else here touches the database.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            if not message["type"].startswith("websocket."):
                return  # a control event for the sockets of another kind, as registry.deliver does
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_connect(self, message: dict) -> None:
        # Every socket of the process is in the registry, listeners included, so that a
        # shutdown closes each of them with 1001 (connector.relay.shutdown.close_all); the
        # process's housekeeping runs from its first socket on.
        registry.add(self)
        housekeeping.ensure_housekeeping()
        if registry.shutting_down:
            await self.refuse(Close.GOING_AWAY)  # reconnect to another node
            return
        if not admission.enter(sheddable=self.sheddable):
            await self.shed()
            return
        self.admitted = True
        try:
            await super().websocket_connect(message)
        finally:
            if not self.holds_admission:
                self.release_admission()

    def release_admission(self) -> None:
        """This socket's control work is done: it no longer counts against admission."""
        if self.admitted:
            self.admitted = False
            admission.leave()

    async def shed(self) -> None:
        """More new sockets than this process can serve in time (connector.relay.admission):
        1013 with a retry hint, before any database or Redis work."""
        reason = admission.reason()
        if self.kind is not None:
            metrics.socket_refused(kind=self.kind, code=SHED_CODE)
        self.log("shed", close_code=SHED_CODE, retry_hint=reason)
        await super().accept()  # to close it with 1013: not counted as opened
        await self.close_socket(SHED_CODE, logged=True, reason=reason)

    async def accept(self, subprotocol: str | None = None, headers=None) -> None:
        await super().accept(subprotocol, headers)
        servers.handshake_forget(self.base_send)
        if self.kind is not None:
            metrics.socket_opened(kind=self.kind)
        self.log("opened")

    async def websocket_disconnect(self, message: dict) -> None:
        if not self.closed:  # the server's own closes are logged by close_socket
            self.log("closed by the client", close_code=message.get("code"))
        self.closed = True
        self.disconnected = True
        registry.remove(self)
        # Channels' own version, less its last step: a hop to its database thread to close
        # stale connections, which `db` does around every database call instead.
        if not registry.shutting_down:  # else the shutdown leaves every group at once
            for group in self.groups:
                await self.channel_layer.group_discard(group, self.channel_name)
        await self.disconnect(message["code"])
        raise StopConsumer()

    async def refuse(self, code: int) -> None:
        if self.kind is not None:
            metrics.socket_refused(kind=self.kind, code=int(code))
        self.log("refused", close_code=int(code))
        await super().accept()  # to close it with `code`: not counted as opened
        await self.close_socket(code, logged=True)

    async def join(self, *names: str) -> None:
        self.groups.extend(names)
        await asyncio.gather(*(self.channel_layer.group_add(name, self.channel_name) for name in names))

    async def close_socket(self, code: int, *, logged: bool = False, reason: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_code_sent = int(code)
        if self.kind is not None:
            metrics.socket_closed(kind=self.kind, code=int(code))
        if not logged:
            self.log("closed", close_code=int(code))
        # A plain int: autobahn (daphne) refuses an IntEnum as a close code.
        await servers.close_with(self, int(code), reason)


class NotFoundConsumer(BaseConsumer):
    """Any path outside the four routes (connector.routing): no such session or endpoint."""

    layer_messages = False

    async def connect(self) -> None:
        await self.refuse(Close.NOT_FOUND)
