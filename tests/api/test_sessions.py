"""sessions/: live and recently ended device sessions in scope; DELETE ends one."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import AuditEntry
from connector.models import DeviceSession
from tests.api.conftest import API, make_session
from tests.world import World

pytestmark = pytest.mark.django_db

State = DeviceSession.State


def test_it_lists_live_and_recently_ended_sessions_in_scope(world: World, provisioning):
    online = make_session(world.device, claimed_by=world.pos.application, frames_relayed=12, frames_dropped=1)
    registered = make_session(world.other_device, state=State.REGISTERED)
    recent = make_session(world.sister_device, state=State.ENDED, ended_at=timezone.now() - timedelta(minutes=5))
    make_session(world.sister_device, state=State.ENDED, ended_at=timezone.now() - timedelta(days=2))
    make_session(world.far_device)

    results = provisioning.get(f"{API}/sessions/").json()["results"]
    assert {s["id"] for s in results} == {online.pk, registered.pk, recent.pk}
    shown = next(s for s in results if s["id"] == online.pk)
    assert shown["tsn"] == world.device.tsn
    assert shown["state"] == "online"
    assert shown["claimed_by"] == world.pos.application.client_id
    assert shown["endpoints"] == ["/upp/v1/transaction"]
    assert shown["frames_relayed"] == 12
    assert shown["frames_dropped"] == 1
    assert shown["created_at"]
    assert next(s for s in results if s["id"] == registered.pk)["claimed_by"] is None


def test_a_merchant_user_sees_only_its_merchants_sessions(world: World, merchant_admin):
    mine = make_session(world.device)
    make_session(world.other_device)
    results = merchant_admin.get(f"{API}/sessions/").json()["results"]
    assert [s["id"] for s in results] == [mine.pk]


def test_sessions_can_be_filtered_by_state_and_tsn(world: World, provisioning):
    online = make_session(world.device)
    registered = make_session(world.other_device, state=State.REGISTERED)

    def ids(**params):
        response = provisioning.get(f"{API}/sessions/", params)
        assert response.status_code == 200, response.json()
        return {s["id"] for s in response.json()["results"]}

    assert ids(state="online") == {online.pk}
    assert ids(state="registered") == {registered.pk}
    assert ids(tsn=world.device.tsn.upper()) == {online.pk}
    assert ids(tsn=world.other_device.serial.lower()) == {registered.pk}
    assert ids(tsn="nothing-like-it") == set()
    bad = provisioning.get(f"{API}/sessions/", {"state": "sleeping"})
    assert bad.status_code == 400
    assert "state" in bad.json()


def test_deleting_a_session_ends_it_and_is_audited(world: World, merchant_admin):
    session = make_session(world.device, claimed_by=world.pos.application)
    response = merchant_admin.delete(f"{API}/sessions/{session.pk}/")
    assert response.status_code == 204
    session.refresh_from_db()
    assert session.state == State.ENDED
    assert session.end_reason == "ended_by_operator"
    assert session.ended_at is not None
    entry = AuditEntry.objects.get(action="device.session_end")
    assert entry.object_id == str(world.device.pk)
    assert entry.data == {"session_id": session.pk}
    assert entry.actor == "user:alice"

    shown = merchant_admin.get(f"{API}/sessions/{session.pk}/").json()
    assert shown["state"] == "ended"
    assert shown["end_reason"] == "ended_by_operator"


def test_deleting_an_ended_session_is_a_conflict(world: World, provisioning):
    session = make_session(world.device, state=State.ENDED, ended_at=timezone.now())
    response = provisioning.delete(f"{API}/sessions/{session.pk}/")
    assert response.status_code == 409
    assert response.json() == {"detail": "The session has already ended."}


def test_an_unknown_or_malformed_session_id_is_a_404(world: World, provisioning):
    for session_id in ("does-not-exist", "x" * 65, "bad%20id", "a.b"):
        response = provisioning.delete(f"{API}/sessions/{session_id}/")
        assert response.status_code == 404, session_id
        assert "detail" in response.json()
