"""The audit log: every service function records who did what to which object."""

from __future__ import annotations

from typing import Any

from django.db import models

from accounts.models import AuditEntry
from accounts.prepared import insert
from accounts.scope import Principal


def audit_record(
    *,
    actor: Principal,
    action: str,
    obj: models.Model,
    tenant_id: int | None,
    data: dict[str, Any] | None = None,
) -> AuditEntry:
    # Inserted with SQL built once (accounts.prepared.insert): the relay records a session's
    # start and its claims on its busiest paths.
    return insert(
        AuditEntry(
            actor_user_id=actor.user_id,
            actor=actor.label[:200],
            action=action,
            object_type=obj._meta.model_name,
            object_id=str(obj.pk or ""),
            object_repr=str(obj)[:200],
            tenant_id=tenant_id,
            data=data or {},
        )
    )
