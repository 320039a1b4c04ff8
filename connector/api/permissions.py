"""Who is calling the REST API, and may they do this.

Every view asks `principal_of(request)` and nothing else: a bearer token with the
`provisioning` scope acts for its credential's principal (a provisioning client: its whole
tenant); a portal session acts for its user. What lies outside the principal is never
fetched (the scope selectors of accounts/scope.py), so it answers 404; what the principal
can see but may not change answers 403.
"""

from __future__ import annotations

from django.http import HttpRequest
from rest_framework import permissions
from rest_framework.request import Request

from accounts.credentials import SCOPE_PROVISIONING, BearerAuth
from accounts.permissions import Kind, Refusal, write_refusal
from accounts.scope import NOBODY, Principal, principal_for_user

_CACHE_ATTR = "_cloud_connector_principal"


def principal_of(request: Request | HttpRequest) -> Principal:
    """The principal a request acts for; NOBODY when it is not authenticated."""
    cached = getattr(request, _CACHE_ATTR, None)
    if cached is not None:
        return cached
    principal = _resolve(request)
    setattr(request, _CACHE_ATTR, principal)
    return principal


def _resolve(request: Request | HttpRequest) -> Principal:
    auth = getattr(request, "auth", None)
    if isinstance(auth, BearerAuth):
        return auth.principal if SCOPE_PROVISIONING in auth.scopes else NOBODY
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return NOBODY
    return principal_for_user(user)


REFUSAL_MESSAGES = {
    Refusal.READ_ONLY: "Your role is read-only; it may not change anything.",
    Refusal.ABOVE_LEVEL: "This object is managed above your level; you may not change it.",
}


def authority_refusal(principal: Principal, *, kind: Kind) -> str | None:
    """Why the principal may not create, change or delete an object of `kind`, or None if it
    may: the write table of accounts.permissions, worded for an API client."""
    refusal = write_refusal(principal, kind)
    return None if refusal is None else REFUSAL_MESSAGES[refusal]


class ProvisioningAccess(permissions.BasePermission):
    """Authenticated, by a token with the `provisioning` scope when by token, and with the
    authority to write where the request writes.

    Creates are refused at once (403); writes on an object only once the object was found in
    the caller's scope, so that outside the scope it stays a 404. The view names the kind of
    object the action writes (`write_kind()`); the write table says who may."""

    message = "You are not allowed to do that."

    def has_permission(self, request: Request, view) -> bool:
        if request.user is None or not request.user.is_authenticated:
            return False
        if isinstance(request.auth, BearerAuth) and SCOPE_PROVISIONING not in request.auth.scopes:
            self.message = f"This access token lacks the '{SCOPE_PROVISIONING}' scope."
            return False
        if request.method not in permissions.SAFE_METHODS and not getattr(view, "detail", False):
            return self._may_write(request, view)
        return True

    def has_object_permission(self, request: Request, view, obj) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        return self._may_write(request, view)

    def _may_write(self, request: Request, view) -> bool:
        refusal = authority_refusal(principal_of(request), kind=view.write_kind())
        if refusal:
            self.message = refusal
            return False
        return True
