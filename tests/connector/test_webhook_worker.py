"""Webhook workers as real processes: a `manage.py db_worker` killed (SIGKILL) in the middle of
a delivery loses nothing, `bin/run` (what `make run` runs) starts a worker beside the server
and stops it with the server, and `bin/serve` supervises WEBHOOK_WORKERS of them."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.db import transaction
from django.utils import timezone

from connector.models import Event, WebhookDelivery
from connector.webhooks.delivery import LOST_AFTER, sweep
from connector.webhooks.outbox import fan_out
from portal import serve
from tests.connector.webhook_receiver import endpoint_for, record_event, running_receiver
from tests.live import ROOT, free_port, server_env

WORKER_ENV = {"DEBUG": "1", "CC_WEBHOOK_TIMEOUT": "5"}


def start_worker(tmp_path: Path, name: str) -> subprocess.Popen:
    log = (tmp_path / f"{name}.log").open("ab")
    command = [
        sys.executable,
        "manage.py",
        "db_worker",
        "--queue-name",
        "webhooks,default",
        "--no-reload",
        "--no-startup-delay",
        "--interval",
        "0.1",
        "--worker-id",
        name,
    ]
    return subprocess.Popen(command, cwd=ROOT, env=server_env(**WORKER_ENV), stdout=log, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def commit_event(world) -> Event:
    """A fact committed with its event and deliveries, as connector.history does."""
    with transaction.atomic():
        event = record_event(world.device, Event.Type.DEVICE_ONLINE)
        fan_out([event], merchant_of={world.device.pk: world.merchant.pk})
    return event


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_while_delivering_loses_nothing(world, tmp_path):
    with running_receiver(["hold"]) as receiver:
        endpoint_for(receiver.url, receiver.secret, tenant=world.tenant, merchant=world.merchant)
        # Committed while no worker runs: the event waits in the database.
        event = commit_event(world)
        first = start_worker(tmp_path, "first")
        try:
            assert receiver.wait_for(1, timeout=30), (tmp_path / "first.log").read_text()
            first.send_signal(signal.SIGKILL)  # in the middle of the delivery: no answer yet
            first.wait(10)
        finally:
            stop(first)
        receiver.release.set()
        delivery = WebhookDelivery.objects.get(event=event)
        assert delivery.status == WebhookDelivery.Status.PENDING and delivery.attempts == 0

        second = start_worker(tmp_path, "second")
        try:
            # The killed worker's task stays RUNNING and its lease holds the delivery; once
            # the lease is older than LOST_AFTER, the housekeeping's sweep enqueues it again.
            time.sleep(1)
            assert len(receiver.requests) == 1
            overdue = timezone.now() - LOST_AFTER - (delivery.next_attempt_at - timezone.now())
            WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=overdue)
            assert sweep() == 1
            assert eventually(lambda: WebhookDelivery.objects.get(pk=delivery.pk).status == "delivered"), (
                tmp_path / "second.log"
            ).read_text()
        finally:
            assert stop(second) == 0
    assert receiver.ids() == [str(event.id)] * 2  # at least once: the same id, twice
    assert all(request.signature_valid for request in receiver.requests)
    delivery.refresh_from_db()
    assert delivery.attempts == 1 and delivery.response_code == 200


def wait_listening(port: int, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"not listening on {port}:\n{log.read_text()}")


def group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.django_db(transaction=True)
def test_bin_run_starts_a_webhook_worker_beside_the_server_and_stops_both(world, tmp_path):
    port = free_port()
    log = tmp_path / "run.log"
    env = server_env(HOST="127.0.0.1", PORT=str(port), **WORKER_ENV)
    with log.open("wb") as out:
        run = subprocess.Popen([sys.executable, "bin/run"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    worker_pid = None
    try:
        wait_listening(port, run, log)
        worker_pid = int(re.search(r"run: webhook worker \(pid (\d+)\)", log.read_text()).group(1))
        with running_receiver() as receiver:
            endpoint_for(receiver.url, receiver.secret, tenant=world.tenant, merchant=world.merchant)
            event = commit_event(world)
            assert receiver.wait_for(1, timeout=30), log.read_text()
            assert receiver.ids() == [str(event.id)] and receiver.requests[0].signature_valid
        run.send_signal(signal.SIGTERM)
        assert run.wait(40) == 0, log.read_text()
        assert eventually(lambda: not group_alive(worker_pid), timeout=10)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
        if worker_pid and group_alive(worker_pid):
            os.killpg(worker_pid, signal.SIGKILL)


def test_bin_serve_supervises_two_webhook_workers_by_default(monkeypatch):
    monkeypatch.delenv("WEBHOOK_WORKERS", raising=False)
    assert serve.check_webhook_workers() == 2
    supervisor = serve.Supervisor("127.0.0.1", 8000, 3, serve.check_webhook_workers())
    assert len(supervisor.commands) == 5 and len(supervisor.ports) == 3
    workers = supervisor.commands[3:]
    assert workers == [serve.task_worker_command()] * 2
    assert workers[0][1:] == ["manage.py", "db_worker", "--queue-name", "webhooks,default", "--no-reload"]
    assert all("uvicorn" in command for command in supervisor.commands[:3])

    monkeypatch.setenv("WEBHOOK_WORKERS", "0")
    assert len(serve.Supervisor("127.0.0.1", 8000, 1, serve.check_webhook_workers()).commands) == 1
    monkeypatch.setenv("WEBHOOK_WORKERS", "-1")
    with pytest.raises(serve.ConfigError, match="WEBHOOK_WORKERS"):
        serve.check_webhook_workers()
