"""Who is calling the relay: a store POS or a Cloud API application that has everything
Cloud Connector needs (provisioning clients never reach a terminal), authenticated by an
access token with the `cloud-connector` scope, or, for a terminal's registration only, by
client id and secret. A secret check is remembered a few minutes (`secret_matches`)."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field

from django.contrib.auth.hashers import check_password, identify_hasher
from django.utils.crypto import constant_time_compare

from accounts.credentials import SCOPE_CLOUD_CONNECTOR, authenticate_bearer, unknown_client_secret_check
from accounts.models import Application
from accounts.prepared import Prepared
from accounts.scope import (
    Principal,
    application_row,
    application_row_paths,
    principal_from_application_row,
    row_reaches_terminals,
)
from connector.errors import InsufficientScope, InvalidClient, InvalidToken


@dataclass(frozen=True)
class Caller:
    """An authenticated POS credential or Cloud API application, or, for a terminal's
    registration only, the verified client certificate enrolled for it (v1.1 §15: no
    application then, and `principal` is the device's store)."""

    principal: Principal
    application_id: int | None
    client_id: str
    token_checksum: str | None = None
    # A registration with client credentials: the stored hash its secret was checked
    # against, checked again when the session is written (registrations._credential_still_holds).
    secret_hash: str | None = field(default=None, repr=False)
    # A registration by certificate: its SHA-256 fingerprint, the identity the session keeps
    # (DeviceSession.registered_fingerprint) and its device sockets must present again.
    fingerprint: str = ""


def caller_from_bearer(raw_token: str | None) -> Caller:
    """The caller behind an access token, or InvalidToken / InsufficientScope (one query)."""
    bearer = authenticate_bearer(raw_token) if raw_token else None
    if bearer is None:
        raise InvalidToken()
    if SCOPE_CLOUD_CONNECTOR not in bearer.scopes:
        raise InsufficientScope()
    if not bearer.reaches_terminals:
        raise InsufficientScope("This credential may not use Cloud Connector.")
    return Caller(
        principal=bearer.principal,
        application_id=bearer.application_id,
        client_id=bearer.client_id,
        token_checksum=bearer.token_checksum,
    )


_SECRET_CACHE_SECONDS = 300
_secret_cache: dict[tuple, float] = {}
_secret_cache_lock = threading.Lock()


@dataclass(frozen=True)
class ClientRecord:
    """What a registration needs of an OAuth2 client, read from the database in one query:
    its stored secret and, if it may use Cloud Connector, the caller it stands for."""

    application_id: int
    stored_secret: str
    caller: Caller | None


def _client_query(_shape: str, *, client_id: str):
    return Application.objects.filter(client_id=client_id).values("client_secret", **application_row_paths())[:1]


_client_rows = Prepared(_client_query, required=["client_id"])


def client_lookup(*, client_id: str) -> ClientRecord | None:
    if "\x00" in client_id:
        return None  # PostgreSQL refuses a NUL byte in a parameter, and no client id holds one
    rows = _client_rows.rows("client", client_id=client_id)
    row = rows[0] if rows else None
    if row is None:
        return None
    application = application_row(row)
    caller = None
    if row_reaches_terminals(application):
        caller = Caller(
            principal=principal_from_application_row(application),
            application_id=application["id"],
            client_id=application["client_id"],
            secret_hash=row["client_secret"],
        )
    return ClientRecord(application_id=application["id"], stored_secret=row["client_secret"], caller=caller)


def _secret_key(provided: str, stored: str) -> tuple[str, str]:
    return (stored, hashlib.sha256(provided.encode()).hexdigest())


def secret_remembered(provided: str, stored: str | None) -> bool:
    """Did this secret match this stored hash a moment ago? Cheap: no hashing beyond one
    SHA-256, so it may run anywhere (see `secret_matches`)."""
    if stored is None:
        return False
    key = _secret_key(provided, stored)
    with _secret_cache_lock:
        return _secret_cache.get(key, 0) > time.monotonic()


def secret_matches(provided: str, stored: str | None) -> bool:
    """django-oauth-toolkit's own check (hashed or not), remembered for a few minutes. No
    database: the relay runs it in a worker thread of its own, off the database threads.

    Terminals register on every reconnect and a hashed secret costs a PBKDF2 run; a fleet
    coming back after an outage would burn the CPU. The memo is keyed by the stored hash,
    so a rotated secret misses it at once. With no stored secret (unknown client id) it
    spends the time a real check would, so that timing does not reveal client ids.
    """
    if stored is None:
        unknown_client_secret_check(provided)
        return False
    if secret_remembered(provided, stored):
        return True
    try:
        identify_hasher(stored)
        matches = check_password(provided, stored)
    except ValueError:
        matches = constant_time_compare(provided, stored)
    if matches:
        with _secret_cache_lock:
            if len(_secret_cache) > 10_000:
                _secret_cache.clear()
            _secret_cache[_secret_key(provided, stored)] = time.monotonic() + _SECRET_CACHE_SECONDS
    return matches


def secret_forget(*, stored: str) -> None:
    """Forget every secret remembered for a stored hash that a rotation replaced. Another
    process may remember it a while longer, harmlessly: its lookups return the new hash,
    and a registration checked against the old one is refused when its session is written."""
    with _secret_cache_lock:
        for key in [key for key in _secret_cache if key[0] == stored]:
            del _secret_cache[key]


def caller_from_client_credentials(*, client_id: str, client_secret: str) -> Caller:
    """The caller named by `custom_registration_data`, or InvalidClient (all in one go; the
    relay runs the steps apart to keep the secret check off the database threads)."""
    record = client_lookup(client_id=client_id)
    return record_caller(record, secret_ok=secret_matches(client_secret, record.stored_secret if record else None))


def record_caller(record: ClientRecord | None, *, secret_ok: bool) -> Caller:
    """The caller of a client whose secret was checked, or InvalidClient."""
    if record is None or not secret_ok:
        raise InvalidClient()
    if record.caller is None:
        raise InvalidClient("This client may not use Cloud Connector.")
    return record.caller
