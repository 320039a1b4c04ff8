"""The admin's fleet page (connector.fleet, connector.fleet_admin): the workers from their
heartbeats, sessions by state, and the top refusal reasons of the last hour, from rows made
here; and the snapshot and refusal flush that feed it, from the same sources as /metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from accounts.metrics import RefusalLog
from connector import fleet, metrics
from connector.models import DeviceSession, NodeHeartbeat, RefusalTally
from tests.factories import DeviceFactory, MerchantFactory, make_pos, make_user

pytestmark = pytest.mark.django_db

FLEET = "/admin/connector/fleet/"


@pytest.fixture
def sources():
    # The relay's registry registers its sources at import: put them back after the test's own.
    registered = {name: metrics._sources[name] for name in metrics.SOURCES if name in metrics._sources}
    for name in metrics.SOURCES:
        metrics.unregister_source(name)
    yield
    for name in metrics.SOURCES:
        metrics.unregister_source(name)
    for name, read in registered.items():
        metrics.register_source(name, read)


@pytest.fixture
def superuser_client(client):
    user = make_user(username="root", is_staff=True)
    user.is_superuser = True
    user.save()
    client.force_login(user)
    return client


def snapshot(**sockets: int) -> dict:
    return {"sockets": sockets, "sessions_held": sockets.get("device", 0), "frames_relayed": 1234}


def a_fleet(now: datetime) -> None:
    NodeHeartbeat.objects.create(
        node="web-1:101:aaaa",
        seen_at=now - timedelta(seconds=2),
        snapshot=snapshot(device=7, session=5, pos_listener=2, device_listener=1),
    )
    NodeHeartbeat.objects.create(
        node="web-2:202:bbbb", seen_at=now - timedelta(seconds=4), snapshot=snapshot(device=3, session=1)
    )
    NodeHeartbeat.objects.create(
        node="web-3:303:cccc", seen_at=now - timedelta(minutes=5), snapshot=snapshot(device=50)
    )
    pos = make_pos()
    for number, state in enumerate(["registered", "online", "online", "offline", "ended"]):
        DeviceSession.objects.create(
            id=f"fleet-{number}",
            device=DeviceFactory(),
            state=state,
            jwt_expires_at=now + timedelta(minutes=5),
            claimed_by=pos.application if state == "online" else None,
        )
    minute = now.replace(second=0, microsecond=0)
    tallies = [
        ("web-1:101:aaaa", minute, "registration:invalid_client", 9),
        ("web-2:202:bbbb", minute - timedelta(minutes=10), "registration:invalid_client", 4),
        ("web-3:303:cccc", minute - timedelta(minutes=30), "claim:device_offline", 6),  # a worker since gone
        ("web-1:101:aaaa", minute - timedelta(minutes=20), "session_socket:4401", 2),
        ("web-1:101:aaaa", minute - timedelta(minutes=90), "token_request:invalid_client", 500),  # too old
    ]
    for node, at, reason, count in tallies:
        RefusalTally.objects.create(node=node, minute=at, reason=reason, count=count)


def test_the_overview_adds_up_live_workers_sessions_and_the_last_hours_refusals():
    now = timezone.now()
    a_fleet(now)
    overview = fleet.fleet_overview(now=now)
    assert [(worker.node, worker.alive) for worker in overview.workers] == [
        ("web-1:101:aaaa", True),
        ("web-2:202:bbbb", True),
        ("web-3:303:cccc", False),
    ]
    assert overview.sockets == {"device_listener": 1, "device": 10, "pos_listener": 2, "session": 6}  # live ones only
    assert overview.sessions_held == 10
    assert overview.figures.sessions == {"registered": 1, "online": 2, "offline": 1}
    assert overview.figures.claims_held == 2
    assert overview.figures.nodes_alive == 2
    assert [(refusal.reason, refusal.count) for refusal in overview.refusals] == [
        ("registration:invalid_client", 13),
        ("claim:device_offline", 6),
        ("session_socket:4401", 2),
    ]
    assert overview.refusals_total == 21


def test_a_superuser_sees_the_fleet_page(superuser_client):
    now = timezone.now()
    a_fleet(now)
    response = superuser_client.get(FLEET)
    assert response.status_code == 200
    page = response.content.decode()
    for text in ("web-1:101:aaaa", "web-2:202:bbbb", "web-3:303:cccc", "silent", "registration:invalid_client"):
        assert text in page
    assert "token_request:invalid_client" not in page  # older than an hour
    assert response.context["overview"].refusals_total == 21
    index = superuser_client.get(reverse("admin:index")).content.decode()
    assert FLEET in index  # listed in the admin's index


def test_staff_with_the_view_fleet_permission_see_it_and_staff_without_do_not(client):
    ops = make_user(username="ops", is_staff=True)
    ops.is_superuser = False  # accounts.services makes staff superusers; this one is given rights one by one
    ops.save()
    client.force_login(ops)
    assert client.get(FLEET).status_code == 403
    ops.user_permissions.add(Permission.objects.get(codename="view_fleet", content_type__app_label="connector"))
    ops = type(ops).objects.get(pk=ops.pk)  # permissions are cached on the instance
    client.force_login(ops)
    assert client.get(FLEET).status_code == 200


def test_a_merchant_user_and_an_anonymous_visitor_are_sent_to_the_admins_sign_in(client):
    anonymous = client.get(FLEET)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/admin/login/")
    client.force_login(make_user(username="boss", merchant=MerchantFactory()))
    member = client.get(FLEET)
    assert member.status_code == 302 and member["Location"].startswith("/admin/login/")


def test_nothing_can_be_added_changed_or_deleted_from_the_fleet_page(superuser_client):
    NodeHeartbeat.objects.create(node="web-1:1:a", seen_at=timezone.now())
    assert superuser_client.get(reverse("admin:connector_fleet_add")).status_code == 403
    delete = reverse("admin:connector_fleet_delete", args=["web-1:1:a"])
    assert superuser_client.post(delete, {"post": "yes"}).status_code == 403
    assert NodeHeartbeat.objects.filter(node="web-1:1:a").exists()


def test_a_worker_with_a_malformed_snapshot_counts_as_zero():
    NodeHeartbeat.objects.create(node="old", seen_at=timezone.now(), snapshot=["not", "a", "dict"])
    NodeHeartbeat.objects.create(node="odd", seen_at=timezone.now(), snapshot={"sockets": {"device": "many"}})
    overview = fleet.fleet_overview()
    assert overview.sockets == dict.fromkeys(metrics.KINDS, 0)


def test_the_snapshot_reads_the_same_sources_as_the_metrics(sources):
    metrics.register_source("sockets_open", lambda: {"device": 4, "session": 2})
    metrics.register_source("sessions_held", lambda: 3)
    taken = fleet.node_snapshot()
    assert taken["sockets"] == {"device_listener": 0, "device": 4, "pos_listener": 0, "session": 2}
    assert taken["sessions_held"] == 3
    assert taken["frames_relayed"] == metrics.frames.to_device + metrics.frames.to_pos
    assert taken["redis_unreachable"] is False
    assert {"pid", "started_at"} <= set(taken)


def test_a_snapshot_without_sources_says_nothing_rather_than_zero_sockets(sources):
    assert fleet.node_snapshot()["sockets"] == {}


def test_the_refusal_flush_writes_absolute_counts_once_per_change_and_forgets_old_rows():
    log = RefusalLog()
    now = datetime(2026, 12, 2, 10, 30, 20, tzinfo=UTC)
    log.add("registration:invalid_client", now=now.timestamp())
    log.add("registration:invalid_client", now=now.timestamp())
    RefusalTally.objects.create(node="n", minute=now - timedelta(hours=3), reason="claim:device_offline", count=1)
    assert fleet.refusals_flush(node="n", log=log, now=now) == 1
    assert fleet.refusals_flush(node="n", log=log, now=now) == 0  # nothing changed
    log.add("registration:invalid_client", now=now.timestamp())
    assert fleet.refusals_flush(node="n", log=log, now=now) == 1
    [row] = RefusalTally.objects.all()
    assert (row.node, row.minute, row.reason, row.count) == (
        "n",
        datetime(2026, 12, 2, 10, 30, tzinfo=UTC),
        "registration:invalid_client",
        3,
    )


def test_refusals_recorded_by_the_operations_reach_the_page_through_the_flush(superuser_client, monkeypatch):
    log = RefusalLog()
    monkeypatch.setattr("accounts.metrics.refusals", log)
    metrics.claims.record(outcome="session_claimed")
    metrics.socket_refused(kind="device", code=4401)
    fleet.refusals_flush(node="this-worker", log=log)
    page = superuser_client.get(FLEET).content.decode()
    assert "claim:session_claimed" in page and "device_socket:4401" in page
