"""Per-credential socket quotas: pos-listener sockets (CC_MAX_LISTENERS_PER_CREDENTIAL, per
process) and POS session sockets (CC_MAX_SESSION_SOCKETS_PER_CREDENTIAL, across the
deployment). Past them a new socket is accepted and closed with 4429."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from connector.models import DeviceSession, SessionSocket
from connector.relay.registry import registry
from tests.connector.relay_world import (
    Listener,
    communicator,
    device_socket,
    expect_close,
    hang_up,
    local_path,
    refused_with,
    register,
    session_socket,
)
from tests.factories import make_usable_device

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.cloud_connector_on,
    pytest.mark.usefixtures("fresh_state"),
]

POS_LISTENER = "/cloud-connector/v1/pos-listener"
RATE_LIMITED = 4429


def limits(settings, **values: int) -> None:
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, **values}


async def claimed_session(world, endpoints: list[str]):
    registration = await register(world.device.tsn, world.pos_credentials, endpoints=endpoints)
    devices = [await device_socket(registration, endpoint) for endpoint in endpoints]
    listener = await Listener.open(world.pos_token)
    claim = await listener.claim(world.device.tsn)
    assert claim["status"] == "ok", claim
    return devices, listener, claim


async def test_a_listener_past_the_credentials_quota_is_closed_with_4429_until_one_closes(settings, world):
    limits(settings, MAX_LISTENERS_PER_CREDENTIAL=2)
    first = await Listener.open(world.pos_token)
    second = await Listener.open(world.pos_token)
    await refused_with(communicator(POS_LISTENER, token=world.pos_token), RATE_LIMITED)

    # Another credential has a quota of its own, and a closed listener frees its place.
    neighbour = await Listener.open(world.neighbour_token)
    await first.close()
    third = await Listener.open(world.pos_token)
    assert (await third.ask({"action": "devices"}))["status"] == "ok"
    for listener in (second, third, neighbour):
        await listener.close()
    assert world.pos.application_id not in registry.listeners  # forgotten once all closed


async def test_a_listener_refused_for_its_token_does_not_count_against_the_quota(settings, world):
    limits(settings, MAX_LISTENERS_PER_CREDENTIAL=1)
    await refused_with(communicator(POS_LISTENER, token="not-a-token"), 4401)
    listener = await Listener.open(world.pos_token)
    await refused_with(communicator(POS_LISTENER, token=world.pos_token), RATE_LIMITED)
    await listener.close()


async def test_a_session_socket_past_the_credentials_quota_is_closed_with_4429_until_one_closes(settings, world):
    limits(settings, MAX_SESSION_SOCKETS_PER_CREDENTIAL=2)
    devices, listener, claim = await claimed_session(world, ["/a", "/b", "/c"])
    a = await session_socket(claim, world.pos_token, "/a")
    b = await session_socket(claim, world.pos_token, "/b")
    third = communicator(local_path(claim["session_url"] + "/c"), token=world.pos_token)
    await refused_with(third, RATE_LIMITED)

    # Replacing one of its own sockets takes no new place: the old one closes with 4409.
    again = await session_socket(claim, world.pos_token, "/a")
    await expect_close(a, 4409)
    await hang_up(b)
    c = await session_socket(claim, world.pos_token, "/c")
    await c.send_to(text_data="to /c")
    assert await devices[2].receive_from(5) == "to /c"
    for comm in (again, c, *devices):
        await hang_up(comm)
    await listener.close()


async def test_session_sockets_held_on_other_processes_count_against_the_quota(settings, world):
    limits(settings, MAX_SESSION_SOCKETS_PER_CREDENTIAL=1)
    devices, listener, claim = await claimed_session(world, ["/"])

    @database_sync_to_async
    def a_socket_elsewhere() -> None:
        # A POS session socket of the same credential on another session, held by another
        # serving process: only its row is here.
        other = make_usable_device(store=world.device.store)
        session = DeviceSession.objects.create(
            id="elsewhere-session-0000000000", device=other, endpoints=["/"], jwt_expires_at=timezone.now()
        )
        SessionSocket.objects.create(
            session=session,
            side="pos",
            endpoint="/",
            channel_name="specific.other!x",
            node="another-node",
            application_id=world.pos.application_id,
            connected_at=timezone.now(),
        )

    await a_socket_elsewhere()
    await refused_with(communicator(local_path(claim["session_url"]), token=world.pos_token), RATE_LIMITED)
    await database_sync_to_async(SessionSocket.objects.filter(node="another-node").delete)()
    pos = await session_socket(claim, world.pos_token)
    for comm in (pos, *devices):
        await hang_up(comm)
    await listener.close()
