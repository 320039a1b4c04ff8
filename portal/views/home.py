"""The overview: where the user stands and what to do next."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from accounts.scope import (
    Level,
    cloud_applications_in_scope,
    merchant_aggregators_in_scope,
    merchants_in_scope,
    pos_in_scope,
    stores_in_scope,
    tenants_in_scope,
)
from connector.services import tenant_is_subscribed, with_cloud_connector_active
from portal.device_status import devices_for_portal
from portal.views.base import portal_view, principal_of


@portal_view
def home(request: HttpRequest) -> HttpResponse:
    principal = principal_of(request)
    devices = devices_for_portal(principal=principal)
    context = {
        "section": "home",
        "principal": principal,
        "is_platform": principal.level == Level.PLATFORM,
        "unassigned": principal.level == Level.NOTHING,
        "store_count": stores_in_scope(principal=principal).count(),
        "pos_count": pos_in_scope(principal=principal).count(),
        "device_count": devices.count(),
        "active_count": devices.filter(usable=True).count(),
        "online_count": devices.filter(online=True).count(),
        "application_count": cloud_applications_in_scope(principal=principal).count(),
    }
    tenant = tenants_in_scope(principal=principal).first() if principal.tenant_id else None
    context["subscribed"] = tenant_is_subscribed(tenant=tenant) if tenant else None
    if principal.level == Level.MERCHANT_AGGREGATOR:
        context["merchant_aggregator"] = with_cloud_connector_active(
            merchant_aggregators_in_scope(principal=principal), level="merchant_aggregator"
        ).first()
        context["merchant_count"] = merchants_in_scope(principal=principal).count()
    elif principal.level == Level.MERCHANT:
        context["merchant"] = with_cloud_connector_active(
            merchants_in_scope(principal=principal), level="merchant"
        ).first()
    return render(request, "portal/home.html", context)
