"""Every view is private unless it says otherwise (portal/login_required.py).

The URL resolver is walked whole: each pattern is either left to LoginRequiredMiddleware, or
a REST API view that authenticates by itself (DRF, 401 for anonymous), or on the explicit
public list below. A view added without a decision fails here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

pytestmark = pytest.mark.django_db

# name (namespace:name) -> why anonymous visitors may open it
PUBLIC = {
    "oauth2:token": "clients authenticate with their credentials (RFC 6749)",
    "oauth2:revoke": "clients authenticate with their credentials (RFC 7009)",
    "api:schema": "the contract calls the schema the full reference",
    "api:docs": "the schema's browser",
    "api:not-found": "a JSON 404 for any other path under /api/",
    "portal:login": "sign-in",
    "portal:password_reset": "forgotten password",
    "portal:password_reset_done": "forgotten password",
    "portal:password_reset_confirm": "the link in the reset e-mail",
    "portal:password_reset_complete": "forgotten password",
    "portal:static_asset": "the sign-in page's stylesheet and script",
    "portal:favicon": "browsers ask for /favicon.ico on every page, the sign-in page included",
    "admin:login": "the admin's sign-in",
}


def patterns(resolver: URLResolver | None = None, namespace: str = "") -> Iterator[tuple[str, URLPattern]]:
    for entry in (resolver or get_resolver()).url_patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from patterns(entry, inner)
        else:
            yield f"{namespace}{entry.name}" if entry.name else f"{namespace}<{entry.pattern}>", entry


def is_public(callback) -> bool:
    return getattr(callback, "login_required", True) is False


def drf_authenticated(callback) -> bool:
    """A DRF view that lets nobody in without authentication."""
    cls = getattr(callback, "cls", None)
    if cls is None or not issubclass(cls, APIView):
        return False
    return not any(issubclass(permission, AllowAny) for permission in cls.permission_classes)


def test_every_view_is_private_drf_authenticated_or_on_the_public_list():
    seen = set()
    for name, pattern in patterns():
        seen.add(name)
        callback = pattern.callback
        if name in PUBLIC:
            assert is_public(callback), f"{name} is on the public list but needs a sign-in"
        elif drf_authenticated(callback):
            continue  # answers anonymous requests 401 itself (test below)
        else:
            assert not is_public(callback), f"{name} is public but not on the public list: decide, and say why"
    assert set(PUBLIC) <= seen, f"public list names unknown views: {set(PUBLIC) - seen}"


def test_the_login_required_middleware_is_installed():
    assert "portal.login_required.PortalLoginRequiredMiddleware" in settings.MIDDLEWARE


def dummy_kwargs(pattern: URLPattern) -> dict[str, object]:
    converters = getattr(pattern.pattern, "converters", {})
    return {name: 1 if type(converter).__name__ == "IntConverter" else "x" for name, converter in converters.items()}


def portal_private_pages() -> list[tuple[str, str]]:
    pages = []
    for name, pattern in patterns():
        if name.startswith("portal:") and name not in PUBLIC:
            pages.append((name, reverse(name, kwargs=dummy_kwargs(pattern))))
    return pages


@pytest.mark.parametrize(("name", "url"), portal_private_pages())
def test_an_anonymous_visitor_of_a_private_portal_page_is_sent_to_sign_in(client, name, url):
    response = client.get(url)
    assert response.status_code == 302, name
    assert response["Location"] == f"{settings.LOGIN_URL}?next={url}", name


def test_an_anonymous_htmx_fragment_request_gets_hx_redirect(client):
    response = client.get("/devices/rows/", HTTP_HX_REQUEST="true", HTTP_HX_CURRENT_URL="http://testserver/devices/")
    assert response.status_code == 204
    assert response["HX-Redirect"] == f"{settings.LOGIN_URL}?next=/devices/"


def test_an_anonymous_visitor_of_the_admin_is_sent_to_the_admins_sign_in(client):
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")


@pytest.mark.parametrize("path", ["/api/v1/stores/", "/api/v1/devices/1/", "/api/v1/sessions/x/"])
def test_an_anonymous_api_request_still_gets_drfs_401_json(client, path):
    response = client.get(path)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert "detail" in response.json() or "non_field_errors" in response.json()


@pytest.mark.parametrize("path", ["/accounts/login/", "/accounts/password_reset/", "/api/schema/", "/api/docs/"])
def test_the_public_pages_open_without_a_sign_in(client, path):
    assert client.get(path).status_code == 200


def test_a_view_added_without_a_decision_is_caught(settings):
    """The check itself: a public view that is not on the list fails it."""
    from django.contrib.auth.decorators import login_not_required
    from django.http import HttpResponse
    from django.urls import clear_url_caches, path

    import portal.urls

    @login_not_required
    def careless(request):
        return HttpResponse("hello")

    original = list(portal.urls.urlpatterns)
    portal.urls.urlpatterns.append(path("careless/", careless, name="careless"))
    clear_url_caches()
    try:
        with pytest.raises(AssertionError, match="careless is public but not on the public list"):
            test_every_view_is_private_drf_authenticated_or_on_the_public_list()
    finally:
        portal.urls.urlpatterns[:] = original
        clear_url_caches()


def test_a_view_without_any_check_of_its_own_is_still_private(client):
    from django.http import HttpResponse
    from django.urls import clear_url_caches, path

    import portal.urls

    def unguarded(request):
        return HttpResponse("secret")

    original = list(portal.urls.urlpatterns)
    portal.urls.urlpatterns.insert(0, path("unguarded/", unguarded, name="unguarded"))
    clear_url_caches()
    try:
        response = client.get("/unguarded/")
        assert response.status_code == 302
        assert response["Location"] == f"{settings.LOGIN_URL}?next=/unguarded/"
    finally:
        portal.urls.urlpatterns[:] = original
        clear_url_caches()
