"""The four WebSocket routes of the Cloud Connector protocol (contract §3-§8). Thin: they
authenticate, call connector.sessions, translate domain errors through
connector.protocol.ERRORS, and relay frames through connector.relay.

Every refusal accepts the handshake first and then closes with the contract's code, so a
client always sees the code (a refused handshake would show it only an HTTP 403). The
order of the checks at connect is: origin (4403), credentials (4401, then scope 4403),
the URL's endpoint syntax (4404), then the session itself (4404 no such session or
endpoint, 4403 claim held by another credential, 4410 session already ended).

A socket joins its groups before it reads the database, so that an event committed
after the read reaches it and one committed before is seen by the read. Database work
runs in the database threads of accounts.db_threads (a pool on PostgreSQL, Channels' one
thread on SQLite), never on the frame path, through `db`: the work of one session (its
attaches and detaches) in the order it was asked for, and the events a call committed
sent before the consumer goes on (connector.groups). The one expensive step, a client
secret's hash check when it is not remembered, runs in a worker thread of its own without
the database. Handlers skip Channels' per-message `close_old_connections` hop: no handler
touches the database outside `db`, which closes stale connections around every call.

Decisions where the contract is silent:

- A device or POS session socket for a session that has ended is closed with 4410 (gone:
  register again / claim again); an unknown session id is 4404.
- A second POS session socket of the holder on the same endpoint replaces the first
  (4409), as for device sockets: one socket per side and endpoint receives the frames.
- `release` of a session outside the token's scope or unknown: 404 `unknown_session`; of
  a session the credential does not hold: 409 `not_claimed`; of an ended session it
  held: ok. `devices` rows also carry `session_id` (null without a live session).
- pos-listener checks its token again at every request: one that expired or was revoked
  meanwhile closes the socket with 4401. Open session sockets outlive their token's
  expiry (a payment must not be cut off at the hour); revocation closes them.
- device-listener answers credential failures of a bearer token (unknown, expired,
  without the `cloud-connector` scope) with 401 `invalid_client`, as §3's table says.
- Failed registrations are counted per client address (ASGI `client`: the TCP peer, or
  the forwarded address when the server is told to trust its proxy: daphne
  `--proxy-headers`, uvicorn `--forwarded-allow-ips`) in Django's cache (Redis when
  REDIS_URL is set, so shared by every process; per process otherwise). Every error
  answer counts; a limited address is answered 429 before its credentials are checked.
  4429 stays unused: every refusal on device-listener can answer.
- A registration that changes a live session's endpoints closes the sockets (both
  sides) of the endpoints it dropped with 4404.
- A socket opened while the process is shutting down is closed with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import ChannelFull, StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from accounts import db_threads
from accounts.credentials import bearer_from_header
from accounts.errors import DomainError
from connector import groups, protocol, relay, sessions, tokens
from connector.protocol import Close

logger = logging.getLogger(__name__)


LISTENER_SERVER_LIMIT = 16 * 1024 * 1024
LAYER_STOP_WAIT = 5.0  # seconds a closing socket waits for its channel-layer task to stop


async def db(fn, /, *args: Any, key: str | None = None, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a database thread (accounts.db_threads); the events its
    commits sent are delivered before this returns, also when it raised. Calls with the
    same `key` (a session id) take turns, events included, in the order they were made."""

    async def work() -> Any:
        outcome = await db_threads.run(groups.collecting(fn), *args, **kwargs)
        return await outcome.unwrap()

    return await db_threads.in_turn(key, work)


class BaseConsumer(AsyncWebsocketConsumer):
    """Header access, the origin rule, groups, and closing once."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.closed = False  # no more frames or events: closing, or closed
        self.disconnected = False  # the disconnect handler has run
        self.session_id: str | None = None

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
            relay.registry.remove(self)

    async def serve(self, scope, receive, send) -> None:
        """Channels' AsyncConsumer.__call__ (channels 4.3, pinned) without a new task and an
        `asyncio.wait` for every message (its `await_many_dispatch`: about a sixth of the
        relay's CPU at 50 pairs): the socket's own messages are awaited and dispatched in
        this task, one at a time as before; channel-layer messages are dispatched by a task
        of their own (`dispatch_layer`), started once the connect handler has finished.
        Both may run at once, as they already do for sockets of one process, whose peers
        call each other's handlers directly (relay.deliver)."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
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

    async def dispatch_layer(self) -> None:
        while True:
            message = await self.channel_receive()
            try:
                await self.dispatch(message)
            except OSError:
                # The client went away while an event was being sent to it (uvicorn's
                # ClientDisconnected): its disconnect follows in the socket's own task.
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
        allowed = {o.rstrip("/").lower() for o in sessions.setting("ALLOWED_ORIGINS", [])}
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
        return protocol.ws_base_url(
            public_url=sessions.setting("PUBLIC_WS_URL", ""), host=host, secure=not settings.DEBUG
        )

    async def dispatch(self, message: dict) -> None:
        # Channels' own dispatch first hops to its database thread to close stale
        # connections (`aclose_old_connections`) for every message; `db` does that around
        # each database call instead, and nothing else here touches the database.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            if not message["type"].startswith("websocket."):
                return  # a control event for the sockets of another kind, as relay.deliver does
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_connect(self, message: dict) -> None:
        # Every socket of the process is in the registry, listeners included, so that a
        # shutdown closes each of them with 1001 (relay.close_all).
        relay.registry.add(self)
        if relay.registry.shutting_down:
            await self.refuse(Close.GOING_AWAY)  # reconnect to another node
            return
        await super().websocket_connect(message)

    async def websocket_disconnect(self, message: dict) -> None:
        self.closed = True
        self.disconnected = True
        relay.registry.remove(self)
        # Channels' own version, less its last step: a hop to its database thread to close
        # stale connections, which `db` does around every database call instead.
        for group in self.groups:
            await self.channel_layer.group_discard(group, self.channel_name)
        await self.disconnect(message["code"])
        raise StopConsumer()

    async def refuse(self, code: int) -> None:
        await self.accept()
        await self.close_socket(code)

    async def join(self, *names: str) -> None:
        self.groups.extend(names)
        await asyncio.gather(*(self.channel_layer.group_add(name, self.channel_name) for name in names))

    async def close_socket(self, code: int) -> None:
        if self.closed:
            return
        self.closed = True
        # A plain int: autobahn (daphne) refuses an IntEnum as a close code.
        await relay.close_with(self, int(code))


class NotFoundConsumer(BaseConsumer):
    """Any path outside the four routes (connector.routing): no such session or endpoint."""

    async def connect(self) -> None:
        await self.refuse(Close.NOT_FOUND)


# --- §3 device registration -------------------------------------------------------------------


async def _answer_registration(*, text: str | None, bearer: str | None, address: str, base_url: str) -> str:
    """Answer one registration request: one database call when the client's secret matched
    a moment ago (sessions.secret_remembered), or with an access token. Otherwise the
    secret check, a PBKDF2 run, happens in a worker thread of its own between two calls,
    so that a fleet of terminals registering at once does not stall attaches and claims.
    Only credential failures (invalid_client) count towards 429, per client id and address
    (see sessions, "failed registrations"); a limited client id hears 429 before its
    secret is checked."""
    flow_id = None
    credentials = None
    try:
        request = protocol.parse_request(text)
        flow_id = request.flow_id
        resource = request.resource
        tsn = protocol.parse_tsn(resource.get("tsn"))
        endpoints = protocol.validate_endpoints(resource.get("endpoints"))
        credentials = protocol.parse_registration_data(resource.get("custom_registration_data"))
        if credentials is None and bearer is None:
            raise protocol.ProtocolError("No credentials: send custom_registration_data or an Authorization header.")
        registration = await _register(credentials, bearer, address=address, tsn=tsn, endpoints=endpoints)
    except DomainError as error:
        if isinstance(error, protocol.ProtocolError) and error.flow_id is not None:
            flow_id = error.flow_id
        if error.code == sessions.InvalidClient.code:
            client_id = credentials.client_id if credentials is not None else None
            wait = await db(sessions.registration_failed, address=address, client_id=client_id)
            if wait is not None:
                error = sessions.RateLimited(retry_after=wait)
        return protocol.error_response(flow_id, protocol.translate(error))
    return protocol.ok_response(
        flow_id,
        session_id=registration.session_id,
        connection_url=protocol.connection_url(base_url, registration.session_id),
        connection_ssl_profile=sessions.setting("SSL_PROFILE", "INGETRUST"),
        authorization_header={"Authorization": f"Bearer {registration.token.token}"},
        endpoints=registration.endpoints,
        expires_in=registration.token.expires_in,
    )


async def _register(
    credentials: protocol.ClientCredentials | None, bearer: str | None, *, address: str, tsn: str, endpoints: list[str]
) -> sessions.Registration:
    if credentials is None:
        return await db(
            sessions.device_register_with_token, address=address, raw_token=bearer, tsn=tsn, endpoints=endpoints
        )
    secret = credentials.client_secret
    outcome = await db(
        sessions.device_register_with_client,
        address=address,
        client_id=credentials.client_id,
        client_secret=secret,
        tsn=tsn,
        endpoints=endpoints,
    )
    if isinstance(outcome, sessions.Registration):
        return outcome
    record = outcome.record
    secret_ok = await asyncio.to_thread(sessions.secret_matches, secret, record.stored_secret if record else None)
    caller = sessions.record_caller(record, secret_ok=secret_ok)
    return await db(sessions.device_register_checked, address=address, caller=caller, tsn=tsn, endpoints=endpoints)


class DeviceListenerConsumer(BaseConsumer):
    """`device-listener`: one registration request, one response, then close (1000)."""

    async def connect(self) -> None:
        relay.server_socket_tune(self, max_message=protocol.CONTROL_MESSAGE_LIMIT)
        if not self.origin_allowed():
            await self.refuse(Close.FORBIDDEN)
            return
        await self.accept()
        self.answered = False
        self.timeout = asyncio.get_running_loop().call_later(
            float(sessions.setting("REGISTRATION_TIMEOUT", 10)),
            lambda: asyncio.ensure_future(self._timed_out()),
        )

    async def _timed_out(self) -> None:
        if not self.answered:
            self.answered = True
            await self.close_socket(Close.REGISTRATION_TIMEOUT)

    async def websocket_receive(self, message: dict) -> None:
        if self.closed or self.answered:
            return
        self.answered = True
        self.timeout.cancel()
        text = message.get("text")
        if text is not None and protocol.text_size_exceeds(text, protocol.CONTROL_MESSAGE_LIMIT):
            await self.close_socket(Close.TOO_BIG)
            return
        bearer = bearer_from_header(self.header(b"authorization"))
        response = await _answer_registration(
            text=text, bearer=bearer, address=self.client_address(), base_url=self.public_base_url()
        )
        await self.send(text_data=response)
        await self.close_socket(Close.NORMAL)

    async def disconnect(self, code: int) -> None:
        self.closed = True
        timeout = getattr(self, "timeout", None)
        if timeout is not None:
            timeout.cancel()


# --- §5 POS listener ------------------------------------------------------------------------


def _pos_request(*, text: str | None, raw_token: str, base_url: str) -> str | None:
    """Answer one pos-listener request; None when the token is no longer valid."""
    flow_id = None
    try:
        caller = sessions.caller_from_bearer(raw_token)
    except DomainError:
        return None
    try:
        request = protocol.parse_request(text)
        flow_id = request.flow_id
        action = request.resource.get("action")
        if action == "claim":
            tsn, force = protocol.parse_claim(request.resource)
            claim = sessions.session_claim(caller=caller, tsn=tsn, force=force)
            return protocol.ok_response(
                flow_id,
                session_id=claim.session_id,
                session_url=protocol.session_url(base_url, claim.session_id),
                endpoints=claim.endpoints,
                tsn=claim.tsn,
            )
        if action == "release":
            session_id = protocol.parse_session_id(request.resource)
            sessions.session_release(caller=caller, session_id=session_id)
            return protocol.ok_response(flow_id, session_id=session_id)
        if action == "devices":
            return protocol.ok_response(flow_id, devices=sessions.devices_for_caller(caller=caller))
        raise protocol.ProtocolError(f"Unknown action {protocol.shown(action)}: expected claim, release or devices.")
    except DomainError as error:
        if isinstance(error, protocol.ProtocolError) and error.flow_id is not None:
            flow_id = error.flow_id
        return protocol.error_response(flow_id, protocol.translate(error))


ONLINE_EVENTS = ("device_online", "device_offline")
TOLD_LIMIT = 1000


class PosCaller:
    """What both POS sockets share: the bearer token's caller at connect, and closing when
    that credential or token is revoked (with `revoked_code`: 4401 on the listener, 4410 on
    session sockets)."""

    revoked_code: int = Close.UNAUTHENTICATED

    async def authenticate(self) -> bool:
        """Origin (4403), then the token (4401, 4403); False once the socket is refused."""
        if not self.origin_allowed():
            await self.refuse(Close.FORBIDDEN)
            return False
        self.raw_token = bearer_from_header(self.header(b"authorization"))
        try:
            self.caller = await db(sessions.caller_from_bearer, self.raw_token)
        except DomainError as error:
            await self.refuse(protocol.translate(error).close_code)
            return False
        return True

    async def credential_revoked(self, message: dict) -> None:
        await self.close_socket(self.revoked_code)

    async def token_revoked(self, message: dict) -> None:
        if message.get("token_checksum") == self.caller.token_checksum:
            await self.close_socket(self.revoked_code)


class PosListenerConsumer(PosCaller, BaseConsumer):
    """`pos-listener`: claim, release and devices requests; §5's events for the claims the
    credential holds. A malformed request gets a 400 and the socket stays open."""

    async def connect(self) -> None:
        # The server's limit binds answers too, and a `devices` answer for a large scope is
        # big; requests are held to CONTROL_MESSAGE_LIMIT by websocket_receive.
        relay.server_socket_tune(self, max_message=LISTENER_SERVER_LIMIT)
        if not await self.authenticate():
            return
        # CC_MAX_LISTENERS_PER_CREDENTIAL, per process: listener sockets have no rows to count
        # across the deployment (see relay, "Quotas").
        limit = int(sessions.setting("MAX_LISTENERS_PER_CREDENTIAL", 20))
        if not relay.registry.listener_admit(self, application_id=self.caller.application_id, limit=limit):
            await self.refuse(Close.RATE_LIMITED)
            return
        self.listening_for = self.caller.application_id
        # The last online/offline event this socket sent per session, so that what it missed
        # while Redis was away can be told once it is back (relay._resync_listeners).
        self.told: dict[str, str] = {}
        await self.join(groups.listener_group(self.caller.application_id))
        await self.accept()

    async def websocket_receive(self, message: dict) -> None:
        if self.closed:
            return
        text = message.get("text")
        if text is not None and protocol.text_size_exceeds(text, protocol.CONTROL_MESSAGE_LIMIT):
            await self.close_socket(Close.TOO_BIG)
            return
        response = await db(_pos_request, text=text, raw_token=self.raw_token, base_url=self.public_base_url())
        if response is None:
            await self.close_socket(Close.UNAUTHENTICATED)
            return
        if not self.closed:
            await self.send(text_data=response)

    async def pos_event(self, message: dict) -> None:
        if self.closed:
            return
        event, session_id = message["event"], message["session_id"]
        self.told.pop(session_id, None)
        if event in ONLINE_EVENTS:
            self.told[session_id] = event
            if len(self.told) > TOLD_LIMIT:  # released claims are not heard of: forget the oldest
                del self.told[next(iter(self.told))]
        fields = message.get("fields") or {}  # an event's own fields: `endpoint` of device_replaced
        await self.send(text_data=protocol.event(event, session_id=session_id, tsn=message["tsn"], **fields))

    async def disconnect(self, code: int) -> None:
        self.closed = True


# --- §4, §6, §7 relay sockets ---------------------------------------------------------------


TRY_AGAIN_LATER = 1013


class RelayConsumer(BaseConsumer):
    """A socket that carries frames for one endpoint of one session: the device's (§4) or
    the POS's (§6). Frames skip Channels' per-handler database clean-up (see relay)."""

    side: str = ""
    peer_side: str = ""
    too_slow_code: int = Close.PEER_UNAVAILABLE

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.endpoint: str | None = None
        self.attached = False
        self.peer_channel: str | None = None
        self.peer_local: relay.RelaySocket | None = None
        self.peer_changes = 0  # set_peer calls: a database answer older than one is stale
        self.counter = relay.Counter()
        self.max_size = int(sessions.setting("MAX_MESSAGE_SIZE", 1024 * 1024))
        self.max_buffer = int(sessions.setting("MAX_SOCKET_BUFFER", 4 * 1024 * 1024))
        self.buffer: relay.SocketBuffer | None = None

    async def websocket_connect(self, message: dict) -> None:
        relay.server_socket_tune(self, max_message=self.max_size)
        self.buffer = relay.socket_buffer(self.base_send, limit=self.max_buffer)
        await super().websocket_connect(message)

    async def dispatch(self, message: dict) -> None:
        kind = message["type"]
        if kind == "websocket.receive":
            await self.websocket_receive(message)
        elif kind == "relay.frame":
            await self.relay_frame(message)
        else:
            await super().dispatch(message)

    async def socket_replaced(self, message: dict) -> None:
        await self.close_socket(Close.REPLACED)

    # -- attaching

    def endpoint_from_url(self) -> str | None:
        return protocol.endpoint_from_path(self.scope["url_route"]["kwargs"].get("endpoint"))

    async def attach(self, session_id: str, attach_fn, group_names: tuple[str, ...], **identity: Any) -> None:
        """The end of both sides' connect: the URL's endpoint (4404), the groups, the
        session's attach (`attach_fn`, with the caller's `identity`) and the accept."""
        self.endpoint = self.endpoint_from_url()
        if self.endpoint is None:
            await self.refuse(Close.NOT_FOUND)
            return
        self.session_id = session_id
        await self.join(*group_names)
        try:
            place = await db(
                attach_fn,
                key=session_id,
                session_id=session_id,
                endpoint=self.endpoint,
                channel_name=self.channel_name,
                node=relay.NODE,
                **identity,
            )
        except DomainError as error:
            await self.refuse(protocol.translate(error).close_code)
            return
        await self.accept()
        await self.attached_to(place)

    async def attached_to(self, place: sessions.Attached) -> None:
        self.attached = True
        self.counter = relay.registry.counter(self.session_id)
        self.set_peer(place.peer)
        # A peer on this process learns of this socket now, not when the session group's
        # `peer.attached` comes round through the channel layer: frames between local peers
        # take the fast path, so its answer to this socket's first frame could otherwise
        # beat the event and go to the socket this one replaced. A peer on another process
        # gets the event before any frame of this socket (one channel, first in first out).
        peer = relay.registry.local(place.peer)
        if isinstance(peer, RelayConsumer):
            peer.learn_peer(side=self.side, endpoint=self.endpoint, channel=self.channel_name)
        if place.replaced:
            await relay.notify(place.replaced, {"type": "socket.replaced"}, self.channel_layer)

    def set_peer(self, channel: str | None) -> None:
        self.peer_channel = channel
        self.peer_local = relay.registry.local(channel)
        self.peer_changes += 1

    def learn_peer(self, *, side: str, endpoint: str | None, channel: str) -> None:
        if side != self.peer_side or endpoint != self.endpoint or channel == self.peer_channel:
            return
        if self.channel_is_ours(channel) and channel not in relay.registry.sockets:
            return  # a late event about a socket of this process that has closed since
        self.set_peer(channel)

    def channel_is_ours(self, channel: str) -> bool:
        """Whether a channel name belongs to this process (same channel-layer client)."""
        mine, _, _ = self.channel_name.rpartition("!")
        theirs, _, _ = channel.rpartition("!")
        return bool(mine) and mine == theirs

    async def peer_attached(self, message: dict) -> None:
        self.learn_peer(side=message["side"], endpoint=message["endpoint"], channel=message["channel"])

    async def peer_detached(self, message: dict) -> None:
        if message["side"] == self.peer_side and message["channel"] == self.peer_channel:
            self.set_peer(None)

    async def session_end(self, message: dict) -> None:
        await self.close_socket(Close.GONE)

    async def session_endpoints(self, message: dict) -> None:
        if self.endpoint not in message["endpoints"]:
            await self.close_socket(Close.NOT_FOUND)

    # -- frames

    async def websocket_receive(self, message: dict) -> None:
        if self.closed or not self.attached:
            return
        text = message.get("text")
        if text is not None:
            if protocol.text_size_exceeds(text, self.max_size):
                await self.close_socket(Close.TOO_BIG)
                return
            out = {"type": "websocket.send", "text": text}
        else:
            data = message.get("bytes") or b""
            if len(data) > self.max_size:
                await self.close_socket(Close.TOO_BIG)
                return
            out = {"type": "websocket.send", "bytes": data}
        if await self.forward(out):
            return
        if self.peer_channel is None and await self.look_up_peer() and await self.forward(out):
            return
        await self.undeliverable()

    async def forward(self, out: dict) -> bool:
        """Hand a frame to the known peer: in process, or through the channel layer."""
        peer = self.peer_local
        if peer is not None:
            if not peer.closed:
                try:
                    if await peer.send_frame(out):
                        self.counter.relayed += 1
                        return True
                except Exception:  # noqa: BLE001 - the peer's socket died under us
                    logger.debug("local peer %s is gone", peer.channel_name)
            self.set_peer(None)
            return False
        if self.peer_channel is None:
            return False
        try:
            await self.channel_layer.send(self.peer_channel, {**out, "type": "relay.frame"})
        except relay.LayerUnavailable:
            logger.warning("Redis is unreachable; frame for %s not delivered", self.peer_channel)
            return False
        except ChannelFull:
            logger.warning("peer %s is not keeping up; frame not delivered", self.peer_channel)
            return False
        self.counter.relayed += 1
        return True

    async def look_up_peer(self) -> bool:
        """No peer known: the database decides before a frame is refused (4503) or dropped.
        A peer that attached on another process a moment ago has its row written before its
        socket was accepted, while its `peer.attached` event may still be on its way."""
        changes = self.peer_changes
        channel = await db(
            sessions.socket_channel, key=self.session_id, session_id=self.session_id, side=self.peer_side,
            endpoint=self.endpoint,
        )  # fmt: skip
        # An event handled meanwhile (channel-layer messages are dispatched in a task of their
        # own) is newer than this read.
        if channel is not None and self.peer_changes == changes:
            self.learn_peer(side=self.peer_side, endpoint=self.endpoint, channel=channel)
        return self.peer_channel is not None

    async def relay_frame(self, message: dict) -> None:
        if self.closed:
            return
        key = "text" if "text" in message else "bytes"
        try:
            await self.send_frame({"type": "websocket.send", key: message[key]})
        except Exception:  # noqa: BLE001 - the client vanished; its disconnect follows
            logger.debug("socket %s is gone; frame from another process not delivered", self.channel_name)

    async def send_frame(self, out: dict) -> bool:
        """Write a relayed frame to this socket; False, and the socket closed, when its client
        has left more than MAX_SOCKET_BUFFER bytes untaken (see relay, "Backpressure")."""
        buffer = self.buffer
        if buffer is not None and buffer.size() > self.max_buffer:
            logger.warning(
                "%s socket %s is not reading (%d bytes waiting): closed", self.side, self.channel_name, buffer.size()
            )
            relay.drop_later(buffer)
            with contextlib.suppress(OSError):  # gone meanwhile: its disconnect follows
                await self.close_socket(self.too_slow_code)
            return False
        await self.base_send(out)
        return True

    async def undeliverable(self) -> None:
        raise NotImplementedError

    async def reassert(self) -> None:
        """This node's rows were swept while the socket lived: write its row again."""
        if self.closed or not self.attached:
            return
        try:
            mine = await db(
                sessions.socket_reassert,
                key=self.session_id,
                session_id=self.session_id,
                side=self.side,
                endpoint=self.endpoint,
                channel_name=self.channel_name,
                node=relay.NODE,
                application_id=getattr(getattr(self, "caller", None), "application_id", None),
            )
        except DomainError as error:
            await self.close_socket(protocol.translate(error).close_code)
            return
        if not mine:
            await self.close_socket(Close.REPLACED)

    # -- closing

    async def close_socket(self, code: int) -> None:
        if not self.closed:
            relay.registry.remove(self)
        await super().close_socket(code)

    async def disconnect(self, code: int) -> None:
        self.closed = True
        relay.registry.remove(self)
        if not self.attached:
            return
        deltas = relay.registry.take_deltas(self.session_id)
        try:
            await db(
                _detach,
                key=self.session_id,
                session_id=self.session_id,
                side=self.side,
                endpoint=self.endpoint,
                channel_name=self.channel_name,
                deltas=deltas,
            )
        except Exception:  # noqa: BLE001 - the sweep will forget the row
            relay.registry.give_back(deltas)
            logger.exception("could not detach %s", self.channel_name)


def _detach(*, session_id: str, side: str, endpoint: str, channel_name: str, deltas: dict) -> None:
    if deltas:
        sessions.session_counters_add(deltas=deltas)
    sessions.socket_detach(session_id=session_id, side=side, endpoint=endpoint, channel_name=channel_name)


class DeviceSocketConsumer(RelayConsumer):
    """`device/<session_id>[/<endpoint>]`, authorized by the registration's JWT (§4)."""

    side = sessions.Side.DEVICE
    peer_side = sessions.Side.POS
    # A terminal that does not take what the POS sends: "try again later" (v1.1 §17), so that
    # it reconnects after a back-off; the POS's next frame then finds no device (4503).
    too_slow_code = TRY_AGAIN_LATER

    async def connect(self) -> None:
        if not self.origin_allowed():
            await self.refuse(Close.FORBIDDEN)
            return
        session_id = self.scope["url_route"]["kwargs"]["session_id"]
        try:
            claims = tokens.device_token_verify(
                bearer_from_header(self.header(b"authorization")), session_id=session_id
            )
        except tokens.InvalidDeviceToken:
            await self.refuse(Close.UNAUTHENTICATED)
            return
        await self.attach(
            session_id,
            sessions.device_socket_attach,
            (groups.session_group(session_id),),
            device_id=claims.device_id,
        )

    async def undeliverable(self) -> None:
        # §7: nobody listens on this endpoint; the terminal's own protocol notices.
        self.counter.dropped += 1


class PosSessionConsumer(PosCaller, RelayConsumer):
    """`session/<session_id>[/<endpoint>]`, for the credential holding the claim (§6)."""

    side = sessions.Side.POS
    peer_side = sessions.Side.DEVICE
    revoked_code = Close.GONE
    too_slow_code = Close.PEER_UNAVAILABLE

    async def connect(self) -> None:
        if not await self.authenticate():
            return
        session_id = self.scope["url_route"]["kwargs"]["session_id"]
        await self.attach(
            session_id,
            sessions.pos_socket_attach,
            (groups.session_group(session_id), groups.credential_group(self.caller.application_id)),
            caller=self.caller,
        )

    async def undeliverable(self) -> None:
        # §7: a POS frame is never dropped silently.
        await self.close_socket(Close.PEER_UNAVAILABLE)

    async def claim_changed(self, message: dict) -> None:
        if message["holder"] != self.caller.application_id:
            await self.close_socket(Close.REPLACED)

    async def claim_released(self, message: dict) -> None:
        # 1000 for a release the POS asked for; 4410 when the claim was taken from it (its
        # device moved out of its reach: connector.sessions.claims_out_of_reach_release).
        if message["application_id"] == self.caller.application_id:
            await self.close_socket(message.get("code", Close.NORMAL))
