"""The seed's eleven steps end to end: a real daphne process (the `live` fixture), the
simulated terminal and the POS client of connector/clients, real sockets on loopback.

Each test builds its data with the factories (committed: the server process reads the same
database), then runs one asyncio scenario. Tokens come from the real token endpoint, through
the POS client (urllib) and through requests-oauthlib.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Coroutine
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session
from websockets.asyncio.client import connect

from connector.clients import (
    ControlError,
    Event,
    PosClient,
    RegistrationRefused,
    SessionSocket,
    SimulatedTerminal,
    SocketClosed,
    fetch_token_sync,
    register,
    upp_answer,
)
from connector.clients.common import parse_envelope
from tests.factories import StoreFactory, make_cloud_application, make_pos, make_usable_device
from tests.live import LiveServer, run_bounded, server_log_printed

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
SCENARIO_TIMEOUT = 120
TRANSACTION = "/upp/v1/transaction"
PRINTER = "/upp/v1/printer"


@pytest.fixture(autouse=True)
def server_log_on_failure(live: LiveServer):
    with server_log_printed(live):
        yield


def run(scenario: Coroutine[Any, Any, None]) -> None:
    run_bounded(scenario, timeout=SCENARIO_TIMEOUT)


def domain_of(device) -> str:
    return device.tenant.domain


def token_over_http(live: LiveServer, device, credential) -> str:
    """Step 5 with the POS client's own token request (urllib, HTTP Basic)."""
    token = fetch_token_sync(
        live.http_url,
        domain=domain_of(device),
        client_id=credential.application.client_id,
        client_secret=credential.client_secret,
        scope="cloud-connector",
    )
    assert token.token_type.lower() == "bearer"
    assert "cloud-connector" in token.scope.split()
    return token.access_token


def token_with_oauth_library(live: LiveServer, device, credential, monkeypatch) -> str:
    """Step 5 with requests-oauthlib, as an integrator's POS would do it."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain HTTP on loopback only
    client_id = credential.application.client_id
    session = OAuth2Session(client=BackendApplicationClient(client_id=client_id), scope=["cloud-connector"])
    token = session.fetch_token(
        token_url=f"{live.http_url}/oauth2/v1/{domain_of(device)}/token",
        client_id=client_id,
        client_secret=credential.client_secret,
        timeout=30,
    )
    return token["access_token"]


def terminal_for(live: LiveServer, tsn: str, credential, **kwargs: Any) -> SimulatedTerminal:
    return SimulatedTerminal(
        live.ws_url,
        tsn=tsn,
        client_id=credential.application.client_id,
        client_secret=credential.client_secret,
        min_delay=0.05,
        max_delay=0.5,
        **kwargs,
    )


async def claim_and_talk(live: LiveServer, token: str, tsn: str, device_tsn: str) -> None:
    """Steps 6–11 and the release, against a terminal that answers with its canned UPP answer."""
    async with PosClient(live.ws_url, token=token) as pos:
        claim = await pos.claim(tsn)
        assert claim.tsn == device_tsn
        assert claim.endpoints == [TRANSACTION]
        assert claim.session_url.endswith(f"/cloud-connector/v1/session/{claim.session_id}")
        assert (await pos.claim(tsn)).session_id == claim.session_id  # claiming again answers the same
        session = await pos.open_session(claim, TRANSACTION)
        await session.send('{"request": {"flow_id": "42", "resource": {"type": "sale", "amount": 1250}}}')
        answer = parse_envelope(await session.recv(timeout=10))
        assert (answer.flow_id, answer.resource["amount"], answer.resource["status"]) == ("42", 1250, "ok")
        [status] = [d for d in await pos.devices() if d.tsn == device_tsn]
        assert (status.online, status.claimed, status.claimed_by_you) == (True, True, True)
        await pos.release(claim.session_id)
        closed = await session.wait_closed(timeout=10)
        assert closed.code == 1000


def test_the_device_listener_answers_the_registration_then_closes_with_1000(live):
    device = make_usable_device()
    pos = make_pos(store=device.store)

    async def scenario() -> None:
        async with connect(live.ws_url + "/cloud-connector/v1/device-listener") as ws:
            credentials = {"client_id": pos.application.client_id, "client_secret": pos.client_secret}
            resource = {"tsn": device.serial, "custom_registration_data": credentials}
            await ws.send(json.dumps({"request": {"flow_id": "1", "resource": resource}}))
            answer = parse_envelope(await ws.recv())
            await asyncio.wait_for(ws.wait_closed(), 10)
        assert answer.kind == "response" and answer.flow_id == "1"
        resource = answer.resource
        assert (resource["status"], resource["status_code"]) == ("ok", 200)
        assert resource["connection_url"].endswith(f"/cloud-connector/v1/device/{resource['session_id']}")
        assert resource["authorization_header"]["Authorization"].startswith("Bearer ")
        assert resource["endpoints"] == ["/"]
        assert resource["connection_ssl_profile"] == "INGETRUST"
        assert len(resource["session_id"]) >= 22  # 128 random bits, url-safe
        assert ws.close_code == 1000

    run(scenario())


def test_the_eleven_steps_with_a_store_pos_credential_and_a_bare_serial(live):
    device = make_usable_device()
    pos = make_pos(store=device.store)
    token = token_over_http(live, device, pos)

    async def scenario() -> None:
        async with terminal_for(live, device.serial, pos, endpoints=[TRANSACTION], responder=upp_answer):
            await claim_and_talk(live, token, device.serial, device.tsn)

    run(scenario())


def test_the_eleven_steps_with_an_ma_application_and_a_fully_qualified_tsn(live, monkeypatch):
    device = make_usable_device()
    app = make_cloud_application(merchant_aggregator=device.merchant.merchant_aggregator)
    token = token_with_oauth_library(live, device, app, monkeypatch)

    async def scenario() -> None:
        # The terminal writes its credentials as a configuration file does: a JSON string.
        terminal = terminal_for(
            live,
            device.tsn.upper(),
            app,
            endpoints=[TRANSACTION],
            responder=upp_answer,
            registration_data_as_string=True,
        )
        async with terminal:
            await claim_and_talk(live, token, device.tsn.lower(), device.tsn)

    run(scenario())


def test_frames_flow_both_ways_on_two_endpoints_byte_for_byte_and_in_order(live):
    device = make_usable_device()
    pos = make_pos(store=device.store)
    token = token_over_http(live, device, pos)
    count = 1000

    def frames(direction: str, endpoint: str) -> list[str | bytes]:
        made: list[str | bytes] = []
        for i in range(count):
            if i % 2:
                made.append(f"{direction} {endpoint} #{i} é ✓ " + "x" * (i % 97))
            else:
                made.append(bytes([i % 256, 0, 255]) + bytes(range(256))[: i % 256] + direction.encode())
        return made

    async def pos_receives(session: SessionSocket) -> list[str | bytes]:
        return [await session.recv(timeout=30) for _ in range(count)]

    async def device_receives(terminal: SimulatedTerminal, endpoint: str) -> list[str | bytes]:
        inbox = terminal.inbox.setdefault(endpoint, asyncio.Queue())
        return [await asyncio.wait_for(inbox.get(), 30) for _ in range(count)]

    async def send_all(send, sent: list[str | bytes]) -> None:
        for frame in sent:
            await send(frame)

    async def scenario() -> None:
        terminal = terminal_for(live, device.serial, pos, endpoints=[TRANSACTION, PRINTER], responder=None, record=True)
        async with terminal, PosClient(live.ws_url, token=token) as client:
            claim = await client.claim(device.serial)
            sessions = {e: await client.open_session(claim, e) for e in (TRANSACTION, PRINTER)}
            to_device = {e: frames("pos->device", e) for e in sessions}
            to_pos = {e: frames("device->pos", e) for e in sessions}
            jobs = []
            for endpoint, session in sessions.items():
                jobs += [
                    pos_receives(session),
                    device_receives(terminal, endpoint),
                    send_all(session.send, to_device[endpoint]),
                    send_all(lambda f, e=endpoint: terminal.send(e, f), to_pos[endpoint]),
                ]
            results = await asyncio.gather(*jobs)
            for index, endpoint in enumerate(sessions):
                at_pos, at_device = results[4 * index], results[4 * index + 1]
                assert at_pos == to_pos[endpoint], f"device→POS frames differ on {endpoint}"
                assert at_device == to_device[endpoint], f"POS→device frames differ on {endpoint}"
                assert [type(f) for f in at_pos] == [type(f) for f in to_pos[endpoint]]
            await client.release(claim.session_id)

    run(scenario())


def test_a_device_back_within_the_grace_period_keeps_its_session_and_the_pos_its_claim(live):
    device = make_usable_device()
    pos = make_pos(store=device.store)
    token = token_over_http(live, device, pos)

    async def scenario() -> None:
        terminal = terminal_for(live, device.serial, pos, endpoints=[TRANSACTION])
        async with terminal, PosClient(live.ws_url, token=token) as client:
            claim = await client.claim(device.serial)
            session = await client.open_session(claim, TRANSACTION)
            await session.send("before")
            assert await session.recv(timeout=10) == "before"

            await terminal.drop_connection(reconnect=False)  # a network outage: no close frame
            offline = await client.next_event("device_offline", "device_online", timeout=30)
            terminal.reconnect()
            online = await client.next_event("device_offline", "device_online", timeout=30)
            await terminal.wait_online(timeout=30)

            assert (offline.type, offline.session_id, offline.tsn) == ("device_offline", claim.session_id, device.tsn)
            assert (online.type, online.session_id, online.tsn) == ("device_online", claim.session_id, device.tsn)
            assert terminal.registration.session_id == claim.session_id
            assert terminal.registrations == 2
            [status] = [d for d in await client.devices() if d.tsn == device.tsn]
            assert status.claimed_by_you and status.online
            await session.send("after")  # the same POS session socket, still open
            assert await session.recv(timeout=10) == "after"

    run(scenario())


def test_idle_sockets_stay_open_past_the_ping_interval(live):
    """Nothing flows for longer than the server's ping interval (10 s) and the channel
    layer's 5 s blocking pop: every socket is still there and working afterwards."""
    device = make_usable_device()
    pos = make_pos(store=device.store)
    token = token_over_http(live, device, pos)
    idle_seconds = 12

    async def scenario() -> None:
        closes = []
        terminal = terminal_for(live, device.serial, pos, endpoints=[TRANSACTION], on_close=closes.append)
        async with terminal, PosClient(live.ws_url, token=token) as client:
            claim = await client.claim(device.serial)
            session = await client.open_session(claim, TRANSACTION)
            await asyncio.sleep(idle_seconds)
            assert client.closed is None, client.closed
            assert closes == [] and terminal.registrations == 1
            await session.send("still here")
            assert await session.recv(timeout=10) == "still here"
            assert [d.tsn for d in await client.devices() if d.claimed_by_you] == [device.tsn]

    run(scenario())


def test_two_pos_racing_to_claim_one_device_exactly_one_wins(live):
    device = make_usable_device()
    first, second = make_pos(store=device.store, name="Till 1"), make_pos(store=device.store, name="Till 2")
    tokens = [token_over_http(live, device, first), token_over_http(live, device, second)]

    async def scenario() -> None:
        async with terminal_for(live, device.serial, first):
            clients = [await PosClient(live.ws_url, token=t).connect() for t in tokens]
            try:
                outcomes = await asyncio.gather(*(c.claim(device.serial) for c in clients), return_exceptions=True)
            finally:
                for client in clients:
                    await client.close()
        won = [o for o in outcomes if not isinstance(o, BaseException)]
        lost = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(won) == 1 and len(lost) == 1, outcomes
        assert isinstance(lost[0], ControlError), lost[0]
        assert (lost[0].status_code, lost[0].error) == (409, "session_claimed")

    run(scenario())


def test_a_forced_claim_takes_the_session_over_and_tells_the_previous_holder(live):
    device = make_usable_device()
    holder, taker = make_pos(store=device.store, name="Till 1"), make_pos(store=device.store, name="Till 2")
    holder_token, taker_token = token_over_http(live, device, holder), token_over_http(live, device, taker)

    async def scenario() -> None:
        async with (
            terminal_for(live, device.serial, holder, endpoints=[TRANSACTION]),
            PosClient(live.ws_url, token=holder_token) as first,
            PosClient(live.ws_url, token=taker_token) as second,
        ):
            claim = await first.claim(device.serial)
            old_session = await first.open_session(claim, TRANSACTION)
            await old_session.send("mine")
            assert await old_session.recv(timeout=10) == "mine"

            with pytest.raises(ControlError) as refused:
                await second.claim(device.serial)
            assert (refused.value.status_code, refused.value.error) == (409, "session_claimed")

            taken = await second.claim(device.serial, force=True)
            assert taken.session_id == claim.session_id
            assert (await old_session.wait_closed(timeout=10)).code == 4409
            event: Event = await first.next_event("session_taken_over", timeout=10)
            assert (event.session_id, event.tsn) == (claim.session_id, device.tsn)

            new_session = await second.open_session(taken, TRANSACTION)
            await new_session.send("now mine")
            assert await new_session.recv(timeout=10) == "now mine"
            refused_socket = await first.open_session(claim, TRANSACTION)
            assert (await refused_socket.wait_closed(timeout=10)).code == 4403

    run(scenario())


def test_a_pos_of_another_store_is_refused_as_if_the_device_did_not_exist(live):
    device = make_usable_device()
    own = make_pos(store=device.store)
    outsider = make_pos(store=StoreFactory(merchant=device.merchant))
    token = token_over_http(live, device, outsider)

    async def scenario() -> None:
        with pytest.raises(RegistrationRefused) as refused_registration:
            await register(
                live.ws_url,
                tsn=device.serial,
                client_id=outsider.application.client_id,
                client_secret=outsider.client_secret,
            )
        assert (refused_registration.value.status_code, refused_registration.value.error) == (404, "unknown_device")
        async with terminal_for(live, device.serial, own), PosClient(live.ws_url, token=token) as client:
            with pytest.raises(ControlError) as refused_claim:
                await client.claim(device.serial)
            assert (refused_claim.value.status_code, refused_claim.value.error) == (404, "unknown_device")
            assert device.tsn not in [d.tsn for d in await client.devices()]

    run(scenario())


def test_a_pos_listener_with_a_bad_token_is_closed_4401(live):
    async def scenario() -> None:
        async with PosClient(live.ws_url, token="not-a-token") as client:
            with pytest.raises(SocketClosed) as closed:
                await client.devices()
        assert closed.value.code == 4401

    run(scenario())


def test_the_two_management_commands_drive_a_terminal_through_the_server(live):
    device = make_usable_device()
    pos = make_pos(store=device.store)
    client_id, secret = pos.application.client_id, pos.client_secret
    token = token_over_http(live, device, pos)
    manage = [sys.executable, "manage.py"]
    simulator = subprocess.Popen(
        [*manage, "simulate_device", "--url", live.ws_url, "--tsn", device.serial, "--endpoint", TRANSACTION]
        + ["--client-id", client_id, f"--client-secret={secret}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run(wait_until_online(live, token, device.tsn))
        message = '{"request": {"flow_id": "7", "resource": {"type": "sale", "amount": 500}}}'
        out = StringIO()
        call_command(  # in this process: the POS side needs no database, only the server
            "pos_client",
            *["--url", live.http_url, "--domain", domain_of(device), "--tsn", device.serial],
            *["--client-id", client_id, f"--client-secret={secret}", "--message", message],
            stdout=out,
        )
    finally:
        simulator.send_signal(signal.SIGINT)
        simulator_out, simulator_err = simulator.communicate(timeout=30)
    printed = out.getvalue()
    assert f"claimed {device.tsn}" in printed
    assert f"→ {message}" in printed
    assert '"amount": 500' in printed.split("←", 1)[1]
    assert "released" in printed
    assert "registered: session" in simulator_out, simulator_err
    assert f"{TRANSACTION} ← {message}" in simulator_out
    assert simulator_out.rstrip().endswith("stopped"), simulator_out + simulator_err
    assert "Traceback" not in simulator_err


async def wait_until_online(live: LiveServer, token: str, tsn: str) -> None:
    async with PosClient(live.ws_url, token=token) as client:
        while not any(d.tsn == tsn and d.online for d in await client.devices()):
            await asyncio.sleep(0.1)
