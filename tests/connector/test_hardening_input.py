"""Hostile control messages (issue 10, item 4) and WebSocket paths outside the routes (item
6), in process: connector.protocol's total reading, and both listeners and the router
through Channels' communicator. The same messages go to real servers in
test_hardening_live.py.

Every answer must be strict JSON (no NaN or Infinity) that encodes to UTF-8 (no lone
surrogate), which is what a real server needs to send it at all.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest

from connector import protocol
from connector.protocol import ProtocolError
from portal import server_logs
from tests.connector.relay_world import (
    Listener,
    communicator,
    expect_close,
    opened,
    refused_with,
    request,
)

pytestmark = pytest.mark.cloud_connector_on

DEVICE_LISTENER = "/cloud-connector/v1/device-listener"


def envelope(flow_id: str, resource: str) -> str:
    """A request whose flow_id and resource are raw JSON text, so that they can hold what
    json.dumps would never write."""
    return f'{{"request":{{"flow_id":{flow_id},"resource":{resource}}}}}'


def credentials_string(inner: str) -> str:
    """A registration whose custom_registration_data is a string holding `inner`."""
    return envelope('"f"', '{"tsn":"1","custom_registration_data":' + json.dumps(inner) + "}")


DEEP = "[" * 3000 + "]" * 3000
HUGE = "9" * (sys.get_int_max_str_digits() + 1)

# (id, message, the flow_id the answer must echo)
HOSTILE: list[tuple[str, str, Any]] = [
    ("surrogate flow_id", envelope('"\\ud800"', '{"tsn":"1"}'), None),
    ("lone surrogate in a key", envelope('"f"', '{"\\udc00":1}'), "f"),
    ("surrogate tsn", envelope('"f"', '{"action":"claim","tsn":"\\ud800"}'), "f"),
    ("surrogate action", envelope('"f"', '{"action":"\\ud83d"}'), "f"),
    ("surrogate session_id", envelope('"f"', '{"action":"release","session_id":"\\udfff"}'), "f"),
    ("surrogate endpoint", envelope('"f"', '{"tsn":"1","endpoints":["/\\ud800"]}'), "f"),
    ("surrogate in credentials string", credentials_string('{"client_id":"\\ud800","client_secret":"s"}'), "f"),
    ("NaN flow_id", envelope("NaN", '{"tsn":"1"}'), None),
    ("Infinity flow_id", envelope("Infinity", '{"tsn":"1"}'), None),
    ("-Infinity in resource", envelope('"f"', '{"action":"claim","tsn":"1","force":-Infinity}'), "f"),
    ("NaN in credentials string", credentials_string('{"client_id":NaN,"client_secret":"s"}'), "f"),
    ("1e999 flow_id", envelope("1e999", '{"tsn":"1"}'), None),
    ("-1e999 in resource", envelope('"f"', '{"tsn":-1e999}'), "f"),
    ("huge integer flow_id", envelope(HUGE, '{"tsn":"1"}'), None),
    ("huge integer in resource", envelope('"f"', '{"tsn":"1","endpoints":[' + HUGE + "]}"), "f"),
    ("huge integer in credentials string", credentials_string('{"client_id":' + HUGE + "}"), "f"),
    ("deep nesting in resource", envelope('"f"', '{"tsn":"1","x":' + DEEP + "}"), "f"),
    ("deep nesting as flow_id", envelope(DEEP, '{"tsn":"1"}'), None),
    ("deep nesting in credentials string", credentials_string(DEEP), "f"),
    ("deep nesting never closed", '{"request":{"flow_id":"f","resource":' + "[" * 30000, None),
]
HOSTILE_IDS = [case[0] for case in HOSTILE]


def strict_json(text: str) -> Any:
    """The answer as a strict client reads it: UTF-8 on the wire, no NaN or Infinity."""
    text.encode("utf-8")  # raises on a lone surrogate, as the server's send would

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in an answer: {text[:200]}")

    return json.loads(text, parse_constant=refuse)


def the_error(text: str) -> tuple[Any, int, str]:
    response = strict_json(text)["response"]
    return response["flow_id"], response["resource"]["status_code"], response["resource"]["error"]


# --- connector.protocol ---------------------------------------------------------------------


def refusal_of(message: str) -> tuple[Any, ProtocolError]:
    """What reading a registration makes of `message` (the envelope, then the credentials,
    as the device-listener reads it): the flow_id to echo and the error."""
    flow_id = None
    try:
        request = protocol.parse_request(message)
        flow_id = request.flow_id
        protocol.parse_registration_data(request.resource.get("custom_registration_data"))
    except ProtocolError as error:
        return (error.flow_id if error.flow_id is not None else flow_id), error
    raise AssertionError("the message was accepted")


@pytest.mark.parametrize(("name", "message", "flow_id"), HOSTILE, ids=HOSTILE_IDS)
def test_a_hostile_value_anywhere_is_an_invalid_request_echoing_only_a_usable_flow_id(name, message, flow_id):
    echoed, error = refusal_of(message)
    answer = protocol.error_response(echoed, protocol.translate(error))
    assert the_error(answer) == (flow_id, 400, "invalid_request")


def test_a_raw_surrogate_in_the_text_is_refused_like_an_escaped_one():
    # A server that checks UTF-8 never hands one over (it closes with 1007), but the
    # application must not depend on it: Channels' communicator, for one, does not check.
    echoed, error = refusal_of('{"request":{"flow_id":"f","resource":{"tsn":"\ud800"}}}')
    assert (echoed, error.code) == ("f", "invalid_request")
    assert "surrogate" in error.message


def test_a_message_nested_too_deep_is_refused_without_recursing_into_it():
    for depth in (protocol.MAX_DEPTH, 200_000):
        message = envelope('"f"', '{"x":' + "[" * depth + "]" * depth + "}")
        assert refusal_of(message)[0] == "f"
    assert protocol.parse_request(envelope('"f"', '{"x":[[1]]}')).resource == {"x": [[1]]}


def test_brackets_inside_strings_are_not_nesting():
    brackets = "[{" * protocol.MAX_DEPTH
    request = protocol.parse_request(envelope('"f"', json.dumps({"note": brackets, "q": '\\"[' * 40})))
    assert request.resource["note"] == brackets


def test_finite_numbers_and_ordinary_unicode_are_read_as_sent():
    request = protocol.parse_request(envelope("1.5", '{"n":-2e300,"i":' + "9" * 4300 + ',"s":"\\ud83d\\ude00 é"}'))
    assert request.flow_id == 1.5
    assert request.resource["s"] == "\U0001f600 é"
    assert request.resource["i"] == int("9" * 4300)


def test_nul_characters_in_credentials_are_an_invalid_request():
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_registration_data({"client_id": "pos\x00", "client_secret": "s"})
    assert caught.value.code == "invalid_request"


@pytest.mark.parametrize("session_id", ["\x00" * 32, "A" * 31 + "\n", "short", "A" * 31 + "é"])
def test_a_session_id_no_session_can_have_is_an_unknown_session(session_id):
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_session_id({"session_id": session_id})
    assert protocol.translate(caught.value).status_code == 404
    assert protocol.translate(caught.value).error == "unknown_session"


def test_an_unknown_action_is_quoted_briefly_in_the_message():
    assert protocol.shown("x" * 1000).endswith("...")
    assert len(protocol.shown("x" * 1000)) < 100


# --- both listeners, in process -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("name", "message", "flow_id"), HOSTILE, ids=HOSTILE_IDS)
async def test_device_listener_answers_a_hostile_registration_with_400_then_closes_1000(
    fresh_state, name, message, flow_id
):
    comm = communicator(DEVICE_LISTENER)
    await opened(comm)
    await comm.send_to(text_data=message)
    assert the_error(await comm.receive_from(5)) == (flow_id, 400, "invalid_request")
    await expect_close(comm, 1000)


@pytest.mark.django_db(transaction=True)
async def test_pos_listener_answers_every_hostile_request_with_400_and_stays_open(fresh_state, world):
    listener = await Listener.open(world.pos_token)
    raw_surrogate = ('{"request":{"flow_id":"r","resource":{"action":"claim","tsn":"\ud800"}}}', "r")
    for message, flow_id in [(message, flow_id) for _name, message, flow_id in HOSTILE] + [raw_surrogate]:
        await listener.comm.send_to(text_data=message)
        assert the_error(await listener.comm.receive_from(5)) == (flow_id, 400, "invalid_request")
    assert (await listener.ask({"action": "devices"}))["status"] == "ok"
    await listener.close()


@pytest.mark.django_db(transaction=True)
async def test_a_release_of_a_session_id_with_a_nul_is_an_unknown_session(fresh_state, world):
    listener = await Listener.open(world.pos_token)
    answer = await listener.ask({"action": "release", "session_id": "\x00" * 32})
    assert (answer["status_code"], answer["error"]) == (404, "unknown_session")
    await listener.close()


@pytest.mark.django_db(transaction=True)
async def test_a_registration_with_a_nul_in_its_client_id_is_an_invalid_request(fresh_state, world):
    credentials = {**world.pos_credentials, "client_id": world.pos_credentials["client_id"] + "\x00"}
    comm = communicator(DEVICE_LISTENER)
    await opened(comm)
    await comm.send_to(text_data=request({"tsn": world.device.tsn, "custom_registration_data": credentials}))
    assert the_error(await comm.receive_from(5)) == ("1", 400, "invalid_request")
    await expect_close(comm, 1000)


# --- paths outside the routes (item 6) --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/", "/foo", "/api/v1/", "/admin/", "/cloud-connector", "/%FF", "/a/../b"])
async def test_a_socket_on_a_path_outside_the_routes_is_closed_with_4404(fresh_state, path):
    await refused_with(communicator(path), 4404)


# --- the server's log -----------------------------------------------------------------------


def uvicorn_record(message: str) -> logging.LogRecord:
    try:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    except UnicodeDecodeError:
        return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, message, (), sys.exc_info())


def test_a_clients_invalid_utf8_is_logged_as_a_warning_without_a_traceback():
    record = uvicorn_record("Invalid UTF-8 sequence received from client.")
    assert server_logs.ClientFaultsWithoutTraceback().filter(record)
    assert (record.levelno, record.exc_info) == (logging.WARNING, None)
    other = uvicorn_record("Exception in ASGI application")
    server_logs.ClientFaultsWithoutTraceback().filter(other)
    assert other.levelno == logging.ERROR and other.exc_info is not None


def test_the_asgi_module_installs_the_filter_once():
    import portal.asgi  # noqa: F401 - importing it installs the filter

    server_logs.install()
    filters = logging.getLogger("uvicorn.error").filters
    assert sum(isinstance(f, server_logs.ClientFaultsWithoutTraceback) for f in filters) == 1
