"""Shapes of the REST API. Serializers translate and validate; they never save: the views
hand `validated_data` to the service functions (accounts/services.py, connector/services.py).

Every id in a request body is looked up through the caller's scope selectors, so an unknown
id and one outside the caller's scope get the same field error.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db.models import Model, QuerySet
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import NAME_MAX_LENGTH, CloudApplication, Tenant, domain_validator
from accounts.scope import (
    Principal,
    merchant_aggregators_in_scope,
    merchants_in_scope,
    stores_in_scope,
    tenants_in_scope,
)
from connector.api.permissions import principal_of
from connector.models import CLOUD_CONNECTOR, DeviceSession, DisconnectReason, identifier_validator
from connector.protocol import timestamp
from connector.services import Unusable, unusable_reason_from_flags

# The largest id a 64-bit primary key can hold; larger numbers are refused as input
# instead of reaching the database.
MAX_ID = 2**63 - 1

NOT_CHANGEABLE = "This field cannot be changed."


def _principal(serializer_field: serializers.Field) -> Principal:
    return principal_of(serializer_field.context["request"])


class ScopedPrimaryKeyRelatedField(serializers.PrimaryKeyRelatedField):
    """An id resolved through a scope selector of the caller."""

    def __init__(self, *, selector: Callable[..., QuerySet], **kwargs) -> None:
        self.selector = selector
        kwargs.setdefault("pk_field", serializers.IntegerField(min_value=1, max_value=MAX_ID))
        super().__init__(**kwargs)

    def get_queryset(self) -> QuerySet:
        return self.selector(principal=_principal(self))

    def to_internal_value(self, data):
        # An id is a JSON integer within range, checked before any query.
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("incorrect_type", data_type=type(data).__name__)
        return super().to_internal_value(self.pk_field.run_validation(data))


@extend_schema_field({"type": "string", "maxLength": 63, "pattern": domain_validator.regex.pattern})
class TenantDomainField(serializers.SlugRelatedField):
    """A tenant named by its domain, resolved among the tenants the caller can see."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault(
            "help_text",
            "The tenant's domain. Required when a platform operator (staff) creates the object; "
            "other callers act for their own tenant and may omit it.",
        )
        super().__init__(slug_field="domain", **kwargs)

    def get_queryset(self) -> QuerySet[Tenant]:
        return tenants_in_scope(principal=_principal(self))

    def to_internal_value(self, data):
        if not isinstance(data, str) or len(data) > 63 or not domain_validator.regex.match(data):
            self.fail("does_not_exist", slug_name=self.slug_field, value=str(data)[:70])
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A JSON string, not a number that DRF would turn into one: the input is what the
    schema says, so that a client's type error is reported, not guessed at."""

    def to_internal_value(self, data) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """JSON true or false, not "yes", "on" or 1."""

    def to_internal_value(self, data) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


@extend_schema_field({"type": "string", "format": "date-time", "example": "2026-12-02T17:06:23.123Z"})
class TimestampField(serializers.Field):
    """A time as v1.1 writes it everywhere (RFC 3339, UTC, milliseconds), or null: the same
    text the listener's events carry, so that a client compares them without parsing twice."""

    def __init__(self, **kwargs) -> None:
        kwargs["read_only"] = True
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def to_representation(self, value) -> str | None:
        return timestamp(value)


@extend_schema_field({"type": "string", "nullable": True})
class BlankAsNullField(serializers.CharField):
    """A name stored blank when there is none, shown as null: a client tests for null, not for
    an empty string that could be mistaken for a name."""

    def __init__(self, **kwargs) -> None:
        kwargs["read_only"] = True
        super().__init__(**kwargs)

    def to_representation(self, value) -> str | None:
        return value or None


@extend_schema_field(serializers.ChoiceField(choices=DisconnectReason.choices, allow_null=True))
class DisconnectReasonField(BlankAsNullField):
    """Why a device's socket went away (v1.1 §11), or null."""


def _name_field() -> serializers.CharField:
    return StrictCharField(max_length=NAME_MAX_LENGTH)


class ParentFixedMixin:
    """The parent of an object is chosen at creation; later it may only be repeated."""

    parent_fields: tuple[str, ...] = ()

    def validate(self, attrs: dict) -> dict:
        instance: Model | None = getattr(self, "instance", None)
        if instance is not None:
            errors = {
                field: [NOT_CHANGEABLE]
                for field in self.parent_fields
                if field in attrs and _pk(attrs[field]) != _pk(getattr(instance, field))
            }
            if errors:
                raise serializers.ValidationError(errors)
        return attrs


def _pk(value: Model | None) -> object:
    return getattr(value, "pk", value)


class TenantDefaultMixin(ParentFixedMixin):
    """`tenant` defaults to the caller's own; a platform caller has none and must name one."""

    parent_fields = ("tenant",)

    def validate(self, attrs: dict) -> dict:
        attrs = super().validate(attrs)
        if self.instance is None and attrs.get("tenant") is None:
            principal = principal_of(self.context["request"])
            tenant = tenants_in_scope(principal=principal).filter(pk=principal.tenant_id).first()
            if tenant is None:
                raise serializers.ValidationError({"tenant": ["This field is required for platform operators."]})
            attrs["tenant"] = tenant
        return attrs


# --- the organisation tree ----------------------------------------------------------------


class MerchantAggregatorSerializer(TenantDefaultMixin, serializers.Serializer):
    """A merchant aggregator of a tenant."""

    id = serializers.IntegerField(read_only=True)
    name = _name_field()
    tenant = TenantDomainField(required=False)
    cloud_connector_active = serializers.BooleanField(
        read_only=True, help_text="Cloud Connector is activated for this merchant aggregator."
    )
    created_at = serializers.DateTimeField(read_only=True)


class MerchantSerializer(ParentFixedMixin, serializers.Serializer):
    """A merchant of a merchant aggregator."""

    parent_fields = ("merchant_aggregator",)

    id = serializers.IntegerField(read_only=True)
    merchant_aggregator = ScopedPrimaryKeyRelatedField(selector=merchant_aggregators_in_scope)
    name = _name_field()
    cloud_connector_active = serializers.BooleanField(
        read_only=True, help_text="Cloud Connector is activated for this merchant."
    )
    created_at = serializers.DateTimeField(read_only=True)


class StoreSerializer(ParentFixedMixin, serializers.Serializer):
    """A store of a merchant."""

    parent_fields = ("merchant",)

    id = serializers.IntegerField(read_only=True)
    merchant = ScopedPrimaryKeyRelatedField(selector=merchants_in_scope)
    name = _name_field()
    created_at = serializers.DateTimeField(read_only=True)


# --- credentials ----------------------------------------------------------------------------


class CredentialMixin(serializers.Serializer):
    """`client_id` always; `client_secret` only in the answer that issued it."""

    client_id = serializers.CharField(source="application.client_id", read_only=True)
    client_secret = serializers.SerializerMethodField(
        help_text="The secret in clear: present only in the response to create and to rotate-secret, "
        "null everywhere else. It is stored hashed and cannot be shown again."
    )

    @extend_schema_field({"type": "string", "nullable": True})
    def get_client_secret(self, obj: Model) -> str | None:
        return getattr(obj, "issued_secret", None)


class PosSerializer(ParentFixedMixin, CredentialMixin):
    """A store POS and its OAuth2 client credentials; they reach the devices of the store."""

    parent_fields = ("store",)

    id = serializers.IntegerField(read_only=True)
    store = ScopedPrimaryKeyRelatedField(selector=stores_in_scope)
    name = _name_field()
    created_at = serializers.DateTimeField(read_only=True)


def _choices_list(choices: list[str], what: str) -> serializers.ListField:
    return serializers.ListField(
        child=serializers.ChoiceField(choices=choices),
        required=False,
        max_length=len(choices) * 4,
        help_text=f"{what}, a subset of {choices}.",
    )


class ApplicationSerializer(ParentFixedMixin, CredentialMixin):
    """A Cloud API application of a merchant aggregator; its credentials reach every device of the
    merchant aggregator once it has the Retail API service, the client credentials grant and the
    Point-of-sale Terminal role."""

    parent_fields = ("merchant_aggregator",)

    id = serializers.IntegerField(read_only=True)
    merchant_aggregator = ScopedPrimaryKeyRelatedField(selector=merchant_aggregators_in_scope)
    name = _name_field()
    services = _choices_list(CloudApplication.SERVICE_CHOICES, "API services")
    grant_types = _choices_list(CloudApplication.GRANT_TYPE_CHOICES, "OAuth2 grant types")
    roles = _choices_list(CloudApplication.ROLE_CHOICES, "Roles")
    cloud_connector_ready = serializers.SerializerMethodField(
        help_text="The application has the service, grant type and role that Cloud Connector needs."
    )
    created_at = serializers.DateTimeField(read_only=True)

    def get_cloud_connector_ready(self, obj: CloudApplication) -> bool:
        return not obj.missing_for_cloud_connector()


# --- devices, subscriptions, sessions -------------------------------------------------------


class DeviceSerializer(ParentFixedMixin, serializers.Serializer):
    """A payment terminal of a merchant, in one of the merchant's stores."""

    parent_fields = ("merchant",)

    id = serializers.IntegerField(read_only=True)
    merchant = ScopedPrimaryKeyRelatedField(selector=merchants_in_scope)
    store = ScopedPrimaryKeyRelatedField(selector=stores_in_scope, help_text="A store of the device's merchant.")
    make = StrictCharField(max_length=40, validators=[identifier_validator], help_text="e.g. Ingenico")
    model = StrictCharField(max_length=40, validators=[identifier_validator], help_text="e.g. Lane3000")
    serial = StrictCharField(
        max_length=60,
        validators=[identifier_validator],
        help_text="Unique per make within the tenant, case-insensitively. A taken serial is refused with "
        '"This serial number cannot be used.", whichever device holds it (see the operation\'s description).',
    )
    tsn = serializers.CharField(read_only=True, help_text="The terminal serial number `{make}-{model}-{serial}`.")
    enabled = StrictBooleanField(required=False, default=True)
    require_mtls = StrictBooleanField(
        required=False,
        help_text="The device registers only with an enrolled client certificate (v1.1 §15); credential "
        "registrations answer 403 mtls_required. Turning it on closes the device's sockets registered "
        "with a credential (4410). Merchant administrators and above.",
    )
    provisioned = serializers.BooleanField(read_only=True)
    cloud_connector_active = serializers.BooleanField(
        read_only=True, source="device_active", help_text="Cloud Connector is activated for the device itself."
    )
    online = serializers.BooleanField(read_only=True, help_text="At least one device socket is connected now.")
    online_since = TimestampField(help_text="When the current online period began; null while offline.")
    offline_since = TimestampField(help_text="When the device last went offline; null while online or never seen.")
    last_seen_at = TimestampField(
        help_text="The last frame or pong received from any of the device's sockets; while online it is never "
        "more than 30 s old. Null if never seen."
    )
    last_disconnect_reason = DisconnectReasonField(
        help_text="Why the last device socket went away; null if never disconnected."
    )
    cloud_connector_usable = serializers.BooleanField(
        read_only=True,
        source="usable",
        help_text="The device may register now: subscribed, active at every level, provisioned and enabled.",
    )
    unusable_reason = serializers.SerializerMethodField(
        help_text="Why the device may not register (the first reason), or null when it may."
    )
    created_at = serializers.DateTimeField(read_only=True)

    @extend_schema_field({"type": "string", "enum": [reason.value for reason in Unusable], "nullable": True})
    def get_unusable_reason(self, device) -> str | None:
        # From the annotations of connector.services.devices_with_activation: no query per device.
        reason = unusable_reason_from_flags(device)
        return reason.value if reason else None


class SubscriptionSerializer(TenantDefaultMixin, serializers.Serializer):
    """The tenant's subscription to a service (`cloud-connector`)."""

    id = serializers.IntegerField(read_only=True)
    service = serializers.ChoiceField(choices=[CLOUD_CONNECTOR], source="service.code")
    tenant = TenantDomainField(required=False)
    created_at = serializers.DateTimeField(read_only=True)


class DeviceSessionSerializer(serializers.Serializer):
    """A device's presence on Cloud Connector, from registration to its end."""

    id = serializers.CharField(read_only=True, help_text="The session id (url-safe).")
    device = serializers.IntegerField(source="device_id", read_only=True)
    tsn = serializers.CharField(source="device.tsn", read_only=True)
    state = serializers.ChoiceField(choices=DeviceSession.State.choices, read_only=True)
    claimed_by = serializers.SerializerMethodField(help_text="The client id holding the claim, or null.")
    endpoints = serializers.ListField(child=serializers.CharField(), read_only=True)
    created_at = serializers.DateTimeField(read_only=True)
    ended_at = serializers.DateTimeField(read_only=True, allow_null=True)
    end_reason = serializers.CharField(read_only=True)
    frames_relayed = serializers.IntegerField(read_only=True)
    frames_dropped = serializers.IntegerField(read_only=True)

    @extend_schema_field({"type": "string", "nullable": True})
    def get_claimed_by(self, session: DeviceSession) -> str | None:
        return session.claimed_by.client_id if session.claimed_by else None


class ActivationSerializer(serializers.Serializer):
    """The result of activating Cloud Connector."""

    cloud_connector_active = serializers.BooleanField(read_only=True)
    devices_activated = serializers.IntegerField(
        read_only=True, help_text="Devices newly activated by this call (the device itself, for a device)."
    )
