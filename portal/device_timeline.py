"""The timeline of the device page: what happened to a device, newest first, merged from its
connection history (`DeviceConnection`: when each online period began and ended, why, and
the frames relayed and dropped) and its recorded events (`Event`: claims, releases,
takeovers, session ends, activation changes, replaced sockets).

Online and offline are read from the connection rows, not from the `device.online` and
`device.offline` events: both record the same facts, and only the rows carry the frames and
the holder. Two queries for any device, each bounded by `TIMELINE_LIMIT`; older entries are
in `GET /api/v1/devices/{id}/connections/`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from connector.models import Device, DeviceConnection, Event
from portal.device_status import disconnect_text

TIMELINE_LIMIT = 100

# What a session's end reason means, for people (connector.sessions and connector.events
# write these); an unknown one is shown as it is stored.
END_TEXT = {
    "device_gone": "the terminal did not come back within the grace period",
    "registration_expired": "the terminal registered but never connected",
    "ended_by_operator": "ended by an operator",
    "device_unusable": "the device may no longer use Cloud Connector",
    "credential_revoked": "the credentials it registered with were revoked",
    "credential_deleted": "the credentials it registered with were deleted",
    "secret_rotated": "the secret it registered with was rotated",
    "token_revoked": "the token it registered with was revoked",
}

# The badge colour of each kind of entry (portal.css: ok, bad, warn, idle).
TONE = {
    "connected": "ok",
    "back": "ok",
    "activated": "ok",
    "offline": "bad",
    "deactivated": "bad",
    "ended": "warn",
    "replaced": "warn",
}

# Entries at the same instant, newest first: a period's end after the events it closes, the
# events after the period's start.
_START, _EVENT, _END = 0, 1, 2


@dataclass(frozen=True)
class Entry:
    """One line of the timeline. `kind` names it for styling and tests (connected, back,
    offline, claimed, released, taken_over, ended, activated, deactivated, replaced, event)."""

    at: datetime
    kind: str
    title: str
    detail: str = ""
    session_id: str = ""
    frames_relayed: int | None = None
    frames_dropped: int | None = None
    order: tuple[int, int] = (_EVENT, 0)

    @property
    def tone(self) -> str:
        return TONE.get(self.kind, "idle")


@dataclass(frozen=True)
class Timeline:
    entries: list[Entry]
    # More happened than the page shows.
    truncated: bool


def device_timeline(*, device: Device, limit: int = TIMELINE_LIMIT) -> Timeline:
    """The device's latest `limit` entries, newest first. The device must come from a
    scoped selector: this reads whatever device it is given."""
    # One row more than needed: it tells whether the oldest shown period was a comeback
    # within its session, and whether anything older exists.
    connections = list(DeviceConnection.objects.filter(device=device).order_by("-connected_at", "-id")[: limit + 1])
    events = list(
        Event.objects.filter(device=device)
        .exclude(type__in=[Event.Type.DEVICE_ONLINE, Event.Type.DEVICE_OFFLINE])
        .order_by("-occurred_at", "-seq")[: limit + 1]
    )
    entries = [*_connection_entries(connections, limit=limit), *(_event_entry(event) for event in events[:limit])]
    entries.sort(key=lambda entry: (entry.at, entry.order), reverse=True)
    truncated = len(entries) > limit or len(connections) > limit or len(events) > limit
    return Timeline(entries=entries[:limit], truncated=truncated)


def _connection_entries(connections: list[DeviceConnection], *, limit: int) -> Iterable[Entry]:
    """The periods, newest first; one that follows another of the same session is the
    terminal coming back within the grace period."""
    for index, connection in enumerate(connections[:limit]):
        older = connections[index + 1] if index + 1 < len(connections) else None
        yield from _period(connection, back=older is not None and older.session_id == connection.session_id)


def _period(connection: DeviceConnection, *, back: bool) -> Iterable[Entry]:
    """An online period: its start, and its end once it has one. The frames go with the end,
    or with the start while the period is open."""
    frames = {"frames_relayed": connection.frames_relayed, "frames_dropped": connection.frames_dropped}
    open_ = connection.disconnected_at is None
    holder = f"claimed by {connection.claimed_by}" if connection.claimed_by else "not claimed"
    yield Entry(
        at=connection.connected_at,
        kind="back" if back else "connected",
        title="Back online" if back else "Connected",
        detail=f"online now, {holder}" if open_ else "",
        session_id=connection.session_id,
        order=(_START, connection.pk),
        **(frames if open_ else {}),
    )
    if not open_:
        reason = disconnect_text(connection.reason) if connection.reason else "no reason recorded"
        yield Entry(
            at=connection.disconnected_at,
            kind="offline",
            title="Offline",
            detail=f"{reason}; online for {_duration(connection.disconnected_at - connection.connected_at)}, {holder}",
            session_id=connection.session_id,
            order=(_END, connection.pk),
            **frames,
        )


def _event_entry(event: Event) -> Entry:
    describe = _EVENT_TEXT.get(event.type)
    kind, title, detail = describe(event.data or {}) if describe else ("event", event.type, "")
    return Entry(
        at=event.occurred_at,
        kind=kind,
        title=title,
        detail=detail,
        session_id=event.session_id,
        order=(_EVENT, event.seq),
    )


def _claimed(data: dict) -> tuple[str, str, str]:
    return "claimed", f"Claimed by {data.get('claimed_by') or 'an unknown holder'}", ""


def _released(data: dict) -> tuple[str, str, str]:
    return "released", f"Released by {data.get('released_by') or 'an unknown holder'}", ""


def _taken_over(data: dict) -> tuple[str, str, str]:
    previous = data.get("previous")
    detail = f"from {previous}" if previous else ""
    return "taken_over", f"Taken over by {data.get('claimed_by') or 'an unknown holder'}", detail


def _ended(data: dict) -> tuple[str, str, str]:
    reason = str(data.get("reason") or "")
    return "ended", "Session ended", END_TEXT.get(reason, reason.replace("_", " "))


def _activation(data: dict) -> tuple[str, str, str]:
    if data.get("active"):
        return "activated", "Cloud Connector usable", "the device may register now"
    return "deactivated", "Cloud Connector not usable", "the device may no longer register"


def _replaced(data: dict) -> tuple[str, str, str]:
    endpoint = data.get("endpoint")
    detail = f"on {endpoint}" if endpoint else ""
    return "replaced", "Socket replaced by a new connection of the terminal", detail


_EVENT_TEXT = {
    Event.Type.SESSION_CLAIMED: _claimed,
    Event.Type.SESSION_RELEASED: _released,
    Event.Type.SESSION_TAKEN_OVER: _taken_over,
    Event.Type.SESSION_ENDED: _ended,
    Event.Type.DEVICE_ACTIVATION_CHANGED: _activation,
    Event.Type.DEVICE_REPLACED: _replaced,
}


def _duration(elapsed) -> str:
    seconds = max(int(elapsed.total_seconds()), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} days {hours % 24} h"
