"""§4, §6, §7: the sockets that carry frames for one endpoint of one session, the device's
and the POS's, and how a frame finds its peer (see connector.relay)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from channels.exceptions import ChannelFull

from accounts.credentials import bearer_from_header
from accounts.errors import DomainError
from connector import certificates, groups, metrics, nodes, protocol, session_sockets, sessions, tokens
from connector.conf import connector_settings
from connector.consumers.base import BaseConsumer, db
from connector.consumers.pos_listener import PosCaller
from connector.models import DisconnectReason
from connector.protocol import Close
from connector.relay import held, servers
from connector.relay.broker import LayerUnavailable
from connector.relay.registry import NODE, Counter, RelaySocket, notify, registry
from connector.relay.tasks import spawn

logger = logging.getLogger(__name__)


TRY_AGAIN_LATER = 1013


class RelayConsumer(BaseConsumer):
    """A socket that carries frames for one endpoint of one session: the device's (§4) or
    the POS's (§6). Frames skip Channels' per-handler database clean-up (see connector.relay)."""

    side: str = ""
    peer_side: str = ""
    too_slow_code: int = Close.PEER_UNAVAILABLE

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.endpoint: str | None = None
        self.attached = False
        self.peer_channel: str | None = None
        self.peer_local: RelaySocket | None = None
        self.peer_changes = 0  # set_peer calls: a database answer older than one is stale
        self.no_peer_as_of: int | None = None  # peer_changes when the database last said "no peer"
        self.counter = Counter()
        self.max_size = connector_settings.MAX_MESSAGE_SIZE
        self.max_buffer = connector_settings.MAX_SOCKET_BUFFER
        self.buffer: servers.SocketBuffer | None = None
        # Why the last frame could not be handed over, when not for want of a peer (metrics).
        self.drop_reason: str | None = None
        # A frame or a pong came since the last `last_seen_at` write (connector.history.seen_write).
        self.heard = False
        # Device frames kept for the claim holder's absent POS (connector.relay.held); always
        # None on a POS socket.
        self.held: held.Held | None = None

    async def websocket_connect(self, message: dict) -> None:
        servers.server_socket_tune(self, max_message=self.max_size)
        self.buffer = servers.socket_buffer(self.base_send, limit=self.max_buffer)
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
        self.session_id = session_id
        self.log_fields["endpoint"] = self.endpoint
        if self.endpoint is None:
            await self.refuse(Close.NOT_FOUND)
            return
        await self.join(*group_names)
        try:
            place = await db(
                attach_fn,
                key=session_id,
                session_id=session_id,
                endpoint=self.endpoint,
                channel_name=self.channel_name,
                node=NODE,
                **identity,
            )
        except DomainError as error:
            await self.refuse(protocol.translate(error).close_code)
            return
        self.log_fields["tsn"] = place.tsn
        self.attached = True  # from here on, its disconnect takes back the row just written
        try:
            await self.accept()
        except OSError:
            # The client left during its handshake (uvicorn's ClientDisconnected): its
            # disconnect follows and detaches; not a crash.
            self.log("gone during its handshake")
            return
        await self.attached_to(place)

    async def attached_to(self, place: session_sockets.Attached) -> None:
        self.attached = True
        self.counter = registry.counter(self.session_id)
        self.set_peer(place.peer)
        # A peer on this process learns of this socket now, not when the session group's
        # `peer.attached` comes round through the channel layer: frames between local peers
        # take the fast path, so its answer to this socket's first frame could otherwise
        # beat the event and go to the socket this one replaced. A peer on another process
        # gets the event before any frame of this socket (one channel, first in first out).
        peer = registry.local(place.peer)
        if isinstance(peer, RelayConsumer):
            peer.learn_peer(side=self.side, endpoint=self.endpoint, channel=self.channel_name)
        if place.replaced:
            await notify(place.replaced, {"type": "socket.replaced"}, self.channel_layer)

    def set_peer(self, channel: str | None) -> None:
        self.peer_channel = channel
        self.peer_local = registry.local(channel)
        self.peer_changes += 1

    def learn_peer(self, *, side: str, endpoint: str | None, channel: str) -> None:
        if side != self.peer_side or endpoint != self.endpoint or channel == self.peer_channel:
            return
        if self.channel_is_ours(channel) and channel not in registry.sockets:
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
        self.heard = True
        text = message.get("text")
        if text is not None:
            if protocol.text_size_exceeds(text, self.max_size):
                await self.close_socket(Close.TOO_BIG)
                return
            out = {"type": "websocket.send", "text": text}
            size = len(text) if text.isascii() else len(text.encode())
        else:
            data = message.get("bytes") or b""
            if len(data) > self.max_size:
                await self.close_socket(Close.TOO_BIG)
                return
            out = {"type": "websocket.send", "bytes": data}
            size = len(data)
        if await self.forward(out):
            self.relayed(size)
            return
        if self.peer_channel is None and await self.look_up_peer() and await self.forward(out):
            self.drop_reason = None
            self.relayed(size)
            return
        await self.undeliverable(out, size)

    def relayed(self, size: int) -> None:
        """Count a frame of `size` bytes handed to the peer (connector.metrics.frames)."""
        raise NotImplementedError

    async def forward(self, out: dict, *, after_held: bool = False) -> bool:
        """Hand a frame to the known peer: in process, or through the channel layer; after
        the frames held for it, if any (`after_held`: those are being handed over)."""
        if self.held is not None and not after_held:
            return await held.forward_after_held(self, out)
        peer = self.peer_local
        if peer is not None:
            if not peer.closed:
                try:
                    if await peer.send_frame(out):
                        self.counter.relayed += 1
                        return True
                    self.drop_reason = "slow_peer"
                except Exception:  # noqa: BLE001 - the peer's socket died under us
                    logger.debug("local peer %s is gone", peer.channel_name)
            self.set_peer(None)
            return False
        if self.peer_channel is None:
            return False
        started = time.perf_counter()
        try:
            await self.channel_layer.send(self.peer_channel, {**out, "type": "relay.frame"})
        except LayerUnavailable:
            metrics.layer.unavailable += 1
            self.drop_reason = "channel_layer"
            logger.warning("Redis is unreachable; frame for %s not delivered", self.peer_channel)
            return False
        except ChannelFull:
            metrics.layer.full += 1
            self.drop_reason = "channel_layer"
            logger.warning("peer %s is not keeping up; frame not delivered", self.peer_channel)
            return False
        finally:
            metrics.layer_send.observe(time.perf_counter() - started)
        self.counter.relayed += 1
        return True

    async def look_up_peer(self) -> bool:
        """No peer known: the database decides before a frame is refused (4503) or dropped.
        A peer that attached on another process a moment ago has its row written before its
        socket was accepted, while its `peer.attached` event may still be on its way.

        Its "no peer" holds until the peer changes (`set_peer`: the attach, reconnect, claim
        and takeover events all come as `peer.attached`) or a frame comes from a peer this
        socket did not know (`send_frame`): a terminal talking while no POS is attached
        costs one query, not one per frame."""
        changes = self.peer_changes
        if self.no_peer_as_of == changes:
            return False
        channel = await db(
            session_sockets.socket_channel, key=self.session_id, session_id=self.session_id, side=self.peer_side,
            endpoint=self.endpoint,
        )  # fmt: skip
        # An event handled meanwhile (channel-layer messages are dispatched in a task of their
        # own) is newer than this read.
        if self.peer_changes == changes:
            if channel is None:
                self.no_peer_as_of = changes
            else:
                self.learn_peer(side=self.peer_side, endpoint=self.endpoint, channel=channel)
        return self.peer_channel is not None

    async def relay_frame(self, message: dict) -> None:
        if self.closed:
            return
        key = "text" if "text" in message else "bytes"
        try:
            if not await self.send_frame({"type": "websocket.send", key: message[key]}):
                metrics.frames.dropped_slow_peer += 1  # its sender, on another process, cannot know
        except Exception:  # noqa: BLE001 - the client vanished; its disconnect follows
            logger.debug("socket %s is gone; frame from another process not delivered", self.channel_name)

    async def send_frame(self, out: dict) -> bool:
        """Write a relayed frame to this socket; False, and the socket closed, when its client
        has left more than MAX_SOCKET_BUFFER bytes untaken (see connector.relay.servers, "Backpressure")."""
        self.no_peer_as_of = None  # a peer exists, even if its event has not come (yet)
        buffer = self.buffer
        if buffer is not None and buffer.size() > self.max_buffer:
            logger.warning(
                "%s socket %s is not reading (%d bytes waiting): closed", self.side, self.channel_name, buffer.size()
            )
            servers.drop_later(buffer)
            with contextlib.suppress(OSError):  # gone meanwhile: its disconnect follows
                await self.close_socket(self.too_slow_code)
            return False
        await self.base_send(out)
        return True

    async def undeliverable(self, out: dict, size: int) -> None:
        raise NotImplementedError

    async def reassert(self) -> None:
        """This node's rows were swept while the socket lived: write its row again."""
        if self.closed or not self.attached:
            return
        try:
            mine = await db(
                session_sockets.socket_reassert,
                key=self.session_id,
                session_id=self.session_id,
                side=self.side,
                endpoint=self.endpoint,
                channel_name=self.channel_name,
                node=NODE,
                application_id=getattr(getattr(self, "caller", None), "application_id", None),
            )
        except DomainError as error:
            await self.close_socket(protocol.translate(error).close_code)
            return
        if not mine:
            await self.close_socket(Close.REPLACED)

    # -- closing

    async def close_socket(self, code: int, *, logged: bool = False, reason: str | None = None) -> None:
        if not self.closed:
            registry.remove(self)
        await super().close_socket(code, logged=logged, reason=reason)

    def disconnect_reason(self, code: int) -> str:
        """Why this socket went away (v1.1 §11), for a device socket's presence."""
        return DisconnectReason.CLOSED

    async def disconnect(self, code: int) -> None:
        self.closed = True
        registry.remove(self)
        if not self.attached:
            return
        if registry.shutting_down:
            # The process is going: its sockets are forgotten together, in one transaction
            # (connector.nodes.node_forget, after the frame counters are flushed), instead of
            # one detach each while a restarted worker needs the database for its terminals.
            return
        deltas = registry.take_deltas(self.session_id)
        try:
            await db(
                _detach,
                key=self.session_id,
                session_id=self.session_id,
                side=self.side,
                endpoint=self.endpoint,
                channel_name=self.channel_name,
                deltas=deltas,
                reason=self.disconnect_reason(code),
            )
        except Exception:  # noqa: BLE001 - the sweep will forget the row
            registry.give_back(deltas)
            logger.exception("could not detach %s", self.channel_name)


def _detach(*, session_id: str, side: str, endpoint: str, channel_name: str, deltas: dict, reason: str) -> None:
    if deltas:
        nodes.session_counters_add(deltas=deltas)
    session_sockets.socket_detach(
        session_id=session_id, side=side, endpoint=endpoint, channel_name=channel_name, reason=reason
    )


class DeviceSocketConsumer(RelayConsumer):
    """`device/<session_id>[/<endpoint>]`, authorized by the registration's JWT (§4)."""

    kind = "device"

    side = sessions.Side.DEVICE
    peer_side = sessions.Side.POS
    # A terminal that does not take what the POS sends: "try again later" (v1.1 §17), so that
    # it reconnects after a back-off; the POS's next frame then finds no device (4503).
    too_slow_code = TRY_AGAIN_LATER
    # The listeners (reply_to, ping_id) waiting for the ping in flight; None when none is.
    ping_waiters: list[tuple[str, Any]] | None = None

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
        self.device_id = claims.device_id
        self.holder: int | None = None  # the claim holder, as the session group tells it
        self.holder_told = False  # a claim event came: newer than the attach's read
        self.drops_unreported = 0  # frames dropped past the held bounds, not yet told (held.dropped)
        # Pongs count as signs of life (`last_seen_at`), as frames do.
        servers.watch_pongs(self.base_send, self.pong_heard)
        await self.attach(
            session_id,
            session_sockets.device_socket_attach,
            (groups.session_group(session_id),),
            device_id=claims.device_id,
            fingerprint=certificates.presented_fingerprint(self.scope.get("headers", [])),
        )

    def pong_heard(self) -> None:
        self.heard = True

    async def attached_to(self, place: session_sockets.Attached) -> None:
        if not self.holder_told:
            self.holder = place.holder
        await super().attached_to(place)

    def set_peer(self, channel: str | None) -> None:
        super().set_peer(channel)
        if channel is not None and self.held is not None:
            held.peer_known(self)

    async def claim_changed(self, message: dict) -> None:
        held.claim_moved(self, message["holder"])

    async def claim_released(self, message: dict) -> None:
        held.claim_moved(self, None)

    async def session_end(self, message: dict) -> None:
        held.discard(self)
        await super().session_end(message)

    async def disconnect(self, code: int) -> None:
        held.discard(self)  # before the counters are taken: the terminal is gone, so are its answers
        await super().disconnect(code)

    async def device_ping(self, message: dict) -> None:
        """A listener's `ping` (v1.1 §12): a WebSocket ping to the terminal now; the round
        trip, or None when no pong came in time, goes back to the listener (`reply_to`).

        Never waits here, in the channel-message loop (claim changes, the session's end and
        relayed frames come through it): the ping runs in a task of its own. A ping asked
        while one is in flight waits for that one's answer instead of sending another, so
        that any number of listeners' pings at once cost the terminal one WebSocket ping."""
        waiter = (message["reply_to"], message.get("ping_id"))
        if self.ping_waiters is not None:
            self.ping_waiters.append(waiter)
            return
        self.ping_waiters = [waiter]
        spawn(self.ping_terminal(timeout=float(message.get("timeout", 5.0))), name="device-ping")

    async def ping_terminal(self, *, timeout: float) -> None:
        """The one ping in flight: every listener waiting for it hears its answer."""
        rtt = None
        try:
            if not self.closed:
                rtt = await servers.ping(self.base_send, timeout=timeout)
        except servers.PingUnsupported:
            logger.warning("this server offers no WebSocket ping to the application")
        except Exception:  # noqa: BLE001 - the socket went away meanwhile: no pong
            logger.debug("ping of %s failed", self.channel_name)
        finally:
            waiters, self.ping_waiters = self.ping_waiters or [], None
        if rtt is not None:
            self.heard = True
        pongs = (
            self.channel_layer.send(reply_to, {"type": "device.pong", "ping_id": ping_id, "rtt_ms": rtt})
            for reply_to, ping_id in waiters
        )
        await asyncio.gather(*pongs, return_exceptions=True)  # a listener may have gone

    def disconnect_reason(self, code: int) -> str:
        if self.close_code_sent == Close.REPLACED:
            return DisconnectReason.REPLACED
        if self.close_code_sent == Close.GOING_AWAY:
            return DisconnectReason.SERVER_SHUTDOWN
        if servers.ping_timed_out(self.base_send):
            return DisconnectReason.PING_TIMEOUT
        return DisconnectReason.CLOSED

    def relayed(self, size: int) -> None:
        metrics.frames.to_pos += 1
        metrics.frames.bytes_to_pos += size

    async def undeliverable(self, out: dict, size: int) -> None:
        reason, self.drop_reason = self.drop_reason, None
        # v1.1 §13: held for the claim holder while its POS has no socket here.
        if held.hold(self, out, size):
            return
        # §7: nobody listens on this endpoint; the terminal's own protocol notices.
        self.counter.dropped += 1
        if reason == "slow_peer":
            metrics.frames.dropped_slow_peer += 1
        elif reason == "channel_layer":
            metrics.frames.dropped_channel_layer += 1
        else:
            metrics.frames.dropped_no_peer += 1


class PosSessionConsumer(PosCaller, RelayConsumer):
    """`session/<session_id>[/<endpoint>]`, for the credential holding the claim (§6)."""

    kind = "session"

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
            session_sockets.pos_socket_attach,
            (groups.session_group(session_id), groups.credential_group(self.caller.application_id)),
            caller=self.caller,
        )

    def relayed(self, size: int) -> None:
        metrics.frames.to_device += 1
        metrics.frames.bytes_to_device += size

    async def undeliverable(self, out: dict, size: int) -> None:
        # §7: a POS frame is never dropped silently (socket_closes_total{code="4503"}).
        self.drop_reason = None
        await self.close_socket(Close.PEER_UNAVAILABLE)

    async def claim_changed(self, message: dict) -> None:
        if message["holder"] != self.caller.application_id:
            await self.close_socket(Close.REPLACED)

    async def claim_released(self, message: dict) -> None:
        # 1000 for a release the POS asked for; 4410 when the claim was taken from it (its
        # device moved out of its reach: connector.sessions.claims_out_of_reach_release).
        if message["application_id"] == self.caller.application_id:
            await self.close_socket(message.get("code", Close.NORMAL))
