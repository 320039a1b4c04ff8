"""docs/nginx/cloud-connector.conf, for real: nginx (TLS, WebSocket upgrade, session-id hash)
in front of `bin/serve` (what `make serve` runs) with two worker processes, and the seed's
flow through it.

Needs /usr/sbin/nginx (`apt-get install -y nginx`; .ci/run installs it), openssl, and a
database and channel layer shared by two processes (DATABASE_URL on PostgreSQL and
REDIS_URL); skipped with the reason otherwise. nginx runs as a non-daemon child with its
own prefix, pid file and logs in the test's tmp dir, on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import connection

from connector.clients import PosClient, SimulatedTerminal, fetch_token_sync, upp_answer
from connector.clients.common import parse_envelope
from tests.connector.nginx import require_nginx, running_nginx, wait_listening
from tests.factories import make_pos, make_usable_device
from tests.live import free_port, server_env

pytestmark = [pytest.mark.live, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
TRANSACTION = "/upp/v1/transaction"
SCENARIO_TIMEOUT = 60


def require_nginx_and_shared_backends() -> None:
    require_nginx()
    if connection.vendor != "postgresql" or not os.environ.get("REDIS_URL"):
        pytest.skip(
            "two server processes behind nginx need a shared database and channel layer: "
            "run with DATABASE_URL (PostgreSQL) and REDIS_URL; SQLite and the in-memory layer are single-process"
        )


@pytest.fixture
def nginx_port() -> int:
    require_nginx_and_shared_backends()
    return free_port()


@dataclass
class Backend:
    """One worker of `bin/serve` (what `make serve` runs)."""

    port: int
    pid: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def two_free_ports() -> int:
    """A port p with p + 1 free as well: bin/serve's workers listen on PORT, PORT+1, ..."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports")


@pytest.fixture
def backends(nginx_port: int, tmp_path: Path) -> Iterator[list[Backend]]:
    """`bin/serve` with WORKERS=2 on the test database and Redis, as docs/deploy.md runs it."""
    port = two_free_ports()
    log = tmp_path / "serve.log"
    env = server_env(HOST="127.0.0.1", PORT=str(port), WORKERS="2", CC_PUBLIC_WS_URL=f"wss://127.0.0.1:{nginx_port}")
    with log.open("wb") as out:
        serve = subprocess.Popen([sys.executable, "bin/serve"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        for worker_port in (port, port + 1):
            wait_listening(worker_port, serve, log, timeout=60)
        pids = [int(pid) for pid in re.findall(r"serve: worker \d \(pid (\d+)\)", log.read_text())]
        assert len(pids) == 2, log.read_text()
        yield [Backend(port=port + i, pid=pid, log_path=log) for i, pid in enumerate(pids)]
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(40) == 0, log.read_text()
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(10)
        for pid in re.findall(r"serve: worker \d \(pid (\d+)\)", log.read_text()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


@pytest.fixture
def nginx(nginx_port: int, backends: list[Backend], tmp_path: Path) -> Iterator[Path]:
    """nginx on nginx_port in front of the backends; yields its prefix (logs)."""
    try:
        with running_nginx(tmp_path, listen=nginx_port, backends=[s.port for s in backends]) as (prefix, _):
            yield prefix
    finally:
        print(f"--- bin/serve ---\n{backends[0].log()[-10000:]}")


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def socket_nodes(session_id: str) -> dict[str, str]:
    """Which process holds each end of the session, from the SessionSocket rows."""
    from connector.models import SessionSocket

    try:
        return {row.side: row.node for row in SessionSocket.objects.filter(session_id=session_id)}
    finally:
        connection.close()  # this ran in a worker thread: its connection must not outlive the test


def pid_of(node: str) -> int:
    return int(node.split(":")[-2])


def test_a_terminal_and_a_pos_talk_through_nginx_and_meet_on_one_backend(nginx, nginx_port, backends, monkeypatch):
    device = make_usable_device()
    pos = make_pos(store=device.store)
    cert = nginx / "cert.pem"
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the POS client's token request (urllib)
    url = f"https://127.0.0.1:{nginx_port}"
    token = fetch_token_sync(
        url,
        domain=device.tenant.domain,
        client_id=pos.application.client_id,
        client_secret=pos.client_secret,
        scope="cloud-connector",
    ).access_token
    tls = {"ssl": trusting(cert)}

    async def scenario() -> tuple[str, dict[str, str]]:
        terminal = SimulatedTerminal(
            url,
            tsn=device.serial,
            client_id=pos.application.client_id,
            client_secret=pos.client_secret,
            endpoints=[TRANSACTION],
            responder=upp_answer,
            min_delay=0.05,
            max_delay=0.5,
            connect_kwargs=tls,
        )
        async with terminal, PosClient(url, token=token, connect_kwargs=tls) as client:
            registration = await terminal.wait_online(timeout=20)
            assert (
                registration.connection_url
                == f"wss://127.0.0.1:{nginx_port}/cloud-connector/v1/device/{registration.session_id}"
            )
            claim = await client.claim(device.serial)
            assert claim.session_url.startswith(f"wss://127.0.0.1:{nginx_port}/cloud-connector/v1/session/")
            session = await client.open_session(claim, TRANSACTION)
            for flow in ("1", "2", "3"):
                await session.send(
                    f'{{"request": {{"flow_id": "{flow}", "resource": {{"type": "sale", "amount": 5}}}}}}'
                )
                answer = parse_envelope(await session.recv(timeout=10))
                assert (answer.flow_id, answer.resource["status"]) == (flow, "ok")
            nodes = await asyncio.to_thread(socket_nodes, claim.session_id)
            await client.release(claim.session_id)
            assert (await session.wait_closed(timeout=10)).code == 1000
            return claim.session_id, nodes

    async def bounded() -> tuple[str, dict[str, str]]:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            return await scenario()

    session_id, nodes = asyncio.run(bounded())

    assert set(nodes) == {"device", "pos"}
    assert pid_of(nodes["device"]) == pid_of(nodes["pos"])
    assert pid_of(nodes["device"]) in {server.pid for server in backends}
    # nginx's own view agrees: both paths of the session went to one upstream address.
    deadline = time.monotonic() + 10
    upstreams: dict[str, set[str]] = {}
    while time.monotonic() < deadline and set(upstreams) != {"device", "session"}:
        upstreams = {}
        for line in (nginx / "access.log").read_text().splitlines():
            match = re.match(rf"/cloud-connector/v1/(device|session)/{re.escape(session_id)}\S* (\S+) 101$", line)
            if match:
                upstreams.setdefault(match.group(1), set()).add(match.group(2))
        time.sleep(0.2)
    assert set(upstreams) == {"device", "session"}, (nginx / "access.log").read_text()
    assert upstreams["device"] == upstreams["session"] and len(upstreams["device"]) == 1
