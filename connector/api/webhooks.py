"""`webhook-endpoints/` (v1.1 §16): the endpoints a merchant's or an aggregator's back office
receives its devices' events at, their signing secrets and their delivery logs.

Same frame as the other resources (connector/api/views.py): reads through the scope selector
of connector.webhook_endpoints, so an endpoint outside the caller's scope answers 404; writes
through its service functions, which hold the rules; the write table's Kind.WEBHOOK_ENDPOINT
says who may write. The secret appears only in the answers to create and to rotate-secret.
"""

from __future__ import annotations

from datetime import datetime

import django_filters
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, extend_schema_view
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.errors import Invalid
from accounts.permissions import Kind
from accounts.scope import Principal, merchants_in_scope
from connector import webhook_endpoints as endpoints
from connector.api.filters import IdFilter, StateFilter, StrictBooleanFilter
from connector.api.schema import errors
from connector.api.serializers import (
    ParentFixedMixin,
    ScopedPrimaryKeyRelatedField,
    StrictBooleanField,
    StrictCharField,
)
from connector.api.views import ReadMixin, ScopedViewSet, UpdateMixin, crud_schema
from connector.models import WEBHOOK_EVENT_TYPES, WebhookDelivery, WebhookEndpoint
from connector.protocol import timestamp
from connector.webhooks.guard import MAX_URL_LENGTH

DELIVERY_STATUSES = [choice for choice, _label in WebhookDelivery.Status.choices]


@extend_schema_field({"type": "string", "format": "date-time", "nullable": True})
class TimestampField(serializers.Field):
    """A time as v1.1 writes it: RFC 3339, UTC, milliseconds (`2026-12-02T17:06:23.123Z`)."""

    def __init__(self, **kwargs) -> None:
        kwargs["read_only"] = True
        super().__init__(**kwargs)

    def to_representation(self, value: datetime | None) -> str | None:
        return timestamp(value)

    def get_attribute(self, instance):
        # A null time is a value (null), not a missing attribute to skip.
        return getattr(instance, self.source)


class EventListField(serializers.ListField):
    """Event types: a JSON list, refused whole when longer than the types there are (before
    any item is looked at, so a huge list costs nothing), each a known type, none twice."""

    default_error_messages = {"duplicate": "Each event type may be given only once."}

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("child", serializers.ChoiceField(choices=WEBHOOK_EVENT_TYPES))
        kwargs.setdefault("allow_empty", False)
        kwargs.setdefault("max_length", len(WEBHOOK_EVENT_TYPES))
        super().__init__(**kwargs)

    def to_internal_value(self, data) -> list[str]:
        if isinstance(data, list) and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        events = super().to_internal_value(data)
        if len(set(events)) != len(events):
            self.fail("duplicate")
        return events


class WebhookEndpointSerializer(ParentFixedMixin, serializers.Serializer):
    """A receiver of the events of the devices in a merchant aggregator or a merchant."""

    parent_fields = ("merchant_aggregator", "merchant")

    id = serializers.IntegerField(read_only=True)
    url = StrictCharField(
        max_length=MAX_URL_LENGTH,
        help_text="Where events are POSTed. `https://` (`http://` only on a server in DEBUG mode); "
        "no user name or password; not a private, loopback or link-local address in production.",
    )
    events = EventListField(help_text=f"The event types to receive: a non-empty subset of {WEBHOOK_EVENT_TYPES}.")
    merchant_aggregator = ScopedPrimaryKeyRelatedField(
        selector=endpoints.webhook_aggregators_in_scope,
        required=False,
        allow_null=True,
        help_text="The merchant aggregator whose devices' events the endpoint receives (all its merchants'). "
        "Give this or `merchant`, not both; fixed once created.",
    )
    merchant = ScopedPrimaryKeyRelatedField(
        selector=merchants_in_scope,
        required=False,
        allow_null=True,
        help_text="The merchant whose devices' events the endpoint receives. Give this or "
        "`merchant_aggregator`, not both; fixed once created.",
    )
    enabled = StrictBooleanField(required=False, default=True, help_text="A disabled endpoint receives nothing.")
    secret = serializers.SerializerMethodField(
        help_text="The signing secret (HMAC-SHA256 key of the `Cloud-Connector-Signature` header): present "
        "only in the response to create and to rotate-secret, null everywhere else."
    )
    created_at = TimestampField()

    @extend_schema_field({"type": "string", "nullable": True})
    def get_secret(self, endpoint: WebhookEndpoint) -> str | None:
        return getattr(endpoint, "issued_secret", None)

    def validate_url(self, url: str) -> str:
        try:
            return endpoints.clean_url(url)
        except Invalid as error:
            raise serializers.ValidationError(error.errors["url"]) from None

    def validate(self, attrs: dict) -> dict:
        attrs = super().validate(attrs)
        if self.instance is None:
            chosen = [field for field in ("merchant_aggregator", "merchant") if attrs.get(field) is not None]
            if len(chosen) != 1:
                message = endpoints.BOTH_SCOPES if chosen else endpoints.ONE_SCOPE
                raise serializers.ValidationError({"non_field_errors": [message]})
        return attrs


class WebhookAttemptSerializer(serializers.Serializer):
    """One POST of a delivery."""

    attempted_at = TimestampField()
    response_code = serializers.IntegerField(read_only=True, allow_null=True, help_text="The receiver's status code.")
    duration_ms = serializers.IntegerField(read_only=True)
    error = serializers.CharField(read_only=True, help_text="Why it failed (timeout, refused...), or empty.")
    succeeded = serializers.BooleanField(read_only=True)
    manual = serializers.BooleanField(read_only=True, help_text="Sent by a retry request, not by the schedule.")


class WebhookDeliverySerializer(serializers.Serializer):
    """One event for one endpoint, and every attempt to send it."""

    id = serializers.IntegerField(read_only=True)
    event_id = serializers.UUIDField(read_only=True, help_text="The `id` of the webhook body.")
    event_type = serializers.CharField(source="event.type", read_only=True)
    status = serializers.ChoiceField(choices=WebhookDelivery.Status.choices, read_only=True)
    attempts = serializers.IntegerField(read_only=True, help_text="How many times it was sent.")
    response_code = serializers.IntegerField(read_only=True, allow_null=True, help_text="Of the last attempt.")
    duration_ms = serializers.IntegerField(read_only=True, allow_null=True, help_text="Of the last attempt.")
    error = serializers.CharField(read_only=True, help_text="Of the last attempt, or empty.")
    created_at = TimestampField()
    last_attempt_at = TimestampField()
    next_attempt_at = TimestampField(help_text="When it is sent next, or null when it is not due again.")
    attempt_log = WebhookAttemptSerializer(many=True, read_only=True, help_text="Every attempt, newest first.")


class WebhookEndpointFilter(django_filters.FilterSet):
    merchant_aggregator = IdFilter(field_name="merchant_aggregator_id")
    merchant = IdFilter(field_name="merchant_id")
    enabled = StrictBooleanFilter(field_name="enabled")

    class Meta:
        model = WebhookEndpoint
        fields = ["merchant_aggregator", "merchant", "enabled"]


class DeliveryFilter(django_filters.FilterSet):
    status = StateFilter(choices=WebhookDelivery.Status.choices)

    class Meta:
        model = WebhookDelivery
        fields = ["status"]


SECRET_NOTE = (
    "The answer to create holds the signing `secret`, the only time it is shown (rotate-secret "
    "issues a new one). Who may write: the administrators of the merchant aggregator (its "
    "endpoints and its merchants'), of the merchant (its endpoints), and the tenant's "
    "provisioning client."
)


@crud_schema(WebhookEndpointSerializer, "webhook endpoint", write_description=SECRET_NOTE)
@extend_schema_view(
    rotate_secret=extend_schema(
        summary="Rotate the signing secret",
        description="Issues a new signing secret, shown only in this response (`secret`). The old one "
        "signs nothing from now on, retries of earlier events included.",
        request=None,
        responses={200: WebhookEndpointSerializer, **errors(404)},
    ),
    deliveries=extend_schema(
        summary="List an endpoint's deliveries",
        description="Newest first, each with every attempt: status, response code, duration and next retry.",
        parameters=[
            OpenApiParameter(
                "status", OpenApiTypes.STR, enum=DELIVERY_STATUSES, description="Only deliveries in this status."
            )
        ],
        responses={200: WebhookDeliverySerializer(many=True), **errors(400, 404)},
    ),
    retry=extend_schema(
        summary="Send a delivery again now",
        description="Whatever its status, the delivery is sent again at once (with the same event `id`); "
        "the answer is the delivery as it stands when the send is queued.",
        request=None,
        parameters=[OpenApiParameter("delivery_id", OpenApiTypes.INT, OpenApiParameter.PATH)],
        responses={202: WebhookDeliverySerializer, **errors(404)},
    ),
)
@extend_schema(tags=["webhook-endpoints"])
class WebhookEndpointViewSet(ReadMixin, UpdateMixin, ScopedViewSet):
    """Webhook endpoints of merchant aggregators and merchants."""

    serializer_class = WebhookEndpointSerializer
    filterset_class = WebhookEndpointFilter
    object_kind = Kind.WEBHOOK_ENDPOINT

    def scoped(self, principal: Principal) -> QuerySet[WebhookEndpoint]:
        return endpoints.webhook_endpoints_in_scope(principal=principal).order_by("id")

    def create(self, request: Request) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        endpoint = endpoints.webhook_endpoint_create(
            url=data["url"],
            events=data["events"],
            merchant_aggregator=data.get("merchant_aggregator"),
            merchant=data.get("merchant"),
            enabled=data.get("enabled", True),
            actor=self.principal,
        )
        return self.present(endpoint, status_code=status.HTTP_201_CREATED, secret=endpoint.secret)

    def perform_update(self, instance: WebhookEndpoint, data: dict) -> None:
        endpoints.webhook_endpoint_update(
            endpoint=instance,
            actor=self.principal,
            url=data.get("url"),
            events=data.get("events"),
            enabled=data.get("enabled"),
        )

    def destroy(self, request: Request, pk: int) -> Response:
        endpoints.webhook_endpoint_delete(endpoint=self.get_object(), actor=self.principal)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=True, methods=["post"], url_path="rotate-secret", url_name="rotate-secret")
    def rotate_secret(self, request: Request, pk: int) -> Response:
        endpoint = self.get_object()
        secret = endpoints.webhook_endpoint_rotate_secret(endpoint=endpoint, actor=self.principal)
        return self.present(endpoint, secret=secret)

    @action(detail=True, methods=["get"], filter_backends=[], serializer_class=WebhookDeliverySerializer)
    def deliveries(self, request: Request, pk: int) -> Response:
        endpoint = self.get_object()
        filterset = DeliveryFilter(request.query_params, queryset=endpoints.webhook_deliveries(endpoint=endpoint))
        if not filterset.is_valid():
            raise ValidationError(filterset.errors)
        page = self.paginate_queryset(filterset.qs)
        return self.get_paginated_response(WebhookDeliverySerializer(page, many=True).data)

    @action(
        detail=True,
        methods=["post"],
        url_path="deliveries/<int:delivery_id>/retry",
        url_name="delivery-retry",
        serializer_class=WebhookDeliverySerializer,
    )
    def retry(self, request: Request, pk: int, delivery_id: int) -> Response:
        endpoint = self.get_object()
        delivery = endpoints.webhook_deliveries(endpoint=endpoint).filter(pk=delivery_id).first()
        if delivery is None:
            raise NotFound("No such delivery of this endpoint.")
        endpoints.webhook_delivery_retry(delivery=delivery, actor=self.principal)
        fresh = endpoints.webhook_deliveries(endpoint=endpoint).get(pk=delivery.pk)
        return Response(WebhookDeliverySerializer(fresh).data, status=status.HTTP_202_ACCEPTED)
