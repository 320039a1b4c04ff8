"""Subscriptions, activation and devices: the rules of who may use Cloud Connector.

The rules, as in the REST contract: activating an MA or a merchant also activates every
device that exists beneath it at that moment; a device created afterwards is inactive
until it is activated itself; a device is usable only while the tenant is subscribed,
its MA, its merchant and itself are active, and it is provisioned and enabled.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable

from django.db import IntegrityError, transaction
from django.db.models import BooleanField, Exists, ExpressionWrapper, OuterRef, Q, QuerySet

from accounts.audit import audit_record
from accounts.errors import Conflict, Invalid
from accounts.models import Merchant, MerchantAggregator, Store, Tenant
from accounts.permissions import Kind, activation_kind
from accounts.scope import Principal
from accounts.services import require_authority, validated
from connector import events, history, serial_refusals
from connector.models import CLOUD_CONNECTOR, Activation, Device, DeviceSession, Service, ServiceDomain, Subscription


class Unusable(enum.StrEnum):
    """Why a device may not use Cloud Connector; the relay reports it as `level`."""

    SUBSCRIPTION = "subscription"
    MERCHANT_AGGREGATOR = "merchant_aggregator"
    MERCHANT = "merchant"
    DEVICE = "device"
    DISABLED = "disabled"


def cloud_connector() -> Service:
    """The Cloud Connector service of the Retail API service domain (created on first use,
    so that a flushed test database or a fresh install always has it)."""
    domain, _ = ServiceDomain.objects.get_or_create(code="retail-api", defaults={"name": "Retail API"})
    service, _ = Service.objects.get_or_create(
        code=CLOUD_CONNECTOR, defaults={"domain": domain, "name": "Cloud Connector"}
    )
    return service


# --- reads ---------------------------------------------------------------------------------


# The activation levels as devices_with_activation annotates them, in the order their
# absence is reported.
ACTIVATION_REASONS = (
    ("subscribed", Unusable.SUBSCRIPTION),
    ("ma_active", Unusable.MERCHANT_AGGREGATOR),
    ("merchant_active", Unusable.MERCHANT),
    ("device_active", Unusable.DEVICE),
)
ACTIVATION_FLAGS = tuple(flag for flag, _reason in ACTIVATION_REASONS)


def device_unusable_reason(*, device: Device) -> Unusable | None:
    """May this device use Cloud Connector? None if it may, otherwise the first reason why not.

    Being disabled is reported first: an operator who switched a terminal off wants to hear
    that, whatever the state of the service above it.
    """
    if not (device.provisioned and device.enabled):
        return Unusable.DISABLED
    annotated = devices_with_activation(Device.objects.filter(pk=device.pk)).first()
    if annotated is None:
        return Unusable.DEVICE
    return unusable_reason_from_flags(annotated)


def unusable_reason_from_flags(device: Device) -> Unusable | None:
    """device_unusable_reason without a query, for a device read through
    devices_with_activation (lists, the relay's device lookup)."""
    if not (device.provisioned and device.enabled):
        return Unusable.DISABLED
    for flag, reason in ACTIVATION_REASONS:
        if not getattr(device, flag):
            return reason
    return None


def _activation_flags() -> dict:
    """Exists() annotations telling, for each device row, which levels are switched on."""
    service = Service.objects.filter(code=CLOUD_CONNECTOR)
    return {
        "subscribed": Exists(Subscription.objects.filter(tenant_id=OuterRef("tenant_id"), service__in=service)),
        "ma_active": Exists(
            Activation.objects.filter(
                merchant_aggregator_id=OuterRef("merchant__merchant_aggregator_id"), service__in=service
            )
        ),
        "merchant_active": Exists(Activation.objects.filter(merchant_id=OuterRef("merchant_id"), service__in=service)),
        "device_active": Exists(Activation.objects.filter(device_id=OuterRef("id"), service__in=service)),
    }


def devices_with_activation(queryset: QuerySet[Device]) -> QuerySet[Device]:
    """Annotate devices with `subscribed`, `ma_active`, `merchant_active`, `device_active`
    and `usable`, for lists and filters."""
    usable = Q(
        subscribed=True, ma_active=True, merchant_active=True, device_active=True, provisioned=True, enabled=True
    )
    return queryset.annotate(**_activation_flags()).annotate(
        usable=ExpressionWrapper(usable, output_field=BooleanField())
    )


def usable_devices(queryset: QuerySet[Device]) -> QuerySet[Device]:
    return devices_with_activation(queryset).filter(usable=True)


def with_cloud_connector_active(queryset: QuerySet, *, level: str) -> QuerySet:
    """Annotate MAs, merchants or devices with whether the service is active at their level."""
    return queryset.annotate(
        cloud_connector_active=Exists(
            Activation.objects.filter(**{level: OuterRef("pk")}, service__code=CLOUD_CONNECTOR)
        )
    )


def with_subscribed(queryset: QuerySet) -> QuerySet:
    """Annotate objects with a `tenant_id` (merchant aggregators) with `subscribed`."""
    subscription = Subscription.objects.filter(tenant_id=OuterRef("tenant_id"), service__code=CLOUD_CONNECTOR)
    return queryset.annotate(subscribed=Exists(subscription))


def tenant_is_subscribed(*, tenant: Tenant) -> bool:
    return Subscription.objects.filter(tenant=tenant, service__code=CLOUD_CONNECTOR).exists()


def is_active(*, obj: MerchantAggregator | Merchant | Device) -> bool:
    return Activation.objects.filter(**{activation_level(obj): obj}, service__code=CLOUD_CONNECTOR).exists()


# --- subscriptions -------------------------------------------------------------------------


@transaction.atomic
def subscription_create(*, tenant: Tenant, actor: Principal, service_code: str = CLOUD_CONNECTOR) -> Subscription:
    require_authority(actor, Kind.SUBSCRIPTION)
    service = cloud_connector() if service_code == CLOUD_CONNECTOR else None
    if service is None:
        raise Invalid({"service": [f"Unknown service {service_code!r}."]})
    with history.activation_watch(Device.objects.filter(tenant=tenant)):
        subscription, created = Subscription.objects.get_or_create(tenant=tenant, service=service)
    if not created:
        raise Conflict(f"The tenant is already subscribed to {service.code}.")
    audit_record(actor=actor, action="subscription.create", obj=subscription, tenant_id=tenant.pk)
    return subscription


@transaction.atomic
def subscription_delete(*, subscription: Subscription, actor: Principal) -> None:
    require_authority(actor, Kind.SUBSCRIPTION)
    tenant_id = subscription.tenant_id
    audit_record(actor=actor, action="subscription.delete", obj=subscription, tenant_id=tenant_id)
    with history.activation_watch(Device.objects.filter(tenant_id=tenant_id)):
        subscription.delete()
    events.devices_changed(devices=Device.objects.filter(tenant_id=tenant_id))


# --- activation ----------------------------------------------------------------------------


def activation_level(obj: MerchantAggregator | Merchant | Device) -> str:
    if isinstance(obj, MerchantAggregator):
        return "merchant_aggregator"
    if isinstance(obj, Merchant):
        return "merchant"
    if isinstance(obj, Device):
        return "device"
    raise TypeError(f"Cloud Connector is not activated for {type(obj).__name__}")


def devices_beneath(obj: MerchantAggregator | Merchant | Device) -> QuerySet[Device]:
    if isinstance(obj, MerchantAggregator):
        return Device.objects.filter(merchant__merchant_aggregator=obj)
    if isinstance(obj, Merchant):
        return Device.objects.filter(merchant=obj)
    return Device.objects.filter(pk=obj.pk)


def _tenant_id(obj: MerchantAggregator | Merchant | Device) -> int:
    if isinstance(obj, MerchantAggregator):
        return obj.tenant_id
    if isinstance(obj, Merchant):
        return obj.merchant_aggregator.tenant_id
    return obj.tenant_id


@transaction.atomic
def service_activate(*, obj: MerchantAggregator | Merchant | Device, actor: Principal) -> int:
    """Activate Cloud Connector for an MA, a merchant or a device. Activating an MA or a
    merchant also activates every device beneath it now. Returns how many devices were
    newly activated (the object itself included when it is a device)."""
    level = activation_level(obj)
    require_authority(actor, activation_kind(level))
    service = cloud_connector()
    with history.activation_watch(devices_beneath(obj)):
        return _activate(obj=obj, level=level, service=service, actor=actor)


def _activate(*, obj: MerchantAggregator | Merchant | Device, level: str, service: Service, actor: Principal) -> int:
    _, created = Activation.objects.get_or_create(service=service, **{level: obj})
    if level == "device":
        # The device's own activation is the one just made: count it, there is nothing beneath.
        audit_record(actor=actor, action="device.cloud_connector.activate", obj=obj, tenant_id=_tenant_id(obj))
        return int(created)
    devices = devices_beneath(obj).exclude(activations__service=service)
    new = [Activation(service=service, device_id=pk) for pk in devices.values_list("pk", flat=True)]
    Activation.objects.bulk_create(new, ignore_conflicts=True)
    audit_record(
        actor=actor,
        action=f"{level}.cloud_connector.activate",
        obj=obj,
        tenant_id=_tenant_id(obj),
        data={"devices_activated": len(new)},
    )
    return len(new)


@transaction.atomic
def service_deactivate(*, obj: MerchantAggregator | Merchant | Device, actor: Principal) -> None:
    """Deactivate at one level. Devices beneath keep their own activation, but none of
    them is usable while a level above is inactive; their live sessions end."""
    level = activation_level(obj)
    require_authority(actor, activation_kind(level))
    with history.activation_watch(devices_beneath(obj)):
        Activation.objects.filter(service__code=CLOUD_CONNECTOR, **{level: obj}).delete()
    audit_record(actor=actor, action=f"{level}.cloud_connector.deactivate", obj=obj, tenant_id=_tenant_id(obj))
    events.devices_changed(devices=devices_beneath(obj))


def activation_impact(*, obj: MerchantAggregator | Merchant | Device) -> int:
    """How many devices an activation or deactivation of `obj` would touch."""
    return devices_beneath(obj).count()


def live_sessions_beneath(*, obj: MerchantAggregator | Merchant | Device) -> int:
    """How many live sessions the devices beneath `obj` have, for a confirmation page."""
    return (
        DeviceSession.objects.filter(device__in=devices_beneath(obj)).exclude(state=DeviceSession.State.ENDED).count()
    )


# --- devices -------------------------------------------------------------------------------


def _check_store(*, merchant: Merchant, store: Store) -> None:
    if store.merchant_id != merchant.pk:
        raise Invalid({"store": ["The store does not belong to the merchant."]})


def _serial_attempt(*, device: Device, actor: Principal, outcome: str) -> serial_refusals.Attempt:
    return serial_refusals.Attempt(
        actor=actor,
        tenant_id=device.tenant_id,
        make=device.make,
        serial=device.serial,
        outcome=outcome,
        object_id=str(device.pk or ""),
        object_repr=str(device),
    )


def _serial_refused(*, device: Device, actor: Principal) -> serial_refusals.SerialRefused:
    serial_refusals.refusal_count(actor=actor)
    return serial_refusals.SerialRefused(_serial_attempt(device=device, actor=actor, outcome="refused"))


def _check_unique_serial(*, device: Device, actor: Principal) -> None:
    """Refuse a make and serial that another device of the tenant holds, with the same
    neutral answer whether that device is in the caller's scope or not, so that the answer
    describes nothing beyond it; refusals count against the caller (connector.serial_refusals)."""
    wait = serial_refusals.retry_after(actor=actor)
    if wait is not None:
        attempt = _serial_attempt(device=device, actor=actor, outcome="rate_limited")
        raise serial_refusals.SerialRefusalsLimited(attempt, retry_after=wait)
    clash = Device.objects.filter(
        tenant_id=device.tenant_id, make__iexact=device.make, serial__iexact=device.serial
    ).exclude(pk=device.pk)
    if clash.exists():
        raise _serial_refused(device=device, actor=actor)


def _audits_serial_refusals(service: Callable[..., Device]) -> Callable[..., Device]:
    """Write a refused serial to the audit log after the service's own transaction has
    rolled back, which would take the entry with it."""

    @functools.wraps(service)
    def audited(*args, **kwargs) -> Device:
        try:
            return service(*args, **kwargs)
        except (serial_refusals.SerialRefused, serial_refusals.SerialRefusalsLimited) as refusal:
            serial_refusals.refusal_audit(refusal.attempt)
            raise

    return audited


@_audits_serial_refusals
@transaction.atomic
def device_create(
    *,
    merchant: Merchant,
    store: Store,
    make: str,
    model: str,
    serial: str,
    actor: Principal,
    enabled: bool = True,
    provisioned: bool = True,
) -> Device:
    """Provision a device. It is not active for Cloud Connector until activated itself,
    whatever the state of its merchant (the seed's rule)."""
    require_authority(actor, Kind.DEVICE)
    _check_store(merchant=merchant, store=store)
    device = Device(
        tenant_id=merchant.merchant_aggregator.tenant_id,
        merchant=merchant,
        store=store,
        make=make,
        model=model,
        serial=serial,
        enabled=enabled,
        provisioned=provisioned,
    )
    _check_unique_serial(device=device, actor=actor)
    validated(device)
    try:
        with transaction.atomic():
            device.save()
    except IntegrityError:
        # Another request created the same serial between our check and our insert.
        raise _serial_refused(device=device, actor=actor) from None
    audit_record(actor=actor, action="device.create", obj=device, tenant_id=device.tenant_id)
    return device


DEVICE_UPDATABLE = ("store", "make", "model", "serial", "enabled", "provisioned")


@_audits_serial_refusals
@transaction.atomic
def device_update(*, device: Device, actor: Principal, **changes) -> Device:
    """Change a device's store, identity or state. Disabling it ends its live session;
    moving it releases the claims of holders that no longer reach it."""
    require_authority(actor, Kind.DEVICE)
    unknown = set(changes) - set(DEVICE_UPDATABLE)
    if unknown:
        raise Invalid({field: ["This field cannot be changed."] for field in unknown})
    # Only a new make or serial is checked (and may be rate limited): a PUT repeating them,
    # or a terminal switched off during an incident, never is.
    identity_changed = any(
        str(changes[name]).lower() != getattr(device, name).lower() for name in ("make", "serial") if name in changes
    )
    previous_store_id = device.store_id
    for field, value in changes.items():
        setattr(device, field, value)
    if "store" in changes:
        _check_store(merchant=device.merchant, store=device.store)
    if identity_changed:
        _check_unique_serial(device=device, actor=actor)
    validated(device)
    watched = (
        Device.objects.filter(pk=device.pk) if {"enabled", "provisioned"} & set(changes) else Device.objects.none()
    )
    with history.activation_watch(watched):
        device.save()
    audit_record(
        actor=actor,
        action="device.update",
        obj=device,
        tenant_id=device.tenant_id,
        data={k: (v.pk if hasattr(v, "pk") else v) for k, v in changes.items()},
    )
    if {"enabled", "provisioned"} & set(changes):
        events.devices_changed(devices=Device.objects.filter(pk=device.pk))
    if device.store_id != previous_store_id:
        events.device_moved(device_id=device.pk)
    return device


def device_set_enabled(*, device: Device, enabled: bool, actor: Principal) -> Device:
    return device_update(device=device, enabled=enabled, actor=actor)


@transaction.atomic
def device_delete(*, device: Device, actor: Principal) -> None:
    require_authority(actor, Kind.DEVICE)
    audit_record(actor=actor, action="device.delete", obj=device, tenant_id=device.tenant_id)
    events.devices_changed(devices=Device.objects.filter(pk=device.pk), deleted=True)
    device.delete()


@transaction.atomic
def device_session_end(*, session: DeviceSession, actor: Principal, reason: str = "ended_by_operator") -> None:
    """End a live device session at an operator's request (REST API, portal); its sockets
    close with 4410. An ended session is a conflict, not a silent success."""
    from connector.sessions import sessions_end

    require_authority(actor, Kind.DEVICE_SESSION)
    if not sessions_end(session_ids=[session.pk], reason=reason):
        raise Conflict("The session has already ended.")
    device = session.device
    audit_record(
        actor=actor,
        action="device.session_end",
        obj=device,
        tenant_id=device.tenant_id,
        data={"session_id": session.pk},
    )
