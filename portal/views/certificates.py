"""A device's client certificates in the portal (v1.1 §15): enrol one (paste its PEM),
remove one, require mTLS or stop requiring it. Merchant administrators and above (the write
table's `device_certificate`); the device is found through the caller's scope first, so a
device outside it is a 404 as on its page. The writes are connector.certificates' services;
the list and the terminal's mTLS configuration block are on the device page."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from accounts.errors import Conflict, Invalid
from accounts.permissions import Kind
from connector import certificates
from portal.device_status import devices_for_portal
from portal.views.base import portal_view, require_write, scoped_get


class CertificateForm(forms.Form):
    pem = forms.CharField(
        label="Device certificate (PEM)",
        strip=False,
        max_length=certificates.PEM_LIMIT,
        widget=forms.Textarea(attrs={"rows": 12, "class": "mono", "placeholder": "-----BEGIN CERTIFICATE-----"}),
        help_text="The terminal's own certificate, signed by your device CA. Never its private key.",
    )


def _device(request: HttpRequest, pk: int):
    principal = require_write(request, Kind.DEVICE_CERTIFICATE)
    return principal, scoped_get(devices_for_portal(principal=principal), pk)


def _certificates_of(device) -> str:
    return reverse("portal:device_detail", args=[device.pk]) + "#certificates"


@portal_view
def certificate_enrol(request: HttpRequest, pk: int) -> HttpResponse:
    principal, device = _device(request, pk)
    form = CertificateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            enrolled = certificates.device_certificate_enrol(
                device=device, pem=form.cleaned_data["pem"], actor=principal
            )
        except Invalid as error:
            for message in error.errors.get("pem", []):
                form.add_error("pem", message)
        else:
            messages.success(request, f"Certificate {enrolled.subject} enrolled for {device.tsn}.")
            return redirect(_certificates_of(device))
    return render(request, "portal/certificate_enrol.html", {"section": "devices", "device": device, "form": form})


@portal_view
def certificate_remove(request: HttpRequest, pk: int, certificate_pk: int) -> HttpResponse:
    principal, device = _device(request, pk)
    certificate = certificates.device_certificates(device=device).filter(pk=certificate_pk).first()
    if certificate is None:
        raise Http404("Not found")
    if request.method == "POST":
        try:
            certificates.device_certificate_remove(certificate=certificate, actor=principal)
        except Conflict:
            messages.info(request, "That certificate had already been removed.")
        else:
            messages.success(request, f"Certificate {certificate.subject} removed from {device.tsn}.")
        return redirect(_certificates_of(device))
    return render(
        request,
        "portal/certificate_remove.html",
        {"section": "devices", "device": device, "certificate": certificate},
    )


@portal_view
def require_mtls(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    if action not in ("on", "off"):
        raise Http404("Not found")
    principal, device = _device(request, pk)
    require = action == "on"
    if request.method == "POST":
        certificates.device_require_mtls_set(device=device, require=require, actor=principal)
        if require:
            messages.success(request, f"{device.tsn} now registers only with an enrolled certificate.")
        else:
            messages.success(request, f"{device.tsn} may register with a credential again.")
        return redirect(_certificates_of(device))
    return render(
        request,
        "portal/require_mtls_confirm.html",
        {
            "section": "devices",
            "device": device,
            "require": require,
            "enrolled": certificates.device_certificates(device=device).count(),
        },
    )
