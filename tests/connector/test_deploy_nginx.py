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
import shutil
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
from tests.factories import make_pos, make_usable_device
from tests.live import free_port, server_env

pytestmark = [pytest.mark.live, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "docs" / "nginx" / "cloud-connector.conf"
NGINX = Path("/usr/sbin/nginx")
TRANSACTION = "/upp/v1/transaction"
SCENARIO_TIMEOUT = 60


def require_nginx_and_shared_backends() -> None:
    if not NGINX.exists():
        pytest.skip("nginx is not installed at /usr/sbin/nginx (apt-get install -y nginx; .ci/run does)")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate for nginx's TLS listener")
    if connection.vendor != "postgresql" or not os.environ.get("REDIS_URL"):
        pytest.skip(
            "two server processes behind nginx need a shared database and channel layer: "
            "run with DATABASE_URL (PostgreSQL) and REDIS_URL; SQLite and the in-memory layer are single-process"
        )


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def substitute(text: str, pattern: str, replacement: str) -> str:
    """Replace what the documented file says; fail loudly when the file no longer says it."""
    result, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert count, f"docs/nginx/cloud-connector.conf no longer matches {pattern!r}"
    return result


def render_site(
    *,
    listen: int,
    backends: list[int],
    cert: Path,
    key: Path,
    static: Path,
    client_ca: Path | None = None,
    crl: Path | None = None,
) -> str:
    """The documented file with the test's ports and paths; the device CA bundle is the
    server's own certificate unless `client_ca` names one (test_mtls_nginx), the CRL
    line stays commented out unless `crl` is given."""
    site = CONF.read_text()
    site = substitute(site, r"ssl_client_certificate\s+\S+;", f"ssl_client_certificate {client_ca or cert};")
    if crl is not None:
        site = substitute(site, r"#\s*ssl_crl\s+\S+;", f"ssl_crl {crl};")
    site = substitute(site, r"^\s*server 127\.0\.0\.1:\d+ .*;\n", "")
    servers = "".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;\n" for port in backends)
    site = substitute(site, r"(hash \$cc_session consistent;\n)", lambda m: m.group(1) + servers)
    site = substitute(site, r"^\s*listen \[::\]:443 ssl;\n", "")
    site = substitute(site, r"listen 443 ssl;", f"listen 127.0.0.1:{listen} ssl;")
    site = substitute(site, r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};")
    site = substitute(site, r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};")
    return substitute(site, r"alias \S+;", f"alias {static}/;")


def main_config(prefix: Path, site: Path) -> str:
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} info;
events {{ worker_connections 512; }}
http {{
    log_format upstream '$uri $upstream_addr $status';
    access_log {prefix / "access.log"} upstream;
{temp}
    include {site};
}}
"""


def wait_listening(port: int, process: subprocess.Popen, log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} within {timeout:g} s:\n{log.read_text(errors='replace')}")


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
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    cert, key = self_signed_certificate(prefix)
    (prefix / "static").mkdir()
    site = prefix / "cloud-connector.conf"
    site.write_text(
        render_site(
            listen=nginx_port, backends=[s.port for s in backends], cert=cert, key=key, static=prefix / "static"
        )
    )
    conf = prefix / "nginx.conf"
    conf.write_text(main_config(prefix, site))
    test = subprocess.run(
        [str(NGINX), "-t", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
    )
    assert test.returncode == 0, test.stderr
    process = subprocess.Popen([str(NGINX), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")])
    try:
        wait_listening(nginx_port, process, prefix / "error.log")
        yield prefix
    finally:
        process.terminate()
        process.wait(10)
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
