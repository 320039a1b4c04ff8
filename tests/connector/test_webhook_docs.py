"""docs/webhooks.md's receiver example, run as it is printed, against real deliveries: it
verifies the signature, acts once per event id, and refuses a body signed otherwise."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import pytest

from connector.models import WebhookDelivery, WebhookEndpoint
from connector.webhooks.delivery import retry_now, send
from connector.webhooks.outbox import fan_out
from connector.webhooks.secrets import new_secret
from tests.connector.webhook_receiver import endpoint_for, record_event
from tests.live import ROOT, free_port

pytestmark = pytest.mark.django_db

MARKER = "<!-- receiver-example:"


def receiver_example() -> str:
    text = (ROOT / "docs" / "webhooks.md").read_text()
    after = text[text.index(MARKER) :]
    return re.search(r"```python\n(.*?)```", after, re.DOTALL).group(1)


def test_the_example_is_about_twenty_lines():
    lines = [line for line in receiver_example().splitlines() if line.strip()]
    assert 15 <= len(lines) <= 25


@pytest.fixture
def example(tmp_path):
    secret, port = new_secret(), free_port()
    script = tmp_path / "receiver.py"
    script.write_text(receiver_example())
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "WEBHOOK_SECRET": secret, "PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None and time.monotonic() < deadline, "the example did not start"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    yield secret, f"http://127.0.0.1:{port}/hooks", process
    process.terminate()
    process.wait(10)


def test_the_receiver_example_verifies_and_deduplicates_real_deliveries(world, settings, example):
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "WEBHOOK_ALLOW_PRIVATE": True, "WEBHOOK_TIMEOUT": 5}
    secret, url, process = example
    endpoint = endpoint_for(url, secret, tenant=world.tenant, merchant=world.merchant)
    event = record_event(world.device)
    fan_out([event], merchant_of={world.device.pk: world.merchant.pk})
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)

    assert send([delivery.pk]) == 1
    retry_now(delivery)  # the same event again: answered, not acted on twice
    assert send([delivery.pk], manual=True) == 1
    delivery.refresh_from_db()
    assert delivery.attempts == 2 and delivery.response_code == 204

    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(secret=new_secret())
    retry_now(delivery)
    send([delivery.pk], manual=True)
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.RETRYING and delivery.response_code == 400

    process.terminate()
    output = process.communicate(timeout=10)[0]
    assert output.splitlines() == [f"{event.id} device.online {world.device.tsn}"]
