"""What the portal, the REST API, the admin and the relay read about devices and their
sessions: each selector takes the caller's principal (or caller) and returns only what lies
beneath it, so anything else answers "not found". Nothing here writes.

- `devices_in_scope`, `device_sessions_in_scope`: the scoped querysets every reader starts from.
- `device_find`, `device_require_usable`: the device a tsn names, for a registration or a claim.
- `listed`, `devices_for_caller`: what the API and a POS's `devices` request list.
- `sessions_now`, `tokens_revoked`, `claims_held`: what the relay's sockets should know
  after a Redis outage (the relay's recovery compares them with what it holds).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Lower
from django.utils import timezone
from oauth2_provider.models import AccessToken

from accounts.prepared import Prepared
from accounts.scope import Level, Principal, in_scope
from connector.callers import Caller
from connector.conf import connector_settings
from connector.errors import AmbiguousTsn, DeviceDisabled, DeviceOffline, ServiceNotActive, UnknownDevice
from connector.models import Device, DeviceSession, SessionSocket, tsn_lower
from connector.protocol import timestamp
from connector.services import ACTIVATION_FLAGS, Unusable, devices_with_activation, unusable_reason_from_flags

State = DeviceSession.State
LIVE = ~Q(state=State.ENDED)


def devices_in_scope(*, principal: Principal) -> QuerySet[Device]:
    return in_scope(
        Device.objects.select_related("merchant__merchant_aggregator__tenant", "store", "tenant"),
        principal,
        {
            Level.TENANT: "tenant_id",
            Level.MERCHANT_AGGREGATOR: "merchant__merchant_aggregator_id",
            Level.MERCHANT: "merchant_id",
            Level.STORE: "store_id",
        },
    )


def device_sessions_in_scope(*, principal: Principal) -> QuerySet[DeviceSession]:
    return in_scope(
        DeviceSession.objects.select_related("device", "claimed_by"),
        principal,
        {
            Level.TENANT: "device__tenant_id",
            Level.MERCHANT_AGGREGATOR: "device__merchant__merchant_aggregator_id",
            Level.MERCHANT: "device__merchant_id",
            Level.STORE: "device__store_id",
        },
    )


def ended_retention() -> timedelta:
    """How long an ended session stays listed (API, portal) before the sweep deletes it."""
    return timedelta(seconds=connector_settings.ENDED_RETENTION)


def listed(queryset: QuerySet[DeviceSession]) -> QuerySet[DeviceSession]:
    """The sessions the API lists: live ones, and ended ones still within ENDED_RETENTION."""
    return queryset.filter(LIVE | Q(ended_at__gte=timezone.now() - ended_retention()))


# --- devices -------------------------------------------------------------------------------


# A registration or a claim reads its device, whether the device may use Cloud Connector
# and its live session in one query; a tsn matching more candidates than this (a bare serial
# shared by many makes) is looked up in the database precisely instead.
_FIND_CANDIDATES = 20
DEVICE_FIELDS = [field.attname for field in Device._meta.concrete_fields]


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
        .values(*DEVICE_FIELDS, "serial_lower", "live_session_id", *ACTIVATION_FLAGS)[:_FIND_CANDIDATES]
    )


_device_candidates = Prepared(_device_candidates_query, required=["serials"])


def _device_from_row(row: dict) -> Device:
    device = Device.from_db(None, DEVICE_FIELDS, [row[name] for name in DEVICE_FIELDS])
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


def _device_find_precisely(candidates: QuerySet[Device], wanted: str, suffixes: list[str]) -> Device:
    if suffixes:
        full = candidates.filter(serial_lower__in=suffixes).annotate(tsn_lower=tsn_lower()).filter(tsn_lower=wanted)
        found = list(full[:2])
        if len(found) == 1:
            return found[0]
    found = list(candidates.filter(serial_lower=wanted)[:2])
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


def devices_for_caller(*, caller: Caller) -> list[dict]:
    """Every device in the caller's scope, with its presence (v1.1 §11) and its live
    session's claim (§5 `devices`) and `local_url` (v1.1 §14)."""
    live = DeviceSession.objects.filter(LIVE, device_id=OuterRef("pk"))
    rows = (
        devices_in_scope(principal=caller.principal)
        .annotate(
            session_id=Subquery(live.values("pk")[:1]),
            holder=Subquery(live.values("claimed_by_id")[:1]),
            local_url=Subquery(live.values("local_url")[:1]),
        )
        .order_by("id")
    )
    return [
        {
            "tsn": device.tsn,
            "online": device.online,
            "claimed": device.holder is not None,
            "claimed_by_you": device.holder == caller.application_id,
            "session_id": device.session_id,
            "local_url": device.local_url or None,  # v1.1 §14: the live session's
            **presence_fields(device),
        }
        for device in rows
    ]


def presence_fields(device: Device) -> dict:
    """A device's presence as v1.1 §11 writes it (besides `online`)."""
    return {
        "online_since": timestamp(device.online_since),
        "offline_since": timestamp(device.offline_since),
        "last_seen_at": timestamp(device.last_seen_at),
        "last_disconnect_reason": device.last_disconnect_reason or None,
    }


def device_socket_for_ping(*, caller: Caller, tsn: str) -> str:
    """The channel of a device socket of the device a tsn names in the caller's scope (v1.1
    §12 `ping`: holding the claim is not needed); DeviceOffline when it has none."""
    device = device_find(principal=caller.principal, tsn=tsn)
    channel = (
        SessionSocket.objects.filter(
            session__device_id=device.pk, session__state=State.ONLINE, side=SessionSocket.Side.DEVICE
        )
        .order_by("connected_at")
        .values_list("channel_name", flat=True)
        .first()
    )
    if channel is None:
        raise DeviceOffline()
    return channel


# --- what the relay's sockets should know, after a Redis outage (the relay's recovery) -------


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
