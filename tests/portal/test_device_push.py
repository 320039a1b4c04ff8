"""The devices page's push socket (portal.consumers) through the project's ASGI application:
signed in by the session cookie, an allowed Origin, only devices in scope watched, only the
watched rows sent, rendered as the list renders them; bad input closed with 4400."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client
from django.utils import timezone

from accounts.models import User
from connector import groups
from connector.models import Device, DeviceSession
from portal.asgi import application
from portal.consumers import CLOSE_BAD_MESSAGE, CLOSE_NOT_SIGNED_IN, CLOSE_NOTHING_TO_SEE, MAX_WATCH
from tests.factories import PASSWORD, DeviceFactory

pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/ws/portal/devices/"
TIMEOUT = 5
# Long enough for a coalesced render to have been sent had it been due (portal.consumers
# waits 50 ms); a bound on how long "nothing arrives" is watched, not a timing asserted.
QUIET = 0.5


def cookie_of(user) -> str | None:
    if user is None:
        return None
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


@pytest.fixture(autouse=True)
def own_channel_layer(settings):
    """An in-memory channel layer of the test's own, also when REDIS_URL is set: the Redis
    layer is built for one long-lived event loop, and a task of it left at a test's end keeps
    pytest-asyncio's clean-up of the test's loop waiting (tests/connector/conftest.py,
    `fresh_state`). The Redis path is the browser test's (a real server process)."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


async def open_socket(user, *, origin: str | None = "http://testserver") -> WebsocketCommunicator:
    session = await sync_to_async(cookie_of)(user)
    headers = [(b"host", b"testserver")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if session is not None:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode()))
    comm = WebsocketCommunicator(application, PATH, headers=headers)
    comm.scope["client"] = ["192.0.2.10", 40000]
    comm.scope["server"] = ["127.0.0.1", 80]
    return comm


async def signed_in(user) -> WebsocketCommunicator:
    comm = await open_socket(user)
    connected, _ = await comm.connect(TIMEOUT)
    assert connected
    return comm


async def watch(comm: WebsocketCommunicator, ids: list[int], *, refresh: bool = False) -> list[int]:
    await comm.send_to(text_data=json.dumps({"watch": ids, "refresh": refresh}))
    answer = json.loads(await comm.receive_from(TIMEOUT))
    assert answer["type"] == "watching"
    return answer["devices"]


async def rows(comm: WebsocketCommunicator) -> dict[str, str]:
    answer = json.loads(await comm.receive_from(TIMEOUT))
    assert answer["type"] == "rows", answer
    return answer["rows"]


async def went_online(device: Device, *, event: str = "device_online") -> None:
    """What connector.history does when the terminal connects: the stored presence, then the
    event to the presence groups after commit."""

    def write() -> None:
        now = timezone.now()
        Device.objects.filter(pk=device.pk).update(online=True, online_since=now, offline_since=None)

    await sync_to_async(write)()
    await tell(device, event=event)


async def tell(device: Device, *, event: str) -> None:
    message = groups.pos_event_message(event=event, session_id="sess-push", tsn=device.tsn)
    for group in groups.presence_groups(
        store_id=device.store_id, merchant_id=device.merchant_id, ma_id=device.merchant.merchant_aggregator_id
    ):
        await get_channel_layer().group_send(group, message)


async def closed_with(comm: WebsocketCommunicator) -> int:
    message = await comm.receive_output(TIMEOUT)
    assert message["type"] == "websocket.close", message
    await hang_up(comm, message["code"])
    return message["code"]


async def hang_up(comm: WebsocketCommunicator, code: int) -> None:
    """The client's side of a close: the consumer then ends by itself, instead of being
    cancelled with the test's event loop (which waits on the channel layer's receive)."""
    await comm.send_input({"type": "websocket.disconnect", "code": code})
    await comm.wait(TIMEOUT)


async def refused(comm: WebsocketCommunicator) -> int | None:
    """The handshake is refused; the close code the consumer gave, if it gave one."""
    connected, code = await comm.connect(TIMEOUT)
    assert not connected
    await hang_up(comm, code or 1006)
    return code


# --- who may open it ---------------------------------------------------------------------------


async def test_it_refuses_a_visitor_who_is_not_signed_in():
    assert await refused(await open_socket(None)) == CLOSE_NOT_SIGNED_IN


async def test_it_refuses_a_page_of_another_site(world):
    await refused(await open_socket(world.merchant_admin, origin="https://evil.example"))
    await refused(await open_socket(world.merchant_admin, origin=None))


async def test_it_refuses_a_user_with_nothing_to_see(world):
    loner = await sync_to_async(User.objects.create_user)(username="loner", password=PASSWORD)  # no membership
    assert await refused(await open_socket(loner)) == CLOSE_NOTHING_TO_SEE


# --- what it watches ----------------------------------------------------------------------------


async def test_it_watches_only_the_devices_in_scope(world):
    comm = await signed_in(world.merchant_admin)
    watched = await watch(comm, [world.device.pk, world.other_device.pk, world.far_device.pk, 999999])
    assert watched == [world.device.pk]
    await comm.disconnect()


async def test_a_change_of_a_watched_device_arrives_as_its_rendered_row(world):
    comm = await signed_in(world.merchant_admin)
    await watch(comm, [world.device.pk])
    await went_online(world.device)
    sent = await rows(comm)
    assert list(sent) == [str(world.device.pk)]
    row = sent[str(world.device.pk)]
    assert row.startswith(f'<tr id="device-{world.device.pk}" data-connection="online"')
    assert world.device.tsn in row and "High Street" in row
    await comm.disconnect()


async def test_it_sends_nothing_about_a_device_in_scope_that_is_not_on_screen(world):
    sibling = await sync_to_async(DeviceFactory)(store=world.sibling_store, serial="PUSH-SIB-1")
    comm = await signed_in(world.merchant_admin)
    await watch(comm, [world.device.pk])
    await went_online(sibling)
    assert await comm.receive_nothing(QUIET)
    await comm.disconnect()


async def test_it_never_sends_about_a_device_outside_the_scope_even_when_asked_for(world):
    comm = await signed_in(world.merchant_admin)
    await watch(comm, [world.device.pk, world.other_device.pk])
    await went_online(world.other_device)
    assert await comm.receive_nothing(QUIET)
    await comm.disconnect()


async def test_watching_other_rows_stops_the_first_ones(world):
    comm = await signed_in(world.ma_admin)
    assert await watch(comm, [world.device.pk, world.other_device.pk]) == sorted(
        [world.device.pk, world.other_device.pk]
    )
    await went_online(world.other_device)
    assert list(await rows(comm)) == [str(world.other_device.pk)]
    await watch(comm, [world.device.pk])  # the next page
    await tell(world.other_device, event="device_offline")
    assert await comm.receive_nothing(QUIET)
    await went_online(world.device)
    assert list(await rows(comm)) == [str(world.device.pk)]
    await comm.disconnect()


async def test_an_aggregator_users_row_names_the_merchant(world):
    comm = await signed_in(world.ma_admin)
    await watch(comm, [world.other_device.pk])
    await went_online(world.other_device)
    assert "Rival Shop" in (await rows(comm))[str(world.other_device.pk)]
    await comm.disconnect()


async def test_a_claim_event_re_renders_the_row_with_its_holder(world):
    comm = await signed_in(world.merchant_admin)
    await watch(comm, [world.device.pk])

    def claim() -> None:
        now = timezone.now()
        Device.objects.filter(pk=world.device.pk).update(online=True, online_since=now)
        DeviceSession.objects.create(
            id="sess-push",
            device=world.device,
            state=DeviceSession.State.ONLINE,
            jwt_expires_at=now + timezone.timedelta(minutes=5),
            claimed_by=world.pos.application,
            claimed_at=now,
        )

    await sync_to_async(claim)()
    await tell(world.device, event="session_claimed")
    assert "by POS Till 1" in (await rows(comm))[str(world.device.pk)]
    await comm.disconnect()


async def test_a_refresh_sends_every_watched_row_at_once(world):
    sibling = await sync_to_async(DeviceFactory)(store=world.sibling_store, serial="PUSH-SIB-2")
    comm = await signed_in(world.merchant_viewer)
    await watch(comm, [world.device.pk, sibling.pk], refresh=True)
    assert set(await rows(comm)) == {str(world.device.pk), str(sibling.pk)}
    await comm.disconnect()


async def test_changes_close_together_are_sent_in_one_message(world):
    sibling = await sync_to_async(DeviceFactory)(store=world.sibling_store, serial="PUSH-SIB-3")
    comm = await signed_in(world.merchant_admin)
    await watch(comm, [world.device.pk, sibling.pk])
    await went_online(world.device)
    await went_online(sibling)
    first = await rows(comm)
    if len(first) == 1:  # a loaded machine may split them; both rows still arrive
        first.update(await rows(comm))
    assert set(first) == {str(world.device.pk), str(sibling.pk)}
    await comm.disconnect()


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("not json", "Messages are JSON text."),
        ('{"watch": "1,2"}', 'Send {"watch": [device ids]}.'),
        ("[1, 2]", 'Send {"watch": [device ids]}.'),
        ('{"watch": [1, "2"]}', "Device ids are positive integers."),
        ('{"watch": [true]}', "Device ids are positive integers."),
        ('{"watch": [-4]}', "Device ids are positive integers."),
        ('{"watch": [1], "refresh": "yes"}', '"refresh" is true or false.'),
        (json.dumps({"watch": list(range(1, MAX_WATCH + 2))}), f"Watch at most {MAX_WATCH} devices at a time."),
    ],
)
async def test_a_message_the_page_would_never_send_is_answered_and_closed(world, text, said):
    comm = await signed_in(world.merchant_admin)
    await comm.send_to(text_data=text)
    assert json.loads(await comm.receive_from(TIMEOUT)) == {"type": "error", "message": said}
    assert await closed_with(comm) == CLOSE_BAD_MESSAGE


async def test_a_deactivated_users_open_page_is_closed_at_its_next_update(world):
    """The session cookie is checked at connect only: a page left open must not outlive its
    user's access (found by review)."""
    comm = await signed_in(world.merchant_admin)
    await watch(comm, [world.device.pk])
    await sync_to_async(type(world.merchant_admin).objects.filter(pk=world.merchant_admin.pk).update)(is_active=False)
    await went_online(world.device)
    closed = await comm.receive_output(TIMEOUT)
    assert closed == {"type": "websocket.close", "code": 4401}
