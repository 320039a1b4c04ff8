import json

import pytest

from accounts import errors
from connector import protocol
from connector.protocol import Close, ProtocolError


def test_it_parses_a_request_envelope():
    request = protocol.parse_request('{"request": {"flow_id": "7", "resource": {"action": "devices"}}}')
    assert request.flow_id == "7"
    assert request.resource == {"action": "devices"}


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"response": {}}',
        '{"request": "x"}',
        '{"request": {"resource": {}}}',
        '{"request": {"flow_id": ["x"], "resource": {}}}',
        "[" * 100_000,
    ],
)
def test_it_refuses_malformed_envelopes_as_invalid_request(text):
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_request(text)
    assert protocol.translate(caught.value).status_code == 400
    assert protocol.translate(caught.value).error == "invalid_request"


def test_it_refuses_a_binary_control_message():
    with pytest.raises(ProtocolError):
        protocol.parse_request(None)


def test_it_keeps_the_flow_id_of_a_request_without_resource():
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_request('{"request": {"flow_id": "abc"}}')
    assert caught.value.flow_id == "abc"


def test_a_numeric_flow_id_is_echoed_as_sent():
    assert protocol.parse_request('{"request": {"flow_id": 12, "resource": {}}}').flow_id == 12


def test_responses_and_events_have_the_contract_shape():
    ok = json.loads(protocol.ok_response("1", session_id="s"))
    assert ok == {"response": {"flow_id": "1", "resource": {"status": "ok", "status_code": 200, "session_id": "s"}}}
    error = protocol.translate(errors.NotFound("gone"))
    body = json.loads(protocol.error_response("2", error))["response"]
    assert body["flow_id"] == "2"
    assert body["resource"] == {"status": "error", "status_code": 404, "error": "not_found", "message": "gone"}
    first = json.loads(protocol.event("device_online", session_id="s", tsn="t"))["event"]
    second = json.loads(protocol.event("device_offline", session_id="s", tsn="t"))["event"]
    assert first["resource"] == {"type": "device_online", "session_id": "s", "tsn": "t"}
    assert first["flow_id"] != second["flow_id"]


def test_the_translation_table_carries_extra_fields_such_as_level():
    class Inactive(errors.NotAllowed):
        code = "service_not_active"

    error = Inactive("not active")
    error.extra = {"level": "merchant"}
    wire = protocol.translate(error)
    assert (wire.status_code, wire.error) == (403, "service_not_active")
    assert wire.resource()["level"] == "merchant"


@pytest.mark.parametrize(
    ("code", "status", "close"),
    [
        ("invalid_request", 400, Close.PROTOCOL_VIOLATION),
        ("invalid_client", 401, Close.UNAUTHENTICATED),
        ("invalid_token", 401, Close.UNAUTHENTICATED),
        ("insufficient_scope", 403, Close.FORBIDDEN),
        ("device_disabled", 403, Close.GONE),
        ("unknown_device", 404, Close.NOT_FOUND),
        ("unknown_session", 404, Close.NOT_FOUND),
        ("unknown_endpoint", 404, Close.NOT_FOUND),
        ("not_claim_holder", 403, Close.FORBIDDEN),
        ("session_ended", 410, Close.GONE),
        ("device_offline", 409, Close.PEER_UNAVAILABLE),
        ("session_claimed", 409, Close.FORBIDDEN),
        ("ambiguous_tsn", 409, Close.NOT_FOUND),
        ("rate_limited", 429, Close.RATE_LIMITED),
    ],
)
def test_each_domain_error_code_has_one_status_and_close_code(code, status, close):
    error = errors.DomainError("x")
    error.code = code
    wire = protocol.translate(error)
    assert (wire.status_code, wire.error, wire.close_code) == (status, code, close)


def test_endpoints_default_to_the_root():
    assert protocol.validate_endpoints(None) == ["/"]


def test_endpoints_keep_their_order_and_drop_repeats():
    assert protocol.validate_endpoints(["/upp/v1/transaction", "/", "/upp/v1/transaction"]) == [
        "/upp/v1/transaction",
        "/",
    ]


@pytest.mark.parametrize(
    "endpoints",
    [
        [],
        "/upp",
        ["upp"],
        ["/upp/"],
        ["//upp"],
        ["/upp v1"],
        ["/upp?x=1"],
        ["/ü"],
        [7],
        ["/" + "a" * 300],
        [f"/e{i}" for i in range(17)],
        ["/upp\n"],
        ["/\ud800"],
        [{"path": "/upp"}],
    ],
)
def test_it_refuses_bad_endpoints(endpoints):
    with pytest.raises(ProtocolError):
        protocol.validate_endpoints(endpoints)


def test_sixteen_endpoints_are_accepted():
    assert len(protocol.validate_endpoints([f"/e{i}" for i in range(16)])) == 16


@pytest.mark.parametrize(
    ("rest", "endpoint"),
    [
        (None, "/"),
        ("", "/"),
        ("/", "/"),
        ("/upp/v1/transaction", "/upp/v1/transaction"),
        ("/a.b~c_d-e", "/a.b~c_d-e"),
        ("/upp/", None),
        ("/a b", None),
        ("//x", None),
        ("/upp\n", None),
    ],
)
def test_the_endpoint_of_a_socket_url(rest, endpoint):
    assert protocol.endpoint_from_path(rest) == endpoint


@pytest.mark.parametrize("tsn", ["230123456", "Ingenico-Lane3000-230123456", "a.b_c-d"])
def test_it_accepts_serials_and_fully_qualified_tsns(tsn):
    assert protocol.parse_tsn(tsn) == tsn


@pytest.mark.parametrize("tsn", [None, "", "  ", 230123456, "a b", "x/y", "a" * 201])
def test_it_refuses_bad_tsns(tsn):
    with pytest.raises(ProtocolError):
        protocol.parse_tsn(tsn)


def test_registration_data_may_be_an_object_or_a_json_string():
    expected = protocol.ClientCredentials(client_id="c1", client_secret="s1")
    assert protocol.parse_registration_data({"client_id": "c1", "client_secret": "s1"}) == expected
    assert protocol.parse_registration_data('{"client_id":"c1","client_secret":"s1"}') == expected
    assert protocol.parse_registration_data(None) is None


@pytest.mark.parametrize(
    "data", ["{'client_id': 'c1'}", "[]", [], {"client_id": "c1"}, {"client_id": 1, "client_secret": "s"}, 5]
)
def test_it_refuses_unreadable_registration_data(data):
    with pytest.raises(ProtocolError):
        protocol.parse_registration_data(data)


def test_a_claim_needs_a_tsn_and_a_boolean_force():
    assert protocol.parse_claim({"tsn": "123"}) == ("123", False)
    assert protocol.parse_claim({"tsn": "123", "force": True}) == ("123", True)
    with pytest.raises(ProtocolError):
        protocol.parse_claim({"tsn": "123", "force": "yes"})
    with pytest.raises(ProtocolError):
        protocol.parse_claim({})


def test_text_size_counts_utf8_bytes():
    assert not protocol.text_size_exceeds("a" * 10, 10)
    assert protocol.text_size_exceeds("a" * 11, 10)
    assert protocol.text_size_exceeds("é" * 6, 10)  # 12 bytes
    assert not protocol.text_size_exceeds("é" * 5, 10)


def test_session_ids_are_url_safe_and_long_enough():
    assert protocol.is_session_id("A" * 32)
    assert not protocol.is_session_id("short")
    assert not protocol.is_session_id("a/b" * 10)
    assert not protocol.is_session_id("A" * 32 + "\n")


def test_an_answer_is_never_written_with_nan_or_infinity():
    for number in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            protocol.ok_response("1", value=number)


def test_urls_come_from_the_public_url_or_the_host():
    assert protocol.ws_base_url(public_url="wss://cc.example.com/", host="x", secure=True) == "wss://cc.example.com"
    assert protocol.ws_base_url(public_url="", host="h:8000", secure=False) == "ws://h:8000"
    assert protocol.ws_base_url(public_url="", host="h", secure=True) == "wss://h"
    assert protocol.connection_url("wss://h", "S") == "wss://h/cloud-connector/v1/device/S"
    assert protocol.session_url("wss://h", "S") == "wss://h/cloud-connector/v1/session/S"
