"""Webhook endpoints of merchant aggregators and merchants (v1.1 §16): the list, create (the
signing secret shown once), edit, delete, rotate the secret (shown once), and the delivery log
with a "Retry now" per delivery.

Pages of merchants and above: beneath a merchant they answer 404. Everything is read through
connector.webhook_endpoints' scope selector, so another merchant's endpoint is a 404 too;
writes go through its services, checked by the write table (Kind.WEBHOOK_ENDPOINT).
"""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.errors import Invalid
from accounts.permissions import Kind
from accounts.scope import Level, Principal, merchants_in_scope
from connector import webhook_endpoints as endpoints
from connector.models import WebhookEndpoint
from portal.forms import apply_domain_error
from portal.views.base import portal_view, require_level, require_write, scoped_get
from portal.webhook_forms import EVENT_LABELS, WebhookEndpointCreateForm, WebhookEndpointForm, scope_label

SECTION = "webhooks"
DELIVERIES_PER_PAGE = 25


def _endpoints(request: HttpRequest):
    principal = require_level(request, Level.MERCHANT)
    return endpoints.webhook_endpoints_in_scope(principal=principal)


def _endpoint(request: HttpRequest, pk: int) -> WebhookEndpoint:
    return scoped_get(_endpoints(request), pk)


def _writer(request: HttpRequest) -> Principal:
    require_level(request, Level.MERCHANT)
    return require_write(request, Kind.WEBHOOK_ENDPOINT)


@portal_view
def webhook_list(request: HttpRequest) -> HttpResponse:
    rows = endpoints.with_last_delivery_status(_endpoints(request)).order_by("url", "id")
    listed = [{"endpoint": endpoint, "scope": scope_label(endpoint)} for endpoint in rows]
    return render(request, "portal/webhook_list.html", {"section": SECTION, "rows": listed})


@portal_view
def webhook_create(request: HttpRequest) -> HttpResponse:
    principal = _writer(request)
    form = WebhookEndpointCreateForm(
        request.POST or None,
        aggregators=endpoints.webhook_aggregators_in_scope(principal=principal),
        merchants=merchants_in_scope(principal=principal),
    )
    if request.method == "POST" and form.is_valid():
        try:
            endpoint = endpoints.webhook_endpoint_create(
                url=form.cleaned_data["url"],
                events=form.cleaned_data["events"],
                enabled=form.cleaned_data["enabled"],
                actor=principal,
                **form.chosen(),
            )
        except Invalid as error:
            apply_domain_error(form, error)
        else:
            return secret_shown(request, endpoint=endpoint, secret=endpoint.secret, created=True)
    return render(request, "portal/webhook_form.html", {"section": SECTION, "form": form, "endpoint": None})


def secret_shown(request: HttpRequest, *, endpoint: WebhookEndpoint, secret: str, created: bool) -> HttpResponse:
    """The one response that holds the secret: rendered straight from the POST, never
    stored in the session or a message, and marked no-store by portal_view."""
    context = {"section": SECTION, "endpoint": endpoint, "secret": secret, "created": created}
    return render(request, "portal/webhook_secret.html", context)


@portal_view
def webhook_detail(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = _endpoint(request, pk)
    page = Paginator(endpoints.webhook_deliveries(endpoint=endpoint), DELIVERIES_PER_PAGE).get_page(
        request.GET.get("page")
    )
    context = {
        "section": SECTION,
        "endpoint": endpoint,
        "scope": scope_label(endpoint),
        "event_labels": [EVENT_LABELS.get(name, name) for name in endpoint.events],
        "page": page,
    }
    return render(request, "portal/webhook_detail.html", context)


@portal_view
def webhook_edit(request: HttpRequest, pk: int) -> HttpResponse:
    principal = _writer(request)
    endpoint = _endpoint(request, pk)
    initial = {"url": endpoint.url, "events": endpoint.events, "enabled": endpoint.enabled}
    form = WebhookEndpointForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            endpoints.webhook_endpoint_update(endpoint=endpoint, actor=principal, **form.cleaned_data)
        except Invalid as error:
            apply_domain_error(form, error)
        else:
            messages.success(request, "Webhook endpoint saved.")
            return redirect("portal:webhook_detail", pk=endpoint.pk)
    context = {"section": SECTION, "form": form, "endpoint": endpoint, "scope": scope_label(endpoint)}
    return render(request, "portal/webhook_form.html", context)


@portal_view
def webhook_rotate(request: HttpRequest, pk: int) -> HttpResponse:
    principal = _writer(request)
    endpoint = _endpoint(request, pk)
    if request.method == "POST":
        secret = endpoints.webhook_endpoint_rotate_secret(endpoint=endpoint, actor=principal)
        return secret_shown(request, endpoint=endpoint, secret=secret, created=False)
    return render(request, "portal/webhook_rotate.html", {"section": SECTION, "endpoint": endpoint})


@portal_view
def webhook_delete(request: HttpRequest, pk: int) -> HttpResponse:
    principal = _writer(request)
    endpoint = _endpoint(request, pk)
    if request.method == "POST":
        endpoints.webhook_endpoint_delete(endpoint=endpoint, actor=principal)
        messages.success(request, f"Webhook endpoint {endpoint.url} deleted; it receives nothing more.")
        return redirect("portal:webhook_list")
    return render(request, "portal/webhook_delete.html", {"section": SECTION, "endpoint": endpoint})


@portal_view
@require_POST
def webhook_retry(request: HttpRequest, pk: int, delivery_pk: int) -> HttpResponse:
    principal = _writer(request)
    endpoint = _endpoint(request, pk)
    delivery = scoped_get(endpoints.webhook_deliveries(endpoint=endpoint), delivery_pk)
    endpoints.webhook_delivery_retry(delivery=delivery, actor=principal)
    messages.success(request, f"Delivery of {delivery.event.type} ({delivery.event_id}) queued to be sent again now.")
    return redirect("portal:webhook_detail", pk=endpoint.pk)
