"""The webhook outbox (`fan_out`): one query when nothing is in scope, the scope of merchant
and MA endpoints, the type filter, the tasks, and the transaction it shares with the fact."""

from __future__ import annotations

import pytest
from django.db import transaction
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from connector.models import Event, WebhookDelivery
from connector.webhooks.delivery import CHUNK, QUEUE
from connector.webhooks.outbox import fan_out
from tests.connector.webhook_receiver import endpoint_for, record_event

pytestmark = pytest.mark.django_db

URL = "https://hooks.example.com/cloud-connector"
SECRET = "whsec_test"


def merchants_of(*devices) -> dict[int, int]:
    return {device.pk: device.merchant_id for device in devices}


def delivered_to(endpoint) -> set[int]:
    return set(WebhookDelivery.objects.filter(endpoint=endpoint).values_list("event__device_id", flat=True))


def test_no_endpoint_in_scope_costs_exactly_one_query(world, django_assert_num_queries):
    # Endpoints elsewhere (another MA, another tenant), one switched off, one for other types.
    endpoint_for(URL, SECRET, tenant=world.tenant, merchant_aggregator=world.sister_ma)
    endpoint_for(URL, SECRET, tenant=world.far_tenant, merchant_aggregator=world.far_ma)
    endpoint_for(URL, SECRET, tenant=world.tenant, merchant=world.merchant, enabled=False)
    endpoint_for(URL, SECRET, tenant=world.tenant, merchant=world.merchant, events=["session.ended"])
    events = [record_event(world.device), record_event(world.other_device, Event.Type.DEVICE_OFFLINE)]
    with django_assert_num_queries(1):
        assert fan_out(events, merchant_of=merchants_of(world.device, world.other_device)) == 0
    with django_assert_num_queries(0):
        assert fan_out([], merchant_of={}) == 0
    assert not WebhookDelivery.objects.exists()
    assert not DBTaskResult.objects.filter(queue_name=QUEUE).exists()


def test_an_endpoint_receives_the_events_of_its_scope_only(world):
    merchant_hook = endpoint_for(URL, SECRET, tenant=world.tenant, merchant=world.merchant)
    ma_hook = endpoint_for(URL, SECRET, tenant=world.tenant, merchant_aggregator=world.ma)
    sister_hook = endpoint_for(URL, SECRET, tenant=world.tenant, merchant_aggregator=world.sister_ma)
    far_hook = endpoint_for(URL, SECRET, tenant=world.far_tenant, merchant=world.far_merchant)
    devices = (world.device, world.other_device)
    events = [record_event(device) for device in devices]

    assert fan_out(events, merchant_of=merchants_of(*devices)) == 3
    assert delivered_to(merchant_hook) == {world.device.pk}
    assert delivered_to(ma_hook) == {world.device.pk, world.other_device.pk}
    assert delivered_to(sister_hook) == set() and delivered_to(far_hook) == set()

    delivery = WebhookDelivery.objects.filter(endpoint=merchant_hook).get()
    assert delivery.status == WebhookDelivery.Status.PENDING and delivery.attempts == 0
    assert delivery.created_at == events[0].occurred_at and delivery.next_attempt_at is not None


def test_an_endpoint_receives_only_the_types_it_subscribed_to(world):
    hook = endpoint_for(URL, SECRET, tenant=world.tenant, merchant=world.merchant, events=["device.offline"])
    online = record_event(world.device, Event.Type.DEVICE_ONLINE)
    offline = record_event(world.device, Event.Type.DEVICE_OFFLINE, reason="closed")
    assert fan_out([online, offline], merchant_of=merchants_of(world.device)) == 1
    assert list(WebhookDelivery.objects.filter(endpoint=hook).values_list("event_id", flat=True)) == [offline.pk]


def test_each_endpoint_gets_its_own_tasks_of_at_most_a_hundred_deliveries(world):
    first = endpoint_for(URL, SECRET, tenant=world.tenant, merchant=world.merchant)
    second = endpoint_for(URL, SECRET, tenant=world.tenant, merchant_aggregator=world.ma)
    events = [record_event(world.device) for _ in range(CHUNK + 30)]
    assert fan_out(events, merchant_of=merchants_of(world.device)) == 2 * len(events)

    tasks = list(DBTaskResult.objects.filter(queue_name=QUEUE, status="READY"))
    assert len(tasks) == 4
    endpoints_of_tasks = []
    for task in tasks:
        ids = task.args_kwargs["args"][0]
        assert 1 <= len(ids) <= CHUNK and task.args_kwargs["kwargs"] == {"manual": False}
        endpoints_of_tasks.append(set(WebhookDelivery.objects.filter(pk__in=ids).values_list("endpoint", flat=True)))
    assert sorted(map(sorted, endpoints_of_tasks)) == [[first.pk], [first.pk], [second.pk], [second.pk]]


def test_deliveries_and_tasks_roll_back_with_the_fact(world):
    endpoint_for(URL, SECRET, tenant=world.tenant, merchant=world.merchant)

    class FactFailed(Exception):
        pass

    with pytest.raises(FactFailed), transaction.atomic():
        assert fan_out([record_event(world.device)], merchant_of=merchants_of(world.device)) == 1
        raise FactFailed
    assert not WebhookDelivery.objects.exists()
    assert not DBTaskResult.objects.filter(queue_name=QUEUE).exists()


def test_recording_a_fact_with_no_endpoint_in_scope_costs_no_outbox_query(world, django_assert_num_queries):
    # connector.history reads in its UPDATE ... RETURNING whether any enabled endpoint of the
    # device's merchant or MA exists: a terminal coming online where nobody subscribed costs
    # the update and the event's insert, nothing for the outbox.
    from connector import history

    endpoint_for(URL, SECRET, tenant=world.tenant, merchant_aggregator=world.sister_ma)
    endpoint_for(URL, SECRET, tenant=world.tenant, merchant=world.merchant, enabled=False)
    fact = history.Fact(device_id=world.device.pk, type=Event.Type.DEVICE_ONLINE, session_id="s1")
    with django_assert_num_queries(2):
        history.record([fact], now=timezone.now())
    assert not WebhookDelivery.objects.exists()


@pytest.mark.parametrize("level", ["merchant", "merchant_aggregator"])
def test_recording_a_fact_with_an_endpoint_in_scope_writes_its_delivery(world, level):
    from connector import history

    scope = {"merchant": world.merchant} if level == "merchant" else {"merchant_aggregator": world.ma}
    endpoint = endpoint_for(URL, SECRET, tenant=world.tenant, **scope)
    facts = [
        history.Fact(device_id=device.pk, type=Event.Type.DEVICE_OFFLINE, session_id="s1", data={"reason": "closed"})
        for device in (world.device, world.other_device)
    ]
    history.record(facts, now=timezone.now())
    # The other device is another merchant's of the same MA.
    expected = {world.device.pk} if level == "merchant" else {world.device.pk, world.other_device.pk}
    assert delivered_to(endpoint) == expected
