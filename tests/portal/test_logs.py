"""Structured logs (portal/logs.py): JSON lines with the context fields, readable text, the
request id, and no secret in any line, down to a live server's whole log."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests
from django.test import Client

from connector.clients import PosClient, SimulatedTerminal, fetch_token_sync, register, upp_answer
from connector.clients.pos import basic_credentials
from portal import logs
from tests.factories import make_pos, make_usable_device
from tests.live import LiveServer, run_bounded, start_server

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzaWQiOiJzZXNzaW9uLTEiLCJleHAiOjE4MDAwMDAwMDB9.c2lnbmF0dXJlLXZhbHVlLWhlcmU"
)
SECRET = "s3cr3t-Client-Secret-Value-0123456789"
TOKEN = "AcCeSsToKeN-0123456789-abcdefghijklmnop"


def handler_for(formatter: logging.Formatter) -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.AddContext())
    handler.addFilter(logs.ScrubSecrets())
    handler.setFormatter(formatter)
    return handler, stream


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Every record of the test logger and of django.request, as the production handler writes them."""
    handler, stream = handler_for(logs.JsonFormatter())
    loggers = [logging.getLogger("tests.logs"), logging.getLogger("django.request")]
    for logger in loggers:
        logger.addHandler(handler)
    loggers[0].setLevel(logging.DEBUG)
    yield stream
    for logger in loggers:
        logger.removeHandler(handler)


def parsed(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_carries_the_basics_and_the_context_fields(json_lines):
    log = logging.getLogger("tests.logs")
    log.info("registered %s", "ABC-1-2", extra={"session_id": "session-1", "tsn": "ABC-1-2", "flow_id": "7"})
    [line] = parsed(json_lines)
    assert line["level"] == "INFO"
    assert line["logger"] == "tests.logs"
    assert line["message"] == "registered ABC-1-2"
    assert line["timestamp"].endswith("+00:00") and "T" in line["timestamp"]
    assert line["worker"] == logs.worker()
    assert (line["session_id"], line["tsn"], line["flow_id"]) == ("session-1", "ABC-1-2", "7")
    assert "client_id" not in line  # fields that do not apply are left out


def test_a_logger_adapter_is_how_connector_and_accounts_attach_their_fields(json_lines):
    adapter = logging.LoggerAdapter(logging.getLogger("tests.logs"), {"client_id": "pos-client", "session_id": "s-9"})
    adapter.warning("claim refused")
    [line] = parsed(json_lines)
    assert (line["client_id"], line["session_id"], line["level"]) == ("pos-client", "s-9", "WARNING")


def test_bound_fields_reach_every_line_of_the_context_and_go_with_it(json_lines):
    log = logging.getLogger("tests.logs")
    with logs.bound(session_id="outer"):
        log.info("one")
        with logs.bound(tsn="T-1"):
            log.info("two")
        log.info("three", extra={"session_id": "explicit"})
    log.info("four")
    one, two, three, four = parsed(json_lines)
    assert one["session_id"] == "outer" and "tsn" not in one
    assert (two["session_id"], two["tsn"]) == ("outer", "T-1")
    assert three["session_id"] == "explicit"  # the record's own field wins
    assert "session_id" not in four
    with pytest.raises(ValueError, match="not a log context field: password"):
        logs.bind(password="x")


def test_fields_outside_the_list_are_never_written(json_lines):
    logging.getLogger("tests.logs").info("x", extra={"client_secret": SECRET, "credentials": {"secret": SECRET}})
    text = json_lines.getvalue()
    assert SECRET not in text
    assert "credentials" not in parsed(json_lines)[0]


def test_an_exception_is_one_json_line_with_its_traceback_scrubbed(json_lines):
    try:
        raise ValueError(f"refused client_secret={SECRET}")
    except ValueError:
        logging.getLogger("tests.logs").exception("token request failed")
    [line] = parsed(json_lines)
    assert "Traceback" in line["exception"] and "ValueError" in line["exception"]
    assert SECRET not in json_lines.getvalue()


SECRET_SHAPES = [
    f"POST body grant_type=client_credentials&client_secret={SECRET}&scope=cloud-connector",
    f"GET /api/v1/stores/?access_token={TOKEN} HTTP/1.1",
    f'{{"client_id": "abc", "client_secret": "{SECRET}"}}',
    f"{{'client_secret': '{SECRET}', 'client_id': 'abc'}}",
    f'"access_token": "{TOKEN}", "token_type": "Bearer"',
    f"Authorization: Bearer {TOKEN}",
    f"headers={{'authorization': 'Bearer {TOKEN}'}}",
    f"Authorization: {basic_credentials('pos-client', SECRET)}",
    f'"authorization_header": {{"Authorization": "Bearer {JWT}"}}',
    f"a pasted device token {JWT} in a message",
    f"refresh_token={TOKEN}; password={SECRET}",
]


@pytest.mark.parametrize("text", SECRET_SHAPES)
@pytest.mark.parametrize("formatter", [logs.JsonFormatter(), logs.TextFormatter()], ids=["json", "text"])
def test_no_shape_of_secret_survives_either_format(text, formatter):
    handler, stream = handler_for(formatter)
    logger = logging.getLogger("tests.logs.scrub")
    logger.addHandler(handler)
    try:
        logger.warning("%s", text)
        logger.warning(text)
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    for secret in (SECRET, TOKEN, JWT, basic_credentials("pos-client", SECRET).split()[1]):
        assert secret not in written
    assert logs.SCRUBBED in written


def test_scrubbing_leaves_ordinary_text_alone():
    ordinary = "Bearer token missing; basic check passed for tsn ABC-1-2 (tokens_revoked: 0)"
    assert logs.scrub(ordinary) == ordinary


def test_the_text_format_is_one_readable_line_with_the_context_at_the_end():
    handler, stream = handler_for(logs.TextFormatter())
    logger = logging.getLogger("tests.logs.text")
    logger.addHandler(handler)
    try:
        with logs.bound(request_id="r-1"):
            logger.info("device socket opened", extra={"session_id": "s-1"})
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue().strip()
    assert " INFO tests.logs.text: device socket opened [request_id=r-1 session_id=s-1]" in line


# --- the request id -------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_request_without_an_id_gets_one_and_every_line_it_logs_carries_it(json_lines):
    response = Client().get("/api/v1/no-such-resource/")
    request_id = response["X-Request-ID"]
    assert len(request_id) == 32
    lines = [line for line in parsed(json_lines) if line["logger"] == "django.request"]
    assert lines, "Django logs a 4xx answer on django.request"
    assert {line["request_id"] for line in lines} == {request_id}


@pytest.mark.django_db
def test_the_callers_request_id_is_kept_and_a_malformed_one_replaced(json_lines):
    assert Client().get("/healthz", HTTP_X_REQUEST_ID="nginx-4f1c.2").get("X-Request-ID") == "nginx-4f1c.2"
    forged = Client().get("/healthz", HTTP_X_REQUEST_ID='x"\n{"level": "CRITICAL"}')
    assert forged["X-Request-ID"] != 'x"\n{"level": "CRITICAL"}'
    assert len(forged["X-Request-ID"]) == 32


@pytest.mark.parametrize(
    ("path", "status", "logged"),
    [("/readyz", 200, False), ("/metrics", 200, False), ("/readyz", 503, True), ("/api/v1/stores/", 200, True)],
)
def test_successful_probes_are_left_out_of_the_access_log(path, status, logged):
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "GET", path, "1.1", status),
        None,
    )
    assert logs.QuietProbes().filter(record) is logged


def test_production_writes_json_and_development_text():
    script = "import django; django.setup(); from django.conf import settings as s; print(s.LOG_FORMAT)"
    production = {
        "DEBUG": "0",
        "SECRET_KEY": "k" * 20 + "-production-secret-key-0123456789",
        "CC_JWT_KEYS": "k1:" + "j" * 16 + "-device-token-signing-key-0123456789",
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
    }

    def log_format(**env: str) -> subprocess.CompletedProcess:
        variables = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "portal.settings", **env}
        return subprocess.run([sys.executable, "-c", script], env=variables, capture_output=True, text=True, timeout=60)

    assert log_format().stdout.strip() == "text"
    assert log_format(**production).stdout.strip() == "json"
    assert log_format(LOG_FORMAT="JSON").stdout.strip() == "json"
    refused = log_format(LOG_FORMAT="yaml")
    assert refused.returncode != 0 and "LOG_FORMAT must be json or text" in refused.stderr


# --- a live server's whole log ---------------------------------------------------------------


@pytest.fixture
def json_server(tmp_path, transactional_db) -> Iterator[LiveServer]:
    server = start_server(tmp_path, server="uvicorn", LOG_FORMAT="json", CC_SWEEP_INTERVAL="1")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.live
def test_a_live_servers_log_is_json_lines_without_any_secret_it_was_given(json_server):
    device = make_usable_device()
    pos = make_pos(store=device.store)
    client_id, client_secret = pos.application.client_id, pos.client_secret
    token = fetch_token_sync(
        json_server.http_url,
        domain=device.tenant.domain,
        client_id=client_id,
        client_secret=client_secret,
        scope="cloud-connector",
    ).access_token
    refused = requests.post(
        f"{json_server.http_url}/oauth2/v1/{device.tenant.domain}/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret + "x"},
        timeout=10,
    )
    assert refused.status_code == 401
    # A client that puts its token in the query string: uvicorn's access log line has it.
    assert requests.get(f"{json_server.http_url}/api/v1/stores/?access_token={token}", timeout=10).status_code == 401
    secrets_used = {client_secret, client_secret + "x", token, basic_credentials(client_id, client_secret).split()[1]}
    claimed: dict[str, str] = {}

    async def scenario() -> None:
        registration = await register(
            json_server.ws_url, tsn=device.serial, client_id=client_id, client_secret=client_secret
        )
        secrets_used.add(registration.headers["Authorization"].split()[1])  # the device JWT
        terminal = SimulatedTerminal(
            json_server.ws_url,
            tsn=device.serial,
            client_id=client_id,
            client_secret=client_secret,
            endpoints=["/upp/v1/transaction"],
            responder=upp_answer,
        )
        async with terminal, PosClient(json_server.ws_url, token=token) as pos_client:
            claim = await pos_client.claim(device.serial)
            claimed.update(session_id=claim.session_id, tsn=claim.tsn)
            session = await pos_client.open_session(claim, "/upp/v1/transaction")
            await session.send('{"request": {"flow_id": "1", "resource": {"type": "sale", "amount": 5}}}')
            await session.recv(timeout=10)
            await pos_client.release(claim.session_id)
        await asyncio.sleep(1.5)  # a heartbeat and sweep round, logged or not

    run_bounded(scenario(), timeout=60)
    json_server.stop()
    written = json_server.log()
    lines = [line for line in written.splitlines() if line.strip()]
    assert lines, "the server wrote nothing"
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert {"timestamp", "level", "logger", "message", "worker"} <= set(record), line
    for secret in secrets_used:
        assert secret not in written
    access = [json.loads(line) for line in lines if json.loads(line)["logger"] == "uvicorn.access"]
    assert any("access_token=[scrubbed]" in record["message"] for record in access), access
    records = [json.loads(line) for line in lines]
    # One line per socket lifecycle event, with the session and the terminal it is about.
    opened = {record["message"]: record for record in records if record["message"].endswith("socket: opened")}
    for kind in ("device", "session"):
        line = opened[f"{kind} socket: opened"]
        assert line["session_id"] == claimed["session_id"] and line["tsn"] == claimed["tsn"], line
        assert line["endpoint"] == "/upp/v1/transaction"
    assert opened["session socket: opened"]["client_id"] == client_id
    assert opened["pos_listener socket: opened"]["client_id"] == client_id
    closes = [record for record in records if "socket: closed" in record["message"]]
    assert any(record.get("session_id") == claimed["session_id"] and "close_code" in record for record in closes)
    granted = [record for record in records if record["message"] == "claim granted"]
    assert granted and granted[0]["tsn"] == claimed["tsn"] and granted[0]["session_id"] == claimed["session_id"]
    registered = [record for record in records if record["message"] == "registration answered"]
    assert registered
    assert all(record["tsn"] == claimed["tsn"] and record["client_id"] == client_id for record in registered)
    # None per frame: the frames relayed leave no line of their own.
    assert not [record for record in records if "frame" in record["message"] and record["level"] == "INFO"]
