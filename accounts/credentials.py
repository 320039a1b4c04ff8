"""Bearer tokens: from a raw access token to the principal it acts for.

Used alike by the REST API's authentication and by the relay's consumers. Tokens are
looked up by their SHA-256 checksum, never by value.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.hashers import check_password, make_password
from django.utils import timezone
from oauth2_provider.models import AccessToken
from oauth2_provider.settings import oauth2_settings

from accounts.prepared import Prepared
from accounts.scope import (
    Principal,
    application_row,
    application_row_paths,
    principal_from_application_row,
    row_reaches_terminals,
)

SCOPE_CLOUD_CONNECTOR = "cloud-connector"
SCOPE_PROVISIONING = "provisioning"


@dataclass(frozen=True)
class BearerAuth:
    principal: Principal
    application_id: int
    client_id: str
    token_checksum: str
    scopes: frozenset[str]
    expires: datetime
    # Whether the credential may reach terminals now (accounts.scope.row_reaches_terminals),
    # read in the same query: the relay authenticates on every connect and request.
    reaches_terminals: bool = False


def token_checksum(raw_token: str) -> str:
    return hashlib.sha256(raw_token.encode("utf-8")).hexdigest()


_unknown_client_hash: list[str] = []


def unknown_client_secret_check(provided: str) -> None:
    """Spend on a secret presented with an unknown client id what checking a real client's
    secret costs (the client secrets' own hasher, accounts.hashers), so that neither the
    time taken nor the CPU spent tells which client ids exist."""
    if not _unknown_client_hash:
        secret = secrets.token_urlsafe(16)
        try:
            _unknown_client_hash.append(make_password(secret, hasher=oauth2_settings.CLIENT_SECRET_HASHER))
        except ValueError:  # that hasher is not among PASSWORD_HASHERS: the default one
            _unknown_client_hash.append(make_password(secret))
    check_password(provided, _unknown_client_hash[0])


def bearer_from_header(value: str | bytes | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, or None."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def _token_query(_shape: str, *, checksum: str):
    return AccessToken.objects.filter(token_checksum=checksum, application__isnull=False).values(
        "token_checksum", "scope", "expires", **application_row_paths("application__")
    )[:1]


_token_rows = Prepared(_token_query, required=["checksum"])


def authenticate_bearer(raw_token: str) -> BearerAuth | None:
    """The principal behind a live access token, or None if it is unknown, expired or revoked.

    One query (prepared: accounts.prepared): the token with its application, the
    application's owner and the nodes above it (accounts.scope.APPLICATION_ROW).
    """
    rows = _token_rows.rows("token", checksum=token_checksum(raw_token))
    row = rows[0] if rows else None
    if row is None or row["expires"] <= timezone.now():
        return None
    application = application_row(row)
    return BearerAuth(
        principal=principal_from_application_row(application),
        application_id=application["id"],
        client_id=application["client_id"],
        token_checksum=row["token_checksum"],
        scopes=frozenset(row["scope"].split()),
        expires=row["expires"],
        reaches_terminals=row_reaches_terminals(application),
    )
