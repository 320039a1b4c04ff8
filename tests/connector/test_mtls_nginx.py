"""Device identity by certificate (v1.1 §15) end to end over TLS: nginx running
docs/nginx/cloud-connector.conf (templated by tests/connector/nginx.py as for test_deploy_nginx, with
a device CA and a CRL made here with `cryptography`) in front of `make serve`'s uvicorn worker, and real TLS
clients: terminals presenting client certificates, a POS presenting none.

Skipped only where nginx (or openssl, for the server's certificate) is missing; CI installs
both. One worker is enough: the database may be SQLite, and the revocations go through the
worker's REST API, so its own channel layer carries them to its sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from accounts.scope import principal_for_user
from connector import certificates
from connector.clients import PosClient, RegistrationRefused, SimulatedTerminal, register, upp_answer
from connector.clients.common import SocketClosed, parse_envelope
from connector.models import DeviceSession
from tests.connector.mtls_pki import DeviceCA, Issued
from tests.connector.nginx import require_nginx, running_nginx
from tests.live import ROOT, LiveServer, free_port, run_bounded, server_env, start_server
from tests.world import World

pytestmark = [
    pytest.mark.live,
    pytest.mark.django_db(transaction=True),
    pytest.mark.cloud_connector_on,
]

TRANSACTION = "/upp/v1/transaction"
SCENARIO_TIMEOUT = 60


@dataclass
class Pki:
    """The operator's device CA (its bundle and CRL on disk) and the certificates of the test."""

    ca: DeviceCA
    terminal: Issued  # enrolled for the home terminal
    neighbour: Issued  # enrolled for another terminal of the tenant
    revoked: Issued  # enrolled for the home terminal, then revoked in the CRL
    expired: Issued
    foreign: Issued  # signed by someone else's CA
    directory: Path

    def files(self, issued: Issued, name: str) -> tuple[Path, Path]:
        return issued.write(self.directory, name)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    ca = DeviceCA()
    pki = Pki(
        ca=ca,
        terminal=ca.issue("A1000001"),
        neighbour=ca.issue("A2000001"),
        revoked=ca.issue("A1000001-old"),
        expired=ca.issue("A1000001-expired", expired=True),
        foreign=DeviceCA("Someone Else's CA").issue("A1000001"),
        directory=directory,
    )
    ca.revoke(pki.revoked)
    (directory / "device-ca.pem").write_text(ca.pem)
    (directory / "device-ca.crl").write_text(ca.crl_pem())
    return pki


@dataclass
class Edge:
    url: str  # https://127.0.0.1:<nginx port>
    server: LiveServer
    server_cert: Path
    prefix: Path

    def tls(self, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.server_cert))
        if client is not None:
            context.load_cert_chain(str(client[0]), str(client[1]))
        return context


@pytest.fixture
def edge(pki: Pki, tmp_path: Path) -> Iterator[Edge]:
    """nginx over TLS, asking for device certificates, in front of one uvicorn worker."""
    require_nginx()
    port = free_port()
    server = start_server(tmp_path, server="uvicorn", CC_PUBLIC_WS_URL=f"wss://127.0.0.1:{port}")
    try:
        with running_nginx(
            tmp_path,
            listen=port,
            backends=[server.port],
            client_ca=pki.directory / "device-ca.pem",
            crl=pki.directory / "device-ca.crl",
        ) as (prefix, cert):
            yield Edge(url=f"https://127.0.0.1:{port}", server=server, server_cert=cert, prefix=prefix)
    finally:
        server.stop()
        print(f"--- server ---\n{server.log()[-10000:]}")


def enrolled(world: World, device, issued: Issued) -> int:
    return certificates.device_certificate_enrol(
        device=device, pem=issued.pem, actor=principal_for_user(world.merchant_admin)
    ).pk


async def refusal(edge: Edge, tsn: str, client: tuple[Path, Path] | None, **credentials) -> BaseException:
    """What a registration through nginx with this client certificate ends in."""
    try:
        await register(edge.url, tsn=tsn, connect_kwargs={"ssl": edge.tls(client)}, timeout=20, **credentials)
    except (RegistrationRefused, SocketClosed) as refused:
        return refused
    raise AssertionError("the registration was accepted")


def test_an_enrolled_certificate_registers_through_nginx_and_relays_with_a_pos(world, pki, edge):
    enrolled(world, world.device, pki.terminal)
    client = pki.files(pki.terminal, "terminal")

    async def scenario() -> None:
        terminal = SimulatedTerminal(
            edge.url,
            tsn=world.device.tsn,  # no client id, no secret: the certificate is the identity
            endpoints=[TRANSACTION],
            responder=upp_answer,
            min_delay=0.01,
            max_delay=0.05,
            connect_kwargs={"ssl": edge.tls(client)},
        )
        async with terminal, PosClient(edge.url, token=world.pos_token, connect_kwargs={"ssl": edge.tls()}) as pos:
            registration = await terminal.wait_online(timeout=20)
            assert registration.connection_url.startswith(edge.url.replace("https", "wss"))
            claim = await pos.claim(world.device.serial)
            session = await pos.open_session(claim, TRANSACTION)
            for flow in ("1", "2"):
                await session.send(
                    json.dumps({"request": {"flow_id": flow, "resource": {"type": "sale", "amount": 5}}})
                )
                answer = parse_envelope(await session.recv(timeout=10))
                assert (answer.flow_id, answer.resource["status"]) == (flow, "ok")
            await pos.release(claim.session_id)

    run_bounded(scenario(), timeout=SCENARIO_TIMEOUT)
    session = DeviceSession.objects.get(device=world.device)
    assert session.registered_fingerprint == pki.terminal.fingerprint and session.registered_by is None


def test_refused_certificates_another_devices_none_on_a_required_device_and_bad_ones(world, pki, edge):
    enrolled(world, world.other_device, pki.neighbour)
    enrolled(world, world.device, pki.revoked)
    certificates.device_require_mtls_set(
        device=world.device, require=True, actor=principal_for_user(world.merchant_admin)
    )
    creds = {"client_id": world.pos.application.client_id, "client_secret": world.pos.client_secret}

    async def scenario() -> None:
        # Another terminal's certificate (enrolled, verified) names the wrong device: 401.
        theirs = await refusal(edge, world.device.tsn, pki.files(pki.neighbour, "neighbour"), **creds)
        assert isinstance(theirs, RegistrationRefused), theirs
        assert (theirs.status_code, theirs.error) == (401, "invalid_client")
        # No certificate on a device that requires one: 403 mtls_required, credentials or not.
        bare = await refusal(edge, world.device.tsn, None, **creds)
        assert isinstance(bare, RegistrationRefused), bare
        assert (bare.status_code, bare.error) == (403, "mtls_required")
        # Expired, revoked (the CRL) or from another CA: nginx refuses the handshake itself.
        for name, issued in (("expired", pki.expired), ("revoked", pki.revoked), ("foreign", pki.foreign)):
            refused = await refusal(edge, world.device.tsn, pki.files(issued, name), **creds)
            assert isinstance(refused, SocketClosed) and "HTTP 400" in refused.reason, (name, refused)

    run_bounded(scenario(), timeout=SCENARIO_TIMEOUT)
    log = (edge.prefix / "error.log").read_text(errors="replace")
    assert "certificate revoked" in log and "certificate has expired" in log, log[-3000:]


def test_removing_the_certificate_closes_the_live_device_socket_within_a_second(world, pki, edge):
    certificate_id = enrolled(world, world.device, pki.terminal)
    tls = edge.tls(pki.files(pki.terminal, "terminal"))
    removal = f"{edge.url}/api/v1/devices/{world.device.pk}/certificates/{certificate_id}/"

    async def scenario() -> None:
        registration = await register(edge.url, tsn=world.device.tsn, connect_kwargs={"ssl": tls}, timeout=20)
        async with connect(registration.connection_url, additional_headers=registration.headers, ssl=tls) as socket:
            await asyncio.sleep(0.2)  # attached: the server accepted it
            response = await asyncio.to_thread(
                requests.delete,
                removal,
                headers={"Authorization": f"Bearer {world.provisioning_token}"},
                verify=str(edge.server_cert),
                timeout=20,
            )
            assert response.status_code == 204, response.text
            removed_at = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(1.0):
                    await socket.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4410
            print(f"closed {time.monotonic() - removed_at:.3f} s after the DELETE answered")

    run_bounded(scenario(), timeout=SCENARIO_TIMEOUT)


def test_a_forged_verification_header_sent_straight_to_the_worker_is_ignored(world, pki, edge):
    enrolled(world, world.device, pki.terminal)
    forged = {"X-Client-Cert-Verify": "SUCCESS", "X-Client-Cert": pki.terminal.escaped.decode()}
    request = json.dumps({"request": {"flow_id": "1", "resource": {"tsn": world.device.tsn}}})

    async def answer(url: str, **kwargs) -> dict:
        async with connect(url, additional_headers=forged, **kwargs) as socket:
            await socket.send(request)
            return parse_envelope(await socket.recv()).resource

    async def scenario() -> None:
        # From 127.0.0.2, an address outside FORWARDED_ALLOW_IPS (127.0.0.1), to the worker itself.
        direct = await answer(
            f"ws://127.0.0.1:{edge.server.port}/cloud-connector/v1/device-listener", local_addr=("127.0.0.2", 0)
        )
        assert (direct["status_code"], direct["error"]) == (400, "invalid_request"), direct
        # Through nginx, without a certificate: nginx replaces the client's headers with its own.
        proxied = await answer(f"{edge.url.replace('https', 'wss')}/cloud-connector/v1/device-listener", ssl=edge.tls())
        assert (proxied["status_code"], proxied["error"]) == (400, "invalid_request"), proxied

    run_bounded(scenario(), timeout=SCENARIO_TIMEOUT)
    assert not DeviceSession.objects.exists()


def test_simulate_device_registers_with_cert_and_key(world, pki, edge):
    enrolled(world, world.device, pki.terminal)
    cert, key = pki.files(pki.terminal, "terminal")
    command = [sys.executable, "manage.py", "simulate_device", "--url", edge.url, "--tsn", world.device.tsn]
    command += ["--cert", str(cert), "--key", str(key), "--endpoint", TRANSACTION]
    env = server_env(SSL_CERT_FILE=str(edge.server_cert))
    simulated = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = b""
    try:
        deadline = time.monotonic() + 30
        while b"registered: session" not in output and (remaining := deadline - time.monotonic()) > 0:
            # Bounded: a command that prints nothing never holds the test past the deadline.
            if not select.select([simulated.stdout], [], [], remaining)[0]:
                break
            chunk = os.read(simulated.stdout.fileno(), 65536)
            if not chunk:
                break
            output += chunk
    finally:
        simulated.terminate()
        simulated.wait(10)
    assert b"registered: session" in output, output.decode(errors="replace")
    assert DeviceSession.objects.get(device=world.device).registered_fingerprint == pki.terminal.fingerprint
