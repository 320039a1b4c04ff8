"""Restoring this process's channel-layer state after the broker (Redis) came back or lost
its data, so that no socket is closed over a Redis restart.

Connects and disconnects work while Redis is away, but control events (closes, peer
changes, POS events) cannot be sent. When Redis answers again (each process probes it:
the broker calls `schedule_recovery` through its `when_back`), every process puts its
sockets back in their groups, which a Redis without persistence forgot, and replays to
its relay sockets what they missed, from the database: a session ended meanwhile closes
with 4410, a socket replaced meanwhile with 4409, a claim taken over with 4409 or released
with 1000, and a peer that came or went is learnt; POS sockets whose token was revoked
meanwhile close (4410, 4401), and each pos-listener socket hears
`device_online`/`device_offline` for the claims whose state changed since its last such
event. The heartbeat (connector.relay.housekeeping) also notices a Redis that lost its data
without dropping connections (a marker key gone: `Broker.state_lost`).

The replayed events are handed to each consumer's own handlers (registry.deliver), which
choose the close codes; this module knows the sockets only by the attributes it reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from connector import selectors
from connector.relay.broker import Broker
from connector.relay.registry import NODE, deliver, registry
from connector.relay.tasks import task_of_loop

logger = logging.getLogger(__name__)

RETRY_PAUSE = 1.0  # seconds between two recoveries when Redis failed again during one

_recoveries: dict[asyncio.AbstractEventLoop, asyncio.Task] = {}


def hook_into(layer: Any) -> None:
    """Have a Broker schedule this process's recovery as soon as its server answers again
    (nothing for a layer that is not one: the in-memory layer loses nothing)."""
    if isinstance(layer, Broker) and layer.when_back is None:
        layer.when_back = schedule_recovery


def schedule_recovery(layer: Broker) -> None:
    """Restore this process's channel-layer state after Redis came back or lost its data:
    one recovery at a time per event loop; a request during one makes it go round again."""
    layer.recovery_needed = True
    task_of_loop(_recoveries, lambda: _recover(layer), "cloud-connector-layer-recovery")


async def check_channel_layer() -> None:
    """At each heartbeat: recover if Redis lost this process's state (or a recovery is due)."""
    layer = get_channel_layer()
    running = _recoveries.get(asyncio.get_running_loop())
    if not isinstance(layer, Broker) or (running is not None and not running.done()):
        return  # a running recovery sets the marker again itself
    hook_into(layer)
    if await layer.state_lost(NODE) or layer.recovery_needed:
        schedule_recovery(layer)


async def _recover(layer: Broker) -> None:
    while layer.recovery_needed and not registry.shutting_down:
        layer.recovery_needed = False
        try:
            await _restore(layer)
        except Exception:  # noqa: BLE001 - the next heartbeat or outage tries again
            logger.exception("could not restore the channel layer's state")
        if layer.recovery_needed:  # Redis failed again meanwhile
            await asyncio.sleep(RETRY_PAUSE)
            await layer.reachable()


async def _restore(layer: Broker) -> None:
    # Groups first, then the database: an event committed after the read reaches the socket
    # and one committed before is seen by the read (the same order as at connect).
    started = time.monotonic()
    await layer.state_lost(NODE)  # set the marker again, so the heartbeat does not redo this
    sockets = [sock for sock in registry.sockets.values() if not sock.closed]
    memberships = [(group, sock.channel_name) for sock in sockets for group in getattr(sock, "groups", None) or ()]
    if not await layer.restore_groups(memberships):
        return
    attached = [sock for sock in sockets if getattr(sock, "attached", False)]
    missed = await _catch_up(attached) if attached else 0
    missed += await _revoked_meanwhile([sock for sock in sockets if not sock.closed])
    missed += await _resync_listeners([sock for sock in sockets if not sock.closed and hasattr(sock, "told")])
    logger.warning(
        "channel layer restored: %d sockets back in their groups (%d memberships), %d missed events "
        "replayed, in %.2f s",
        len(sockets),
        len(memberships),
        missed,
        time.monotonic() - started,
    )


async def _catch_up(sockets: list[Any]) -> int:
    """Replay to relay sockets the control events they missed while Redis was away: the
    difference between what each socket believes and what the database says, handed to its
    consumer's own handlers (which choose the close codes). Returns how many were replayed."""
    peers_before = {sock.channel_name: sock.peer_channel for sock in sockets}
    states, slots = await database_sync_to_async(selectors.sessions_now)(
        session_ids=sorted({s.session_id for s in sockets})
    )
    replayed = 0
    for sock in sockets:
        if sock.closed:
            continue
        holder = slots.get((sock.session_id, sock.side, sock.endpoint))
        session = states.get(sock.session_id)
        if holder is None and session is not None and not session.ended:
            await sock.reassert()  # its row was swept: write it again (or close, as it says)
            continue
        for message in _missed(sock, session, holder, slots, peers_before[sock.channel_name]):
            replayed += 1
            await deliver(sock, message)
            if sock.closed:
                break
    return replayed


async def _revoked_meanwhile(sockets: list[Any]) -> int:
    """Close the POS sockets (listeners and sessions) whose access token was revoked, or
    whose credential was deleted, while Redis was away and the event could not be sent:
    their own token_revoked handlers choose the codes (4401, 4410). Returns how many."""
    checksums = {_token_checksum(sock) for sock in sockets} - {None}
    if not checksums:
        return 0
    revoked = await database_sync_to_async(selectors.tokens_revoked)(checksums=sorted(checksums))
    closing = [sock for sock in sockets if _token_checksum(sock) in revoked]
    for sock in closing:
        if not sock.closed:
            await deliver(sock, {"type": "token.revoked", "token_checksum": sock.caller.token_checksum})
    return len(closing)


async def _resync_listeners(listeners: list[Any]) -> int:
    """§5 for what changed while Redis was away: each pos-listener socket hears
    `device_online` or `device_offline` for every session its credential holds whose state
    differs from the last it was told (a claim is made online). Ended and taken-over
    sessions are told through their session sockets (_catch_up: 4410, 4409). Returns how
    many events were sent."""
    if not listeners:
        return 0
    told_before = {id(sock): dict(sock.told) for sock in listeners}
    held = await database_sync_to_async(selectors.claims_held)(
        application_ids=sorted({sock.caller.application_id for sock in listeners})
    )
    sent = 0
    for sock in listeners:
        before = told_before[id(sock)]
        mine = [claim for claim in held if claim.application_id == sock.caller.application_id]
        for gone in set(before) - {claim.session_id for claim in mine}:
            if sock.told.get(gone) == before[gone]:
                del sock.told[gone]
        for claim in mine:
            event = "device_online" if claim.online else "device_offline"
            # Only if no event reached the socket during the read: such an event is newer.
            unchanged = sock.told.get(claim.session_id) == before.get(claim.session_id)
            if unchanged and before.get(claim.session_id, "device_online") != event and not sock.closed:
                await deliver(
                    sock, {"type": "pos.event", "event": event, "session_id": claim.session_id, "tsn": claim.tsn}
                )
                sent += 1
    return sent


def _token_checksum(sock: Any) -> str | None:
    caller = getattr(sock, "caller", None)
    return getattr(caller, "token_checksum", None)


def _missed(
    sock: Any, session: selectors.SessionNow | None, holder: str | None, slots: dict, peer_before: str | None
) -> list:
    if session is None or session.ended:
        return [{"type": "session.end"}]
    if holder != sock.channel_name:
        return [{"type": "socket.replaced"}]
    missed: list[dict[str, Any]] = []
    if sock.endpoint not in session.endpoints:
        missed.append({"type": "session.endpoints", "endpoints": session.endpoints})
    caller = getattr(sock, "caller", None)
    if caller is not None and session.claimed_by != caller.application_id:
        if session.claimed_by is None:
            missed.append({"type": "claim.released", "application_id": caller.application_id})
        else:
            missed.append({"type": "claim.changed", "holder": session.claimed_by})
    peer = slots.get((sock.session_id, sock.peer_side, sock.endpoint))
    # Only if no event changed the peer since the read began: such an event is newer.
    if peer != peer_before and sock.peer_channel == peer_before:
        if peer is not None:
            missed.append({"type": "peer.attached", "side": sock.peer_side, "endpoint": sock.endpoint, "channel": peer})
        else:
            missed.append(
                {"type": "peer.detached", "side": sock.peer_side, "endpoint": sock.endpoint, "channel": peer_before}
            )
    return missed
