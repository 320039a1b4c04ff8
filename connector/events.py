"""Domain events that reach live sockets: sent after the transaction commits.

Service functions call these inside their transaction; the database change (ending a
session) happens there, and the channel-layer messages that make consumers close their
sockets go out on commit, so no consumer acts on a change that was rolled back.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import QuerySet

from connector import groups


def devices_changed(*, devices: QuerySet, deleted: bool = False) -> None:
    """Some devices may have become unusable: end their live sessions (close 4410)."""
    from connector.services import usable_devices
    from connector.sessions import sessions_end

    if deleted:
        affected = devices
    else:
        affected = devices.exclude(pk__in=usable_devices(devices).values("pk"))
    sessions_end(device_ids=list(affected.values_list("pk", flat=True)), reason="device_unusable")


def credential_revoked(*, application_id: int) -> None:
    """A credential was deleted, rotated or lost what it needs: its tokens are gone.

    Its pos-listener sockets close with 4401 and its session sockets with 4410. Once the
    change is committed, the sessions it claimed end if the credential itself is gone (it
    is deleted after this call, and deleting it clears `claimed_by`, so they are noted
    now), and its claims are released if it can no longer reach Cloud Connector.
    """
    from connector.models import DeviceSession
    from connector.sessions import credential_claims_settle

    claimed = list(
        DeviceSession.objects.filter(claimed_by_id=application_id)
        .exclude(state=DeviceSession.State.ENDED)
        .values_list("pk", flat=True)
    )
    groups.send_after_commit(groups.credential_groups(application_id), {"type": "credential.revoked"})
    transaction.on_commit(lambda: credential_claims_settle(application_id=application_id, session_ids=claimed))


def token_revoked(*, application_id: int, token_checksum: str) -> None:
    """One access token of a credential was revoked: the sockets that authenticated with it
    close (each of the credential's sockets compares the checksum with its own token's)."""
    message = {"type": "token.revoked", "token_checksum": token_checksum}
    groups.send_after_commit(groups.credential_groups(application_id), message)
