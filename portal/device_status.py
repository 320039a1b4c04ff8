"""What the portal shows about devices: their Cloud Connector state, their presence (the
stored fields of v1.1 §11, which outlive a session), and their live session's claim, read in
a fixed number of queries however many devices there are."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import F, OuterRef, Prefetch, Q, QuerySet, Subquery

from accounts.scope import Principal
from connector.models import Device, DeviceConnection, DeviceSession, DisconnectReason, tsn_lower
from connector.selectors import LIVE, devices_in_scope
from connector.services import ACTIVATION_REASONS, Unusable, devices_with_activation, unusable_reason_from_flags

REASON_TEXT = {
    Unusable.DISABLED: "The device is not provisioned and enabled in PPaaS.",
    Unusable.SUBSCRIPTION: "Your PPaaS client is not subscribed to Cloud Connector; ask Client Services.",
    Unusable.MERCHANT_AGGREGATOR: "Cloud Connector is not active for the merchant aggregator.",
    Unusable.MERCHANT: "Cloud Connector is not active for the merchant.",
    Unusable.DEVICE: "Cloud Connector is not active for this device: it was created after its merchant was "
    "activated, so it must be activated itself.",
}

SHORT_REASON = {
    Unusable.DISABLED: "Device disabled",
    Unusable.SUBSCRIPTION: "Not subscribed",
    Unusable.MERCHANT_AGGREGATOR: "Inactive for the aggregator",
    Unusable.MERCHANT: "Inactive for the merchant",
    Unusable.DEVICE: "Not activated for this device",
}


# Why the device's last socket went away, as a sentence's end: "offline: the terminal closed
# the connection".
DISCONNECT_TEXT = {
    DisconnectReason.CLOSED: "the terminal closed the connection",
    DisconnectReason.PING_TIMEOUT: "the terminal stopped answering pings",
    DisconnectReason.NODE_LOST: "the server process holding it stopped",
    DisconnectReason.REPLACED: "a new connection of the terminal replaced it",
    DisconnectReason.REVOKED: "the credentials it registered with were revoked",
    DisconnectReason.SERVER_SHUTDOWN: "the server shut down",
    DisconnectReason.SESSION_ENDED: "its session was ended",
}


def disconnect_text(reason: str) -> str:
    """A disconnect reason for people; an unknown one as it is stored."""
    return DISCONNECT_TEXT.get(reason, reason.replace("_", " "))


def _latest_connection(field: str) -> Subquery:
    latest = DeviceConnection.objects.filter(device=OuterRef("pk")).order_by("-connected_at", "-id")
    return Subquery(latest.values(field)[:1])


def _live_sessions() -> QuerySet[DeviceSession]:
    return DeviceSession.objects.filter(LIVE).select_related("claimed_by__pos", "claimed_by__cloud_application")


def devices_for_portal(*, principal: Principal) -> QuerySet[Device]:
    """Devices in scope, annotated with activation flags and the frames of their latest
    connection (what was relayed is still shown once the session has ended), their live
    session prefetched into `live_sessions`."""
    return (
        devices_with_activation(devices_in_scope(principal=principal))
        .annotate(last_frames_relayed=_latest_connection("frames_relayed"))
        .prefetch_related(Prefetch("sessions", queryset=_live_sessions(), to_attr="live_sessions"))
        .order_by("store__name", "make", "serial", "pk")
    )


# The orders the list offers (`?sort=`): each ends with the primary key, so that a page
# boundary is stable however many devices share a value. A leading "-" reverses.
SORTS: dict[str, tuple[str, ...]] = {
    "tsn": ("make", "model", "serial"),
    "store": ("store__name", "make", "model", "serial"),
    "merchant": ("merchant__name", "store__name", "make", "model", "serial"),
    "connection": ("online", "store__name", "make", "model", "serial"),
    "last_seen": ("last_seen_at", "make", "model", "serial"),
}
DEFAULT_SORT = "store"


def devices_sorted(queryset: QuerySet[Device], sort: str) -> QuerySet[Device]:
    """`sort` one of SORTS, "-" in front for the reverse; an unknown one is the default.
    Devices never seen sort last in either direction."""
    descending = sort.startswith("-")
    fields = SORTS.get(sort.removeprefix("-"), SORTS[DEFAULT_SORT])
    order = []
    for name in (*fields, "pk"):
        expression = F(name)
        order.append(expression.desc(nulls_last=True) if descending else expression.asc(nulls_last=True))
    return queryset.order_by(*order)


def devices_searched(queryset: QuerySet[Device], q: str) -> QuerySet[Device]:
    """Devices whose serial or fully qualified tsn contains `q`, whatever the case."""
    q = q.strip()
    if not q:
        return queryset
    return queryset.alias(tsn_lc=tsn_lower()).filter(Q(serial__icontains=q) | Q(tsn_lc__contains=q.lower()))


def devices_filtered(
    queryset: QuerySet[Device],
    *,
    q: str = "",
    merchant=None,
    store=None,
    make: str = "",
    active: str = "",
    online: str = "",
    sort: str = "",
) -> QuerySet[Device]:
    """The list's filters (the form has checked that `merchant` and `store` are in scope)."""
    queryset = devices_searched(queryset, q)
    if merchant is not None:
        queryset = queryset.filter(merchant=merchant)
    if store is not None:
        queryset = queryset.filter(store=store)
    if make:
        queryset = queryset.filter(make__iexact=make)
    if active:
        queryset = queryset.filter(usable=(active == "yes"))
    if online:
        queryset = queryset.filter(online=(online == "yes"))
    return devices_sorted(queryset, sort)


def credential_name(session: DeviceSession) -> str:
    """'POS Till 1' or 'Application Acme POS'; the credential's kind when it has no owner."""
    application = session.claimed_by
    if application is None:
        return ""
    pos = getattr(application, "pos", None)
    if pos is not None:
        return f"POS {pos.name}"
    cloud_app = getattr(application, "cloud_application", None)
    if cloud_app is not None:
        return f"Application {cloud_app.name}"
    return application.get_kind_display()


@dataclass(frozen=True)
class DeviceState:
    device: Device
    reason: Unusable | None
    session: DeviceSession | None

    @property
    def active(self) -> bool:
        return self.reason is None

    @property
    def reason_text(self) -> str:
        return REASON_TEXT[self.reason] if self.reason else ""

    @property
    def reason_short(self) -> str:
        return SHORT_REASON[self.reason] if self.reason else ""

    @property
    def needs_device_activation(self) -> bool:
        return self.reason == Unusable.DEVICE

    @property
    def disabled(self) -> bool:
        return not (self.device.provisioned and self.device.enabled)

    @property
    def own_activation(self) -> bool:
        """Whether Cloud Connector is switched on for the device itself (its own activation
        row), whatever the levels above it and its PPaaS state say."""
        return bool(getattr(self.device, "device_active", False))

    @property
    def activation_reasons(self) -> list[str]:
        """Every level that keeps Cloud Connector off for it besides being disabled, in the
        order they are reported: the device page says them all, so that fixing one does not
        reveal the next as a surprise. The device's own activation is named only when the
        levels above are on (activating a merchant activates its devices)."""
        above = [
            REASON_TEXT[reason]
            for flag, reason in ACTIVATION_REASONS
            if reason != Unusable.DEVICE and not getattr(self.device, flag, True)
        ]
        if not above and not self.own_activation:
            return [REASON_TEXT[Unusable.DEVICE]]
        return above

    @property
    def online(self) -> bool:
        return self.device.online

    @property
    def connection(self) -> str:
        """online; registered (a session, no socket yet); offline (seen before, or a session
        kept for the grace period); none (never connected)."""
        if self.device.online:
            return "online"
        if self.session is not None and self.session.state == DeviceSession.State.REGISTERED:
            return "registered"
        if self.device.offline_since is not None or self.session is not None:
            return "offline"
        return "none"

    @property
    def online_since(self) -> datetime | None:
        return self.device.online_since

    @property
    def offline_since(self) -> datetime | None:
        return self.device.offline_since

    @property
    def last_seen_at(self) -> datetime | None:
        return self.device.last_seen_at

    @property
    def disconnect_reason(self) -> str:
        """Why the last device socket went away, for people; "" if it never did."""
        reason = self.device.last_disconnect_reason
        return disconnect_text(reason) if reason else ""

    @property
    def claimed(self) -> bool:
        return self.session is not None and self.session.claimed_by_id is not None

    @property
    def free(self) -> bool:
        """Online and held by no POS: a claim would succeed now. An offline device's kept
        session is not "free": nothing could be relayed to it."""
        return self.device.online and self.session is not None and not self.claimed

    @property
    def claimed_by(self) -> str:
        return credential_name(self.session) if self.claimed else ""

    @property
    def claimed_at(self) -> datetime | None:
        return self.session.claimed_at if self.claimed else None

    @property
    def frames_relayed(self) -> int:
        """The live session's frames, else those of the device's latest connection."""
        if self.session is not None:
            return self.session.frames_relayed
        return getattr(self.device, "last_frames_relayed", None) or 0


def device_state(device: Device) -> DeviceState:
    sessions = getattr(device, "live_sessions", [])
    return DeviceState(
        device=device, reason=unusable_reason_from_flags(device), session=sessions[0] if sessions else None
    )
