"""The service-backed admin: the base every admin of this project's models builds on.

Every write made in the admin is a service call with the staff user's Principal, so that the
admin obeys the same rules and writes the same audit log as the REST API and the portal:
`ServiceModelAdmin` routes add, change and delete to service hooks, turns off whatever has
no hook or what the write table (accounts.permissions) refuses the staff member, and shows
a service's refusal on the form instead of a server error. Client secrets are hashed at
rest; the admin shows one only in the response that created or rotated it, never again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db import models, transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers

from accounts import services
from accounts.errors import DomainError, Invalid
from accounts.permissions import Kind, kind_of, may_write
from accounts.scope import Principal, principal_for_user


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
    the hook is missing, or where the write table (accounts.permissions) refuses the staff
    member the model's kind (`write_kind`). A `DomainError` from a hook is shown on the
    form, on the object's page or in the changelist's messages, and its transaction is
    rolled back.
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

    def write_kind(self, obj: models.Model | None = None) -> Kind | None:
        """What this admin's writes create, change or delete, for the write table."""
        return kind_of(self.model)

    def may_write(self, request: HttpRequest, kind: Kind | None) -> bool:
        """The write table's answer for the staff member; nothing is writable without a kind."""
        return kind is not None and may_write(self.principal(request), kind)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return (
            self._implements("create_through_service")
            and self.may_write(request, self.write_kind())
            and super().has_add_permission(request)
        )

    def has_change_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return (
            self._implements("update_through_service")
            and self.may_write(request, self.write_kind(obj))
            and super().has_change_permission(request, obj)
        )

    def has_delete_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return (
            self._implements("delete_through_service")
            and self.may_write(request, self.write_kind(obj))
            and super().has_delete_permission(request, obj)
        )

    def has_service_write_permission(self, request: HttpRequest) -> bool:
        """For actions that call services on the model's objects (rotate, end...): the model's
        change right and the write table's."""
        return admin.ModelAdmin.has_change_permission(self, request) and self.may_write(request, self.write_kind())

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
