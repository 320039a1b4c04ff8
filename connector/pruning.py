"""Pruning the history: connection rows and recorded events older than CC_HISTORY_DAYS
(`manage.py prune_history`, run from cron: docs/operations.md).

What is never pruned, whatever its age:

- an open connection (a device online for longer than the horizon keeps its current period);
- a device's newest event: its `seq` is where the device's numbering stands, and it is the
  last thing the portal can say about a device that has been silent for months;
- an event whose webhook delivery is still pending or retrying: deleting it would delete the
  delivery (cascade) and lose a fact a receiver has not had yet. It goes on a later run.

Deletes go in batches of their own transaction each, so that a first run over a large
backlog neither holds locks for long nor builds one huge transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from connector.models import DeviceConnection, Event, WebhookAttempt, WebhookDelivery

DEFAULT_BATCH_SIZE = 1000
UNSENT = [WebhookDelivery.Status.PENDING, WebhookDelivery.Status.RETRYING]


@dataclass
class Pruned:
    """What a run deleted, and the old events it had to keep for their deliveries."""

    cutoff: datetime
    connections: int = 0
    events: int = 0
    deliveries: int = 0
    attempts: int = 0
    kept_for_delivery: int = 0


def prunable_connections(*, cutoff: datetime) -> QuerySet[DeviceConnection]:
    """Closed connections that began before `cutoff`."""
    return DeviceConnection.objects.filter(connected_at__lt=cutoff, disconnected_at__isnull=False)


def _unsent_delivery() -> Exists:
    return Exists(WebhookDelivery.objects.filter(event=OuterRef("pk"), status__in=UNSENT))


def prunable_events(*, cutoff: datetime) -> QuerySet[Event]:
    """Events before `cutoff` that a newer event of their device follows and that no
    delivery still waits to send."""
    newer = Event.objects.filter(device=OuterRef("device"), seq__gt=OuterRef("seq"))
    return Event.objects.filter(occurred_at__lt=cutoff).filter(Exists(newer)).exclude(_unsent_delivery())


def history_prune(*, days: int, batch_size: int = DEFAULT_BATCH_SIZE, now: datetime | None = None) -> Pruned:
    """Delete the history older than `days` days, oldest first, `batch_size` rows a time."""
    if days < 1 or batch_size < 1:
        raise ValueError("days and batch_size must be positive")
    cutoff = (now or timezone.now()) - timedelta(days=days)
    pruned = Pruned(cutoff=cutoff)
    connections = prunable_connections(cutoff=cutoff)
    while batch := _next_batch(connections.order_by("connected_at"), batch_size):
        with transaction.atomic():
            # The conditions again, on the rows themselves: one may have changed since.
            deleted, _ = connections.filter(pk__in=batch).delete()
        pruned.connections += deleted
        if deleted == 0:
            break
    events = prunable_events(cutoff=cutoff)
    while batch := _next_batch(events.order_by("occurred_at"), batch_size):
        with transaction.atomic():
            _, per_model = events.filter(pk__in=batch).delete()
        deleted = per_model.get(Event._meta.label, 0)
        pruned.events += deleted
        pruned.deliveries += per_model.get(WebhookDelivery._meta.label, 0)
        pruned.attempts += per_model.get(WebhookAttempt._meta.label, 0)
        if deleted == 0:
            break
    pruned.kept_for_delivery = Event.objects.filter(occurred_at__lt=cutoff).filter(_unsent_delivery()).count()
    return pruned


def _next_batch(queryset: QuerySet, size: int) -> list:
    return list(queryset.values_list("pk", flat=True)[:size])
