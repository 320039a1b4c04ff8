"""Every view is private unless it says otherwise (`login_not_required`).

Django's LoginRequiredMiddleware, with the portal's answers to an anonymous request instead
of its plain redirect: an htmx request gets HX-Redirect (a polling fragment must not swap
the sign-in page into a table; portal.views.base.to_login), and the admin's pages send to
the admin's own sign-in, as they always did.

The public views: the token and revoke endpoints, the REST API (DRF marks its views: it
authenticates by itself and answers 401), the OpenAPI schema and its Swagger UI, the static
assets, sign-in, and the password reset pages (Django marks its own).
tests/portal/test_private_by_default.py holds the list, so that a view added without a
decision fails there.

`/healthz`, `/readyz` and `/metrics` never reach this middleware: portal.health.HealthMiddleware
answers them before it (unauthenticated; /metrics by address and token, not by sign-in).
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.middleware import LoginRequiredMiddleware
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from portal.views.base import to_login


class PortalLoginRequiredMiddleware(LoginRequiredMiddleware):
    def handle_no_permission(self, request: HttpRequest, view_func: Callable) -> HttpResponse:
        match = request.resolver_match
        if match is not None and "admin" in match.namespaces:
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        return to_login(request)
