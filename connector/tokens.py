"""The device JWT: what a terminal presents on its device sockets after registering.

- HS256 with the keys of `connector_settings.JWT_KEYS` (`{kid: secret}`): the first key
  signs, every key verifies, and the header's `kid` picks the key. Rotation: put the new
  key first and keep the old one until the old tokens have expired (`JWT_LIFETIME`).
- Claims: `sid` (the session id) and `did` (the device id), plus `iat`, `exp`, `aud`
  and `iss` so that a token minted for something else with the same key is refused.
- A token is accepted for one session only: presenting it on another session's URL is
  refused exactly like a forged one. Only the connect of a device socket checks it; a
  socket that is open stays open when its token expires.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from connector.conf import connector_settings

ALGORITHM = "HS256"
AUDIENCE = "cloud-connector/device"
ISSUER = "cloud-connector"
LEEWAY_SECONDS = 5


class InvalidDeviceToken(Exception):
    """The device token is absent, forged, expired or for another session."""


@dataclass(frozen=True)
class DeviceClaims:
    session_id: str
    device_id: int
    expires_at: int


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int
    expires_at: int


def _keys() -> dict[str, str]:
    keys = connector_settings.JWT_KEYS
    if not keys:
        raise RuntimeError("CLOUD_CONNECTOR['JWT_KEYS'] is empty: the relay cannot sign device tokens")
    return keys


def lifetime() -> int:
    return connector_settings.JWT_LIFETIME


def device_token_issue(*, session_id: str, device_id: int, now: float | None = None) -> IssuedToken:
    kid, secret = next(iter(_keys().items()))
    issued_at = int(time.time() if now is None else now)
    expires_in = lifetime()
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sid": session_id,
        "did": device_id,
        "iat": issued_at,
        "exp": issued_at + expires_in,
    }
    token = jwt.encode(payload, secret, algorithm=ALGORITHM, headers={"kid": kid})
    return IssuedToken(token=token, expires_in=expires_in, expires_at=issued_at + expires_in)


def device_token_verify(token: str | None, *, session_id: str) -> DeviceClaims:
    """The claims of a valid token for `session_id`, or InvalidDeviceToken."""
    if not token:
        raise InvalidDeviceToken("No device token.")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidDeviceToken("The device token is malformed.") from None
    secret = _keys().get(header.get("kid")) if isinstance(header.get("kid"), str) else None
    if secret is None or header.get("alg") != ALGORITHM:
        raise InvalidDeviceToken("The device token was not signed by this service.")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "sid", "did", "aud", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidDeviceToken("The device token has expired; register again.") from None
    except jwt.PyJWTError:
        raise InvalidDeviceToken("The device token is invalid.") from None
    if claims["sid"] != session_id or not isinstance(claims["did"], int):
        raise InvalidDeviceToken("The device token is for another session.")
    return DeviceClaims(session_id=claims["sid"], device_id=claims["did"], expires_at=int(claims["exp"]))
