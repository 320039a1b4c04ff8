"""Delivering webhooks: the worker task, retries with backoff, the pause of a failing
receiver, the manual retry and the sweep of lost tasks (contract v1.1 §16).

At least once, never twice at the same moment. A delivery is due when its
`next_attempt_at` has come. Before sending, a worker claims it with a compare-and-set that
pushes `next_attempt_at` past the attempt's timeout (a lease): any other task for the same
delivery (a duplicate from the sweep, a manual retry's) then finds it not due and leaves it.
A worker killed mid-attempt leaves a lease that expires; its task row stays RUNNING in
django-tasks forever, so `sweep` re-enqueues deliveries overdue by more than LOST_AFTER.

One receiver cannot hold the others up. Tasks carry the deliveries of one endpoint. A failed
attempt pauses its endpoint (5 s, doubling to 10 min) and, while paused, the endpoint's
deliveries are deferred to the end of the pause without a request: a receiver that never
answers costs one worker one timeout per pause window, not one per delivery.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from django.db import transaction
from django.utils import timezone
from django_tasks import task
from django_tasks_db.models import DBTaskResult

from connector.conf import connector_settings
from connector.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from connector.webhooks import transport
from connector.webhooks.payload import encode, event_body, headers

logger = logging.getLogger(__name__)

QUEUE = "webhooks"
#: Deliveries per task: bounded so that one task's run stays short and its arguments small.
CHUNK = 100
#: Backoff of retries: full jitter over a ceiling that starts here and doubles to MAX_RETRY.
FIRST_RETRY = 10.0
MAX_RETRY = 2 * 3600.0
#: The pause of a failing endpoint: from FIRST_PAUSE doubling to MAX_PAUSE.
FIRST_PAUSE = 5.0
MAX_PAUSE = 600.0
#: A claimed delivery is not due again until its attempt's timeout plus this margin has passed.
LEASE_MARGIN = 30.0
#: A pending delivery overdue by more than this lost its task (`sweep`).
LOST_AFTER = timedelta(minutes=2)
#: Deliveries re-enqueued by one sweep at most (the next sweep takes the rest).
SWEEP_LIMIT = 5000

ENDPOINT_DISABLED = "endpoint disabled"
OPEN = (WebhookDelivery.Status.PENDING, WebhookDelivery.Status.RETRYING)


def retry_delay(attempts: int, *, rng: random.Random | None = None) -> float:
    """Seconds until the retry after `attempts` failed attempts: full jitter (uniform
    between 1 s and a ceiling of FIRST_RETRY doubling per attempt, at most MAX_RETRY), so
    the deliveries that failed together (a receiver's outage) do not come back together."""
    ceiling = min(MAX_RETRY, FIRST_RETRY * 2 ** min(max(attempts, 1) - 1, 30))
    return max(1.0, (rng or random).uniform(0, ceiling))


def pause_for(failures: int) -> float:
    """Seconds a receiver that failed `failures` times in a row is left alone."""
    return min(MAX_PAUSE, FIRST_PAUSE * 2 ** min(max(failures, 1) - 1, 30))


def retry_deadline(delivery: WebhookDelivery) -> datetime:
    return delivery.created_at + timedelta(hours=connector_settings.WEBHOOK_RETRY_HOURS)


def enqueue(delivery_ids: Iterable[int], *, run_after: datetime | None = None, manual: bool = False) -> int:
    """Enqueue delivery tasks for these ids, CHUNK per task, in the caller's transaction (the
    database backend writes the task row there: it commits or rolls back with the fact).
    `run_after` is always set, so that `_workers_behind` can tell a backlog by it."""
    ids = list(delivery_ids)
    when = run_after or timezone.now()
    for start in range(0, len(ids), CHUNK):
        deliver.using(run_after=when).enqueue(ids[start : start + CHUNK], manual=manual)
    return len(ids)


@task(queue_name=QUEUE)
def deliver(delivery_ids: list[int], manual: bool = False) -> int:
    """The worker's task: attempt each delivery in turn. Returns how many were delivered."""
    return send(delivery_ids, manual=manual)


@dataclass
class _Batch:
    delivered: int = 0
    deferred: dict[datetime, list[int]] | None = None

    def defer(self, delivery_id: int, until: datetime) -> None:
        if self.deferred is None:
            self.deferred = defaultdict(list)
        self.deferred[until].append(delivery_id)


def send(delivery_ids: Iterable[int], *, manual: bool = False) -> int:
    """Attempt these deliveries now (the task's body, callable directly in tests)."""
    batch = _Batch()
    for delivery_id in delivery_ids:
        _attempt(delivery_id, manual=manual, batch=batch)
    for until, ids in (batch.deferred or {}).items():
        with transaction.atomic():
            WebhookDelivery.objects.filter(pk__in=ids, status__in=OPEN).update(next_attempt_at=until)
            enqueue(ids, run_after=until)
    return batch.delivered


def _attempt(delivery_id: int, *, manual: bool, batch: _Batch) -> None:
    now = timezone.now()
    delivery = WebhookDelivery.objects.select_related("endpoint", "event").filter(pk=delivery_id).first()
    if delivery is None or delivery.status not in OPEN:
        return
    if delivery.next_attempt_at is not None and delivery.next_attempt_at > now:
        return  # scheduled later (its own task will come) or claimed by a worker right now
    endpoint = delivery.endpoint
    if not manual and not endpoint.enabled:
        _give_up(delivery, ENDPOINT_DISABLED)
        return
    if not manual and endpoint.paused_until is not None and endpoint.paused_until > now:
        batch.defer(delivery.pk, endpoint.paused_until)
        return
    timeout = connector_settings.WEBHOOK_TIMEOUT
    if not _claim(delivery, until=now + timedelta(seconds=timeout + LEASE_MARGIN)):
        return
    raw = encode(event_body(delivery.event))
    outcome = transport.post(endpoint.url, raw, headers(endpoint.secret, raw), timeout=timeout)
    _record(delivery, outcome, attempted_at=now, manual=manual)
    if outcome.succeeded:
        batch.delivered += 1


def _claim(delivery: WebhookDelivery, *, until: datetime) -> bool:
    """Take the delivery for one attempt: true for exactly one of the workers that read the
    same `next_attempt_at` (compare-and-set)."""
    claimed = WebhookDelivery.objects.filter(
        pk=delivery.pk, status=delivery.status, next_attempt_at=delivery.next_attempt_at
    ).update(next_attempt_at=until)
    return claimed == 1


def _give_up(delivery: WebhookDelivery, error: str) -> None:
    WebhookDelivery.objects.filter(pk=delivery.pk, status__in=OPEN).update(
        status=WebhookDelivery.Status.FAILED, next_attempt_at=None, error=error
    )


def _record(delivery: WebhookDelivery, outcome: transport.Outcome, *, attempted_at: datetime, manual: bool) -> None:
    """Write what the attempt came to, and what happens next, in one transaction: the
    attempt row, the delivery, the endpoint's pause, and the retry's task."""
    now = timezone.now()
    with transaction.atomic():
        WebhookAttempt.objects.create(
            delivery=delivery,
            attempted_at=attempted_at,
            response_code=outcome.response_code,
            duration_ms=outcome.duration_ms,
            error=outcome.error,
            succeeded=outcome.succeeded,
            manual=manual,
        )
        delivery.attempts += 1
        delivery.last_attempt_at = attempted_at
        delivery.response_code = outcome.response_code
        delivery.duration_ms = outcome.duration_ms
        delivery.error = outcome.error
        if outcome.succeeded:
            delivery.status = WebhookDelivery.Status.DELIVERED
            delivery.next_attempt_at = None
            _endpoint_recovered(delivery.endpoint_id)
        else:
            paused_until = _endpoint_failed(delivery.endpoint_id, now)
            _schedule_retry(delivery, now)
            _log_failure(delivery, outcome, paused_until)
        delivery.save(
            update_fields=[
                "attempts",
                "last_attempt_at",
                "response_code",
                "duration_ms",
                "error",
                "status",
                "next_attempt_at",
            ]
        )


def _schedule_retry(delivery: WebhookDelivery, now: datetime) -> None:
    deadline = retry_deadline(delivery)
    if now >= deadline:
        delivery.status = WebhookDelivery.Status.FAILED
        delivery.next_attempt_at = None
        return
    delivery.status = WebhookDelivery.Status.RETRYING
    delivery.next_attempt_at = min(now + timedelta(seconds=retry_delay(delivery.attempts)), deadline)
    enqueue([delivery.pk], run_after=delivery.next_attempt_at)


def _endpoint_recovered(endpoint_id: int) -> None:
    # Conditional: a healthy endpoint's row is not written on every delivery.
    WebhookEndpoint.objects.filter(pk=endpoint_id).exclude(failures=0, paused_until=None).update(
        failures=0, paused_until=None
    )


def _endpoint_failed(endpoint_id: int, now: datetime) -> datetime | None:
    """Count the failure and pause the endpoint; the row lock orders concurrent failures of
    the same receiver, so each doubles the pause once."""
    endpoint = WebhookEndpoint.objects.select_for_update().filter(pk=endpoint_id).first()
    if endpoint is None:
        return None
    endpoint.failures += 1
    endpoint.paused_until = now + timedelta(seconds=pause_for(endpoint.failures))
    endpoint.save(update_fields=["failures", "paused_until"])
    return endpoint.paused_until


def _log_failure(delivery: WebhookDelivery, outcome: transport.Outcome, paused_until: datetime | None) -> None:
    # The host only: a receiver's path or query may hold its own token; never the body.
    logger.info(
        "webhook attempt failed: delivery=%s endpoint=%s host=%s code=%s error=%r duration_ms=%s "
        "attempts=%s status=%s next_attempt_at=%s paused_until=%s",
        delivery.pk,
        delivery.endpoint_id,
        urlsplit(delivery.endpoint.url).hostname,
        outcome.response_code,
        outcome.error,
        outcome.duration_ms,
        delivery.attempts,
        delivery.status,
        delivery.next_attempt_at.isoformat() if delivery.next_attempt_at else None,
        paused_until.isoformat() if paused_until else None,
    )


def retry_now(delivery: WebhookDelivery) -> None:
    """Send a delivery again now, whatever its state (failed, delivered, waiting for a retry)
    and whatever its endpoint's pause or switch: the user asked for it. A failure counts as
    usual (attempt row, backoff until the retry window closes)."""
    now = timezone.now()
    with transaction.atomic():
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDelivery.Status.RETRYING, next_attempt_at=now
        )
        enqueue([delivery.pk], run_after=now, manual=True)
    delivery.status = WebhookDelivery.Status.RETRYING
    delivery.next_attempt_at = now


def _workers_behind(cutoff: datetime) -> bool:
    """Whether the webhooks queue holds a task that was due before `cutoff` and is still
    waiting: then the workers are behind (or down), not the tasks lost, and re-enqueueing
    would only lengthen the queue."""
    return DBTaskResult.objects.filter(status="READY", queue_name=QUEUE, run_after__lt=cutoff).exists()


def sweep(now: datetime | None = None) -> int:
    """Re-enqueue the pending and retrying deliveries overdue by more than LOST_AFTER (their
    task was lost: a worker killed mid-task leaves it RUNNING for good). Idempotent: each is
    made due at `now`, so the next sweep leaves it alone for LOST_AFTER. Returns how many."""
    moment = now or timezone.now()
    cutoff = moment - LOST_AFTER
    if _workers_behind(cutoff):
        return 0
    with transaction.atomic():
        # Locked so that a worker's claim waits for this sweep and then finds its
        # compare-and-set failed, instead of sending while the sweep enqueues the same.
        lost = list(
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .filter(status__in=OPEN, next_attempt_at__lt=cutoff)
            .order_by("next_attempt_at")
            .values_list("pk", "endpoint_id")[:SWEEP_LIMIT]
        )
        if not lost:
            return 0
        WebhookDelivery.objects.filter(pk__in=[pk for pk, _ in lost]).update(next_attempt_at=moment)
        by_endpoint: dict[int, list[int]] = defaultdict(list)
        for pk, endpoint_id in lost:
            by_endpoint[endpoint_id].append(pk)
        for ids in by_endpoint.values():
            enqueue(ids, run_after=moment)
    logger.info("webhooks sweep: %s lost deliveries enqueued again", len(lost))
    return len(lost)
