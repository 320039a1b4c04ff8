"""The socket slots of a device session: which socket holds each (side, endpoint) of a
session, written on connect and disconnect (never per frame) as `SessionSocket` rows by the
node (serving process) holding the socket. A new socket on a slot replaces the old one.

The first device socket takes a session online and the last one gone takes it offline;
every function locks the session row first (connector.sessions.sessions_lock), then the
socket rows. Events go out after commit: `peer.attached` / `peer.detached` to the
socket on the other side of the endpoint, when there is one (the only socket that acts
on them: none is sent while a terminal attaches with no POS socket open), and
`device_online`, `device_offline` and `device_replaced` (v1.1 §12) to the claim holder's
listeners.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from accounts.prepared import Prepared, insert, update
from connector import groups, history
from connector.callers import Caller
from connector.conf import connector_settings
from connector.errors import InvalidClient, NotClaimHolder, SocketQuotaExceeded, UnknownEndpoint, UnknownSession
from connector.models import DeviceSession, DisconnectReason, SessionSocket
from connector.sessions import Side, State, live_session_lock, offline_grace, session_lock


@dataclass(frozen=True)
class Attached:
    """A socket's place after attaching: the socket it replaced, its peer, and the session
    (`holder`: its claim holder when the device socket attached, for held answers)."""

    session_id: str
    tsn: str
    replaced: str | None
    peer: str | None
    endpoints: list[str] = field(default_factory=list)
    holder: int | None = None


_slot_rows = Prepared(
    lambda _shape, *, session_id, endpoint: SessionSocket.objects.filter(
        session_id=session_id, endpoint=endpoint
    ).values("pk", "side", "channel_name"),
    required=["session_id", "endpoint"],
)


def _take_slot(
    *, session: DeviceSession, side: str, endpoint: str, channel_name: str, node: str, **extra
) -> tuple[str | None, str | None]:
    """Claim the (session, side, endpoint) slot for a socket, the session's row locked.
    Returns the channel it took the slot from, if any, and the peer's channel (the other
    side's socket on the endpoint), both read in one query."""
    slots = {
        row["side"]: (row["pk"], row["channel_name"])
        for row in _slot_rows.rows(None, session_id=session.pk, endpoint=endpoint)
    }
    values = {"channel_name": channel_name, "node": node, "connected_at": timezone.now(), **extra}
    existing = slots.get(side)
    peer = next((channel for row_side, (_pk, channel) in slots.items() if row_side != side), None)
    if existing is None:
        insert(SessionSocket(session=session, side=side, endpoint=endpoint, **values))
        return None, peer
    update(SessionSocket, existing[0], **values)
    return (existing[1] if existing[1] != channel_name else None), peer


@transaction.atomic
def device_socket_attach(
    *, session_id: str, device_id: int, endpoint: str, channel_name: str, node: str, fingerprint: str = ""
) -> Attached:
    """A device socket connected (its JWT already verified for this session and device).
    A session registered by certificate wants that certificate on its sockets too
    (`fingerprint`, the one the proxy verified, v1.1 §15): a leaked JWT alone is not the
    terminal."""
    now = timezone.now()
    session = live_session_lock(session_id, now)
    if session.device_id != device_id:
        raise UnknownSession()
    if session.registered_fingerprint and session.registered_fingerprint != fingerprint:
        raise InvalidClient("This session registered with a client certificate: connect with the same certificate.")
    if endpoint not in session.endpoints:
        raise UnknownEndpoint()
    replaced, peer = _take_slot(
        session=session, side=Side.DEVICE, endpoint=endpoint, channel_name=channel_name, node=node
    )
    told = []
    if replaced is not None:
        event = history.replaced(device_id=device_id, session_id=session.pk, endpoint=endpoint, now=now)
        if event is not None:
            told += history.listener_messages(
                event, event="device_replaced", holder=session.claimed_by_id, fields={"endpoint": endpoint}
            )
    updates = {"last_seen_at": now, "node": node}
    if session.state != State.ONLINE:
        updates.update(state=State.ONLINE, online_at=now, offline_at=None, offline_until=None)
        told += _online(session=session, node=node, now=now)
    update(DeviceSession, session.pk, **updates)
    groups.send_all_after_commit(told)
    _announce_peer(kind="peer.attached", side=Side.DEVICE, endpoint=endpoint, channel=channel_name, peer=peer)
    return Attached(
        session_id=session.pk,
        tsn=session.device.tsn,
        replaced=replaced,
        peer=peer,
        endpoints=list(session.endpoints),
        holder=session.claimed_by_id,
    )


@transaction.atomic
def pos_socket_attach(*, caller: Caller, session_id: str, endpoint: str, channel_name: str, node: str) -> Attached:
    """A POS session socket connected: the session must be in scope, live and claimed by
    the caller's credential, and the device must have registered the endpoint."""
    now = timezone.now()
    session = live_session_lock(session_id, now, principal=caller.principal)
    if session.claimed_by_id != caller.application_id:
        raise NotClaimHolder()
    if endpoint not in session.endpoints:
        raise UnknownEndpoint()
    _within_session_socket_quota(caller=caller, session=session, endpoint=endpoint)
    replaced, peer = _take_slot(
        session=session,
        side=Side.POS,
        endpoint=endpoint,
        channel_name=channel_name,
        node=node,
        application_id=caller.application_id,
    )
    _announce_peer(kind="peer.attached", side=Side.POS, endpoint=endpoint, channel=channel_name, peer=peer)
    return Attached(
        session_id=session.pk,
        tsn=session.device.tsn,
        replaced=replaced,
        peer=peer,
        endpoints=list(session.endpoints),
    )


# Counted by the database (one row back, whatever the credential holds).
_held_rows = Prepared(
    lambda _shape, *, application_id, session_id, endpoint: (
        SessionSocket.objects.filter(side=Side.POS, application_id=application_id)
        .exclude(session_id=session_id, endpoint=endpoint)
        .values("application_id")
        .annotate(held=Count("pk"))
    ),
    required=["application_id", "session_id", "endpoint"],
)


def _within_session_socket_quota(*, caller: Caller, session: DeviceSession, endpoint: str) -> None:
    """CC_MAX_SESSION_SOCKETS_PER_CREDENTIAL, counted across the deployment from the rows of
    live sockets (a dead node's are swept). A socket that replaces the credential's own on
    the same slot adds none. Attaches to different sessions do not wait for each other, so
    a burst of them may pass the limit by the few that count at the same instant."""
    limit = connector_settings.MAX_SESSION_SOCKETS_PER_CREDENTIAL
    rows = _held_rows.rows(None, application_id=caller.application_id, session_id=session.pk, endpoint=endpoint)
    held = rows[0]["held"] if rows else 0
    if held >= limit:
        raise SocketQuotaExceeded(f"This credential already has {held} POS session sockets open (limit {limit}).")


@transaction.atomic
def socket_reassert(
    *, session_id: str, side: str, endpoint: str, channel_name: str, node: str, application_id: int | None
) -> bool:
    """Write again the row of a socket its node still holds after the row was swept (the
    node stalled past NODE_TIMEOUT). False when another socket took the slot meanwhile."""
    now = timezone.now()
    session = live_session_lock(session_id, now)
    row = SessionSocket.objects.filter(session=session, side=side, endpoint=endpoint).first()
    if row is not None:
        return row.channel_name == channel_name
    if side == Side.POS and session.claimed_by_id != application_id:
        raise NotClaimHolder()
    SessionSocket.objects.create(
        session=session,
        side=side,
        endpoint=endpoint,
        channel_name=channel_name,
        node=node,
        application_id=application_id,
        connected_at=now,
    )
    if side == Side.DEVICE and session.state != State.ONLINE:
        DeviceSession.objects.filter(pk=session.pk).update(
            state=State.ONLINE, online_at=now, offline_at=None, offline_until=None, node=node, last_seen_at=now
        )
        groups.send_all_after_commit(_online(session=session, node=node, now=now))
    peer = socket_channel(session_id=session.pk, side=_other(side), endpoint=endpoint)
    _announce_peer(kind="peer.attached", side=side, endpoint=endpoint, channel=channel_name, peer=peer)
    return True


def _online(*, session: DeviceSession, node: str, now: datetime) -> list[tuple[str, dict]]:
    """The session's first device socket: the device's presence, its event and online
    period (connector.history), and what its listeners hear."""
    event = history.went_online(
        device_id=session.device_id, session_id=session.pk, holder=session.claimed_by_id, now=now
    )
    if event is None:
        return []
    return history.listener_messages(event, event="device_online", holder=session.claimed_by_id, presence=True)


def socket_channel(*, session_id: str, side: str, endpoint: str) -> str | None:
    """The channel of the socket holding a session's (side, endpoint) slot, if any."""
    return (
        SessionSocket.objects.filter(session_id=session_id, side=side, endpoint=endpoint)
        .values_list("channel_name", flat=True)
        .first()
    )


@transaction.atomic
def socket_detach(
    *, session_id: str, side: str, endpoint: str, channel_name: str, reason: str = DisconnectReason.CLOSED
) -> None:
    """A socket closed (a device socket for `reason`, v1.1 §11). The last device socket
    gone takes the session offline."""
    now = timezone.now()
    session = session_lock(session_id)
    deleted, _ = SessionSocket.objects.filter(
        session_id=session_id, side=side, endpoint=endpoint, channel_name=channel_name
    ).delete()
    if not deleted:
        return  # replaced by a newer socket, or swept: the slot is not ours any more
    peer = socket_channel(session_id=session_id, side=_other(side), endpoint=endpoint)
    _announce_peer(kind="peer.detached", side=side, endpoint=endpoint, channel=channel_name, peer=peer)
    if side == Side.DEVICE:
        if not offline_if_no_device_socket(session_ids=[session_id], now=now, reason=reason) and session:
            history.socket_gone(device_id=session.device_id, reason=reason)


def offline_if_no_device_socket(*, session_ids: list[str], now: datetime, reason: str) -> list[str]:
    """Take online sessions without a device socket offline, their devices' last socket
    gone for `reason` (v1.1 §11). The callers hold the sessions' locks; the sockets are
    counted after the lock was granted, so that an attach that committed meanwhile is seen.
    Reads only what it needs (a worker shutting down runs this for all its sessions at
    once), and its events leave in one go after the commit."""
    online = [row for row in lock_sessions(session_ids) if row[1] == State.ONLINE]
    attached = set(
        SessionSocket.objects.filter(session_id__in=[row[0] for row in online], side=Side.DEVICE).values_list(
            "session_id", flat=True
        )
    )
    going = [row for row in online if row[0] not in attached]
    if not going:
        return []
    DeviceSession.objects.filter(pk__in=[row[0] for row in going], state=State.ONLINE).update(
        state=State.OFFLINE, offline_at=now, offline_until=now + offline_grace(reason)
    )
    events = history.went_offline(sessions=[(row[0], row[2]) for row in going], reason=reason, now=now)
    told = []
    for pk, _state, _device_id, holder in going:
        event = events.get(pk)
        if event is not None:
            told += history.listener_messages(
                event, event="device_offline", holder=holder, fields={"reason": reason}, presence=True
            )
    groups.send_all_after_commit(told)
    return [row[0] for row in going]


def lock_sessions(session_ids: list[str]) -> list[tuple]:
    """`sessions_lock` for many sessions (same rows, same order, same lock) reading only the
    id, the state, the device and the claim holder: no model built per row."""
    return list(
        DeviceSession.objects.select_for_update(of=("self",))
        .filter(pk__in=session_ids)
        .order_by("pk")
        .values_list("pk", "state", "device_id", "claimed_by_id")
    )


def _other(side: str) -> str:
    return Side.POS if side == Side.DEVICE else Side.DEVICE


def _announce_peer(*, kind: str, side: str, endpoint: str, channel: str, peer: str | None) -> None:
    """Tell the socket on the other side of the endpoint (`peer`, read under the session's
    lock) that this one attached or left; nobody, when there is none. Whichever of two
    sockets attaches second reads the first one's row under the lock, so each learns of the
    other: the first by this event, the second from its read."""
    if peer is None:
        return
    groups.send_after_commit(
        groups.Channel(peer), {"type": kind, "side": side, "endpoint": endpoint, "channel": channel}
    )
