"""Stores and their POS: the seed's "Store POS Credentials" steps."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Prefetch, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.text import capfirst

from accounts import services as account_services
from accounts.errors import Conflict, Invalid
from accounts.models import POS
from accounts.permissions import Kind
from accounts.scope import Level, merchants_in_scope, pos_in_scope, stores_in_scope
from portal.device_status import device_state, devices_for_portal
from portal.forms import NameForm, StoreCreateForm, apply_domain_error
from portal.terminal_config import terminal_config
from portal.views.base import portal_view, principal_of, require_write, scoped_get


def _stores(request: HttpRequest):
    return stores_in_scope(principal=principal_of(request)).annotate(
        pos_count=Count("pos", distinct=True), device_count=Count("devices", distinct=True)
    )


STORES_PAGE_SIZE = 50


def _stores_searched(stores, q: str, *, principal):
    """Stores whose name (or merchant's, for an aggregator) or one of whose POS' names
    contains `q`, each with the POS that matched in `matched_pos`."""
    if not q:
        return stores
    pos = pos_in_scope(principal=principal).filter(name__icontains=q).order_by("name")
    match = Q(name__icontains=q) | Q(pos__name__icontains=q)
    if principal.level < Level.MERCHANT:
        match |= Q(merchant__name__icontains=q)
    ids = stores.filter(match).values("pk")
    return stores.filter(pk__in=ids).prefetch_related(Prefetch("pos", queryset=pos, to_attr="matched_pos"))


@portal_view
def store_list(request: HttpRequest) -> HttpResponse:
    """The stores in scope, searched by `?q=` (store, merchant or POS name) and paged."""
    principal = principal_of(request)
    q = request.GET.get("q", "").strip()[:120]
    stores = _stores_searched(_stores(request).order_by("merchant__name", "name", "pk"), q, principal=principal)
    page = Paginator(stores, STORES_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "portal/store_list.html",
        {
            "section": "stores",
            "stores": page.object_list,
            "page": page,
            "q": q,
            "show_merchant": principal.level < Level.MERCHANT,
        },
    )


@portal_view
def store_create(request: HttpRequest) -> HttpResponse:
    principal = require_write(request, Kind.STORE)
    merchants = merchants_in_scope(principal=principal).order_by("name")
    form = StoreCreateForm(request.POST or None, parents=merchants)
    if request.method == "POST" and form.is_valid():
        try:
            store = account_services.store_create(
                merchant=form.chosen_parent(), name=form.cleaned_data["name"], actor=principal
            )
        except Invalid as error:
            apply_domain_error(form, error)
        else:
            messages.success(request, f"Store “{store.name}” created. Next: create a POS for it.")
            return redirect("portal:store_detail", pk=store.pk)
    no_merchant = not merchants.exists()
    return render(request, "portal/store_form.html", {"section": "stores", "form": form, "no_merchant": no_merchant})


@portal_view
def store_detail(request: HttpRequest, pk: int) -> HttpResponse:
    principal = principal_of(request)
    store = scoped_get(stores_in_scope(principal=principal), pk)
    pos = pos_in_scope(principal=principal).filter(store=store).order_by("name")
    devices = [device_state(d) for d in devices_for_portal(principal=principal).filter(store=store)]
    return render(
        request,
        "portal/store_detail.html",
        {"section": "stores", "store": store, "pos_list": pos, "devices": devices},
    )


def _rename(request: HttpRequest, principal, obj, *, noun: str, detail: str) -> HttpResponse:
    """The rename form of a store or a POS, through the rename service."""
    form = NameForm(request.POST or None, initial={"name": obj.name})
    if request.method == "POST" and form.is_valid():
        try:
            account_services.object_rename(obj=obj, name=form.cleaned_data["name"], actor=principal)
        except Invalid as error:
            apply_domain_error(form, error)
            # The service set the refused name on the object before refusing it: the title and
            # the breadcrumb name the object as it still is (the form keeps what was typed).
            obj.refresh_from_db(fields=["name"])
        else:
            messages.success(request, f"{capfirst(noun)} renamed to “{obj.name}”.")
            return redirect(detail, pk=obj.pk)
    back = reverse(detail, args=[obj.pk])
    context = {"section": "stores", "form": form, "obj": obj, "noun": noun, "back": back}
    return render(request, "portal/rename_form.html", context)


@portal_view
def store_rename(request: HttpRequest, pk: int) -> HttpResponse:
    principal = require_write(request, Kind.STORE)
    store = scoped_get(stores_in_scope(principal=principal), pk)
    return _rename(request, principal, store, noun="store", detail="portal:store_detail")


@portal_view
def store_delete(request: HttpRequest, pk: int) -> HttpResponse:
    principal = require_write(request, Kind.STORE)
    store = scoped_get(_stores(request), pk)
    error = ""
    if request.method == "POST":
        try:
            account_services.store_delete(store=store, actor=principal)
        except Conflict as conflict:
            error = conflict.message
        else:
            messages.success(request, f"Store “{store.name}” deleted.")
            return redirect("portal:store_list")
    status = 409 if error else 200
    return render(
        request, "portal/store_delete.html", {"section": "stores", "store": store, "error": error}, status=status
    )


# --- POS ---------------------------------------------------------------------------------


@portal_view
def pos_create(request: HttpRequest, store_pk: int) -> HttpResponse:
    principal = require_write(request, Kind.POS)
    store = scoped_get(stores_in_scope(principal=principal), store_pk)
    form = NameForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            issued = account_services.pos_create(store=store, name=form.cleaned_data["name"], actor=principal)
        except Invalid as error:
            apply_domain_error(form, error)
        else:
            return credentials_shown(request, issued=issued, created=True)
    return render(request, "portal/pos_form.html", {"section": "stores", "form": form, "store": store})


def credentials_shown(request: HttpRequest, *, issued, created: bool) -> HttpResponse:
    """The one response that holds a secret: rendered straight from the POST, never stored,
    and marked no-store by portal_view so that no cache keeps it."""
    obj = issued.obj
    is_pos = isinstance(obj, POS)
    config = (
        terminal_config(request=request, client_id=issued.client_id, client_secret=issued.client_secret)
        if is_pos or not obj.missing_for_cloud_connector()
        else None
    )
    context = {
        "section": "stores" if is_pos else "applications",
        "obj": obj,
        "is_pos": is_pos,
        "created": created,
        "client_id": issued.client_id,
        "client_secret": issued.client_secret,
        "config": config,
    }
    return render(request, "portal/credentials_shown.html", context)


@portal_view
def pos_detail(request: HttpRequest, pk: int) -> HttpResponse:
    principal = principal_of(request)
    pos = scoped_get(pos_in_scope(principal=principal), pk)
    devices = [device_state(d) for d in devices_for_portal(principal=principal).filter(store_id=pos.store_id)]
    config = terminal_config(request=request, client_id=pos.application.client_id)
    return render(
        request, "portal/pos_detail.html", {"section": "stores", "pos": pos, "devices": devices, "config": config}
    )


@portal_view
def pos_rename(request: HttpRequest, pk: int) -> HttpResponse:
    principal = require_write(request, Kind.POS)
    pos = scoped_get(pos_in_scope(principal=principal), pk)
    return _rename(request, principal, pos, noun="POS", detail="portal:pos_detail")


@portal_view
def pos_rotate(request: HttpRequest, pk: int) -> HttpResponse:
    principal = require_write(request, Kind.POS)
    pos = scoped_get(pos_in_scope(principal=principal), pk)
    if request.method == "POST":
        issued = account_services.credential_rotate(obj=pos, actor=principal)
        return credentials_shown(request, issued=issued, created=False)
    return render(request, "portal/rotate_confirm.html", {"section": "stores", "obj": pos, "is_pos": True})


@portal_view
def pos_delete(request: HttpRequest, pk: int) -> HttpResponse:
    principal = require_write(request, Kind.POS)
    pos = scoped_get(pos_in_scope(principal=principal), pk)
    if request.method == "POST":
        account_services.pos_delete(pos=pos, actor=principal)
        messages.success(request, f"POS “{pos.name}” deleted; its credential and tokens no longer work.")
        return redirect("portal:store_detail", pk=pos.store_id)
    return render(request, "portal/pos_delete.html", {"section": "stores", "pos": pos})
