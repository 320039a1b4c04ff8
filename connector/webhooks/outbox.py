"""The outbox: recorded events become webhook deliveries, in the fact's own transaction.

connector.history calls `fan_out` in the transaction that records the events, so the
deliveries and their tasks (django-tasks' database backend inserts the task row with the ORM)
commit or roll back with the fact: nothing is lost between a commit and an enqueue, and
nothing is sent for a fact that did not happen.

It runs on every device going online or offline (5,000 terminals reconnecting at once), and
most deployments have few endpoints: with none in scope it costs exactly one query.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from django.db.models import Q
from django.utils import timezone

from accounts.prepared import Prepared
from connector.models import Event, WebhookDelivery, WebhookEndpoint
from connector.webhooks.delivery import enqueue

_ENDPOINT_COLUMNS = ("pk", "events", "merchant_id", "merchant_aggregator__merchants__id")


def _endpoints_in_scope(_shape, *, merchant_ids: list[int]):
    return (
        WebhookEndpoint.objects.filter(enabled=True)
        .filter(Q(merchant_id__in=merchant_ids) | Q(merchant_aggregator__merchants__id__in=merchant_ids))
        .values(*_ENDPOINT_COLUMNS)
    )


_endpoint_rows = Prepared(_endpoints_in_scope, required=["merchant_ids"])


def _subscriptions(merchant_ids: set[int]) -> dict[int, list[tuple[int, frozenset[str]]]]:
    """The enabled endpoints in scope of each merchant, with the types each wants: the
    merchant's own and its MA's, found in one query (the MA's endpoints through a join on the
    MA's merchants, so the merchant → MA step costs no query of its own)."""
    if len(merchant_ids) == 1:
        # One device's fact (a terminal connecting): the SQL compiled once, not per event.
        rows = _endpoint_rows.rows(None, merchant_ids=list(merchant_ids))
    else:
        rows = _endpoints_in_scope(None, merchant_ids=list(merchant_ids))
    found: dict[int, list[tuple[int, frozenset[str]]]] = defaultdict(list)
    for row in rows:
        pk, types, own_merchant, ma_merchant = (row[name] for name in _ENDPOINT_COLUMNS)
        merchant = own_merchant if own_merchant in merchant_ids else ma_merchant
        if merchant in merchant_ids and isinstance(types, list):
            found[merchant].append((pk, frozenset(types)))
    return found


def fan_out(events: Sequence[Event], *, merchant_of: Mapping[int, int]) -> int:
    """Create one pending delivery per (event, endpoint in scope subscribed to its type) and
    enqueue their tasks (one per endpoint, chunked), in the caller's transaction. `merchant_of`
    maps each event's device id to its merchant id. Returns the number of deliveries."""
    if not events:
        return 0
    merchant_ids = {merchant_of[event.device_id] for event in events}
    subscriptions = _subscriptions(merchant_ids)
    if not subscriptions:
        return 0
    now = timezone.now()
    deliveries: list[WebhookDelivery] = []
    for event in events:
        endpoints = {pk for pk, types in subscriptions.get(merchant_of[event.device_id], ()) if event.type in types}
        deliveries.extend(
            WebhookDelivery(
                endpoint_id=pk,
                event=event,
                status=WebhookDelivery.Status.PENDING,
                created_at=event.occurred_at,
                next_attempt_at=now,
            )
            for pk in sorted(endpoints)
        )
    if not deliveries:
        return 0
    WebhookDelivery.objects.bulk_create(deliveries)
    by_endpoint: dict[int, list[int]] = defaultdict(list)
    for delivery in deliveries:
        by_endpoint[delivery.endpoint_id].append(delivery.pk)
    for ids in by_endpoint.values():
        enqueue(ids, run_after=now)
    return len(deliveries)
