"""The admin site, for platform staff onboarding tenants: the organisation tree here, the
credentials in admin_credentials.py, people and the audit log in admin_users.py, all on the
service-backed base of admin_base.py.

Apps built on accounts add their own columns, filters and actions by registering subclasses
of these admins in place of them (connector/admin_activation.py: subscriptions, activation
and device counts), so that this app knows nothing of them.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db.models import Count

# Imported for their registrations: Django's autodiscovery imports only this module.
import accounts.admin_credentials  # noqa: F401
import accounts.admin_users  # noqa: F401
from accounts import services
from accounts.admin_base import ServiceModelAdmin
from accounts.models import Merchant, MerchantAggregator, Store, Tenant
from accounts.scope import merchant_aggregators_in_scope, merchants_in_scope, stores_in_scope, tenants_in_scope

admin.site.site_header = "Cloud Connector administration"
admin.site.site_title = "Cloud Connector admin"
admin.site.index_title = "Onboarding"


class TenantForm(forms.ModelForm):
    class Meta:
        model = Tenant
        fields = ["domain", "name"]


@admin.register(Tenant)
class TenantAdmin(ServiceModelAdmin):
    form = TenantForm
    list_display = ["domain", "name", "merchant_aggregator_count", "created_at"]
    search_fields = ["domain", "name"]
    readonly_fields = ["created_at"]

    def get_queryset(self, request):
        return tenants_in_scope(principal=self.principal(request)).annotate(
            merchant_aggregator_total=Count("merchant_aggregators", distinct=True)
        )

    def get_fields(self, request, obj=None):
        return ["domain", "name"] if obj is None else ["domain", "name", "created_at"]

    def get_readonly_fields(self, request, obj=None):
        # The domain is in every integrator's token URL: it never changes after onboarding.
        return ["created_at"] if obj is None else ["domain", "created_at"]

    @admin.display(description="Merchant aggregators", ordering="merchant_aggregator_total")
    def merchant_aggregator_count(self, obj):
        return obj.merchant_aggregator_total

    def create_through_service(self, request, form):
        data = form.cleaned_data
        return services.tenant_create(domain=data["domain"], name=data["name"], actor=self.principal(request))

    def update_through_service(self, request, obj, form):
        if "name" in form.changed_data:
            services.object_rename(obj=obj, name=form.cleaned_data["name"], actor=self.principal(request))


@admin.register(MerchantAggregator)
class MerchantAggregatorAdmin(ServiceModelAdmin):
    list_display = ["name", "tenant", "merchant_count", "created_at"]
    list_filter = ["tenant"]
    search_fields = ["name", "tenant__domain"]
    autocomplete_fields = ["tenant"]

    def get_queryset(self, request):
        queryset = merchant_aggregators_in_scope(principal=self.principal(request)).select_related("tenant")
        return queryset.annotate(merchant_total=Count("merchants", distinct=True))

    def get_readonly_fields(self, request, obj=None):
        return ["created_at"] if obj is None else ["tenant", "created_at"]

    def get_fields(self, request, obj=None):
        return ["tenant", "name"] if obj is None else ["tenant", "name", "created_at"]

    @admin.display(description="Merchants", ordering="merchant_total")
    def merchant_count(self, obj):
        return obj.merchant_total

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
class MerchantAdmin(ServiceModelAdmin):
    list_display = ["name", "merchant_aggregator", "tenant", "store_count"]
    list_filter = [
        ("merchant_aggregator__tenant", admin.RelatedFieldListFilter),
        ("merchant_aggregator", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["name", "merchant_aggregator__name", "merchant_aggregator__tenant__domain"]
    autocomplete_fields = ["merchant_aggregator"]

    def get_queryset(self, request):
        queryset = merchants_in_scope(principal=self.principal(request)).select_related("merchant_aggregator__tenant")
        return queryset.annotate(store_total=Count("stores", distinct=True))

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["merchant_aggregator", "tenant", "created_at"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["merchant_aggregator", "name"]
        return ["merchant_aggregator", "tenant", "name", "created_at"]

    @admin.display(description="Tenant", ordering="merchant_aggregator__tenant__domain")
    def tenant(self, obj):
        return obj.merchant_aggregator.tenant

    @admin.display(description="Stores", ordering="store_total")
    def store_count(self, obj):
        return obj.store_total

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
    list_display = ["name", "merchant", "merchant_aggregator", "tenant", "pos_count"]
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
        return queryset.annotate(pos_total=Count("pos", distinct=True))

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

    def create_through_service(self, request, form):
        data = form.cleaned_data
        return services.store_create(merchant=data["merchant"], name=data["name"], actor=self.principal(request))

    def update_through_service(self, request, obj, form):
        if "name" in form.changed_data:
            services.object_rename(obj=obj, name=form.cleaned_data["name"], actor=self.principal(request))

    def delete_through_service(self, request, obj):
        services.store_delete(store=obj, actor=self.principal(request))
