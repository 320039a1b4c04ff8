"""Who may use Cloud Connector, in the admin: subscriptions and activations, and the Cloud
Connector columns, filters and actions on the organisation tree.

accounts/admin.py registers the tree's admins knowing nothing of the relay; here each is
registered again as a subclass that adds the tenant's subscription, the activation state of
merchant aggregators and merchants (with the actions that switch it) and the device counts.
Writes go through connector.services with the staff Principal (accounts.admin_base).
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Exists, OuterRef
from django.template.defaultfilters import pluralize

from accounts import admin as accounts_admin
from accounts.admin_base import ReadOnlyAdmin, ServiceModelAdmin
from accounts.models import Merchant, MerchantAggregator, Store, Tenant
from accounts.permissions import Kind, activation_kind
from connector import services
from connector.models import CLOUD_CONNECTOR, Activation, Service, ServiceDomain, Subscription

ACTIVATION_LEVELS = {"merchant_aggregator": "Merchant aggregator", "merchant": "Merchant", "device": "Device"}


def _with_active(fields: list[str]) -> list[str]:
    """An object page's fields with the activation state shown before its creation date."""
    at = fields.index("created_at")
    return [*fields[:at], "cloud_connector_active", *fields[at:]]


class ActivationPermissionMixin:
    """The admin action permission `activation_write`: may the staff member switch Cloud
    Connector at this admin's level (`activation_level`), by the write table."""

    activation_level: str

    def has_activation_write_permission(self, request) -> bool:
        kind = activation_kind(self.activation_level)
        return admin.ModelAdmin.has_change_permission(self, request) and self.may_write(request, kind)


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


def counted(count: int, opts) -> str:
    """'1 merchant', '2 merchants': the model's own singular or plural."""
    return f"{count} {opts.verbose_name if count == 1 else opts.verbose_name_plural}"


def devices_become_unusable(count: int, where: str = "") -> str:
    """'1 device beneath it becomes unusable', '2 devices beneath it become unusable'."""
    return f"{count} device{pluralize(count)}{where} become{pluralize(count, 's,')} unusable"


def _activation_consequence(obj: MerchantAggregator | Merchant) -> str:
    return f"{obj}: {devices_become_unusable(services.activation_impact(obj=obj), ' beneath it')}"


class ActivationActionsMixin(ActivationPermissionMixin):
    """Activate or deactivate Cloud Connector for MAs or merchants through the services."""

    @admin.action(
        description="Activate Cloud Connector (and every device beneath, now)", permissions=["activation_write"]
    )
    def activate_cloud_connector(self, request, queryset):
        actor = self.principal(request)
        inactive = queryset.filter(cloud_connector_active=False)
        counts = self.apply_each(
            request,
            inactive,
            lambda obj: services.service_activate(obj=obj, actor=actor),
            f"Cloud Connector activated for {self.opts.verbose_name_plural}",
        )
        if counts:
            self.message_user(request, f"Devices newly activated beneath them: {sum(counts)}.", messages.INFO)

    @admin.action(
        description="Deactivate Cloud Connector (ends the sessions beneath)", permissions=["activation_write"]
    )
    def deactivate_cloud_connector(self, request, queryset):
        active = list(queryset.filter(cloud_connector_active=True))
        if not active:
            # Nothing to confirm: asking "deactivate for 0 merchants?" would only mislead.
            self.message_user(request, "Nothing to do: Cloud Connector is already off for the selection.")
            return None
        page = self.confirmation(
            request,
            queryset,
            action="deactivate_cloud_connector",
            title=f"Deactivate Cloud Connector for {counted(len(active), self.opts)}?",
            consequences=[_activation_consequence(obj) for obj in active]
            + ["Their live device sessions end now (POS and terminals are disconnected)."],
        )
        if page is not None:
            return page
        actor = self.principal(request)
        self.apply_each(
            request,
            active,
            lambda obj: services.service_deactivate(obj=obj, actor=actor),
            f"Cloud Connector deactivated for {self.opts.verbose_name_plural}",
        )

    @admin.display(boolean=True, description="Cloud Connector active", ordering="cloud_connector_active")
    def cloud_connector_active(self, obj):
        return obj.cloud_connector_active


class DeviceCountMixin:
    @admin.display(description="Devices", ordering="device_total")
    def device_count(self, obj):
        return obj.device_total


# --- the organisation tree, with Cloud Connector ---------------------------------------------


class TenantForm(accounts_admin.TenantForm):
    subscribe = forms.BooleanField(
        required=False, initial=True, label="Subscribe to Cloud Connector (Retail API service domain)"
    )


admin.site.unregister(Tenant)


@admin.register(Tenant)
class TenantAdmin(DeviceCountMixin, accounts_admin.TenantAdmin):
    form = TenantForm
    list_display = ["domain", "name", "subscribed", "merchant_aggregator_count", "device_count", "created_at"]
    actions = ["subscribe", "unsubscribe"]

    def get_queryset(self, request):
        subscribed = Subscription.objects.filter(tenant=OuterRef("pk"), service__code=CLOUD_CONNECTOR)
        return (
            super()
            .get_queryset(request)
            .annotate(is_subscribed=Exists(subscribed), device_total=Count("devices", distinct=True))
        )

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        return [*fields, "subscribe"] if obj is None else fields

    @admin.display(boolean=True, description="Subscribed to Cloud Connector", ordering="is_subscribed")
    def subscribed(self, obj):
        return obj.is_subscribed

    def create_through_service(self, request, form):
        tenant = super().create_through_service(request, form)
        if form.cleaned_data.get("subscribe"):
            services.subscription_create(tenant=tenant, actor=self.principal(request))
        return tenant

    def has_subscription_write_permission(self, request) -> bool:
        return admin.ModelAdmin.has_change_permission(self, request) and self.may_write(request, Kind.SUBSCRIPTION)

    @admin.action(description="Subscribe to Cloud Connector", permissions=["subscription_write"])
    def subscribe(self, request, queryset):
        actor = self.principal(request)
        self.apply_each(
            request,
            queryset.filter(is_subscribed=False),
            lambda tenant: services.subscription_create(tenant=tenant, actor=actor),
            "Tenants subscribed",
        )

    @admin.action(
        description="Unsubscribe from Cloud Connector (ends every session)", permissions=["subscription_write"]
    )
    def unsubscribe(self, request, queryset):
        subscribed = list(queryset.filter(is_subscribed=True))
        if not subscribed:
            self.message_user(request, "Nothing to do: none of the selected tenants is subscribed.")
            return None
        page = self.confirmation(
            request,
            queryset,
            action="unsubscribe",
            title=f"Unsubscribe {counted(len(subscribed), self.opts)} from Cloud Connector?",
            consequences=[f"{tenant}: {devices_become_unusable(tenant.device_total)}" for tenant in subscribed]
            + ["Every live device session of these tenants ends now."],
        )
        if page is not None:
            return page
        actor = self.principal(request)
        subscriptions = Subscription.objects.filter(tenant__in=subscribed, service__code=CLOUD_CONNECTOR)
        self.apply_each(
            request,
            subscriptions.select_related("tenant"),
            lambda subscription: services.subscription_delete(subscription=subscription, actor=actor),
            "Tenants unsubscribed",
        )


admin.site.unregister(MerchantAggregator)


@admin.register(MerchantAggregator)
class MerchantAggregatorAdmin(ActivationActionsMixin, DeviceCountMixin, accounts_admin.MerchantAggregatorAdmin):
    activation_level = "merchant_aggregator"
    list_display = ["name", "tenant", "cloud_connector_active", "merchant_count", "device_count", "created_at"]
    list_filter = [*accounts_admin.MerchantAggregatorAdmin.list_filter, CloudConnectorActiveFilter]
    actions = ["activate_cloud_connector", "deactivate_cloud_connector"]

    def get_queryset(self, request):
        queryset = super().get_queryset(request).annotate(device_total=Count("merchants__devices", distinct=True))
        return services.with_cloud_connector_active(queryset, level="merchant_aggregator")

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        return fields if obj is None else _with_active(fields)

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        return fields if obj is None else _with_active(fields)


admin.site.unregister(Merchant)


@admin.register(Merchant)
class MerchantAdmin(ActivationActionsMixin, DeviceCountMixin, accounts_admin.MerchantAdmin):
    activation_level = "merchant"
    list_display = ["name", "merchant_aggregator", "tenant", "cloud_connector_active", "store_count", "device_count"]
    list_filter = [*accounts_admin.MerchantAdmin.list_filter, CloudConnectorActiveFilter]
    actions = ["activate_cloud_connector", "deactivate_cloud_connector"]

    def get_queryset(self, request):
        queryset = super().get_queryset(request).annotate(device_total=Count("devices", distinct=True))
        return services.with_cloud_connector_active(queryset, level="merchant")

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        return fields if obj is None else _with_active(fields)

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        return fields if obj is None else _with_active(fields)


admin.site.unregister(Store)


@admin.register(Store)
class StoreAdmin(DeviceCountMixin, accounts_admin.StoreAdmin):
    list_display = [*accounts_admin.StoreAdmin.list_display, "device_count"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(device_total=Count("devices", distinct=True))


# --- subscriptions and activations -----------------------------------------------------------


@admin.register(Subscription)
class SubscriptionAdmin(ServiceModelAdmin):
    list_display = ["tenant", "service", "created_at"]
    list_filter = ["service"]
    search_fields = ["tenant__domain", "tenant__name"]
    autocomplete_fields = ["tenant"]
    list_select_related = ["tenant", "service"]
    fields = ["tenant", "service"]

    def create_through_service(self, request, form):
        data = form.cleaned_data
        return services.subscription_create(
            tenant=data["tenant"], service_code=data["service"].code, actor=self.principal(request)
        )

    def delete_through_service(self, request, obj):
        services.subscription_delete(subscription=obj, actor=self.principal(request))


class ActivationLevelFilter(admin.SimpleListFilter):
    title = "level"
    parameter_name = "level"

    def lookups(self, request, model_admin):
        return list(ACTIVATION_LEVELS.items())

    def queryset(self, request, queryset):
        if self.value() in ACTIVATION_LEVELS:
            return queryset.filter(**{f"{self.value()}__isnull": False})
        return queryset


@admin.register(Activation)
class ActivationAdmin(ServiceModelAdmin):
    """Where Cloud Connector is switched on. Activate with the actions on merchant aggregators,
    merchants and devices; deleting a row here deactivates that level."""

    list_display = ["target", "level", "service", "created_at"]
    list_filter = [ActivationLevelFilter, "service"]
    search_fields = ["merchant_aggregator__name", "merchant__name", "device__serial"]
    list_select_related = ["service", "merchant_aggregator", "merchant", "device"]
    fields = ["service", "merchant_aggregator", "merchant", "device", "created_at"]
    readonly_fields = fields

    def write_kind(self, obj=None) -> Kind | None:
        """Deleting a row switches Cloud Connector off at the row's level."""
        return None if obj is None else activation_kind(services.activation_level(self.target(obj)))

    def may_write(self, request, kind: Kind | None) -> bool:
        if kind is not None:
            return super().may_write(request, kind)
        # No row in view (the changelist's bulk delete): offered when some level may be
        # switched off; the service checks each row's own.
        may = super().may_write
        return any(may(request, activation_kind(level)) for level in ACTIVATION_LEVELS)

    @admin.display(description="Activated for")
    def target(self, obj):
        return obj.merchant_aggregator or obj.merchant or obj.device

    @admin.display(description="Level")
    def level(self, obj):
        for field, label in ACTIVATION_LEVELS.items():
            if getattr(obj, f"{field}_id"):
                return label
        return "-"

    def delete_through_service(self, request, obj):
        services.service_deactivate(obj=self.target(obj), actor=self.principal(request))


@admin.register(ServiceDomain)
class ServiceDomainAdmin(ReadOnlyAdmin):
    list_display = ["code", "name"]


@admin.register(Service)
class ServiceAdmin(ReadOnlyAdmin):
    list_display = ["code", "name", "domain"]
    list_select_related = ["domain"]
