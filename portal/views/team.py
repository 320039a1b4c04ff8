"""Team: the people of the administrator's merchant aggregator or merchant (accounts.team).

Everyone of a merchant or an aggregator sees their team; only administrators are offered, and
allowed, to invite, change a role, or deactivate. A set-password link is shown once, on the
response to the POST that made it (never cached: portal_view), and mailed when the person has
an address.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone

from accounts import team
from accounts.errors import Conflict, Invalid
from accounts.models import User
from accounts.permissions import Kind, may_write
from accounts.scope import Level, Principal
from portal.forms import apply_domain_error
from portal.team_forms import RoleForm, TeamInviteForm
from portal.views.base import portal_view, require_level, require_write, scoped_get

ACTIONS = ("deactivate", "reactivate")


def _member(request: HttpRequest, pk: int) -> tuple[Principal, User]:
    principal = require_level(request, Level.MERCHANT)
    return principal, scoped_get(team.team_in_scope(principal=principal), pk)


@portal_view
def team_list(request: HttpRequest) -> HttpResponse:
    principal = require_level(request, Level.MERCHANT)
    members = team.team_in_scope(principal=principal).order_by("-is_active", "username")
    context = {
        "section": "team",
        "members": members,
        "show_place": principal.level < Level.MERCHANT,
        "can_manage": may_write(principal, Kind.USER),
    }
    return render(request, "portal/team_list.html", context)


@portal_view
def team_invite(request: HttpRequest) -> HttpResponse:
    require_level(request, Level.MERCHANT)
    principal = require_write(request, Kind.USER)
    form = TeamInviteForm(request.POST or None, places=team.team_places(principal=principal))
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            invitation = team.team_member_invite(
                actor=principal,
                username=data["username"],
                email=data["email"],
                role=data["role"],
                place=form.chosen_place(),
            )
        except Invalid as error:
            apply_domain_error(form, error)
        else:
            return _link_shown(request, invitation, created=True)
    return render(request, "portal/team_form.html", {"section": "team", "form": form})


def _link_shown(request: HttpRequest, invitation: team.Invitation, *, created: bool) -> HttpResponse:
    path = reverse("portal:password_reset_confirm", args=[invitation.uidb64, invitation.token])
    link = request.build_absolute_uri(path)
    mailed = team.invitation_send(invitation=invitation, link=link, invited_by=request.user.get_username())
    expires = timezone.now() + timedelta(seconds=settings.PASSWORD_RESET_TIMEOUT)
    context = {
        "section": "team",
        "member": invitation.user,
        "link": link,
        "mailed": mailed,
        "created": created,
        "expires": expires,
    }
    return render(request, "portal/team_invited.html", context)


@portal_view
def team_member(request: HttpRequest, pk: int) -> HttpResponse:
    principal, member = _member(request, pk)
    return _member_page(request, principal, member)


def _member_page(
    request: HttpRequest, principal: Principal, member: User, *, form: RoleForm | None = None, status: int = 200
) -> HttpResponse:
    context = {
        "section": "team",
        "member": member,
        "membership": member.membership,
        "is_self": member.pk == request.user.pk,
        "can_manage": may_write(principal, Kind.USER),
        "form": form or RoleForm(initial={"role": member.membership.role}),
        "invited": not member.has_usable_password(),
    }
    return render(request, "portal/team_member.html", context, status=status)


@portal_view
def team_member_role(request: HttpRequest, pk: int) -> HttpResponse:
    principal, member = _member(request, pk)
    principal = require_write(request, Kind.USER)
    if request.method != "POST":
        return redirect("portal:team_member", pk=member.pk)
    form = RoleForm(request.POST)
    status = 400
    if form.is_valid():
        try:
            membership = team.team_member_set_role(actor=principal, user=member, role=form.cleaned_data["role"])
        except (Invalid, Conflict) as error:
            apply_domain_error(form, error)
            status = 409 if isinstance(error, Conflict) else 400
        else:
            messages.success(request, f"{member.username} is now {membership.get_role_display().lower()}.")
            return redirect("portal:team_member", pk=member.pk)
    return _member_page(request, principal, member, form=form, status=status)


@portal_view
def team_member_switch(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    """Confirm (GET) and then deactivate or reactivate (POST) a person."""
    if action not in ACTIONS:
        raise Http404("Not found")
    principal, member = _member(request, pk)
    principal = require_write(request, Kind.USER)
    error = ""
    if request.method == "POST":
        write = team.team_member_deactivate if action == "deactivate" else team.team_member_reactivate
        try:
            write(actor=principal, user=member)
        except Conflict as conflict:
            error = conflict.message
        else:
            done = "can no longer sign in" if action == "deactivate" else "can sign in again"
            messages.success(request, f"{member.username} {done}.")
            return redirect("portal:team_member", pk=member.pk)
    context = {"section": "team", "member": member, "action": action, "error": error}
    return render(request, "portal/team_confirm.html", context, status=409 if error else 200)


@portal_view
def team_member_link(request: HttpRequest, pk: int) -> HttpResponse:
    """A new set-password link for someone invited who has not used theirs (POST only)."""
    principal, member = _member(request, pk)
    principal = require_write(request, Kind.USER)
    if request.method != "POST":
        return redirect("portal:team_member", pk=member.pk)
    try:
        invitation = team.team_member_new_link(actor=principal, user=member)
    except Conflict as conflict:
        messages.error(request, conflict.message)
        return redirect("portal:team_member", pk=member.pk)
    return _link_shown(request, invitation, created=False)
