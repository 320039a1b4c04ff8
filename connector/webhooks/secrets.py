"""Signing secrets of webhook endpoints."""

from __future__ import annotations

import secrets

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh signing secret: 32 random bytes, URL-safe, prefixed so that one pasted into
    the wrong place (a log, an issue) is recognisable for what it is."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)
