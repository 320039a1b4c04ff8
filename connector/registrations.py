"""A terminal's registration as the device-listener runs it (contract §3): the limiter's
gate first, then the caller (a client secret is checked off the database threads, and
only when this process has not seen it match a moment ago), then `device_register`.

`device_register` is the state machine's registration (connector.sessions has the states):
a new session, or the live one again (same id, new JWT; an offline one is registered
again), its credential read once more under lock and `require_mtls` weighed; changed
endpoints go to the session's sockets after commit (`session.endpoints`). It takes the
session locks and lookups of connector.sessions, which imports nothing from here.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from oauth2_provider.models import AccessToken

from accounts import errors
from accounts.audit import audit_record
from accounts.models import Application
from accounts.prepared import insert, update
from accounts.scope import Level, Principal
from connector import groups, tokens
from connector.callers import Caller, ClientRecord, caller_from_bearer, client_lookup, record_caller, secret_remembered
from connector.certificates import certificate_for_fingerprint
from connector.errors import (
    AmbiguousTsn,
    InsufficientScope,
    InvalidClient,
    InvalidToken,
    MtlsRequired,
    RateLimited,
    UnknownDevice,
)
from connector.limiter import registration_limited, registration_verified, registration_verified_record
from connector.models import Device, DeviceCertificate, DeviceSession
from connector.selectors import device_find, device_require_usable
from connector.sessions import State, live_session_for_device, lock_live


def registration_bearer(*, address: str, raw_token: str) -> Caller:
    """The first step of a registration with an access token: the caller, or InvalidToken /
    InsufficientScope, answered RateLimited instead while the address failed too often."""
    try:
        return caller_from_bearer(raw_token)
    except (InvalidToken, InsufficientScope):
        wait = registration_limited(address=address, client_id=None).address
        if wait is not None:
            raise RateLimited(retry_after=wait) from None
        raise


def registration_client(*, address: str, client_id: str, client_secret: str) -> tuple[ClientRecord | None, bool]:
    """The first step of a registration with client credentials: the client's record (None
    for an unknown client id) and whether its secret is verified already (`secret_remembered`).
    RateLimited, before the secret is looked at, while this client id failed too often from
    this address; RateLimited while the address failed too often, unless the secret is
    verified already or this client id registered from this address before."""
    limits = registration_limited(address=address, client_id=client_id)
    if limits.client is not None:
        raise RateLimited(retry_after=limits.client)
    record = client_lookup(client_id=client_id)
    remembered = record is not None and secret_remembered(client_secret, record.stored_secret)
    if limits.address is not None and not (remembered or registration_verified(address=address, client_id=client_id)):
        raise RateLimited(retry_after=limits.address)
    return record, remembered


@dataclass(frozen=True)
class SecretToCheck:
    """A registration with client credentials that needs its secret checked (by
    `secret_matches`, off the database threads) before `device_register`."""

    record: ClientRecord | None


def device_register_with_client(
    *,
    address: str,
    client_id: str,
    client_secret: str,
    tsn: str,
    endpoints: list[str],
    local_url: str = "",
    fingerprint: str = "",
) -> Registration | SecretToCheck:
    """Registration with client credentials in one go when the secret matched a moment ago
    (`secret_remembered`: no hashing here); else what the caller needs to check it first.
    RateLimited before anything while failures limit it (`registration_client`)."""
    record, remembered = registration_client(address=address, client_id=client_id, client_secret=client_secret)
    if not remembered:
        return SecretToCheck(record)
    return device_register(
        caller=record_caller(record, secret_ok=True),
        tsn=tsn,
        endpoints=endpoints,
        local_url=local_url,
        fingerprint=fingerprint,
    )


def device_register_checked(
    *, address: str, caller: Caller, tsn: str, endpoints: list[str], local_url: str = "", fingerprint: str = ""
) -> Registration:
    """The last step of a registration whose secret was just checked: `device_register`, and
    remember that this client id verified from this address (see `registration_client`)."""
    registration = device_register(
        caller=caller, tsn=tsn, endpoints=endpoints, local_url=local_url, fingerprint=fingerprint
    )
    registration_verified_record(address=address, client_id=caller.client_id)
    return registration


def device_register_with_token(
    *, address: str, raw_token: str, tsn: str, endpoints: list[str], local_url: str = "", fingerprint: str = ""
) -> Registration:
    """Registration with an access token: RateLimited if the address failed too often,
    InvalidClient for any fault of the token (§3 answers every credential failure, tokens
    included, with invalid_client), then `device_register`."""
    try:
        caller = registration_bearer(address=address, raw_token=raw_token)
    except (InvalidToken, InsufficientScope) as error:
        raise InvalidClient(error.message) from None
    return device_register(caller=caller, tsn=tsn, endpoints=endpoints, local_url=local_url, fingerprint=fingerprint)


def device_register_with_certificate(
    *, address: str, fingerprint: str, tsn: str, endpoints: list[str], local_url: str = ""
) -> Registration:
    """Registration by a client certificate the TLS proxy verified, with no credentials (v1.1
    §15; with credentials, `device_register` weighs the certificate against their scope).
    Enrolled for the device the tsn names: registered. Enrolled for another device, or
    nowhere: InvalidClient. No address limit: no one guesses a certificate."""
    certificate = certificate_for_fingerprint(fingerprint)
    if certificate is None:
        raise InvalidClient("This client certificate is not enrolled for any device.")
    if certificate.not_after <= timezone.now():
        raise InvalidClient("This client certificate has expired.")
    device = certificate.device
    principal = Principal(
        level=Level.STORE,
        label=f"certificate:{fingerprint[:16]}",
        tenant_id=device.tenant_id,
        merchant_aggregator_id=device.merchant.merchant_aggregator_id,
        merchant_id=device.merchant_id,
        store_id=device.store_id,
        can_write=False,
    )
    try:
        named = device_find(principal=principal, tsn=tsn)
    except (UnknownDevice, AmbiguousTsn):
        named = None
    if named is None or named.pk != device.pk:
        raise InvalidClient("This client certificate is enrolled for another device.")
    caller = Caller(principal=principal, application_id=None, client_id="", fingerprint=fingerprint)
    return device_register(caller=caller, tsn=tsn, endpoints=endpoints, local_url=local_url)


# --- the state machine's registration ---------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    session_id: str
    device_id: int
    tsn: str
    endpoints: list[str]
    token: tokens.IssuedToken
    created: bool


def new_session_id() -> str:
    # 192 random bits, url-safe: the contract asks for at least 128.
    return secrets.token_urlsafe(24)


_UNREAD = object()


def device_register(
    *,
    caller: Caller,
    tsn: str,
    endpoints: list[str],
    local_url: str = "",
    fingerprint: str = "",
    now: datetime | None = None,
) -> Registration:
    """Register a terminal: its live session (same id) or a new one, and a fresh JWT;
    `local_url` its own server on the shop's network (v1.1 §14), already validated;
    `fingerprint` a verified client certificate that came with the credentials."""
    device = device_find(principal=caller.principal, tsn=tsn)
    if fingerprint:
        caller = _with_certificate(caller=caller, device=device, fingerprint=fingerprint)
    device_require_usable(device=device)
    now = now or timezone.now()
    live_session_id = getattr(device, "live_session_id", _UNREAD)
    for _attempt in range(3):
        try:
            return _register(
                caller=caller,
                device=device,
                endpoints=endpoints,
                local_url=local_url,
                now=now,
                live_session_id=live_session_id,
            )
        except IntegrityError:
            # Another registration of the same device created its session between our
            # read and our insert: the next round finds it live and reuses it.
            live_session_id = _UNREAD
            continue
    raise errors.Conflict("The device is registering concurrently; try again.")


def _with_certificate(*, caller: Caller, device: Device, fingerprint: str) -> Caller:
    """A verified certificate beside valid credentials (v1.1 §15). The device is the one the
    tsn names *in the credentials' scope*: a certificate enrolled for it binds the session
    to it too (removing it ends the session; a `require_mtls` device accepts it); enrolled
    for any other device, InvalidClient (one terminal's certificate never stands for
    another); enrolled nowhere (or expired), the credentials decide alone. The credentials'
    scope is what finds the device, never the certificate's enrolment: a certificate is no
    secret, and one enrolled by another tenant on a twin device (same make and serial) must
    not register a terminal that comes with its own tenant's credentials as that twin."""
    certificate = certificate_for_fingerprint(fingerprint)
    if certificate is None or certificate.not_after <= timezone.now():
        return caller
    if certificate.device_id != device.pk:
        raise InvalidClient("This client certificate is enrolled for another device.")
    return dataclasses.replace(caller, fingerprint=fingerprint)


def _credential_still_holds(caller: Caller) -> bool:
    """Is the credential a registration was checked with still there: its access token not
    revoked, its client secret not rotated? Read first in the registration's transaction,
    under a share lock on PostgreSQL (SQLite's writers take turns anyway): a rotation or a
    revocation either commits first, and this finds nothing, or waits for the registration
    to commit and then finds its session to end (connector.events). Without it, a secret
    checked just before a rotation (a hash check takes a while) would still register."""
    if caller.token_checksum is not None:
        model, conditions = AccessToken, {"token_checksum": caller.token_checksum}
    elif caller.secret_hash is not None:
        model, conditions = Application, {"id": caller.application_id, "client_secret": caller.secret_hash}
    elif caller.fingerprint:
        # A certificate being removed (connector.certificates) is this registration's credential.
        model, conditions = DeviceCertificate, {"fingerprint_sha256": caller.fingerprint}
    else:
        return True
    meta, quote = model._meta, connection.ops.quote_name
    where = " AND ".join(f"{quote(meta.get_field(name).column)} = %s" for name in conditions)
    lock = " FOR SHARE" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 FROM {quote(meta.db_table)} WHERE {where}{lock}", list(conditions.values()))
        return cursor.fetchone() is not None


def _mtls_required(device_id: int) -> bool:
    """Does the device accept certificate registrations only (v1.1 §15)? Read in the
    registration's transaction, after its session's lock, under a share lock on the device
    row: `device_require_mtls_set` locks the sessions, then updates the row, so a credential
    registration either reads the flag on, or commits first and has its session ended."""
    quote = connection.ops.quote_name
    lock = " FOR SHARE" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {quote('require_mtls')} FROM {quote(Device._meta.db_table)} WHERE {quote('id')} = %s{lock}",
            [device_id],
        )
        row = cursor.fetchone()
    return bool(row and row[0])


@transaction.atomic
def _register(
    *, caller: Caller, device: Device, endpoints: list[str], local_url: str, now: datetime, live_session_id: object
) -> Registration:
    if not _credential_still_holds(caller):
        raise InvalidClient()
    if live_session_id is _UNREAD:
        found = live_session_for_device(device=device, now=now)
        live_session_id = found.pk if found is not None else None
    session = None
    if live_session_id is not None:
        # Locked, and read again: it may have ended since (then it is a new session).
        session = lock_live(live_session_id, now)
    if not caller.fingerprint and _mtls_required(device.pk):
        raise MtlsRequired()
    created = session is None
    if created:
        session = DeviceSession(
            id=new_session_id(), device=device, endpoints=endpoints, local_url=local_url, jwt_expires_at=now
        )
    session.registered_by = caller.application_id
    session.registered_token = caller.token_checksum or ""
    session.registered_fingerprint = caller.fingerprint
    token = tokens.device_token_issue(session_id=session.pk, device_id=device.pk, now=now.timestamp())
    session.jwt_expires_at = now + timedelta(seconds=token.expires_in)
    if created:
        # An IntegrityError (a concurrent registration's session) rolls this transaction
        # back and device_register tries again.
        insert(session)
        audit_record(
            actor=caller.principal,
            action="device.session_start",
            obj=device,
            tenant_id=device.tenant_id,
            data={"session_id": session.pk, "endpoints": endpoints},
        )
    else:
        _reregister(session=session, endpoints=endpoints, local_url=local_url, caller=caller)
    return Registration(
        session_id=session.pk, device_id=device.pk, tsn=device.tsn, endpoints=endpoints, token=token, created=created
    )


def _reregister(*, session: DeviceSession, endpoints: list[str], local_url: str, caller: Caller) -> None:
    changes = {
        "jwt_expires_at": session.jwt_expires_at,
        "endpoints": endpoints,
        "local_url": local_url,  # the shop's network may have given the terminal another address
        # The session now stands on this registration's credential, not on the last one's.
        "registered_by": caller.application_id,
        "registered_token": caller.token_checksum or "",
        "registered_fingerprint": caller.fingerprint,
    }
    if session.state == State.OFFLINE:
        # The terminal is back: it has a fresh JWT to connect with, and the registered
        # rule (end at JWT expiry if no socket comes) replaces the grace period.
        changes.update(state=State.REGISTERED, offline_at=None, offline_until=None)
    update(DeviceSession, session.pk, **changes)
    if endpoints != session.endpoints:
        groups.send_after_commit(
            groups.session_group(session.pk), {"type": "session.endpoints", "endpoints": endpoints}
        )
