"""Cloud API applications of a merchant aggregator: the seed's "Developer Application
Credentials" steps."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts import services as account_services
from accounts.errors import Invalid
from accounts.permissions import Kind
from accounts.scope import Level, cloud_applications_in_scope, merchant_aggregators_in_scope
from portal.forms import (
    GRANT_TYPE_LABELS,
    ROLE_LABELS,
    SERVICE_LABELS,
    ApplicationConfigForm,
    ApplicationCreateForm,
    apply_domain_error,
)
from portal.views.base import portal_view, require_level, require_write, scoped_get
from portal.views.stores import credentials_shown


def _applications(request: HttpRequest):
    principal = require_level(request, Level.MERCHANT_AGGREGATOR)
    return cloud_applications_in_scope(principal=principal)


@portal_view
def application_list(request: HttpRequest) -> HttpResponse:
    apps = _applications(request).order_by("merchant_aggregator__name", "name")
    return render(request, "portal/application_list.html", {"section": "applications", "applications": apps})


@portal_view
def application_create(request: HttpRequest) -> HttpResponse:
    require_level(request, Level.MERCHANT_AGGREGATOR)
    principal = require_write(request, Kind.CLOUD_APPLICATION)
    aggregators = merchant_aggregators_in_scope(principal=principal).order_by("name")
    form = ApplicationCreateForm(request.POST or None, parents=aggregators)
    if request.method == "POST" and form.is_valid():
        try:
            issued = account_services.cloud_application_create(
                merchant_aggregator=form.chosen_parent(),
                name=form.cleaned_data["name"],
                actor=principal,
            )
        except Invalid as error:
            apply_domain_error(form, error)
        else:
            return credentials_shown(request, issued=issued, created=True)
    return render(request, "portal/application_form.html", {"section": "applications", "form": form})


@portal_view
def application_detail(request: HttpRequest, pk: int) -> HttpResponse:
    app = scoped_get(_applications(request), pk)
    form = ApplicationConfigForm(request.POST or None, app=app)
    if request.method == "POST":
        principal = require_write(request, Kind.CLOUD_APPLICATION)
        if form.is_valid():
            try:
                account_services.cloud_application_update(app=app, actor=principal, **form.cleaned_data)
            except Invalid as error:
                apply_domain_error(form, error)
                # The service set the refused values on the object before refusing them: the
                # title, the breadcrumb and the readiness show the application as it still is.
                app.refresh_from_db()
            else:
                messages.success(request, "Application configuration saved.")
                return redirect("portal:application_detail", pk=app.pk)
    context = {
        "section": "applications",
        "app": app,
        "form": form,
        "missing": app.missing_for_cloud_connector(),
        "labels": {**SERVICE_LABELS, **GRANT_TYPE_LABELS, **ROLE_LABELS},
    }
    return render(request, "portal/application_detail.html", context)


@portal_view
def application_rotate(request: HttpRequest, pk: int) -> HttpResponse:
    app = scoped_get(_applications(request), pk)
    principal = require_write(request, Kind.CLOUD_APPLICATION)
    if request.method == "POST":
        issued = account_services.credential_rotate(obj=app, actor=principal)
        return credentials_shown(request, issued=issued, created=False)
    return render(request, "portal/rotate_confirm.html", {"section": "applications", "obj": app, "is_pos": False})


@portal_view
def application_delete(request: HttpRequest, pk: int) -> HttpResponse:
    app = scoped_get(_applications(request), pk)
    principal = require_write(request, Kind.CLOUD_APPLICATION)
    if request.method == "POST":
        account_services.cloud_application_delete(app=app, actor=principal)
        messages.success(request, f"Application “{app.name}” deleted; its credential and tokens no longer work.")
        return redirect("portal:application_list")
    return render(request, "portal/application_delete.html", {"section": "applications", "app": app})
