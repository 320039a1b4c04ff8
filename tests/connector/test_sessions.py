import re
import threading
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from accounts import services as account_services
from accounts.models import Application
from accounts.scope import SYSTEM
from connector import callers, limiter, nodes, registrations, selectors, session_sockets, sessions, tokens
from connector import services as connector_services
from connector.conf import connector_settings
from connector.errors import (
    AmbiguousTsn,
    DeviceDisabled,
    DeviceOffline,
    InsufficientScope,
    InvalidClient,
    InvalidToken,
    NotClaimed,
    RateLimited,
    ServiceNotActive,
    SessionClaimed,
    UnknownDevice,
    UnknownEndpoint,
    UnknownSession,
)
from connector.models import DeviceSession, NodeHeartbeat, SessionSocket
from tests.factories import (
    DeviceFactory,
    StoreFactory,
    make_access_token,
    make_cloud_application,
    make_pos,
    make_usable_device,
)

pytestmark = [pytest.mark.django_db, pytest.mark.cloud_connector_on]


def caller_of(pos_or_app) -> callers.Caller:
    return callers.caller_from_bearer(make_access_token(pos_or_app))


def register(world, *, endpoints=None, now=None, device=None) -> registrations.Registration:
    device = device or world.device
    return registrations.device_register(
        caller=caller_of(world.pos), tsn=device.tsn, endpoints=endpoints or ["/"], now=now
    )


def attach_device(registration, endpoint="/", channel="dev-1", node="node-a"):
    return session_sockets.device_socket_attach(
        session_id=registration.session_id,
        device_id=registration.device_id,
        endpoint=endpoint,
        channel_name=channel,
        node=node,
    )


def state_of(session_id: str) -> str:
    return DeviceSession.objects.get(pk=session_id).state


# --- callers -------------------------------------------------------------------------------


def test_a_pos_authenticates_with_its_client_id_and_secret(world):
    caller = callers.caller_from_client_credentials(
        client_id=world.pos.application.client_id, client_secret=world.pos.client_secret
    )
    assert caller.application_id == world.pos.application_id
    assert caller.principal.store_id == world.store.pk


def test_it_refuses_a_wrong_secret(world):
    with pytest.raises(InvalidClient):
        callers.caller_from_client_credentials(client_id=world.pos.application.client_id, client_secret="wrong")


def test_it_refuses_an_unknown_client_id():
    with pytest.raises(InvalidClient):
        callers.caller_from_client_credentials(client_id="nobody", client_secret="x")


def test_a_rotated_secret_fails_at_once_even_after_a_remembered_success(world):
    callers.caller_from_client_credentials(
        client_id=world.pos.application.client_id, client_secret=world.pos.client_secret
    )
    account_services.credential_rotate(obj=world.pos, actor=SYSTEM)
    with pytest.raises(InvalidClient):
        callers.caller_from_client_credentials(
            client_id=world.pos.application.client_id, client_secret=world.pos.client_secret
        )


def test_an_application_without_the_pos_terminal_role_is_refused():
    app = make_cloud_application(complete=False)
    with pytest.raises(InvalidClient):
        callers.caller_from_client_credentials(client_id=app.application.client_id, client_secret=app.client_secret)


def test_a_provisioning_client_never_reaches_a_terminal(world):
    issued = account_services.provisioning_client_create(
        tenant=world.store.merchant.merchant_aggregator.tenant, actor=SYSTEM
    )
    with pytest.raises(InvalidClient):
        callers.caller_from_client_credentials(client_id=issued.client_id, client_secret=issued.client_secret)
    token = make_access_token(issued.obj.application, scope="cloud-connector provisioning")
    with pytest.raises(InsufficientScope):
        callers.caller_from_bearer(token)


def test_a_token_without_the_cloud_connector_scope_is_insufficient(world):
    with pytest.raises(InsufficientScope):
        callers.caller_from_bearer(make_access_token(world.pos.application, scope="provisioning"))


@pytest.mark.parametrize("token", [None, "", "unknown-token"])
def test_a_missing_or_unknown_token_is_invalid(token):
    with pytest.raises(InvalidToken):
        callers.caller_from_bearer(token)


def test_an_expired_token_is_invalid(world):
    with pytest.raises(InvalidToken):
        callers.caller_from_bearer(make_access_token(world.pos.application, expires_in=-1))


# --- finding devices -----------------------------------------------------------------------


def test_a_device_is_found_by_serial_or_fully_qualified_tsn_in_any_case(world):
    principal = caller_of(world.pos).principal
    device = world.device
    assert selectors.device_find(principal=principal, tsn=device.serial) == device
    assert selectors.device_find(principal=principal, tsn=device.tsn.upper()) == device
    assert selectors.device_find(principal=principal, tsn=device.tsn.lower()) == device


def test_make_model_and_serial_may_hold_dashes_and_dots(world):
    device = DeviceFactory(store=world.store, make="Ingen-ico", model="Lane-3000.v2", serial="23-01.9")
    principal = caller_of(world.pos).principal
    assert selectors.device_find(principal=principal, tsn="ingen-ico-LANE-3000.V2-23-01.9") == device
    assert selectors.device_find(principal=principal, tsn="23-01.9") == device


def test_a_serial_shared_by_two_devices_in_scope_is_ambiguous_but_their_tsns_are_not(world):
    other = DeviceFactory(store=world.store, make="Verifone", model="P400", serial=world.device.serial)
    principal = caller_of(world.pos).principal
    with pytest.raises(AmbiguousTsn):
        selectors.device_find(principal=principal, tsn=world.device.serial)
    assert selectors.device_find(principal=principal, tsn=other.tsn) == other


def test_a_fully_qualified_match_wins_over_a_bare_serial(world):
    # One device's whole tsn is another's serial: the fully qualified reading decides.
    other = DeviceFactory(store=world.store, make="X", model="Y", serial=world.device.tsn)
    principal = caller_of(world.pos).principal
    assert selectors.device_find(principal=principal, tsn=world.device.tsn) == world.device
    assert selectors.device_find(principal=principal, tsn=other.tsn) == other


def test_a_serial_shared_with_a_device_outside_the_scope_is_not_ambiguous(world):
    DeviceFactory(store=StoreFactory(merchant=world.store.merchant), make="Verifone", serial=world.device.serial)
    assert selectors.device_find(principal=caller_of(world.pos).principal, tsn=world.device.serial) == world.device


def test_a_device_of_another_store_is_unknown_to_a_store_pos(world):
    with pytest.raises(UnknownDevice):
        selectors.device_find(principal=caller_of(world.neighbour).principal, tsn=world.device.tsn)
    with pytest.raises(UnknownDevice):
        selectors.device_find(principal=caller_of(world.far_pos).principal, tsn=world.device.serial)


def test_a_merchant_aggregator_application_reaches_every_store(world):
    assert selectors.device_find(principal=caller_of(world.app).principal, tsn=world.device.tsn) == world.device


def test_a_serial_shared_by_more_devices_than_one_read_holds_is_still_found_exactly(world):
    principal = caller_of(world.pos).principal
    makes = [f"Make{i}" for i in range(selectors._FIND_CANDIDATES + 2)]
    lookalikes = [DeviceFactory(store=world.store, make=make, model="M", serial=world.device.serial) for make in makes]
    assert selectors.device_find(principal=principal, tsn=lookalikes[-1].tsn) == lookalikes[-1]
    assert selectors.device_find(principal=principal, tsn=world.device.tsn) == world.device
    with pytest.raises(AmbiguousTsn):
        selectors.device_find(principal=principal, tsn=world.device.serial)


@pytest.mark.parametrize("level", ["subscription", "merchant_aggregator", "merchant", "device", "disabled"])
def test_a_found_device_is_refused_for_the_reason_the_services_give(world, level):
    merchant = world.device.merchant
    if level == "subscription":
        subscription = merchant.merchant_aggregator.tenant.subscriptions.get()
        connector_services.subscription_delete(subscription=subscription, actor=SYSTEM)
    elif level == "disabled":
        connector_services.device_set_enabled(device=world.device, enabled=False, actor=SYSTEM)
    else:
        obj = {"merchant_aggregator": merchant.merchant_aggregator, "merchant": merchant, "device": world.device}
        connector_services.service_deactivate(obj=obj[level], actor=SYSTEM)
    world.device.refresh_from_db()
    found = selectors.device_find(principal=caller_of(world.pos).principal, tsn=world.device.tsn)
    expected = connector_services.device_unusable_reason(device=world.device)
    assert expected is not None
    assert connector_services.unusable_reason_from_flags(found) == expected
    with pytest.raises((DeviceDisabled, ServiceNotActive)):
        selectors.device_require_usable(device=found)


def test_a_found_device_knows_its_live_session(world):
    principal = caller_of(world.pos).principal
    assert selectors.device_find(principal=principal, tsn=world.device.tsn).live_session_id is None
    registration = register(world)
    assert selectors.device_find(principal=principal, tsn=world.device.tsn).live_session_id == registration.session_id


# --- registration --------------------------------------------------------------------------


def test_a_registration_with_client_credentials_takes_one_call_once_the_secret_is_remembered(world):
    client_id, secret = world.pos.application.client_id, world.pos.client_secret
    arguments = {"address": "192.0.2.1", "client_id": client_id, "tsn": world.device.tsn, "endpoints": ["/"]}
    first = registrations.device_register_with_client(client_secret=secret, **arguments)
    assert isinstance(first, registrations.SecretToCheck)
    assert first.record.caller.application_id == world.pos.application_id
    assert DeviceSession.objects.count() == 0  # nothing registered before the secret is checked
    assert callers.secret_matches(secret, first.record.stored_secret)
    registration = registrations.device_register_with_client(client_secret=secret, **arguments)
    assert isinstance(registration, registrations.Registration)
    assert isinstance(
        registrations.device_register_with_client(client_secret="wrong", **arguments), registrations.SecretToCheck
    )
    unknown = registrations.device_register_with_client(client_secret=secret, **{**arguments, "client_id": "nobody"})
    assert unknown == registrations.SecretToCheck(record=None)


def test_a_limited_client_id_is_refused_before_its_credentials_are_read(world, settings):
    # Formerly the whole address was limited; now the client id from that address is
    # (tests/connector/test_registration_limiter.py), and a valid token still registers.
    settings.CLOUD_CONNECTOR = {
        **settings.CLOUD_CONNECTOR,
        "FAILED_REGISTRATION_LIMIT": 1,
        "FAILED_REGISTRATION_WINDOW": 86400,  # windows are aligned on the clock: none closes mid-test
    }
    cache.clear()
    assert limiter.registration_failed(address="192.0.2.2", client_id="x") is None
    assert limiter.registration_failed(address="192.0.2.2", client_id="x") > 0
    with pytest.raises(RateLimited):
        registrations.device_register_with_client(
            address="192.0.2.2", client_id="x", client_secret="y", tsn=world.device.tsn, endpoints=["/"]
        )
    registration = registrations.device_register_with_token(
        address="192.0.2.2", raw_token=world.pos_token, tsn=world.device.tsn, endpoints=["/"]
    )
    assert registration.created


def test_registration_opens_a_registered_session_with_a_jwt_for_it(world):
    registration = register(world, endpoints=["/a", "/b"])
    session = DeviceSession.objects.get(pk=registration.session_id)
    assert session.state == DeviceSession.State.REGISTERED
    assert session.endpoints == ["/a", "/b"]
    assert len(registration.session_id) >= 22
    claims = tokens.device_token_verify(registration.token.token, session_id=session.pk)
    assert claims.device_id == world.device.pk


def test_registering_again_while_the_session_is_live_keeps_the_session_id(world):
    first = register(world)
    attach_device(first)
    second = register(world)
    assert second.session_id == first.session_id
    assert not second.created
    assert second.token.token != first.token.token or second.token.expires_at >= first.token.expires_at
    assert state_of(first.session_id) == "online"


def test_a_device_back_within_its_grace_period_gets_its_session_back_as_registered(world):
    first = register(world)
    attach_device(first)
    session_sockets.socket_detach(session_id=first.session_id, side="device", endpoint="/", channel_name="dev-1")
    assert state_of(first.session_id) == "offline"
    again = register(world)
    assert again.session_id == first.session_id
    assert state_of(first.session_id) == "registered"


def test_a_device_back_after_its_grace_period_gets_a_new_session(world):
    first = register(world)
    attach_device(first)
    session_sockets.socket_detach(session_id=first.session_id, side="device", endpoint="/", channel_name="dev-1")
    later = timezone.now() + timedelta(seconds=connector_settings.GRACE_PERIOD + 1)
    again = register(world, now=later)
    assert again.session_id != first.session_id
    assert DeviceSession.objects.get(pk=first.session_id).end_reason == "device_gone"


def test_a_disabled_device_may_not_register(world):
    connector_services.device_update(device=world.device, enabled=False, actor=SYSTEM)
    with pytest.raises(DeviceDisabled):
        register(world)


@pytest.mark.parametrize("level", ["subscription", "merchant_aggregator", "merchant", "device"])
def test_registration_names_the_level_where_the_service_is_inactive(world, level):
    merchant = world.device.merchant
    if level == "subscription":
        connector_services.subscription_delete(
            subscription=merchant.merchant_aggregator.tenant.subscriptions.get(), actor=SYSTEM
        )
    else:
        obj = {"merchant_aggregator": merchant.merchant_aggregator, "merchant": merchant, "device": world.device}
        connector_services.service_deactivate(obj=obj[level], actor=SYSTEM)
    with pytest.raises(ServiceNotActive) as caught:
        register(world)
    assert caught.value.extra == {"level": level}


# --- claims --------------------------------------------------------------------------------


def test_a_claim_names_the_session_and_its_endpoints(world):
    registration = register(world, endpoints=["/upp"])
    claim = sessions.session_claim(caller=caller_of(world.pos), tsn=world.device.serial)
    assert (claim.session_id, claim.endpoints, claim.tsn) == (registration.session_id, ["/upp"], world.device.tsn)
    assert DeviceSession.objects.get(pk=claim.session_id).claimed_by_id == world.pos.application_id


def test_a_device_without_a_live_session_is_offline(world):
    with pytest.raises(DeviceOffline):
        sessions.session_claim(caller=caller_of(world.pos), tsn=world.device.tsn)


def test_a_second_credential_finds_the_session_claimed_and_the_holder_claims_again(world):
    register(world)
    first = sessions.session_claim(caller=caller_of(world.pos), tsn=world.device.tsn)
    with pytest.raises(SessionClaimed):
        sessions.session_claim(caller=caller_of(world.app), tsn=world.device.tsn)
    again = sessions.session_claim(caller=caller_of(world.pos), tsn=world.device.tsn)
    assert again == first


def test_force_takes_the_claim_over(world):
    register(world)
    sessions.session_claim(caller=caller_of(world.pos), tsn=world.device.tsn)
    taken = sessions.session_claim(caller=caller_of(world.app), tsn=world.device.tsn, force=True)
    assert taken.taken_from == world.pos.application_id
    assert DeviceSession.objects.get(pk=taken.session_id).claimed_by_id == world.app.application_id


def test_an_outsider_cannot_claim_the_device(world):
    register(world)
    with pytest.raises(UnknownDevice):
        sessions.session_claim(caller=caller_of(world.neighbour), tsn=world.device.tsn, force=True)


@pytest.mark.django_db(transaction=True)
def test_two_credentials_racing_for_a_claim_in_two_threads_exactly_one_wins(world):
    register(world)
    callers = [caller_of(world.pos), caller_of(world.app)]
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def claim(caller):
        try:
            barrier.wait(5)
            sessions.session_claim(caller=caller, tsn=world.device.tsn)
            outcomes.append("won")
        except SessionClaimed:
            outcomes.append("claimed")
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(caller,)) for caller in callers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["claimed", "won"]
    holder = DeviceSession.objects.get(device=world.device).claimed_by_id
    assert holder in {world.pos.application_id, world.app.application_id}


def in_two_threads(first, second) -> list:
    """Run two functions at once, each on its own connection; returns their exceptions."""
    barrier = threading.Barrier(2)
    failures: list = []

    def run(fn):
        try:
            barrier.wait(5)
            fn()
        except Exception as error:  # noqa: BLE001 - reported to the test
            failures.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(fn,)) for fn in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return failures


@pytest.mark.django_db(transaction=True)
def test_two_registrations_of_one_device_at_once_share_one_session(world):
    results: list = []
    failures = in_two_threads(lambda: results.append(register(world)), lambda: results.append(register(world)))
    assert failures == []
    assert len({r.session_id for r in results}) == 1
    assert DeviceSession.objects.filter(device=world.device).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_socket_replaced_while_the_old_one_leaves_keeps_the_session_online(world):
    registration = register(world)
    for round_ in range(10):
        old, new = f"old-{round_}", f"new-{round_}"
        attach_device(registration, channel=old)
        failures = in_two_threads(
            lambda new=new: attach_device(registration, channel=new),
            lambda old=old: session_sockets.socket_detach(
                session_id=registration.session_id, side="device", endpoint="/", channel_name=old
            ),
        )
        assert failures == []
        assert state_of(registration.session_id) == "online"
        assert list(SessionSocket.objects.values_list("channel_name", flat=True)) == [new]


def test_release_gives_the_claim_up(world):
    register(world)
    claim = sessions.session_claim(caller=caller_of(world.pos), tsn=world.device.tsn)
    sessions.session_release(caller=caller_of(world.pos), session_id=claim.session_id)
    assert DeviceSession.objects.get(pk=claim.session_id).claimed_by_id is None
    sessions.session_claim(caller=caller_of(world.app), tsn=world.device.tsn)


def test_only_the_holder_may_release(world):
    register(world)
    claim = sessions.session_claim(caller=caller_of(world.pos), tsn=world.device.tsn)
    with pytest.raises(NotClaimed):
        sessions.session_release(caller=caller_of(world.app), session_id=claim.session_id)
    with pytest.raises(UnknownSession):
        sessions.session_release(caller=caller_of(world.neighbour), session_id=claim.session_id)
    with pytest.raises(UnknownSession):
        sessions.session_release(caller=caller_of(world.pos), session_id="no-such-session-id-at-all-xx")


def test_devices_lists_the_scope_with_online_and_claims(world):
    other = make_usable_device(store=world.store)
    registration = register(world)
    attach_device(registration)
    sessions.session_claim(caller=caller_of(world.app), tsn=world.device.tsn)
    listed = {row["tsn"]: row for row in selectors.devices_for_caller(caller=caller_of(world.pos))}
    online_since = listed[world.device.tsn]["online_since"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", online_since)
    assert listed[world.device.tsn] == {
        "tsn": world.device.tsn,
        "online": True,
        "claimed": True,
        "claimed_by_you": False,
        "session_id": registration.session_id,
        "local_url": None,  # v1.1 §14: the terminal registered none
        # v1.1 §11: presence beside the v1 fields.
        "online_since": online_since,
        "offline_since": None,
        "last_seen_at": online_since,
        "last_disconnect_reason": None,
    }
    assert listed[other.tsn]["online"] is False and listed[other.tsn]["claimed"] is False
    assert listed[other.tsn]["online_since"] is None and listed[other.tsn]["last_seen_at"] is None
    assert selectors.devices_for_caller(caller=caller_of(world.neighbour)) == []
    far = selectors.devices_for_caller(caller=caller_of(world.far_pos))
    assert [row["tsn"] for row in far] == [world.far_device.tsn]


# --- states, grace and expiry --------------------------------------------------------------


def test_a_session_is_online_while_any_device_socket_is_attached(world):
    registration = register(world, endpoints=["/a", "/b"])
    attach_device(registration, "/a", "dev-a")
    attach_device(registration, "/b", "dev-b")
    session_sockets.socket_detach(
        session_id=registration.session_id, side="device", endpoint="/a", channel_name="dev-a"
    )
    assert state_of(registration.session_id) == "online"
    session_sockets.socket_detach(
        session_id=registration.session_id, side="device", endpoint="/b", channel_name="dev-b"
    )
    assert state_of(registration.session_id) == "offline"


def test_a_replaced_socket_leaving_does_not_take_the_session_offline(world):
    registration = register(world)
    attach_device(registration, channel="old")
    place = attach_device(registration, channel="new")
    assert place.replaced == "old"
    session_sockets.socket_detach(session_id=registration.session_id, side="device", endpoint="/", channel_name="old")
    assert state_of(registration.session_id) == "online"


def test_an_endpoint_the_device_did_not_register_is_refused(world):
    registration = register(world, endpoints=["/a"])
    with pytest.raises(UnknownEndpoint):
        attach_device(registration, "/b")


def test_a_jwt_of_another_device_does_not_attach(world):
    registration = register(world)
    with pytest.raises(UnknownSession):
        session_sockets.device_socket_attach(
            session_id=registration.session_id,
            device_id=registration.device_id + 1000,
            endpoint="/",
            channel_name="x",
            node="n",
        )


def test_an_offline_session_ends_after_the_grace_period(world):
    registration = register(world)
    attach_device(registration)
    session_sockets.socket_detach(session_id=registration.session_id, side="device", endpoint="/", channel_name="dev-1")
    grace = connector_settings.GRACE_PERIOD
    nodes.sessions_sweep(now=timezone.now() + timedelta(seconds=grace - 5))
    assert state_of(registration.session_id) == "offline"
    result = nodes.sessions_sweep(now=timezone.now() + timedelta(seconds=grace + 1))
    assert result.ended == [registration.session_id]
    session = DeviceSession.objects.get(pk=registration.session_id)
    assert (session.state, session.end_reason) == ("ended", "device_gone")


@pytest.mark.parametrize("how", ["shutdown", "node_lost"])
def test_a_session_whose_worker_went_away_waits_the_restart_grace_period(world, how):
    # The server closed the terminal's sockets itself (a worker shutting down, or one that
    # died): a fleet re-admitted at the pace the workers serve it may need longer than the
    # grace period, and must find its sessions, and the POS's claims, still there.
    registration = register(world)
    attach_device(registration, node="node-a")
    sessions.session_claim(caller=caller_of(world.pos), tsn=world.device.tsn)
    if how == "shutdown":
        nodes.node_forget(node="node-a")
    else:
        # node-a stopped beating: the sweep of another node, past NODE_TIMEOUT, forgets it.
        nodes.node_heartbeat(node="node-a", now=timezone.now() - timedelta(hours=1))
        NodeHeartbeat.objects.filter(node="node-a").update(seen_at=timezone.now() - timedelta(hours=1))
        SessionSocket.objects.update(connected_at=timezone.now() - timedelta(hours=1))
        nodes.sessions_sweep(now=timezone.now())
    assert state_of(registration.session_id) == "offline"
    restart = connector_settings.RESTART_GRACE_PERIOD
    assert restart > connector_settings.GRACE_PERIOD
    nodes.sessions_sweep(now=timezone.now() + timedelta(seconds=connector_settings.GRACE_PERIOD + 5))
    assert state_of(registration.session_id) == "offline"
    # Looked up lazily past the grace period, it is still live too, and comes back with its claim.
    later = timezone.now() + timedelta(seconds=restart - 5)
    again = register(world, now=later)
    assert again.session_id == registration.session_id
    assert DeviceSession.objects.get(pk=registration.session_id).claimed_by_id == world.pos.application_id
    # Gone past the restart grace period: ended.
    attach_device(again, node="node-b")
    nodes.node_forget(node="node-b")
    result = nodes.sessions_sweep(now=timezone.now() + timedelta(seconds=restart + 1))
    assert result.ended == [registration.session_id]
    assert DeviceSession.objects.get(pk=registration.session_id).end_reason == "device_gone"


def test_a_session_offline_for_the_terminals_own_reasons_waits_the_grace_period_only(world):
    registration = register(world)
    attach_device(registration)
    session_sockets.socket_detach(
        session_id=registration.session_id, side="device", endpoint="/", channel_name="dev-1", reason="ping_timeout"
    )
    session = DeviceSession.objects.get(pk=registration.session_id)
    assert session.offline_until == session.offline_at + timedelta(seconds=connector_settings.GRACE_PERIOD)
    later = timezone.now() + timedelta(seconds=connector_settings.GRACE_PERIOD + 1)
    assert sessions.live_session_for_device(device=world.device, now=later) is None
    assert DeviceSession.objects.get(pk=registration.session_id).end_reason == "device_gone"


def test_a_session_taken_offline_by_an_older_worker_keeps_the_grace_period_of_its_offline_time(world):
    # During the deploy that brings `offline_until`, a worker of the previous release may take
    # a session offline: it writes `offline_at` only, and an `offline_until` left from an
    # earlier offline period must not end the session early.
    registration = register(world)
    attach_device(registration)
    now = timezone.now()
    DeviceSession.objects.filter(pk=registration.session_id).update(
        state="offline", offline_at=now, offline_until=now - timedelta(hours=1)
    )
    grace = connector_settings.GRACE_PERIOD
    nodes.sessions_sweep(now=now + timedelta(seconds=grace - 5))
    assert state_of(registration.session_id) == "offline"
    assert sessions.live_session_for_device(device=world.device, now=now + timedelta(seconds=grace - 5)) is not None
    result = nodes.sessions_sweep(now=now + timedelta(seconds=grace + 1))
    assert result.ended == [registration.session_id]


def test_a_registered_session_that_never_came_online_ends_when_its_jwt_expires(world):
    registration = register(world)
    nodes.sessions_sweep(now=timezone.now())
    assert state_of(registration.session_id) == "registered"
    nodes.sessions_sweep(now=timezone.now() + timedelta(seconds=registration.token.expires_in + 1))
    assert DeviceSession.objects.get(pk=registration.session_id).end_reason == "registration_expired"


def test_an_expired_session_is_ended_lazily_when_looked_up(world):
    registration = register(world)
    later = timezone.now() + timedelta(seconds=registration.token.expires_in + 1)
    assert sessions.live_session_for_device(device=world.device, now=later) is None
    assert state_of(registration.session_id) == "ended"


def test_an_online_session_does_not_expire(world):
    registration = register(world)
    attach_device(registration, node="node-a")
    tomorrow = timezone.now() + timedelta(days=1)
    nodes.node_heartbeat(node="node-a", now=tomorrow)
    nodes.sessions_sweep(now=tomorrow)
    assert state_of(registration.session_id) == "online"


def test_the_sockets_of_a_silent_node_are_forgotten_and_their_sessions_go_offline(world):
    registration = register(world)
    attach_device(registration, node="dead-node")
    nodes.node_heartbeat(node="dead-node", now=timezone.now() - timedelta(minutes=5))
    SessionSocket.objects.update(connected_at=timezone.now() - timedelta(minutes=5))
    result = nodes.sessions_sweep()
    assert result.went_offline == [registration.session_id]
    assert not SessionSocket.objects.exists()
    assert not NodeHeartbeat.objects.filter(node="dead-node").exists()


def test_a_beating_node_keeps_its_sockets(world):
    registration = register(world)
    attach_device(registration, node="live-node")
    SessionSocket.objects.update(connected_at=timezone.now() - timedelta(minutes=5))
    nodes.node_heartbeat(node="live-node")
    nodes.sessions_sweep()
    assert state_of(registration.session_id) == "online"


def test_a_heartbeat_reports_whether_the_node_was_known():
    assert nodes.node_heartbeat(node="n1") is False
    assert nodes.node_heartbeat(node="n1") is True


def test_ended_sessions_are_kept_for_the_retention_time_only(world):
    registration = register(world)
    sessions.sessions_end(session_ids=[registration.session_id], reason="test")
    retention = connector_settings.ENDED_RETENTION
    nodes.sessions_sweep(now=timezone.now() + timedelta(seconds=retention - 10))
    assert DeviceSession.objects.filter(pk=registration.session_id).exists()
    nodes.sessions_sweep(now=timezone.now() + timedelta(seconds=retention + 10))
    assert not DeviceSession.objects.filter(pk=registration.session_id).exists()


def test_counters_add_up(world):
    registration = register(world)
    nodes.session_counters_add(deltas={registration.session_id: (5, 2)})
    nodes.session_counters_add(deltas={registration.session_id: (1, 0)})
    session = DeviceSession.objects.get(pk=registration.session_id)
    assert (session.frames_relayed, session.frames_dropped) == (6, 2)


# --- ending ----------------------------------------------------------------------------------


def test_sessions_end_ends_only_live_sessions_and_returns_them(world):
    registration = register(world)
    assert sessions.sessions_end(device_ids=[world.device.pk], reason="test") == [registration.session_id]
    assert sessions.sessions_end(device_ids=[world.device.pk], reason="test") == []


def test_deleting_the_claiming_pos_ends_the_sessions_it_claimed(world, django_capture_on_commit_callbacks):
    registration = register(world)
    sessions.session_claim(caller=caller_of(world.pos), tsn=world.device.tsn)
    with django_capture_on_commit_callbacks(execute=True):
        account_services.pos_delete(pos=world.pos, actor=SYSTEM)
    session = DeviceSession.objects.get(pk=registration.session_id)
    assert (session.state, session.end_reason) == ("ended", "credential_deleted")


def test_rotating_the_secret_keeps_the_claim(world, django_capture_on_commit_callbacks):
    # Registered with another credential: a session registered with the rotated one ends
    # (tests/connector/test_authorisation_changes.py).
    registration = registrations.device_register(caller=caller_of(world.app), tsn=world.device.tsn, endpoints=["/"])
    sessions.session_claim(caller=caller_of(world.pos), tsn=world.device.tsn)
    with django_capture_on_commit_callbacks(execute=True):
        account_services.credential_rotate(obj=world.pos, actor=SYSTEM)
    session = DeviceSession.objects.get(pk=registration.session_id)
    assert (session.state, session.claimed_by_id) == ("registered", world.pos.application_id)


def test_an_application_losing_its_role_loses_its_claims(world, django_capture_on_commit_callbacks):
    registration = register(world)
    sessions.session_claim(caller=caller_of(world.app), tsn=world.device.tsn)
    with django_capture_on_commit_callbacks(execute=True):
        account_services.cloud_application_update(app=world.app, roles=[], actor=SYSTEM)
    session = DeviceSession.objects.get(pk=registration.session_id)
    assert (session.state, session.claimed_by_id) == ("registered", None)
    assert Application.objects.filter(pk=world.app.application_id).exists()


def test_a_pos_in_another_store_is_an_outsider_even_with_a_valid_token(world):
    caller = caller_of(make_pos(store=StoreFactory()))
    with pytest.raises(UnknownDevice):
        registrations.device_register(caller=caller, tsn=world.device.tsn, endpoints=["/"])
