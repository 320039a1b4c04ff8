"""Domain events that reach live sockets: sent after the transaction commits.

Service functions call these inside their transaction; the database change (ending a
session) happens there, and the channel-layer messages that make consumers close their
sockets go out on commit, so no consumer acts on a change that was rolled back.

What accounts announces (accounts/signals.py: credential_revoked, secret_replaced,
token_revoked) reaches these through receivers connected in ConnectorConfig.ready
(`accounts_signals_connect`); accounts never imports the relay. The signals are sent inside
the sender's transaction, so the receivers run exactly where the calls used to.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import QuerySet

from accounts import signals
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


def credential_revoked(*, application_id: int, reason: str = "credential_revoked") -> None:
    """A credential was deleted, rotated or lost what it needs: its tokens are gone.

    Its pos-listener sockets close with 4401 and its session sockets with 4410. The
    sessions registered with its secret or one of its tokens end now (4410, `reason`): the
    secret no longer registers, and the terminals it registered must not outlive it. Once
    the change is committed, the sessions it claimed end if the credential itself is gone
    (it is deleted after this call, and deleting it clears `claimed_by`, so they are noted
    now), and its claims are released if it can no longer reach Cloud Connector.
    """
    from connector.models import DeviceSession
    from connector.sessions import credential_claims_settle, registered_sessions_end

    claimed = list(
        DeviceSession.objects.filter(claimed_by_id=application_id)
        .exclude(state=DeviceSession.State.ENDED)
        .values_list("pk", flat=True)
    )
    # Revoked first: its listeners close 4401 before they would hear `session_ended`.
    groups.send_after_commit(groups.credential_groups(application_id), {"type": "credential.revoked"})
    registered_sessions_end(application_id=application_id, reason=reason)
    transaction.on_commit(lambda: credential_claims_settle(application_id=application_id, session_ids=claimed))


def token_revoked(*, application_id: int, token_checksum: str) -> None:
    """One access token of a credential was revoked: the sockets that authenticated with it
    close (each of the credential's sockets compares the checksum with its own token's),
    and the sessions registered with it end (4410)."""
    from connector.sessions import registered_sessions_end

    registered_sessions_end(application_id=application_id, token_checksum=token_checksum, reason="token_revoked")
    message = {"type": "token.revoked", "token_checksum": token_checksum}
    groups.send_after_commit(groups.credential_groups(application_id), message)


def secret_replaced(*, previous_hash: str) -> None:
    """A credential's secret was rotated: this process forgets, at commit, that the old one
    matched (connector.callers.secret_forget)."""
    from connector.callers import secret_forget

    transaction.on_commit(lambda: secret_forget(stored=previous_hash))


def device_moved(*, device_id: int) -> None:
    """A device moved to another store: claims whose holder no longer reaches it are
    released, the holder's session sockets closing 4410."""
    from connector.sessions import claims_out_of_reach_release

    claims_out_of_reach_release(device_id=device_id)


# --- receivers of accounts' signals ---------------------------------------------------------


def on_credential_revoked(sender, *, application_id: int, reason: str, **kwargs) -> None:
    credential_revoked(application_id=application_id, reason=reason)


def on_secret_replaced(sender, *, previous_hash: str, **kwargs) -> None:
    secret_replaced(previous_hash=previous_hash)


def on_token_revoked(sender, *, application_id: int, token_checksum: str, **kwargs) -> None:
    token_revoked(application_id=application_id, token_checksum=token_checksum)


def accounts_signals_connect() -> None:
    """Subscribe the relay to accounts' signals, once (ConnectorConfig.ready)."""
    for signal, receiver in (
        (signals.credential_revoked, on_credential_revoked),
        (signals.secret_replaced, on_secret_replaced),
        (signals.token_revoked, on_token_revoked),
    ):
        signal.connect(receiver, dispatch_uid=f"{__name__}.{receiver.__name__}")
