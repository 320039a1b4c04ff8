from __future__ import annotations

import pytest
from django.db import OperationalError
from django.test import TransactionTestCase

from tests.live import LiveServer, start_server

FLUSH_ATTEMPTS = 5


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
            except Exception as error:  # noqa: BLE001 - only a deadlock is retried
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
