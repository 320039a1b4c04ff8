"""`manage.py prune_history`: what is older than CC_HISTORY_DAYS goes, in batches, with the
webhook deliveries of the events it deletes; an open connection, a device's newest event and
an event still waiting for a delivery stay."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from connector.models import (
    DeviceConnection,
    DisconnectReason,
    Event,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from connector.pruning import history_prune

pytestmark = pytest.mark.django_db

NOW = timezone.now().replace(microsecond=0)
CUTOFF = NOW - timedelta(days=30)
JUST = timedelta(seconds=1)


def connection_at(device, connected_at, *, closed: bool = True) -> DeviceConnection:
    return DeviceConnection.objects.create(
        device=device,
        session_id=f"s-{uuid.uuid4().hex[:8]}",
        connected_at=connected_at,
        disconnected_at=connected_at + timedelta(minutes=1) if closed else None,
        reason=DisconnectReason.CLOSED if closed else "",
    )


class Events:
    """A device's events with increasing seq, as connector.history numbers them."""

    def __init__(self, device) -> None:
        self.device = device
        self.seq = 0

    def at(self, occurred_at) -> Event:
        self.seq += 1
        return Event.objects.create(
            device=self.device,
            type=Event.Type.SESSION_CLAIMED,
            session_id="s",
            seq=self.seq,
            occurred_at=occurred_at,
            data={"tsn": self.device.tsn, "claimed_by": "POS Till 1"},
        )


@pytest.fixture
def endpoint(world) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(
        tenant=world.tenant,
        merchant=world.merchant,
        url="https://hooks.example.com/cc",
        events=["session.claimed"],
        secret="whsec_test",
    )


def delivery(endpoint, event, status, *, attempts: int = 1) -> WebhookDelivery:
    made = WebhookDelivery.objects.create(endpoint=endpoint, event=event, status=status, created_at=event.occurred_at)
    for n in range(attempts):
        WebhookAttempt.objects.create(
            delivery=made, attempted_at=event.occurred_at + timedelta(seconds=n), duration_ms=5
        )
    return made


def exists(obj) -> bool:
    return type(obj).objects.filter(pk=obj.pk).exists()


# --- connections ------------------------------------------------------------------------------


def test_closed_connections_that_began_before_the_horizon_go_and_the_rest_stay(world):
    old = connection_at(world.device, CUTOFF - JUST)
    older = connection_at(world.other_device, CUTOFF - timedelta(days=300))
    at_the_edge = connection_at(world.device, CUTOFF)
    recent = connection_at(world.device, NOW - timedelta(days=1))
    still_open = connection_at(world.device, CUTOFF - timedelta(days=60), closed=False)

    pruned = history_prune(days=30, now=NOW)

    assert pruned.connections == 2 and pruned.cutoff == CUTOFF
    assert not exists(old) and not exists(older)
    assert exists(at_the_edge) and exists(recent)
    # A device online for two months keeps its current period.
    assert exists(still_open)


def test_a_connection_that_began_before_the_horizon_and_ended_after_it_goes(world):
    long_one = connection_at(world.device, CUTOFF - timedelta(hours=1))
    DeviceConnection.objects.filter(pk=long_one.pk).update(disconnected_at=CUTOFF + timedelta(hours=5))
    assert history_prune(days=30, now=NOW).connections == 1
    assert not exists(long_one)


# --- events and their deliveries ---------------------------------------------------------------


def test_old_events_go_but_each_devices_newest_stays(world):
    home, other = Events(world.device), Events(world.other_device)
    old = [home.at(CUTOFF - timedelta(days=d)) for d in (40, 35, 31)]
    recent = home.at(NOW - timedelta(hours=1))
    silent_device_last = [other.at(CUTOFF - timedelta(days=d)) for d in (90, 80)]

    pruned = history_prune(days=30, now=NOW)

    assert pruned.events == 4
    assert not any(exists(event) for event in old)
    assert exists(recent)
    # The other device has been silent for months: its last event stays, its older one goes.
    assert not exists(silent_device_last[0]) and exists(silent_device_last[1])


def test_an_event_at_the_horizon_stays(world):
    events = Events(world.device)
    before, edge, _ = events.at(CUTOFF - JUST), events.at(CUTOFF), events.at(NOW)
    history_prune(days=30, now=NOW)
    assert not exists(before) and exists(edge)


def test_deliveries_of_pruned_events_go_with_them_unless_still_to_be_sent(world, endpoint):
    events = Events(world.device)
    delivered = delivery(endpoint, events.at(CUTOFF - timedelta(days=3)), WebhookDelivery.Status.DELIVERED)
    given_up = delivery(endpoint, events.at(CUTOFF - timedelta(days=2)), WebhookDelivery.Status.FAILED, attempts=3)
    pending = delivery(endpoint, events.at(CUTOFF - timedelta(days=2)), WebhookDelivery.Status.PENDING, attempts=0)
    retrying = delivery(endpoint, events.at(CUTOFF - JUST), WebhookDelivery.Status.RETRYING, attempts=2)
    events.at(NOW)

    pruned = history_prune(days=30, now=NOW)

    assert (pruned.events, pruned.deliveries, pruned.attempts) == (2, 2, 4)
    assert not exists(delivered.event) and not exists(delivered)
    assert not exists(given_up.event) and not WebhookAttempt.objects.filter(delivery_id=given_up.pk).exists()
    # A receiver has not had these yet: the events and their deliveries wait for a later run.
    assert exists(pending.event) and exists(pending)
    assert exists(retrying.event) and WebhookAttempt.objects.filter(delivery=retrying).count() == 2
    assert pruned.kept_for_delivery == 2

    WebhookDelivery.objects.filter(pk__in=[pending.pk, retrying.pk]).update(status=WebhookDelivery.Status.DELIVERED)
    later = history_prune(days=30, now=NOW)
    assert (later.events, later.deliveries, later.kept_for_delivery) == (2, 2, 0)


def test_small_batches_delete_everything_a_large_one_would(world):
    events = Events(world.device)
    for n in range(7):
        connection_at(world.device, CUTOFF - timedelta(days=1, minutes=n))
        events.at(CUTOFF - timedelta(days=1, minutes=10 - n))
    events.at(NOW)
    pruned = history_prune(days=30, batch_size=2, now=NOW)
    assert (pruned.connections, pruned.events) == (7, 7)
    assert DeviceConnection.objects.count() == 0
    assert Event.objects.count() == 1


@pytest.mark.parametrize("days, batch_size", [(0, 10), (-1, 10), (30, 0)])
def test_a_horizon_or_batch_that_is_not_positive_is_refused(world, days, batch_size):
    with pytest.raises(ValueError):
        history_prune(days=days, batch_size=batch_size, now=NOW)


# --- the command ----------------------------------------------------------------------------------


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("prune_history", *args, stdout=out)
    return out.getvalue()


def test_the_command_keeps_cc_history_days_and_says_what_it_deleted(world, endpoint, settings):
    now = timezone.now()
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "HISTORY_DAYS": 10}
    events = Events(world.device)
    gone = connection_at(world.device, now - timedelta(days=11))
    kept = connection_at(world.device, now - timedelta(days=9))
    delivery(endpoint, events.at(now - timedelta(days=12)), WebhookDelivery.Status.DELIVERED, attempts=2)
    delivery(endpoint, events.at(now - timedelta(days=11)), WebhookDelivery.Status.RETRYING)
    events.at(now - timedelta(days=1))

    output = run()

    assert "older than 10 days" in output
    assert "1 connections, 1 events, 1 webhook deliveries and 2 delivery attempts deleted." in output
    assert "Kept 1 older events whose webhook deliveries are still pending or retrying" in output
    assert not exists(gone) and exists(kept)


def test_the_command_takes_another_horizon_for_one_run(world):
    now = timezone.now()
    recent = connection_at(world.device, now - timedelta(days=3))
    output = run("--days", "2", "--batch-size", "1")
    assert "older than 2 days" in output and "1 connections" in output
    assert not exists(recent)
    assert "Kept" not in output


def test_the_command_with_nothing_to_prune_says_so(world):
    assert "0 connections, 0 events, 0 webhook deliveries and 0 delivery attempts deleted." in run()


@pytest.mark.parametrize("value", ["0", "-3", "ten", "1.5"])
def test_the_command_refuses_a_horizon_that_is_not_a_positive_number_of_days(world, value):
    connection_at(world.device, timezone.now() - timedelta(days=300))
    with pytest.raises(CommandError, match="positive whole number"):
        run("--days", value)
    assert DeviceConnection.objects.count() == 1
