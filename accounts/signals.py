"""What accounts announces when a credential loses what it had. Sent here, never handled here.

The relay subscribes (connector.events, connected in ConnectorConfig.ready) to close the
sockets and end the sessions that relied on what was lost; accounts works, and imports
nothing of the relay, without it.

Each signal is sent with `Signal.send`: synchronously, inside the sender's transaction, at
the point where the relay must act, so ordering and atomicity are the sender's. A receiver's
database writes belong to that transaction and roll back with it; an exception in a receiver
propagates and rolls the whole write back; whatever a receiver tells live sockets, it defers
itself with `transaction.on_commit`, so that no socket acts on a change that was rolled back.
"""

from __future__ import annotations

from django.dispatch import Signal

# Sent by accounts.services.credential_revoke_tokens (a credential deleted, rotated, or a
# Cloud API application that lost what Cloud Connector needs), with sender=Application,
# inside the transaction: after the credential's row is locked and its tokens are deleted,
# before the credential itself is deleted. Arguments: application_id (int), reason (str,
# the end reason of the sessions it registered: "credential_revoked", "credential_deleted",
# "secret_rotated").
credential_revoked = Signal()

# Sent by accounts.services.credential_rotate, with sender=Application, inside the
# transaction, before the new secret is saved. Arguments: previous_hash (str, the stored
# hash of the secret being replaced).
secret_replaced = Signal()

# Sent by accounts.oauth.access_token_revoke (RFC 7009), with sender=AccessToken, inside the
# transaction, after the token was revoked. Arguments: application_id (int),
# token_checksum (str, the checksum of the revoked token).
token_revoked = Signal()
