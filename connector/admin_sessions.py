"""The relay's live state in the admin: device sessions (staff may end live ones), their
sockets and the nodes' heartbeats, read-only otherwise."""

from __future__ import annotations

from django.contrib import admin

from accounts.admin_base import ReadOnlyAdmin, ServiceModelAdmin
from connector import services
from connector.models import DeviceSession, NodeHeartbeat, SessionSocket
from connector.selectors import device_sessions_in_scope


@admin.register(DeviceSession)
class DeviceSessionAdmin(ServiceModelAdmin):
    """Sessions are the relay's; staff may only end live ones (through `device_session_end`)."""

    list_display = [
        "id",
        "device",
        "tenant",
        "state",
        "claimed_by_client",
        "frames_relayed",
        "frames_dropped",
        "created_at",
        "last_seen_at",
        "end_reason",
    ]
    list_filter = ["state", ("device__tenant", admin.RelatedFieldListFilter)]
    search_fields = ["id", "device__serial", "claimed_by__client_id"]
    date_hierarchy = "created_at"
    actions = ["end_sessions"]

    def get_queryset(self, request):
        return device_sessions_in_scope(principal=self.principal(request)).select_related(
            "device__tenant", "claimed_by"
        )

    @admin.display(description="Tenant", ordering="device__tenant__domain")
    def tenant(self, obj):
        return obj.device.tenant

    @admin.display(description="Claimed by", ordering="claimed_by__client_id")
    def claimed_by_client(self, obj):
        return obj.claimed_by.client_id if obj.claimed_by else "-"

    def get_fields(self, request, obj=None):
        return [
            "id",
            "device",
            "state",
            "endpoints",
            "claimed_by_client",
            "claimed_at",
            "frames_relayed",
            "frames_dropped",
            "node",
            "created_at",
            "jwt_expires_at",
            "online_at",
            "offline_at",
            "offline_until",
            "last_seen_at",
            "ended_at",
            "end_reason",
        ]

    def get_readonly_fields(self, request, obj=None):
        return self.get_fields(request, obj)

    @admin.action(description="End the selected live sessions (sockets close with 4410)", permissions=["service_write"])
    def end_sessions(self, request, queryset):
        actor = self.principal(request)
        self.apply_each(
            request,
            queryset.exclude(state=DeviceSession.State.ENDED).select_related("device"),
            lambda session: services.device_session_end(session=session, actor=actor),
            "Sessions ended",
        )


@admin.register(SessionSocket)
class SessionSocketAdmin(ReadOnlyAdmin):
    list_display = ["session", "side", "endpoint", "node", "connected_at"]
    list_filter = ["side", "node"]
    search_fields = ["session__id", "node"]


@admin.register(NodeHeartbeat)
class NodeHeartbeatAdmin(ReadOnlyAdmin):
    list_display = ["node", "seen_at"]
