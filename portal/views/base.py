"""What every portal view shares: sign-in, the caller's Principal, scoped fetching, and the
translation of domain errors into answers (403 for a refused write, 404 for out of scope)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.cache import never_cache

from accounts.errors import NotAllowed, NotFound
from accounts.permissions import Kind, Refusal, write_refusal
from accounts.scope import Level, Principal, principal_for_user

READ_ONLY_MESSAGE = "Your role is read-only: you can look, but not change anything."
# What the services answer to the same refusal (accounts.services.require_authority).
ABOVE_LEVEL_MESSAGE = "Your role may not change this."


def principal_of(request: HttpRequest) -> Principal:
    if not hasattr(request, "_portal_principal"):
        request._portal_principal = principal_for_user(request.user)
    return request._portal_principal


def to_login(request: HttpRequest) -> HttpResponse:
    if request.headers.get("HX-Request"):
        # A polling fragment must not swap the login page into a table: make htmx reload
        # the whole page at the sign-in form instead.
        page = request.headers.get("HX-Current-URL") or "/"
        response = HttpResponse(status=204)
        response["HX-Redirect"] = f"{settings.LOGIN_URL}?next={quote(_path_of(page))}"
        return response
    return redirect(f"{settings.LOGIN_URL}?next={quote(request.get_full_path())}")


def _path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def portal_view(view: Callable) -> Callable:
    """Sign-in required, never cached (pages may hold secrets), domain errors translated."""

    @functools.wraps(view)
    @never_cache
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_authenticated:
            return to_login(request)
        try:
            return view(request, *args, **kwargs)
        except NotAllowed as error:
            raise PermissionDenied(error.message) from None
        except NotFound:
            raise Http404("Not found") from None

    return wrapper


def require_write(request: HttpRequest, kind: Kind, *, above_level: str = ABOVE_LEVEL_MESSAGE) -> Principal:
    """The caller's principal, if the write table (accounts.permissions) lets it write
    objects of `kind`; otherwise 403, with `above_level` when only its level is the reason."""
    principal = principal_of(request)
    refusal = write_refusal(principal, kind)
    if refusal is Refusal.READ_ONLY:
        raise PermissionDenied(READ_ONLY_MESSAGE)
    if refusal is Refusal.ABOVE_LEVEL:
        raise PermissionDenied(above_level)
    return principal


def require_level(request: HttpRequest, level: Level) -> Principal:
    """Pages of a level (e.g. applications: merchant aggregators) answer 404 below it."""
    principal = principal_of(request)
    if principal.level > level:
        raise Http404("Not found")
    return principal


def scoped_get(queryset: QuerySet, pk: int) -> Model:
    """One object from a scope selector's queryset; out of scope is not found."""
    obj = queryset.filter(pk=pk).first()
    if obj is None:
        raise Http404("Not found")
    return obj
