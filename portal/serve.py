"""Production serve command (`make serve`, `bin/serve`): migrate, collect static files, run
WORKERS uvicorn processes.

    HOST=127.0.0.1 PORT=8000 WORKERS=3 DATABASE_URL=postgres://... REDIS_URL=redis://... bin/serve

`worker_command` is also what the end-to-end tests and the benchmarks run, so that they
exercise the deployed configuration.

Worker i listens on HOST:(PORT+i), each its own process with its own event loop. They are
meant to sit behind a reverse proxy (docs/deploy.md, docs/nginx/cloud-connector.conf) that
hashes on the session id in the WebSocket path (/cloud-connector/v1/device/<id> and
/cloud-connector/v1/session/<id>), so both ends of a session usually meet on one process and
frames take the in-process fast path. Correctness never depends on that: any other socket of
a session may land anywhere, and frames then cross through the Redis channel layer.

Separate ports instead of `uvicorn --workers` (one shared port): the kernel spreads sockets
of a shared port over the workers at random, which would put the two ends of a session on
different processes almost always; separate ports let the proxy choose.

WORKERS > 1 needs REDIS_URL and DATABASE_URL: the in-memory channel layer and SQLite are
private to one process. A worker that exits on its own is started again (after a short
backoff); SIGTERM or SIGINT is passed to every worker, which closes its sockets with 1001
(connector/relay/shutdown.py), and the command returns when all have stopped.

Beside them run WEBHOOK_WORKERS (default 2) task workers (`manage.py db_worker`, django-tasks'
database worker) that deliver webhooks (docs/webhooks.md), supervised the same way: started
again when they exit, stopped with the rest (SIGTERM lets a worker finish its attempt).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# The defaults are the relay's own (connector.conf), read without configuring Django.
from connector.conf import ConnectorSettings as Defaults

ROOT = Path(__file__).resolve().parent.parent
RESTART_BACKOFF = (1, 2, 5, 10, 30)
STOP_TIMEOUT = 30


class ConfigError(Exception):
    pass


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {raw!r}") from None


def check_config() -> tuple[str, int, int]:
    host = os.environ.get("HOST", "").strip() or "127.0.0.1"
    port = env_int("PORT", 8000)
    workers = env_int("WORKERS", 1)
    if workers < 1:
        raise ConfigError("WORKERS must be at least 1")
    if not 1 <= port <= 65535 - workers + 1:
        raise ConfigError(f"PORT {port} with WORKERS {workers} leaves the port range")
    if workers > 1:
        missing = [name for name in ("REDIS_URL", "DATABASE_URL") if not os.environ.get(name, "").strip()]
        if missing:
            raise ConfigError(
                f"WORKERS={workers} needs {' and '.join(missing)}: without REDIS_URL the channel layer is "
                "in memory and without DATABASE_URL the database is SQLite, both private to one process. "
                "Set them (PostgreSQL and Redis) or run WORKERS=1."
            )
    return host, port, workers


def check_webhook_workers() -> int:
    workers = env_int("WEBHOOK_WORKERS", 2)
    if workers < 0:
        raise ConfigError("WEBHOOK_WORKERS must be 0 or more")
    return workers


def task_worker_command() -> list[str]:
    """A task worker: webhook deliveries first, then the default queue; no autoreloader (its
    parent process would not pass SIGTERM on to the worker it runs)."""
    return [sys.executable, "manage.py", "db_worker", "--queue-name", "webhooks,default", "--no-reload"]


def manage(*args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, check=True)


def worker_command(host: str, port: int) -> list[str]:
    max_message = env_int("CC_MAX_MESSAGE_SIZE", Defaults.MAX_MESSAGE_SIZE)
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "portal.asgi:application",
        "--host",
        host,
        "--port",
        str(port),
        "--lifespan",
        "off",
        # uvloop and websockets' sans-I/O protocol: measured the fastest and leanest of
        # uvicorn's loop and WebSocket implementations for the relay (docs/benchmarks.md).
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--ws",
        "websockets-sansio",
        # No permessage-deflate: frames are relayed as they are, and a compression context
        # per socket and direction would cost memory on every idle terminal and CPU on
        # every frame.
        "--ws-per-message-deflate",
        "false",
        # The application checks CC_MAX_MESSAGE_SIZE itself and closes with 1009 (relay/servers.py);
        # uvicorn must hand it at least that much.
        "--ws-max-size",
        str(max_message + 1024),
        # §8: a socket that answers no ping within 30 s is closed.
        "--ws-ping-interval",
        str(env_int("CC_PING_INTERVAL", Defaults.PING_INTERVAL)),
        "--ws-ping-timeout",
        str(env_int("CC_PING_TIMEOUT", int(Defaults.PING_TIMEOUT))),
        # The application reads X-Forwarded-For/-Proto itself, from FORWARDED_ALLOW_IPS only
        # (portal.proxies): uvicorn's own reading would hide the TCP peer that decides
        # whether the proxy's client-certificate headers are believed.
        "--no-proxy-headers",
        "--no-server-header",
        "--timeout-graceful-shutdown",
        str(env_int("CC_SHUTDOWN_GRACE", int(Defaults.SHUTDOWN_GRACE)) + 3),
    ]


class Supervisor:
    def __init__(self, host: str, port: int, workers: int, webhook_workers: int = 0) -> None:
        self.ports = [port + i for i in range(workers)]
        self.commands = [worker_command(host, p) for p in self.ports]
        self.commands += [task_worker_command() for _ in range(webhook_workers)]
        self.processes: list[subprocess.Popen | None] = [None] * len(self.commands)
        self.restarts = [0] * len(self.commands)
        self.due = [0.0] * len(self.commands)
        self.stopping = False

    def start(self, index: int) -> None:
        self.processes[index] = subprocess.Popen(self.commands[index], cwd=ROOT)
        pid = self.processes[index].pid
        if index < len(self.ports):
            print(f"serve: worker {index} (pid {pid}) on port {self.ports[index]}", flush=True)
        else:
            print(f"serve: webhook worker {index - len(self.ports)} (pid {pid})", flush=True)

    def stop(self, signum: int, _frame: object = None) -> None:
        self.stopping = True
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.send_signal(signum)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for index in range(len(self.commands)):
            self.start(index)
        while not self.stopping:
            time.sleep(0.5)
            for index, process in enumerate(self.processes):
                self.watch(index, process)
        return self.wait_all()

    def watch(self, index: int, process: subprocess.Popen | None) -> None:
        now = time.monotonic()
        if process is None:
            if now >= self.due[index] and not self.stopping:
                self.start(index)
            return
        code = process.poll()
        if code is None or self.stopping:
            return
        delay = RESTART_BACKOFF[min(self.restarts[index], len(RESTART_BACKOFF) - 1)]
        self.restarts[index] += 1
        print(f"serve: worker {index} exited with {code}; starting it again in {delay} s", file=sys.stderr, flush=True)
        self.processes[index] = None
        self.due[index] = now + delay

    def wait_all(self) -> int:
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in self.processes:
            if process is None:
                continue
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return 0


def main() -> int:
    try:
        host, port, workers = check_config()
        webhook_workers = check_webhook_workers()
    except ConfigError as error:
        print(f"serve: {error}", file=sys.stderr)
        return 2
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    manage("migrate", "--noinput")
    manage("collectstatic", "--noinput", "--verbosity", "0")
    return Supervisor(host, port, workers, webhook_workers).run()


if __name__ == "__main__":
    sys.exit(main())
