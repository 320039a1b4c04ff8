"""Merchants, and Cloud Connector switched on and off for the aggregator and its merchants."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts.permissions import Kind, activation_kind, may_write
from accounts.scope import Level, merchant_aggregators_in_scope, merchants_in_scope, stores_in_scope
from connector import services as connector_services
from portal.device_status import device_state, devices_for_portal
from portal.views.base import portal_view, principal_of, require_level, require_write, scoped_get

ACTIONS = ("activate", "deactivate")
ONLY_AGGREGATORS = (
    "Only merchant aggregator users can switch Cloud Connector on or off for an aggregator or a merchant."
)


def _merchants(request: HttpRequest):
    principal = principal_of(request)
    return connector_services.with_cloud_connector_active(
        merchants_in_scope(principal=principal), level="merchant"
    ).annotate(device_count=Count("devices", distinct=True), store_count=Count("stores", distinct=True))


def _aggregators(request: HttpRequest):
    return connector_services.with_cloud_connector_active(
        merchant_aggregators_in_scope(principal=principal_of(request)), level="merchant_aggregator"
    )


@portal_view
def merchant_list(request: HttpRequest) -> HttpResponse:
    require_level(request, Level.MERCHANT_AGGREGATOR)
    merchants = _merchants(request).order_by("merchant_aggregator__name", "name")
    return render(request, "portal/merchant_list.html", {"section": "merchants", "merchants": merchants})


@portal_view
def merchant_detail(request: HttpRequest, pk: int) -> HttpResponse:
    require_level(request, Level.MERCHANT_AGGREGATOR)
    principal = principal_of(request)
    merchant = scoped_get(_merchants(request), pk)
    stores = (
        stores_in_scope(principal=principal)
        .filter(merchant=merchant)
        .annotate(pos_count=Count("pos", distinct=True), device_count=Count("devices", distinct=True))
    )
    devices = [device_state(d) for d in devices_for_portal(principal=principal).filter(merchant=merchant)]
    context = {"section": "merchants", "merchant": merchant, "stores": stores, "devices": devices}
    return render(request, "portal/merchant_detail.html", context)


@portal_view
def cloud_connector(request: HttpRequest) -> HttpResponse:
    """The service's state at every level the user can see, with the switches they may use."""
    principal = principal_of(request)
    if principal.level == Level.NOTHING:
        raise Http404("Not found")
    context = {
        "section": "cloud_connector",
        "aggregators": connector_services.with_subscribed(_aggregators(request)).annotate(
            device_count=Count("merchants__devices", distinct=True)
        ),
        "merchants": _merchants(request).order_by("merchant_aggregator__name", "name"),
        "can_switch_aggregators": may_write(principal, Kind.MERCHANT_AGGREGATOR_ACTIVATION),
        "can_switch": may_write(principal, Kind.MERCHANT_ACTIVATION),
    }
    return render(request, "portal/cloud_connector.html", context)


def switch(request: HttpRequest, *, obj, action: str, noun: str) -> HttpResponse:
    """Confirm (GET, with what it will touch) and then do (POST) an activation switch."""
    if action not in ACTIONS:
        raise Http404("Not found")
    require_write(request, activation_kind(connector_services.activation_level(obj)), above_level=ONLY_AGGREGATORS)
    if request.method == "POST":
        return _switch_now(request, obj=obj, action=action, noun=noun)
    context = {
        "section": "devices" if noun == "device" else "cloud_connector",
        "obj": obj,
        "noun": noun,
        "action": action,
        "impact": connector_services.activation_impact(obj=obj),
        "live_sessions": connector_services.live_sessions_beneath(obj=obj),
    }
    return render(request, "portal/activation_confirm.html", context)


def _switch_now(request: HttpRequest, *, obj, action: str, noun: str) -> HttpResponse:
    principal = principal_of(request)
    if action == "activate":
        count = connector_services.service_activate(obj=obj, actor=principal)
        devices = "1 device was" if count == 1 else f"{count} devices were"
        extra = f" {devices} activated with it." if noun != "device" else ""
        messages.success(request, f"Cloud Connector is now active for {noun} “{obj}”.{extra}")
    else:
        connector_services.service_deactivate(obj=obj, actor=principal)
        messages.success(request, f"Cloud Connector is now inactive for {noun} “{obj}”.")
    if noun == "device":
        return redirect("portal:device_detail", pk=obj.pk)
    return redirect("portal:cloud_connector")


@portal_view
def aggregator_switch(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    obj = scoped_get(merchant_aggregators_in_scope(principal=principal_of(request)), pk)
    return switch(request, obj=obj, action=action, noun="merchant aggregator")


@portal_view
def merchant_switch(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    obj = scoped_get(merchants_in_scope(principal=principal_of(request)), pk)
    return switch(request, obj=obj, action=action, noun="merchant")
