"""The four WebSocket routes through Channels' communicator: every error row and close code
of the contract that can be provoked in process, the relay, and every revocation path."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest
from channels.db import database_sync_to_async

from accounts import services as account_services
from accounts.credentials import token_checksum
from accounts.scope import SYSTEM
from connector import events, nodes, sessions, tokens
from connector import services as connector_services
from connector.consumers import relay_sockets
from connector.models import Device, DeviceSession, SessionSocket
from connector.relay import shutdown
from connector.relay.registry import NODE, registry
from tests.connector.relay_world import (
    RFC3339_MS,
    Listener,
    communicator,
    device_socket,
    expect_close,
    hang_up,
    late_peer_attached,
    local_path,
    opened,
    refused_with,
    register,
    request,
    session_socket,
)
from tests.factories import DeviceFactory, make_access_token

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.cloud_connector_on,
    pytest.mark.usefixtures("fresh_state"),
]

DEVICE_LISTENER = "/cloud-connector/v1/device-listener"
POS_LISTENER = "/cloud-connector/v1/pos-listener"


def db(fn):
    return database_sync_to_async(fn)


async def online_pair(world, *, endpoints=None, token=None):
    """A registered terminal with a device socket on each endpoint, claimed by the store's
    POS with a session socket on each endpoint."""
    token = token or world.pos_token
    endpoints = endpoints or ["/"]
    registration = await register(world.device.tsn, world.pos_credentials, endpoints=endpoints)
    devices = {e: await device_socket(registration, e) for e in endpoints}
    listener = await Listener.open(token)
    claim = await listener.claim(world.device.tsn)
    assert claim["status"] == "ok", claim
    poses = {e: await session_socket(claim, token, e) for e in endpoints}
    return registration, devices, listener, claim, poses


# --- §3 registration -----------------------------------------------------------------------


async def test_a_terminal_registers_and_gets_its_connection_details(world):
    resource = await register(world.device.serial, world.pos_credentials, endpoints=["/upp/v1/transaction", "/"])
    session_id = resource["session_id"]
    assert resource == {
        "status": "ok",
        "status_code": 200,
        "session_id": session_id,
        "connection_url": f"ws://testserver/cloud-connector/v1/device/{session_id}",
        "connection_ssl_profile": "INGETRUST",
        "authorization_header": {"Authorization": resource["authorization_header"]["Authorization"]},
        "endpoints": ["/upp/v1/transaction", "/"],
        "expires_in": 300,
    }
    jwt_token = resource["authorization_header"]["Authorization"].removeprefix("Bearer ")
    assert tokens.device_token_verify(jwt_token, session_id=session_id).device_id == world.device.pk


async def test_the_listener_url_may_end_with_a_slash_and_credentials_may_be_a_json_string(world):
    comm = communicator(DEVICE_LISTENER + "/")
    await opened(comm)
    data = json.dumps(world.pos_credentials)
    await comm.send_to(text_data=request({"tsn": world.device.tsn, "custom_registration_data": data}))
    answer = json.loads(await comm.receive_from(5))
    assert answer["response"]["resource"]["status"] == "ok"
    await expect_close(comm, 1000)


async def test_a_terminal_may_register_with_an_access_token_instead(world):
    resource = await register(world.device.tsn, token=world.app_token)
    assert resource["status"] == "ok"


async def test_the_public_url_setting_names_the_connection_url(world, settings):
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "PUBLIC_WS_URL": "wss://cc.example.com"}
    resource = await register(world.device.tsn, world.pos_credentials)
    assert resource["connection_url"].startswith("wss://cc.example.com/cloud-connector/v1/device/")


async def test_connection_urls_are_wss_outside_development(world, settings):
    settings.DEBUG = False
    resource = await register(world.device.tsn, world.pos_credentials)
    assert resource["connection_url"].startswith("wss://testserver/cloud-connector/v1/device/")


async def registration_error(text: str, *, headers=None, client=("192.0.2.10", 40000)) -> dict:
    comm = communicator(DEVICE_LISTENER, headers=headers, client=client)
    await opened(comm)
    await comm.send_to(text_data=text)
    answer = json.loads(await comm.receive_from(5))
    await expect_close(comm, 1000)
    resource = answer["response"]["resource"]
    assert resource["status"] == "error"
    assert isinstance(resource["message"], str) and resource["message"]
    return {"flow_id": answer["response"]["flow_id"], **resource}


async def test_a_registration_that_is_not_json_is_an_invalid_request():
    error = await registration_error("hello")
    assert (error["status_code"], error["error"], error["flow_id"]) == (400, "invalid_request", None)


async def test_a_binary_registration_is_an_invalid_request():
    comm = communicator(DEVICE_LISTENER)
    await opened(comm)
    await comm.send_to(bytes_data=b"\x00\x01")
    answer = json.loads(await comm.receive_from(5))
    assert answer["response"]["resource"]["error"] == "invalid_request"
    await expect_close(comm, 1000)


@pytest.mark.parametrize(
    "resource",
    [
        {"custom_registration_data": {"client_id": "a", "client_secret": "b"}},
        {"tsn": "123", "endpoints": ["no-slash"], "custom_registration_data": {"client_id": "a", "client_secret": "b"}},
        {"tsn": "123"},
        {"tsn": "123", "custom_registration_data": "{not json"},
    ],
    ids=["no tsn", "bad endpoints", "no credentials", "unreadable credentials"],
)
async def test_registration_input_errors_are_invalid_requests_echoing_the_flow_id(resource):
    error = await registration_error(request(resource, flow_id="flow-9"))
    assert (error["status_code"], error["error"], error["flow_id"]) == (400, "invalid_request", "flow-9")


async def test_a_wrong_secret_is_an_invalid_client(world):
    credentials = {**world.pos_credentials, "client_secret": "wrong"}
    error = await registration_error(request({"tsn": world.device.tsn, "custom_registration_data": credentials}))
    assert (error["status_code"], error["error"]) == (401, "invalid_client")


async def test_an_invalid_access_token_is_an_invalid_client(world):
    error = await registration_error(
        request({"tsn": world.device.tsn}), headers=[(b"authorization", b"Bearer not-a-token")]
    )
    assert (error["status_code"], error["error"]) == (401, "invalid_client")


async def test_a_device_outside_the_credentials_scope_is_unknown(world):
    credentials = {"client_id": world.neighbour.application.client_id, "client_secret": world.neighbour.client_secret}
    outside = await registration_error(request({"tsn": world.device.tsn, "custom_registration_data": credentials}))
    missing = await registration_error(request({"tsn": "999999999", "custom_registration_data": credentials}))
    assert (outside["status_code"], outside["error"]) == (404, "unknown_device")
    assert {k: v for k, v in outside.items() if k != "flow_id"} == {k: v for k, v in missing.items() if k != "flow_id"}


async def test_a_disabled_device_is_refused(world):
    await db(connector_services.device_update)(device=world.device, enabled=False, actor=SYSTEM)
    error = await registration_error(
        request({"tsn": world.device.tsn, "custom_registration_data": world.pos_credentials})
    )
    assert (error["status_code"], error["error"]) == (403, "device_disabled")


@pytest.mark.parametrize("level", ["subscription", "merchant_aggregator", "merchant", "device"])
async def test_an_inactive_service_names_its_level(world, level):
    await db(deactivate)(world, level)
    error = await registration_error(
        request({"tsn": world.device.tsn, "custom_registration_data": world.pos_credentials})
    )
    assert (error["status_code"], error["error"], error["level"]) == (403, "service_not_active", level)


def deactivate(world, level: str) -> None:
    merchant = world.device.merchant
    if level == "subscription":
        subscription = merchant.merchant_aggregator.tenant.subscriptions.get()
        connector_services.subscription_delete(subscription=subscription, actor=SYSTEM)
        return
    obj = {"merchant_aggregator": merchant.merchant_aggregator, "merchant": merchant, "device": world.device}[level]
    connector_services.service_deactivate(obj=obj, actor=SYSTEM)


async def test_a_serial_matching_two_devices_is_ambiguous(world):
    await db(DeviceFactory)(store=world.store, make="Verifone", model="P400", serial=world.device.serial)
    error = await registration_error(
        request({"tsn": world.device.serial, "custom_registration_data": world.pos_credentials})
    )
    assert (error["status_code"], error["error"]) == (409, "ambiguous_tsn")


async def test_too_many_failed_registrations_are_rate_limited_per_client_id_and_address(world, settings):
    # Formerly per address: the good credentials from the same address were refused too.
    # A day's window: the counts' windows are aligned on the clock, and one must not close mid-test.
    settings.CLOUD_CONNECTOR = {
        **settings.CLOUD_CONNECTOR,
        "FAILED_REGISTRATION_LIMIT": 2,
        "FAILED_REGISTRATION_WINDOW": 86400,
    }
    bad = request({"tsn": world.device.tsn, "custom_registration_data": {"client_id": "x", "client_secret": "y"}})
    for _ in range(2):
        assert (await registration_error(bad))["error"] == "invalid_client"
    limited = await registration_error(bad)
    assert (limited["status_code"], limited["error"]) == (429, "rate_limited")
    assert 0 < limited["retry_after"] <= 86400
    assert (await register(world.device.tsn, world.pos_credentials))["status"] == "ok"
    elsewhere = await registration_error(bad, client=("198.51.100.7", 1))
    assert elsewhere["error"] == "invalid_client"


async def test_while_the_cache_is_unreachable_registrations_are_answered_and_not_limited(world, settings, caplog):
    # Redis down: the failure counts fail open rather than refusing (or crashing) every
    # terminal's registration for the length of the outage.
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "FAILED_REGISTRATION_LIMIT": 1}
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}
    }
    bad = request({"tsn": world.device.tsn, "custom_registration_data": {"client_id": "x", "client_secret": "y"}})
    for _ in range(3):
        assert (await registration_error(bad))["error"] == "invalid_client"
    assert (await register(world.device.tsn, world.pos_credentials))["status"] == "ok"
    assert "failure not counted" in caplog.text


async def test_a_terminal_that_sends_nothing_is_closed_with_4408(settings):
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "REGISTRATION_TIMEOUT": 0.1}
    comm = communicator(DEVICE_LISTENER)
    await comm.connect(5)
    await expect_close(comm, 4408)


async def test_an_oversized_control_message_is_closed_with_1009():
    comm = communicator(DEVICE_LISTENER)
    await opened(comm)
    await comm.send_to(text_data="x" * (70 * 1024))
    await expect_close(comm, 1009)


@pytest.mark.parametrize("path", [DEVICE_LISTENER, POS_LISTENER, "/cloud-connector/v1/device/" + "A" * 32])
async def test_a_handshake_from_a_foreign_web_page_is_refused_with_4403(path, world):
    comm = communicator(path, token=world.pos_token, headers=[(b"origin", b"https://evil.example")])
    await refused_with(comm, 4403)


async def test_an_allowed_origin_is_accepted(world, settings):
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "ALLOWED_ORIGINS": ["https://pos.example.com"]}
    comm = communicator(POS_LISTENER, token=world.pos_token, headers=[(b"origin", b"https://pos.example.com")])
    await opened(comm)
    await hang_up(comm)


async def test_an_unknown_path_under_the_prefix_is_closed_with_4404():
    await refused_with(communicator("/cloud-connector/v1/nothing-here"), 4404)


# --- §4 device sockets -----------------------------------------------------------------------


def with_jwt(registration: dict, token: str) -> dict:
    return {**registration, "authorization_header": {"Authorization": f"Bearer {token}"}}


async def device_refused(registration: dict, code: int, endpoint: str = "/", header: bytes | None = None) -> None:
    url = registration["connection_url"] + ("" if endpoint == "/" else endpoint)
    headers = [] if header is None else [(b"authorization", header)]
    await refused_with(communicator(local_path(url), headers=headers), code)


async def test_a_device_socket_without_a_jwt_is_closed_with_4401(world):
    registration = await register(world.device.tsn, world.pos_credentials)
    await device_refused(registration, 4401)
    await device_refused(registration, 4401, header=b"Basic abc")


async def test_a_forged_jwt_is_closed_with_4401(world):
    registration = await register(world.device.tsn, world.pos_credentials)
    forged = jwt.encode(
        {"sid": registration["session_id"], "did": world.device.pk, "exp": int(time.time()) + 60},
        "a-secret-the-server-does-not-have-32-bytes",
        algorithm="HS256",
        headers={"kid": "dev"},
    )
    await device_refused(registration, 4401, header=f"Bearer {forged}".encode())


async def test_an_expired_jwt_is_closed_with_4401(world):
    registration = await register(world.device.tsn, world.pos_credentials)
    expired = tokens.device_token_issue(
        session_id=registration["session_id"], device_id=world.device.pk, now=time.time() - 3600
    )
    await device_refused(registration, 4401, header=f"Bearer {expired.token}".encode())


async def test_a_jwt_of_another_session_is_closed_with_4401(world):
    other_device = await db(make_usable_device_in)(world)
    mine = await register(world.device.tsn, world.pos_credentials)
    theirs = await register(other_device.tsn, world.pos_credentials)
    await device_refused(with_jwt(mine, jwt_of(theirs)), 4401)


def make_usable_device_in(world) -> Device:
    from tests.factories import make_usable_device

    return make_usable_device(store=world.store)


def jwt_of(registration: dict) -> str:
    return registration["authorization_header"]["Authorization"].removeprefix("Bearer ")


async def test_an_endpoint_the_device_did_not_register_is_closed_with_4404(world):
    registration = await register(world.device.tsn, world.pos_credentials, endpoints=["/upp"])
    await device_refused(registration, 4404, "/other", header=f"Bearer {jwt_of(registration)}".encode())
    await device_refused(registration, 4404, "/upp/", header=f"Bearer {jwt_of(registration)}".encode())


async def test_a_device_socket_of_an_ended_session_is_closed_with_4410(world):
    registration = await register(world.device.tsn, world.pos_credentials)
    await db(sessions.sessions_end)(session_ids=[registration["session_id"]], reason="test")
    await device_refused(registration, 4410, header=f"Bearer {jwt_of(registration)}".encode())


async def test_a_second_device_socket_on_an_endpoint_replaces_the_first_with_4409(world):
    registration = await register(world.device.tsn, world.pos_credentials)
    first = await device_socket(registration)
    second = await device_socket(registration)
    await expect_close(first, 4409)
    session = await db(DeviceSession.objects.get)(pk=registration["session_id"])
    assert session.state == "online"
    await hang_up(second)


# --- §5 pos-listener -------------------------------------------------------------------------


async def test_a_pos_listener_without_a_valid_token_is_closed_with_4401(world):
    expired = await db(make_access_token)(world.pos.application, expires_in=-10)
    await refused_with(communicator(POS_LISTENER), 4401)
    await refused_with(communicator(POS_LISTENER, token="unknown"), 4401)
    await refused_with(communicator(POS_LISTENER, token=expired), 4401)


async def test_a_token_without_the_cloud_connector_scope_is_closed_with_4403(world):
    token = await db(make_access_token)(world.pos.application, scope="provisioning")
    await refused_with(communicator(POS_LISTENER, token=token), 4403)


async def test_a_malformed_control_message_gets_a_400_and_the_socket_stays_open(world):
    listener = await Listener.open(world.pos_token)
    for text, flow_id in (
        ("not json", None),
        (json.dumps({"request": {"flow_id": "x1", "resource": {"action": "dance"}}}), "x1"),
        (json.dumps({"request": {"flow_id": "x2", "resource": {"action": "claim"}}}), "x2"),
        (json.dumps({"request": {"flow_id": "x3", "resource": {"action": "release"}}}), "x3"),
    ):
        await listener.comm.send_to(text_data=text)
        answer = json.loads(await listener.comm.receive_from(5))["response"]
        assert answer["flow_id"] == flow_id
        assert (answer["resource"]["status_code"], answer["resource"]["error"]) == (400, "invalid_request")
    await listener.comm.send_to(bytes_data=b"\x01")
    assert json.loads(await listener.comm.receive_from(5))["response"]["resource"]["status_code"] == 400
    assert (await listener.ask({"action": "devices"}))["status"] == "ok"
    await listener.close()


async def test_a_claim_answers_with_the_session_url(world):
    registration = await register(world.device.serial, world.pos_credentials, endpoints=["/upp"])
    listener = await Listener.open(world.pos_token)
    claim = await listener.claim(world.device.serial)
    session_id = registration["session_id"]
    assert claim == {
        "status": "ok",
        "status_code": 200,
        "session_id": session_id,
        "session_url": f"ws://testserver/cloud-connector/v1/session/{session_id}",
        "endpoints": ["/upp"],
        "tsn": world.device.tsn,
        "local_url": None,  # v1.1 §14: the terminal registered none
    }
    assert await listener.claim(world.device.tsn) == claim
    await listener.close()


async def claim_error(token: str, tsn: str, force: bool = False) -> dict:
    listener = await Listener.open(token)
    answer = await listener.claim(tsn, force)
    await listener.close()
    assert answer["status"] == "error" and answer["message"]
    return answer


async def test_claim_errors_follow_the_table(world):
    await register(world.device.tsn, world.pos_credentials)
    assert (await claim_error(world.pos_token, "424242"))["error"] == "unknown_device"
    outside = await claim_error(world.neighbour_token, world.device.tsn)
    assert (outside["status_code"], outside["error"]) == (404, "unknown_device")
    stranger = await claim_error(world.far_pos_token, world.device.serial)
    assert (stranger["status_code"], stranger["error"]) == (404, "unknown_device")
    listener = await Listener.open(world.app_token)
    assert (await listener.claim(world.device.tsn))["status"] == "ok"
    claimed = await claim_error(world.pos_token, world.device.tsn)
    assert (claimed["status_code"], claimed["error"]) == (409, "session_claimed")
    await listener.close()


async def test_a_claim_of_a_device_without_a_live_session_is_device_offline(world):
    answer = await claim_error(world.pos_token, world.device.tsn)
    assert (answer["status_code"], answer["error"]) == (409, "device_offline")


async def test_a_claim_of_an_ambiguous_serial_is_refused(world):
    await db(DeviceFactory)(store=world.store, make="Verifone", model="P400", serial=world.device.serial)
    answer = await claim_error(world.pos_token, world.device.serial)
    assert (answer["status_code"], answer["error"]) == (409, "ambiguous_tsn")


async def test_a_claim_of_a_disabled_or_inactive_device_is_forbidden(world):
    await db(deactivate)(world, "merchant")
    inactive = await claim_error(world.pos_token, world.device.tsn)
    assert (inactive["status_code"], inactive["error"], inactive["level"]) == (403, "service_not_active", "merchant")
    await db(connector_services.device_update)(device=world.device, enabled=False, actor=SYSTEM)
    disabled = await claim_error(world.pos_token, world.device.tsn)
    assert (disabled["status_code"], disabled["error"]) == (403, "device_disabled")


async def test_devices_lists_the_tokens_scope(world):
    registration = await register(world.device.tsn, world.pos_credentials)
    device = await device_socket(registration)
    listener = await Listener.open(world.pos_token)
    await listener.claim(world.device.tsn)
    answer = await listener.ask({"action": "devices"})
    assert answer["status"] == "ok"
    since = answer["devices"][0]["online_since"]
    assert answer["devices"] == [
        {
            "tsn": world.device.tsn,
            "online": True,
            "claimed": True,
            "claimed_by_you": True,
            "session_id": registration["session_id"],
            "local_url": None,
            "online_since": since,
            "offline_since": None,
            "last_seen_at": since,
            "last_disconnect_reason": None,
        }
    ]
    assert RFC3339_MS.fullmatch(since)
    outsider = await Listener.open(world.far_pos_token)
    assert [row["tsn"] for row in (await outsider.ask({"action": "devices"}))["devices"]] == [world.far_device.tsn]
    await outsider.close()
    neighbour = await Listener.open(world.neighbour_token)
    assert (await neighbour.ask({"action": "devices"}))["devices"] == []
    await neighbour.close()
    await listener.close()
    await hang_up(device)


async def test_release_closes_the_releasing_credentials_session_sockets_with_1000(world):
    registration, devices, listener, claim, poses = await online_pair(world)
    answer = await listener.ask({"action": "release", "session_id": claim["session_id"]})
    assert answer["status"] == "ok"
    await expect_close(poses["/"], 1000)
    assert (await listener.ask({"action": "release", "session_id": claim["session_id"]}))["error"] == "not_claimed"
    assert (await devices["/"].receive_nothing(0.1)) is True
    await listener.close()
    await hang_up(devices["/"])


async def test_force_takes_over_closing_the_previous_holders_sockets_with_4409(world):
    registration, devices, listener, claim, poses = await online_pair(world)
    rival = await Listener.open(world.app_token)
    assert (await rival.claim(world.device.tsn))["error"] == "session_claimed"
    taken = await rival.claim(world.device.tsn, force=True)
    assert taken["status"] == "ok" and taken["session_id"] == claim["session_id"]
    await expect_close(poses["/"], 4409)
    event = await listener.event()
    assert event == {"type": "session_taken_over", "session_id": claim["session_id"], "tsn": world.device.tsn}
    await refused_with(communicator(local_path(claim["session_url"]), token=world.pos_token), 4403)
    new_pos = await session_socket(taken, world.app_token)
    await devices["/"].send_to(text_data="to the new holder")
    assert await new_pos.receive_from(5) == "to the new holder"
    for comm in (new_pos, devices["/"]):
        await hang_up(comm)
    await listener.close()
    await rival.close()


async def test_events_reach_every_listener_of_the_claim_holder_only(world):
    registration = await register(world.device.tsn, world.pos_credentials)
    first, second = await Listener.open(world.pos_token), await Listener.open(world.pos_token)
    other = await Listener.open(world.app_token)
    await first.claim(world.device.tsn)
    device = await device_socket(registration)
    online = {"type": "device_online", "session_id": registration["session_id"], "tsn": world.device.tsn}
    assert await first.event() == online
    assert await second.event() == online
    assert await other.comm.receive_nothing(0.2)
    await hang_up(device)
    assert await first.event() == {**online, "type": "device_offline", "reason": "closed"}
    assert await second.event() == {**online, "type": "device_offline", "reason": "closed"}
    for listener in (first, second, other):
        await listener.close()


# --- §6 POS session sockets ------------------------------------------------------------------


async def test_pos_session_refusals_follow_the_contract(world):
    registration = await register(world.device.tsn, world.pos_credentials, endpoints=["/upp"])
    listener = await Listener.open(world.pos_token)
    claim = await listener.claim(world.device.tsn)
    path = local_path(claim["session_url"])
    provisioning = await db(make_access_token)(world.pos.application, scope="provisioning")
    await refused_with(communicator(path + "/upp"), 4401)
    await refused_with(communicator(path + "/upp", token="nope"), 4401)
    await refused_with(communicator(path + "/upp", token=provisioning), 4403)
    await refused_with(communicator(path + "/upp", token=world.app_token), 4403)
    await refused_with(communicator(path + "/upp", token=world.neighbour_token), 4404)
    await refused_with(communicator(path + "/other", token=world.pos_token), 4404)
    await refused_with(communicator(path, token=world.pos_token), 4404)
    missing = "/cloud-connector/v1/session/" + "Z" * 32 + "/upp"
    await refused_with(communicator(missing, token=world.pos_token), 4404)
    assert registration["session_id"] == claim["session_id"]
    await listener.close()


# --- §7 relay --------------------------------------------------------------------------------


async def test_frames_cross_in_both_directions_unchanged_text_as_text_binary_as_binary(world):
    registration, devices, listener, claim, poses = await online_pair(world, endpoints=["/a", "/b"])
    blob = bytes(range(256)) * 4
    await poses["/a"].send_to(text_data='{"x": "é ✓"}')
    await poses["/b"].send_to(bytes_data=blob)
    assert await devices["/a"].receive_output(5) == {"type": "websocket.send", "text": '{"x": "é ✓"}'}
    assert await devices["/b"].receive_output(5) == {"type": "websocket.send", "bytes": blob}
    await devices["/a"].send_to(bytes_data=b"\x00ack")
    await devices["/b"].send_to(text_data="not json at all")
    assert await poses["/a"].receive_output(5) == {"type": "websocket.send", "bytes": b"\x00ack"}
    assert await poses["/b"].receive_output(5) == {"type": "websocket.send", "text": "not json at all"}
    for comm in [*devices.values(), *poses.values()]:
        await hang_up(comm)
    await listener.close()
    session = await db(DeviceSession.objects.get)(pk=claim["session_id"])
    assert (session.frames_relayed, session.frames_dropped) == (4, 0)


async def test_frames_keep_their_order(world):
    registration, devices, listener, claim, poses = await online_pair(world)
    for i in range(200):
        await poses["/"].send_to(text_data=str(i))
    assert [await devices["/"].receive_from(5) for _ in range(200)] == [str(i) for i in range(200)]
    for comm in (devices["/"], poses["/"]):
        await hang_up(comm)
    await listener.close()


async def test_frames_cross_through_the_channel_layer_between_processes(world, monkeypatch):
    # With the in-process shortcut off, peers address each other by channel name as they
    # do across processes.
    monkeypatch.setattr(registry, "local_fast_path", False)
    registration, devices, listener, claim, poses = await online_pair(world)
    for i in range(20):
        await poses["/"].send_to(bytes_data=bytes([i]))
        await devices["/"].send_to(text_data=f"d{i}")
    assert [await devices["/"].receive_from(5) for _ in range(20)] == [bytes([i]) for i in range(20)]
    assert [await poses["/"].receive_from(5) for _ in range(20)] == [f"d{i}" for i in range(20)]
    for comm in (devices["/"], poses["/"]):
        await hang_up(comm)
    await listener.close()


async def test_relaying_a_frame_takes_no_thread_hop(world, monkeypatch):
    import asgiref.sync

    registration, devices, listener, claim, poses = await online_pair(world)
    hops = []
    original = asgiref.sync.SyncToAsync.__call__

    async def counting(self, *args, **kwargs):
        hops.append(self.func)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(asgiref.sync.SyncToAsync, "__call__", counting)
    for _ in range(50):
        await poses["/"].send_to(text_data="ping")
        assert await devices["/"].receive_from(5) == "ping"
        await devices["/"].send_to(bytes_data=b"pong")
        assert await poses["/"].receive_from(5) == b"pong"
    assert hops == []
    monkeypatch.undo()
    for comm in (devices["/"], poses["/"]):
        await hang_up(comm)
    await listener.close()


async def test_setting_a_session_up_and_down_hops_to_a_thread_only_for_database_work(world, monkeypatch):
    # Channels hops to its database thread before every handler and after every
    # disconnect (close_old_connections); the consumers' database calls do that themselves.
    import channels.consumer
    import channels.generic.websocket

    async def forbidden() -> None:
        raise AssertionError("a hop to Channels' database thread")

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", forbidden)
    monkeypatch.setattr(channels.generic.websocket, "aclose_old_connections", forbidden)
    registration, devices, listener, claim, poses = await online_pair(world)
    await poses["/"].send_to(text_data="ping")
    assert await devices["/"].receive_from(5) == "ping"
    for comm in (devices["/"], poses["/"]):
        await hang_up(comm)
    await listener.close()
    assert not await db(SessionSocket.objects.exists)()


async def test_a_new_pos_socket_gets_the_devices_answer_to_its_first_frame_before_any_event(world, monkeypatch):
    registration, devices, listener, claim, poses = await online_pair(world)
    late_peer_attached(monkeypatch)
    await hang_up(poses["/"])
    pos = await session_socket(claim, world.pos_token)
    await pos.send_to(text_data="new till")
    assert await devices["/"].receive_from(5) == "new till"
    await devices["/"].send_to(text_data="answer")
    assert await pos.receive_from(0.3) == "answer"
    for comm in (devices["/"], pos):
        await hang_up(comm)
    await listener.close()
    session = await db(DeviceSession.objects.get)(pk=claim["session_id"])
    assert session.frames_dropped == 0


async def test_a_reconnected_device_gets_the_pos_answer_to_its_first_frame_before_any_event(world, monkeypatch):
    registration, devices, listener, claim, poses = await online_pair(world)
    late_peer_attached(monkeypatch)
    device = await device_socket(registration)  # replaces the first device socket (4409)
    await expect_close(devices["/"], 4409)
    await device.send_to(text_data="terminal is back")
    assert await poses["/"].receive_from(5) == "terminal is back"
    await poses["/"].send_to(text_data="answer")
    assert await device.receive_from(0.3) == "answer"
    for comm in (device, poses["/"]):
        await hang_up(comm)
    await listener.close()


async def test_across_processes_a_device_frame_reaches_a_pos_whose_attach_event_is_still_on_its_way(world, monkeypatch):
    monkeypatch.setattr(registry, "local_fast_path", False)  # peers as if on two processes
    registration, devices, listener, claim, poses = await online_pair(world)
    await hang_up(poses["/"])
    late_peer_attached(monkeypatch)
    pos = await session_socket(claim, world.pos_token)
    await devices["/"].send_to(text_data="for the new till")
    assert await pos.receive_from(0.3) == "for the new till"
    for comm in (devices["/"], pos):
        await hang_up(comm)
    await listener.close()
    session = await db(DeviceSession.objects.get)(pk=claim["session_id"])
    assert session.frames_dropped == 0


async def test_across_processes_a_pos_frame_reaches_a_device_whose_attach_event_is_still_on_its_way(world, monkeypatch):
    monkeypatch.setattr(registry, "local_fast_path", False)
    registration, devices, listener, claim, poses = await online_pair(world)
    await hang_up(devices["/"])
    assert (await listener.event())["type"] == "device_offline"
    late_peer_attached(monkeypatch)
    device = await device_socket(registration)
    await poses["/"].send_to(text_data="still there?")  # not 4503: the device is back
    assert await device.receive_from(0.3) == "still there?"
    for comm in (device, poses["/"]):
        await hang_up(comm)
    await listener.close()


async def test_a_late_event_about_a_closed_local_socket_does_not_take_the_peer_away(world, monkeypatch):
    registration, devices, listener, claim, poses = await online_pair(world)
    late_peer_attached(monkeypatch, delays=[0.4, 0])  # the first socket's event comes last
    await hang_up(poses["/"])
    first = await session_socket(claim, world.pos_token)
    await hang_up(first)
    second = await session_socket(claim, world.pos_token)
    await asyncio.sleep(0.6)  # both events have arrived, the stale one after the other
    await devices["/"].send_to(text_data="to the second")
    assert await second.receive_from(1) == "to the second"
    for comm in (devices["/"], second):
        await hang_up(comm)
    await listener.close()


async def test_a_device_frame_without_a_pos_socket_is_dropped_and_counted(world):
    registration = await register(world.device.tsn, world.pos_credentials)
    device = await device_socket(registration)
    for _ in range(3):
        await device.send_to(text_data="anyone?")
    assert await device.receive_nothing(0.1)
    await hang_up(device)
    session = await db(DeviceSession.objects.get)(pk=registration["session_id"])
    assert (session.frames_relayed, session.frames_dropped) == (0, 3)


async def test_a_pos_frame_for_an_unconnected_device_endpoint_closes_the_pos_socket_with_4503(world):
    registration = await register(world.device.tsn, world.pos_credentials, endpoints=["/a", "/b"])
    device_a = await device_socket(registration, "/a")
    listener = await Listener.open(world.pos_token)
    claim = await listener.claim(world.device.tsn)
    pos_b = await session_socket(claim, world.pos_token, "/b")
    await pos_b.send_to(text_data="hello?")
    await expect_close(pos_b, 4503)
    await hang_up(device_a)
    await listener.close()


async def test_an_oversized_frame_closes_its_sender_with_1009(world, settings):
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, "MAX_MESSAGE_SIZE": 1000}
    registration, devices, listener, claim, poses = await online_pair(world)
    await poses["/"].send_to(bytes_data=b"x" * 1000)
    assert await devices["/"].receive_from(5) == b"x" * 1000
    await poses["/"].send_to(text_data="é" * 501)
    await expect_close(poses["/"], 1009)
    await devices["/"].send_to(bytes_data=b"y" * 1001)
    await expect_close(devices["/"], 1009)
    await listener.close()


# --- §8 loss, return, revocation ---------------------------------------------------------------


async def test_a_device_lost_and_back_within_grace_keeps_its_session_and_the_claim(world):
    registration, devices, listener, claim, poses = await online_pair(world)
    base = {"session_id": claim["session_id"], "tsn": world.device.tsn}
    await hang_up(devices["/"])
    assert await listener.event() == {"type": "device_offline", **base, "reason": "closed"}
    await poses["/"].send_to(text_data="while away")
    await expect_close(poses["/"], 4503)
    again = await register(world.device.tsn, world.pos_credentials)
    assert again["session_id"] == registration["session_id"]
    device = await device_socket(again)
    assert await listener.event() == {"type": "device_online", **base}
    pos = await session_socket(claim, world.pos_token)
    await pos.send_to(text_data="welcome back")
    assert await device.receive_from(5) == "welcome back"
    assert (await listener.claim(world.device.tsn))["session_id"] == claim["session_id"]
    for comm in (device, pos):
        await hang_up(comm)
    await listener.close()


async def test_a_pos_session_socket_survives_a_device_reconnect_when_it_sends_nothing(world):
    registration, devices, listener, claim, poses = await online_pair(world)
    await hang_up(devices["/"])
    await listener.event()
    again = await register(world.device.tsn, world.pos_credentials)
    device = await device_socket(again)
    await listener.event()
    await device.send_to(text_data="still there?")
    assert await poses["/"].receive_from(5) == "still there?"
    for comm in (device, poses["/"]):
        await hang_up(comm)
    await listener.close()


async def assert_session_closed_4410(devices, poses, listener, claim, world) -> None:
    for comm in [*devices.values(), *poses.values()]:
        await expect_close(comm, 4410)
    assert await listener.event() == {
        "type": "session_ended",
        "session_id": claim["session_id"],
        "tsn": world.device.tsn,
    }


async def test_disabling_the_device_closes_every_socket_of_its_session_with_4410(world):
    registration, devices, listener, claim, poses = await online_pair(world, endpoints=["/a", "/b"])
    await db(connector_services.device_update)(device=world.device, enabled=False, actor=SYSTEM)
    await assert_session_closed_4410(devices, poses, listener, claim, world)
    await listener.close()


@pytest.mark.parametrize("level", ["subscription", "merchant_aggregator", "merchant", "device"])
async def test_deactivating_at_any_level_closes_the_session_with_4410(world, level):
    registration, devices, listener, claim, poses = await online_pair(world)
    await db(deactivate)(world, level)
    await assert_session_closed_4410(devices, poses, listener, claim, world)
    await listener.close()


async def test_deleting_the_device_closes_its_session_with_4410(world):
    registration, devices, listener, claim, poses = await online_pair(world)
    await db(connector_services.device_delete)(device=world.device, actor=SYSTEM)
    await assert_session_closed_4410(devices, poses, listener, claim, world)
    await listener.close()


async def test_ending_a_session_as_the_rest_api_does_closes_it_with_4410(world):
    registration, devices, listener, claim, poses = await online_pair(world)
    assert await db(sessions.sessions_end)(session_ids=[claim["session_id"]], reason="ended_by_operator")
    await assert_session_closed_4410(devices, poses, listener, claim, world)
    await listener.close()


async def test_deleting_the_claiming_pos_closes_its_listener_4401_and_ends_the_session(world):
    registration, devices, listener, claim, poses = await online_pair(world)
    await db(account_services.pos_delete)(pos=world.pos, actor=SYSTEM)
    await expect_close(listener.comm, 4401)
    await expect_close(poses["/"], 4410)
    await expect_close(devices["/"], 4410)
    session = await db(DeviceSession.objects.get)(pk=claim["session_id"])
    assert (session.state, session.end_reason) == ("ended", "credential_deleted")


async def test_an_application_losing_its_role_has_its_sockets_closed_and_the_device_stays(world):
    registration, devices, listener, claim, poses = await online_pair(world, token=world.app_token)
    await db(account_services.cloud_application_update)(app=world.app, roles=[], actor=SYSTEM)
    await expect_close(listener.comm, 4401)
    await expect_close(poses["/"], 4410)
    assert await devices["/"].receive_nothing(0.2)
    await refused_with(communicator(POS_LISTENER, token=world.app_token), 4401)
    await hang_up(devices["/"])


async def test_a_revoked_token_closes_only_the_sockets_that_used_it(world):
    other_token = await db(make_access_token)(world.pos.application)
    registration, devices, listener, claim, poses = await online_pair(world)
    other_listener = await Listener.open(other_token)
    await db(revoke)(world.pos_token)
    await expect_close(listener.comm, 4401)
    await expect_close(poses["/"], 4410)
    assert await other_listener.comm.receive_nothing(0.2)
    assert await devices["/"].receive_nothing(0.1)
    again = await session_socket(claim, other_token)
    await devices["/"].send_to(text_data="claim kept")
    assert await again.receive_from(5) == "claim kept"
    for comm in (again, devices["/"]):
        await hang_up(comm)
    await other_listener.close()


def revoke(raw_token: str) -> None:
    from oauth2_provider.models import AccessToken

    token = AccessToken.objects.get(token_checksum=token_checksum(raw_token))
    token.delete()
    events.token_revoked(application_id=token.application_id, token_checksum=token.token_checksum)


async def test_a_listener_whose_token_expired_meanwhile_is_closed_with_4401_on_its_next_request(world):
    listener = await Listener.open(world.pos_token)
    await db(expire)(world.pos_token)
    await listener.comm.send_to(text_data=request({"action": "devices"}))
    await expect_close(listener.comm, 4401)


def expire(raw_token: str) -> None:
    from datetime import timedelta

    from django.utils import timezone
    from oauth2_provider.models import AccessToken

    AccessToken.objects.filter(token_checksum=token_checksum(raw_token)).update(
        expires=timezone.now() - timedelta(seconds=1)
    )


async def test_re_registering_with_fewer_endpoints_closes_the_dropped_endpoints_with_4404(world):
    registration, devices, listener, claim, poses = await online_pair(world, endpoints=["/a", "/b"])
    again = await register(world.device.tsn, world.pos_credentials, endpoints=["/a"])
    assert again["session_id"] == registration["session_id"]
    await expect_close(devices["/b"], 4404)
    await expect_close(poses["/b"], 4404)
    assert await devices["/a"].receive_nothing(0.1)
    for comm in (devices["/a"], poses["/a"]):
        await hang_up(comm)
    await listener.close()


async def test_sockets_leave_no_rows_behind(world):
    registration, devices, listener, claim, poses = await online_pair(world, endpoints=["/a", "/b"])
    assert await db(SessionSocket.objects.count)() == 4
    for comm in [*devices.values(), *poses.values()]:
        await hang_up(comm)
    await listener.close()
    assert await db(SessionSocket.objects.count)() == 0
    assert (await db(DeviceSession.objects.get)(pk=claim["session_id"])).state == "offline"


async def test_a_closing_server_sends_1001_to_every_socket(world):
    registration, devices, listener, claim, poses = await online_pair(world)
    await shutdown.close_all(1001)
    await expect_close(devices["/"], 1001)
    await expect_close(poses["/"], 1001)
    await listener.close()


async def test_a_shutting_down_process_forgets_its_sockets_together_and_a_peer_elsewhere_hears_of_it(
    world, monkeypatch
):
    registration, devices, listener, claim, poses = await online_pair(world)
    # The POS session socket plays one held by another process: it must hear that its device
    # socket left, or its next frame would go to a channel nobody reads instead of 4503 (§7).
    await db(SessionSocket.objects.filter(side="pos").update)(node="another-node")
    registry.local_fast_path = False
    pos = next(sock for sock in registry.sockets.values() if getattr(sock, "side", None) == "pos")
    pos.set_peer(pos.peer_channel)  # through the channel layer from now on, as across processes
    monkeypatch.setattr(registry, "shutting_down", True)
    try:
        await hang_up(devices["/"])
        # No detach of its own while the process goes: the row waits for node_forget.
        assert await db(SessionSocket.objects.filter(side="device").count)() == 1
        await db(nodes.node_forget)(node=NODE)
        assert await db(SessionSocket.objects.filter(side="device").count)() == 0
        assert (await db(DeviceSession.objects.get)(pk=claim["session_id"])).state == "offline"
        await asyncio.sleep(0.2)  # the peer.detached event on its way through the layer
        await poses["/"].send_to(text_data="for a terminal that left")
        await expect_close(poses["/"], 4503)
    finally:
        registry.local_fast_path = True
    await listener.close()


async def test_a_server_going_away_refuses_new_sockets_with_1001(world, monkeypatch):
    monkeypatch.setattr(registry, "shutting_down", True)
    await refused_with(communicator(POS_LISTENER, token=world.pos_token), 1001)
    await refused_with(communicator(DEVICE_LISTENER), 1001)


async def test_frames_relayed_while_sockets_come_and_go_never_crash_a_consumer(world):
    registration, devices, listener, claim, poses = await online_pair(world)
    sender = asyncio.ensure_future(flood(devices["/"]))
    await hang_up(poses["/"])
    await sender
    assert await devices["/"].receive_nothing(0.1)
    await hang_up(devices["/"])
    await listener.close()


async def flood(comm) -> None:
    for i in range(100):
        await comm.send_to(text_data=str(i))


async def test_a_socket_whose_handler_crashes_is_cleaned_up_like_a_disconnect(world, monkeypatch):
    # A bug in a frame handler must cost that socket only: the session forgets it, the POS
    # hears the device went offline, and the process does not keep it among its sockets.
    registration, devices, listener, claim, poses = await online_pair(world)
    device_channel = next(
        name for name, sock in registry.sockets.items() if getattr(sock, "side", None) == sessions.Side.DEVICE
    )

    async def broken_forward(self, out):
        raise RuntimeError("a bug in the frame path")

    monkeypatch.setattr(relay_sockets.DeviceSocketConsumer, "forward", broken_forward)
    await devices["/"].send_to(text_data="boom")
    with pytest.raises(RuntimeError, match="a bug in the frame path"):
        await devices["/"].receive_output(5)
    assert device_channel not in registry.sockets
    assert await listener.event() == {
        "type": "device_offline",
        "tsn": world.device.tsn,
        "session_id": claim["session_id"],
        "reason": "closed",
    }
    assert not await db(SessionSocket.objects.filter(channel_name=device_channel).exists)()
    await hang_up(poses["/"])
    await listener.close()
