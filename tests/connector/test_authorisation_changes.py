"""Authorisation changes end what they no longer allow (issue 10, items 1-3), in process:

- rotating, revoking or deleting a credential ends the sessions registered with it (its
  secret or one of its tokens), and the secret memo forgets the old secret;
- moving a device to another store releases the claims of holders that no longer reach it;
- a device socket replacing a live one tells the claim holder `device_replaced`.
"""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from accounts import services as account_services
from accounts.oauth import access_token_revoke
from accounts.scope import SYSTEM
from connector import callers, registrations, selectors, sessions
from connector import services as connector_services
from connector.errors import InvalidClient, UnknownDevice
from connector.models import DeviceSession
from tests.connector.relay_world import (
    Listener,
    communicator,
    device_socket,
    expect_close,
    hang_up,
    refused_with,
    register,
    session_socket,
)
from tests.factories import make_access_token

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.cloud_connector_on,
    pytest.mark.usefixtures("fresh_state"),
]


def db(fn):
    return database_sync_to_async(fn)


def register_with_secret(world, pos=None) -> registrations.Registration:
    pos = pos or world.pos
    caller = callers.caller_from_client_credentials(
        client_id=pos.application.client_id, client_secret=pos.client_secret
    )
    return registrations.device_register(caller=caller, tsn=world.device.tsn, endpoints=["/"])


def register_with_token(world, token: str) -> registrations.Registration:
    caller = callers.caller_from_bearer(token)
    return registrations.device_register(caller=caller, tsn=world.device.tsn, endpoints=["/"])


def session_of(registration: registrations.Registration) -> DeviceSession:
    return DeviceSession.objects.get(pk=registration.session_id)


# --- item 1: rotation, revocation, deletion ---------------------------------------------------


def test_rotating_a_pos_secret_ends_the_sessions_registered_with_it(world):
    registration = register_with_secret(world)
    account_services.credential_rotate(obj=world.pos, actor=SYSTEM)
    session = session_of(registration)
    assert (session.state, session.end_reason) == ("ended", "secret_rotated")


def test_rotating_an_application_secret_ends_the_sessions_registered_with_its_tokens(world):
    registration = register_with_token(world, world.app_token)
    account_services.credential_rotate(obj=world.app, actor=SYSTEM)
    assert session_of(registration).state == "ended"


def test_rotating_another_credential_leaves_the_session_alone(world):
    registration = register_with_secret(world)
    account_services.credential_rotate(obj=world.neighbour, actor=SYSTEM)
    account_services.credential_rotate(obj=world.app, actor=SYSTEM)
    assert session_of(registration).state == "registered"
    account_services.credential_rotate(obj=world.pos, actor=SYSTEM)
    assert session_of(registration).state == "ended"


def test_a_session_registered_again_with_another_credential_stands_on_that_one(world):
    first = register_with_secret(world)
    again = register_with_token(world, world.app_token)
    assert again.session_id == first.session_id
    account_services.credential_rotate(obj=world.pos, actor=SYSTEM)
    assert session_of(again).state == "registered"
    account_services.credential_rotate(obj=world.app, actor=SYSTEM)
    assert session_of(again).state == "ended"


def test_a_secret_checked_just_before_the_rotation_does_not_register_after_it(world):
    # The hash check happens before the registration's transaction: the rotation may commit
    # in between; the registration then must not create a session nobody will end.
    caller = callers.caller_from_client_credentials(
        client_id=world.pos.application.client_id, client_secret=world.pos.client_secret
    )
    account_services.credential_rotate(obj=world.pos, actor=SYSTEM)
    with pytest.raises(InvalidClient):
        registrations.device_register(caller=caller, tsn=world.device.tsn, endpoints=["/"])
    assert not DeviceSession.objects.filter(device=world.device).exists()


def test_a_token_checked_just_before_its_revocation_does_not_register_after_it(world):
    caller = callers.caller_from_bearer(world.pos_token)
    assert access_token_revoke(application=world.pos.application, raw_token=world.pos_token)
    with pytest.raises(InvalidClient):
        registrations.device_register(caller=caller, tsn=world.device.tsn, endpoints=["/"])


def test_revoking_the_token_a_terminal_registered_with_ends_its_session_and_no_other(world):
    other_token = make_access_token(world.pos.application)
    registration = register_with_token(world, world.pos_token)
    assert access_token_revoke(application=world.pos.application, raw_token=other_token)
    assert session_of(registration).state == "registered"
    assert access_token_revoke(application=world.pos.application, raw_token=world.pos_token)
    session = session_of(registration)
    assert (session.state, session.end_reason) == ("ended", "token_revoked")


def test_deleting_the_registering_pos_ends_its_sessions_even_unclaimed(world):
    registration = register_with_secret(world)
    account_services.pos_delete(pos=world.pos, actor=SYSTEM)
    session = session_of(registration)
    assert (session.state, session.end_reason) == ("ended", "credential_deleted")


def test_the_secret_memo_forgets_the_old_secret_at_the_rotation(world, django_capture_on_commit_callbacks):
    old_hash = world.pos.application.client_secret
    assert callers.secret_matches(world.pos.client_secret, old_hash)
    assert callers.secret_remembered(world.pos.client_secret, old_hash)
    with django_capture_on_commit_callbacks(execute=True):
        account_services.credential_rotate(obj=world.pos, actor=SYSTEM)
    assert not callers.secret_remembered(world.pos.client_secret, old_hash)


def test_a_remembered_old_secret_no_longer_registers_after_the_rotation(world):
    assert isinstance(register_with_secret(world), registrations.Registration)  # remembered now
    account_services.credential_rotate(obj=world.pos, actor=SYSTEM)
    outcome = registrations.device_register_with_client(
        address="192.0.2.1",
        client_id=world.pos.application.client_id,
        client_secret=world.pos.client_secret,
        tsn=world.device.tsn,
        endpoints=["/"],
    )
    assert isinstance(outcome, registrations.SecretToCheck)
    assert not callers.secret_matches(world.pos.client_secret, outcome.record.stored_secret)


async def test_rotation_closes_the_device_and_pos_session_sockets_with_4410(world):
    registration = await register(world.device.tsn, world.pos_credentials)
    device = await device_socket(registration)
    listener = await Listener.open(world.app_token)  # the application holds the claim
    claim = await listener.claim(world.device.tsn)
    pos = await session_socket(claim, world.app_token)
    await db(account_services.credential_rotate)(obj=world.pos, actor=SYSTEM)
    await expect_close(device, 4410)
    await expect_close(pos, 4410)
    assert await listener.event() == {
        "type": "session_ended",
        "session_id": claim["session_id"],
        "tsn": world.device.tsn,
    }
    # The old secret is refused.
    assert (await register(world.device.tsn, world.pos_credentials))["error"] == "invalid_client"
    await listener.close()


async def test_a_terminal_registered_with_a_token_is_closed_4410_when_the_token_is_revoked(world):
    registration = await register(world.device.tsn, token=world.app_token)
    device = await device_socket(registration)
    await db(access_token_revoke)(application=world.app.application, raw_token=world.app_token)
    await expect_close(device, 4410)


# --- item 2: moving a device ------------------------------------------------------------------


async def claimed_by(world, token: str):
    registration = await register(world.device.tsn, world.pos_credentials)
    device = await device_socket(registration)
    listener = await Listener.open(token)
    claim = await listener.claim(world.device.tsn)
    assert claim["status"] == "ok", claim
    pos = await session_socket(claim, token)
    return device, listener, claim, pos


def move(world, store) -> None:
    connector_services.device_update(device=world.device, store=store, actor=SYSTEM)


async def test_moving_a_device_to_another_store_releases_the_old_store_pos_claim(world):
    device, listener, claim, pos = await claimed_by(world, world.pos_token)
    await db(move)(world, world.neighbour.store)
    await expect_close(pos, 4410)
    session = await db(DeviceSession.objects.get)(pk=claim["session_id"])
    assert (session.state, session.claimed_by_id) == ("online", None)
    assert (await listener.claim(world.device.tsn))["error"] == "unknown_device"
    # The old store's POS hears nothing more of the session; the device is still there.
    await hang_up(device)
    assert await listener.comm.receive_nothing(0.3)
    await listener.close()


async def test_after_a_move_the_new_store_pos_may_claim_the_same_session(world):
    device, listener, claim, pos = await claimed_by(world, world.pos_token)
    await db(move)(world, world.neighbour.store)
    await expect_close(pos, 4410)
    newcomer = await Listener.open(world.neighbour_token)
    again = await newcomer.claim(world.device.tsn)
    assert (again["status"], again["session_id"]) == ("ok", claim["session_id"])
    pos = await session_socket(again, world.neighbour_token)
    await pos.send_to(text_data="hello from the new store")
    assert await device.receive_from(5) == "hello from the new store"
    for comm in (pos, device):
        await hang_up(comm)
    await listener.close()
    await newcomer.close()


async def test_moving_a_device_keeps_the_claim_of_an_application_of_its_merchant_aggregator(world):
    device, listener, claim, pos = await claimed_by(world, world.app_token)
    await db(move)(world, world.neighbour.store)
    assert await pos.receive_nothing(0.3)
    session = await db(DeviceSession.objects.get)(pk=claim["session_id"])
    assert session.claimed_by_id == world.app.application_id
    await pos.send_to(text_data="still mine")
    assert await device.receive_from(5) == "still mine"
    for comm in (pos, device):
        await hang_up(comm)
    await listener.close()


async def test_a_pos_session_socket_opened_after_the_move_is_refused(world):
    device, listener, claim, pos = await claimed_by(world, world.pos_token)
    await db(move)(world, world.neighbour.store)
    await expect_close(pos, 4410)
    await refused_with(communicator(claim["session_url"].removeprefix("ws://testserver"), token=world.pos_token), 4404)
    await hang_up(device)
    await listener.close()


def test_a_move_within_the_same_store_releases_nothing(world):
    register_with_secret(world)
    claim = sessions.session_claim(caller=callers.caller_from_bearer(world.pos_token), tsn=world.device.tsn)
    connector_services.device_update(device=world.device, store=world.store, enabled=True, actor=SYSTEM)
    assert DeviceSession.objects.get(pk=claim.session_id).claimed_by_id == world.pos.application_id


def test_a_claim_racing_a_move_rereads_the_device_under_the_session_lock(world, monkeypatch):
    # The claim found the device in its store; the move committed before the claim locked
    # the session: the claim must not succeed on the device it no longer reaches.
    register_with_secret(world)
    caller = callers.caller_from_bearer(world.pos_token)
    found = selectors.device_find(principal=caller.principal, tsn=world.device.tsn)
    move(world, world.neighbour.store)
    monkeypatch.setattr(sessions, "device_find", lambda **kwargs: found)
    with pytest.raises(UnknownDevice):
        sessions.session_claim(caller=caller, tsn=world.device.tsn)
    assert DeviceSession.objects.get(device=world.device).claimed_by_id is None


# --- item 3: device_replaced ------------------------------------------------------------------


async def test_a_device_socket_replacing_a_live_one_tells_the_claim_holder(world):
    registration = await register(world.device.tsn, world.pos_credentials, endpoints=["/upp/v1/transaction"])
    first = await device_socket(registration, "/upp/v1/transaction")
    listener = await Listener.open(world.pos_token)
    claim = await listener.claim(world.device.tsn)
    again = await register(world.device.tsn, world.pos_credentials, endpoints=["/upp/v1/transaction"])
    second = await device_socket(again, "/upp/v1/transaction")
    await expect_close(first, 4409)
    assert await listener.event() == {
        "type": "device_replaced",
        "session_id": claim["session_id"],
        "tsn": world.device.tsn,
        "endpoint": "/upp/v1/transaction",
    }
    await hang_up(second)
    await listener.close()


async def test_a_replacement_is_told_to_the_claim_holder_only(world):
    registration = await register(world.device.tsn, world.pos_credentials)
    listener = await Listener.open(world.pos_token)
    first = await device_socket(registration)
    claim = await listener.claim(world.device.tsn)
    assert claim["status"] == "ok"
    outsider = await Listener.open(world.neighbour_token)
    second = await device_socket(registration)
    await expect_close(first, 4409)
    assert (await listener.event())["type"] == "device_replaced"
    assert await outsider.comm.receive_nothing(0.3)
    await hang_up(second)
    await listener.close()
    await outsider.close()
