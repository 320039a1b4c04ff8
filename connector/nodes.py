"""Node housekeeping, run by every serving process (the relay's housekeeping loop).

Which socket is where is soft state: `SessionSocket` rows (connector.session_sockets) and
`NodeHeartbeat` rows refreshed by each node. The sweep ends what is due (offline sessions
past their grace, registered sessions past their JWT), deletes ended sessions past their
retention, and forgets the sockets of nodes that stopped beating (a process that died
without running its disconnect handlers). It is safe to run on every node at once. The
same loop writes the relayed and dropped frame counters it batched (`session_counters_add`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from connector import groups, history
from connector.conf import connector_settings
from connector.models import DeviceSession, DisconnectReason, NodeHeartbeat, SessionSocket
from connector.selectors import ended_retention
from connector.session_sockets import lock_sessions, offline_if_no_device_socket
from connector.sessions import State, grace_period, sessions_end


def node_timeout() -> timedelta:
    """How long a node may stay silent before its sockets are presumed dead."""
    return timedelta(seconds=connector_settings.NODE_TIMEOUT)


@transaction.atomic
def node_heartbeat(*, node: str, now: datetime | None = None, snapshot: dict | None = None) -> bool:
    """Record that a node is alive, with its figures for the fleet page (connector.fleet's
    `node_snapshot`); False if it had been presumed dead (its rows swept)."""
    now = now or timezone.now()
    fields = {"seen_at": now} if snapshot is None else {"seen_at": now, "snapshot": snapshot}
    if NodeHeartbeat.objects.filter(node=node).update(**fields):
        return True
    NodeHeartbeat.objects.create(node=node, **fields)
    return False


def node_forget(*, node: str) -> None:
    """A node shuts down cleanly: its sockets are gone, all forgotten in one transaction (its
    sockets skip their own detach while it shuts down: connector.consumers.relay_sockets).
    A peer socket on another node hears `peer.detached`, as from a detach, so that its next
    frame finds no peer (§7) instead of going to a channel nobody reads."""
    with transaction.atomic():
        mine = list(
            SessionSocket.objects.filter(node=node).values_list("session_id", "side", "endpoint", "channel_name")
        )
        sessions = sorted({row[0] for row in mine})
        lock_sessions(sessions)
        SessionSocket.objects.filter(node=node).delete()
        NodeHeartbeat.objects.filter(node=node).delete()
        _tell_peers_elsewhere(mine)
        offline_if_no_device_socket(session_ids=sessions, now=timezone.now(), reason=DisconnectReason.SERVER_SHUTDOWN)


def _tell_peers_elsewhere(gone: list[tuple[str, str, str, str]]) -> None:
    """`peer.detached` to the sockets left on the other side of the endpoints of `gone`
    (session id, side, endpoint, channel), read after those rows were deleted."""
    by_slot = {(session_id, endpoint, side): channel for session_id, side, endpoint, channel in gone}
    peers = SessionSocket.objects.filter(session_id__in={row[0] for row in gone}).values_list(
        "session_id", "side", "endpoint", "channel_name"
    )
    events = []
    for session_id, side, endpoint, channel in peers:
        other = SessionSocket.Side.POS if side == SessionSocket.Side.DEVICE else SessionSocket.Side.DEVICE
        left = by_slot.get((session_id, endpoint, other))
        if left is not None:
            events.append(
                (
                    groups.Channel(channel),
                    {"type": "peer.detached", "side": other, "endpoint": endpoint, "channel": left},
                )
            )
    groups.send_all_after_commit(events)


@dataclass(frozen=True)
class SweepResult:
    went_offline: list[str]
    ended: list[str]
    purged: int
    nodes_dead: int = 0  # silent nodes whose heartbeat this sweep deleted


def sessions_sweep(*, now: datetime | None = None) -> SweepResult:
    """End what is due and forget the sockets of silent nodes; safe to run on every node."""
    now = now or timezone.now()
    went_offline, nodes_dead = _sweep_dead_nodes(now=now)
    ended = sessions_end(
        session_ids=list(
            DeviceSession.objects.filter(state=State.REGISTERED, jwt_expires_at__lte=now).values_list("pk", flat=True)
        ),
        reason="registration_expired",
    )
    ended += sessions_end(
        session_ids=list(
            DeviceSession.objects.filter(
                # As sessions.session_deadline: `offline_until` when it was written with this
                # offline period, else (a worker older than the column took it offline) the
                # grace period after `offline_at`.
                Q(offline_until__gte=F("offline_at"), offline_until__lte=now)
                | (
                    (Q(offline_until__isnull=True) | Q(offline_until__lt=F("offline_at")))
                    & Q(offline_at__lte=now - grace_period())
                ),
                state=State.OFFLINE,
            ).values_list("pk", flat=True)
        ),
        reason="device_gone",
    )
    purged, _ = DeviceSession.objects.filter(state=State.ENDED, ended_at__lt=now - ended_retention()).delete()
    return SweepResult(went_offline=went_offline, ended=ended, purged=purged, nodes_dead=nodes_dead)


@transaction.atomic
def _sweep_dead_nodes(*, now: datetime) -> tuple[list[str], int]:
    cutoff = now - node_timeout()
    alive = NodeHeartbeat.objects.filter(seen_at__gte=cutoff).values("node")
    dead = SessionSocket.objects.exclude(node__in=alive).filter(connected_at__lt=cutoff)
    sessions = list(dead.values_list("session_id", flat=True).distinct())
    lock_sessions(sessions)
    dead.delete()
    nodes_dead, _ = NodeHeartbeat.objects.filter(seen_at__lt=cutoff).delete()
    return offline_if_no_device_socket(session_ids=sessions, now=now, reason=DisconnectReason.NODE_LOST), nodes_dead


@transaction.atomic
def session_counters_add(*, deltas: dict[str, tuple[int, int]]) -> None:
    """Add relayed and dropped frame counts, batched in memory by the relay."""
    for session_id, (relayed, dropped) in deltas.items():
        DeviceSession.objects.filter(pk=session_id).update(
            frames_relayed=F("frames_relayed") + relayed, frames_dropped=F("frames_dropped") + dropped
        )
    history.frames_add(deltas)
