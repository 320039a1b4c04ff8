"""What happened to a device, recorded in the transaction of the fact (v1.1 §11, §12, §16).

Every fact the contract exposes about a device — online, offline and why, a socket replaced,
claimed, released, taken over, ended, its activation changed — is written here by the service
function that makes it, inside its transaction, as:

- the device's presence (`Device.online`, `online_since`, `offline_since`,
  `last_disconnect_reason`), kept when the session ends;
- an `Event` row: the event's identity (`event_id`, the same wherever it is delivered), its
  `seq` per device (`Device.event_seq`, bumped in the same statement as the presence) and
  its time. The rows are the device's timeline in the portal and the webhooks' outbox: the
  deliveries to the endpoints in scope are written with them (connector.webhooks.outbox), so
  a fact that commits is never without its event, and an event never outlives a rolled-back
  fact;
- a `DeviceConnection` row per online period (opened online, closed offline with its reason).

Cost, since this runs on every terminal that connects: one UPDATE ... RETURNING for the
presence and the sequence numbers of any number of devices, one INSERT for their events, one
SELECT for the webhook endpoints (none match: no more), one INSERT or UPDATE of connection
rows. A worker forgetting 5,000 terminals at shutdown does the same five statements, not
five per terminal.

Listeners hear the same facts (connector.groups.pos_event): the claim holder's listeners as
in v1 (§5), and the listeners subscribed to presence (§12) through the presence groups of
the device's store and merchant aggregator, each message with its `event_id` and
`occurred_at`; the listener socket numbers what it sends (`seq`).

`last_seen_at` is not written here: it is coalesced by the serving process
(connector.relay.housekeeping, `seen_write`), once per LAST_SEEN_INTERVAL for every device
whose sockets sent a frame or a pong meanwhile.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import F, Subquery
from django.utils import timezone

from accounts.models import Application
from accounts.prepared import Prepared, insert
from connector import groups
from connector.models import Device, DeviceConnection, DisconnectReason, Event, WebhookEndpoint
from connector.protocol import timestamp

Type = Event.Type

# A session ended for one of these reasons closed its device sockets because a credential
# lost its rights: the device's last disconnect reason is `revoked`, else `session_ended`.
REVOKING_END_REASONS = frozenset(
    {"credential_revoked", "credential_deleted", "token_revoked", "secret_rotated", "credential_rotated"}
)


def end_disconnect_reason(end_reason: str) -> str:
    """The §11 disconnect reason of the device sockets a session end closed."""
    if end_reason in REVOKING_END_REASONS or end_reason.endswith("_revoked"):
        return DisconnectReason.REVOKED
    return DisconnectReason.SESSION_ENDED


@dataclass(frozen=True)
class Fact:
    """One event to record: its device, type, session and own fields (connector.models.Event)."""

    device_id: int
    type: str
    session_id: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recorded:
    """A recorded event as its listeners hear of it."""

    event_id: str
    type: str
    device_id: int
    session_id: str
    seq: int
    occurred_at: datetime
    tsn: str
    store_id: int
    merchant_id: int
    merchant_aggregator_id: int
    data: dict[str, Any]

    def envelope(self) -> dict[str, Any]:
        """The fields every listener event carries besides `type`, `session_id` and `tsn`."""
        return {"event_id": self.event_id, "occurred_at": timestamp(self.occurred_at)}


@dataclass(frozen=True)
class _DeviceRow:
    seq: int
    merchant_id: int
    store_id: int
    merchant_aggregator_id: int
    tsn: str
    webhooks: bool  # an enabled webhook endpoint of its merchant or MA exists (any event types)


def _bump(device_ids: Sequence[int], presence: dict[str, Any]) -> dict[int, _DeviceRow]:
    """Add one to each device's `event_seq` and write `presence`, in one statement, and read
    back what the events need (UPDATE ... RETURNING: PostgreSQL, SQLite 3.35+), with whether
    any webhook endpoint could want them: most deployments have none in scope, and then the
    outbox costs no statement of its own."""
    if not device_ids:
        return {}
    meta, quote = Device._meta, connection.ops.quote_name
    seq = quote(meta.get_field("event_seq").column)
    assignments, params = [f"{seq} = {seq} + 1"], []
    for name, value in presence.items():
        model_field = meta.get_field(name)
        assignments.append(f"{quote(model_field.column)} = %s")
        params.append(model_field.get_db_prep_save(value, connection))
    merchant = meta.get_field("merchant")
    merchant_meta = merchant.related_model._meta
    merchant_table = quote(merchant_meta.db_table)
    ma_column = quote(merchant_meta.get_field("merchant_aggregator").column)
    table = quote(meta.db_table)
    endpoint_meta = WebhookEndpoint._meta
    endpoints = quote(endpoint_meta.db_table)
    merchant_aggregator = (
        f"(SELECT {ma_column} FROM {merchant_table} "
        f"WHERE {merchant_table}.{quote(merchant_meta.pk.column)} = {table}.{quote(merchant.column)})"
    )
    webhooks = (
        f"EXISTS (SELECT 1 FROM {endpoints} WHERE {endpoints}.{quote(endpoint_meta.get_field('enabled').column)} "
        f"AND ({endpoints}.{quote(endpoint_meta.get_field('merchant').column)} = {table}.{quote(merchant.column)} "
        f"OR {endpoints}.{quote(endpoint_meta.get_field('merchant_aggregator').column)} = {merchant_aggregator}))"
    )
    columns = ", ".join(
        quote(meta.get_field(name).column)
        for name in ("id", "event_seq", "merchant", "store", "make", "model", "serial")
    )
    placeholders = ", ".join(["%s"] * len(device_ids))
    sql = (
        f"UPDATE {table} SET {', '.join(assignments)} WHERE {quote(meta.pk.column)} IN ({placeholders}) "
        f"RETURNING {columns}, {merchant_aggregator}, {webhooks}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *device_ids])
        rows = cursor.fetchall()
    return {
        row[0]: _DeviceRow(
            seq=row[1],
            merchant_id=row[2],
            store_id=row[3],
            tsn=f"{row[4]}-{row[5]}-{row[6]}",
            merchant_aggregator_id=row[7],
            webhooks=bool(row[8]),
        )
        for row in rows
    }


def record(facts: Sequence[Fact], *, now: datetime, presence: dict[str, Any] | None = None) -> list[Recorded]:
    """Record facts about distinct devices (one each), with the presence change they make,
    in the caller's transaction; their webhook deliveries are written with them."""
    if not facts:
        return []
    from connector.webhooks.outbox import fan_out

    device_ids = [fact.device_id for fact in facts]
    if len(set(device_ids)) != len(device_ids):
        raise ValueError("record() takes one fact per device; record the others in another call")
    devices = _bump(device_ids, presence or {})
    events, recorded = [], []
    for fact in facts:
        device = devices.get(fact.device_id)
        if device is None:
            continue  # deleted meanwhile: its events go with it
        data = {"tsn": device.tsn, **fact.data}
        event = Event(
            id=uuid.uuid4(),
            device_id=fact.device_id,
            type=fact.type,
            session_id=fact.session_id,
            seq=device.seq,
            occurred_at=now,
            data=data,
        )
        events.append(event)
        recorded.append(
            Recorded(
                event_id=str(event.id),
                type=fact.type,
                device_id=fact.device_id,
                session_id=fact.session_id,
                seq=device.seq,
                occurred_at=now,
                tsn=device.tsn,
                store_id=device.store_id,
                merchant_id=device.merchant_id,
                merchant_aggregator_id=device.merchant_aggregator_id,
                data=data,
            )
        )
    if len(events) == 1:
        insert(events[0])  # a terminal connecting: SQL built once, not compiled per event
    else:
        Event.objects.bulk_create(events)
    fan_out(
        [event for event in events if devices[event.device_id].webhooks],
        merchant_of={
            fact.device_id: devices[fact.device_id].merchant_id for fact in facts if fact.device_id in devices
        },
    )
    return recorded


# --- presence transitions ----------------------------------------------------------------------


def went_online(*, device_id: int, session_id: str, holder: int | None, now: datetime) -> Recorded | None:
    """The first device socket of a session connected: the device is online, an online
    period opens. Listeners hear `device_online` after the commit (the caller sends it)."""
    recorded = record(
        [Fact(device_id=device_id, type=Type.DEVICE_ONLINE, session_id=session_id)],
        now=now,
        presence={"online": True, "online_since": now, "offline_since": None, "last_seen_at": now},
    )
    if not recorded:
        return None
    insert(
        DeviceConnection(device_id=device_id, session_id=session_id, connected_at=now, claimed_by=holder_name(holder))
    )
    return recorded[0]


def went_offline(*, sessions: Iterable[tuple[str, int]], reason: str, now: datetime) -> dict[str, Recorded]:
    """Sessions (id, device id) lost their last device socket for `reason`: their devices are
    offline, their online periods close. Returns the event recorded per session."""
    by_device = {device_id: session_id for session_id, device_id in sessions}
    if not by_device:
        return {}
    recorded = record(
        [
            Fact(device_id=device_id, type=Type.DEVICE_OFFLINE, session_id=session_id, data={"reason": reason})
            for device_id, session_id in by_device.items()
        ],
        now=now,
        presence={"online": False, "online_since": None, "offline_since": now, "last_disconnect_reason": reason},
    )
    _periods_close(session_ids=list(by_device.values()), reason=reason, now=now)
    return {event.session_id: event for event in recorded}


def _periods_close(*, session_ids: list[str], reason: str, now: datetime) -> None:
    """Close the sessions' open online periods (SQL written here, not compiled by the ORM:
    every terminal that leaves does this)."""
    meta, quote = DeviceConnection._meta, connection.ops.quote_name
    closed_at = quote(meta.get_field("disconnected_at").column)
    placeholders = ", ".join(["%s"] * len(session_ids))
    sql = (
        f"UPDATE {quote(meta.db_table)} SET {closed_at} = %s, {quote(meta.get_field('reason').column)} = %s "
        f"WHERE {quote(meta.get_field('session_id').column)} IN ({placeholders}) AND {closed_at} IS NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [meta.get_field("disconnected_at").get_db_prep_save(now, connection), reason, *session_ids])


def socket_gone(*, device_id: int, reason: str) -> None:
    """A device socket went away while another keeps the device online: only the reason."""
    Device.objects.filter(pk=device_id).update(last_disconnect_reason=reason)


def replaced(*, device_id: int, session_id: str, endpoint: str, now: datetime) -> Recorded | None:
    """A registration's new socket replaced a live one on `endpoint` (closed 4409)."""
    recorded = record(
        [Fact(device_id=device_id, type=Type.DEVICE_REPLACED, session_id=session_id, data={"endpoint": endpoint})],
        now=now,
        presence={"last_disconnect_reason": DisconnectReason.REPLACED},
    )
    return recorded[0] if recorded else None


def claim_changed(
    *, device_id: int, session_id: str, fact_type: str, data: dict, holder_label: str, now: datetime
) -> Recorded | None:
    """A claim was taken, taken over or released: the event, the open online period's
    `claimed_by` (the last holder's name stays on a period that closes), and, after the
    commit, a word to the portal's open device pages of the device's merchant (its
    merchant's group only: the store and MA groups are the §12 listeners', who hear presence,
    not claims)."""
    recorded = record([Fact(device_id=device_id, type=fact_type, session_id=session_id, data=data)], now=now)
    if holder_label:
        _open_period_claimed(session_id=session_id, label=holder_label)
    if not recorded:
        return None
    event = recorded[0]
    groups.send_after_commit(
        groups.presence_group_merchant(event.merchant_id),
        groups.pos_event_message(
            event=fact_type.replace(".", "_"), session_id=session_id, tsn=event.tsn, **event.envelope()
        ),
    )
    return event


def _open_period_claimed(*, session_id: str, label: str) -> None:
    """The session's open online period's `claimed_by` = label (SQL built once: every claim)."""
    meta, quote = DeviceConnection._meta, connection.ops.quote_name
    column = quote(meta.get_field("claimed_by").column)
    sql = (
        f"UPDATE {quote(meta.db_table)} SET {column} = %s WHERE {quote(meta.get_field('session_id').column)} = %s "
        f"AND {quote(meta.get_field('disconnected_at').column)} IS NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [label, session_id])


_holder_rows = Prepared(
    lambda _shape, *, application_id: Application.objects.filter(pk=application_id).values(
        "pos__name", "cloud_application__name", "name"
    ),
    required=["application_id"],
)


def holder_name(application_id: int | None) -> str:
    """'POS Till 1' or 'Application Acme POS' (one query, compiled once: every claim and
    every terminal coming online asks); "" for none or a deleted one."""
    if application_id is None:
        return ""
    rows = _holder_rows.rows(None, application_id=application_id)
    if not rows:
        return ""
    row = rows[0]
    pos, cloud_app, name = row["pos__name"], row["cloud_application__name"], row["name"]
    if pos:
        return f"POS {pos}"
    if cloud_app:
        return f"Application {cloud_app}"
    return name or ""


def frames_add(deltas: dict[str, tuple[int, int]]) -> None:
    """Add frame counts to each session's latest online period (the open one, or the one
    that just closed when the counts are flushed after the socket left)."""
    for session_id, (relayed, dropped) in deltas.items():
        latest = (
            DeviceConnection.objects.filter(session_id=session_id).order_by("-connected_at", "-id").values("pk")[:1]
        )
        DeviceConnection.objects.filter(pk=Subquery(latest)).update(
            frames_relayed=F("frames_relayed") + relayed, frames_dropped=F("frames_dropped") + dropped
        )


def seen_write(*, device_ids: Sequence[int], now: datetime) -> int:
    """`last_seen_at` = now for online devices whose sockets sent a frame or a pong since the
    last write: one statement for all of them, the ids sent as one parameter (an array on
    PostgreSQL, a JSON list on SQLite), since building and adapting thousands of `IN`
    parameters cost the serving process more than the database's work."""
    if not device_ids:
        return 0
    meta, quote = Device._meta, connection.ops.quote_name
    column = quote(meta.get_field("last_seen_at").column)
    if connection.vendor == "postgresql":
        ids, wanted = list(device_ids), "= ANY(%s)"
    else:
        ids, wanted = json.dumps(list(device_ids)), "IN (SELECT value FROM json_each(%s))"
    sql = (
        f"UPDATE {quote(meta.db_table)} SET {column} = %s "
        f"WHERE {quote(meta.pk.column)} {wanted} AND {quote(meta.get_field('online').column)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [meta.get_field("last_seen_at").get_db_prep_save(now, connection), ids])
        return cursor.rowcount


# --- what listeners hear --------------------------------------------------------------------------


def listener_messages(
    recorded: Recorded, *, event: str, holder: int | None, fields: dict | None = None, presence: bool = False
) -> list[tuple[str, dict]]:
    """(group, message) for the claim holder's listeners and, for presence events, the
    listeners subscribed to presence in the device's store and merchant aggregator."""
    message = groups.pos_event_message(
        event=event, session_id=recorded.session_id, tsn=recorded.tsn, fields=fields, **recorded.envelope()
    )
    targets = []
    if holder is not None:
        targets.append(groups.listener_group(holder))
    if presence:
        targets.extend(
            groups.presence_groups(
                store_id=recorded.store_id, merchant_id=recorded.merchant_id, ma_id=recorded.merchant_aggregator_id
            )
        )
    return [(target, message) for target in targets]


class activation_watch:  # noqa: N801 - used as a statement: `with activation_watch(devices):`
    """Records `device.activation_changed` (`active`: whether the device may use Cloud
    Connector now) for each device of `devices` whose usability the block changed: a
    subscription, an activation at any level, a device enabled or provisioned. Read before
    and after, in the block's transaction; nothing recorded if the block raises."""

    def __init__(self, devices) -> None:
        self.devices = devices

    def __enter__(self) -> activation_watch:
        from connector.services import usable_devices

        self.ids = list(self.devices.values_list("pk", flat=True))
        self.before = set(usable_devices(Device.objects.filter(pk__in=self.ids)).values_list("pk", flat=True))
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None or not self.ids:
            return
        from connector.services import usable_devices

        remaining = Device.objects.filter(pk__in=self.ids)
        after = set(usable_devices(remaining).values_list("pk", flat=True))
        changed = [pk for pk in remaining.values_list("pk", flat=True) if (pk in self.before) != (pk in after)]
        record(
            [Fact(device_id=pk, type=Type.DEVICE_ACTIVATION_CHANGED, data={"active": pk in after}) for pk in changed],
            now=timezone.now(),
        )
