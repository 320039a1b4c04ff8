"""Device sessions: the state machine and claims. No WebSocket code.

States (contract §8), written to `DeviceSession.state`:

    registered --first device socket--> online --last device socket gone--> offline
    registered --JWT expiry, no socket came--> ended
    offline --GRACE_PERIOD without a device socket--> ended
    offline --the device registers again--> registered (same session id)
    any live state --sessions_end (disabled, deactivated, deleted, operator)--> ended

A device has at most one live (not ended) session, enforced by a partial unique index; a
registration while one is live returns it (same id, new JWT), so that a terminal coming
back within the grace period keeps the POS's claim and its session sockets.

A claim locks the session row (in the order of `sessions_lock`) and compares the holder
under the lock, so that two POS racing, on one process or on two, cannot both win: the
second one waits for the first one's commit, reads its holder and answers
`session_claimed` (a forced claim takes the session over instead). A claim survives the
device going offline and coming back; it ends with the session or with a release.

A session past its deadline is ended lazily whenever it is looked up here (`_settled`),
so the state is right even when no sweeper ran (connector.nodes). Elsewhere: the socket
slots, and with them going online and offline, in connector.session_sockets; registration
(`device_register`: a new session, or the live one again) in connector.registrations, which
uses the lookups and locks here (this module imports nothing from it); who may call in
connector.callers and connector.limiter; what the portal and the API read in
connector.selectors.

Events go out after commit (connector.groups): `session.end`, `claim.changed` and
`claim.released` to the session's sockets, and the POS events of §5 (`session_taken_over`,
`session_ended`) to the claim holder's listeners.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from accounts.audit import audit_record
from accounts.credentials import SCOPE_CLOUD_CONNECTOR
from accounts.models import Application
from accounts.oauth import credential_scopes
from accounts.prepared import Prepared, update
from accounts.scope import Level, Principal, principal_for_application
from connector import groups, history
from connector.callers import Caller
from connector.conf import connector_settings
from connector.errors import (
    CLOSE_GONE,
    DeviceOffline,
    NotClaimed,
    SessionClaimed,
    SessionEnded,
    UnknownDevice,
    UnknownSession,
)
from connector.models import Device, DeviceSession, DisconnectReason, SessionSocket
from connector.selectors import (
    DEVICE_FIELDS,
    LIVE,
    device_find,
    device_require_usable,
    device_sessions_in_scope,
    devices_in_scope,
)

State = DeviceSession.State
Side = SessionSocket.Side


def grace_period() -> timedelta:
    return timedelta(seconds=connector_settings.GRACE_PERIOD)


# The server closed these sockets itself: the terminals did not leave, and a whole worker's
# fleet comes back at the pace the workers admit it (v1.1 §17), which may take longer than
# the grace period of a terminal that went away.
SERVER_SIDE_REASONS = frozenset({DisconnectReason.SERVER_SHUTDOWN, DisconnectReason.NODE_LOST})


def offline_grace(reason: str) -> timedelta:
    """How long a session that went offline for `reason` (v1.1 §11) waits for its terminal."""
    if reason in SERVER_SIDE_REASONS:
        return timedelta(seconds=max(connector_settings.RESTART_GRACE_PERIOD, connector_settings.GRACE_PERIOD))
    return grace_period()


# --- lookups and lazy expiry ---------------------------------------------------------------


def session_deadline(session: DeviceSession) -> datetime | None:
    """When a live session ends by itself if nothing happens: a registered one when its JWT
    expires, an offline one when its grace period is over (`offline_until`, written when it
    went offline); an online one never."""
    if session.state == State.REGISTERED:
        return session.jwt_expires_at
    if session.state != State.OFFLINE or session.offline_at is None:
        return None
    if session.offline_until is not None and session.offline_until >= session.offline_at:
        return session.offline_until
    # Taken offline by a worker older than the column (a rolling deploy): its grace period.
    return session.offline_at + grace_period()


def _settled(session: DeviceSession | None, now: datetime) -> DeviceSession | None:
    """The session, ended first if its deadline has passed (lazy expiry)."""
    if session is None or session.state == State.ENDED:
        return session
    deadline = session_deadline(session)
    if deadline is not None and deadline <= now:
        reason = "registration_expired" if session.state == State.REGISTERED else "device_gone"
        sessions_end(session_ids=[session.pk], reason=reason)
        session.refresh_from_db()
    return session


def live_session_for_device(*, device: Device, now: datetime | None = None) -> DeviceSession | None:
    now = now or timezone.now()
    session = DeviceSession.objects.filter(LIVE, device=device).first()
    session = _settled(session, now)
    return session if session is not None and session.state != State.ENDED else None


# --- locks ------------------------------------------------------------------------------------


def sessions_lock(session_ids: list[str]) -> list[DeviceSession]:
    """Lock session rows until the end of the transaction, in one order (by id).

    Every function that changes a session's sockets or state locks the session row first
    and the socket rows after, so that attaches, detaches, sweeps and ends of one session
    are serialized and never wait on each other in a cycle."""
    return list(
        DeviceSession.objects.select_for_update(of=("self",))
        .filter(pk__in=session_ids)
        .select_related("device")
        .order_by("pk")
    )


_SESSION_FIELDS = [field.attname for field in DeviceSession._meta.concrete_fields]


def _session_lock_query(level: Level | None, *, session_id: str, **ids: int | None):
    sessions = DeviceSession.objects.all()
    if level is not None:
        sessions = device_sessions_in_scope(principal=Principal(level=level, label="lock", **ids))
    return (
        sessions.select_related(None)
        .select_for_update(of=("self",))
        .filter(pk=session_id)
        .values(*_SESSION_FIELDS, *(f"device__{name}" for name in DEVICE_FIELDS))
    )


_session_lock_rows = Prepared(_session_lock_query, required=["session_id"])


def session_lock(session_id: str, principal: Principal | None = None) -> DeviceSession | None:
    """`sessions_lock` for one session (one prepared query: attaches and claims do this
    on every connect), within the principal's scope if one is given; None if not found."""
    ids = {
        "tenant_id": principal.tenant_id if principal else None,
        "merchant_aggregator_id": principal.merchant_aggregator_id if principal else None,
        "merchant_id": principal.merchant_id if principal else None,
        "store_id": principal.store_id if principal else None,
    }
    rows = _session_lock_rows.rows(principal.level if principal else None, session_id=session_id, **ids)
    if not rows:
        return None
    row = rows[0]
    session = DeviceSession.from_db(None, _SESSION_FIELDS, [row[name] for name in _SESSION_FIELDS])
    session.device = Device.from_db(None, DEVICE_FIELDS, [row[f"device__{name}"] for name in DEVICE_FIELDS])
    return session


def lock_live(session_id: str, now: datetime) -> DeviceSession | None:
    """The session, locked and settled (`_settled` may end it), if it is still live."""
    locked = session_lock(session_id)
    session = _settled(locked, now) if locked is not None else None
    return session if session is not None and session.state != State.ENDED else None


def live_session_lock(session_id: str, now: datetime, *, principal: Principal | None = None) -> DeviceSession:
    """The live session row, locked (see `sessions_lock`); `principal` limits the lookup
    to a caller's scope."""
    session = session_lock(session_id, principal)
    if session is None:
        raise UnknownSession()
    session = _settled(session, now)
    if session.state == State.ENDED:
        raise SessionEnded()
    return session


# --- claims ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    session_id: str
    endpoints: list[str]
    tsn: str
    taken_from: int | None = None
    local_url: str = ""


def session_claim(*, caller: Caller, tsn: str, force: bool = False, now: datetime | None = None) -> Claim:
    """Claim the live session of a device for the caller's credential (§5)."""
    device = device_find(principal=caller.principal, tsn=tsn)
    device_require_usable(device=device)
    live_session_id = device.live_session_id
    if live_session_id is None:
        raise DeviceOffline()
    now = now or timezone.now()
    with transaction.atomic():
        session = lock_live(live_session_id, now)
        if session is not None and not _still_reached(principal=caller.principal, device_id=device.pk):
            raise UnknownDevice()
        if session is not None:
            previous = _claim_locked(session=session, application_id=caller.application_id, force=force)
            if previous != caller.application_id:
                _claim_recorded(
                    session=session, tsn=device.tsn, previous=previous, holder=caller.application_id, now=now
                )
            if previous is not None and previous != caller.application_id:
                audit_record(
                    actor=caller.principal,
                    action="device.session_takeover",
                    obj=device,
                    tenant_id=device.tenant_id,
                    data={"session_id": session.pk, "previous_holder": previous},
                )
            elif previous is None:
                audit_record(
                    actor=caller.principal,
                    action="device.session_claim",
                    obj=device,
                    tenant_id=device.tenant_id,
                    data={"session_id": session.pk},
                )
    # Outside the transaction, so that a session found past its deadline stays ended.
    if session is None:
        raise DeviceOffline()
    taken_from = previous if previous != caller.application_id else None
    return Claim(
        session_id=session.pk,
        endpoints=list(session.endpoints),
        tsn=device.tsn,
        taken_from=taken_from,
        local_url=session.local_url,
    )


def _still_reached(*, principal: Principal, device_id: int) -> bool:
    """Read again once the session is locked: a device moved meanwhile to another store is
    no longer a store POS's. `claims_out_of_reach_release` locks the session as well, so
    either it sees this claim and releases it, or this read sees the move."""
    if principal.level != Level.STORE:
        return True  # a device moves between stores of its merchant: only a store's reach changes
    return bool(_device_in_store_rows.rows(None, device_id=device_id, store_id=principal.store_id))


_device_in_store_rows = Prepared(
    lambda _shape, *, device_id, store_id: Device.objects.filter(pk=device_id, store_id=store_id).values("pk"),
    required=["device_id", "store_id"],
)


def _claim_locked(*, session: DeviceSession, application_id: int, force: bool) -> int | None:
    """Set the holder of a live session whose row the caller has locked; returns the
    previous holder (None if unclaimed)."""
    current = session.claimed_by_id
    if current == application_id:
        return application_id
    if current is not None and not force:
        raise SessionClaimed()
    update(DeviceSession, session.pk, claimed_by_id=application_id, claimed_at=timezone.now())
    session.claimed_by_id = application_id
    return current


def _claim_recorded(*, session: DeviceSession, tsn: str, previous: int | None, holder: int, now: datetime) -> None:
    """A claim taken (`session.claimed`) or taken over (`session.taken_over`, the previous
    holder's sockets told with `claim.changed` and its listeners with `session_taken_over`)."""
    name = history.holder_name(holder)
    if previous is None:
        history.claim_changed(
            device_id=session.device_id,
            session_id=session.pk,
            fact_type=history.Type.SESSION_CLAIMED,
            data={"claimed_by": name},
            holder_label=name,
            now=now,
        )
        # The device sockets learn whom to hold their answers for (v1.1 §13, connector.relay.held).
        groups.send_after_commit(groups.session_group(session.pk), {"type": "claim.changed", "holder": holder})
        return
    event = history.claim_changed(
        device_id=session.device_id,
        session_id=session.pk,
        fact_type=history.Type.SESSION_TAKEN_OVER,
        data={"claimed_by": name, "previous": history.holder_name(previous)},
        holder_label=name,
        now=now,
    )
    groups.send_after_commit(groups.session_group(session.pk), {"type": "claim.changed", "holder": holder})
    envelope = event.envelope() if event is not None else {}
    groups.pos_event_after_commit(
        application_id=previous, event="session_taken_over", session_id=session.pk, tsn=tsn, **envelope
    )


@transaction.atomic
def session_release(*, caller: Caller, session_id: str) -> None:
    """Give a claim up; the releasing credential's session sockets close with 1000."""
    session = device_sessions_in_scope(principal=caller.principal).filter(pk=session_id).first()
    if session is None:
        raise UnknownSession()
    if session.state == State.ENDED and session.claimed_by_id == caller.application_id:
        return  # nothing left to release
    released = DeviceSession.objects.filter(LIVE, pk=session.pk, claimed_by_id=caller.application_id).update(
        claimed_by=None, claimed_at=None
    )
    if not released:
        raise NotClaimed()
    _released(session=session, holder=caller.application_id)
    groups.send_after_commit(
        groups.session_group(session.pk), {"type": "claim.released", "application_id": caller.application_id}
    )
    audit_record(
        actor=caller.principal,
        action="device.session_release",
        obj=session.device,
        tenant_id=session.device.tenant_id,
        data={"session_id": session.pk},
    )


# --- ending ----------------------------------------------------------------------------------


@transaction.atomic
def sessions_end(
    *, reason: str, device_ids: list[int] | None = None, session_ids: list[str] | None = None
) -> list[str]:
    """End the live sessions of some devices or some sessions; their sockets close 4410 and
    the credential holding each claim hears `session_ended`. Returns the ids ended."""
    live = DeviceSession.objects.filter(LIVE)
    if device_ids is not None:
        live = live.filter(device_id__in=device_ids)
    if session_ids is not None:
        live = live.filter(pk__in=session_ids)
    locked = [
        session for session in sessions_lock(list(live.values_list("pk", flat=True))) if session.state != State.ENDED
    ]
    if not locked:
        return []
    now = timezone.now()
    ended = [session.pk for session in locked]
    DeviceSession.objects.filter(LIVE, pk__in=ended).update(state=State.ENDED, ended_at=now, end_reason=reason[:40])
    SessionSocket.objects.filter(session_id__in=ended).delete()
    # Presence first (the device sockets it closes), then the end itself: two events each.
    disconnect = history.end_disconnect_reason(reason)
    went = history.went_offline(
        sessions=[(session.pk, session.device_id) for session in locked if session.state == State.ONLINE],
        reason=disconnect,
        now=now,
    )
    told = []
    for event in went.values():
        told += history.listener_messages(
            event, event="device_offline", holder=None, fields={"reason": disconnect}, presence=True
        )
    recorded = {
        event.session_id: event
        for event in history.record(
            [
                history.Fact(
                    device_id=session.device_id,
                    type=history.Type.SESSION_ENDED,
                    session_id=session.pk,
                    data={"reason": reason[:40]},
                )
                for session in locked
            ],
            now=now,
        )
    }
    for session in locked:
        told.append((groups.session_group(session.pk), {"type": "session.end", "code": CLOSE_GONE, "reason": reason}))
        if session.claimed_by_id is not None:
            event = recorded.get(session.pk)
            envelope = event.envelope() if event is not None else {}
            told.append(
                groups.pos_event(
                    application_id=session.claimed_by_id,
                    event="session_ended",
                    session_id=session.pk,
                    tsn=session.device.tsn,
                    **envelope,
                )
            )
    groups.send_all_after_commit(told)
    return ended


def registered_sessions_end(*, application_id: int, reason: str, token_checksum: str | None = None) -> list[str]:
    """End the live sessions whose last registration used a credential's client secret or
    one of its access tokens (only `token_checksum`'s, if given): that credential was
    rotated, revoked or deleted, and a terminal registered with a leaked secret must not
    outlive it. Its device and POS session sockets close 4410."""
    registered = DeviceSession.objects.filter(LIVE, registered_by=application_id)
    if token_checksum is not None:
        registered = registered.filter(registered_token=token_checksum)
    return sessions_end(session_ids=list(registered.values_list("pk", flat=True)), reason=reason)


@transaction.atomic
def claims_out_of_reach_release(*, device_id: int) -> list[str]:
    """A device moved to another store: release the claim on its live session if the
    holder no longer reaches it (a POS of the old store; an application of the merchant
    aggregator still does). The holder's session sockets close 4410, as for an ended
    session; the session lives on for another POS to claim. Its listeners hear nothing
    more of it (events go to the holder). Returns the ids of the sessions released."""
    released = []
    # Every live session of the device is locked, claimed or not: a claim racing the move
    # holds the lock until it commits, or re-reads the device after it (`_still_reached`).
    live = list(DeviceSession.objects.filter(LIVE, device_id=device_id).values_list("pk", flat=True))
    for session in sessions_lock(live):
        holder = session.claimed_by_id
        if session.state == State.ENDED or holder is None or _credential_reaches(holder, device_id):
            continue
        DeviceSession.objects.filter(pk=session.pk).update(claimed_by=None, claimed_at=None)
        _released(session=session, holder=holder, reason="device_moved")
        groups.send_after_commit(
            groups.session_group(session.pk),
            {"type": "claim.released", "application_id": holder, "code": CLOSE_GONE},
        )
        released.append(session.pk)
    return released


def _credential_reaches(application_id: int, device_id: int) -> bool:
    application = Application.objects.filter(pk=application_id).first()
    if application is None:
        return False
    principal = principal_for_application(application)
    return devices_in_scope(principal=principal).filter(pk=device_id).exists()


def credential_claims_settle(*, application_id: int, session_ids: list[str]) -> None:
    """After a credential's tokens were revoked: if the credential is gone, the sessions it
    claimed end; if it can no longer reach Cloud Connector (an application lost its role),
    its claims are released; a rotated secret keeps them (the POS comes back with a new
    token and claims again)."""
    application = Application.objects.filter(pk=application_id).first()
    if application is None:
        sessions_end(session_ids=session_ids, reason="credential_deleted")
    elif SCOPE_CLOUD_CONNECTOR not in credential_scopes(application):
        with transaction.atomic():
            for session in sessions_lock(
                list(DeviceSession.objects.filter(LIVE, claimed_by_id=application_id).values_list("pk", flat=True))
            ):
                if session.claimed_by_id == application_id and session.state != State.ENDED:
                    DeviceSession.objects.filter(pk=session.pk).update(claimed_by=None, claimed_at=None)
                    _released(session=session, holder=application_id, reason="credential_lost_access")
                    groups.send_after_commit(
                        groups.session_group(session.pk),
                        {"type": "claim.released", "application_id": application_id, "code": CLOSE_GONE},
                    )


def _released(*, session: DeviceSession, holder: int, reason: str | None = None) -> None:
    """`session.released`, recorded (by the holder itself, or for `reason`)."""
    data = {"released_by": history.holder_name(holder)}
    if reason:
        data["reason"] = reason
    history.claim_changed(
        device_id=session.device_id,
        session_id=session.pk,
        fact_type=history.Type.SESSION_RELEASED,
        data=data,
        holder_label="",
        now=timezone.now(),
    )
