"""A real ASGI server process on a free port, sharing the test database.

Tests that use it must commit their data: mark them `django_db(transaction=True)`.
With the in-memory channel layer the server's layer is its own: revocations meant to
reach the server's sockets must go through the server (its REST API), not through the
test process's ORM. With REDIS_URL set, both share Redis.

`PrivateRedis` is a redis-server of a test's own, on a free port, for tests that restart
Redis: the shared one on 6379 serves other test runs and must never be restarted.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from django.db import connection

from portal.serve import worker_command

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(**overrides: str) -> dict[str, str]:
    """The environment of a server process that uses the test process's database."""
    env = os.environ.copy()
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        env["SQLITE_PATH"] = str(settings["NAME"])
    else:
        user = settings.get("USER") or "postgres"
        password = f":{settings['PASSWORD']}" if settings.get("PASSWORD") else ""
        host = settings.get("HOST") or "127.0.0.1"
        port = settings.get("PORT") or 5432
        env["DATABASE_URL"] = f"postgres://{user}{password}@{host}:{port}/{settings['NAME']}"
    env.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


@dataclass
class LiveServer:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int | None = None, timeout: float = 10) -> int | None:
        if self.process.poll() is None:
            if sig is None:
                self.process.terminate()
            else:
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode


def production_worker_command(port: int) -> list[str]:
    """The uvicorn command `make serve` (bin/serve) runs for one worker, on `port`."""
    return worker_command("127.0.0.1", port)


def start_server(
    tmp_dir: Path,
    *,
    server: str = "daphne",
    port: int | None = None,
    daphne_args: list[str] | None = None,
    **env_overrides: str,
) -> LiveServer:
    """A server process on `port` (a free one by default) and the test database; its output
    appended to `server-<port>.log` in `tmp_dir` (a server started again on the same port
    writes after the first). `daphne_args` go on daphne's command line before the
    application (`["--ping-interval", "1"]`: daphne reads its keepalive only from there)."""
    port = port or free_port()
    log_path = tmp_dir / f"server-{port}.log"
    if server == "uvicorn":
        # The uvicorn command takes its keepalive flags from CC_PING_INTERVAL/CC_PING_TIMEOUT:
        # read with the overrides in force, as `make serve` would with them set.
        with mock.patch.dict(os.environ, env_overrides):
            cmd = production_worker_command(port)
    else:
        cmd = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), *(daphne_args or [])]
        cmd.append("portal.asgi:application")
    log = log_path.open("ab")
    process = subprocess.Popen(cmd, cwd=ROOT, env=server_env(**env_overrides), stdout=log, stderr=subprocess.STDOUT)
    live = LiveServer(process=process, port=port, log_path=log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{live.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return live
        except OSError:
            time.sleep(0.1)
    live.stop()
    raise RuntimeError(f"server did not listen within 30 s:\n{live.log()}")


def run_bounded(scenario: Coroutine[Any, Any, None], *, timeout: float) -> None:
    """Run an async end-to-end scenario from a sync test, failing it if it hangs."""

    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await scenario

    asyncio.run(bounded())


@contextmanager
def server_log_printed(server: LiveServer) -> Iterator[None]:
    """Print what the server logged meanwhile: pytest shows it when the test fails."""
    start = server.log_path.stat().st_size
    yield
    with server.log_path.open("rb") as log:
        log.seek(start)
        print("--- server log during this test ---\n" + log.read().decode(errors="replace")[-20000:])


REDIS_SERVER = shutil.which("redis-server")


class PrivateRedis:
    """A redis-server without persistence on a free port of 127.0.0.1, as production runs it
    (`--save "" --appendonly no`): a restart starts it empty. `restart()` kills it (SIGKILL:
    no goodbye to its clients) and starts it again on the same port."""

    def __init__(self, tmp_dir: Path) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        self.log_path = tmp_dir / f"redis-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{self.log()}")
            if self.ping():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout} s:\n{self.log()}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
