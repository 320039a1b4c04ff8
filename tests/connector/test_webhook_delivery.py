"""Webhook delivery (v1.1 §16) against a real HTTP receiver on 127.0.0.1: signed bodies,
retries of every kind of failure, the backoff, the pause of a failing receiver, the SSRF
guard at delivery, the manual retry and the sweep of lost tasks.

The worker's task runs in this process (`run_webhook_tasks`), and time is moved by making
due what the code scheduled for later; tests/connector/test_webhook_worker.py runs real
`db_worker` processes."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from connector.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from connector.webhooks import delivery as delivery_module
from connector.webhooks import guard
from connector.webhooks.delivery import (
    ENDPOINT_DISABLED,
    QUEUE,
    deliver,
    pause_for,
    retry_delay,
    retry_now,
    send,
    sweep,
)
from connector.webhooks.outbox import fan_out
from connector.webhooks.payload import USER_AGENT, event_body
from tests.connector.webhook_receiver import Receiver, endpoint_for, record_event, running_receiver

pytestmark = pytest.mark.django_db

TIMEOUT = 0.5


@pytest.fixture
def private_ok(settings) -> None:
    """Receivers on 127.0.0.1 allowed, a short timeout: the test receivers are local."""
    settings.DEBUG = False
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "WEBHOOK_ALLOW_PRIVATE": True, "WEBHOOK_TIMEOUT": TIMEOUT}


@pytest.fixture
def receiver() -> Receiver:
    with running_receiver() as running:
        yield running


def webhook_tasks(status: str = "READY") -> list[DBTaskResult]:
    return list(DBTaskResult.objects.filter(queue_name=QUEUE, status=status).order_by("enqueued_at"))


def task_ids(task: DBTaskResult) -> list[int]:
    return task.args_kwargs["args"][0]


def run_webhook_tasks() -> int:
    """Run every waiting webhook task now, as a worker would once its time has come."""
    ran = 0
    for task in webhook_tasks():
        task.status = "SUCCESSFUL"
        task.save(update_fields=["status"])
        deliver.call(*task.args_kwargs["args"], **task.args_kwargs["kwargs"])
        ran += 1
    return ran


def time_passes() -> None:
    """Every scheduled retry and every pause comes due."""
    past = timezone.now() - timedelta(seconds=1)
    WebhookDelivery.objects.exclude(next_attempt_at=None).update(next_attempt_at=past)
    WebhookEndpoint.objects.exclude(paused_until=None).update(paused_until=past)


def one_delivery(world: Any, receiver: Receiver, **endpoint: Any) -> WebhookDelivery:
    endpoint_for(receiver.url, receiver.secret, tenant=world.tenant, merchant=world.merchant, **endpoint)
    event = record_event(world.device, Event.Type.DEVICE_OFFLINE, reason="ping_timeout")
    assert fan_out([event], merchant_of={world.device.pk: world.merchant.pk}) == 1
    return WebhookDelivery.objects.get(event=event)


def test_a_receiver_answering_500_once_gets_the_signed_event_again_with_the_same_id(world, receiver, private_ok):
    receiver.script.append(500)
    delivery = one_delivery(world, receiver)

    assert run_webhook_tasks() == 1
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.RETRYING
    assert delivery.attempts == 1 and delivery.response_code == 500
    assert delivery.next_attempt_at > timezone.now()
    [retry] = webhook_tasks()
    assert task_ids(retry) == [delivery.pk] and retry.run_after == delivery.next_attempt_at

    time_passes()
    assert run_webhook_tasks() == 1
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED
    assert delivery.attempts == 2 and delivery.response_code == 200 and delivery.next_attempt_at is None

    first, second = receiver.requests
    assert first.signature_valid and second.signature_valid
    assert receiver.ids() == [str(delivery.event_id)] * 2
    assert first.json == second.json == event_body(delivery.event)
    assert first.json["type"] == "device.offline"
    assert first.json["data"] == {
        "tsn": world.device.tsn,
        "reason": "ping_timeout",
        "session_id": "session-1",
        "seq": delivery.event.seq,
    }
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["User-Agent"] == USER_AGENT
    assert first.path == "/hooks/cloud-connector?source=test"
    assert b" " not in first.body  # compact JSON: the bytes signed are the bytes sent
    log = list(delivery.attempt_log.order_by("attempted_at", "id").values_list("response_code", "succeeded"))
    assert log == [(500, False), (200, True)]
    assert not webhook_tasks()


def test_a_delivery_with_a_tampered_body_fails_the_receivers_check(world, receiver, private_ok):
    """The receiver's check is a real one: a body signed with another secret does not pass."""
    delivery = one_delivery(world, receiver)
    WebhookEndpoint.objects.update(secret="whsec_another")
    run_webhook_tasks()
    assert receiver.requests and not receiver.requests[0].signature_valid
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED  # the receiver answered 200 regardless


@pytest.mark.parametrize(
    ("answer", "code", "error"),
    [
        (302, 302, "redirect not followed"),
        (404, 404, ""),
        (503, 503, ""),
        ("close", None, "connection closed without an answer"),
        (("sleep", TIMEOUT * 4), None, f"timeout: no answer within {TIMEOUT:g} s"),
    ],
)
def test_every_failed_answer_is_recorded_and_retried_never_a_crash(world, receiver, private_ok, answer, code, error):
    receiver.script.append(answer)
    delivery = one_delivery(world, receiver)

    before = timezone.now()
    assert run_webhook_tasks() == 1
    delivery.refresh_from_db()
    [attempt] = delivery.attempt_log.all()
    assert (attempt.response_code, attempt.error, attempt.succeeded) == (code, error, False)
    assert (delivery.response_code, delivery.error, delivery.attempts) == (code, error, 1)
    assert delivery.status == WebhookDelivery.Status.RETRYING
    assert before + timedelta(seconds=1) <= delivery.next_attempt_at <= timezone.now() + timedelta(seconds=10)
    assert [task_ids(task) for task in webhook_tasks()] == [[delivery.pk]]
    assert len(receiver.requests) == 1  # a redirect is not followed

    time_passes()
    run_webhook_tasks()
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED
    assert receiver.ids() == [str(delivery.event_id)] * 2


def test_a_refused_connection_is_recorded_and_retried(world, private_ok):
    with running_receiver() as gone:
        url, secret = gone.url, gone.secret
    endpoint_for(url, secret, tenant=world.tenant, merchant=world.merchant)
    fan_out([record_event(world.device)], merchant_of={world.device.pk: world.merchant.pk})

    run_webhook_tasks()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == WebhookDelivery.Status.RETRYING
    assert delivery.response_code is None and delivery.error.startswith("connection failed")
    assert WebhookAttempt.objects.get().error == delivery.error


def test_a_receiver_answering_too_late_is_a_timeout_in_the_log(world, receiver, private_ok, caplog):
    receiver.script.append(("sleep", TIMEOUT * 4))
    delivery = one_delivery(world, receiver)
    with caplog.at_level("INFO", logger="connector.webhooks.delivery"):
        run_webhook_tasks()
    [line] = [record.getMessage() for record in caplog.records if "webhook attempt failed" in record.getMessage()]
    assert f"delivery={delivery.pk}" in line and "host=127.0.0.1" in line and "timeout" in line
    assert receiver.secret not in line and "source=test" not in line and world.device.tsn not in line


def test_the_backoff_doubles_with_full_jitter_up_to_two_hours():
    class Highest(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    ceilings = [retry_delay(attempts, rng=Highest()) for attempts in range(1, 14)]
    assert ceilings[:4] == [10, 20, 40, 80]
    assert ceilings[-1] == 7200 and max(ceilings) == 7200
    assert all(later >= earlier for earlier, later in zip(ceilings, ceilings[1:], strict=False))
    rng = random.Random(14)
    for attempts in range(1, 30):
        delays = [retry_delay(attempts, rng=rng) for _ in range(50)]
        assert all(1.0 <= delay <= min(7200, 10 * 2 ** (attempts - 1)) for delay in delays)
        assert len(set(delays)) > 40  # jittered, not one value
    assert [pause_for(failures) for failures in range(1, 10)] == [5, 10, 20, 40, 80, 160, 320, 600, 600]


def test_retries_go_on_until_the_retry_window_closes_then_the_delivery_fails(world, receiver, private_ok, settings):
    hours = settings.CLOUD_CONNECTOR.get("WEBHOOK_RETRY_HOURS", 26.0)
    assert hours >= 24  # the contract's "at least 24 h"
    receiver.default = 500
    delivery = one_delivery(world, receiver)
    deadline_in = timedelta(seconds=5)
    WebhookDelivery.objects.update(created_at=timezone.now() - timedelta(hours=hours) + deadline_in)

    run_webhook_tasks()
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.RETRYING
    assert delivery.next_attempt_at <= delivery.created_at + timedelta(hours=hours)

    WebhookDelivery.objects.update(created_at=timezone.now() - timedelta(hours=hours, seconds=1))
    time_passes()
    run_webhook_tasks()
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.FAILED
    assert delivery.next_attempt_at is None and delivery.attempts == 2
    assert not webhook_tasks()


def test_a_failing_receiver_is_paused_without_delaying_another_endpoint(world, private_ok):
    with running_receiver() as dead, running_receiver() as healthy:
        dead.default = ("sleep", TIMEOUT * 4)
        slow = endpoint_for(dead.url, dead.secret, tenant=world.tenant, merchant=world.merchant)
        fine = endpoint_for(healthy.url, healthy.secret, tenant=world.tenant, merchant_aggregator=world.ma)
        events = [record_event(world.device) for _ in range(3)]
        assert fan_out(events, merchant_of={world.device.pk: world.merchant.pk}) == 6
        by_endpoint = {WebhookDelivery.objects.get(pk=task_ids(task)[0]).endpoint_id: task for task in webhook_tasks()}
        assert set(by_endpoint) == {slow.pk, fine.pk}  # one task per endpoint, each its own

        slow_task = by_endpoint[slow.pk]
        slow_task.status = "SUCCESSFUL"
        slow_task.save(update_fields=["status"])
        send(task_ids(slow_task))
        slow.refresh_from_db()
        assert len(dead.requests) == 1  # one timeout, then the pause: no request for the other two
        assert slow.failures == 1 and slow.paused_until > timezone.now()
        deferred = WebhookDelivery.objects.filter(endpoint=slow, attempts=0)
        assert deferred.count() == 2
        assert {row.next_attempt_at for row in deferred} == {slow.paused_until}
        waiting = [task for task in webhook_tasks() if task.pk != by_endpoint[fine.pk].pk]
        assert [sorted(task_ids(task)) for task in waiting if task.run_after == slow.paused_until] == [
            sorted(row.pk for row in deferred)
        ]

        # Meanwhile the other endpoint's deliveries go out at once, the pause notwithstanding.
        send(task_ids(by_endpoint[fine.pk]))
        assert len(healthy.requests) == 3
        assert set(WebhookDelivery.objects.filter(endpoint=fine).values_list("status", flat=True)) == {"delivered"}

        # A task picked up early sends nothing; once the receiver recovers, the pause is lifted.
        send([row.pk for row in deferred])
        assert len(dead.requests) == 1
        dead.default = 200
        time_passes()
        send(list(WebhookDelivery.objects.filter(endpoint=slow).values_list("pk", flat=True)))
        slow.refresh_from_db()
        assert (slow.failures, slow.paused_until) == (0, None)
        assert set(WebhookDelivery.objects.filter(endpoint=slow).values_list("status", flat=True)) == {"delivered"}
        assert len(dead.requests) == 4


def test_a_delivery_is_sent_once_however_many_tasks_carry_it(world, receiver, private_ok):
    delivery = one_delivery(world, receiver)
    send([delivery.pk, delivery.pk])
    send([delivery.pk])
    assert len(receiver.requests) == 1
    # A delivery claimed by another worker (its lease runs) is left alone.
    retry_now(delivery)
    WebhookDelivery.objects.update(next_attempt_at=timezone.now() + timedelta(seconds=40))
    send([delivery.pk])
    assert len(receiver.requests) == 1


def test_private_addresses_are_refused_at_delivery_without_a_request(world, receiver, settings):
    settings.DEBUG = False
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "WEBHOOK_ALLOW_PRIVATE": False}
    delivery = one_delivery(world, receiver)
    run_webhook_tasks()
    delivery.refresh_from_db()
    assert receiver.requests == []
    assert delivery.status == WebhookDelivery.Status.RETRYING and delivery.error == "address not allowed"
    assert WebhookAttempt.objects.get().error == "address not allowed"

    settings.DEBUG = True  # development: the receiver on this machine is allowed
    time_passes()
    run_webhook_tasks()
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED and len(receiver.requests) == 1


def test_a_name_with_any_private_address_is_refused(world, receiver, settings, monkeypatch):
    settings.DEBUG = False
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "WEBHOOK_ALLOW_PRIVATE": False}
    answers = {"hooks.example.com": ["93.184.215.14", "10.0.0.7"]}
    monkeypatch.setattr(guard, "resolve", lambda host, port: [guard.address_literal(a) for a in answers[host]])
    endpoint_for(
        f"https://hooks.example.com:{receiver.port}/", receiver.secret, tenant=world.tenant, merchant=world.merchant
    )
    fan_out([record_event(world.device)], merchant_of={world.device.pk: world.merchant.pk})
    run_webhook_tasks()
    assert WebhookDelivery.objects.get().error == "address not allowed"


def test_the_connection_goes_to_the_vetted_address_with_the_name_in_host(world, receiver, private_ok, monkeypatch):
    """DNS is asked once, by the guard: the request reaches the address it vetted while the
    name travels in Host (no second resolution a rebinding resolver could answer)."""
    asked: list[str] = []

    def resolve(host: str, port: int) -> list:
        asked.append(host)
        return [guard.address_literal("127.0.0.1")]

    monkeypatch.setattr(guard, "resolve", resolve)
    endpoint_for(
        f"http://hooks.example.test:{receiver.port}/in", receiver.secret, tenant=world.tenant, merchant=world.merchant
    )
    fan_out([record_event(world.device)], merchant_of={world.device.pk: world.merchant.pk})
    run_webhook_tasks()
    [request] = receiver.requests
    assert request.headers["Host"] == f"hooks.example.test:{receiver.port}" and request.path == "/in"
    assert asked == ["hooks.example.test"]
    assert WebhookDelivery.objects.get().status == WebhookDelivery.Status.DELIVERED


def test_retry_now_sends_a_failed_or_delivered_delivery_again_whatever_the_pause(world, receiver, private_ok):
    delivery = one_delivery(world, receiver)
    run_webhook_tasks()
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED

    WebhookEndpoint.objects.update(paused_until=timezone.now() + timedelta(minutes=5), failures=3)
    retry_now(delivery)
    assert delivery.status == WebhookDelivery.Status.RETRYING
    [task] = webhook_tasks()
    assert task.args_kwargs == {"args": [[delivery.pk]], "kwargs": {"manual": True}}
    run_webhook_tasks()
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED and delivery.attempts == 2
    assert receiver.ids() == [str(delivery.event_id)] * 2
    assert delivery.attempt_log.filter(manual=True).count() == 1

    WebhookDelivery.objects.update(status=WebhookDelivery.Status.FAILED, next_attempt_at=None)
    WebhookEndpoint.objects.update(enabled=False)
    retry_now(delivery)
    run_webhook_tasks()
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED and len(receiver.requests) == 3


def test_a_disabled_endpoint_fails_its_deliveries_without_a_request(world, receiver, private_ok):
    delivery = one_delivery(world, receiver)
    WebhookEndpoint.objects.update(enabled=False)
    run_webhook_tasks()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.error, delivery.next_attempt_at) == ("failed", ENDPOINT_DISABLED, None)
    assert receiver.requests == [] and not WebhookAttempt.objects.exists()


def test_the_sweep_enqueues_a_lost_delivery_again_once(world, receiver, private_ok):
    delivery = one_delivery(world, receiver)
    # The task was claimed by a worker that died: RUNNING for good, the delivery overdue.
    DBTaskResult.objects.filter(queue_name=QUEUE).update(status="RUNNING")
    WebhookDelivery.objects.update(next_attempt_at=timezone.now() - delivery_module.LOST_AFTER - timedelta(seconds=5))

    assert sweep() == 1
    [task] = webhook_tasks()
    assert task_ids(task) == [delivery.pk]
    assert sweep() == 0  # idempotent: made due now, it is not lost again for two minutes
    run_webhook_tasks()
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED and len(receiver.requests) == 1


def test_the_sweep_leaves_a_backlog_to_the_workers(world, receiver, private_ok):
    """Tasks waiting past their time mean the workers are behind, not that tasks were lost:
    enqueueing the same deliveries again would only lengthen the queue."""
    one_delivery(world, receiver)
    long_ago = timezone.now() - timedelta(minutes=10)
    DBTaskResult.objects.filter(queue_name=QUEUE).update(run_after=long_ago)
    WebhookDelivery.objects.update(next_attempt_at=long_ago)
    assert sweep() == 0
    assert len(webhook_tasks()) == 1


def test_the_sweep_command_reports_what_it_enqueued(world, receiver, private_ok):
    from io import StringIO

    from django.core.management import call_command

    one_delivery(world, receiver)
    DBTaskResult.objects.filter(queue_name=QUEUE).delete()
    WebhookDelivery.objects.update(next_attempt_at=timezone.now() - timedelta(minutes=3))
    out = StringIO()
    call_command("webhooks_sweep", stdout=out)
    assert out.getvalue().strip() == "1 webhook deliveries enqueued again"
    assert len(webhook_tasks()) == 1


def certificate_authority(tmp_path, name: str) -> tuple[str, str, str]:
    """A CA file, and a certificate for `name` it signed with its key: paths (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    now = timezone.now()
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(pem_key(leaf_key))
    return tuple(str(path) for path in paths)


@pytest.mark.parametrize(("certified", "delivered"), [("hooks.example.test", True), ("other.example.test", False)])
def test_https_goes_to_the_vetted_address_and_checks_the_certificate_against_the_name(
    world, private_ok, monkeypatch, tmp_path, certified, delivered
):
    import ssl

    ca, cert, key = certificate_authority(tmp_path, certified)
    monkeypatch.setenv("SSL_CERT_FILE", ca)  # the default trust store of the delivery's TLS context
    monkeypatch.setattr(guard, "resolve", lambda host, port: [guard.address_literal("127.0.0.1")])
    server_names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    with running_receiver() as receiver:
        receiver.server.socket = context.wrap_socket(receiver.server.socket, server_side=True)
        endpoint_for(
            f"https://hooks.example.test:{receiver.port}/in",
            receiver.secret,
            tenant=world.tenant,
            merchant=world.merchant,
        )
        fan_out([record_event(world.device)], merchant_of={world.device.pk: world.merchant.pk})
        run_webhook_tasks()
    delivery = WebhookDelivery.objects.get()
    assert server_names[:1] == ["hooks.example.test"]  # the name, sent to the pinned address
    if delivered:
        assert delivery.status == WebhookDelivery.Status.DELIVERED
        assert receiver.requests[0].headers["Host"] == f"hooks.example.test:{receiver.port}"
    else:
        assert delivery.status == WebhookDelivery.Status.RETRYING and delivery.error.startswith("TLS error")
        assert receiver.requests == []
