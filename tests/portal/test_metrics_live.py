"""Issue 12's "done when" for the relay's families: a live server's `/metrics`, read back with
prometheus-client's own parser, moves with real traffic from the client library; and `/readyz`
turns 503 while the relay drains (the drain source portal.apps registers)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import requests
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from connector.clients import PosClient, SimulatedTerminal, fetch_token_sync, upp_answer
from connector.clients.common import ControlError, SocketClosed
from connector.clients.terminal import RegistrationRefused, register
from connector.relay.registry import registry
from tests.factories import make_pos, make_usable_device
from tests.live import LiveServer, run_bounded, server_log_printed, start_server

ENDPOINT = "/upp/v1/transaction"
SALE = '{"request": {"flow_id": "1", "resource": {"type": "sale", "amount": 5}}}'


def scrape(server: LiveServer) -> dict:
    response = requests.get(f"{server.http_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def total(families: dict, name: str, **labels: str) -> float:
    """The sum of the samples `name` with these labels (0 when there is none yet)."""
    return sum(
        sample.value
        for family in families.values()
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(key) == want for key, want in labels.items())
    )


def moved(before: dict, after: dict, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


@pytest.fixture
def relay_server(tmp_path, transactional_db) -> Iterator[LiveServer]:
    server = start_server(tmp_path, server="uvicorn", CC_SWEEP_INTERVAL="1")
    try:
        with server_log_printed(server):
            yield server
    finally:
        server.stop()


@pytest.mark.live
def test_a_live_servers_metrics_move_with_registrations_claims_tokens_sockets_and_frames(relay_server):
    device = make_usable_device()
    pos = make_pos(store=device.store)
    client_id, client_secret = pos.application.client_id, pos.client_secret
    before = scrape(relay_server)
    token = fetch_token_sync(
        relay_server.http_url,
        domain=device.tenant.domain,
        client_id=client_id,
        client_secret=client_secret,
        scope="cloud-connector",
    ).access_token
    refused = requests.post(
        f"{relay_server.http_url}/oauth2/v1/{device.tenant.domain}/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret + "x"},
        timeout=10,
    )
    assert refused.status_code == 401
    during: dict = {}
    closes: list[int | None] = []

    async def scenario() -> None:
        with pytest.raises(RegistrationRefused):
            await register(relay_server.ws_url, tsn=device.serial, client_id=client_id, client_secret="wrong")
        terminal = SimulatedTerminal(
            relay_server.ws_url,
            tsn=device.serial,
            client_id=client_id,
            client_secret=client_secret,
            endpoints=[ENDPOINT],
            responder=upp_answer,
        )
        async with PosClient(relay_server.ws_url, token=token) as pos_client:
            async with terminal:
                # No POS on the endpoint yet: the terminal's frame is dropped (§7).
                await terminal.send(ENDPOINT, '{"event": "idle"}')
                with pytest.raises(ControlError):
                    await pos_client.claim("no-such-terminal")
                claim = await pos_client.claim(device.serial)
                session = await pos_client.open_session(claim, ENDPOINT)
                await session.send(SALE)
                await session.recv(timeout=10)
                during.update(await asyncio.to_thread(scrape, relay_server))
            # The terminal has gone: the POS's next frame has no peer and its socket is closed (4503).
            await asyncio.sleep(0.5)
            try:
                await session.send(SALE)
                closes.append((await session.wait_closed(timeout=10)).code)
            except SocketClosed as closed:
                closes.append(closed.code)

    run_bounded(scenario(), timeout=60)
    after = scrape(relay_server)

    assert moved(before, after, "cloud_connector_token_requests_total", outcome="ok") == 1
    assert moved(before, after, "cloud_connector_token_requests_total", outcome="invalid_client") == 1
    assert moved(before, after, "cloud_connector_token_request_seconds_count") == 2
    assert moved(before, after, "cloud_connector_registrations_total", outcome="ok") >= 1
    assert moved(before, after, "cloud_connector_registrations_total", outcome="invalid_client") == 1
    assert moved(before, after, "cloud_connector_claims_total", outcome="ok") == 1
    assert moved(before, after, "cloud_connector_claims_total") == 2  # and the unknown terminal's refusal
    assert moved(before, after, "cloud_connector_claim_seconds_count") == 2

    for kind in ("device", "session", "pos_listener"):
        assert total(during, "cloud_connector_sockets_open", kind=kind) >= 1, kind
        assert moved(before, after, "cloud_connector_sockets_opened_total", kind=kind) >= 1, kind
    assert moved(before, after, "cloud_connector_sockets_opened_total", kind="device_listener") >= 2
    assert total(during, "cloud_connector_sessions_held") >= 1
    assert total(after, "cloud_connector_sockets_open", kind="device") == 0

    for direction in ("pos_to_device", "device_to_pos"):
        assert moved(before, after, "cloud_connector_frames_relayed_total", direction=direction) >= 1, direction
        assert moved(before, after, "cloud_connector_relayed_bytes_total", direction=direction) > 0, direction
    assert moved(before, after, "cloud_connector_relayed_bytes_total", direction="pos_to_device") >= len(SALE)
    assert moved(before, after, "cloud_connector_frames_dropped_total", reason="no_peer") == 1

    assert closes == [4503]
    assert moved(before, after, "cloud_connector_socket_closes_total", kind="session", code="4503") == 1

    # The control path's database time, per operation, timed in the database threads.
    for operation in ("device_register_with_client", "device_socket_attach", "pos_request", "pos_socket_attach"):
        assert moved(before, after, "cloud_connector_db_seconds_count", operation=operation) >= 1, operation
        assert moved(before, after, "cloud_connector_db_seconds_sum", operation=operation) > 0, operation
    # The terminal's socket left (the POS's may still be detaching when the scrape comes).
    assert moved(before, after, "cloud_connector_db_seconds_count", operation="detach") >= 1


@pytest.mark.django_db
def test_readyz_answers_503_while_the_relay_drains_its_sockets():
    client = Client()
    assert client.get("/readyz").status_code == 200
    registry.shutting_down = True
    try:
        response = client.get("/readyz")
    finally:
        registry.shutting_down = False
    assert response.status_code == 503
    assert response.json()["failing"] == ["shutdown"]
    assert client.get("/readyz").status_code == 200
