"""Device sessions: who may connect, the session state machine, claims. No WebSocket code.

States (contract §8), written to `DeviceSession.state`:

    registered --first device socket--> online --last device socket gone--> offline
    registered --JWT expiry, no socket came--> ended
    offline --GRACE_PERIOD without a device socket--> ended
    offline --the device registers again--> registered (same session id)
    any live state --sessions_end (disabled, deactivated, deleted, operator)--> ended

A device has at most one live (not ended) session, enforced by a partial unique index; a
registration while one is live returns it (same id, new JWT), so that a terminal coming
back within the grace period keeps the POS's claim and its session sockets.

A claim locks the session row (in the order of `_lock_sessions`) and compares the holder
under the lock, so that two POS racing, on one process or on two, cannot both win: the
second one waits for the first one's commit, reads its holder and answers
`session_claimed` (a forced claim takes the session over instead). A claim survives the
device going offline and coming back; it ends with the session or with a release.

Which socket is where is soft state: `SessionSocket` rows written on connect and
disconnect (never per frame) by the node (serving process) holding the socket, and
`NodeHeartbeat` rows refreshed by each node's sweeper. The sweep (`sessions_sweep`) runs
in every serving process and also ends what is due lazily whenever a session is looked
up, so the state is right even when no sweeper ran: offline sessions past their grace,
registered sessions past their JWT, and sockets of nodes that stopped beating (a process
that died without running its disconnect handlers).

Events go out after commit (connector.groups): `session.end` to the session's sockets,
`claim.changed` / `claim.released` / `peer.attached` / `peer.detached` /
`session.endpoints` to the session's sockets, and the POS events of §5 (`device_online`,
`device_offline`, `session_taken_over`, `session_ended`) and of v1.1 §12 (`device_replaced`)
to the claim holder's listeners.

Authentication of the callers lives here too because its rules are the relay's: a caller
is a store POS or a Cloud API application that has everything Cloud Connector needs
(provisioning clients never reach a terminal), authenticated by an access token with the
`cloud-connector` scope, or, for a terminal's registration only, by client id and secret.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.hashers import check_password, identify_hasher
from django.db import IntegrityError, connection, transaction
from django.db.models import F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from oauth2_provider.models import AccessToken

from accounts import errors, failure_counts
from accounts.audit import audit_record
from accounts.credentials import SCOPE_CLOUD_CONNECTOR, authenticate_bearer, unknown_client_secret_check
from accounts.models import Application
from accounts.oauth import credential_scopes
from accounts.prepared import Prepared
from accounts.scope import (
    Level,
    Principal,
    application_row,
    application_row_paths,
    device_sessions_in_scope,
    devices_in_scope,
    principal_for_application,
    principal_from_application_row,
    row_reaches_terminals,
)
from connector import groups, tokens
from connector.models import Device, DeviceSession, NodeHeartbeat, SessionSocket, tsn_lower
from connector.services import ACTIVATION_FLAGS, Unusable, devices_with_activation, unusable_reason_from_flags

CLOSE_GONE = 4410
State = DeviceSession.State
Side = SessionSocket.Side
LIVE = ~Q(state=State.ENDED)


def ended_retention() -> timedelta:
    """How long an ended session stays listed (API, portal) before the sweep deletes it."""
    return timedelta(seconds=setting("ENDED_RETENTION", 3600))


def listed(queryset: QuerySet[DeviceSession]) -> QuerySet[DeviceSession]:
    """The sessions the API lists: live ones, and ended ones still within ENDED_RETENTION."""
    return queryset.filter(LIVE | Q(ended_at__gte=timezone.now() - ended_retention()))


# --- domain errors (translated to the wire by connector.protocol.ERRORS) ---------------------


class InvalidClient(errors.NotAllowed):
    """Unknown client id or wrong secret."""

    code = "invalid_client"


class InvalidToken(errors.NotAllowed):
    """The access token is missing, unknown, expired or revoked."""

    code = "invalid_token"


class InsufficientScope(errors.NotAllowed):
    """The access token does not have the cloud-connector scope."""

    code = "insufficient_scope"


class DeviceDisabled(errors.NotAllowed):
    """The device is not provisioned and enabled."""

    code = "device_disabled"


class ServiceNotActive(errors.NotAllowed):
    code = "service_not_active"

    def __init__(self, level: str) -> None:
        super().__init__(f"Cloud Connector is not active at the {level.replace('_', ' ')} level.")
        self.extra = {"level": level}


class UnknownDevice(errors.NotFound):
    """No such device."""

    code = "unknown_device"


class AmbiguousTsn(errors.Conflict):
    """The serial number matches more than one device; use {make}-{model}-{serial}."""

    code = "ambiguous_tsn"


class DeviceOffline(errors.Conflict):
    """The device has no live session."""

    code = "device_offline"


class SessionClaimed(errors.Conflict):
    """Another credential holds the claim on this session; claim with force to take it over."""

    code = "session_claimed"


class UnknownSession(errors.NotFound):
    """No such session."""

    code = "unknown_session"


class SessionEnded(errors.NotFound):
    """The session has ended."""

    code = "session_ended"


class UnknownEndpoint(errors.NotFound):
    """The device did not register this endpoint."""

    code = "unknown_endpoint"


class NotClaimHolder(errors.NotAllowed):
    """This credential does not hold the claim on the session."""

    code = "not_claim_holder"


class NotClaimed(errors.Conflict):
    """This credential does not hold a claim on the session."""

    code = "not_claimed"


class RateLimited(errors.RateLimited):
    """Too many failed registrations; try again later."""

    code = "rate_limited"

    def __init__(self, *, retry_after: int) -> None:
        super().__init__(f"Too many failed registrations; try again in {retry_after} seconds.", retry_after=retry_after)

    @property
    def extra(self) -> dict[str, int]:
        # The wire resource's `retry_after` (protocol.translate), so that a terminal knows
        # when to come back.
        return {"retry_after": self.retry_after}


class SocketQuotaExceeded(errors.DomainError):
    """This credential has as many sockets of this kind open as it may; close one first."""

    code = "rate_limited"


# --- settings ------------------------------------------------------------------------------


def setting(name: str, default: float | None = None):
    value = settings.CLOUD_CONNECTOR.get(name, default)
    if value is None:
        raise KeyError(f"CLOUD_CONNECTOR[{name!r}] is not set")
    return value


def grace_period() -> timedelta:
    return timedelta(seconds=setting("GRACE_PERIOD", 60))


def node_timeout() -> timedelta:
    """How long a node may stay silent before its sockets are presumed dead."""
    return timedelta(seconds=setting("NODE_TIMEOUT", 30))


# --- callers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """An authenticated POS credential or Cloud API application."""

    principal: Principal
    application_id: int
    client_id: str
    token_checksum: str | None = None
    # A registration with client credentials: the stored hash its secret was checked
    # against, checked again when the session is written (`_credential_still_holds`).
    secret_hash: str | None = field(default=None, repr=False)


def caller_from_bearer(raw_token: str | None) -> Caller:
    """The caller behind an access token, or InvalidToken / InsufficientScope (one query)."""
    bearer = authenticate_bearer(raw_token) if raw_token else None
    if bearer is None:
        raise InvalidToken()
    if SCOPE_CLOUD_CONNECTOR not in bearer.scopes:
        raise InsufficientScope()
    if not bearer.reaches_terminals:
        raise InsufficientScope("This credential may not use Cloud Connector.")
    return Caller(
        principal=bearer.principal,
        application_id=bearer.application_id,
        client_id=bearer.client_id,
        token_checksum=bearer.token_checksum,
    )


_SECRET_CACHE_SECONDS = 300
_secret_cache: dict[tuple, float] = {}
_secret_cache_lock = threading.Lock()


@dataclass(frozen=True)
class ClientRecord:
    """What a registration needs of an OAuth2 client, read from the database in one query:
    its stored secret and, if it may use Cloud Connector, the caller it stands for."""

    application_id: int
    stored_secret: str
    caller: Caller | None


def _client_query(_shape: str, *, client_id: str):
    return Application.objects.filter(client_id=client_id).values("client_secret", **application_row_paths())[:1]


_client_rows = Prepared(_client_query, required=["client_id"])


def client_lookup(*, client_id: str) -> ClientRecord | None:
    if "\x00" in client_id:
        return None  # PostgreSQL refuses a NUL byte in a parameter, and no client id holds one
    rows = _client_rows.rows("client", client_id=client_id)
    row = rows[0] if rows else None
    if row is None:
        return None
    application = application_row(row)
    caller = None
    if row_reaches_terminals(application):
        caller = Caller(
            principal=principal_from_application_row(application),
            application_id=application["id"],
            client_id=application["client_id"],
            secret_hash=row["client_secret"],
        )
    return ClientRecord(application_id=application["id"], stored_secret=row["client_secret"], caller=caller)


def registration_client(*, address: str, client_id: str, client_secret: str) -> tuple[ClientRecord | None, bool]:
    """The first step of a registration with client credentials: the client's record (None
    for an unknown client id) and whether its secret is verified already (`secret_remembered`).
    RateLimited, before the secret is looked at, while this client id failed too often from
    this address; RateLimited while the address failed too often, unless the secret is
    verified already or this client id registered from this address before."""
    limits = registration_limited(address=address, client_id=client_id)
    if limits.client is not None:
        raise RateLimited(retry_after=limits.client)
    record = client_lookup(client_id=client_id)
    remembered = record is not None and secret_remembered(client_secret, record.stored_secret)
    if limits.address is not None and not (remembered or registration_verified(address=address, client_id=client_id)):
        raise RateLimited(retry_after=limits.address)
    return record, remembered


def _secret_key(provided: str, stored: str) -> tuple[str, str]:
    return (stored, hashlib.sha256(provided.encode()).hexdigest())


def secret_remembered(provided: str, stored: str | None) -> bool:
    """Did this secret match this stored hash a moment ago? Cheap: no hashing beyond one
    SHA-256, so it may run anywhere (see `secret_matches`)."""
    if stored is None:
        return False
    key = _secret_key(provided, stored)
    with _secret_cache_lock:
        return _secret_cache.get(key, 0) > time.monotonic()


def secret_matches(provided: str, stored: str | None) -> bool:
    """django-oauth-toolkit's own check (hashed or not), remembered for a few minutes. No
    database: the relay runs it in a worker thread of its own, off the database threads.

    Terminals register on every reconnect and a hashed secret costs a PBKDF2 run; a fleet
    coming back after an outage would burn the CPU. The memo is keyed by the stored hash,
    so a rotated secret misses it at once. With no stored secret (unknown client id) it
    spends the time a real check would, so that timing does not reveal client ids.
    """
    if stored is None:
        unknown_client_secret_check(provided)
        return False
    if secret_remembered(provided, stored):
        return True
    try:
        identify_hasher(stored)
        matches = check_password(provided, stored)
    except ValueError:
        matches = constant_time_compare(provided, stored)
    if matches:
        with _secret_cache_lock:
            if len(_secret_cache) > 10_000:
                _secret_cache.clear()
            _secret_cache[_secret_key(provided, stored)] = time.monotonic() + _SECRET_CACHE_SECONDS
    return matches


def secret_forget(*, stored: str) -> None:
    """Forget every secret remembered for a stored hash that a rotation replaced. Another
    process may remember it a while longer, harmlessly: its lookups return the new hash,
    and a registration checked against the old one is refused when its session is written."""
    with _secret_cache_lock:
        for key in [key for key in _secret_cache if key[0] == stored]:
            del _secret_cache[key]


def caller_from_client_credentials(*, client_id: str, client_secret: str) -> Caller:
    """The caller named by `custom_registration_data`, or InvalidClient (all in one go; the
    relay runs the steps apart to keep the secret check off the database threads)."""
    record = client_lookup(client_id=client_id)
    return record_caller(record, secret_ok=secret_matches(client_secret, record.stored_secret if record else None))


def record_caller(record: ClientRecord | None, *, secret_ok: bool) -> Caller:
    """The caller of a client whose secret was checked, or InvalidClient."""
    if record is None or not secret_ok:
        raise InvalidClient()
    if record.caller is None:
        raise InvalidClient("This client may not use Cloud Connector.")
    return record.caller


# --- failed registrations -------------------------------------------------------------------
#
# Only credential failures (invalid_client) count: a refusal for good credentials (device
# disabled, unknown device...) guesses nothing. They count per client id and source
# address, so that one terminal with a wrong secret behind a shop's NAT locks out itself
# and not the other terminals of the shop: FAILED_REGISTRATION_LIMIT per window for a
# client id from an address, whatever secret it then sends. A higher bound per address,
# FAILED_REGISTRATION_ADDRESS_LIMIT, stops one address spraying many client ids; while it
# holds, only a secret verified already (remembered by this process, or a client id that
# registered from this address within VERIFIED_REGISTRATION_TTL) still registers. A token
# names no client until it is found, so its failures count against the address alone,
# and a valid token always registers. Windows are aligned on the clock
# (failure_counts.window_bucket), so that a refusal can say when to come back.


@dataclass(frozen=True)
class RegistrationLimits:
    """Seconds until a refused registration may be tried again (None: not refused), for the
    client id from the address, and for the address as a whole."""

    client: int | None
    address: int | None


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def _failure_key(address: str, client_id: str | None, *, window_number: int) -> str:
    """The failure counter of an address (client_id None) or of a client id from it."""
    if client_id is None:
        return f"cc-reg-fail:a:{_digest(address)}:{window_number}"
    return f"cc-reg-fail:c:{_digest(address + '|' + client_id)}:{window_number}"


def _failure_keys(address: str, client_id: str | None) -> tuple[str, str | None, int, int]:
    """The address's counter, the client id's (None for a token), the window and its seconds left."""
    window = int(setting("FAILED_REGISTRATION_WINDOW", 60))
    number, left = failure_counts.window_bucket(window)
    client_key = None if client_id is None else _failure_key(address, client_id, window_number=number)
    return _failure_key(address, None, window_number=number), client_key, window, left


def registration_limited(*, address: str, client_id: str | None) -> RegistrationLimits:
    address_key, client_key, _window, left = _failure_keys(address, client_id)
    counted = failure_counts.counts([address_key] + ([client_key] if client_key else []))
    client_over = client_key is not None and counted.get(client_key, 0) >= setting("FAILED_REGISTRATION_LIMIT", 20)
    address_over = counted.get(address_key, 0) >= setting("FAILED_REGISTRATION_ADDRESS_LIMIT", 100)
    return RegistrationLimits(client=left if client_over else None, address=left if address_over else None)


def registration_failure_record(*, address: str, client_id: str | None) -> None:
    address_key, client_key, window, _left = _failure_keys(address, client_id)
    for key in (address_key, client_key):
        if key is not None:
            failure_counts.record(key, window=window)


def registration_failed(*, address: str, client_id: str | None) -> int | None:
    """Count a credential failure of a client id (None: a token) from an address. If they
    were limited already, the seconds to wait instead: that failure is answered 429, and
    not counted."""
    limits = registration_limited(address=address, client_id=client_id)
    wait = limits.client or limits.address
    if wait is not None:
        return wait
    registration_failure_record(address=address, client_id=client_id)
    return None


def _verified_key(address: str, client_id: str) -> str:
    return f"cc-reg-ok:{_digest(address + '|' + client_id)}"


def registration_verified(*, address: str, client_id: str) -> bool:
    """Did this client id register from this address, its secret checked, lately?"""
    return bool(failure_counts.counts([_verified_key(address, client_id)]))


def registration_verified_record(*, address: str, client_id: str) -> None:
    # A counter whose presence is the mark: it lives VERIFIED_REGISTRATION_TTL from the first
    # verified registration, and the next one after that sets it again.
    failure_counts.record(_verified_key(address, client_id), window=int(setting("VERIFIED_REGISTRATION_TTL", 86400)))


def registration_bearer(*, address: str, raw_token: str) -> Caller:
    """The first step of a registration with an access token: the caller, or InvalidToken /
    InsufficientScope, answered RateLimited instead while the address failed too often."""
    try:
        return caller_from_bearer(raw_token)
    except (InvalidToken, InsufficientScope):
        wait = registration_limited(address=address, client_id=None).address
        if wait is not None:
            raise RateLimited(retry_after=wait) from None
        raise


# --- devices -------------------------------------------------------------------------------


# A registration or a claim reads its device, whether the device may use Cloud Connector
# and its live session in one query; a tsn matching more candidates than this (a bare serial
# shared by many makes) is looked up in the database precisely instead.
_FIND_CANDIDATES = 20
_DEVICE_FIELDS = [field.attname for field in Device._meta.concrete_fields]


def _devices_found(principal: Principal):
    """The devices in the principal's scope, annotated with what a registration and a
    claim need: `serial_lower`, the activation flags of
    connector.services.devices_with_activation and `live_session_id`."""
    live = DeviceSession.objects.filter(LIVE, device_id=OuterRef("pk")).values("pk")[:1]
    return devices_with_activation(devices_in_scope(principal=principal).select_related(None)).annotate(
        serial_lower=Lower("serial"), live_session_id=Subquery(live)
    )


def _device_candidates_query(level: Level, *, serials: list[str], **ids: int | None):
    principal = Principal(level=level, label="device_find", **ids)
    return (
        _devices_found(principal)
        .filter(serial_lower__in=serials)
        .values(*_DEVICE_FIELDS, "serial_lower", "live_session_id", *ACTIVATION_FLAGS)[:_FIND_CANDIDATES]
    )


_device_candidates = Prepared(_device_candidates_query, required=["serials"])


def _device_from_row(row: dict) -> Device:
    device = Device.from_db(None, _DEVICE_FIELDS, [row[name] for name in _DEVICE_FIELDS])
    for name in ("serial_lower", "live_session_id", *ACTIVATION_FLAGS):
        setattr(device, name, row[name])
    return device


def device_find(*, principal: Principal, tsn: str) -> Device:
    """The device a tsn names within the principal's scope.

    `{make}-{model}-{serial}` first (make, model and serial may hold '-' themselves, so
    every suffix after a '-' is a candidate serial and the full string is compared);
    then the bare serial, which must match exactly one device in scope.

    The device comes annotated as `_devices_found` says, for `device_require_usable` and
    the session lookup. One prepared query (accounts.prepared): a registration and a claim
    each do this, and the ORM's own building of it cost more than the database's answer.
    """
    wanted = tsn.lower()
    suffixes = [wanted[i + 1 :] for i, char in enumerate(wanted) if char == "-" and wanted[i + 1 :]]
    rows = _device_candidates.rows(
        principal.level,
        serials=list(dict.fromkeys([*suffixes, wanted])),
        tenant_id=principal.tenant_id,
        merchant_aggregator_id=principal.merchant_aggregator_id,
        merchant_id=principal.merchant_id,
        store_id=principal.store_id,
    )
    found = [_device_from_row(row) for row in rows]
    if len(found) == _FIND_CANDIDATES:
        return _device_find_precisely(_devices_found(principal), wanted, suffixes)
    full = [device for device in found if device.serial_lower in suffixes and device.tsn.lower() == wanted]
    if len(full) == 1:
        return full[0]
    bare = [device for device in found if device.serial_lower == wanted]
    if not bare:
        raise UnknownDevice()
    if len(bare) > 1:
        raise AmbiguousTsn()
    return bare[0]


def _device_find_precisely(in_scope, wanted: str, suffixes: list[str]) -> Device:
    if suffixes:
        full = in_scope.filter(serial_lower__in=suffixes).annotate(tsn_lower=tsn_lower()).filter(tsn_lower=wanted)
        found = list(full[:2])
        if len(found) == 1:
            return found[0]
    found = list(in_scope.filter(serial_lower=wanted)[:2])
    if not found:
        raise UnknownDevice()
    if len(found) > 1:
        raise AmbiguousTsn()
    return found[0]


def device_require_usable(*, device: Device) -> None:
    """For a device found by `device_find` (it carries the activation flags)."""
    reason = unusable_reason_from_flags(device)
    if reason is None:
        return
    if reason == Unusable.DISABLED:
        raise DeviceDisabled()
    raise ServiceNotActive(reason.value)


# --- lookups and lazy expiry ---------------------------------------------------------------


def session_deadline(session: DeviceSession) -> datetime | None:
    """When a live session ends by itself if nothing happens: a registered one when its JWT
    expires, an offline one when its grace period is over; an online one never."""
    if session.state == State.REGISTERED:
        return session.jwt_expires_at
    if session.state == State.OFFLINE and session.offline_at is not None:
        return session.offline_at + grace_period()
    return None


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


# --- registration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    session_id: str
    device_id: int
    tsn: str
    endpoints: list[str]
    token: tokens.IssuedToken
    created: bool


def new_session_id() -> str:
    # 192 random bits, url-safe: the contract asks for at least 128.
    return secrets.token_urlsafe(24)


_UNREAD = object()


def device_register(*, caller: Caller, tsn: str, endpoints: list[str], now: datetime | None = None) -> Registration:
    """Register a terminal: its live session (same id) or a new one, and a fresh JWT."""
    device = device_find(principal=caller.principal, tsn=tsn)
    device_require_usable(device=device)
    now = now or timezone.now()
    live_session_id = getattr(device, "live_session_id", _UNREAD)
    for _attempt in range(3):
        try:
            return _register(
                caller=caller, device=device, endpoints=endpoints, now=now, live_session_id=live_session_id
            )
        except IntegrityError:
            # Another registration of the same device created its session between our
            # read and our insert: the next round finds it live and reuses it.
            live_session_id = _UNREAD
            continue
    raise errors.Conflict("The device is registering concurrently; try again.")


def _credential_still_holds(caller: Caller) -> bool:
    """Is the credential a registration was checked with still there: its access token not
    revoked, its client secret not rotated? Read first in the registration's transaction,
    under a share lock on PostgreSQL (SQLite's writers take turns anyway): a rotation or a
    revocation either commits first, and this finds nothing, or waits for the registration
    to commit and then finds its session to end (connector.events). Without it, a secret
    checked just before a rotation (a hash check takes a while) would still register."""
    if caller.token_checksum is not None:
        model, conditions = AccessToken, {"token_checksum": caller.token_checksum}
    elif caller.secret_hash is not None:
        model, conditions = Application, {"id": caller.application_id, "client_secret": caller.secret_hash}
    else:
        return True
    meta, quote = model._meta, connection.ops.quote_name
    where = " AND ".join(f"{quote(meta.get_field(name).column)} = %s" for name in conditions)
    lock = " FOR SHARE" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 FROM {quote(meta.db_table)} WHERE {where}{lock}", list(conditions.values()))
        return cursor.fetchone() is not None


@transaction.atomic
def _register(
    *, caller: Caller, device: Device, endpoints: list[str], now: datetime, live_session_id: object
) -> Registration:
    if not _credential_still_holds(caller):
        raise InvalidClient()
    if live_session_id is _UNREAD:
        found = live_session_for_device(device=device, now=now)
        live_session_id = found.pk if found is not None else None
    session = None
    if live_session_id is not None:
        # Locked, and read again: it may have ended since (then it is a new session).
        session = _lock_live(live_session_id, now)
    created = session is None
    if created:
        session = DeviceSession(id=new_session_id(), device=device, endpoints=endpoints, jwt_expires_at=now)
    session.registered_by = caller.application_id
    session.registered_token = caller.token_checksum or ""
    token = tokens.device_token_issue(session_id=session.pk, device_id=device.pk, now=now.timestamp())
    session.jwt_expires_at = now + timedelta(seconds=token.expires_in)
    if created:
        # An IntegrityError (a concurrent registration's session) rolls this transaction
        # back and device_register tries again.
        session.save(force_insert=True)
        audit_record(
            actor=caller.principal,
            action="device.session_start",
            obj=device,
            tenant_id=device.tenant_id,
            data={"session_id": session.pk, "endpoints": endpoints},
        )
    else:
        _reregister(session=session, endpoints=endpoints, caller=caller)
    return Registration(
        session_id=session.pk, device_id=device.pk, tsn=device.tsn, endpoints=endpoints, token=token, created=created
    )


def _reregister(*, session: DeviceSession, endpoints: list[str], caller: Caller) -> None:
    changes = {
        "jwt_expires_at": session.jwt_expires_at,
        "endpoints": endpoints,
        # The session now stands on this registration's credential, not on the last one's.
        "registered_by": caller.application_id,
        "registered_token": caller.token_checksum or "",
    }
    if session.state == State.OFFLINE:
        # The terminal is back: it has a fresh JWT to connect with, and the registered
        # rule (end at JWT expiry if no socket comes) replaces the grace period.
        changes.update(state=State.REGISTERED, offline_at=None)
    DeviceSession.objects.filter(pk=session.pk).update(**changes)
    if endpoints != session.endpoints:
        groups.send_after_commit(
            groups.session_group(session.pk), {"type": "session.endpoints", "endpoints": endpoints}
        )


@dataclass(frozen=True)
class SecretToCheck:
    """A registration with client credentials that needs its secret checked (by
    `secret_matches`, off the database threads) before `device_register`."""

    record: ClientRecord | None


def device_register_with_client(
    *, address: str, client_id: str, client_secret: str, tsn: str, endpoints: list[str]
) -> Registration | SecretToCheck:
    """Registration with client credentials in one go when the secret matched a moment ago
    (`secret_remembered`: no hashing here); else what the caller needs to check it first.
    RateLimited before anything while failures limit it (`registration_client`)."""
    record, remembered = registration_client(address=address, client_id=client_id, client_secret=client_secret)
    if not remembered:
        return SecretToCheck(record)
    return device_register(caller=record_caller(record, secret_ok=True), tsn=tsn, endpoints=endpoints)


def device_register_checked(*, address: str, caller: Caller, tsn: str, endpoints: list[str]) -> Registration:
    """The last step of a registration whose secret was just checked: `device_register`, and
    remember that this client id verified from this address (see `registration_client`)."""
    registration = device_register(caller=caller, tsn=tsn, endpoints=endpoints)
    registration_verified_record(address=address, client_id=caller.client_id)
    return registration


def device_register_with_token(*, address: str, raw_token: str, tsn: str, endpoints: list[str]) -> Registration:
    """Registration with an access token: RateLimited if the address failed too often,
    InvalidClient for any fault of the token (§3 answers every credential failure, tokens
    included, with invalid_client), then `device_register`."""
    try:
        caller = registration_bearer(address=address, raw_token=raw_token)
    except (InvalidToken, InsufficientScope) as error:
        raise InvalidClient(error.message) from None
    return device_register(caller=caller, tsn=tsn, endpoints=endpoints)


# --- claims ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    session_id: str
    endpoints: list[str]
    tsn: str
    taken_from: int | None = None


def session_claim(*, caller: Caller, tsn: str, force: bool = False, now: datetime | None = None) -> Claim:
    """Claim the live session of a device for the caller's credential (§5)."""
    device = device_find(principal=caller.principal, tsn=tsn)
    device_require_usable(device=device)
    live_session_id = device.live_session_id
    if live_session_id is None:
        raise DeviceOffline()
    now = now or timezone.now()
    with transaction.atomic():
        session = _lock_live(live_session_id, now)
        if session is not None and not _still_reached(principal=caller.principal, device_id=device.pk):
            raise UnknownDevice()
        if session is not None:
            previous = _claim_locked(session=session, application_id=caller.application_id, force=force)
            if previous is not None and previous != caller.application_id:
                _announce_takeover(session=session, tsn=device.tsn, previous=previous, holder=caller.application_id)
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
    return Claim(session_id=session.pk, endpoints=list(session.endpoints), tsn=device.tsn, taken_from=taken_from)


def _still_reached(*, principal: Principal, device_id: int) -> bool:
    """Read again once the session is locked: a device moved meanwhile to another store is
    no longer a store POS's. `claims_out_of_reach_release` locks the session as well, so
    either it sees this claim and releases it, or this read sees the move."""
    if principal.level != Level.STORE:
        return True  # a device moves between stores of its merchant: only a store's reach changes
    return Device.objects.filter(pk=device_id, store_id=principal.store_id).exists()


def _claim_locked(*, session: DeviceSession, application_id: int, force: bool) -> int | None:
    """Set the holder of a live session whose row the caller has locked; returns the
    previous holder (None if unclaimed)."""
    current = session.claimed_by_id
    if current == application_id:
        return application_id
    if current is not None and not force:
        raise SessionClaimed()
    DeviceSession.objects.filter(pk=session.pk).update(claimed_by_id=application_id, claimed_at=timezone.now())
    session.claimed_by_id = application_id
    return current


def _announce_takeover(*, session: DeviceSession, tsn: str, previous: int, holder: int) -> None:
    groups.send_after_commit(groups.session_group(session.pk), {"type": "claim.changed", "holder": holder})
    groups.pos_event_after_commit(application_id=previous, event="session_taken_over", session_id=session.pk, tsn=tsn)


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


def devices_for_caller(*, caller: Caller) -> list[dict]:
    """Every device in the caller's scope, with its live session's state (§5 `devices`)."""
    live = DeviceSession.objects.filter(LIVE, device_id=OuterRef("pk"))
    rows = (
        devices_in_scope(principal=caller.principal)
        .annotate(
            session_id=Subquery(live.values("pk")[:1]),
            session_state=Subquery(live.values("state")[:1]),
            holder=Subquery(live.values("claimed_by_id")[:1]),
        )
        .order_by("id")
    )
    return [
        {
            "tsn": device.tsn,
            "online": device.session_state == State.ONLINE,
            "claimed": device.holder is not None,
            "claimed_by_you": device.holder == caller.application_id,
            "session_id": device.session_id,
        }
        for device in rows
    ]


# --- sockets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attached:
    """A socket's place after attaching: the socket it replaced, its peer, and the session."""

    session_id: str
    tsn: str
    replaced: str | None
    peer: str | None
    endpoints: list[str] = field(default_factory=list)


def _lock_sessions(session_ids: list[str]) -> list[DeviceSession]:
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
        .values(*_SESSION_FIELDS, *(f"device__{name}" for name in _DEVICE_FIELDS))
    )


_session_lock = Prepared(_session_lock_query, required=["session_id"])


def _lock_session(session_id: str, principal: Principal | None = None) -> DeviceSession | None:
    """`_lock_sessions` for one session (one prepared query: attaches and claims do this
    on every connect), within the principal's scope if one is given; None if not found."""
    ids = {
        "tenant_id": principal.tenant_id if principal else None,
        "merchant_aggregator_id": principal.merchant_aggregator_id if principal else None,
        "merchant_id": principal.merchant_id if principal else None,
        "store_id": principal.store_id if principal else None,
    }
    rows = _session_lock.rows(principal.level if principal else None, session_id=session_id, **ids)
    if not rows:
        return None
    row = rows[0]
    session = DeviceSession.from_db(None, _SESSION_FIELDS, [row[name] for name in _SESSION_FIELDS])
    session.device = Device.from_db(None, _DEVICE_FIELDS, [row[f"device__{name}"] for name in _DEVICE_FIELDS])
    return session


def _lock_live(session_id: str, now: datetime) -> DeviceSession | None:
    """The session, locked and settled (`_settled` may end it), if it is still live."""
    locked = _lock_session(session_id)
    session = _settled(locked, now) if locked is not None else None
    return session if session is not None and session.state != State.ENDED else None


def _locked_live_session(session_id: str, now: datetime, *, principal: Principal | None = None) -> DeviceSession:
    """The live session row, locked (see `_lock_sessions`); `principal` limits the lookup
    to a caller's scope."""
    session = _lock_session(session_id, principal)
    if session is None:
        raise UnknownSession()
    session = _settled(session, now)
    if session.state == State.ENDED:
        raise SessionEnded()
    return session


def _take_slot(
    *, session: DeviceSession, side: str, endpoint: str, channel_name: str, node: str, **extra
) -> tuple[str | None, str | None]:
    """Claim the (session, side, endpoint) slot for a socket, the session's row locked.
    Returns the channel it took the slot from, if any, and the peer's channel (the other
    side's socket on the endpoint), both read in one query."""
    slots = {
        row_side: (pk, channel)
        for pk, row_side, channel in SessionSocket.objects.filter(session=session, endpoint=endpoint).values_list(
            "pk", "side", "channel_name"
        )
    }
    values = {"channel_name": channel_name, "node": node, "connected_at": timezone.now(), **extra}
    existing = slots.get(side)
    peer = next((channel for row_side, (_pk, channel) in slots.items() if row_side != side), None)
    if existing is None:
        SessionSocket.objects.create(session=session, side=side, endpoint=endpoint, **values)
        return None, peer
    SessionSocket.objects.filter(pk=existing[0]).update(**values)
    return (existing[1] if existing[1] != channel_name else None), peer


@transaction.atomic
def device_socket_attach(*, session_id: str, device_id: int, endpoint: str, channel_name: str, node: str) -> Attached:
    """A device socket connected (its JWT already verified for this session and device)."""
    now = timezone.now()
    session = _locked_live_session(session_id, now)
    if session.device_id != device_id:
        raise UnknownSession()
    if endpoint not in session.endpoints:
        raise UnknownEndpoint()
    replaced, peer = _take_slot(
        session=session, side=Side.DEVICE, endpoint=endpoint, channel_name=channel_name, node=node
    )
    if replaced is not None and session.claimed_by_id is not None:
        groups.send_after_commit(
            groups.listener_group(session.claimed_by_id),
            {
                "type": "pos.event",
                "event": "device_replaced",
                "session_id": session.pk,
                "tsn": session.device.tsn,
                "fields": {"endpoint": endpoint},
            },
        )
    updates = {"last_seen_at": now, "node": node}
    if session.state != State.ONLINE:
        updates.update(state=State.ONLINE, online_at=now, offline_at=None)
        groups.pos_event_after_commit(
            application_id=session.claimed_by_id, event="device_online", session_id=session.pk, tsn=session.device.tsn
        )
    DeviceSession.objects.filter(pk=session.pk).update(**updates)
    _announce_peer(
        session_id=session.pk, kind="peer.attached", side=Side.DEVICE, endpoint=endpoint, channel=channel_name
    )
    return Attached(
        session_id=session.pk,
        tsn=session.device.tsn,
        replaced=replaced,
        peer=peer,
        endpoints=list(session.endpoints),
    )


@transaction.atomic
def pos_socket_attach(*, caller: Caller, session_id: str, endpoint: str, channel_name: str, node: str) -> Attached:
    """A POS session socket connected: the session must be in scope, live and claimed by
    the caller's credential, and the device must have registered the endpoint."""
    now = timezone.now()
    session = _locked_live_session(session_id, now, principal=caller.principal)
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
    _announce_peer(session_id=session.pk, kind="peer.attached", side=Side.POS, endpoint=endpoint, channel=channel_name)
    return Attached(
        session_id=session.pk,
        tsn=session.device.tsn,
        replaced=replaced,
        peer=peer,
        endpoints=list(session.endpoints),
    )


def _within_session_socket_quota(*, caller: Caller, session: DeviceSession, endpoint: str) -> None:
    """CC_MAX_SESSION_SOCKETS_PER_CREDENTIAL, counted across the deployment from the rows of
    live sockets (a dead node's are swept). A socket that replaces the credential's own on
    the same slot adds none. Attaches to different sessions do not wait for each other, so
    a burst of them may pass the limit by the few that count at the same instant."""
    limit = int(setting("MAX_SESSION_SOCKETS_PER_CREDENTIAL", 256))
    held = (
        SessionSocket.objects.filter(side=Side.POS, application_id=caller.application_id)
        .exclude(session=session, endpoint=endpoint)
        .count()
    )
    if held >= limit:
        raise SocketQuotaExceeded(f"This credential already has {held} POS session sockets open (limit {limit}).")


@transaction.atomic
def socket_reassert(
    *, session_id: str, side: str, endpoint: str, channel_name: str, node: str, application_id: int | None
) -> bool:
    """Write again the row of a socket its node still holds after the row was swept (the
    node stalled past NODE_TIMEOUT). False when another socket took the slot meanwhile."""
    now = timezone.now()
    session = _locked_live_session(session_id, now)
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
            state=State.ONLINE, online_at=now, offline_at=None, node=node, last_seen_at=now
        )
        groups.pos_event_after_commit(
            application_id=session.claimed_by_id, event="device_online", session_id=session.pk, tsn=session.device.tsn
        )
    _announce_peer(session_id=session.pk, kind="peer.attached", side=side, endpoint=endpoint, channel=channel_name)
    return True


def socket_channel(*, session_id: str, side: str, endpoint: str) -> str | None:
    """The channel of the socket holding a session's (side, endpoint) slot, if any."""
    return (
        SessionSocket.objects.filter(session_id=session_id, side=side, endpoint=endpoint)
        .values_list("channel_name", flat=True)
        .first()
    )


@transaction.atomic
def socket_detach(*, session_id: str, side: str, endpoint: str, channel_name: str) -> None:
    """A socket closed. The last device socket gone takes the session offline."""
    now = timezone.now()
    _lock_session(session_id)
    deleted, _ = SessionSocket.objects.filter(
        session_id=session_id, side=side, endpoint=endpoint, channel_name=channel_name
    ).delete()
    if not deleted:
        return  # replaced by a newer socket, or swept: the slot is not ours any more
    _announce_peer(session_id=session_id, kind="peer.detached", side=side, endpoint=endpoint, channel=channel_name)
    if side == Side.DEVICE:
        _offline_if_no_device_socket(session_ids=[session_id], now=now)


def _offline_if_no_device_socket(*, session_ids: list[str], now: datetime) -> list[str]:
    """Take online sessions without a device socket offline. The callers hold the
    sessions' locks; the sockets are counted after the lock was granted, so that an attach
    that committed meanwhile is seen."""
    online = [s for s in _lock_sessions(session_ids) if s.state == State.ONLINE]
    attached = set(
        SessionSocket.objects.filter(session_id__in=[s.pk for s in online], side=Side.DEVICE).values_list(
            "session_id", flat=True
        )
    )
    going = [s for s in online if s.pk not in attached]
    if not going:
        return []
    DeviceSession.objects.filter(pk__in=[s.pk for s in going], state=State.ONLINE).update(
        state=State.OFFLINE, offline_at=now
    )
    for session in going:
        groups.pos_event_after_commit(
            application_id=session.claimed_by_id, event="device_offline", session_id=session.pk, tsn=session.device.tsn
        )
    return [s.pk for s in going]


def _announce_peer(*, session_id: str, kind: str, side: str, endpoint: str, channel: str) -> None:
    groups.send_after_commit(
        groups.session_group(session_id), {"type": kind, "side": side, "endpoint": endpoint, "channel": channel}
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
    ending = [
        (session.pk, session.claimed_by_id, session.device.tsn)
        for session in _lock_sessions(list(live.values_list("pk", flat=True)))
        if session.state != State.ENDED
    ]
    if not ending:
        return []
    ended = [row[0] for row in ending]
    DeviceSession.objects.filter(LIVE, pk__in=ended).update(
        state=State.ENDED, ended_at=timezone.now(), end_reason=reason[:40]
    )
    SessionSocket.objects.filter(session_id__in=ended).delete()
    for session_id, holder, tsn in ending:
        groups.send_after_commit(
            groups.session_group(session_id), {"type": "session.end", "code": CLOSE_GONE, "reason": reason}
        )
        groups.pos_event_after_commit(application_id=holder, event="session_ended", session_id=session_id, tsn=tsn)
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
    for session in _lock_sessions(live):
        holder = session.claimed_by_id
        if session.state == State.ENDED or holder is None or _credential_reaches(holder, device_id):
            continue
        DeviceSession.objects.filter(pk=session.pk).update(claimed_by=None, claimed_at=None)
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
        DeviceSession.objects.filter(LIVE, claimed_by_id=application_id).update(claimed_by=None, claimed_at=None)


# --- housekeeping ------------------------------------------------------------------------------


@transaction.atomic
def node_heartbeat(*, node: str, now: datetime | None = None) -> bool:
    """Record that a node is alive; False if it had been presumed dead (its rows swept)."""
    now = now or timezone.now()
    if NodeHeartbeat.objects.filter(node=node).update(seen_at=now):
        return True
    NodeHeartbeat.objects.create(node=node, seen_at=now)
    return False


def node_forget(*, node: str) -> None:
    """A node shuts down cleanly: its sockets are gone."""
    with transaction.atomic():
        sessions = list(SessionSocket.objects.filter(node=node).values_list("session_id", flat=True).distinct())
        _lock_sessions(sessions)
        SessionSocket.objects.filter(node=node).delete()
        NodeHeartbeat.objects.filter(node=node).delete()
        _offline_if_no_device_socket(session_ids=sessions, now=timezone.now())


@dataclass(frozen=True)
class SweepResult:
    went_offline: list[str]
    ended: list[str]
    purged: int


def sessions_sweep(*, now: datetime | None = None) -> SweepResult:
    """End what is due and forget the sockets of silent nodes; safe to run on every node."""
    now = now or timezone.now()
    went_offline = _sweep_dead_nodes(now=now)
    ended = sessions_end(
        session_ids=list(
            DeviceSession.objects.filter(state=State.REGISTERED, jwt_expires_at__lte=now).values_list("pk", flat=True)
        ),
        reason="registration_expired",
    )
    ended += sessions_end(
        session_ids=list(
            DeviceSession.objects.filter(state=State.OFFLINE, offline_at__lte=now - grace_period()).values_list(
                "pk", flat=True
            )
        ),
        reason="device_gone",
    )
    purged, _ = DeviceSession.objects.filter(state=State.ENDED, ended_at__lt=now - ended_retention()).delete()
    return SweepResult(went_offline=went_offline, ended=ended, purged=purged)


@transaction.atomic
def _sweep_dead_nodes(*, now: datetime) -> list[str]:
    cutoff = now - node_timeout()
    alive = NodeHeartbeat.objects.filter(seen_at__gte=cutoff).values("node")
    dead = SessionSocket.objects.exclude(node__in=alive).filter(connected_at__lt=cutoff)
    sessions = list(dead.values_list("session_id", flat=True).distinct())
    _lock_sessions(sessions)
    dead.delete()
    NodeHeartbeat.objects.filter(seen_at__lt=cutoff).delete()
    return _offline_if_no_device_socket(session_ids=sessions, now=now)


@transaction.atomic
def session_counters_add(*, deltas: dict[str, tuple[int, int]]) -> None:
    """Add relayed and dropped frame counts, batched in memory by the relay."""
    for session_id, (relayed, dropped) in deltas.items():
        DeviceSession.objects.filter(pk=session_id).update(
            frames_relayed=F("frames_relayed") + relayed, frames_dropped=F("frames_dropped") + dropped
        )


# --- what the relay's sockets should know, after a Redis outage (connector.relay._restore) --


def _chunks(items: list, size: int = 500):
    """Lists of at most `size` items, for `__in` lookups of any length."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class SessionNow:
    ended: bool
    claimed_by: int | None
    endpoints: list[str]


def sessions_now(*, session_ids: list[str]) -> tuple[dict[str, SessionNow], dict[tuple[str, str, str], str]]:
    """The sessions' states and who holds each (session, side, endpoint) slot, as the database
    has them now: what the relay sockets of a session would know had no event been lost."""
    states: dict[str, SessionNow] = {}
    slots: dict[tuple[str, str, str], str] = {}
    for chunk in _chunks(session_ids):
        for pk, state, claimed_by, endpoints in DeviceSession.objects.filter(pk__in=chunk).values_list(
            "pk", "state", "claimed_by_id", "endpoints"
        ):
            states[pk] = SessionNow(ended=state == State.ENDED, claimed_by=claimed_by, endpoints=endpoints)
        for session_id, side, endpoint, channel in SessionSocket.objects.filter(session_id__in=chunk).values_list(
            "session_id", "side", "endpoint", "channel_name"
        ):
            slots[(session_id, side, endpoint)] = channel
    return states, slots


def tokens_revoked(*, checksums: list[str]) -> set[str]:
    """Of these access tokens (by checksum), those revoked since: revocation, rotation and a
    credential's deletion or loss of Cloud Connector all delete the token rows."""
    present = set()
    for chunk in _chunks(checksums):
        present.update(AccessToken.objects.filter(token_checksum__in=chunk).values_list("token_checksum", flat=True))
    return set(checksums) - present


@dataclass(frozen=True)
class ClaimHeld:
    session_id: str
    tsn: str
    application_id: int
    online: bool


def claims_held(*, application_ids: list[int]) -> list[ClaimHeld]:
    """The live sessions these credentials hold, and whether their devices are online."""
    held = DeviceSession.objects.filter(LIVE, claimed_by_id__in=application_ids).select_related("device")
    return [ClaimHeld(s.pk, s.device.tsn, s.claimed_by_id, s.state == State.ONLINE) for s in held]
