"""The client library (connector/clients) and its management commands, against small fake
servers started here with `websockets.asyncio.server.serve` on a free port.

The fakes speak just enough of docs/protocol.md for one behaviour at a time; the real
server is exercised in test_flow_e2e.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest
from django.core.management import CommandError, call_command
from websockets.asyncio.server import ServerConnection, serve

from connector.clients import (
    Claim,
    ControlError,
    PosClient,
    RegistrationRefused,
    SimulatedTerminal,
    SocketClosed,
    TerminalStopped,
    TokenRefused,
    fetch_token,
    register,
    upp_answer,
)
from connector.clients.common import endpoint_url, http_base, parse_envelope, websocket_base

ROOT = Path(__file__).resolve().parents[2]
DEVICE_LISTENER = "/cloud-connector/v1/device-listener"
POS_LISTENER = "/cloud-connector/v1/pos-listener"

Handler = Callable[[ServerConnection], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def response(flow_id: str | None, **resource: Any) -> str:
    return json.dumps({"response": {"flow_id": flow_id, "resource": resource}})


def event(type_: str, **resource: Any) -> str:
    return json.dumps({"event": {"flow_id": "ev-1", "resource": {"type": type_, **resource}}})


class FakeDeviceSide:
    """device-listener and device sockets: records registrations, hands device sockets to the test."""

    def __init__(self, *, session_id: str = "sess-1", refusal: dict[str, Any] | None = None) -> None:
        self.session_id = session_id
        self.refusal = refusal
        self.registrations: list[tuple[dict[str, Any], str | None]] = []
        self.sockets: asyncio.Queue[tuple[str, ServerConnection]] = asyncio.Queue()

    async def __call__(self, ws: ServerConnection) -> None:
        path = ws.request.path
        if path == DEVICE_LISTENER:
            await self.registration(ws)
        elif path.startswith(f"/cloud-connector/v1/device/{self.session_id}"):
            await self.device_socket(ws, path.removeprefix(f"/cloud-connector/v1/device/{self.session_id}") or "/")
        else:
            await ws.close(4404)

    async def registration(self, ws: ServerConnection) -> None:
        envelope = parse_envelope(await ws.recv())
        self.registrations.append((envelope.resource, ws.request.headers.get("Authorization")))
        if self.refusal is not None:
            await ws.send(response(envelope.flow_id, status="error", **self.refusal))
        else:
            host = ws.request.headers["Host"]
            await ws.send(
                response(
                    envelope.flow_id,
                    status="ok",
                    status_code=200,
                    session_id=self.session_id,
                    connection_url=f"ws://{host}/cloud-connector/v1/device/{self.session_id}",
                    connection_ssl_profile="INGETRUST",
                    authorization_header={"Authorization": f"Bearer jwt-{self.session_id}"},
                    endpoints=envelope.resource.get("endpoints", ["/"]),
                    expires_in=300,
                )
            )
        await ws.close(1000)

    async def device_socket(self, ws: ServerConnection, endpoint: str) -> None:
        if ws.request.headers.get("Authorization") != f"Bearer jwt-{self.session_id}":
            await ws.close(4401)
            return
        await self.sockets.put((endpoint, ws))
        await ws.wait_closed()

    async def next_socket(self) -> tuple[str, ServerConnection]:
        return await asyncio.wait_for(self.sockets.get(), 10)


# -- URLs and envelopes ---------------------------------------------------------------------


def test_base_urls_accept_http_and_ws_schemes_and_drop_a_trailing_slash():
    assert websocket_base("http://127.0.0.1:8000/") == "ws://127.0.0.1:8000"
    assert websocket_base("https://api.example.com") == "wss://api.example.com"
    assert http_base("wss://api.example.com/") == "https://api.example.com"


def test_a_url_that_is_not_a_base_url_is_a_clear_error():
    with pytest.raises(Exception, match="not a base URL"):
        websocket_base("127.0.0.1:8000")


def test_the_root_endpoint_is_the_connection_url_itself_and_others_are_appended():
    assert endpoint_url("ws://h/cloud-connector/v1/device/abc", "/") == "ws://h/cloud-connector/v1/device/abc"
    assert (
        endpoint_url("ws://h/cloud-connector/v1/device/abc", "/upp/v1/x")
        == "ws://h/cloud-connector/v1/device/abc/upp/v1/x"
    )


def test_a_frame_that_is_not_an_envelope_is_a_protocol_violation():
    for frame in ("not json", "[]", '{"request": 1}', '{"response": {"flow_id": "1"}}', b"{}"):
        with pytest.raises(Exception, match="not JSON|not a control envelope|without a resource|binary"):
            parse_envelope(frame)


# -- registration ---------------------------------------------------------------------------


async def test_registration_sends_the_credentials_and_returns_the_connection_details():
    fake = FakeDeviceSide()
    async with fake_server(fake) as url:
        registration = await register(
            url, tsn="230123456", endpoints=["/upp/v1/transaction"], client_id="cid", client_secret="s3cret"
        )
    sent, authorization = fake.registrations[0]
    assert sent == {
        "tsn": "230123456",
        "endpoints": ["/upp/v1/transaction"],
        "custom_registration_data": {"client_id": "cid", "client_secret": "s3cret"},
    }
    assert authorization is None
    assert registration.session_id == "sess-1"
    assert registration.connection_url == f"{url}/cloud-connector/v1/device/sess-1"
    assert registration.headers == {"Authorization": "Bearer jwt-sess-1"}
    assert registration.endpoints == ["/upp/v1/transaction"]
    assert registration.ssl_profile == "INGETRUST"


async def test_registration_can_carry_the_credentials_as_a_string_or_a_bearer_token_instead():
    fake = FakeDeviceSide()
    async with fake_server(fake) as url:
        await register(url, tsn="1", client_id="cid", client_secret="s", as_string=True)
        await register(url, tsn="1", token="tok")
    as_string, _ = fake.registrations[0]
    assert json.loads(as_string["custom_registration_data"]) == {"client_id": "cid", "client_secret": "s"}
    by_token, authorization = fake.registrations[1]
    assert "custom_registration_data" not in by_token and "endpoints" not in by_token
    assert authorization == "Bearer tok"


async def test_a_refused_registration_raises_the_servers_code_message_and_level():
    refusal = {"status_code": 403, "error": "service_not_active", "message": "not active", "level": "merchant"}
    async with fake_server(FakeDeviceSide(refusal=refusal)) as url:
        with pytest.raises(RegistrationRefused) as refused:
            await register(url, tsn="1", client_id="c", client_secret="s")
    assert (refused.value.status_code, refused.value.error, refused.value.level) == (
        403,
        "service_not_active",
        "merchant",
    )
    assert str(refused.value) == "registration refused: 403 service_not_active – not active (level: merchant)"


async def test_a_registration_closed_without_an_answer_reports_the_close_code():
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(4429, "rate limited")

    async with fake_server(handler) as url:
        with pytest.raises(SocketClosed) as closed:
            await register(url, tsn="1", client_id="c", client_secret="s")
    assert closed.value.code == 4429
    assert str(closed.value) == "device-listener closed: 4429 rate limited"


# -- the simulated terminal -----------------------------------------------------------------


async def test_the_terminal_opens_one_socket_per_endpoint_with_the_jwt_and_echoes_text_and_binary():
    fake = FakeDeviceSide()
    async with fake_server(fake) as url:
        endpoints = ["/", "/upp/v1/printer"]
        async with SimulatedTerminal(url, tsn="1", endpoints=endpoints, client_id="c", client_secret="s") as terminal:
            opened = dict([await fake.next_socket(), await fake.next_socket()])
            assert sorted(opened) == sorted(endpoints)
            assert terminal.online
            for endpoint, ws in opened.items():
                await ws.send(f"hello {endpoint}")
                assert await ws.recv() == f"hello {endpoint}"
                await ws.send(b"\x00\xff binary")
                assert await ws.recv() == b"\x00\xff binary"


async def test_the_terminal_answers_with_a_script_per_endpoint_and_records_what_it_received():
    fake = FakeDeviceSide()
    script = {"/a": "fixed answer", "/b": lambda endpoint, frame: f"{endpoint}:{frame}"}
    async with fake_server(fake) as url:
        terminal = SimulatedTerminal(
            url, tsn="1", endpoints=["/a", "/b", "/c"], client_id="c", client_secret="s", responder=script, record=True
        )
        async with terminal:
            opened = dict([await fake.next_socket() for _ in range(3)])
            await opened["/a"].send("x")
            await opened["/b"].send("y")
            await opened["/c"].send("z")
            assert await opened["/a"].recv() == "fixed answer"
            assert await opened["/b"].recv() == "/b:y"
            assert await asyncio.wait_for(terminal.inbox["/c"].get(), 5) == "z"
            await terminal.send("/c", "unsolicited")
            assert await opened["/c"].recv() == "unsolicited"


async def test_the_terminal_can_answer_with_an_async_callable():
    fake = FakeDeviceSide()

    async def slow_upper(endpoint: str, frame: str | bytes) -> str:
        await asyncio.sleep(0)
        return str(frame).upper()

    async with fake_server(fake) as url:
        async with SimulatedTerminal(url, tsn="1", client_id="c", client_secret="s", responder=slow_upper):
            _, ws = await fake.next_socket()
            await ws.send("abc")
            assert await ws.recv() == "ABC"


def test_the_canned_upp_answer_keeps_the_flow_id_and_the_amount():
    answer = json.loads(
        upp_answer(
            "/upp/v1/transaction",
            json.dumps({"request": {"flow_id": "7", "resource": {"type": "sale", "amount": 1250}}}),
        )
    )
    assert answer["response"]["flow_id"] == "7"
    assert answer["response"]["resource"]["type"] == "sale"
    assert answer["response"]["resource"]["amount"] == 1250
    assert answer["response"]["resource"]["status"] == "ok"
    assert upp_answer("/", "plain text") == "plain text"


async def test_the_terminal_registers_again_after_the_server_drops_the_socket():
    fake = FakeDeviceSide()
    closes = []
    async with fake_server(fake) as url:
        terminal = SimulatedTerminal(
            url, tsn="1", client_id="c", client_secret="s", min_delay=0.01, on_close=closes.append
        )
        async with terminal:
            _, first = await fake.next_socket()
            first.transport.abort()  # no close frame: a lost connection
            _, second = await fake.next_socket()
            await terminal.wait_online()
            await second.send("still there?")
            assert await second.recv() == "still there?"
            await second.close(1001, "going away")
            _, third = await fake.next_socket()
            assert third is not second
    assert len(fake.registrations) == 3
    assert terminal.registrations == 3
    assert [c.code for c in closes] == [1006, 1001]


async def test_an_outage_without_reconnect_lasts_until_the_terminal_is_told_to_come_back():
    fake = FakeDeviceSide()
    async with fake_server(fake) as url:
        async with SimulatedTerminal(url, tsn="1", client_id="c", client_secret="s", min_delay=0.01) as terminal:
            _, first = await fake.next_socket()
            await terminal.drop_connection(reconnect=False)
            await asyncio.wait_for(first.wait_closed(), 5)
            assert len(fake.registrations) == 1
            terminal.reconnect()
            _, second = await fake.next_socket()
            assert await terminal.wait_online() == terminal.registration
    assert len(fake.registrations) == 2


async def test_the_terminal_closes_its_other_endpoints_when_one_is_lost_and_reopens_all():
    fake = FakeDeviceSide()
    async with fake_server(fake) as url:
        async with SimulatedTerminal(
            url, tsn="1", endpoints=["/a", "/b"], client_id="c", client_secret="s", min_delay=0.01
        ):
            opened = dict([await fake.next_socket(), await fake.next_socket()])
            await opened["/a"].close(4410, "session ended")
            await asyncio.wait_for(opened["/b"].wait_closed(), 5)
            assert opened["/b"].close_code == 1000
            reopened = dict([await fake.next_socket(), await fake.next_socket()])
            assert sorted(reopened) == ["/a", "/b"]


async def test_the_terminal_stops_when_another_socket_replaces_its_endpoint():
    fake = FakeDeviceSide()
    async with fake_server(fake) as url:
        terminal = SimulatedTerminal(url, tsn="1", client_id="c", client_secret="s", min_delay=0.01)
        await terminal.start()
        _, ws = await fake.next_socket()
        await ws.close(4409, "replaced")
        with pytest.raises(TerminalStopped, match="4409"):
            await asyncio.wait_for(terminal.wait_stopped(), 5)
    assert len(fake.registrations) == 1


async def test_the_terminal_stops_when_its_registration_is_refused():
    refusal = {"status_code": 404, "error": "unknown_device", "message": "no such device"}
    async with fake_server(FakeDeviceSide(refusal=refusal)) as url:
        terminal = SimulatedTerminal(url, tsn="1", client_id="c", client_secret="s")
        with pytest.raises(TerminalStopped, match="registration refused: 404 unknown_device"):
            await terminal.start()


async def test_the_terminal_retries_a_rate_limited_registration_and_gives_up_after_max_attempts():
    refusal = {"status_code": 429, "error": "rate_limited", "message": "slow down"}
    retries = []
    fake = FakeDeviceSide(refusal=refusal)
    async with fake_server(fake) as url:
        terminal = SimulatedTerminal(
            url,
            tsn="1",
            client_id="c",
            client_secret="s",
            min_delay=0.01,
            max_attempts=2,
            on_retry=lambda why, delay: retries.append(why),
        )
        with pytest.raises(TerminalStopped, match="gave up after 2 attempts"):
            await terminal.start()
    assert len(fake.registrations) == 3
    assert retries == ["registration refused: 429 rate_limited – slow down"] * 2


async def test_the_terminal_keeps_trying_an_unreachable_server_within_its_bound():
    async with fake_server(FakeDeviceSide()) as url:
        pass  # the port is free again: nothing listens there
    retries: list[float] = []
    terminal = SimulatedTerminal(
        url,
        tsn="1",
        client_id="c",
        client_secret="s",
        min_delay=0.01,
        max_delay=0.02,
        max_attempts=3,
        on_retry=lambda why, delay: retries.append(delay),
    )
    with pytest.raises(TerminalStopped, match="gave up after 3 attempts"):
        await terminal.start()
    assert len(retries) == 3
    assert all(delay <= 0.02 for delay in retries)


async def test_stopping_the_terminal_closes_its_sockets_with_1000():
    fake = FakeDeviceSide()
    async with fake_server(fake) as url:
        terminal = SimulatedTerminal(url, tsn="1", client_id="c", client_secret="s")
        await terminal.start()
        _, ws = await fake.next_socket()
        await terminal.stop()
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1000
        assert not terminal.online


# -- the POS client -------------------------------------------------------------------------


async def test_responses_are_matched_to_their_requests_by_flow_id_whatever_their_order():
    async def handler(ws: ServerConnection) -> None:
        first = parse_envelope(await ws.recv())
        second = parse_envelope(await ws.recv())
        await ws.send(response("nobody-asked", status="ok", status_code=200))
        await ws.send(response(second.flow_id, status="ok", status_code=200, answer=second.resource["tsn"]))
        await ws.send(response(first.flow_id, status="ok", status_code=200, answer=first.resource["tsn"]))
        await ws.wait_closed()

    async with fake_server(handler) as url:
        async with PosClient(url, token="t") as pos:
            one, two = await asyncio.gather(
                pos.request({"action": "claim", "tsn": "one"}), pos.request({"action": "claim", "tsn": "two"})
            )
    assert (one["answer"], two["answer"]) == ("one", "two")


async def test_events_go_to_the_queue_and_the_callback_and_not_to_a_pending_request():
    async def handler(ws: ServerConnection) -> None:
        request = parse_envelope(await ws.recv())
        await ws.send(event("device_offline", session_id="s1", tsn="Ingenico-Lane3000-1"))
        await ws.send(event("device_online", session_id="s1", tsn="Ingenico-Lane3000-1"))
        await ws.send(response(request.flow_id, status="ok", status_code=200, devices=[]))
        await ws.wait_closed()

    seen = []
    async with fake_server(handler) as url:
        async with PosClient(url, token="t", on_event=seen.append) as pos:
            assert await pos.devices() == []
            offline = await pos.next_event()
            online = await pos.next_event("device_online")
    assert (offline.type, offline.session_id, offline.tsn) == ("device_offline", "s1", "Ingenico-Lane3000-1")
    assert online.type == "device_online"
    assert [e.type for e in seen] == ["device_offline", "device_online"]


async def test_an_error_response_raises_a_control_error_with_the_code_and_message():
    async def handler(ws: ServerConnection) -> None:
        request = parse_envelope(await ws.recv())
        await ws.send(
            response(
                request.flow_id,
                status="error",
                status_code=409,
                error="device_offline",
                message="the device has no live session",
            )
        )
        await ws.wait_closed()

    async with fake_server(handler) as url:
        async with PosClient(url, token="t") as pos:
            with pytest.raises(ControlError) as refused:
                await pos.claim("230123456")
    assert (refused.value.status_code, refused.value.error) == (409, "device_offline")
    assert str(refused.value) == "claim refused: 409 device_offline – the device has no live session"


async def test_the_pos_client_sends_the_bearer_token_and_the_claim_as_the_contract_writes_it():
    received = {}

    async def handler(ws: ServerConnection) -> None:
        received["authorization"] = ws.request.headers.get("Authorization")
        request = parse_envelope(await ws.recv())
        received["resource"] = request.resource
        await ws.send(
            response(
                request.flow_id,
                status="ok",
                status_code=200,
                session_id="s1",
                session_url="ws://h/cloud-connector/v1/session/s1",
                endpoints=["/upp/v1/transaction"],
                tsn="Ingenico-Lane3000-230123456",
            )
        )
        await ws.wait_closed()

    async with fake_server(handler) as url:
        async with PosClient(url, token="tok-1") as pos:
            claim = await pos.claim("230123456", force=True)
    assert received == {
        "authorization": "Bearer tok-1",
        "resource": {"action": "claim", "tsn": "230123456", "force": True},
    }
    assert claim.session_id == "s1"
    assert claim.url("/upp/v1/transaction") == "ws://h/cloud-connector/v1/session/s1/upp/v1/transaction"
    assert claim.tsn == "Ingenico-Lane3000-230123456"


async def test_pending_requests_fail_with_the_close_code_when_the_listener_closes():
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(4401, "token revoked")

    async with fake_server(handler) as url:
        async with PosClient(url, token="revoked") as pos:
            with pytest.raises(SocketClosed) as closed:
                await pos.devices()
            assert (await pos.wait_closed(5)).code == 4401
            with pytest.raises(SocketClosed):
                await pos.next_event()
    assert closed.value.code == 4401
    assert str(closed.value) == "pos-listener closed: 4401 not authenticated (token revoked)"


async def test_a_malformed_server_frame_is_ignored_and_the_client_keeps_working():
    async def handler(ws: ServerConnection) -> None:
        request = parse_envelope(await ws.recv())
        await ws.send("not json")
        await ws.send(b"\x00binary")
        await ws.send(response(request.flow_id, status="ok", status_code=200, devices=[]))
        await ws.wait_closed()

    async with fake_server(handler) as url:
        async with PosClient(url, token="t") as pos:
            assert await pos.devices() == []


async def test_a_session_socket_opens_session_url_plus_endpoint_with_the_bearer_and_relays_both_frame_kinds():
    seen = {}

    async def handler(ws: ServerConnection) -> None:
        seen["path"] = ws.request.path
        seen["authorization"] = ws.request.headers.get("Authorization")
        async for frame in ws:
            await ws.send(frame)

    async with fake_server(handler) as url:
        claim = Claim.from_resource(
            {"session_id": "s1", "session_url": f"{url}/cloud-connector/v1/session/s1", "endpoints": ["/e"]}
        )
        pos = PosClient(url, token="tok")
        session = await pos.open_session(claim, "/e")
        await session.send("text")
        await session.send(b"\x01\x02")
        assert await session.recv(timeout=5) == "text"
        assert await session.recv(timeout=5) == b"\x01\x02"
        await pos.close()
    assert seen == {"path": "/cloud-connector/v1/session/s1/e", "authorization": "Bearer tok"}


async def test_a_session_socket_closed_by_the_server_reports_its_close_code():
    async def handler(ws: ServerConnection) -> None:
        await ws.close(4503, "device endpoint not connected")

    async with fake_server(handler) as url:
        session = await PosClient(url, token="t").open_session(f"{url}/cloud-connector/v1/session/s1", "/")
        with pytest.raises(SocketClosed) as closed:
            await session.recv(timeout=5)
    assert closed.value.code == 4503


# -- access tokens --------------------------------------------------------------------------


@contextlib.contextmanager
def token_endpoint(answer: tuple[int, dict[str, Any]]):
    """An HTTP server answering every POST with `answer`; yields (base URL, received requests)."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server API)
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            received.append({"path": self.path, "authorization": self.headers["Authorization"], "form": parse_qs(body)})
            status, payload = answer
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


async def test_a_token_is_fetched_with_http_basic_client_credentials():
    ok = (200, {"access_token": "abc", "token_type": "Bearer", "expires_in": 3600, "scope": "cloud-connector"})
    with token_endpoint(ok) as (url, received):
        token = await fetch_token(url, domain="demo", client_id="id:1", client_secret="s&cret", scope="cloud-connector")
    assert (token.access_token, token.expires_in, token.scope) == ("abc", 3600, "cloud-connector")
    request = received[0]
    assert request["path"] == "/oauth2/v1/demo/token"
    assert request["form"] == {"grant_type": ["client_credentials"], "scope": ["cloud-connector"]}
    scheme, _, encoded = request["authorization"].partition(" ")
    client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
    assert (scheme, unquote(client_id), unquote(secret)) == ("Basic", "id:1", "s&cret")


async def test_a_refused_token_request_raises_the_oauth_error():
    refused = (401, {"error": "invalid_client", "error_description": "unknown client"})
    with token_endpoint(refused) as (url, _):
        with pytest.raises(TokenRefused) as error:
            await fetch_token(url, domain="demo", client_id="x", client_secret="y")
    assert (error.value.status, error.value.error) == (401, "invalid_client")
    assert str(error.value) == "token refused: 401 invalid_client – unknown client"


# -- management commands ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--client-id", "c", "--client-secret", "s", "--tsn", "1"], "the following arguments are required: --domain"),
        (["--domain", "d", "--tsn", "1"], "give --client-id and --client-secret, or --token"),
        (["--domain", "d", "--token", "t"], "give --tsn"),
        (["--domain", "d", "--token", "t", "--tsn", "1", "--wait", "0"], "--wait must be positive"),
        (["--domain", "d", "--token", "t", "--tsn", "1", "--url", "127.0.0.1:8000"], "not a base URL"),
    ],
)
def test_pos_client_refuses_bad_arguments_with_a_clear_message(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("pos_client", *args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--client-id", "c", "--client-secret", "s"], "the following arguments are required: --tsn"),
        (["--tsn", "1", "--client-id", "c"], "give --client-id and --client-secret, --token, or --cert and --key"),
        (["--tsn", "1", "--token", "t", "--answer", "shout"], "invalid choice"),
        (["--tsn", "1", "--token", "t", "--url", "ftp://x"], "not a base URL"),
    ],
)
def test_simulate_device_refuses_bad_arguments_with_a_clear_message(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("simulate_device", *args)


class FakePosSide:
    """pos-listener and session sockets: claims succeed for `online_tsn`, the session echoes."""

    def __init__(self, online_tsn: str = "230123456") -> None:
        self.online_tsn = online_tsn
        self.released: list[str] = []

    async def __call__(self, ws: ServerConnection) -> None:
        if ws.request.path == POS_LISTENER:
            await self.listener(ws)
        else:
            async for frame in ws:
                await ws.send(f"answer to {frame}")

    async def listener(self, ws: ServerConnection) -> None:
        host = ws.request.headers["Host"]
        async for frame in ws:
            request = parse_envelope(frame)
            action = request.resource["action"]
            if action == "claim" and request.resource["tsn"] == self.online_tsn:
                await ws.send(
                    response(
                        request.flow_id,
                        status="ok",
                        status_code=200,
                        session_id="s1",
                        session_url=f"ws://{host}/cloud-connector/v1/session/s1",
                        endpoints=["/upp/v1/transaction"],
                        tsn=f"Ingenico-Lane3000-{self.online_tsn}",
                    )
                )
            elif action == "claim":
                await ws.send(
                    response(
                        request.flow_id,
                        status="error",
                        status_code=409,
                        error="device_offline",
                        message="the device has no live session",
                    )
                )
            elif action == "release":
                self.released.append(request.resource["session_id"])
                await ws.send(response(request.flow_id, status="ok", status_code=200))
            else:
                devices = [{"tsn": "Ingenico-Lane3000-1", "online": True, "claimed": False, "claimed_by_you": False}]
                await ws.send(response(request.flow_id, status="ok", status_code=200, devices=devices))


async def test_pos_client_claims_sends_the_message_prints_the_answer_and_releases():
    fake = FakePosSide()
    out = StringIO()
    async with fake_server(fake) as url:
        args = ["--url", url, "--domain", "d", "--token", "t", "--tsn", "230123456", "--message", "hi", "--devices"]
        await asyncio.to_thread(call_command, "pos_client", *args, stdout=out)
    lines = out.getvalue().splitlines()
    assert "Ingenico-Lane3000-1: online, free" in lines
    assert any(line.startswith("claimed Ingenico-Lane3000-230123456: session s1") for line in lines)
    assert "→ hi" in lines and "← answer to hi" in lines
    assert fake.released == ["s1"]


async def test_pos_client_reports_a_refused_claim_in_one_line():
    async with fake_server(FakePosSide()) as url:
        args = ["--url", url, "--domain", "d", "--token", "t", "--tsn", "999", "--message", "hi"]
        with pytest.raises(CommandError) as refused:
            await asyncio.to_thread(call_command, "pos_client", *args, stdout=StringIO())
    assert str(refused.value) == "claim refused: 409 device_offline – the device has no live session"


async def test_pos_client_exits_non_zero_with_one_line_and_no_traceback():
    async with fake_server(FakePosSide()) as url:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "manage.py",
            "pos_client",
            *["--url", url, "--domain", "d", "--token", "t", "--tsn", "999", "--message", "hi"],
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode != 0
    assert stderr.decode().strip() == "CommandError: claim refused: 409 device_offline – the device has no live session"


async def test_pos_client_reports_an_unreachable_server_in_one_line():
    async with fake_server(FakePosSide()) as url:
        pass  # nothing listens there any more
    with pytest.raises(CommandError, match="cannot reach"):
        await asyncio.to_thread(call_command, "pos_client", "--url", url, "--domain", "d", "--token", "t", "--tsn", "1")


async def test_simulate_device_reports_a_refused_registration_in_one_line():
    refusal = {"status_code": 401, "error": "invalid_client", "message": "unknown client id or wrong secret"}
    async with fake_server(FakeDeviceSide(refusal=refusal)) as url:
        args = ["--url", url, "--tsn", "1", "--client-id", "c", "--client-secret", "wrong"]
        with pytest.raises(CommandError) as refused:
            await asyncio.to_thread(call_command, "simulate_device", *args, stdout=StringIO())
    assert str(refused.value) == "registration refused: 401 invalid_client – unknown client id or wrong secret"
