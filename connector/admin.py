"""Admin for the relay's data: devices here (with bulk actions and the CSV import);
subscriptions, activations and the Cloud Connector parts of the organisation tree's admins
in admin_activation.py; sessions, sockets and heartbeats in admin_sessions.py. Writes go
through connector.services with the staff Principal (see accounts.admin_base.ServiceModelAdmin)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

# Imported for their registrations: Django's autodiscovery imports only this module.
import connector.admin_sessions  # noqa: F401
from accounts.admin_base import ServiceModelAdmin, ServiceRejected
from accounts.errors import DomainError
from accounts.scope import tenants_in_scope
from connector import certificates, serial_refusals, services
from connector.admin_activation import ActivationPermissionMixin
from connector.admin_certificates import DeviceCertificateInline, certificates_save
from connector.csv_import import COLUMNS, MAX_FILE_BYTES, MAX_ROWS, devices_import_csv
from connector.models import Device, tsn_lower
from connector.selectors import devices_in_scope
from connector.services import Unusable

UNUSABLE_TEXT = {
    Unusable.DISABLED: "device disabled or not provisioned",
    Unusable.SUBSCRIPTION: "tenant not subscribed",
    Unusable.MERCHANT_AGGREGATOR: "merchant aggregator not active",
    Unusable.MERCHANT: "merchant not active",
    Unusable.DEVICE: "device not active",
}

# The order of services.unusable_reason_from_flags: the first failing check is the reason.
_REASON_CHECKS: list[tuple[Unusable, Q]] = [
    (Unusable.DISABLED, Q(provisioned=False) | Q(enabled=False)),
    *((reason, Q(**{flag: False})) for flag, reason in services.ACTIVATION_REASONS),
]


def _reason_filter(reason: Unusable) -> Q:
    """Devices whose first failing check is `reason`."""
    condition = Q()
    for earlier, failing in _REASON_CHECKS:
        if earlier == reason:
            return condition & failing
        condition &= ~failing
    raise ValueError(reason)


class DeviceActiveFilter(admin.SimpleListFilter):
    title = "Cloud Connector active (device level)"
    parameter_name = "active"

    def lookups(self, request, model_admin):
        return [("yes", "Active"), ("no", "Not active")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(device_active=self.value() == "yes")
        return queryset


class DeviceUsableFilter(admin.SimpleListFilter):
    title = "usable for Cloud Connector"
    parameter_name = "usable"

    def lookups(self, request, model_admin):
        return [("yes", "Usable")] + [(reason.value, f"No: {text}") for reason, text in UNUSABLE_TEXT.items()]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "yes":
            return queryset.filter(usable=True)
        if value in {reason.value for reason in Unusable}:
            return queryset.filter(_reason_filter(Unusable(value)))
        return queryset


class DeviceOnlineFilter(admin.SimpleListFilter):
    title = "online"
    parameter_name = "online"

    def lookups(self, request, model_admin):
        return [("yes", "Online"), ("no", "Offline")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(online=self.value() == "yes")
        return queryset


class DeviceImportForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=None, help_text="Merchants and stores are looked up in this tenant.")
    # Empty files reach the import service, which explains what the file needs.
    file = forms.FileField(allow_empty_file=True, help_text="A CSV file, UTF-8.")

    def __init__(self, *args, tenants, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["tenant"].queryset = tenants


# Presence (v1.1 §11) is written by the relay as it happens (connector.history): shown, never
# edited, or the admin would contradict the device's sockets.
PRESENCE_FIELDS = ["online", "online_since", "offline_since", "last_seen_at", "disconnect_reason"]


@admin.register(Device)
class DeviceAdmin(ActivationPermissionMixin, ServiceModelAdmin):
    activation_level = "device"
    list_display = [
        "tsn",
        "tenant",
        "merchant",
        "store",
        "enabled",
        "provisioned",
        "cloud_connector_active",
        "usability",
        "online",
        "last_seen_at",
    ]
    list_filter = [
        "tenant",
        ("merchant", admin.RelatedOnlyFieldListFilter),
        ("store", admin.RelatedOnlyFieldListFilter),
        "make",
        "enabled",
        DeviceActiveFilter,
        DeviceUsableFilter,
        DeviceOnlineFilter,
    ]
    search_fields = ["serial", "make", "model"]
    autocomplete_fields = ["merchant", "store"]
    actions = [
        "enable_devices",
        "disable_devices",
        "activate_cloud_connector",
        "deactivate_cloud_connector",
    ]
    list_per_page = 100
    inlines = [DeviceCertificateInline]

    def get_queryset(self, request):
        queryset = devices_in_scope(principal=self.principal(request)).select_related(
            "tenant", "merchant__merchant_aggregator", "store"
        )
        return services.devices_with_activation(queryset)

    def get_search_results(self, request, queryset, search_term):
        # A fully qualified tsn (make-model-serial) is what support people paste: match it whole.
        term = search_term.strip()
        if 2 <= term.count("-") <= 8 and " " not in term:
            by_tsn = queryset.annotate(tsn_lower=tsn_lower()).filter(tsn_lower=term.lower())
            if by_tsn.exists():
                return by_tsn, False
        return super().get_search_results(request, queryset, search_term)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["merchant", "store", "make", "model", "serial", "enabled", "provisioned"]
        return [
            "tsn",
            "tenant",
            "merchant",
            "store",
            "make",
            "model",
            "serial",
            "enabled",
            "provisioned",
            "require_mtls",
            "cloud_connector_active",
            "usability",
            *PRESENCE_FIELDS,
            "sessions",
            "created_at",
        ]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return [
            "tsn",
            "tenant",
            "merchant",
            "cloud_connector_active",
            "usability",
            *PRESENCE_FIELDS,
            "sessions",
            "created_at",
        ]

    @admin.display(description="TSN", ordering="serial")
    def tsn(self, obj):
        return obj.tsn

    @admin.display(boolean=True, description="Cloud Connector active", ordering="device_active")
    def cloud_connector_active(self, obj):
        return obj.device_active

    @admin.display(description="Usable")
    def usability(self, obj):
        reason = services.unusable_reason_from_flags(obj)
        if reason is None:
            return format_html('<span style="color: var(--message-success-fg, green)">{}</span>', "usable")
        return format_html('<span style="color: var(--error-fg, #ba2121)">no: {}</span>', UNUSABLE_TEXT[reason])

    @admin.display(boolean=True, description="Online", ordering="online")
    def online(self, obj):
        return obj.online

    @admin.display(description="Last disconnect reason", ordering="last_disconnect_reason")
    def disconnect_reason(self, obj):
        return obj.last_disconnect_reason or "–"

    @admin.display(description="Sessions")
    def sessions(self, obj):
        url = reverse("admin:connector_devicesession_changelist") + f"?device__id__exact={obj.pk}"
        return format_html('<a href="{}">{} session(s)</a>', url, obj.sessions.count())

    def create_through_service(self, request, form):
        data = form.cleaned_data
        return services.device_create(
            merchant=data["merchant"],
            store=data["store"],
            make=data["make"],
            model=data["model"],
            serial=data["serial"],
            enabled=data["enabled"],
            provisioned=data["provisioned"],
            actor=self.principal(request),
        )

    def update_through_service(self, request, obj, form):
        if "require_mtls" in form.changed_data:
            certificates.device_require_mtls_set(
                device=obj, require=form.cleaned_data["require_mtls"], actor=self.principal(request)
            )
        changes = {field: form.cleaned_data[field] for field in form.changed_data if field in services.DEVICE_UPDATABLE}
        if changes:
            services.device_update(device=obj, actor=self.principal(request), **changes)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        response = super().changeform_view(request, object_id, form_url, extra_context)
        # The admin's own transaction rolled back the audit entry of a refused serial along
        # with the write; record it again now that the transaction is over.
        refusal = getattr(request, "_service_error", None)
        attempt = getattr(refusal, "attempt", None)
        if isinstance(attempt, serial_refusals.Attempt):
            serial_refusals.refusal_audit(attempt)
        return response

    def delete_through_service(self, request, obj):
        services.device_delete(device=obj, actor=self.principal(request))

    def get_inline_instances(self, request, obj=None):
        # Certificates are enrolled for a device that exists: not on the add form.
        return super().get_inline_instances(request, obj) if obj is not None else []

    def save_related(self, request, form, formsets, change) -> None:
        # The certificates inline writes through its services (v1.1 §15); nothing else does.
        for formset in formsets:
            if formset.model is DeviceCertificateInline.model:
                try:
                    certificates_save(device=form.instance, formset=formset, actor=self.principal(request))
                except DomainError as error:
                    raise ServiceRejected(error) from error

    # --- bulk actions ---

    def _set_enabled(self, request, queryset, enabled: bool, done: str) -> None:
        actor = self.principal(request)
        self.apply_each(
            request,
            queryset.filter(enabled=not enabled),
            lambda device: services.device_update(device=device, enabled=enabled, actor=actor),
            done,
        )

    @admin.action(description="Enable", permissions=["change"])
    def enable_devices(self, request, queryset):
        self._set_enabled(request, queryset, True, "Devices enabled")

    @admin.action(description="Disable (ends their sessions)", permissions=["change"])
    def disable_devices(self, request, queryset):
        self._set_enabled(request, queryset, False, "Devices disabled")

    @admin.action(description="Activate Cloud Connector", permissions=["activation_write"])
    def activate_cloud_connector(self, request, queryset):
        actor = self.principal(request)
        self.apply_each(
            request,
            queryset.filter(device_active=False),
            lambda device: services.service_activate(obj=device, actor=actor),
            "Cloud Connector activated for devices",
        )
        self._report_still_unusable(request, queryset)

    @admin.action(description="Deactivate Cloud Connector (ends their sessions)", permissions=["activation_write"])
    def deactivate_cloud_connector(self, request, queryset):
        actor = self.principal(request)
        self.apply_each(
            request,
            queryset.filter(device_active=True),
            lambda device: services.service_deactivate(obj=device, actor=actor),
            "Cloud Connector deactivated for devices",
        )

    def _report_still_unusable(self, request, queryset) -> None:
        """After activating, say which devices still cannot connect and why (a level above)."""
        fresh = services.devices_with_activation(Device.objects.filter(pk__in=queryset.values("pk")))
        reasons: dict[Unusable, int] = {}
        for device in fresh:
            reason = services.unusable_reason_from_flags(device)
            if reason is not None:
                reasons[reason] = reasons.get(reason, 0) + 1
        for reason, count in reasons.items():
            self.message_user(
                request, f"{count} selected device(s) still unusable: {UNUSABLE_TEXT[reason]}.", messages.WARNING
            )

    # --- CSV import ---

    def get_urls(self):
        view = self.admin_site.admin_view(self.import_csv_view)
        return [path("import-csv/", view, name="connector_device_import_csv"), *super().get_urls()]

    def import_csv_view(self, request):
        if not self.has_add_permission(request):
            raise PermissionDenied
        principal = self.principal(request)
        tenants = tenants_in_scope(principal=principal)
        bound = request.method == "POST"
        form = DeviceImportForm(request.POST if bound else None, request.FILES if bound else None, tenants=tenants)
        result = None
        if bound and form.is_valid():
            try:
                result = devices_import_csv(
                    tenant=form.cleaned_data["tenant"], file=form.cleaned_data["file"], actor=principal
                )
            except DomainError as error:
                form.add_error(None, error.message)
            if result is not None and result.ok:
                self.message_user(
                    request,
                    f"Imported {result.created} device(s) into {form.cleaned_data['tenant']}. They are not active "
                    "for Cloud Connector until activated: select them and use the action.",
                    messages.SUCCESS,
                )
                changelist = reverse("admin:connector_device_changelist")
                return HttpResponseRedirect(f"{changelist}?tenant__id__exact={form.cleaned_data['tenant'].pk}")
        context = {
            **self.admin_site.each_context(request),
            "title": "Import devices from CSV",
            "opts": self.opts,
            "form": form,
            "result": result,
            "columns": ",".join(COLUMNS),
            "max_rows": MAX_ROWS,
            "max_mib": MAX_FILE_BYTES // 1024 // 1024,
        }
        return TemplateResponse(request, "admin/connector/device/import_csv.html", context)
