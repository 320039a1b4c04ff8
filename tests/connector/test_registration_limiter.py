"""The limit on failed registrations (connector/limiter.py): only
credential failures count, per client id and address; a correct secret is not refused
because another terminal behind the same address failed; a higher bound per address stops
spraying client ids; a 429 says when to retry."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from websockets.asyncio.client import connect

from connector import callers, limiter
from tests.connector.relay_world import communicator, expect_close, opened, request
from tests.factories import DeviceFactory, make_pos, make_usable_device
from tests.live import run_bounded, start_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cloud_connector_on]

NAT = ("203.0.113.40", 50000)  # one shop's public address, shared by its terminals
ELSEWHERE = ("198.51.100.41", 50000)


@pytest.fixture(autouse=True)
def limiter_state(settings):
    """A cache of the test's own (clearing a shared Redis would flush the channel layer's
    database), an in-memory layer, and a day's window: windows are aligned on the clock,
    and one must not close mid-test."""
    from django.core.cache import cache

    settings.DEBUG = True
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "limiter"}}
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.CLOUD_CONNECTOR = {
        **settings.CLOUD_CONNECTOR,
        "FAILED_REGISTRATION_LIMIT": 2,
        "FAILED_REGISTRATION_ADDRESS_LIMIT": 50,
        "FAILED_REGISTRATION_WINDOW": 86400,
    }
    channel_layers.backends.clear()
    cache.clear()
    yield
    cache.clear()
    channel_layers.backends.clear()


def limits(settings, **values: int) -> None:
    settings.CLOUD_CONNECTOR = {**settings.CLOUD_CONNECTOR, **values}


async def answer(resource: dict, *, client=NAT, token: str | None = None) -> dict:
    comm = communicator("/cloud-connector/v1/device-listener", client=client, token=token)
    await opened(comm)
    await comm.send_to(text_data=request(resource))
    reply = json.loads(await comm.receive_from(5))
    await expect_close(comm, 1000)
    return reply["response"]["resource"]


def with_client(tsn: str, client_id: str, secret: str) -> dict:
    return {"tsn": tsn, "custom_registration_data": {"client_id": client_id, "client_secret": secret}}


def wrong(world, pos=None) -> dict:
    pos = pos or world.pos
    return with_client(world.device.tsn, pos.application.client_id, "not-the-secret")


def right(world, pos=None) -> dict:
    pos = pos or world.pos
    return with_client(world.device.tsn, pos.application.client_id, pos.client_secret)


async def test_refusals_for_valid_credentials_do_not_count(world):
    await database_sync_to_async(DeviceFactory)(store=world.store, make="Verifone", model="P400", serial="SAME1")
    await database_sync_to_async(DeviceFactory)(store=world.store, make="Castles", model="S1F2", serial="SAME1")
    for tsn in ["Nope-Nope-404", "Nope-Nope-404", "SAME1", "SAME1", "Nope-Nope-404"]:
        resource = await answer(with_client(tsn, world.pos.application.client_id, world.pos.client_secret))
        assert resource["error"] in ("unknown_device", "ambiguous_tsn"), resource
    assert (await answer(right(world)))["status"] == "ok"


async def test_a_client_id_that_keeps_failing_is_limited_and_told_when_to_retry(world):
    for _ in range(2):
        assert (await answer(wrong(world)))["error"] == "invalid_client"
    limited = await answer(right(world))  # the right secret too: the lock is the client id's
    assert (limited["status_code"], limited["error"]) == (429, "rate_limited")
    assert isinstance(limited["retry_after"], int) and 0 < limited["retry_after"] <= 86400
    assert (await answer(right(world), client=ELSEWHERE))["status"] == "ok"


async def test_another_terminal_behind_the_same_address_still_registers(world):
    # Its secret was never checked before: it is refused for nobody else's failures.
    for _ in range(5):
        resource = await answer(wrong(world))
        assert resource["error"] in ("invalid_client", "rate_limited")
    assert (await answer(right(world, world.app)))["status"] == "ok"


async def test_an_address_spraying_client_ids_is_bounded_but_verified_clients_still_register(world, settings):
    limits(settings, FAILED_REGISTRATION_ADDRESS_LIMIT=3)
    assert (await answer(right(world)))["status"] == "ok"  # the shop's terminal, verified from here
    callers._secret_cache.clear()  # as on another server process: only the shared mark is left
    for number in range(3):
        resource = await answer(with_client(world.device.tsn, f"sprayed-{number}", "guess"))
        assert resource["error"] == "invalid_client"
    sprayed = await answer(with_client(world.device.tsn, "sprayed-3", "guess"))
    assert (sprayed["status_code"], sprayed["error"]) == (429, "rate_limited") and sprayed["retry_after"] > 0
    assert (await answer(right(world)))["status"] == "ok"
    assert (await answer({"tsn": world.device.tsn}, token=world.app_token))["status"] == "ok"
    never_verified_here = await answer(right(world, world.app))
    assert never_verified_here["error"] == "rate_limited"


async def test_token_failures_count_against_the_address_and_a_valid_token_still_registers(world, settings):
    limits(settings, FAILED_REGISTRATION_ADDRESS_LIMIT=2)
    for _ in range(2):
        assert (await answer({"tsn": world.device.tsn}, token="forged"))["error"] == "invalid_client"
    limited = await answer({"tsn": world.device.tsn}, token="forged")
    assert (limited["error"], limited["retry_after"] > 0) == ("rate_limited", True)
    assert (await answer({"tsn": world.device.tsn}, token=world.pos_token))["status"] == "ok"


async def test_a_malformed_registration_does_not_count(world, settings):
    limits(settings, FAILED_REGISTRATION_ADDRESS_LIMIT=1, FAILED_REGISTRATION_LIMIT=1)
    for _ in range(3):
        assert (await answer({"endpoints": ["/"]}))["error"] == "invalid_request"
    assert (await answer(right(world)))["status"] == "ok"


def test_the_counters_are_kept_per_client_id_and_address(settings):
    assert limiter.registration_failed(address="192.0.2.7", client_id="a") is None
    assert limiter.registration_failed(address="192.0.2.7", client_id="a") is None
    limited = limiter.registration_limited(address="192.0.2.7", client_id="a")
    assert limited.client is not None and limited.address is None
    assert limiter.registration_limited(address="192.0.2.7", client_id="b") == limiter.RegistrationLimits(None, None)
    assert limiter.registration_limited(address="192.0.2.8", client_id="a") == limiter.RegistrationLimits(None, None)
    assert limiter.registration_failed(address="192.0.2.7", client_id="a") == limited.client


# --- against a real server ----------------------------------------------------------------


@pytest.mark.live
def test_behind_one_nat_a_failing_terminal_does_not_take_the_shop_offline(tmp_path):
    """Client A fails from 127.0.0.1 until it is limited; client B, same address, right
    secret, registers; A is refused even with its right secret, and told when to retry."""
    device = make_usable_device()
    terminal_a, terminal_b = make_pos(store=device.store, name="Till A"), make_pos(store=device.store, name="Till B")
    server = start_server(
        tmp_path,
        CC_FAILED_REGISTRATION_LIMIT="3",
        CC_FAILED_REGISTRATION_WINDOW="86400",
        # Other live tests' failures from 127.0.0.1 may share this server's Redis: the
        # address's own bound is not what this test is about.
        CC_FAILED_REGISTRATION_ADDRESS_LIMIT="1000000",
    )

    async def register(pos, secret: str) -> dict:
        data = {"client_id": pos.application.client_id, "client_secret": secret}
        async with connect(f"{server.ws_url}/cloud-connector/v1/device-listener") as ws:
            await ws.send(request({"tsn": device.tsn, "custom_registration_data": data}))
            return json.loads(await asyncio.wait_for(ws.recv(), 30))["response"]["resource"]

    async def scenario() -> None:
        for _ in range(3):
            assert (await register(terminal_a, "wrong"))["error"] == "invalid_client"
        assert (await register(terminal_b, terminal_b.client_secret))["status"] == "ok"
        limited = await register(terminal_a, terminal_a.client_secret)
        assert (limited["status_code"], limited["error"]) == (429, "rate_limited")
        assert 0 < limited["retry_after"] <= 86400

    try:
        run_bounded(scenario(), timeout=90)
    finally:
        server.stop()
        print(server.log()[-3000:])
