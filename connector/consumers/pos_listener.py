"""§5, the POS listener: claim, release and devices requests, and the events for the claims a
credential holds; v1.1 §12: `subscribe` to the presence of every device in the token's scope,
`ping` a device's socket, and every event numbered (`seq`, per socket, no gaps) and carrying
its `event_id` and `occurred_at`. `PosCaller`: what both POS sockets share (the bearer
token's caller, closing on revocation)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from django.utils import timezone

from accounts.credentials import bearer_from_header
from accounts.errors import DomainError, RateLimited
from accounts.scope import Level
from connector import callers, groups, metrics, protocol, selectors, sessions
from connector.conf import connector_settings
from connector.consumers.base import BaseConsumer, db
from connector.errors import DeviceUnresponsive
from connector.protocol import Close
from connector.relay import servers
from connector.relay.registry import registry
from connector.relay.tasks import spawn

logger = logging.getLogger(__name__)

# pos-listener answers (a `devices` answer for a large scope) may be far bigger than requests.
LISTENER_SERVER_LIMIT = 16 * 1024 * 1024


# §12 `ping`: how long the device's socket has to answer, and how much longer the listener
# waits for that answer to come back through the channel layer.
PING_TIMEOUT = 5.0
PING_REPLY_MARGIN = 2.0
# At most this many pings of one listener socket wait for their answer; one more is answered
# 429 `rate_limited` at once, so that a POS pinging in a loop cannot flood a device's socket.
PING_IN_FLIGHT = 4


def _pings_limited() -> RateLimited:
    return RateLimited(
        f"At most {PING_IN_FLIGHT} pings may wait for their answer on one listener socket; "
        "send another once one of them is answered.",
        retry_after=int(PING_TIMEOUT + PING_REPLY_MARGIN),  # the longest a ping holds its place
    )


@dataclass(frozen=True)
class Deferred:
    """A request the listener socket finishes on the event loop: a presence subscription
    (`presence`) or a ping of a device socket (`ping_channel`)."""

    flow_id: object
    presence: bool | None = None
    ping_channel: str | None = None


def _pos_request(*, text: str | None, raw_token: str, base_url: str) -> str | Deferred | None:
    """Answer one pos-listener request; None when the token is no longer valid."""
    flow_id = None
    try:
        caller = callers.caller_from_bearer(raw_token)
    except DomainError:
        return None
    try:
        request = protocol.parse_request(text)
        flow_id = request.flow_id
        action = request.resource.get("action")
        if action == "claim":
            claim = _claim(caller=caller, request=request)
            return protocol.ok_response(
                flow_id,
                session_id=claim.session_id,
                session_url=protocol.session_url(base_url, claim.session_id),
                endpoints=claim.endpoints,
                tsn=claim.tsn,
                local_url=claim.local_url or None,
            )
        if action == "release":
            session_id = protocol.parse_session_id(request.resource)
            sessions.session_release(caller=caller, session_id=session_id)
            return protocol.ok_response(flow_id, session_id=session_id)
        if action == "devices":
            return protocol.ok_response(flow_id, devices=selectors.devices_for_caller(caller=caller))
        if action == "subscribe":
            presence = request.resource.get("presence")
            if not isinstance(presence, bool):
                raise protocol.ProtocolError("presence must be true or false.")
            return Deferred(flow_id=flow_id, presence=presence)
        if action == "ping":
            tsn = protocol.parse_tsn(request.resource.get("tsn"))
            return Deferred(flow_id=flow_id, ping_channel=selectors.device_socket_for_ping(caller=caller, tsn=tsn))
        raise protocol.ProtocolError(
            f"Unknown action {protocol.shown(action)}: expected claim, release, devices, subscribe or ping."
        )
    except DomainError as error:
        if isinstance(error, protocol.ProtocolError) and error.flow_id is not None:
            flow_id = error.flow_id
        return protocol.error_response(flow_id, protocol.translate(error))


def _claim(*, caller: callers.Caller, request: protocol.Request) -> sessions.Claim:
    """A claim, timed and counted by outcome (connector.metrics.claims), and logged."""
    tsn = None
    fields = {"flow_id": request.flow_id, "client_id": caller.client_id, "event": "claim"}
    with metrics.claims.timed() as attempt:
        try:
            tsn, force = protocol.parse_claim(request.resource)
            claim = sessions.session_claim(caller=caller, tsn=tsn, force=force)
        except DomainError as error:
            attempt.outcome = protocol.translate(error).error
            logger.info("claim refused: %s", attempt.outcome, extra={"tsn": tsn, **fields})
            raise
    logger.info("claim granted", extra={"session_id": claim.session_id, "tsn": claim.tsn, **fields})
    return claim


ONLINE_EVENTS = ("device_online", "device_offline")
TOLD_LIMIT = 1000
# Event ids a listener socket remembers, so that a fact reaching it twice (it holds the claim
# and is subscribed to presence: two groups) is told once.
SEEN_EVENTS_LIMIT = 512


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
            self.caller = await db(callers.caller_from_bearer, self.raw_token)
        except DomainError as error:
            await self.refuse(protocol.translate(error).close_code)
            return False
        self.log_fields["client_id"] = self.caller.client_id
        return True

    async def credential_revoked(self, message: dict) -> None:
        await self.close_socket(self.revoked_code)

    async def token_revoked(self, message: dict) -> None:
        if message.get("token_checksum") == self.caller.token_checksum:
            await self.close_socket(self.revoked_code)


class PosListenerConsumer(PosCaller, BaseConsumer):
    """`pos-listener`: claim, release and devices requests; §5's events for the claims the
    credential holds. A malformed request gets a 400 and the socket stays open."""

    kind = "pos_listener"
    sheddable = True  # where a POS's work enters (connector.relay.admission)

    async def connect(self) -> None:
        # The server's limit binds answers too, and a `devices` answer for a large scope is
        # big; requests are held to CONTROL_MESSAGE_LIMIT by websocket_receive.
        servers.server_socket_tune(self, max_message=LISTENER_SERVER_LIMIT)
        if not await self.authenticate():
            return
        # CC_MAX_LISTENERS_PER_CREDENTIAL, per process: listener sockets have no rows to count
        # across the deployment (see connector.relay.registry, "Quotas").
        limit = connector_settings.MAX_LISTENERS_PER_CREDENTIAL
        if not registry.listener_admit(self, application_id=self.caller.application_id, limit=limit):
            await self.refuse(Close.RATE_LIMITED)
            return
        self.listening_for = self.caller.application_id
        # The last online/offline event this socket sent per session, so that what it missed
        # while Redis was away can be told once it is back (connector.relay.recovery).
        self.told: dict[str, str] = {}
        self.seq = 0  # events sent on this socket (v1.1 §12: 1, 2, 3 ... no gaps)
        self.seen_events: OrderedDict[str, None] = OrderedDict()
        self.presence_groups: tuple[str, ...] = ()
        self.pings: dict[str, asyncio.Future] = {}
        self.pings_in_flight = 0  # spawned `ping` tasks not done yet (PING_IN_FLIGHT)
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
        if isinstance(response, Deferred):
            if response.presence is not None:
                response = await self.subscribe(response)
            elif self.pings_in_flight >= PING_IN_FLIGHT:
                response = protocol.error_response(response.flow_id, protocol.translate(_pings_limited()))
            else:
                # Answered when the pong comes (or not): other requests go on meanwhile.
                self.pings_in_flight += 1
                spawn(self.ping(response), name="listener-ping")
                return
        if not self.closed:
            await self.send(text_data=response)

    async def subscribe(self, request: Deferred) -> str:
        """§12: presence events of every device in the token's scope, from now on (or not)."""
        principal = self.caller.principal
        if principal.level == Level.STORE:
            wanted = (groups.presence_group_store(principal.store_id),)
        elif principal.level == Level.MERCHANT_AGGREGATOR:
            wanted = (groups.presence_group_ma(principal.merchant_aggregator_id),)
        else:  # no other credential reaches terminals (accounts.scope.row_reaches_terminals)
            wanted = ()
        if request.presence and not self.presence_groups:
            await self.join(*wanted)
            self.presence_groups = wanted
        elif not request.presence and self.presence_groups:
            for name in self.presence_groups:
                self.groups.remove(name)
                await self.channel_layer.group_discard(name, self.channel_name)
            self.presence_groups = ()
        return protocol.ok_response(request.flow_id, presence=bool(self.presence_groups))

    async def ping(self, request: Deferred) -> None:
        """§12: the device's socket pings its terminal now and tells the round trip; 504
        when no pong comes in PING_TIMEOUT seconds. Holds one of the socket's PING_IN_FLIGHT
        places until the answer is known."""
        ping_id = uuid.uuid4().hex
        answer = asyncio.get_running_loop().create_future()
        self.pings[ping_id] = answer
        try:
            await self.channel_layer.send(
                request.ping_channel,
                {"type": "device.ping", "reply_to": self.channel_name, "ping_id": ping_id, "timeout": PING_TIMEOUT},
            )
            async with asyncio.timeout(PING_TIMEOUT + PING_REPLY_MARGIN):
                rtt = await answer
        except TimeoutError:
            rtt = None
        except Exception:  # noqa: BLE001 - the layer failed: the device cannot be reached now
            logger.warning("ping of %s could not be sent", request.ping_channel)
            rtt = None
        finally:
            self.pings.pop(ping_id, None)
            self.pings_in_flight -= 1
        if self.closed:
            return
        if rtt is None:
            response = protocol.error_response(request.flow_id, protocol.translate(DeviceUnresponsive()))
        else:
            response = protocol.ok_response(request.flow_id, rtt_ms=round(rtt, 3))
        await self.send(text_data=response)

    async def device_pong(self, message: dict) -> None:
        answer = self.pings.get(message.get("ping_id"))
        if answer is not None and not answer.done():
            answer.set_result(message.get("rtt_ms"))

    async def pos_event(self, message: dict) -> None:
        if self.closed:
            return
        event, session_id = message["event"], message["session_id"]
        event_id = message.get("event_id")
        if event_id is not None:
            if event_id in self.seen_events:
                return  # the same fact through another of this socket's groups
            self.seen_events[event_id] = None
            if len(self.seen_events) > SEEN_EVENTS_LIMIT:
                self.seen_events.popitem(last=False)
            occurred_at = message.get("occurred_at")
        else:  # told again after a Redis outage (connector.relay.recovery): a fact of now
            event_id, occurred_at = str(uuid.uuid4()), protocol.timestamp(timezone.now())
        self.told.pop(session_id, None)
        if event in ONLINE_EVENTS:
            self.told[session_id] = event
            if len(self.told) > TOLD_LIMIT:  # released claims are not heard of: forget the oldest
                del self.told[next(iter(self.told))]
        fields = message.get("fields") or {}  # an event's own: `endpoint`, `reason`
        self.seq += 1
        await self.send(
            text_data=protocol.event(
                event,
                session_id=session_id,
                tsn=message["tsn"],
                event_id=event_id,
                occurred_at=occurred_at,
                seq=self.seq,
                **fields,
            )
        )

    async def disconnect(self, code: int) -> None:
        self.closed = True
        for answer in getattr(self, "pings", {}).values():
            if not answer.done():
                answer.set_result(None)
