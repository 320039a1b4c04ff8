"""The provisioning REST API: one thin viewset per resource of ../shared/contract/rest-api.md.

Reads go through the scope selectors (accounts/scope.py; devices and their sessions in
connector/selectors.py) with the caller's principal, so anything outside the scope answers
404. Writes hand validated data to the service functions, which check the rules and write
the audit log; domain errors become HTTP answers in connector/api/errors.py.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.db.models import Model, QuerySet
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import scope
from accounts import services as accounts
from accounts.permissions import Kind, activation_kind
from accounts.scope import NOBODY, Principal
from accounts.services import require_authority
from connector import certificates, selectors
from connector import services as connector
from connector.api import filters
from connector.api import serializers as s
from connector.api.certificates import CertificatesMixin
from connector.api.history import ConnectionHistoryMixin
from connector.api.parsers import StrictJSONParser
from connector.api.permissions import ProvisioningAccess, principal_of
from connector.api.schema import ErrorDetailSerializer, errors
from connector.api.throttles import ThrottledBeforeAuthentication
from connector.models import DeviceSession, Subscription


class Pagination(PageNumberPagination):
    """`?page=` and `?page_size=` (at most `max_page_size`). A page size that is not a
    positive integer is a 400, not silently the default."""

    page_size_query_param = "page_size"
    max_page_size = 200

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
            raise ValidationError({self.page_size_query_param: ["A positive integer is required."]})
        return min(int(raw), self.max_page_size)

    def get_page_number(self, request: Request, paginator) -> str:
        """`?page=` given empty is an invalid page (404, as for `?page=first`), not page 1."""
        if request.query_params.get(self.page_query_param) == "":
            raise NotFound(self.invalid_page_message)
        return super().get_page_number(request, paginator)

    def get_schema_operation_parameters(self, view) -> list[dict]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = 1
            if parameter["name"] == self.page_size_query_param:
                parameter["description"] = f"{parameter['description']} At most {self.max_page_size}."
        return parameters


class ScopedViewSet(ThrottledBeforeAuthentication, viewsets.GenericViewSet):
    """The common frame: who is calling, what they see, JSON only."""

    permission_classes = [ProvisioningAccess]
    parser_classes = [StrictJSONParser]
    renderer_classes = [JSONRenderer]
    pagination_class = Pagination
    filter_backends = [DjangoFilterBackend]
    lookup_value_converter = "int"
    # What this resource's writes create, change or delete: the write table
    # (accounts.permissions) says who may (see permissions.authority_refusal).
    object_kind: Kind

    def write_kind(self) -> Kind:
        """The kind of object the current action writes."""
        return self.object_kind

    @classmethod
    def as_view(cls, actions=None, **initkwargs):
        # The API authenticates by itself (bearer token or session): a site-wide
        # LoginRequiredMiddleware must answer it 401/403 here, not redirect to the login page.
        return login_not_required(super().as_view(actions, **initkwargs))

    @property
    def principal(self) -> Principal:
        return principal_of(self.request)

    def get_queryset(self) -> QuerySet:
        # Schema generation has no request: it gets the (empty) queryset of nobody.
        return self.scoped(self.principal if self.request is not None else NOBODY)

    def scoped(self, principal: Principal) -> QuerySet:
        raise NotImplementedError

    def present(self, obj: Model, *, status_code: int = status.HTTP_200_OK, secret: str | None = None) -> Response:
        """The object as a read shows it (annotations included), with a secret just issued."""
        fresh = self.get_queryset().get(pk=obj.pk)
        if secret is not None:
            fresh.issued_secret = secret
        return Response(self.get_serializer(fresh).data, status=status_code)


class ReadMixin(mixins.ListModelMixin, mixins.RetrieveModelMixin):
    pass


class CreateDeleteMixin:
    """Create and delete, each through a service function."""

    def create(self, request: Request) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        created = self.perform_create(serializer.validated_data)
        if isinstance(created, accounts.IssuedSecret):
            return self.present(created.obj, status_code=status.HTTP_201_CREATED, secret=created.client_secret)
        return self.present(created, status_code=status.HTTP_201_CREATED)

    def destroy(self, request: Request, pk: int) -> Response:
        self.perform_destroy(self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class UpdateMixin:
    """PUT and PATCH, through a service function. The object is found (or 404) before the
    body is read."""

    def update(self, request: Request, pk: int, partial: bool = False) -> Response:
        instance = self.get_object()
        serializer = self.get_serializer(instance, data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        self.perform_update(instance, serializer.validated_data)
        return self.present(instance)

    def partial_update(self, request: Request, pk: int) -> Response:
        return self.update(request, pk, partial=True)


class WriteMixin(CreateDeleteMixin, UpdateMixin):
    pass


class RenameMixin(WriteMixin):
    """For objects whose only changeable field is their name."""

    def perform_update(self, instance: Model, data: dict) -> None:
        if "name" in data and data["name"] != instance.name:
            accounts.object_rename(obj=instance, name=data["name"], actor=self.principal)


def crud_schema(
    serializer: type,
    noun: str,
    *,
    writable: bool = True,
    updatable: bool = True,
    write_description: str | None = None,
    write_responses: dict | None = None,
):
    """The documentation of a resource's standard operations, with their error answers;
    `write_description` and `write_responses` add to those of create and update."""
    more = write_responses or {}
    operations = {
        "list": extend_schema(summary=f"List {noun}s in scope", responses={200: serializer, **errors(400, 404)}),
        "retrieve": extend_schema(summary=f"Get a {noun}", responses={200: serializer, **errors(404)}),
    }
    if writable:
        operations["create"] = extend_schema(
            summary=f"Create a {noun}",
            description=write_description,
            request=serializer,
            responses={201: serializer, **errors(400, 409), **more},
        )
        operations["destroy"] = extend_schema(summary=f"Delete a {noun}", responses={204: None, **errors(404, 409)})
    if updatable:
        for name, verb in (("update", "Replace"), ("partial_update", "Change")):
            operations[name] = extend_schema(
                summary=f"{verb} a {noun}",
                description=write_description,
                request=serializer,
                responses={200: serializer, **errors(400, 404, 409), **more},
            )
    return extend_schema_view(**operations)


SERIAL_RULE = (
    "A make and serial number is unique within the tenant. A serial that is taken, by a device "
    "in the caller's scope or outside it, is refused with the same answer whoever holds it: "
    '400 `{"serial": ["This serial number cannot be used."]}`. Each such refusal counts against '
    "the caller (the user or the client): after `CC_SERIAL_REFUSAL_LIMIT` (10) of them within a "
    "window of `CC_SERIAL_REFUSAL_WINDOW` seconds (3600), creating a device or changing a device's "
    "make or serial answers 429 with a `Retry-After` header until the window ends, whether the "
    "serial is free or not. Refusals are written to the audit log."
)
SERIAL_RATE_LIMITED = OpenApiResponse(
    response=ErrorDetailSerializer,
    description="Too many refused serial numbers; the `Retry-After` header says when to try again.",
    examples=[
        OpenApiExample("Rate limited", value={"detail": "Too many refused serial numbers; try again in 60 seconds."})
    ],
)


class ActivationMixin:
    """POST/DELETE {level}/{id}/cloud-connector/: activate or deactivate Cloud Connector."""

    activation_target: str  # the level's name in connector.services.activation_level

    def write_kind(self) -> Kind:
        if self.action in ("cloud_connector", "cloud_connector_deactivate"):
            return activation_kind(self.activation_target)
        return super().write_kind()

    @extend_schema(
        summary="Activate Cloud Connector",
        description="Activates Cloud Connector for this object. For a merchant aggregator or a merchant, "
        "also activates every device that exists beneath it now; a device created later is not active "
        "until it is activated itself.",
        request=None,
        responses={201: s.ActivationSerializer, **errors(404, 409)},
    )
    @action(detail=True, methods=["post"], url_path="cloud-connector", url_name="cloud-connector")
    def cloud_connector(self, request: Request, pk: int) -> Response:
        count = connector.service_activate(obj=self.get_object(), actor=self.principal)
        body = {"cloud_connector_active": True, "devices_activated": count}
        return Response(s.ActivationSerializer(body).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Deactivate Cloud Connector",
        description="Deactivates Cloud Connector at this level. Devices beneath keep their own activation "
        "but cannot register while a level above is inactive; their live sessions end.",
        request=None,
        responses={204: None, **errors(404)},
    )
    @cloud_connector.mapping.delete
    def cloud_connector_deactivate(self, request: Request, pk: int) -> Response:
        connector.service_deactivate(obj=self.get_object(), actor=self.principal)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RotateSecretMixin:
    @action(detail=True, methods=["post"], url_path="rotate-secret", url_name="rotate-secret")
    def rotate_secret(self, request: Request, pk: int) -> Response:
        issued = accounts.credential_rotate(obj=self.get_object(), actor=self.principal)
        return self.present(issued.obj, secret=issued.client_secret)


def rotate_schema(serializer: type):
    return extend_schema(
        summary="Rotate the client secret",
        description="Issues a new client secret, shown only in this response. The old secret stops "
        "working and every access token of the credential is revoked.",
        request=None,
        responses={200: serializer, **errors(404)},
    )


# --- resources ----------------------------------------------------------------------------


@crud_schema(s.SubscriptionSerializer, "subscription", updatable=False)
@extend_schema(tags=["subscriptions"])
class SubscriptionViewSet(ReadMixin, CreateDeleteMixin, ScopedViewSet):
    """Subscriptions of the tenant to Cloud Connector."""

    serializer_class = s.SubscriptionSerializer
    object_kind = Kind.SUBSCRIPTION

    def scoped(self, principal: Principal) -> QuerySet[Subscription]:
        tenants = scope.tenants_in_scope(principal=principal)
        return Subscription.objects.filter(tenant__in=tenants).select_related("tenant", "service").order_by("id")

    def perform_create(self, data: dict) -> Subscription:
        return connector.subscription_create(
            tenant=data["tenant"], service_code=data["service"]["code"], actor=self.principal
        )

    def perform_destroy(self, instance: Subscription) -> None:
        connector.subscription_delete(subscription=instance, actor=self.principal)


@crud_schema(s.MerchantAggregatorSerializer, "merchant aggregator")
@extend_schema(tags=["merchant-aggregators"])
class MerchantAggregatorViewSet(ReadMixin, RenameMixin, ActivationMixin, ScopedViewSet):
    activation_target = "merchant_aggregator"
    serializer_class = s.MerchantAggregatorSerializer
    object_kind = Kind.MERCHANT_AGGREGATOR

    def scoped(self, principal: Principal) -> QuerySet:
        queryset = scope.merchant_aggregators_in_scope(principal=principal).select_related("tenant")
        return connector.with_cloud_connector_active(queryset, level="merchant_aggregator").order_by("id")

    def perform_create(self, data: dict):
        return accounts.merchant_aggregator_create(tenant=data["tenant"], name=data["name"], actor=self.principal)

    def perform_destroy(self, instance) -> None:
        accounts.merchant_aggregator_delete(merchant_aggregator=instance, actor=self.principal)


@crud_schema(s.MerchantSerializer, "merchant")
@extend_schema(tags=["merchants"])
class MerchantViewSet(ReadMixin, RenameMixin, ActivationMixin, ScopedViewSet):
    activation_target = "merchant"
    serializer_class = s.MerchantSerializer
    filterset_class = filters.MerchantFilter
    object_kind = Kind.MERCHANT

    def scoped(self, principal: Principal) -> QuerySet:
        queryset = scope.merchants_in_scope(principal=principal)
        return connector.with_cloud_connector_active(queryset, level="merchant").order_by("id")

    def perform_create(self, data: dict):
        return accounts.merchant_create(
            merchant_aggregator=data["merchant_aggregator"], name=data["name"], actor=self.principal
        )

    def perform_destroy(self, instance) -> None:
        accounts.merchant_delete(merchant=instance, actor=self.principal)


@crud_schema(s.StoreSerializer, "store")
@extend_schema(tags=["stores"])
class StoreViewSet(ReadMixin, RenameMixin, ScopedViewSet):
    serializer_class = s.StoreSerializer
    filterset_class = filters.StoreFilter
    object_kind = Kind.STORE

    def scoped(self, principal: Principal) -> QuerySet:
        return scope.stores_in_scope(principal=principal).order_by("id")

    def perform_create(self, data: dict):
        return accounts.store_create(merchant=data["merchant"], name=data["name"], actor=self.principal)

    def perform_destroy(self, instance) -> None:
        accounts.store_delete(store=instance, actor=self.principal)


@crud_schema(s.PosSerializer, "POS")
@extend_schema_view(rotate_secret=rotate_schema(s.PosSerializer))
@extend_schema(tags=["pos"])
class PosViewSet(ReadMixin, RenameMixin, RotateSecretMixin, ScopedViewSet):
    """Store POS credentials: each reaches the devices of its store."""

    serializer_class = s.PosSerializer
    filterset_class = filters.PosFilter
    object_kind = Kind.POS

    def scoped(self, principal: Principal) -> QuerySet:
        return scope.pos_in_scope(principal=principal).order_by("id")

    def perform_create(self, data: dict) -> accounts.IssuedSecret:
        return accounts.pos_create(store=data["store"], name=data["name"], actor=self.principal)

    def perform_destroy(self, instance) -> None:
        accounts.pos_delete(pos=instance, actor=self.principal)


@crud_schema(s.ApplicationSerializer, "Cloud API application")
@extend_schema_view(rotate_secret=rotate_schema(s.ApplicationSerializer))
@extend_schema(tags=["applications"])
class ApplicationViewSet(ReadMixin, WriteMixin, RotateSecretMixin, ScopedViewSet):
    """Cloud API applications of merchant aggregators: each reaches every device of its MA."""

    serializer_class = s.ApplicationSerializer
    filterset_class = filters.ApplicationFilter
    object_kind = Kind.CLOUD_APPLICATION

    def scoped(self, principal: Principal) -> QuerySet:
        return scope.cloud_applications_in_scope(principal=principal).order_by("id")

    def perform_create(self, data: dict) -> accounts.IssuedSecret:
        return accounts.cloud_application_create(
            merchant_aggregator=data["merchant_aggregator"],
            name=data["name"],
            services=data.get("services", []),
            grant_types=data.get("grant_types", []),
            roles=data.get("roles", []),
            actor=self.principal,
        )

    def perform_update(self, instance, data: dict) -> None:
        changes = {key: data[key] for key in ("name", "services", "grant_types", "roles") if key in data}
        if changes:
            accounts.cloud_application_update(app=instance, actor=self.principal, **changes)

    def perform_destroy(self, instance) -> None:
        accounts.cloud_application_delete(app=instance, actor=self.principal)


@crud_schema(s.DeviceSerializer, "device", write_description=SERIAL_RULE, write_responses={429: SERIAL_RATE_LIMITED})
@extend_schema(tags=["devices"])
class DeviceViewSet(ReadMixin, WriteMixin, ActivationMixin, ConnectionHistoryMixin, CertificatesMixin, ScopedViewSet):
    """Payment terminals. PATCH `{"enabled": false}` disables one and ends its live session;
    `connections/` is its connection history; `certificates/` its client certificates, and
    `require_mtls` whether it registers only with one (v1.1 §15)."""

    activation_target = "device"

    serializer_class = s.DeviceSerializer
    filterset_class = filters.DeviceFilter
    object_kind = Kind.DEVICE

    def scoped(self, principal: Principal) -> QuerySet:
        return connector.devices_with_activation(selectors.devices_in_scope(principal=principal)).order_by("id")

    # No transaction around these two steps: a refused serial's audit entry is written after
    # device_create's own transaction rolls back (connector.services._audits_serial_refusals),
    # and an outer one would take it along. Who may require mTLS is checked before anything.
    def perform_create(self, data: dict):
        if data.get("require_mtls"):
            require_authority(self.principal, Kind.DEVICE_CERTIFICATE)
        device = connector.device_create(
            merchant=data["merchant"],
            store=data["store"],
            make=data["make"],
            model=data["model"],
            serial=data["serial"],
            enabled=data.get("enabled", True),
            actor=self.principal,
        )
        if data.get("require_mtls"):
            certificates.device_require_mtls_set(device=device, require=True, actor=self.principal)
        return device

    def perform_update(self, instance, data: dict) -> None:
        # The other changes first (a refused serial changes nothing), then the flag, which
        # device_require_mtls_set writes to the row and to this instance.
        mtls = "require_mtls" in data and data["require_mtls"] != instance.require_mtls
        if mtls:
            require_authority(self.principal, Kind.DEVICE_CERTIFICATE)
        changes = {key: data[key] for key in ("store", "make", "model", "serial", "enabled") if key in data}
        if changes:
            connector.device_update(device=instance, actor=self.principal, **changes)
        if mtls:
            certificates.device_require_mtls_set(device=instance, require=data["require_mtls"], actor=self.principal)

    def perform_destroy(self, instance) -> None:
        connector.device_delete(device=instance, actor=self.principal)


@extend_schema_view(
    list=extend_schema(
        summary="List live and recently ended device sessions in scope",
        responses={200: s.DeviceSessionSerializer, **errors(400, 404)},
    ),
    retrieve=extend_schema(summary="Get a device session", responses={200: s.DeviceSessionSerializer, **errors(404)}),
    destroy=extend_schema(
        summary="End a device session",
        description="Ends a live session: the device's and the POS's session sockets close with 4410. "
        "A session that has already ended answers 409.",
        responses={204: None, **errors(404, 409)},
    ),
)
@extend_schema(tags=["sessions"])
class DeviceSessionViewSet(ReadMixin, mixins.DestroyModelMixin, ScopedViewSet):
    serializer_class = s.DeviceSessionSerializer
    filterset_class = filters.DeviceSessionFilter
    lookup_value_regex = r"[A-Za-z0-9_-]{1,64}"
    object_kind = Kind.DEVICE_SESSION

    def scoped(self, principal: Principal) -> QuerySet[DeviceSession]:
        return selectors.listed(selectors.device_sessions_in_scope(principal=principal)).order_by("-created_at", "id")

    def perform_destroy(self, instance: DeviceSession) -> None:
        connector.device_session_end(session=instance, actor=self.principal)


@login_not_required
@csrf_exempt  # it changes nothing; a 404 must not turn into a CSRF failure page
def not_found(request: HttpRequest, *args, **kwargs) -> JsonResponse:
    hint = "" if request.path.endswith("/") else " API paths end with a slash."
    return JsonResponse({"detail": f"Not found.{hint}"}, status=status.HTTP_404_NOT_FOUND)
