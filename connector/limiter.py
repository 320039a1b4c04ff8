"""The limit on failed registrations.

Only credential failures (invalid_client) count: a refusal for good credentials (device
disabled, unknown device...) guesses nothing. They count per client id and source
address, so that one terminal with a wrong secret behind a shop's NAT locks out itself
and not the other terminals of the shop: FAILED_REGISTRATION_LIMIT per window for a
client id from an address, whatever secret it then sends. A higher bound per address,
FAILED_REGISTRATION_ADDRESS_LIMIT, stops one address spraying many client ids; while it
holds, only a secret verified already (remembered by this process, or a client id that
registered from this address within VERIFIED_REGISTRATION_TTL) still registers. A token
names no client until it is found, so its failures count against the address alone,
and a valid token always registers. Windows are aligned on the clock
(failure_counts.window_bucket), so that a refusal can say when to come back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from accounts import failure_counts
from connector.conf import connector_settings


@dataclass(frozen=True)
class RegistrationLimits:
    """Seconds until a refused registration may be tried again (None: not refused), for the
    client id from the address, and for the address as a whole."""

    client: int | None
    address: int | None


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def _failure_key(address: str, client_id: str | None, *, window_number: int) -> str:
    """The failure counter of an address (client_id None) or of a client id from it."""
    if client_id is None:
        return f"cc-reg-fail:a:{_digest(address)}:{window_number}"
    return f"cc-reg-fail:c:{_digest(address + '|' + client_id)}:{window_number}"


def _failure_keys(address: str, client_id: str | None) -> tuple[str, str | None, int, int]:
    """The address's counter, the client id's (None for a token), the window and its seconds left."""
    window = connector_settings.FAILED_REGISTRATION_WINDOW
    number, left = failure_counts.window_bucket(window)
    client_key = None if client_id is None else _failure_key(address, client_id, window_number=number)
    return _failure_key(address, None, window_number=number), client_key, window, left


def registration_limited(*, address: str, client_id: str | None) -> RegistrationLimits:
    address_key, client_key, _window, left = _failure_keys(address, client_id)
    counted = failure_counts.counts([address_key] + ([client_key] if client_key else []))
    client_over = client_key is not None and counted.get(client_key, 0) >= connector_settings.FAILED_REGISTRATION_LIMIT
    address_over = counted.get(address_key, 0) >= connector_settings.FAILED_REGISTRATION_ADDRESS_LIMIT
    return RegistrationLimits(client=left if client_over else None, address=left if address_over else None)


def registration_failure_record(*, address: str, client_id: str | None) -> None:
    address_key, client_key, window, _left = _failure_keys(address, client_id)
    for key in (address_key, client_key):
        if key is not None:
            failure_counts.record(key, window=window)


def registration_failed(*, address: str, client_id: str | None) -> int | None:
    """Count a credential failure of a client id (None: a token) from an address. If they
    were limited already, the seconds to wait instead: that failure is answered 429, and
    not counted."""
    limits = registration_limited(address=address, client_id=client_id)
    wait = limits.client or limits.address
    if wait is not None:
        return wait
    registration_failure_record(address=address, client_id=client_id)
    return None


def _verified_key(address: str, client_id: str) -> str:
    return f"cc-reg-ok:{_digest(address + '|' + client_id)}"


def registration_verified(*, address: str, client_id: str) -> bool:
    """Did this client id register from this address, its secret checked, lately?"""
    return bool(failure_counts.counts([_verified_key(address, client_id)]))


def registration_verified_record(*, address: str, client_id: str) -> None:
    # A counter whose presence is the mark: it lives VERIFIED_REGISTRATION_TTL from the first
    # verified registration, and the next one after that sets it again.
    failure_counts.record(_verified_key(address, client_id), window=connector_settings.VERIFIED_REGISTRATION_TTL)
