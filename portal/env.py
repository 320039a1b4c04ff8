"""Typed readers of the environment for portal/settings.py.

Each takes the variable's name and a default; `NAME_FILE` may name a file holding the value
(for secrets). A value that cannot be read as its type is an ImproperlyConfigured error: a
setting silently left at its default would hide the operator's typo.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured


def env_str(name: str, default: str = "") -> str:
    """A string from the environment; `NAME_FILE` names a file holding it (secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = env_str(name)
    if not value:
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean, not {value!r}")


def env_int(name: str, default: int) -> int:
    value = env_str(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from None


def env_float(name: str, default: float) -> float:
    """A number of seconds (or hours) that may have a fraction: `0.5`."""
    value = env_str(name)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ImproperlyConfigured(f"{name} must be a finite number of at least 0, not {value!r}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = env_str(name)
    if not value:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_rate(name: str, default: str) -> str:
    """A request rate such as `1200/min` (DRF's syntax: per s, min, hour or day)."""
    value = env_str(name) or default
    if not re.fullmatch(r"[1-9]\d*/(s|sec|second|m|min|minute|h|hour|d|day)", value.strip()):
        raise ImproperlyConfigured(f"{name} must be a rate such as 1200/min, not {value!r}")
    return value.strip()


def env_seconds(name: str, default: float) -> float:
    """A short timeout: more than 0 and at most 60 seconds, a fraction allowed."""
    value = env_str(name)
    try:
        seconds = float(value) if value else default
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number of seconds, not {value!r}") from None
    if not 0 < seconds <= 60:
        raise ImproperlyConfigured(f"{name} must be more than 0 and at most 60 seconds, not {value!r}")
    return seconds
