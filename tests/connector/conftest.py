"""Fixtures of the relay's in-process tests; their helpers are in tests/connector/relay_world.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from channels.layers import channel_layers
from django.core.cache import cache

from tests.live import PrivateRedis


@pytest.fixture
def fresh_state(settings):
    """Development mode (ws:// URLs, as under `make run`), an empty cache, and a channel layer
    of the test's own.

    A new in-memory layer per test, also when REDIS_URL is set: its queues belong to the
    test's event loop. The Redis layer is built for one long-lived loop per process; with a
    new loop per test, its reader left at a test's end once kept pytest-asyncio's clean-up
    waiting forever (PostgreSQL + Redis run: a cancel the reader swallowed, since fixed in
    connector.relay.redis_connections). It is exercised on a redis-server of its test's own
    (test_redis_layer, test_redis_connections) and across real server processes
    (test_relay_e2e, test_fault_tolerance, test_redis_restart)."""
    settings.DEBUG = True
    cache.clear()
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """The URL of a redis-server of the test's own (tests.live.PrivateRedis), stopped after it."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
