"""A terminal's registration as the device-listener runs it (contract §3): the limiter's
gate first, then the caller (a client secret is checked off the database threads, and
only when this process has not seen it match a moment ago), then the state machine's
`device_register`.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.utils import timezone

from accounts.scope import Level, Principal
from connector.callers import Caller, ClientRecord, caller_from_bearer, client_lookup, record_caller, secret_remembered
from connector.certificates import certificate_for_fingerprint
from connector.errors import AmbiguousTsn, InsufficientScope, InvalidClient, InvalidToken, RateLimited, UnknownDevice
from connector.limiter import registration_limited, registration_verified, registration_verified_record
from connector.selectors import device_find
from connector.sessions import Registration, device_register


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
