"""The admin of credentials: POS, Cloud API applications, provisioning clients, and the
OAuth2 clients and tokens of django-oauth-toolkit behind them (read-only, never a secret)."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html
from oauth2_provider.admin import AccessTokenAdmin, RefreshTokenAdmin
from oauth2_provider.models import AccessToken, Grant, IDToken, RefreshToken

from accounts import services
from accounts.admin_base import IssuesSecretOnAddMixin, ReadOnlyAdmin, RotateSecretMixin, ServiceModelAdmin
from accounts.models import POS, Application, CloudApplication, ProvisioningClient
from accounts.scope import cloud_applications_in_scope, pos_in_scope


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
