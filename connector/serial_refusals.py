"""Refusals of a device serial number that is taken: one neutral answer, counted per
caller and audited.

A make and serial is unique within a tenant, but the device holding it may lie outside the
caller's scope (another merchant aggregator's estate). So every refusal says the same
thing, `REFUSED`, whoever holds the serial, and a caller that keeps hitting taken serials
is rate limited: after `SERIAL_REFUSAL_LIMIT` refusals in a `SERIAL_REFUSAL_WINDOW`
(connector.conf) every further attempt to create a device or change a
device's make or serial answers RateLimited until the window closes, whether the serial
is free or not, so that the answer stops telling taken from free. Each refusal and each
attempt refused for the limit is written to the audit log (`device.serial_refused`,
with the make and serial tried and the outcome).

The counter is the cache's (accounts.failure_counts: shared through Redis when REDIS_URL
is set; it fails open while the cache is unreachable).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from accounts import failure_counts
from accounts.errors import Invalid, RateLimited
from accounts.models import AuditEntry
from accounts.scope import Principal
from connector.conf import connector_settings
from connector.models import SERIAL_REFUSED as REFUSED

AUDIT_ACTION = "device.serial_refused"


def caller_key(actor: Principal) -> str:
    """Who is counted: the person, else the credential (a provisioning client), else the
    principal's label (the system and scripts)."""
    if actor.user_id is not None:
        return f"user:{actor.user_id}"
    if actor.application_id is not None:
        return f"app:{actor.application_id}"
    return f"label:{actor.label}"


def _counter(actor: Principal) -> tuple[str, int, int]:
    """The caller's counter key in the current window, the window and the seconds it has left."""
    window = connector_settings.SERIAL_REFUSAL_WINDOW
    number, left = failure_counts.window_bucket(window)
    digest = hashlib.sha256(caller_key(actor).encode()).hexdigest()[:32]
    return f"serial-refused:{digest}:{number}", window, left


def retry_after(*, actor: Principal) -> int | None:
    """Seconds until the caller may try serials again, or None when it may now."""
    key, _window, left = _counter(actor)
    refused = failure_counts.counts([key]).get(key, 0)
    return left if refused >= connector_settings.SERIAL_REFUSAL_LIMIT else None


def refusal_count(*, actor: Principal, refusals: int = 1) -> None:
    key, window, _left = _counter(actor)
    for _ in range(refusals):
        failure_counts.record(key, window=window)


@dataclass
class Attempt:
    """A refused attempt as the audit log records it."""

    actor: Principal
    tenant_id: int | None
    make: str
    serial: str
    outcome: str  # "refused" or "rate_limited"
    object_id: str = ""
    object_repr: str = ""
    entry_id: int | None = field(default=None, compare=False)


class SerialRefused(Invalid):
    """The serial number is taken (by a device in or out of the caller's scope)."""

    def __init__(self, attempt: Attempt) -> None:
        super().__init__({"serial": [REFUSED]})
        self.attempt = attempt


class SerialRefusalsLimited(RateLimited):
    """Too many refused serial numbers; try again later."""

    def __init__(self, attempt: Attempt, *, retry_after: int) -> None:
        super().__init__(
            f"Too many refused serial numbers; try again in {retry_after} seconds.", retry_after=retry_after
        )
        self.attempt = attempt


def refusal_audit(attempt: Attempt) -> None:
    """Write the attempt to the audit log, unless it is there already. A service records
    its refusal once its own transaction has rolled back; a caller whose own transaction
    rolls back afterwards (the admin's change form) calls this again, and only then is the
    entry written a second time."""
    if attempt.entry_id is not None and AuditEntry.objects.filter(pk=attempt.entry_id, action=AUDIT_ACTION).exists():
        return
    entry = AuditEntry.objects.create(
        actor_user_id=attempt.actor.user_id,
        actor=attempt.actor.label[:200],
        action=AUDIT_ACTION,
        object_type="device",
        object_id=attempt.object_id,
        object_repr=attempt.object_repr[:200],
        tenant_id=attempt.tenant_id,
        data={"make": attempt.make, "serial": attempt.serial, "outcome": attempt.outcome},
    )
    attempt.entry_id = entry.pk
