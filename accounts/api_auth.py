"""REST API authentication by bearer token (from the Authorization header only)."""

from __future__ import annotations

from dataclasses import dataclass

from rest_framework import authentication, exceptions

from accounts.credentials import BearerAuth, authenticate_bearer, bearer_from_header


@dataclass(frozen=True)
class TokenUser:
    """Stands in for `request.user` on a token request; `request.auth` is the BearerAuth."""

    bearer: BearerAuth
    is_authenticated: bool = True
    is_active: bool = True
    is_staff: bool = False
    is_superuser: bool = False
    pk: None = None

    def __str__(self) -> str:
        return self.bearer.principal.label


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request)
        if not header:
            return None
        if not header.lower().startswith(b"bearer"):
            return None
        raw = bearer_from_header(header)
        if raw is None:
            raise exceptions.AuthenticationFailed("Malformed Authorization header; expected 'Bearer <token>'.")
        bearer = authenticate_bearer(raw)
        if bearer is None:
            raise exceptions.AuthenticationFailed("The access token is invalid, expired or revoked.")
        return TokenUser(bearer=bearer), bearer

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'
