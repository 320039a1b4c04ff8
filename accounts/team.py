"""A merchant aggregator's or a merchant's own people, managed by its own administrators.

An aggregator's administrators manage the aggregator's people and those of its merchants; a
merchant's administrators, the merchant's people. They invite someone (an account without a
password, and a one-time link to choose one), set a person's role, and deactivate or
reactivate them. Nobody deactivates themselves or gives up their own administrator role: an
administrator who could would lock the team out of its own management by a slip.

Each write runs in a transaction, goes through the write table (Kind.USER) and is audited,
like accounts.services. The set-password link is Django's password reset token: it is bound
to the password hash, so it stops working once used, and expires after
PASSWORD_RESET_TIMEOUT.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.tokens import default_token_generator
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from accounts.audit import audit_record
from accounts.errors import Conflict, Invalid, NotFound
from accounts.models import Membership, Merchant, MerchantAggregator, User
from accounts.permissions import Kind
from accounts.scope import Level, Principal, merchant_aggregators_in_scope, merchants_in_scope
from accounts.services import require_authority, validated

Place = MerchantAggregator | Merchant

SELF_DEACTIVATE = "You cannot deactivate yourself: ask another administrator."
SELF_DEMOTE = "You cannot give up your own administrator role: ask another administrator."


@dataclass(frozen=True)
class Invitation:
    """A new person and the two parts of their one-time set-password link."""

    user: User
    uidb64: str
    token: str


def team_in_scope(*, principal: Principal) -> QuerySet[User]:
    """The people beneath the principal: for an aggregator, its own and its merchants'. Staff
    have no membership and are never anyone's team."""
    users = User.objects.filter(membership__isnull=False).select_related(
        "membership__merchant_aggregator", "membership__merchant__merchant_aggregator"
    )
    if principal.level == Level.PLATFORM:
        return users
    if principal.level == Level.TENANT:
        return users.filter(
            Q(membership__merchant_aggregator__tenant_id=principal.tenant_id)
            | Q(membership__merchant__merchant_aggregator__tenant_id=principal.tenant_id)
        )
    if principal.level == Level.MERCHANT_AGGREGATOR:
        return users.filter(
            Q(membership__merchant_aggregator_id=principal.merchant_aggregator_id)
            | Q(membership__merchant__merchant_aggregator_id=principal.merchant_aggregator_id)
        )
    if principal.level == Level.MERCHANT:
        return users.filter(membership__merchant_id=principal.merchant_id)
    return users.none()


def team_places(*, principal: Principal) -> list[Place]:
    """Where the principal may place people: its aggregator(s), then their merchants."""
    if principal.level > Level.MERCHANT:
        return []
    aggregators = list(merchant_aggregators_in_scope(principal=principal).order_by("name", "id"))
    if principal.level == Level.MERCHANT:
        aggregators = []  # a merchant's people see their aggregator, but do not staff it
    merchants = list(merchants_in_scope(principal=principal).order_by("merchant_aggregator__name", "name", "id"))
    return [*aggregators, *merchants]


def _require_place(actor: Principal, place: Place) -> None:
    places = merchant_aggregators_in_scope if isinstance(place, MerchantAggregator) else merchants_in_scope
    if actor.level == Level.MERCHANT and isinstance(place, MerchantAggregator):
        raise NotFound()
    if not places(principal=actor).filter(pk=place.pk).exists():
        raise NotFound()


def _require_member(actor: Principal, user: User) -> Membership:
    """The person's membership, if they are in the actor's team; not found otherwise."""
    if not team_in_scope(principal=actor).filter(pk=user.pk).exists():
        raise NotFound()
    return Membership.objects.select_for_update().get(user_id=user.pk)


def _require_role(role: str) -> None:
    if role not in Membership.Role.values:
        raise Invalid({"role": [f"Choose one of: {', '.join(Membership.Role.values)}."]})


def _tenant_id(membership: Membership) -> int:
    if membership.merchant_aggregator_id:
        return MerchantAggregator.objects.values_list("tenant_id", flat=True).get(pk=membership.merchant_aggregator_id)
    return Merchant.objects.values_list("merchant_aggregator__tenant_id", flat=True).get(pk=membership.merchant_id)


def _place_data(place: Place) -> dict[str, str | int]:
    kind = "merchant_aggregator" if isinstance(place, MerchantAggregator) else "merchant"
    return {"place": kind, "place_id": place.pk, "place_name": place.name}


@transaction.atomic
def team_member_invite(*, actor: Principal, username: str, email: str, role: str, place: Place) -> Invitation:
    """A person in `place` with `role` and no password yet, and their one-time link."""
    require_authority(actor, Kind.USER)
    _require_place(actor, place)
    _require_role(role)
    if User.objects.filter(username__iexact=username).exists():
        raise Invalid({"username": ["Someone already has this username. Choose another."]})
    user = User(username=username, email=email)
    user.set_unusable_password()
    validated(user)
    user.save()
    is_aggregator = isinstance(place, MerchantAggregator)
    membership = Membership.objects.create(
        user=user,
        merchant_aggregator=place if is_aggregator else None,
        merchant=None if is_aggregator else place,
        role=role,
    )
    audit_record(
        actor=actor,
        action="user.invite",
        obj=user,
        tenant_id=_tenant_id(membership),
        data={"role": role, "email": email, **_place_data(place)},
    )
    return Invitation(user=user, uidb64=urlsafe_base64_encode(force_bytes(user.pk)), token=_token(user))


def _token(user: User) -> str:
    return default_token_generator.make_token(user)


@transaction.atomic
def team_member_new_link(*, actor: Principal, user: User) -> Invitation:
    """Another set-password link for someone who has not chosen a password yet (the first
    was lost or expired); once anyone has a password, they use "forgotten password"."""
    require_authority(actor, Kind.USER)
    membership = _require_member(actor, user)
    if user.has_usable_password():
        raise Conflict(f"{user.username} has chosen a password already; they can reset it from the sign-in page.")
    # A new link cancels the old one: the token is made from the password hash, and a fresh
    # unusable one differs from the last (a link sent to a wrong address dies with it).
    user.set_unusable_password()
    user.save(update_fields=["password"])
    audit_record(actor=actor, action="user.new_link", obj=user, tenant_id=_tenant_id(membership))
    return Invitation(user=user, uidb64=urlsafe_base64_encode(force_bytes(user.pk)), token=_token(user))


@transaction.atomic
def team_member_set_role(*, actor: Principal, user: User, role: str) -> Membership:
    require_authority(actor, Kind.USER)
    membership = _require_member(actor, user)
    _require_role(role)
    if user.pk == actor.user_id and role != Membership.Role.ADMIN:
        raise Conflict(SELF_DEMOTE)
    previous = membership.role
    if previous == role:
        return membership
    membership.role = role
    membership.save(update_fields=["role"])
    audit_record(
        actor=actor,
        action="user.set_role",
        obj=user,
        tenant_id=_tenant_id(membership),
        data={"role": role, "previous": previous},
    )
    return membership


@transaction.atomic
def team_member_deactivate(*, actor: Principal, user: User) -> User:
    """The person can no longer sign in; their open sessions end with it (Django's
    ModelBackend answers no user for an inactive account)."""
    return _set_active(actor=actor, user=user, active=False)


@transaction.atomic
def team_member_reactivate(*, actor: Principal, user: User) -> User:
    return _set_active(actor=actor, user=user, active=True)


def _set_active(*, actor: Principal, user: User, active: bool) -> User:
    require_authority(actor, Kind.USER)
    membership = _require_member(actor, user)
    if user.pk == actor.user_id and not active:
        raise Conflict(SELF_DEACTIVATE)
    locked = User.objects.select_for_update().get(pk=user.pk)
    if locked.is_active == active:
        user.is_active = active
        return user
    locked.is_active = user.is_active = active
    locked.save(update_fields=["is_active"])
    action = "user.reactivate" if active else "user.deactivate"
    audit_record(actor=actor, action=action, obj=locked, tenant_id=_tenant_id(membership))
    return user


def invitation_send(*, invitation: Invitation, link: str, invited_by: str) -> bool:
    """Mail the set-password link through Django's mail API when the person has an address;
    whether a mail was handed to EMAIL_BACKEND. The portal shows the link once as well, so
    that an invitation works where no mail is delivered (development)."""
    user = invitation.user
    if not user.email:
        return False
    send_mail(
        subject="Your Cloud Connector portal account",
        message=(
            f"{invited_by} created an account for you on the Cloud Connector portal.\n\n"
            f"Username: {user.username}\n\n"
            f"Choose your password here (the link works once):\n{link}\n"
        ),
        from_email=None,
        recipient_list=[user.email],
    )
    return True
