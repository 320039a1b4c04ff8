"""Webhooks end to end (v1.1 §16), as a merchant's back office gets them: a live server, its
webhook worker (`manage.py db_worker`, as `make run` and `make serve` start it) and a real HTTP
receiver on 127.0.0.1 that checks every signature. The endpoint is created through the REST API,
a terminal and a POS do what they do, and the facts arrive: signed, with the `event_id` the
listener heard, retried with the same id after a 500, listed in the delivery log, sent again on
a manual retry."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import requests
from websockets.asyncio.client import connect

from connector.models import WebhookDelivery
from tests.connector.test_relay_e2e import Terminal, claimed, control, device_sockets, register
from tests.connector.test_webhook_worker import eventually, start_worker, stop
from tests.connector.webhook_receiver import running_receiver
from tests.factories import make_access_token, make_provisioning_client
from tests.live import run_bounded, start_server

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

# DEBUG: the receiver is plain http:// on a loopback address (refused in production, §16).
SERVER_ENV = {"DEBUG": "1", "CC_WEBHOOK_TIMEOUT": "5"}
WAIT = 40.0  # seconds: a first retry comes within 10 s (full jitter), the rest is slack


@pytest.fixture
def server(tmp_path: Path):
    live = start_server(tmp_path, **SERVER_ENV)
    yield live
    live.stop()
    assert "Traceback" not in live.log(), live.log()[-5000:]


def test_facts_reach_the_back_office_signed_retried_and_logged(server, tmp_path: Path):
    terminal = Terminal()
    provisioning = make_access_token(make_provisioning_client(tenant=terminal.device.tenant))
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {provisioning}"
    # The first delivery is answered 500 once, then everything 200.
    with running_receiver([500]) as receiver:
        created = api.post(
            f"{server.http_url}/api/v1/webhook-endpoints/",
            json={
                "url": receiver.url,
                "events": ["device.online", "device.offline", "session.claimed", "session.released"],
                "merchant": terminal.device.merchant_id,
            },
            timeout=30,
        )
        assert created.status_code == 201, created.text
        receiver.secret = created.json()["secret"]
        endpoint = created.json()["id"]
        worker = start_worker(tmp_path, "webhooks")
        heard: dict[str, dict] = {}

        async def scenario() -> None:
            registration = await register(server.ws_url, terminal, ["/"])
            devices = await device_sockets(registration, ["/"])
            listener, claim = await claimed(server.ws_url, terminal.token, terminal.device.tsn)
            assert claim["session_id"] == registration["session_id"]
            released = await control(listener, {"action": "release", "session_id": claim["session_id"]}, "2")
            assert released["status"] == "ok"
            subscriber = await connect(
                f"{server.ws_url}/cloud-connector/v1/pos-listener",
                additional_headers={"Authorization": f"Bearer {terminal.token}"},
                open_timeout=10,
            )
            assert (await control(subscriber, {"action": "subscribe", "presence": True}))["status_code"] == 200
            await devices["/"].close()
            message = json.loads(await asyncio.wait_for(subscriber.recv(), 10))["event"]["resource"]
            heard[message["type"]] = message
            await asyncio.gather(listener.close(), subscriber.close())

        try:
            run_bounded(scenario(), timeout=60)
            assert eventually(lambda: len({r.json["id"] for r in receiver.requests}) >= 4, WAIT), receiver.ids()
            assert eventually(lambda: WebhookDelivery.objects.filter(status="delivered").count() == 4, WAIT), list(
                WebhookDelivery.objects.values_list("status", "attempts")
            )
        finally:
            assert stop(worker) == 0
        assert all(request.signature_valid for request in receiver.requests)
        bodies = {}
        for request in receiver.requests:
            bodies.setdefault(request.json["id"], request.json)
        by_type = {body["type"]: body for body in bodies.values()}
        assert set(by_type) == {"device.online", "session.claimed", "session.released", "device.offline"}
        # At least once: the delivery answered 500 came again with the same id.
        first = receiver.requests[0].json["id"]
        assert receiver.ids().count(first) == 2
        # The listener and the webhook tell the same fact under the same id.
        offline = by_type["device.offline"]
        assert heard["device_offline"]["event_id"] == offline["id"]
        assert offline["data"]["reason"] == "closed" and offline["data"]["tsn"] == terminal.device.tsn
        assert offline["data"]["session_id"] == heard["device_offline"]["session_id"]
        # A device's events are numbered in the order they happened.
        seqs = [
            by_type[kind]["data"]["seq"]
            for kind in ("device.online", "session.claimed", "session.released", "device.offline")
        ]
        assert seqs == sorted(seqs) and len(set(seqs)) == 4
        assert by_type["session.claimed"]["data"]["claimed_by"] == f"POS {terminal.pos.name}"

        # The delivery log: every attempt, the 500 then the 200.
        log = api.get(f"{server.http_url}/api/v1/webhook-endpoints/{endpoint}/deliveries/", timeout=30).json()
        retried = next(row for row in log["results"] if row["event_id"] == first)
        assert retried["status"] == "delivered" and retried["attempts"] == 2
        assert sorted(attempt["response_code"] for attempt in retried["attempt_log"]) == [200, 500]

        # A manual retry sends it again, with the same id.
        worker = start_worker(tmp_path, "webhooks-again")
        try:
            again = api.post(
                f"{server.http_url}/api/v1/webhook-endpoints/{endpoint}/deliveries/{retried['id']}/retry/", timeout=30
            )
            assert again.status_code == 202, again.text
            assert eventually(lambda: receiver.ids().count(first) == 3, WAIT), receiver.ids()
        finally:
            assert stop(worker) == 0
