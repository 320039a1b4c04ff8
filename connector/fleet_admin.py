"""The admin's fleet page, for platform staff: superusers, and staff given the "Can view
fleet" permission (connector.view_fleet). Its list page is connector.fleet's overview; nothing
on it can be added, changed or deleted.

Registered on the admin site by `register` (portal/urls.py calls it before it builds the
admin's URLs); idempotent, so that connector/admin.py may call it as well.
"""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.template.response import TemplateResponse

from connector import fleet
from connector.conf import connector_settings
from connector.models import Fleet


class FleetAdmin(admin.ModelAdmin):
    list_display = ["node", "seen_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        overview = fleet.fleet_overview()
        context = {
            **self.admin_site.each_context(request),
            "title": "Fleet",
            "opts": self.opts,
            "overview": overview,
            "node_timeout": connector_settings.NODE_TIMEOUT,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/connector/fleet/overview.html", context)


def register(site: admin.AdminSite = admin.site) -> None:
    if not site.is_registered(Fleet):
        site.register(Fleet, FleetAdmin)
