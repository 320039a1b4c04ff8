"""Devices: their state at a glance (polled live), their timeline, activation, ending a
session, and the terminal configuration block."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts.errors import Conflict
from accounts.permissions import Kind
from accounts.scope import Level, cloud_applications_in_scope, pos_in_scope, stores_in_scope
from connector.conf import connector_settings
from connector.selectors import LIVE, device_sessions_in_scope
from connector.services import device_session_end
from portal.device_status import device_state, devices_filtered, devices_for_portal
from portal.device_timeline import TIMELINE_LIMIT, device_timeline
from portal.forms import DeviceFilterForm, TerminalConfigForm
from portal.terminal_config import terminal_config
from portal.views.activation import switch
from portal.views.base import portal_view, principal_of, require_write, scoped_get

MAX_ROWS = 500


def _filtered(request: HttpRequest) -> tuple[DeviceFilterForm, list]:
    principal = principal_of(request)
    devices = devices_for_portal(principal=principal)
    makes = sorted({make for make in devices.order_by().values_list("make", flat=True).distinct()}, key=str.lower)
    stores = stores_in_scope(principal=principal).order_by("merchant__name", "name")
    form = DeviceFilterForm(request.GET or None, stores=stores, makes=makes)
    if form.is_bound and form.is_valid():
        devices = devices_filtered(devices, **form.cleaned_data)
    elif form.is_bound:
        devices = devices.none()
    return form, [device_state(d) for d in devices[:MAX_ROWS]]


def _list_context(request: HttpRequest) -> dict:
    form, states = _filtered(request)
    principal = principal_of(request)
    return {
        "section": "devices",
        "form": form,
        "states": states,
        "truncated": len(states) >= MAX_ROWS,
        "show_merchant": principal.level < Level.MERCHANT,
        "filtered": any(form.data.get(name) for name in form.fields) if form.is_bound else False,
        "query": request.GET.urlencode(),
    }


@portal_view
def device_list(request: HttpRequest) -> HttpResponse:
    return render(request, "portal/device_list.html", _list_context(request))


@portal_view
def device_rows(request: HttpRequest) -> HttpResponse:
    """The list's table body alone, for the page to poll."""
    return render(request, "portal/_device_rows.html", _list_context(request))


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
