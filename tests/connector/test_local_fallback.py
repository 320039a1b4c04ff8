"""Local-network fallback (v1.1 §14): a registration's `local_url` validated (400
invalid_request for anything but ws/wss on a private, link-local or loopback address or a
.local name), stored, answered by `claim` and `devices`; and the client library's failover
session against a live server: the cloud server stopped entirely, the session carries on
with the simulated terminal's local server on 127.0.0.1, and comes back to the cloud when the
server is started again. The same with the two commands, `simulate_device --local-port` and
`pos_client --fallback`, as two shells would run them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from connector import protocol
from connector.clients import FailoverSession, NoPath, SimulatedTerminal, echo
from connector.models import DeviceSession
from tests.connector.relay_world import Listener, communicator, expect_close, opened, request
from tests.factories import make_access_token, make_pos, make_usable_device
from tests.live import ROOT, LiveServer, free_port, run_bounded, server_env, start_server

WAIT = 20.0

GOOD = [
    "ws://192.168.1.20:8080",
    "ws://10.0.0.7/upp/v1",
    "wss://172.16.4.2:443",
    "ws://127.0.0.1:9000",
    "ws://169.254.10.1",
    "ws://[fe80::1]:8080",
    "ws://[fd12:3456::1]",
    "ws://[::1]:9000",
    "wss://terminal-7.local:8443/upp",
]
BAD = [
    "ws://8.8.8.8:8080",  # public
    "ws://192.0.2.1",  # documentation range: not the shop's network
    "ws://100.64.0.1",  # carrier-grade NAT: not the shop's network either
    "ws://[2001:db8::1]",
    "ws://[::ffff:8.8.8.8]",  # a public IPv4 in IPv6 clothing
    "http://192.168.1.20",  # not a WebSocket URL
    "ws://example.com",
    "ws://terminal.local.example.com",
    "ws://user:secret@192.168.1.20",
    "ws://192.168.1.20/?x=1",
    "ws://192.168.1.20:99999",
    "ws://192.168.1.20:0",
    "not a url",
    "",
    "ws://192.168.1.20/\u0000",
    "ws://" + "a" * 2100 + ".local",
    42,
    ["ws://192.168.1.20"],
    {"url": "ws://192.168.1.20"},
    True,
]


@pytest.mark.parametrize("value", GOOD)
def test_a_local_url_on_the_shops_network_is_accepted_as_sent(value):
    assert protocol.parse_local_url(value) == value


@pytest.mark.parametrize("value", BAD, ids=lambda value: repr(value)[:40])
def test_anything_else_is_refused(value):
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.parse_local_url(value)
    assert refused.value.code == "invalid_request"


def test_no_local_url_is_none_stored_as_blank():
    assert protocol.parse_local_url(None) == ""


async def registration_answer(world, **extra) -> dict:
    comm = communicator("/cloud-connector/v1/device-listener")
    await opened(comm)
    resource = {"tsn": world.device.tsn, "custom_registration_data": world.pos_credentials, **extra}
    await comm.send_to(text_data=request(resource))
    answer = json.loads(await comm.receive_from(5))
    await expect_close(comm, 1000)
    return answer["response"]["resource"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.cloud_connector_on
@pytest.mark.usefixtures("fresh_state")
class TestRegistration:
    @pytest.mark.parametrize("value", ["ws://8.8.8.8:8080", "ftp://192.168.1.2", "garbage", 7])
    async def test_a_bad_local_url_is_a_400_invalid_request(self, world, value):
        answer = await registration_answer(world, local_url=value)
        assert answer["status_code"] == 400 and answer["error"] == "invalid_request"
        assert "local_url" in answer["message"]
        assert not await DeviceSession.objects.filter(device=world.device).aexists()

    async def test_claim_and_devices_answer_the_registered_local_url(self, world):
        registered = await registration_answer(world, local_url="ws://192.168.1.20:8080")
        assert registered["status_code"] == 200
        listener = await Listener.open(world.pos_token)
        claim = await listener.claim(world.device.tsn)
        assert claim["local_url"] == "ws://192.168.1.20:8080"
        devices = (await listener.ask({"action": "devices"}))["devices"]
        assert [d["local_url"] for d in devices if d["tsn"] == world.device.tsn] == ["ws://192.168.1.20:8080"]
        # A registration again (a new DHCP lease) replaces it; one without clears it.
        await registration_answer(world, local_url="wss://lane-3.local")
        assert (await listener.claim(world.device.tsn))["local_url"] == "wss://lane-3.local"
        await registration_answer(world)
        assert (await listener.claim(world.device.tsn))["local_url"] is None
        await listener.close()

    async def test_an_outsider_sees_no_local_url(self, world):
        await registration_answer(world, local_url="ws://192.168.1.20:8080")
        listener = await Listener.open(world.neighbour_token)
        assert (await listener.ask({"action": "devices"}))["devices"] == []
        refused = await listener.claim(world.device.tsn)
        assert refused["status_code"] == 404 and "local_url" not in refused
        await listener.close()


# --- the failover session against a live server -------------------------------------------------


class Shop:
    def __init__(self) -> None:
        self.device = make_usable_device()
        self.pos = make_pos(store=self.device.store)
        self.token = make_access_token(self.pos.application)


@pytest.fixture
def restartable(tmp_path: Path, transactional_db):
    """A daphne server of this test's own, on a port it keeps across a restart."""
    servers: list[LiveServer] = [start_server(tmp_path, port=free_port())]
    yield servers
    for live in servers:
        live.stop()
    print(f"--- server log ---\n{servers[-1].log()[-6000:]}")


@pytest.mark.live
def test_the_session_carries_on_over_the_local_network_while_the_cloud_is_gone(restartable, tmp_path):
    shop = Shop()
    server = restartable[0]
    local_port = free_port()

    async def scenario() -> None:
        terminal = SimulatedTerminal(
            server.ws_url,
            tsn=shop.device.tsn,
            client_id=shop.pos.application.client_id,
            client_secret=shop.pos.client_secret,
            responder=echo,
            min_delay=0.05,
            max_delay=0.5,
            local_port=local_port,
        )
        await terminal.start(timeout=WAIT)
        switches = []
        till = FailoverSession(
            server.http_url, token=shop.token, tsn=shop.device.tsn, fallback_after=1.0, on_switch=switches.append
        )
        await till.start()
        assert till.path == "cloud" and till.local_url == f"ws://127.0.0.1:{local_port}"
        await till.send("sale 1")
        assert await till.recv(timeout=WAIT) == "sale 1"

        await asyncio.to_thread(server.stop)  # the whole cloud goes away
        switch = await till.next_switch(timeout=WAIT)
        assert switch.path == "local" and switch == switches[0]
        await till.send("sale 2 over the shop's network")
        assert await till.recv(timeout=WAIT) == "sale 2 over the shop's network"

        restartable.append(await asyncio.to_thread(start_server, tmp_path, port=server.port))
        switch = await till.next_switch(timeout=WAIT * 2)
        assert switch.path == "cloud"
        assert terminal.local is not None and not terminal.local.serving  # the terminal is back on the cloud too
        await till.send("sale 3")
        assert await till.recv(timeout=WAIT) == "sale 3"
        assert [s.path for s in switches] == ["local", "cloud"]
        assert till.frames.empty()
        await till.close()
        await terminal.stop()

    run_bounded(scenario(), timeout=120)


@pytest.mark.live
def test_without_any_path_a_frame_is_refused_not_queued(restartable):
    shop = Shop()
    server = restartable[0]

    async def scenario() -> None:
        terminal = SimulatedTerminal(
            server.ws_url,
            tsn=shop.device.tsn,
            client_id=shop.pos.application.client_id,
            client_secret=shop.pos.client_secret,
            responder=echo,
            min_delay=0.05,
            max_delay=0.5,
        )  # no local server: nothing to fall back to
        await terminal.start(timeout=WAIT)
        till = FailoverSession(server.http_url, token=shop.token, tsn=shop.device.tsn, fallback_after=0.5)
        await till.start()
        assert till.local_url is None
        await terminal.stop()
        for _ in range(int(WAIT / 0.05)):
            if till.path is None:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(NoPath):
            await till.send("sale")
        await till.close()

    run_bounded(scenario(), timeout=60)


# --- the two commands, as two shells would run them ---------------------------------------------


def online(device_id: int) -> bool:
    """Whether the device's session is online (from a worker thread: its connection closed after)."""
    from django.db import connection

    try:
        return DeviceSession.objects.filter(device_id=device_id, state=DeviceSession.State.ONLINE).exists()
    finally:
        connection.close()


async def line_with(stream: asyncio.StreamReader, text: str, seen: list[str]) -> str:
    async with asyncio.timeout(WAIT * 2):
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError(f"the command ended before printing {text!r}:\n" + "".join(seen))
            line = raw.decode(errors="replace")
            seen.append(line)
            if text in line:
                return line


@pytest.mark.live
def test_pos_client_fallback_carries_on_with_simulate_device_local_port(restartable, tmp_path):
    shop = Shop()
    server = restartable[0]
    local_port = free_port()
    env = server_env()
    manage = [sys.executable, str(ROOT / "manage.py")]
    domain = shop.device.tenant.domain

    async def scenario() -> None:
        terminal = await asyncio.create_subprocess_exec(
            *manage, "simulate_device", "--url", server.ws_url, "--tsn", shop.device.tsn,
            "--client-id", shop.pos.application.client_id, f"--client-secret={shop.pos.client_secret}",
            "--answer", "echo", "--max-delay", "0.5", "--local-port", str(local_port),
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        pos = None
        try:
            for _ in range(int(WAIT / 0.1)):
                if await asyncio.to_thread(online, shop.device.pk):
                    break
                await asyncio.sleep(0.1)
            pos = await asyncio.create_subprocess_exec(
                *manage, "pos_client", "--url", server.http_url, "--domain", domain,
                f"--token={shop.token}", "--tsn", shop.device.tsn, "--fallback", "--fallback-after", "1",
                env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            seen: list[str] = []
            assert f"local_url ws://127.0.0.1:{local_port}" in await line_with(pos.stdout, "claimed", seen)
            pos.stdin.write(b"sale 1\n")
            await line_with(pos.stdout, "← sale 1", seen)
            await asyncio.to_thread(server.stop)
            await line_with(pos.stdout, "now over the local", seen)
            pos.stdin.write(b"sale 2\n")
            await line_with(pos.stdout, "← sale 2", seen)
            restartable.append(await asyncio.to_thread(start_server, tmp_path, port=server.port))
            await line_with(pos.stdout, "now over the cloud", seen)
            pos.stdin.write(b"sale 3\n")
            await line_with(pos.stdout, "← sale 3", seen)
            pos.stdin.close()
            async with asyncio.timeout(WAIT):
                assert await pos.wait() == 0, "".join(seen)
        finally:
            for process in (pos, terminal):
                if process is not None and process.returncode is None:
                    process.terminate()
                    await process.wait()

    run_bounded(scenario(), timeout=150)
