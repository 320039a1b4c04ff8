"""Devices: their state at a glance (searched, paged, sorted, kept current by pushed rows:
portal.consumers), a CSV export of the filtered list, their timeline, activation, ending a
session, and the terminal configuration block."""

from __future__ import annotations

import csv
import io

from django.contrib import messages
from django.core.paginator import Page, Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone

from accounts.errors import Conflict
from accounts.permissions import Kind
from accounts.scope import (
    Level,
    Principal,
    cloud_applications_in_scope,
    merchants_in_scope,
    pos_in_scope,
    stores_in_scope,
)
from connector.conf import connector_settings
from connector.models import Device
from connector.selectors import LIVE, device_sessions_in_scope, devices_in_scope
from connector.services import device_session_end
from portal.device_status import device_state, devices_filtered, devices_for_portal, devices_sorted
from portal.device_timeline import TIMELINE_LIMIT, device_timeline
from portal.forms import DeviceFilterForm, TerminalConfigForm
from portal.terminal_config import terminal_config
from portal.views.activation import switch
from portal.views.base import portal_view, principal_of, require_write, scoped_get

PAGE_SIZE = 50
# Rows read from the database at a time by the CSV export, with their live sessions.
EXPORT_CHUNK = 2000


def _filter_form(request: HttpRequest, principal: Principal) -> DeviceFilterForm:
    makes = devices_in_scope(principal=principal).order_by().values_list("make", flat=True).distinct()
    merchants = None
    if principal.level < Level.MERCHANT:
        merchants = merchants_in_scope(principal=principal).order_by("name")
    stores = stores_in_scope(principal=principal).order_by("merchant__name", "name")
    return DeviceFilterForm(
        request.GET or None, stores=stores, makes=sorted(set(makes), key=str.lower), merchants=merchants
    )


def _filtered(request: HttpRequest, principal: Principal) -> tuple[DeviceFilterForm, object]:
    """The filter form and the devices it selects, sorted; none for a refused filter (a
    store or merchant outside the scope reads as an unknown choice)."""
    form = _filter_form(request, principal)
    devices = devices_for_portal(principal=principal)
    if not form.is_bound:
        return form, devices_sorted(devices, "")
    if form.is_valid():
        return form, devices_filtered(devices, **form.cleaned_data)
    return form, devices.none()


def _page(request: HttpRequest, devices) -> Page:
    """The requested page of `devices`; a page past the end is the last, a bad one the first."""
    return Paginator(devices, PAGE_SIZE).get_page(request.GET.get("page"))


def _without(request: HttpRequest, *names: str) -> str:
    query = request.GET.copy()
    for name in names:
        query.pop(name, None)
    return query.urlencode()


def _list_context(request: HttpRequest) -> dict:
    principal = principal_of(request)
    form, devices = _filtered(request, principal)
    page = _page(request, devices)
    filter_names = [name for name in form.fields if name != "sort"]
    return {
        "section": "devices",
        "form": form,
        "page": page,
        "states": [device_state(d) for d in page.object_list],
        "show_merchant": principal.level < Level.MERCHANT,
        "filtered": form.is_bound and any(form.data.get(name) for name in filter_names),
        "query": request.GET.urlencode(),
        "page_query": _without(request, "page"),
    }


@portal_view
def device_list(request: HttpRequest) -> HttpResponse:
    return render(request, "portal/device_list.html", _list_context(request))


@portal_view
def device_rows(request: HttpRequest) -> HttpResponse:
    """The list's table body and pager alone, for a search to replace in place."""
    return render(request, "portal/_device_rows.html", _list_context(request))


# --- CSV export ------------------------------------------------------------------------------

EXPORT_COLUMNS = [
    "tsn",
    "make",
    "model",
    "serial",
    "merchant",
    "store",
    "enabled",
    "cloud_connector",
    "connection",
    "online_since",
    "offline_since",
    "last_seen_at",
    "last_disconnect_reason",
    "claimed_by",
    "frames_relayed",
]


def _cell(value: object) -> str:
    """A value for a spreadsheet: times in ISO 8601, and text that a spreadsheet would run as
    a formula (=, +, -, @, tab, CR first) quoted with an apostrophe (OWASP "CSV injection")."""
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _export_row(device: Device) -> list[str]:
    state = device_state(device)
    return [
        _cell(value)
        for value in (
            device.tsn,
            device.make,
            device.model,
            device.serial,
            device.merchant.name,
            device.store.name,
            "no" if state.disabled else "yes",
            "active" if state.active else state.reason_short,
            state.connection,
            state.online_since,
            state.offline_since,
            state.last_seen_at,
            device.last_disconnect_reason,
            state.claimed_by,
            state.frames_relayed,
        )
    ]


def _export_csv(devices) -> str:
    """The CSV text; built whole (an estate of 10,000 devices is about 2 MB): a streamed
    response would be read whole anyway under ASGI, whose server cannot pull a synchronous
    iterator, so streaming would only add a thread hop per row."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    for device in devices.iterator(chunk_size=EXPORT_CHUNK):
        writer.writerow(_export_row(device))
    return out.getvalue()


@portal_view
def device_export(request: HttpRequest) -> HttpResponse:
    """Every device the list's filters select (all pages), as CSV; a refused filter is a 400
    rather than an empty file that would look like an estate without devices."""
    form, devices = _filtered(request, principal_of(request))
    if form.is_bound and not form.is_valid():
        errors = "; ".join(f"{name}: {' '.join(e)}" for name, e in form.errors.items())
        return HttpResponse(f"The filters are not valid: {errors}\n", status=400, content_type="text/plain")
    response = HttpResponse(_export_csv(devices), content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="devices-{stamp}.csv"'
    return response


def _device(request: HttpRequest, pk: int):
    return scoped_get(devices_for_portal(principal=principal_of(request)), pk)


@portal_view
def device_detail(request: HttpRequest, pk: int) -> HttpResponse:
    principal = principal_of(request)
    state = device_state(_device(request, pk))
    device = state.device
    pos = pos_in_scope(principal=principal).filter(store_id=device.store_id).order_by("name")
    applications = cloud_applications_in_scope(principal=principal).filter(
        merchant_aggregator_id=device.merchant.merchant_aggregator_id
    )
    form = TerminalConfigForm(request.GET or None, pos=pos, applications=applications)
    chosen = form.chosen()
    config = None
    if chosen is not None:
        crt = form.cleaned_data.get("ssl_profile_crt", "") if form.is_bound and form.is_valid() else ""
        config = terminal_config(request=request, client_id=chosen.application.client_id, ssl_profile_crt=crt)
    context = {
        "section": "devices",
        "state": state,
        "device": device,
        "form": form,
        "chosen": chosen,
        "chosen_is_pos": chosen is not None and chosen._meta.model_name == "pos",
        "config": config,
        **_timeline_context(device),
    }
    return render(request, "portal/device_detail.html", context)


def _timeline_context(device) -> dict:
    return {
        "device": device,
        "timeline": device_timeline(device=device),
        "timeline_limit": TIMELINE_LIMIT,
        "history_days": connector_settings.HISTORY_DAYS,
    }


@portal_view
def device_timeline_fragment(request: HttpRequest, pk: int) -> HttpResponse:
    """The timeline alone, for the device page to poll (less often than the state: it is
    longer, and a fact shows in the state at once)."""
    return render(request, "portal/_device_timeline.html", _timeline_context(_device(request, pk)))


@portal_view
def device_state_fragment(request: HttpRequest, pk: int) -> HttpResponse:
    state = device_state(_device(request, pk))
    return render(request, "portal/_device_state.html", {"state": state, "device": state.device})


@portal_view
def device_switch(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    device = _device(request, pk)
    return switch(request, obj=device, action=action, noun="device")


@portal_view
def device_session_end_view(request: HttpRequest, pk: int) -> HttpResponse:
    principal = require_write(request, Kind.DEVICE_SESSION)
    device = _device(request, pk)
    session = device_sessions_in_scope(principal=principal).filter(LIVE, device=device).first()
    if request.method == "POST":
        try:
            if session is None:
                raise Conflict("The session has already ended.")
            device_session_end(session=session, actor=principal)
        except Conflict:
            messages.info(request, f"{device.tsn} has no live session any more.")
        else:
            messages.success(request, f"The session of {device.tsn} was ended; the terminal will register again.")
        return redirect("portal:device_detail", pk=device.pk)
    state = device_state(device)
    return render(
        request,
        "portal/session_end_confirm.html",
        {"section": "devices", "device": device, "session": session, "state": state},
    )
