"""The portal's few vendored assets, served by the application itself.

Daphne and uvicorn serve no static files, and a deployment may have no web server in front
that does; the portal has a stylesheet, a script and htmx, so it serves them itself, with
a content hash in the ETag and a day of caching. A front proxy may still serve
STATIC_ROOT (after collectstatic) at STATIC_URL and never reach this view."""

from __future__ import annotations

import hashlib
import mimetypes
from functools import lru_cache
from pathlib import Path

from django.contrib.auth.decorators import login_not_required
from django.contrib.staticfiles import finders
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotModified
from django.views.decorators.http import require_safe

MAX_AGE = 86400


@lru_cache(maxsize=64)
def _asset(path: str) -> tuple[bytes, str, str] | None:
    if ".." in Path(path).parts:
        return None
    found = finders.find(path)
    if not found:
        return None
    content = Path(found).read_bytes()
    content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type in {"application/javascript", "text/javascript"}:
        content_type += "; charset=utf-8"
    return content, content_type, '"' + hashlib.sha256(content).hexdigest()[:32] + '"'


@login_not_required  # the sign-in page needs its stylesheet too
@require_safe
def static_asset(request: HttpRequest, path: str) -> HttpResponse:
    asset = _asset(path)
    if asset is None:
        raise Http404("No such file")
    content, content_type, etag = asset
    if request.headers.get("If-None-Match") == etag:
        response = HttpResponseNotModified()
    else:
        response = HttpResponse(content, content_type=content_type)
    response["ETag"] = etag
    response["Cache-Control"] = f"public, max-age={MAX_AGE}"
    response["X-Content-Type-Options"] = "nosniff"
    return response


FAVICON = "portal/favicon.ico"


@login_not_required  # browsers ask for it on every page, the sign-in page and the admin's included
@require_safe
def favicon(request: HttpRequest) -> HttpResponse:
    """`/favicon.ico`: browsers request it at the site's root whatever the page links to (the
    admin's and the API browser's pages link to none), so it is answered here, not with a 404."""
    return static_asset(request, FAVICON)
