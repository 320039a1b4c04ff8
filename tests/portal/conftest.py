"""The portal's tests: the personas of tests/world.py, each signed in with a test client."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.test import Client

from accounts.models import User


@pytest.fixture(autouse=True)
def clear_login_throttle(settings):
    """The throttle counts in the cache, which outlives a test: each test gets an empty
    in-memory cache of its own (clearing a Redis cache would flush a database that the
    channel layer shares). test_auth checks the configured cache separately."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "portal"}}
    cache.clear()
    yield
    cache.clear()


def client_for(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client
