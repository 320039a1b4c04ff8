"""Fixtures for every test: fast hashers, the shared world (tests/world.py), the live server."""

from __future__ import annotations

import pytest
from django.db import OperationalError
from django.test import TransactionTestCase

from tests.factories import FAST_HASHERS
from tests.live import LiveServer, start_server
from tests.world import World, build_world, cloud_connector_on

FLUSH_ATTEMPTS = 5
LIVE_FIXTURES = {"live", "live_server_process"}


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "cloud_connector_on: the world's home terminal may use Cloud Connector")


@pytest.fixture(autouse=True)
def fast_hashing(request) -> None:
    """Users and credentials hash their secrets when made; a fast hasher keeps the suite
    quick. Not for live-server tests: the server process keeps the real hashers, and could not
    check a password hashed here with one it does not have."""
    if request.node.get_closest_marker("live") or LIVE_FIXTURES & set(request.fixturenames):
        return
    request.getfixturevalue("settings").PASSWORD_HASHERS = FAST_HASHERS


@pytest.fixture
def world(request, db) -> World:
    """The shared world; marked `cloud_connector_on`, with Cloud Connector on for its home
    merchant (tests/world.py)."""
    built = build_world()
    if request.node.get_closest_marker("cloud_connector_on"):
        cloud_connector_on(built)
    return built


def _deadlocked(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, OperationalError) and "deadlock detected" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


@pytest.fixture(scope="session", autouse=True)
def flush_survives_the_live_servers_writes():
    """The live server keeps writing between tests (its heartbeat and sweep, the detach of
    sockets a test just closed). On PostgreSQL the flush after a transactional test (one
    TRUNCATE of every table) can lose a deadlock against such a write; PostgreSQL rolls the
    TRUNCATE back, and it is simply run again."""
    original = TransactionTestCase._fixture_teardown

    def teardown(self) -> None:
        for attempt in range(FLUSH_ATTEMPTS):
            try:
                return original(self)
            except Exception as error:  # re-raised unless it is a deadlock
                if attempt == FLUSH_ATTEMPTS - 1 or not _deadlocked(error):
                    raise
                print(f"flush after {self} lost a deadlock against the live server; running it again")

    TransactionTestCase._fixture_teardown = teardown
    yield
    TransactionTestCase._fixture_teardown = original


@pytest.fixture(scope="session")
def live_server_process(django_db_setup, django_db_blocker, tmp_path_factory) -> LiveServer:
    """One daphne process for the whole session, on the test database."""
    server = start_server(tmp_path_factory.mktemp("live"))
    yield server
    server.stop()


@pytest.fixture
def live(live_server_process: LiveServer, transactional_db) -> LiveServer:
    """The live server, for a test whose data is committed so that the server sees it."""
    if live_server_process.process.poll() is not None:
        pytest.fail(f"the live server died:\n{live_server_process.log()}")
    return live_server_process
