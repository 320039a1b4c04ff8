"""connector.history: presence, the connection history and the recorded events, written in the
transactions of the facts (v1.1 §11, §16), driven through the services that make the facts."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from accounts.scope import SYSTEM
from connector import history, nodes, services, session_sockets, sessions
from connector.models import Device, DeviceConnection, DeviceSession, Event, SessionSocket
from tests.connector.test_sessions import attach_device, caller_of, register
from tests.factories import make_usable_device

pytestmark = [pytest.mark.django_db, pytest.mark.cloud_connector_on]


@pytest.fixture(autouse=True)
def history_of_the_test_only(world):
    """The world's set-up (activating Cloud Connector) is recorded too: forget it."""
    Event.objects.all().delete()


def events_of(device: Device) -> list[tuple[str, dict]]:
    """The device's events in `seq` order, which must count up by one."""
    rows = list(Event.objects.filter(device=device).order_by("seq"))
    assert [row.seq for row in rows] == list(range(rows[0].seq, rows[0].seq + len(rows))) if rows else True
    return [(event.type, event.data) for event in rows]


def presence(device: Device) -> dict:
    device.refresh_from_db()
    return {
        "online": device.online,
        "online_since": device.online_since,
        "offline_since": device.offline_since,
        "reason": device.last_disconnect_reason,
    }


def detach(registration, channel="dev-1", endpoint="/", reason="closed"):
    session_sockets.socket_detach(
        session_id=registration.session_id, side="device", endpoint=endpoint, channel_name=channel, reason=reason
    )


def test_online_and_offline_are_stored_on_the_device_with_their_events_and_period(world):
    registration = register(world)
    attach_device(registration)
    now = presence(world.device)
    assert now["online"] is True and now["online_since"] is not None and now["offline_since"] is None
    assert now["reason"] == ""
    period = DeviceConnection.objects.get(device=world.device)
    assert period.session_id == registration.session_id and period.disconnected_at is None
    detach(registration, reason="ping_timeout")
    after = presence(world.device)
    assert after["online"] is False and after["online_since"] is None
    assert after["offline_since"] >= now["online_since"] and after["reason"] == "ping_timeout"
    period.refresh_from_db()
    assert period.disconnected_at == after["offline_since"] and period.reason == "ping_timeout"
    tsn = world.device.tsn
    assert events_of(world.device) == [
        ("device.online", {"tsn": tsn}),
        ("device.offline", {"tsn": tsn, "reason": "ping_timeout"}),
    ]
    assert {event.session_id for event in Event.objects.filter(device=world.device)} == {registration.session_id}


def test_presence_survives_the_end_of_the_session(world):
    registration = register(world)
    attach_device(registration)
    detach(registration)
    sessions.sessions_end(session_ids=[registration.session_id], reason="device_gone")
    DeviceSession.objects.filter(pk=registration.session_id).delete()  # purged after retention
    kept = presence(world.device)
    assert kept["online"] is False and kept["offline_since"] is not None and kept["reason"] == "closed"
    assert DeviceConnection.objects.filter(device=world.device, reason="closed").count() == 1
    assert [kind for kind, _ in events_of(world.device)] == ["device.online", "device.offline", "session.ended"]
    assert events_of(world.device)[-1][1]["reason"] == "device_gone"


def test_an_end_while_online_takes_the_device_offline_for_the_end_or_the_revocation(world):
    registration = register(world)
    attach_device(registration)
    sessions.sessions_end(session_ids=[registration.session_id], reason="ended_by_operator")
    assert presence(world.device)["reason"] == "session_ended"
    again = register(world)
    attach_device(again, channel="dev-2")
    sessions.sessions_end(session_ids=[again.session_id], reason="credential_revoked")
    assert presence(world.device)["reason"] == "revoked" and presence(world.device)["online"] is False
    assert list(DeviceConnection.objects.filter(device=world.device).values_list("reason", flat=True)) == [
        "revoked",
        "session_ended",
    ]


def test_a_replaced_socket_is_recorded_without_going_offline(world):
    registration = register(world)
    attach_device(registration)
    attach_device(registration, channel="dev-2")
    assert presence(world.device)["online"] is True and presence(world.device)["reason"] == "replaced"
    assert events_of(world.device)[-1] == ("device.replaced", {"tsn": world.device.tsn, "endpoint": "/"})
    assert DeviceConnection.objects.filter(device=world.device).count() == 1


def test_a_socket_of_several_leaving_sets_only_the_reason(world):
    registration = register(world, endpoints=["/a", "/b"])
    attach_device(registration, "/a", "dev-a")
    attach_device(registration, "/b", "dev-b")
    detach(registration, channel="dev-a", endpoint="/a", reason="ping_timeout")
    assert presence(world.device)["online"] is True and presence(world.device)["reason"] == "ping_timeout"
    assert [kind for kind, _ in events_of(world.device)] == ["device.online"]


def test_claims_releases_and_takeovers_are_recorded_with_the_holders_names(world):
    registration = register(world)
    attach_device(registration)
    sessions.session_claim(caller=caller_of(world.pos), tsn=world.device.tsn)
    sessions.session_claim(caller=caller_of(world.app), tsn=world.device.tsn, force=True)
    sessions.session_release(caller=caller_of(world.app), session_id=registration.session_id)
    pos, app = f"POS {world.pos.name}", f"Application {world.app.name}"
    assert events_of(world.device)[1:] == [
        ("session.claimed", {"tsn": world.device.tsn, "claimed_by": pos}),
        ("session.taken_over", {"tsn": world.device.tsn, "claimed_by": app, "previous": pos}),
        ("session.released", {"tsn": world.device.tsn, "released_by": app}),
    ]
    # The online period keeps the last holder's name after a release.
    assert DeviceConnection.objects.get(device=world.device).claimed_by == app
    # A claim by the holder again is no new fact.
    sessions.session_claim(caller=caller_of(world.pos), tsn=world.device.tsn)
    sessions.session_claim(caller=caller_of(world.pos), tsn=world.device.tsn)
    assert [kind for kind, _ in events_of(world.device)].count("session.claimed") == 2


def test_a_device_coming_back_while_claimed_opens_a_period_with_the_holder(world):
    registration = register(world)
    attach_device(registration)
    sessions.session_claim(caller=caller_of(world.pos), tsn=world.device.tsn)
    detach(registration)
    again = register(world)
    attach_device(again, channel="dev-2")
    latest = DeviceConnection.objects.filter(device=world.device).first()
    assert latest.disconnected_at is None and latest.claimed_by == f"POS {world.pos.name}"
    assert DeviceConnection.objects.filter(device=world.device).count() == 2


def test_a_dead_node_and_a_shutdown_take_their_devices_offline_with_their_reasons(world):
    other = make_usable_device(store=world.store)
    registration = register(world)
    attach_device(registration, node="node-dead")
    second = register(world, device=other)
    attach_device(second, channel="dev-9", node="node-leaving")
    SessionSocket.objects.filter(node="node-dead").update(connected_at=timezone.now() - timedelta(minutes=5))
    nodes.sessions_sweep()
    assert presence(world.device)["reason"] == "node_lost" and presence(world.device)["online"] is False
    nodes.node_forget(node="node-leaving")
    assert presence(other)["reason"] == "server_shutdown" and presence(other)["online"] is False


def test_frames_are_counted_on_the_latest_period_of_the_session(world):
    registration = register(world)
    attach_device(registration)
    nodes.session_counters_add(deltas={registration.session_id: (5, 2)})
    detach(registration)
    nodes.session_counters_add(deltas={registration.session_id: (1, 0)})  # flushed after it left
    period = DeviceConnection.objects.get(device=world.device)
    assert (period.frames_relayed, period.frames_dropped) == (6, 2)


def test_last_seen_is_written_for_online_devices_only(world):
    registration = register(world)
    attach_device(registration)
    offline = make_usable_device(store=world.store)
    later = timezone.now() + timedelta(seconds=20)
    assert history.seen_write(device_ids=[world.device.pk, offline.pk], now=later) == 1
    world.device.refresh_from_db()
    offline.refresh_from_db()
    assert world.device.last_seen_at == later and offline.last_seen_at is None


def test_activation_changes_are_recorded_per_device_whose_use_changed(world):
    other = make_usable_device(store=world.store)
    assert events_of(other) == [("device.activation_changed", {"tsn": other.tsn, "active": True})]
    Event.objects.all().delete()
    services.service_deactivate(obj=world.merchant, actor=SYSTEM)
    assert {
        (event.device_id, event.data["active"]) for event in Event.objects.filter(type="device.activation_changed")
    } == {
        (world.device.pk, False),
        (other.pk, False),
    }
    services.service_activate(obj=world.merchant, actor=SYSTEM)
    services.device_set_enabled(device=other, enabled=False, actor=SYSTEM)
    assert [data["active"] for _, data in events_of(other)] == [False, True, False]
    # A change that changes nothing for a device (already active) records nothing for it.
    services.service_activate(obj=world.ma, actor=SYSTEM)
    assert len(events_of(world.device)) == 2


def test_nothing_is_recorded_when_the_fact_rolls_back(world):
    registration = register(world)
    seq = Device.objects.get(pk=world.device.pk).event_seq
    with pytest.raises(RuntimeError), transaction.atomic():
        attach_device(registration)
        raise RuntimeError("rolled back")
    assert not Event.objects.exists() and not DeviceConnection.objects.exists()
    world.device.refresh_from_db()
    assert world.device.online is False and world.device.event_seq == seq


def test_saving_an_edited_device_does_not_write_its_presence_back(world):
    stale = Device.objects.get(pk=world.device.pk)
    registration = register(world)
    attach_device(registration)
    seq = Device.objects.get(pk=world.device.pk).event_seq
    stale.model = "Lane5000"
    stale.save()  # an admin form loaded before the terminal connected
    fresh = Device.objects.get(pk=world.device.pk)
    assert fresh.model == "Lane5000" and fresh.online is True and fresh.event_seq == seq > stale.event_seq


@pytest.mark.django_db(transaction=True)
async def test_each_device_heard_is_written_at_most_every_other_round(world, monkeypatch):
    """write_last_seen: a socket heard again the next round waits one round (its flag kept);
    one not heard is not written; the database gets one statement per round."""
    from types import SimpleNamespace

    from asgiref.sync import sync_to_async

    from connector.relay import housekeeping
    from connector.relay.registry import registry

    registration = await sync_to_async(register)(world)
    await sync_to_async(attach_device)(registration)
    clock = {"now": 1000.0}
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "time", lambda: clock["now"])
    sock = SimpleNamespace(channel_name="seen-test!1", heard=True, device_id=world.device.pk)
    quiet = SimpleNamespace(channel_name="seen-test!2", heard=False, device_id=world.device.pk + 1000)
    registry.add(sock)
    registry.add(quiet)
    try:
        assert await housekeeping.write_last_seen(interval=10) == 1
        sock.heard = True
        clock["now"] += 10
        assert await housekeeping.write_last_seen(interval=10) == 0  # written last round
        assert sock.heard is True
        clock["now"] += 10
        assert await housekeeping.write_last_seen(interval=10) == 1
        assert sock.heard is False
        clock["now"] += 20
        assert await housekeeping.write_last_seen(interval=10) == 0  # nothing heard since
    finally:
        registry.remove(sock)
        registry.remove(quiet)


def test_claims_are_told_to_the_portal_pages_of_the_devices_merchant_only(world, monkeypatch):
    told = []
    monkeypatch.setattr(history.groups, "send_after_commit", lambda group, message: told.append((group, message)))
    registration = register(world)
    attach_device(registration)
    sessions.session_claim(caller=caller_of(world.pos), tsn=world.device.tsn)
    sessions.session_release(caller=caller_of(world.pos), session_id=registration.session_id)
    told = [(group, message) for group, message in told if group.startswith("cc.presence.")]
    assert [(group, message["event"]) for group, message in told] == [
        (f"cc.presence.merchant.{world.merchant.pk}", "session_claimed"),
        (f"cc.presence.merchant.{world.merchant.pk}", "session_released"),
    ]
    claimed = Event.objects.get(device=world.device, type="session.claimed")
    assert told[0][1]["event_id"] == str(claimed.id) and told[0][1]["tsn"] == world.device.tsn
