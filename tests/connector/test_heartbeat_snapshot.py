"""The relay's heartbeat carries this worker's snapshot (its metric sources) and its refusals
to the database, where the admin's fleet page reads them; the sweep counts the workers it
presumed dead (connector.relay.housekeeping, connector.fleet, connector.nodes)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from accounts import metrics as account_metrics
from connector import fleet, nodes
from connector.models import NodeHeartbeat
from connector.relay import housekeeping
from connector.relay.registry import NODE, registry

pytestmark = pytest.mark.django_db(transaction=True)


class AttachedSocket:
    """What the registry's sources read from a consumer."""

    kind = "device"
    attached = True
    closed = False

    def __init__(self, channel_name: str, session_id: str) -> None:
        self.channel_name = channel_name
        self.session_id = session_id


def heartbeats(outcome: str) -> float:
    return account_metrics.REGISTRY.get_sample_value("cloud_connector_node_heartbeats_total", {"outcome": outcome})


async def test_the_heartbeat_writes_the_workers_snapshot_and_the_fleet_page_shows_it():
    sockets = [AttachedSocket("test.heartbeat!a", "session-a"), AttachedSocket("test.heartbeat!b", "session-a")]
    for sock in sockets:
        registry.add(sock)
    account_metrics.refusals.add("claim:device_not_found")
    beats = heartbeats("ok")
    try:
        expected_sockets, expected_sessions = registry.sockets_open(), registry.sessions_held()
        assert expected_sockets["device"] >= 2 and expected_sessions >= 1
        await housekeeping._heartbeat()
    finally:
        for sock in sockets:
            registry.remove(sock)

    row = await NodeHeartbeat.objects.aget(node=NODE)
    assert row.snapshot["sockets"] == expected_sockets
    assert row.snapshot["sessions_held"] == expected_sessions
    assert heartbeats("ok") == beats + 1
    overview = await sync_to_async(fleet.fleet_overview)()
    worker = next(worker for worker in overview.workers if worker.node == NODE)
    assert worker.alive
    assert worker.sockets == expected_sockets and worker.sessions_held == expected_sessions
    assert overview.sockets["device"] >= 2
    assert "claim:device_not_found" in [refusal.reason for refusal in overview.refusals]


async def test_a_heartbeat_that_cannot_be_written_is_counted_as_failed(monkeypatch):
    def unwritable(**kwargs):
        raise RuntimeError("database gone")

    monkeypatch.setattr(nodes, "node_heartbeat", unwritable)
    failed = heartbeats("failed")
    with pytest.raises(RuntimeError):
        await housekeeping._heartbeat()
    assert heartbeats("failed") == failed + 1


def test_the_sweep_counts_the_workers_it_presumed_dead():
    long_ago = timezone.now() - timedelta(minutes=5)
    nodes.node_heartbeat(node="silent-a", now=long_ago)
    nodes.node_heartbeat(node="silent-b", now=long_ago)
    nodes.node_heartbeat(node="alive", snapshot={"sessions_held": 3})
    assert nodes.sessions_sweep().nodes_dead == 2
    # Only this test's rows are looked at: this test process's own node, and a server process
    # an earlier live test started, may beat meanwhile (neither is one of this test's workers).
    mine = {"silent-a", "silent-b", "alive"}
    assert set(NodeHeartbeat.objects.filter(node__in=mine).values_list("node", flat=True)) == {"alive"}
    assert NodeHeartbeat.objects.get(node="alive").snapshot == {"sessions_held": 3}
