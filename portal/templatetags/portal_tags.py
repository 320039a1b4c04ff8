"""Navigation and small display helpers for the portal's templates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django import template
from django.urls import reverse
from django.utils import timezone
from django.utils.timesince import timesince

from accounts.permissions import Kind, may_write
from accounts.scope import Level, Principal
from portal.views.base import principal_of

register = template.Library()


@dataclass(frozen=True)
class NavItem:
    section: str
    label: str
    url: str
    current: bool


NAV = [
    ("home", "Overview", "portal:home", Level.NOTHING),
    ("merchants", "Merchants", "portal:merchant_list", Level.MERCHANT_AGGREGATOR),
    ("stores", "Stores & POS", "portal:store_list", Level.MERCHANT),
    ("applications", "Applications", "portal:application_list", Level.MERCHANT_AGGREGATOR),
    ("devices", "Devices", "portal:device_list", Level.MERCHANT),
    ("cloud_connector", "Cloud Connector", "portal:cloud_connector", Level.MERCHANT),
    ("webhooks", "Webhooks", "portal:webhook_list", Level.MERCHANT),
    ("team", "Team", "portal:team_list", Level.MERCHANT),
]


@register.simple_tag(takes_context=True)
def portal_nav(context) -> list[NavItem]:
    """The sections the user's level has, the current one marked."""
    request = context["request"]
    principal = principal_of(request)
    section = context.get("section", "")
    return [
        NavItem(key, label, reverse(name), key == section)
        for key, label, name, deepest in NAV
        if principal.level <= deepest
    ]


@register.simple_tag(takes_context=True)
def portal_principal(context):
    return principal_of(context["request"])


@register.filter(name="may_write")
def may_write_filter(principal: Principal, kind: str) -> bool:
    """`{% if principal|may_write:"store" %}`: whether to offer a write, by the write table."""
    return may_write(principal, Kind(kind))


@register.filter
def ago(value: datetime | None) -> str:
    """'3 minutes ago', 'just now' or 'never'."""
    if value is None:
        return "never"
    seconds = (timezone.now() - value).total_seconds()
    if seconds < 10:
        return "just now"
    if seconds < 60:
        return "less than a minute ago"
    return f"{timesince(value, depth=1)} ago"


@register.simple_tag(takes_context=True)
def scope_label(context) -> str:
    """Where the user stands: 'Merchant Corner Shop (aggregator Acme) · Administrator'."""
    request = context["request"]
    principal = principal_of(request)
    if principal.level == Level.PLATFORM:
        return "Platform staff: you see every tenant"
    membership = getattr(request.user, "membership", None)
    if membership is None:
        return "Not attached to a merchant or merchant aggregator"
    role = membership.get_role_display()
    if membership.merchant_aggregator_id:
        return f"Merchant aggregator {membership.merchant_aggregator.name} · {role}"
    merchant = membership.merchant
    return f"Merchant {merchant.name} (aggregator {merchant.merchant_aggregator.name}) · {role}"


@register.filter
def get_label(labels: dict, code: str) -> str:
    return labels.get(code, code)
