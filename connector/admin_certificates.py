"""A device's client certificates on its admin page (v1.1 §15): an inline whose new rows
take a pasted PEM and whose deleted rows remove a certificate, both through
connector.certificates' services (ServiceModelAdmin's inlines are otherwise read-only).
Who may: the write table's `device_certificate` kind."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from accounts.errors import Invalid
from accounts.permissions import Kind, may_write
from accounts.scope import Principal, principal_for_user
from connector import certificates
from connector.models import Device, DeviceCertificate


class DeviceCertificateForm(forms.ModelForm):
    """A new row: one PEM certificate, checked as the service will check it. An enrolled
    row shows what identifies it; its PEM cannot be edited (enrol another, remove this)."""

    class Meta:
        model = DeviceCertificate
        fields = ["pem"]
        widgets = {"pem": forms.Textarea(attrs={"rows": 4, "cols": 66})}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["pem"].disabled = True
            self.fields["pem"].widget = forms.HiddenInput()

    def clean_pem(self) -> str:
        pem = self.cleaned_data["pem"]
        if self.instance.pk:
            return pem
        try:
            parsed = certificates.certificate_parse(pem)
        except Invalid as error:
            raise forms.ValidationError(error.errors["pem"]) from None
        # The service fills these; set here so that the row validates as a model.
        self.instance.fingerprint_sha256 = parsed.fingerprint_sha256
        self.instance.subject = parsed.subject
        self.instance.not_after = parsed.not_after
        return pem


class DeviceCertificateInline(admin.TabularInline):
    model = DeviceCertificate
    form = DeviceCertificateForm
    extra = 0
    fields = ["subject", "fingerprint_sha256", "not_after", "created_at", "pem"]
    readonly_fields = ["subject", "fingerprint_sha256", "not_after", "created_at"]
    verbose_name = "client certificate"
    verbose_name_plural = "client certificates (mTLS): paste a new one's PEM in an added row"

    def _may_write(self, request: HttpRequest) -> bool:
        return may_write(principal_for_user(request.user), Kind.DEVICE_CERTIFICATE)

    def has_add_permission(self, request: HttpRequest, obj: Device | None = None) -> bool:
        return self._may_write(request)

    def has_change_permission(self, request: HttpRequest, obj: Device | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Device | None = None) -> bool:
        return self._may_write(request)

    def has_view_permission(self, request: HttpRequest, obj: Device | None = None) -> bool:
        return True


def certificates_save(*, device: Device, formset: forms.BaseModelFormSet, actor: Principal) -> None:
    """The inline's changes, through the services: removals first, then enrolments. The
    formset's record of them is filled in as its own save() would (the admin's history
    message reads it)."""
    formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
    for form in formset.deleted_forms:
        if form.instance.pk:
            certificates.device_certificate_remove(certificate=form.instance, actor=actor)
            formset.deleted_objects.append(form.instance)
    for form in formset.forms:
        if form in formset.deleted_forms or form.instance.pk or not form.has_changed():
            continue
        enrolled = certificates.device_certificate_enrol(device=device, pem=form.cleaned_data["pem"], actor=actor)
        formset.new_objects.append(enrolled)
