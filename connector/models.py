"""The relay's data: services and their activation, devices, device sessions, and what
happened to them: the presence a device shows, its connection history, the events recorded
with the facts (v1.1 §11), and the webhooks that carry those events out (§16)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import CharField, Q, Value
from django.db.models.functions import Concat, Lower

from accounts.models import Merchant, MerchantAggregator, Store, Tenant

CLOUD_CONNECTOR = "cloud-connector"
# The one answer to a make and serial that is taken, wherever the device holding it lies.
SERIAL_REFUSED = "This serial number cannot be used."

identifier_validator = RegexValidator(r"^[A-Za-z0-9._-]+$", "Use only letters, digits, '.', '_' and '-'.")


class ServiceDomain(models.Model):
    """A family of services, e.g. the Retail API service domain."""

    code = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.name


class Service(models.Model):
    """A service a tenant can subscribe to, e.g. Cloud Connector in the Retail API domain."""

    domain = models.ForeignKey(ServiceDomain, on_delete=models.PROTECT, related_name="services")
    code = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.name


class Subscription(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="subscriptions")
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="subscriptions")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "service"], name="one_subscription_per_service")]

    def __str__(self) -> str:
        return f"{self.tenant} → {self.service}"


# Written only by the relay (connector.history), never by a save of the whole device.
PRESENCE_FIELDS = frozenset(
    {"online", "online_since", "offline_since", "last_seen_at", "last_disconnect_reason", "event_seq"}
)


class Device(models.Model):
    """A payment terminal, provisioned under a merchant and one of its stores."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="devices")
    merchant = models.ForeignKey(Merchant, on_delete=models.CASCADE, related_name="devices")
    store = models.ForeignKey(Store, on_delete=models.PROTECT, related_name="devices")
    make = models.CharField(max_length=40, validators=[identifier_validator])
    model = models.CharField(max_length=40, validators=[identifier_validator])
    serial = models.CharField(max_length=60, validators=[identifier_validator])
    provisioned = models.BooleanField(default=True)
    enabled = models.BooleanField(default=True)
    # v1.1 §15: the device registers only with an enrolled client certificate (mTLS).
    require_mtls = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # Presence (v1.1 §11), written with the session facts that change it and kept when the
    # session ends (connector.presence). `last_seen_at` is coalesced: written by the node's
    # heartbeat for the devices whose sockets sent a frame or a pong since the last one.
    online = models.BooleanField(default=False)
    online_since = models.DateTimeField(null=True, blank=True)
    offline_since = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    last_disconnect_reason = models.CharField(max_length=20, blank=True)
    # The `seq` of the device's last recorded event (Event.seq): 1, 2, 3 ... per device.
    event_seq = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["id"]
        constraints = [
            # The message says nothing of the device holding the serial, which may lie outside
            # the caller's scope (connector.serial_refusals).
            models.UniqueConstraint(
                "tenant",
                Lower("make"),
                Lower("serial"),
                name="serial_unique_per_make_in_tenant",
                violation_error_message=SERIAL_REFUSED,
            )
        ]
        indexes = [models.Index(Lower("serial"), name="device_serial_lower")]

    def __str__(self) -> str:
        return self.tsn

    def save(self, *args, **kwargs) -> None:
        """An edit (admin, API, portal, import) never writes the presence fields back: the
        relay changes them meanwhile (connector.history), and a form's stale copy must not
        take a terminal offline or rewind its event sequence."""
        if not self._state.adding and kwargs.get("update_fields") is None:
            kwargs["update_fields"] = [
                f.name for f in self._meta.concrete_fields if not f.primary_key and f.name not in PRESENCE_FIELDS
            ]
        super().save(*args, **kwargs)

    @property
    def tsn(self) -> str:
        """The fully qualified terminal serial number."""
        return f"{self.make}-{self.model}-{self.serial}"


def tsn_lower(prefix: str = "") -> Lower:
    """Device.tsn, lower-cased, as a query expression (`prefix` for a related device:
    `"device__"`): the one way lookups match a fully qualified tsn."""
    return Lower(
        Concat(f"{prefix}make", Value("-"), f"{prefix}model", Value("-"), f"{prefix}serial", output_field=CharField())
    )


class Activation(models.Model):
    """Cloud Connector (or another service) switched on for one MA, merchant or device."""

    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="activations")
    merchant_aggregator = models.ForeignKey(
        MerchantAggregator, null=True, blank=True, on_delete=models.CASCADE, related_name="activations"
    )
    merchant = models.ForeignKey(Merchant, null=True, blank=True, on_delete=models.CASCADE, related_name="activations")
    device = models.ForeignKey(Device, null=True, blank=True, on_delete=models.CASCADE, related_name="activations")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(merchant_aggregator__isnull=False, merchant__isnull=True, device__isnull=True)
                    | Q(merchant_aggregator__isnull=True, merchant__isnull=False, device__isnull=True)
                    | Q(merchant_aggregator__isnull=True, merchant__isnull=True, device__isnull=False)
                ),
                name="activation_one_level",
            ),
            models.UniqueConstraint(fields=["service", "merchant_aggregator"], name="one_ma_activation"),
            models.UniqueConstraint(fields=["service", "merchant"], name="one_merchant_activation"),
            models.UniqueConstraint(fields=["service", "device"], name="one_device_activation"),
        ]

    def __str__(self) -> str:
        return f"{self.service} for {self.merchant_aggregator or self.merchant or self.device}"


class DeviceSession(models.Model):
    """One device's presence on Cloud Connector, from registration to its end."""

    class State(models.TextChoices):
        REGISTERED = "registered"
        ONLINE = "online"
        OFFLINE = "offline"
        ENDED = "ended"

    id = models.CharField(primary_key=True, max_length=64)
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="sessions")
    state = models.CharField(max_length=12, choices=State.choices, default=State.REGISTERED)
    endpoints = models.JSONField(default=list)
    claimed_by = models.ForeignKey(
        settings.OAUTH2_PROVIDER_APPLICATION_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="claimed_sessions",
    )
    claimed_at = models.DateTimeField(null=True, blank=True)
    # The credential of the session's last registration, and the access token's checksum when
    # it registered with one (blank: with its client secret). No foreign key, as for
    # SessionSocket: rotating, revoking or deleting that credential ends the session
    # (connector.events), so that a leaked secret cannot keep a terminal it registered.
    registered_by = models.BigIntegerField(null=True, blank=True)
    registered_token = models.CharField(max_length=64, blank=True)
    # The SHA-256 fingerprint of the client certificate the session last registered with
    # (v1.1 §15; blank: registered with a credential). Removing that certificate ends it.
    registered_fingerprint = models.CharField(max_length=64, blank=True)
    # The terminal's own WebSocket server on the shop's network, from its registration (v1.1
    # §14), told to the POS in `claim` and `devices` for the local-network fallback.
    local_url = models.CharField(max_length=2048, blank=True)
    frames_relayed = models.BigIntegerField(default=0)
    frames_dropped = models.BigIntegerField(default=0)
    node = models.CharField(max_length=100, blank=True, help_text="Process holding the device sockets")
    created_at = models.DateTimeField(auto_now_add=True)
    jwt_expires_at = models.DateTimeField()
    online_at = models.DateTimeField(null=True, blank=True)
    offline_at = models.DateTimeField(null=True, blank=True)
    # When an offline session ends if its terminal is not back: offline_at + the grace period,
    # longer when the server closed the sockets itself (connector.sessions.offline_grace).
    offline_until = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=40, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["device"], condition=~Q(state="ended"), name="one_live_session_per_device")
        ]
        indexes = [
            models.Index(fields=["state"], name="session_state"),
            models.Index(fields=["registered_by"], name="session_registered_by"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.state})"


class SessionSocket(models.Model):
    """A live WebSocket of a device session, held by one serving process (`node`).

    Soft state: written on connect and disconnect only (never per frame), and swept away
    when its node stops beating. It is how a socket finds its peer on another process
    (`channel_name`) and whether a session is online (at least one device socket).
    """

    class Side(models.TextChoices):
        DEVICE = "device"
        POS = "pos"

    session = models.ForeignKey(DeviceSession, on_delete=models.CASCADE, related_name="sockets")
    side = models.CharField(max_length=6, choices=Side.choices)
    endpoint = models.CharField(max_length=255)
    channel_name = models.CharField(max_length=200)
    node = models.CharField(max_length=100)
    # The credential of a POS socket (no foreign key: the row must not outlive nor block
    # the deletion of a credential, whose sockets close anyway).
    application_id = models.BigIntegerField(null=True, blank=True)
    connected_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["session", "side", "endpoint"], name="one_socket_per_session_endpoint")
        ]
        indexes = [models.Index(fields=["node"], name="session_socket_node")]

    def __str__(self) -> str:
        return f"{self.session_id} {self.side} {self.endpoint} on {self.node}"


class NodeHeartbeat(models.Model):
    """A serving process that is alive; sessions on a silent node are taken offline."""

    node = models.CharField(max_length=100, primary_key=True)
    seen_at = models.DateTimeField()
    # What the process reported with its last heartbeat (connector.fleet.node_snapshot): its
    # sockets by kind and the sessions it holds, read from the sources of its /metrics.
    snapshot = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"{self.node} at {self.seen_at:%H:%M:%S}"


class Fleet(NodeHeartbeat):
    """The admin's fleet page (connector.fleet_admin): the live workers, sessions by state and
    the refusals of the last hour. A proxy for its `view_fleet` permission and its place in the
    admin's index."""

    class Meta:
        proxy = True
        verbose_name = "fleet"
        verbose_name_plural = "fleet"


class RefusalTally(models.Model):
    """Refusals of one process in one minute for one reason ("registration:invalid_client",
    "claim:device_offline", "token_request:invalid_client", "device_socket:4401"...), written by
    its heartbeat from accounts.metrics.refusals: the same events as the /metrics counters. Rows
    outlive their process (a worker that died still counts in the last hour) and are deleted
    after connector.fleet.TALLY_RETENTION."""

    node = models.CharField(max_length=100)
    minute = models.DateTimeField()
    reason = models.CharField(max_length=80)
    count = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["node", "minute", "reason"], name="one_tally_per_node_minute_reason")
        ]
        indexes = [models.Index(fields=["minute"], name="refusal_tally_minute")]

    def __str__(self) -> str:
        return f"{self.reason} × {self.count} at {self.minute:%H:%M} on {self.node}"


class DisconnectReason(models.TextChoices):
    """Why a device's last socket went away (v1.1 §11)."""

    CLOSED = "closed"
    PING_TIMEOUT = "ping_timeout"
    NODE_LOST = "node_lost"
    REPLACED = "replaced"
    REVOKED = "revoked"
    SERVER_SHUTDOWN = "server_shutdown"
    SESSION_ENDED = "session_ended"


class DeviceConnection(models.Model):
    """One online period of a device session: from its first device socket to the moment it
    had none (v1.1 §11, `connections/`). Outlives its session (no foreign key to it: ended
    sessions are purged sooner) and is pruned after CC_HISTORY_DAYS (`prune_history`)."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="connections")
    session_id = models.CharField(max_length=64)
    connected_at = models.DateTimeField()
    disconnected_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=20, blank=True)
    frames_relayed = models.BigIntegerField(default=0)
    frames_dropped = models.BigIntegerField(default=0)
    # The name of the POS or application that held the claim (the last one, if it changed).
    claimed_by = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-connected_at", "-id"]
        indexes = [
            models.Index(fields=["device", "-connected_at"], name="connection_device_time"),
            models.Index(fields=["session_id", "-connected_at"], name="connection_session"),
            models.Index(fields=["connected_at"], name="connection_time"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id} {self.session_id} from {self.connected_at:%H:%M:%S}"


class Event(models.Model):
    """A fact about a device, recorded in the transaction that made it (the outbox of the
    webhooks, the timeline of the portal, the `event_id` the listeners hear): `id` is the
    event's identity wherever it is delivered, `seq` orders a device's events."""

    class Type(models.TextChoices):
        DEVICE_ONLINE = "device.online"
        DEVICE_OFFLINE = "device.offline"
        SESSION_CLAIMED = "session.claimed"
        SESSION_RELEASED = "session.released"
        SESSION_TAKEN_OVER = "session.taken_over"
        SESSION_ENDED = "session.ended"
        DEVICE_ACTIVATION_CHANGED = "device.activation_changed"
        DEVICE_REPLACED = "device.replaced"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="events")
    type = models.CharField(max_length=40, choices=Type.choices)
    session_id = models.CharField(max_length=64, blank=True)
    seq = models.BigIntegerField()
    occurred_at = models.DateTimeField()
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-occurred_at", "-seq"]
        indexes = [
            models.Index(fields=["device", "-seq"], name="event_device_seq"),
            models.Index(fields=["occurred_at"], name="event_time"),
        ]

    def __str__(self) -> str:
        return f"{self.type} #{self.seq} of {self.device_id}"


# What a webhook endpoint may subscribe to (v1.1 §16): every recorded type but the one only
# listeners hear.
WEBHOOK_EVENT_TYPES = [choice for choice in Event.Type.values if choice != Event.Type.DEVICE_REPLACED]


class WebhookEndpoint(models.Model):
    """A merchant's or an MA's back office receiving the events of its devices (v1.1 §16)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="webhook_endpoints")
    merchant_aggregator = models.ForeignKey(
        MerchantAggregator, null=True, blank=True, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    merchant = models.ForeignKey(
        Merchant, null=True, blank=True, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list)
    enabled = models.BooleanField(default=True)
    # Signs every delivery (HMAC-SHA256); kept readable since each delivery needs it, shown
    # to the user only on create and on rotation.
    secret = models.CharField(max_length=100)
    # While a receiver fails, its deliveries wait until then instead of each waiting out the
    # timeout (connector.webhooks.delivery).
    paused_until = models.DateTimeField(null=True, blank=True)
    failures = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(merchant_aggregator__isnull=False, merchant__isnull=True)
                    | Q(merchant_aggregator__isnull=True, merchant__isnull=False)
                ),
                name="webhook_endpoint_one_scope",
            ),
        ]

    def __str__(self) -> str:
        return self.url


class WebhookDelivery(models.Model):
    """One event for one endpoint: created with the event (same transaction), then attempted
    until a 2xx or until the retry window closes."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RETRYING = "retrying"
        DELIVERED = "delivered"
        FAILED = "failed"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    response_code = models.PositiveSmallIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["endpoint", "event"], name="one_delivery_per_endpoint_event")]
        indexes = [
            models.Index(fields=["endpoint", "-created_at"], name="delivery_endpoint_time"),
            models.Index(fields=["status", "next_attempt_at"], name="delivery_due"),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} to {self.endpoint_id} ({self.status})"


class WebhookAttempt(models.Model):
    """One POST of a delivery: when, what came back, how long it took."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    attempted_at = models.DateTimeField()
    response_code = models.PositiveSmallIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField()
    error = models.CharField(max_length=300, blank=True)
    succeeded = models.BooleanField(default=False)
    manual = models.BooleanField(default=False)

    class Meta:
        ordering = ["-attempted_at", "-id"]

    def __str__(self) -> str:
        return f"{self.delivery_id} at {self.attempted_at:%H:%M:%S}: {self.response_code or self.error}"


class DeviceCertificate(models.Model):
    """A client certificate enrolled for a device (v1.1 §15): a registration presenting it,
    verified by the TLS proxy against the operator's device CA, registers that device without
    credentials. Identified by its SHA-256 fingerprint (hex, lower case), unique across the
    deployment: one certificate is one device's identity."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="certificates")
    fingerprint_sha256 = models.CharField(max_length=64, unique=True)
    subject = models.CharField(max_length=500)
    not_after = models.DateTimeField()
    pem = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.subject} ({self.fingerprint_sha256[:16]}…)"
