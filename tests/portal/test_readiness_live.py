"""/readyz of a live uvicorn worker (the production command) while its backends fail and come back.

- Redis: a redis-server of the test's own (tests.live.PrivateRedis), killed and started again;
  the shared one on 6379 serves other test runs and is never stopped.
- PostgreSQL: the shared server is never stopped either (other test runs use it). The worker
  reaches it through a TCP proxy of this test's own, which the test cuts (its connections reset,
  new ones refused: what a stopped server looks like from the worker) or stalls (connections
  accepted and never answered: a network that drops packets). A private `initdb` cluster would
  also do, but needs seconds to create and the project's migrations on top; the proxy costs
  nothing and fails the worker's real connections. PostgreSQL only: a SQLite file cannot be
  reached through a proxy.

Timings are printed, never asserted; the bounds are timeouts.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from tests.live import REDIS_SERVER, LiveServer, PrivateRedis, free_port, start_server

pytestmark = [pytest.mark.live]

BOUND = 20  # seconds for a state to show; what should take well under one
ANSWER_WITHIN = 6  # seconds: one /readyz answer, whatever hangs behind it (READINESS_TIMEOUT is 1)


def readyz(server: LiveServer) -> tuple[int, dict]:
    response = requests.get(f"{server.http_url}/readyz", timeout=ANSWER_WITHIN)
    return response.status_code, response.json()


def wait_for(server: LiveServer, wanted: Callable[[int, dict], bool], what: str) -> tuple[int, dict]:
    started = time.monotonic()
    deadline = started + BOUND
    last: tuple[int, dict] | None = None
    while time.monotonic() < deadline:
        last = readyz(server)
        if wanted(*last):
            print(f"{what}: after {time.monotonic() - started:.2f} s")
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {BOUND} s; last answer {last}\n{server.log()[-5000:]}")


def ready_gauge(server: LiveServer) -> dict[str, float]:
    response = requests.get(f"{server.http_url}/metrics", timeout=ANSWER_WITHIN)
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "cloud_connector_ready":
                samples["ready"] = sample.value
            elif sample.name == "cloud_connector_readiness_check_ok":
                samples[sample.labels["check"]] = sample.value
    return samples


# --- Redis ---------------------------------------------------------------------------------------


@pytest.fixture
def redis_and_worker(tmp_path: Path, transactional_db) -> Iterator[tuple[PrivateRedis, LiveServer]]:
    if REDIS_SERVER is None:
        pytest.skip("needs redis-server: the test stops and starts a Redis of its own")
    redis = PrivateRedis(tmp_path)
    redis.start()
    server = None
    try:
        server = start_server(tmp_path, server="uvicorn", REDIS_URL=redis.url)
        yield redis, server
    finally:
        if server is not None:
            server.stop()
        redis.stop()


def test_readyz_fails_naming_redis_while_it_is_stopped_and_recovers_when_it_is_back(redis_and_worker):
    redis, server = redis_and_worker
    status, body = wait_for(server, lambda status, body: status == 200, "ready with Redis up")
    assert {"database", "redis", "channel_layer", "shutdown"} == set(body["checks"])

    redis.kill()
    status, body = wait_for(server, lambda status, body: status == 503, "not ready once Redis is stopped")
    assert set(body["failing"]) == {"redis", "channel_layer"}
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["redis"]["error"] in {"ConnectionError", "timeout"}
    gauges = ready_gauge(server)
    assert (gauges["ready"], gauges["redis"], gauges["database"]) == (0, 0, 1)
    assert requests.get(f"{server.http_url}/healthz", timeout=ANSWER_WITHIN).status_code == 200

    redis.start()
    wait_for(server, lambda status, body: status == 200, "ready again once Redis is back")
    assert ready_gauge(server)["ready"] == 1
    assert server.process.poll() is None


# --- PostgreSQL behind a proxy ------------------------------------------------------------------


class CuttableProxy:
    """A TCP proxy on a fixed port of 127.0.0.1 to `target`: `cut()` resets its connections and
    stops listening, `stall()` keeps accepting but forwards nothing, `restore()` forwards again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.stalled = False

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by cut()
            with self.lock:
                self.sockets.add(client)
            if self.stalled:
                continue  # held open, never answered
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                self._close(client)
                continue
            with self.lock:
                self.sockets.add(upstream)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, destination: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                destination.sendall(data)
        except OSError:
            pass
        self._close(source)
        self._close(destination)

    def _close(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        with contextlib.suppress(OSError):
            sock.close()

    def _drop_all(self) -> None:
        with self.lock:
            every = list(self.sockets)
        for sock in every:
            self._close(sock)

    def cut(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self._drop_all()

    def stall(self) -> None:
        self.stalled = True
        self._drop_all()

    def restore(self) -> None:
        self.stalled = False
        self._drop_all()  # connections accepted while stalled
        if self.listener is None:
            self.start()


@pytest.fixture
def proxied_worker(tmp_path: Path, transactional_db) -> Iterator[tuple[CuttableProxy, LiveServer]]:
    if connection.vendor != "postgresql":
        pytest.skip("the database is reached through a TCP proxy: run with DATABASE_URL (PostgreSQL)")
    settings = connection.settings_dict
    proxy = CuttableProxy((settings.get("HOST") or "127.0.0.1", int(settings.get("PORT") or 5432)))
    proxy.start()
    user = settings.get("USER") or "postgres"
    password = f":{settings['PASSWORD']}" if settings.get("PASSWORD") else ""
    database_url = f"postgres://{user}{password}@127.0.0.1:{proxy.port}/{settings['NAME']}"
    server = None
    try:
        server = start_server(tmp_path, server="uvicorn", DATABASE_URL=database_url)
        yield proxy, server
    finally:
        if server is not None:
            server.stop()
        proxy.cut()


def test_readyz_fails_naming_the_database_while_it_is_cut_off_and_recovers(proxied_worker):
    proxy, server = proxied_worker
    wait_for(server, lambda status, body: status == 200, "ready through the proxy")

    proxy.cut()
    started = time.monotonic()
    status, body = wait_for(server, lambda status, body: status == 503, "not ready once the database is cut off")
    assert body["failing"] == ["database"]
    assert body["checks"]["database"]["error"] == "OperationalError"
    assert time.monotonic() - started < ANSWER_WITHIN
    assert requests.get(f"{server.http_url}/healthz", timeout=ANSWER_WITHIN).status_code == 200

    proxy.restore()
    wait_for(server, lambda status, body: status == 200, "ready again once the database is back")


def test_readyz_answers_in_time_when_the_database_stops_answering_and_recovers(proxied_worker):
    proxy, server = proxied_worker
    wait_for(server, lambda status, body: status == 200, "ready through the proxy")

    proxy.stall()
    status, body = wait_for(server, lambda status, body: status == 503, "not ready once the database hangs")
    assert body["failing"] == ["database"]
    assert body["checks"]["database"]["error"] == "timeout"
    for _ in range(3):  # every answer bounded, the ping still waiting behind it or not
        started = time.monotonic()
        assert readyz(server)[0] == 503
        print(f"/readyz answered in {time.monotonic() - started:.2f} s while the database hangs")

    proxy.restore()
    wait_for(server, lambda status, body: status == 200, "ready again once the database answers")
