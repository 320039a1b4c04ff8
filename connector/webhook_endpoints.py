"""Webhook endpoints as people and provisioning clients manage them (v1.1 §16): who sees
which, and the writes (create, change, delete, rotate the secret, send a delivery again).

The REST API (connector/api/webhooks.py) and the portal (portal/views/webhooks.py) both go
through here, so the rules are the same on both edges: an endpoint belongs to a merchant
aggregator or to a merchant, never both; a merchant's people see and manage only their
merchant's endpoints, not their aggregator's; the URL passes the SSRF guard of
connector.webhooks.guard; the events are a non-empty set of WEBHOOK_EVENT_TYPES. Sending
is connector.webhooks' business: this module only hands it a delivery to retry.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import OuterRef, Q, QuerySet, Subquery

from accounts.audit import audit_record
from accounts.errors import Invalid, NotAllowed
from accounts.models import Merchant, MerchantAggregator
from accounts.permissions import Kind
from accounts.scope import Level, Principal, merchant_aggregators_in_scope
from accounts.services import require_authority
from connector.models import WEBHOOK_EVENT_TYPES, WebhookDelivery, WebhookEndpoint
from connector.webhooks.delivery import retry_now
from connector.webhooks.guard import validate_url
from connector.webhooks.secrets import new_secret

ONE_SCOPE = "Give either a merchant aggregator or a merchant: the endpoint receives the events of its devices."
BOTH_SCOPES = "Give a merchant aggregator or a merchant, not both."
AGGREGATOR_LEVEL = "An endpoint of a merchant aggregator is managed at the aggregator's level."


# --- reads ---------------------------------------------------------------------------------


def webhook_endpoints_in_scope(*, principal: Principal) -> QuerySet[WebhookEndpoint]:
    """The endpoints a principal sees: an aggregator's own and its merchants'; a merchant's
    own only (its aggregator's endpoint receives more than the merchant's devices' events);
    nothing beneath a merchant."""
    queryset = WebhookEndpoint.objects.select_related("merchant_aggregator", "merchant__merchant_aggregator")
    level = principal.level
    if level == Level.PLATFORM:
        return queryset
    if level == Level.TENANT:
        return queryset.filter(tenant_id=principal.tenant_id)
    if level == Level.MERCHANT_AGGREGATOR:
        ma = principal.merchant_aggregator_id
        return queryset.filter(Q(merchant_aggregator_id=ma) | Q(merchant__merchant_aggregator_id=ma))
    if level == Level.MERCHANT:
        return queryset.filter(merchant_id=principal.merchant_id)
    return queryset.none()


def webhook_aggregators_in_scope(*, principal: Principal) -> QuerySet[MerchantAggregator]:
    """The aggregators a principal may give an endpoint to: a merchant's people see their
    aggregator, but its endpoints are not theirs to make."""
    if principal.level > Level.MERCHANT_AGGREGATOR:
        return MerchantAggregator.objects.none()
    return merchant_aggregators_in_scope(principal=principal)


def with_last_delivery_status(queryset: QuerySet[WebhookEndpoint]) -> QuerySet[WebhookEndpoint]:
    """Each endpoint with `last_delivery_status`: the status of its newest delivery, or None."""
    newest = WebhookDelivery.objects.filter(endpoint=OuterRef("pk")).order_by("-created_at", "-id")
    return queryset.annotate(last_delivery_status=Subquery(newest.values("status")[:1]))


def webhook_deliveries(*, endpoint: WebhookEndpoint, status: str | None = None) -> QuerySet[WebhookDelivery]:
    """An endpoint's delivery log, newest first, each with its event and its attempts."""
    queryset = (
        WebhookDelivery.objects.filter(endpoint=endpoint)
        .select_related("event")
        .prefetch_related("attempt_log")
        .order_by("-created_at", "-id")
    )
    return queryset.filter(status=status) if status else queryset


# --- writes --------------------------------------------------------------------------------


def clean_events(events: Iterable[str]) -> list[str]:
    """The event types as given, checked: at least one, each known, none twice."""
    given = list(events)
    unknown = [name for name in given if name not in WEBHOOK_EVENT_TYPES]
    if unknown:
        raise Invalid({"events": [f"Unknown event type {name!r}." for name in unknown[:10]]})
    if not given:
        raise Invalid({"events": ["Choose at least one event type."]})
    if len(set(given)) != len(given):
        raise Invalid({"events": ["Each event type may be given only once."]})
    return given


def clean_url(url: str) -> str:
    """A URL the delivery worker may send to: the guard's rules, as a field error."""
    try:
        validate_url(url)
    except ValidationError as error:
        raise Invalid({"url": error.messages}) from None
    return url


def _require_scope_authority(actor: Principal, endpoint: WebhookEndpoint) -> None:
    require_authority(actor, Kind.WEBHOOK_ENDPOINT)
    if endpoint.merchant_aggregator_id and actor.level > Level.MERCHANT_AGGREGATOR:
        raise NotAllowed(AGGREGATOR_LEVEL)


def _audit(actor: Principal, action: str, endpoint: WebhookEndpoint, data: dict | None = None) -> None:
    # Never the secret: the audit log is read by more people than the endpoint's owners.
    audit_record(
        actor=actor, action=f"webhook_endpoint.{action}", obj=endpoint, tenant_id=endpoint.tenant_id, data=data
    )


# Endpoints one merchant or one MA may have: every event of its devices becomes a delivery
# for each of them.
MAX_ENDPOINTS_PER_SCOPE = 20


@transaction.atomic
def webhook_endpoint_create(
    *,
    url: str,
    events: Iterable[str],
    actor: Principal,
    merchant_aggregator: MerchantAggregator | None = None,
    merchant: Merchant | None = None,
    enabled: bool = True,
) -> WebhookEndpoint:
    """A new endpoint with a new signing secret (read it from `secret` now: it is shown once).
    The tenant is the scope's tenant."""
    if merchant_aggregator is not None and merchant is not None:
        raise Invalid({"non_field_errors": [BOTH_SCOPES]})
    if merchant_aggregator is None and merchant is None:
        raise Invalid({"non_field_errors": [ONE_SCOPE]})
    tenant_id = (merchant_aggregator or merchant.merchant_aggregator).tenant_id
    endpoint = WebhookEndpoint(
        tenant_id=tenant_id,
        merchant_aggregator=merchant_aggregator,
        merchant=merchant,
        enabled=enabled,
        secret=new_secret(),
    )
    _require_scope_authority(actor, endpoint)
    endpoint.url = clean_url(url)
    endpoint.events = clean_events(events)
    held = WebhookEndpoint.objects.filter(merchant_aggregator=merchant_aggregator, merchant=merchant).count()
    if held >= MAX_ENDPOINTS_PER_SCOPE:
        # Each endpoint multiplies every device event into a delivery and a task.
        raise Invalid({"non_field_errors": [f"At most {MAX_ENDPOINTS_PER_SCOPE} webhook endpoints per scope."]})
    endpoint.save()
    _audit(actor, "create", endpoint, {"url": endpoint.url, "events": endpoint.events, "enabled": enabled})
    return endpoint


@transaction.atomic
def webhook_endpoint_update(
    *,
    endpoint: WebhookEndpoint,
    actor: Principal,
    url: str | None = None,
    events: Iterable[str] | None = None,
    enabled: bool | None = None,
) -> WebhookEndpoint:
    """Change what is given of the URL, the event types and whether it is enabled. A
    re-enabled endpoint starts afresh: no pause left from its failures."""
    _require_scope_authority(actor, endpoint)
    changes: dict = {}
    if url is not None and url != endpoint.url:
        changes["url"] = clean_url(url)
    if events is not None:
        cleaned = clean_events(events)
        if cleaned != endpoint.events:
            changes["events"] = cleaned
    if enabled is not None and enabled != endpoint.enabled:
        changes["enabled"] = enabled
        if enabled:
            changes.update(paused_until=None, failures=0)
    if changes:
        for field, value in changes.items():
            setattr(endpoint, field, value)
        endpoint.save(update_fields=list(changes))
        _audit(actor, "update", endpoint, {k: v for k, v in changes.items() if k in ("url", "events", "enabled")})
    return endpoint


@transaction.atomic
def webhook_endpoint_delete(*, endpoint: WebhookEndpoint, actor: Principal) -> None:
    """Delete the endpoint and its delivery log; nothing more is sent to it."""
    _require_scope_authority(actor, endpoint)
    _audit(actor, "delete", endpoint, {"url": endpoint.url})
    endpoint.delete()


@transaction.atomic
def webhook_endpoint_rotate_secret(*, endpoint: WebhookEndpoint, actor: Principal) -> str:
    """A new signing secret, returned in clear once. The old one signs nothing more: the
    worker reads the secret from the row when it signs each attempt."""
    _require_scope_authority(actor, endpoint)
    endpoint.secret = new_secret()
    endpoint.save(update_fields=["secret"])
    _audit(actor, "rotate_secret", endpoint)
    return endpoint.secret


@transaction.atomic
def webhook_delivery_retry(*, delivery: WebhookDelivery, actor: Principal) -> WebhookDelivery:
    """Send a delivery again now, whatever its status (a receiver fixed after the retries
    gave up, or one that lost what it got). The task is enqueued in this transaction."""
    endpoint = delivery.endpoint
    _require_scope_authority(actor, endpoint)
    retry_now(delivery)
    _audit(actor, "retry", endpoint, {"delivery": delivery.pk, "event_id": str(delivery.event_id)})
    return delivery
