"""A device's connection history in the REST API (v1.1 §11): `GET devices/{id}/connections/`.

The rows are written by connector.history as the relay's facts happen and pruned by
`manage.py prune_history`; here they are only read, through the device the caller may see, so
that a device outside the caller's scope answers 404 exactly as its detail does.
"""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from connector.api.schema import errors
from connector.api.serializers import BlankAsNullField, TimestampField
from connector.models import Device, DeviceConnection, DisconnectReason


class DeviceConnectionSerializer(serializers.Serializer):
    """One online period of the device: from its first socket of a session to none left."""

    session_id = serializers.CharField(read_only=True, help_text="The device session the period belonged to.")
    connected_at = TimestampField(allow_null=False, help_text="When the first device socket of the period connected.")
    disconnected_at = TimestampField(help_text="When the last device socket went away; null while connected.")
    reason = serializers.SerializerMethodField(help_text="Why the period ended (v1.1 §11); null while connected.")
    frames_relayed = serializers.IntegerField(read_only=True, help_text="Frames relayed during the period.")
    frames_dropped = serializers.IntegerField(
        read_only=True, help_text="Frames that could not be relayed during the period."
    )
    claimed_by = BlankAsNullField(
        help_text="The name of the POS or application that held the claim (the last one if it changed), or null."
    )

    @extend_schema_field(serializers.ChoiceField(choices=DisconnectReason.choices, allow_null=True))
    def get_reason(self, connection: DeviceConnection) -> str | None:
        # A reason is a fact about an ended period: an open one has none, whatever the row holds.
        if connection.disconnected_at is None:
            return None
        return connection.reason or None


def device_connections(*, device: Device) -> QuerySet[DeviceConnection]:
    """The device's connection history, newest first (the index `connection_device_time`)."""
    return DeviceConnection.objects.filter(device=device).order_by("-connected_at", "-id")


class ConnectionHistoryMixin:
    """The `connections` action of the device resource."""

    @extend_schema(
        summary="List a device's connections",
        description="The device's connection history, newest first: one entry per online period (from its "
        "first device socket of a session until none is left), with the reason it ended and the frames "
        "relayed and dropped. Kept at least `CC_HISTORY_DAYS` days (default 30), then pruned. "
        "Paginated like every list; 404 for a device outside the caller's scope.",
        responses={200: DeviceConnectionSerializer(many=True), **errors(400, 404)},
    )
    # No filters: the device's list filters would otherwise apply (and be documented) here.
    @action(detail=True, methods=["get"], filter_backends=[], serializer_class=DeviceConnectionSerializer)
    def connections(self, request: Request, pk: int) -> Response:
        page = self.paginate_queryset(device_connections(device=self.get_object()))
        return self.get_paginated_response(DeviceConnectionSerializer(page, many=True).data)
