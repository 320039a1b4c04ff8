"""The admin site, for platform staff onboarding tenants.

Every write made here is a service call with the staff user's Principal, so that the admin
obeys the same rules and writes the same audit log as the REST API and the portal:
`ServiceModelAdmin` routes add, change and delete to service hooks, turns off whatever has
no hook, and shows a service's refusal on the form instead of a server error. Client
secrets are hashed at rest; the admin shows one only in the response that created or
rotated it, never again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import password_validation
from django.contrib.auth.models import Group
from django.db import models, transaction
from django.db.models import Count, Exists, OuterRef, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html
from oauth2_provider.admin import AccessTokenAdmin, RefreshTokenAdmin
from oauth2_provider.models import AccessToken, Grant, IDToken, RefreshToken

from accounts import services
from accounts.errors import DomainError, Invalid
from accounts.models import (
    POS,
    Application,
    AuditEntry,
    CloudApplication,
    Membership,
    Merchant,
    MerchantAggregator,
    ProvisioningClient,
    Store,
    Tenant,
    User,
)
from accounts.scope import (
    Principal,
    cloud_applications_in_scope,
    merchant_aggregators_in_scope,
    merchants_in_scope,
    pos_in_scope,
    principal_for_user,
    stores_in_scope,
    tenants_in_scope,
)
from connector import services as connector_services
from connector.models import CLOUD_CONNECTOR, Subscription

admin.site.site_header = "Cloud Connector administration"
admin.site.site_title = "Cloud Connector admin"
admin.site.index_title = "Onboarding"


# --- the service-backed ModelAdmin ---------------------------------------------------------


class ServiceRejected(Exception):
    """A service refused a form's write; the form is shown again with its message."""

    def __init__(self, error: DomainError) -> None:
        super().__init__(error.message)
        self.error = error


def _adopt(obj: models.Model, created: models.Model) -> None:
    """Make the admin's unsaved form instance stand for the object a service created."""
    for field in created._meta.concrete_fields:
        setattr(obj, field.attname, getattr(created, field.attname))
    obj._state.adding = False
    obj._state.db = created._state.db


def _form_with_service_error(form_class: type[forms.ModelForm], error: DomainError) -> type[forms.ModelForm]:
    errors = error.errors if isinstance(error, Invalid) else {None: [error.message]}

    def clean(self):
        cleaned = form_class.clean(self)
        for field, field_messages in errors.items():
            if field in self.fields:
                self.add_error(field, list(field_messages))
            elif field in (None, "__all__", "non_field_errors"):
                self.add_error(None, list(field_messages))
            else:
                self.add_error(None, [f"{field}: {message}" for message in field_messages])
        return cleaned

    return type(form_class.__name__, (form_class,), {"clean": clean})


class ServiceModelAdmin(admin.ModelAdmin):
    """A ModelAdmin that writes only through service functions.

    Subclasses implement the hooks they support; adding, changing or deleting is off where
    the hook is missing. A `DomainError` from a hook is shown on the form, on the object's
    page or in the changelist's messages, and its transaction is rolled back.
    """

    def principal(self, request: HttpRequest) -> Principal:
        return principal_for_user(request.user)

    def create_through_service(self, request: HttpRequest, form: forms.ModelForm) -> models.Model:
        raise NotImplementedError

    def update_through_service(self, request: HttpRequest, obj: models.Model, form: forms.ModelForm) -> None:
        raise NotImplementedError

    def delete_through_service(self, request: HttpRequest, obj: models.Model) -> None:
        raise NotImplementedError

    def _implements(self, hook: str) -> bool:
        return getattr(type(self), hook) is not getattr(ServiceModelAdmin, hook)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._implements("create_through_service") and super().has_add_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return self._implements("update_through_service") and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return self._implements("delete_through_service") and super().has_delete_permission(request, obj)

    def has_service_write_permission(self, request: HttpRequest) -> bool:
        """For actions that call services (activate, rotate...): the model's change right."""
        return admin.ModelAdmin.has_change_permission(self, request) and self.principal(request).can_write

    def save_model(self, request: HttpRequest, obj: models.Model, form: forms.ModelForm, change: bool) -> None:
        try:
            if change:
                self.update_through_service(request, obj, form)
            else:
                _adopt(obj, self.create_through_service(request, form))
        except DomainError as error:
            raise ServiceRejected(error) from error

    def save_related(self, request, form, formsets, change) -> None:
        # Related objects are the services' business; inlines here are read-only.
        pass

    def get_deleted_objects(self, objs, request):
        # The delete service decides what goes with the object (and refuses when it must);
        # the admin's per-model delete rights of cascaded rows do not apply.
        deleted, model_count, _perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, model_count, set(), protected

    def delete_model(self, request: HttpRequest, obj: models.Model) -> None:
        self.delete_through_service(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for obj in queryset:
            self.delete_through_service(request, obj)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form_class = super().get_form(request, obj, change, **kwargs)
        error = getattr(request, "_service_error", None)
        return form_class if error is None else _form_with_service_error(form_class, error)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ServiceRejected as rejected:
            # The write was rolled back; validate the same POST again with the service's
            # errors attached, so that the form comes back with the user's input.
            request._service_error = rejected.error
            return super().changeform_view(request, object_id, form_url, extra_context)

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except DomainError as error:
            self.message_user(request, f"Nothing was deleted: {error.message}", messages.ERROR)
            opts = self.opts
            return HttpResponseRedirect(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[object_id]))

    def changelist_view(self, request, extra_context=None):
        if request.method != "POST":
            return super().changelist_view(request, extra_context)
        try:
            # One transaction for a whole bulk delete: all of the selection or none of it.
            with transaction.atomic():
                return super().changelist_view(request, extra_context)
        except DomainError as error:
            self.message_user(request, f"Nothing was changed: {error.message}", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    # --- helpers for actions ---

    def apply_each(
        self, request: HttpRequest, objects: Iterable[models.Model], write: Callable[[Any], Any], done: str
    ) -> list[Any]:
        """Call a service for each object; report how many succeeded and why others did not."""
        results, failures = [], []
        for obj in objects:
            try:
                results.append(write(obj))
            except DomainError as error:
                failures.append(f"{obj}: {error.message}")
        if results:
            self.message_user(request, f"{done}: {len(results)}.", messages.SUCCESS)
        for failure in failures:
            self.message_user(request, failure, messages.ERROR)
        if not results and not failures:
            self.message_user(request, "Nothing to do: the selection was already in that state.", messages.INFO)
        return results

    def confirmation(
        self, request: HttpRequest, queryset: QuerySet, *, action: str, title: str, consequences: list[str]
    ) -> TemplateResponse | None:
        """None once the user confirmed; otherwise the page that asks them to."""
        if request.POST.get("confirmed") == "yes":
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "objects": list(queryset),
            "action": action,
            "consequences": consequences,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/cc_confirm_action.html", context)

    def issued_secrets_response(
        self, request: HttpRequest, issued: list[services.IssuedSecret], *, title: str
    ) -> HttpResponse:
        """The only page that ever shows a client secret; never cached."""
        rows = [
            {
                "obj": item.obj,
                "client_id": item.client_id,
                "client_secret": item.client_secret,
                "token_url": f"/oauth2/v1/{_tenant_domain(item.obj)}/token",
            }
            for item in issued
        ]
        context = {**self.admin_site.each_context(request), "title": title, "opts": self.opts, "issued": rows}
        response = TemplateResponse(request, "admin/cc_credentials_issued.html", context)
        add_never_cache_headers(response)
        return response


def _tenant_domain(credential_owner: models.Model) -> str:
    return credential_owner.application.tenant.domain


class ReadOnlyAdmin(admin.ModelAdmin):
    """For what no service writes (catalogues, logs, generated rows): look, never touch."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class CloudConnectorActiveFilter(admin.SimpleListFilter):
    """On MAs and merchants annotated by `with_cloud_connector_active`."""

    title = "Cloud Connector active"
    parameter_name = "active"

    def lookups(self, request, model_admin):
        return [("yes", "Active"), ("no", "Not active")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(cloud_connector_active=self.value() == "yes")
        return queryset


def _activation_consequence(obj: MerchantAggregator | Merchant) -> str:
    return f"{obj}: {connector_services.activation_impact(obj=obj)} device(s) beneath it become unusable"


class ActivationActionsMixin:
    """Activate or deactivate Cloud Connector for MAs or merchants through the services."""

    @admin.action(description="Activate Cloud Connector (and every device beneath, now)", permissions=["service_write"])
    def activate_cloud_connector(self, request, queryset):
        actor = self.principal(request)
        inactive = queryset.filter(cloud_connector_active=False)
        counts = self.apply_each(
            request,
            inactive,
            lambda obj: connector_services.service_activate(obj=obj, actor=actor),
            f"Cloud Connector activated for {self.opts.verbose_name_plural}",
        )
        if counts:
            self.message_user(request, f"Devices newly activated beneath them: {sum(counts)}.", messages.INFO)

    @admin.action(description="Deactivate Cloud Connector (ends the sessions beneath)", permissions=["service_write"])
    def deactivate_cloud_connector(self, request, queryset):
        active = list(queryset.filter(cloud_connector_active=True))
        page = self.confirmation(
            request,
            queryset,
            action="deactivate_cloud_connector",
            title=f"Deactivate Cloud Connector for {len(active)} {self.opts.verbose_name_plural}?",
            consequences=[_activation_consequence(obj) for obj in active]
            + ["Their live device sessions end now (POS and terminals are disconnected)."],
        )
        if page is not None:
            return page
        actor = self.principal(request)
        self.apply_each(
            request,
            active,
            lambda obj: connector_services.service_deactivate(obj=obj, actor=actor),
            f"Cloud Connector deactivated for {self.opts.verbose_name_plural}",
        )


class RotateSecretMixin:
    @admin.action(description="Rotate the client secret (the old one stops working)", permissions=["service_write"])
    def rotate_secret(self, request, queryset):
        page = self.confirmation(
            request,
            queryset,
            action="rotate_secret",
            title="Rotate these client secrets?",
            consequences=[
                "Each selected credential gets a new secret, shown once on the next page.",
                "The old secret stops working and every access token of the credential is revoked now.",
            ],
        )
        if page is not None:
            return page
        actor = self.principal(request)
        issued = self.apply_each(
            request, queryset, lambda obj: services.credential_rotate(obj=obj, actor=actor), "Secrets rotated"
        )
        if issued:
            return self.issued_secrets_response(request, issued, title="New client secrets")
        return None


class IssuesSecretOnAddMixin:
    """Show the secret of a credential created on the add form, once, instead of redirecting."""

    def remember_issued(self, request: HttpRequest, issued: services.IssuedSecret) -> models.Model:
        request._issued_secret = issued
        return issued.obj

    def response_add(self, request, obj, post_url_continue=None):
        issued = getattr(request, "_issued_secret", None)
        if issued is None:
            return super().response_add(request, obj, post_url_continue)
        return self.issued_secrets_response(request, [issued], title=f"{self.opts.verbose_name} created")


# --- tenants and the hierarchy -------------------------------------------------------------


class TenantForm(forms.ModelForm):
    subscribe = forms.BooleanField(
        required=False, initial=True, label="Subscribe to Cloud Connector (Retail API service domain)"
    )

    class Meta:
        model = Tenant
        fields = ["domain", "name"]


@admin.register(Tenant)
class TenantAdmin(ServiceModelAdmin):
    form = TenantForm
    list_display = ["domain", "name", "subscribed", "merchant_aggregator_count", "device_count", "created_at"]
    search_fields = ["domain", "name"]
    readonly_fields = ["created_at"]
    actions = ["subscribe", "unsubscribe"]

    def get_queryset(self, request):
        subscribed = Subscription.objects.filter(tenant=OuterRef("pk"), service__code=CLOUD_CONNECTOR)
        return tenants_in_scope(principal=self.principal(request)).annotate(
            is_subscribed=Exists(subscribed),
            merchant_aggregator_total=Count("merchant_aggregators", distinct=True),
            device_total=Count("devices", distinct=True),
        )

    def get_fields(self, request, obj=None):
        return ["domain", "name", "subscribe"] if obj is None else ["domain", "name", "created_at"]

    def get_readonly_fields(self, request, obj=None):
        # The domain is in every integrator's token URL: it never changes after onboarding.
        return ["created_at"] if obj is None else ["domain", "created_at"]

    @admin.display(boolean=True, description="Subscribed to Cloud Connector", ordering="is_subscribed")
    def subscribed(self, obj):
        return obj.is_subscribed

    @admin.display(description="Merchant aggregators", ordering="merchant_aggregator_total")
    def merchant_aggregator_count(self, obj):
        return obj.merchant_aggregator_total

    @admin.display(description="Devices", ordering="device_total")
    def device_count(self, obj):
        return obj.device_total

    def create_through_service(self, request, form):
        actor = self.principal(request)
        data = form.cleaned_data
        tenant = services.tenant_create(domain=data["domain"], name=data["name"], actor=actor)
        if data.get("subscribe"):
            connector_services.subscription_create(tenant=tenant, actor=actor)
        return tenant

    def update_through_service(self, request, obj, form):
        if "name" in form.changed_data:
            services.object_rename(obj=obj, name=form.cleaned_data["name"], actor=self.principal(request))

    @admin.action(description="Subscribe to Cloud Connector", permissions=["service_write"])
    def subscribe(self, request, queryset):
        actor = self.principal(request)
        self.apply_each(
            request,
            queryset.filter(is_subscribed=False),
            lambda tenant: connector_services.subscription_create(tenant=tenant, actor=actor),
            "Tenants subscribed",
        )

    @admin.action(description="Unsubscribe from Cloud Connector (ends every session)", permissions=["service_write"])
    def unsubscribe(self, request, queryset):
        subscribed = list(queryset.filter(is_subscribed=True))
        page = self.confirmation(
            request,
            queryset,
            action="unsubscribe",
            title=f"Unsubscribe {len(subscribed)} tenant(s) from Cloud Connector?",
            consequences=[f"{tenant}: {tenant.device_total} device(s) become unusable" for tenant in subscribed]
            + ["Every live device session of these tenants ends now."],
        )
        if page is not None:
            return page
        actor = self.principal(request)
        subscriptions = Subscription.objects.filter(tenant__in=subscribed, service__code=CLOUD_CONNECTOR)
        self.apply_each(
            request,
            subscriptions.select_related("tenant"),
            lambda subscription: connector_services.subscription_delete(subscription=subscription, actor=actor),
            "Tenants unsubscribed",
        )


@admin.register(MerchantAggregator)
class MerchantAggregatorAdmin(ActivationActionsMixin, ServiceModelAdmin):
    list_display = ["name", "tenant", "cloud_connector_active", "merchant_count", "device_count", "created_at"]
    list_filter = ["tenant", CloudConnectorActiveFilter]
    search_fields = ["name", "tenant__domain"]
    autocomplete_fields = ["tenant"]
    actions = ["activate_cloud_connector", "deactivate_cloud_connector"]

    def get_queryset(self, request):
        queryset = merchant_aggregators_in_scope(principal=self.principal(request)).select_related("tenant")
        queryset = queryset.annotate(
            merchant_total=Count("merchants", distinct=True), device_total=Count("merchants__devices", distinct=True)
        )
        return connector_services.with_cloud_connector_active(queryset, level="merchant_aggregator")

    def get_readonly_fields(self, request, obj=None):
        return ["created_at"] if obj is None else ["tenant", "cloud_connector_active", "created_at"]

    def get_fields(self, request, obj=None):
        return ["tenant", "name"] if obj is None else ["tenant", "name", "cloud_connector_active", "created_at"]

    @admin.display(boolean=True, description="Cloud Connector active", ordering="cloud_connector_active")
    def cloud_connector_active(self, obj):
        return obj.cloud_connector_active

    @admin.display(description="Merchants", ordering="merchant_total")
    def merchant_count(self, obj):
        return obj.merchant_total

    @admin.display(description="Devices", ordering="device_total")
    def device_count(self, obj):
        return obj.device_total

    def create_through_service(self, request, form):
        data = form.cleaned_data
        return services.merchant_aggregator_create(
            tenant=data["tenant"], name=data["name"], actor=self.principal(request)
        )

    def update_through_service(self, request, obj, form):
        if "name" in form.changed_data:
            services.object_rename(obj=obj, name=form.cleaned_data["name"], actor=self.principal(request))

    def delete_through_service(self, request, obj):
        services.merchant_aggregator_delete(merchant_aggregator=obj, actor=self.principal(request))


@admin.register(Merchant)
class MerchantAdmin(ActivationActionsMixin, ServiceModelAdmin):
    list_display = ["name", "merchant_aggregator", "tenant", "cloud_connector_active", "store_count", "device_count"]
    list_filter = [
        ("merchant_aggregator__tenant", admin.RelatedFieldListFilter),
        ("merchant_aggregator", admin.RelatedOnlyFieldListFilter),
        CloudConnectorActiveFilter,
    ]
    search_fields = ["name", "merchant_aggregator__name", "merchant_aggregator__tenant__domain"]
    autocomplete_fields = ["merchant_aggregator"]
    actions = ["activate_cloud_connector", "deactivate_cloud_connector"]

    def get_queryset(self, request):
        queryset = merchants_in_scope(principal=self.principal(request)).select_related("merchant_aggregator__tenant")
        queryset = queryset.annotate(
            store_total=Count("stores", distinct=True), device_total=Count("devices", distinct=True)
        )
        return connector_services.with_cloud_connector_active(queryset, level="merchant")

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["merchant_aggregator", "tenant", "cloud_connector_active", "created_at"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["merchant_aggregator", "name"]
        return ["merchant_aggregator", "tenant", "name", "cloud_connector_active", "created_at"]

    @admin.display(description="Tenant", ordering="merchant_aggregator__tenant__domain")
    def tenant(self, obj):
        return obj.merchant_aggregator.tenant

    @admin.display(boolean=True, description="Cloud Connector active", ordering="cloud_connector_active")
    def cloud_connector_active(self, obj):
        return obj.cloud_connector_active

    @admin.display(description="Stores", ordering="store_total")
    def store_count(self, obj):
        return obj.store_total

    @admin.display(description="Devices", ordering="device_total")
    def device_count(self, obj):
        return obj.device_total

    def create_through_service(self, request, form):
        data = form.cleaned_data
        return services.merchant_create(
            merchant_aggregator=data["merchant_aggregator"], name=data["name"], actor=self.principal(request)
        )

    def update_through_service(self, request, obj, form):
        if "name" in form.changed_data:
            services.object_rename(obj=obj, name=form.cleaned_data["name"], actor=self.principal(request))

    def delete_through_service(self, request, obj):
        services.merchant_delete(merchant=obj, actor=self.principal(request))


@admin.register(Store)
class StoreAdmin(ServiceModelAdmin):
    list_display = ["name", "merchant", "merchant_aggregator", "tenant", "pos_count", "device_count"]
    list_filter = [
        ("merchant__merchant_aggregator__tenant", admin.RelatedFieldListFilter),
        ("merchant", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["name", "merchant__name", "merchant__merchant_aggregator__tenant__domain"]
    autocomplete_fields = ["merchant"]

    def get_queryset(self, request):
        queryset = stores_in_scope(principal=self.principal(request)).select_related(
            "merchant__merchant_aggregator__tenant"
        )
        return queryset.annotate(pos_total=Count("pos", distinct=True), device_total=Count("devices", distinct=True))

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["merchant", "merchant_aggregator", "tenant", "created_at"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["merchant", "name"]
        return ["merchant", "merchant_aggregator", "tenant", "name", "created_at"]

    @admin.display(description="Merchant aggregator", ordering="merchant__merchant_aggregator__name")
    def merchant_aggregator(self, obj):
        return obj.merchant.merchant_aggregator

    @admin.display(description="Tenant", ordering="merchant__merchant_aggregator__tenant__domain")
    def tenant(self, obj):
        return obj.merchant.merchant_aggregator.tenant

    @admin.display(description="POS", ordering="pos_total")
    def pos_count(self, obj):
        return obj.pos_total

    @admin.display(description="Devices", ordering="device_total")
    def device_count(self, obj):
        return obj.device_total

    def create_through_service(self, request, form):
        data = form.cleaned_data
        return services.store_create(merchant=data["merchant"], name=data["name"], actor=self.principal(request))

    def update_through_service(self, request, obj, form):
        if "name" in form.changed_data:
            services.object_rename(obj=obj, name=form.cleaned_data["name"], actor=self.principal(request))

    def delete_through_service(self, request, obj):
        services.store_delete(store=obj, actor=self.principal(request))


# --- credentials -----------------------------------------------------------------------------


@admin.register(POS)
class POSAdmin(RotateSecretMixin, IssuesSecretOnAddMixin, ServiceModelAdmin):
    list_display = ["name", "store", "merchant", "tenant", "client_id", "created_at"]
    list_filter = [("store__merchant__merchant_aggregator__tenant", admin.RelatedFieldListFilter)]
    search_fields = ["name", "application__client_id", "store__name", "store__merchant__name"]
    autocomplete_fields = ["store"]
    actions = ["rotate_secret"]

    def get_queryset(self, request):
        return pos_in_scope(principal=self.principal(request)).select_related(
            "store__merchant__merchant_aggregator__tenant", "application"
        )

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["store", "name"]
        return ["store", "merchant", "tenant", "name", "client_id", "created_at"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["store", "merchant", "tenant", "client_id", "created_at"]

    @admin.display(description="Merchant", ordering="store__merchant__name")
    def merchant(self, obj):
        return obj.store.merchant

    @admin.display(description="Tenant", ordering="store__merchant__merchant_aggregator__tenant__domain")
    def tenant(self, obj):
        return obj.store.merchant.merchant_aggregator.tenant

    @admin.display(description="Client id", ordering="application__client_id")
    def client_id(self, obj):
        return obj.application.client_id

    def create_through_service(self, request, form):
        data = form.cleaned_data
        return self.remember_issued(
            request, services.pos_create(store=data["store"], name=data["name"], actor=self.principal(request))
        )

    def update_through_service(self, request, obj, form):
        if "name" in form.changed_data:
            services.object_rename(obj=obj, name=form.cleaned_data["name"], actor=self.principal(request))

    def delete_through_service(self, request, obj):
        services.pos_delete(pos=obj, actor=self.principal(request))


SERVICE_LABELS = {"retail-api": "Retail API"}
GRANT_LABELS = {"client_credentials": "Client Credentials Grant"}
ROLE_LABELS = {"pos-terminal": "Point-of-sale Terminal"}


def _choices(values: list[str], labels: dict[str, str]) -> list[tuple[str, str]]:
    return [(value, labels.get(value, value)) for value in values]


class CloudApplicationForm(forms.ModelForm):
    services = forms.MultipleChoiceField(
        choices=_choices(CloudApplication.SERVICE_CHOICES, SERVICE_LABELS),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="API services",
    )
    grant_types = forms.MultipleChoiceField(
        choices=_choices(CloudApplication.GRANT_TYPE_CHOICES, GRANT_LABELS),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Credentials",
    )
    roles = forms.MultipleChoiceField(
        choices=_choices(CloudApplication.ROLE_CHOICES, ROLE_LABELS),
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )

    class Meta:
        model = CloudApplication
        fields = ["merchant_aggregator", "name", "services", "grant_types", "roles"]


@admin.register(CloudApplication)
class CloudApplicationAdmin(RotateSecretMixin, IssuesSecretOnAddMixin, ServiceModelAdmin):
    form = CloudApplicationForm
    list_display = ["name", "merchant_aggregator", "tenant", "client_id", "ready_for_cloud_connector", "created_at"]
    list_filter = [("merchant_aggregator__tenant", admin.RelatedFieldListFilter)]
    search_fields = ["name", "application__client_id", "merchant_aggregator__name"]
    autocomplete_fields = ["merchant_aggregator"]
    actions = ["rotate_secret"]

    def get_queryset(self, request):
        return cloud_applications_in_scope(principal=self.principal(request)).select_related(
            "merchant_aggregator__tenant", "application"
        )

    def get_fields(self, request, obj=None):
        fields = ["merchant_aggregator", "name", "services", "grant_types", "roles"]
        return fields if obj is None else [*fields, "client_id", "ready_for_cloud_connector", "created_at"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["merchant_aggregator", "client_id", "ready_for_cloud_connector", "created_at"]

    @admin.display(description="Tenant", ordering="merchant_aggregator__tenant__domain")
    def tenant(self, obj):
        return obj.merchant_aggregator.tenant

    @admin.display(description="Client id", ordering="application__client_id")
    def client_id(self, obj):
        return obj.application.client_id

    @admin.display(description="Ready for Cloud Connector")
    def ready_for_cloud_connector(self, obj):
        missing = obj.missing_for_cloud_connector()
        return "yes" if not missing else f"no: lacks {', '.join(missing)}"

    def create_through_service(self, request, form):
        data = form.cleaned_data
        issued = services.cloud_application_create(
            merchant_aggregator=data["merchant_aggregator"],
            name=data["name"],
            services=data["services"],
            grant_types=data["grant_types"],
            roles=data["roles"],
            actor=self.principal(request),
        )
        return self.remember_issued(request, issued)

    def update_through_service(self, request, obj, form):
        changes = {
            field: form.cleaned_data[field]
            for field in ("name", "services", "grant_types", "roles")
            if field in form.changed_data
        }
        if changes:
            services.cloud_application_update(app=obj, actor=self.principal(request), **changes)

    def delete_through_service(self, request, obj):
        services.cloud_application_delete(app=obj, actor=self.principal(request))


@admin.register(ProvisioningClient)
class ProvisioningClientAdmin(RotateSecretMixin, IssuesSecretOnAddMixin, ServiceModelAdmin):
    list_display = ["name", "tenant", "client_id", "created_at"]
    list_filter = ["tenant"]
    search_fields = ["name", "application__client_id", "tenant__domain"]
    autocomplete_fields = ["tenant"]
    actions = ["rotate_secret"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("tenant", "application")

    def get_fields(self, request, obj=None):
        return ["tenant", "name"] if obj is None else ["tenant", "name", "client_id", "created_at"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["tenant", "name", "client_id", "created_at"]

    @admin.display(description="Client id", ordering="application__client_id")
    def client_id(self, obj):
        return obj.application.client_id

    def create_through_service(self, request, form):
        data = form.cleaned_data
        issued = services.provisioning_client_create(
            tenant=data["tenant"], name=data["name"], actor=self.principal(request)
        )
        return self.remember_issued(request, issued)


if admin.site.is_registered(Application):
    # django-oauth-toolkit's own admin edits clients directly and shows the secret field.
    admin.site.unregister(Application)


@admin.register(Application)
class ApplicationAdmin(ReadOnlyAdmin):
    """The OAuth2 clients behind POS, Cloud API applications and provisioning clients.

    Created, rotated and deleted only with their owner; the secret column is never shown."""

    list_display = ["client_id", "name", "kind", "tenant", "owner", "created"]
    list_filter = ["kind", "tenant"]
    search_fields = ["client_id", "name", "tenant__domain"]
    fields = ["client_id", "name", "kind", "tenant", "owner", "client_type", "authorization_grant_type", "created"]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("tenant", "pos", "cloud_application", "provisioning_client")

    @admin.display(description="Owner")
    def owner(self, obj):
        for attribute in ("pos", "cloud_application", "provisioning_client"):
            owner = getattr(obj, attribute, None)
            if owner is not None:
                opts = owner._meta
                url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[owner.pk])
                return format_html('<a href="{}">{}</a>', url, owner)
        return "-"


for token_model in (Grant, IDToken):
    # Authorization codes and ID tokens belong to flows this deployment does not serve.
    if admin.site.is_registered(token_model):
        admin.site.unregister(token_model)


class ReadOnlyTokenMixin:
    """Tokens are listed masked. Revoking goes through rotating or deleting the credential,
    whose service also closes the sockets that used them."""

    actions = None

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


for token_model, token_admin in ((AccessToken, AccessTokenAdmin), (RefreshToken, RefreshTokenAdmin)):
    if admin.site.is_registered(token_model):
        admin.site.unregister(token_model)
    admin.site.register(token_model, type(token_admin.__name__, (ReadOnlyTokenMixin, token_admin), {}))


# --- people -------------------------------------------------------------------------------


class UserCreateForm(forms.ModelForm):
    password1 = forms.CharField(label="Password", strip=False, widget=forms.PasswordInput)
    password2 = forms.CharField(label="Password again", strip=False, widget=forms.PasswordInput)
    is_staff = forms.BooleanField(
        required=False, label="Platform staff", help_text="Staff administer every tenant through this admin."
    )
    merchant_aggregator = forms.ModelChoiceField(
        queryset=MerchantAggregator.objects.select_related("tenant"), required=False
    )
    merchant = forms.ModelChoiceField(
        queryset=Merchant.objects.select_related("merchant_aggregator__tenant"), required=False
    )
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.ADMIN)

    class Meta:
        model = User
        fields = ["username", "email"]

    def clean(self):
        cleaned = super().clean()
        one, two = cleaned.get("password1"), cleaned.get("password2")
        if one and two and one != two:
            self.add_error("password2", "The two passwords differ.")
        elif one:
            try:
                password_validation.validate_password(one, User(username=cleaned.get("username", "")))
            except forms.ValidationError as error:
                self.add_error("password1", error)
        places = [cleaned.get("merchant_aggregator"), cleaned.get("merchant")]
        if not cleaned.get("is_staff") and sum(place is not None for place in places) != 1:
            self.add_error(None, "Choose exactly one merchant aggregator or one merchant (or make the user staff).")
        return cleaned


class MembershipInline(admin.StackedInline):
    model = Membership
    fields = ["merchant_aggregator", "merchant", "role"]
    readonly_fields = fields
    can_delete = False
    extra = 0

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(User)
class UserAdmin(ServiceModelAdmin):
    """People. Created through `user_create` (with their membership); there is no service to
    change a person yet, so their page is read-only."""

    add_form = UserCreateForm
    list_display = ["username", "email", "is_staff", "is_active", "place", "role", "last_login"]
    list_filter = ["is_staff", "is_active", "membership__role"]
    search_fields = ["username", "email"]
    readonly_fields = ["place", "role", "last_login", "date_joined"]
    inlines = [MembershipInline]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("membership__merchant_aggregator__tenant", "membership__merchant__merchant_aggregator")
        )

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return [
                "username",
                "email",
                "password1",
                "password2",
                "is_staff",
                "merchant_aggregator",
                "merchant",
                "role",
            ]
        return ["username", "email", "first_name", "last_name", "is_staff", "is_superuser", "is_active"] + list(
            self.readonly_fields
        )

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else []

    def _membership(self, obj) -> Membership | None:
        return getattr(obj, "membership", None)

    @admin.display(description="Place")
    def place(self, obj):
        membership = self._membership(obj)
        if membership is None:
            return "platform staff" if obj.is_staff else "-"
        return membership.merchant_aggregator or membership.merchant

    @admin.display(description="Role")
    def role(self, obj):
        membership = self._membership(obj)
        return membership.get_role_display() if membership else "-"

    def create_through_service(self, request, form):
        data = form.cleaned_data
        return services.user_create(
            username=data["username"],
            password=data["password1"],
            email=data.get("email", ""),
            actor=self.principal(request),
            merchant_aggregator=None if data["is_staff"] else data.get("merchant_aggregator"),
            merchant=None if data["is_staff"] else data.get("merchant"),
            role=data["role"],
            is_staff=data["is_staff"],
        )


@admin.register(Membership)
class MembershipAdmin(ReadOnlyAdmin):
    list_display = ["user", "merchant_aggregator", "merchant", "role"]
    list_filter = ["role"]
    search_fields = ["user__username", "merchant_aggregator__name", "merchant__name"]
    list_select_related = ["user", "merchant_aggregator", "merchant"]


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "actor", "action", "object_type", "object_id", "object_repr", "tenant"]
    list_filter = ["object_type", "tenant"]
    search_fields = ["actor", "action", "object_repr", "object_id"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant"]
    fields = [
        "created_at",
        "actor",
        "actor_user",
        "action",
        "object_type",
        "object_id",
        "object_repr",
        "tenant",
        "data",
    ]
    readonly_fields = fields


if admin.site.is_registered(Group):
    # Every staff member is a superuser (accounts.services.user_create): groups would grant nothing.
    admin.site.unregister(Group)
