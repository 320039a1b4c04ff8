"""nginx running docs/nginx/cloud-connector.conf for the tests that put it in front of live
servers (test_deploy_nginx, test_mtls_nginx, test_probes_nginx through the former's fixtures).

nginx runs as a non-daemon child with its own prefix, pid file and logs in the test's tmp dir.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.live import ROOT

CONF = ROOT / "docs" / "nginx" / "cloud-connector.conf"
NGINX = Path("/usr/sbin/nginx")


def require_nginx() -> None:
    if not NGINX.exists():
        pytest.skip("nginx is not installed at /usr/sbin/nginx (apt-get install -y nginx; .ci/run does)")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate for nginx's TLS listener")


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


@contextmanager
def running_nginx(
    tmp_path: Path,
    *,
    listen: int,
    backends: list[int],
    client_ca: Path | None = None,
    crl: Path | None = None,
) -> Iterator[tuple[Path, Path]]:
    """nginx on `listen` in front of the backend ports, with a self-signed certificate, checked
    with `nginx -t` first; yields its prefix (certificate, logs) and the certificate, and
    stops it on the way out."""
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    cert, key = self_signed_certificate(prefix)
    (prefix / "static").mkdir()
    site = prefix / "cloud-connector.conf"
    site.write_text(
        render_site(
            listen=listen,
            backends=backends,
            cert=cert,
            key=key,
            static=prefix / "static",
            client_ca=client_ca,
            crl=crl,
        )
    )
    conf = prefix / "nginx.conf"
    conf.write_text(main_config(prefix, site))
    checked = subprocess.run(
        [str(NGINX), "-t", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen([str(NGINX), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")])
    try:
        wait_listening(listen, process, prefix / "error.log")
        yield prefix, cert
    finally:
        process.terminate()
        process.wait(10)
