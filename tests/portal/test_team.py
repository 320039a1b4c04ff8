"""Team management in the portal (accounts.team, portal/views/team.py): administrators invite,
set roles, deactivate and reactivate the people of their scope, every change audited; viewers
see their team and change nothing; nobody deactivates or demotes themselves; outsiders are
not found."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse

from accounts import team
from accounts.errors import Conflict, NotAllowed, NotFound
from accounts.models import AuditEntry, Membership, User
from accounts.scope import principal_for_user
from tests.factories import PASSWORD, MerchantFactory, make_user
from tests.portal.conftest import client_for

pytestmark = pytest.mark.django_db

LINK = re.compile(r"http://testserver/accounts/reset/[^/\s<]+/[^/\s<]+/")


def team_names(response) -> set[str]:
    return {member.username for member in response.context["members"]}


def invite(client, **data):
    return client.post(reverse("portal:team_invite"), {"role": "viewer", "email": "", **data})


def audit(action: str, user: User) -> AuditEntry:
    return AuditEntry.objects.get(action=action, object_type="user", object_id=str(user.pk))


# --- who sees whom ---------------------------------------------------------------------------


def test_a_merchant_admin_sees_the_merchants_people_only(world):
    response = client_for(world.merchant_admin).get(reverse("portal:team_list"))
    assert response.status_code == 200
    assert team_names(response) == {"alice", "victor"}
    assert b'href="/team/invite/"' in response.content


def test_an_aggregator_admin_sees_its_people_and_its_merchants_people(world):
    response = client_for(world.ma_admin).get(reverse("portal:team_list"))
    assert team_names(response) == {"agnes", "vera", "alice", "victor", "mallory"}
    assert "Member of" in response.content.decode()


def test_the_team_is_in_the_navigation_of_merchant_and_aggregator_people(world):
    for user in (world.merchant_admin, world.merchant_viewer, world.ma_admin):
        page = client_for(user).get(reverse("portal:home")).content.decode()
        assert '<a href="/team/"' in page


@pytest.mark.parametrize("outsider", ["other_merchant_admin", "far_ma_admin"])
def test_an_outsider_does_not_find_a_member_of_the_team(world, outsider):
    client = client_for(getattr(world, outsider))
    assert client.get(reverse("portal:team_member", args=[world.merchant_viewer.pk])).status_code == 404
    assert (
        client.post(reverse("portal:team_member_switch", args=[world.merchant_viewer.pk, "deactivate"])).status_code
        == 404
    )
    world.merchant_viewer.refresh_from_db()
    assert world.merchant_viewer.is_active


def test_a_merchant_admin_does_not_find_the_aggregators_people(world):
    client = client_for(world.merchant_admin)
    assert client.get(reverse("portal:team_member", args=[world.ma_admin.pk])).status_code == 404
    response = client.post(reverse("portal:team_member_role", args=[world.ma_viewer.pk]), {"role": "admin"})
    assert response.status_code == 404
    assert world.ma_viewer.membership.role == Membership.Role.VIEWER


def test_staff_are_nobodys_team(world):
    response = client_for(world.ma_admin).get(reverse("portal:team_list"))
    assert "sam" not in team_names(response)
    assert client_for(world.ma_admin).get(reverse("portal:team_member", args=[world.staff.pk])).status_code == 404


def test_an_anonymous_visitor_is_sent_to_sign_in(world):
    response = client_for(None).get(reverse("portal:team_list"))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


# --- viewers: read-only -------------------------------------------------------------------------


@pytest.mark.parametrize("viewer", ["merchant_viewer", "ma_viewer"])
def test_a_viewer_sees_the_team_but_is_offered_nothing(world, viewer):
    client = client_for(getattr(world, viewer))
    page = client.get(reverse("portal:team_list"))
    assert page.status_code == 200
    assert "alice" in team_names(page)
    assert b"Invite someone" not in page.content
    assert b"/team/invite/" not in page.content
    member = client.get(reverse("portal:team_member", args=[world.merchant_admin.pk])).content.decode()
    assert "<form" not in member.split('<main id="main">')[1]
    assert "Deactivate" not in member
    assert "/role/" not in member


@pytest.mark.parametrize("viewer", ["merchant_viewer", "ma_viewer"])
def test_a_viewer_is_refused_every_write(world, viewer):
    client = client_for(getattr(world, viewer))
    target = world.merchant_admin.pk
    assert client.get(reverse("portal:team_invite")).status_code == 403
    assert invite(client, username="sneaky", place=f"merchant-{world.merchant.pk}").status_code == 403
    assert client.post(reverse("portal:team_member_role", args=[target]), {"role": "viewer"}).status_code == 403
    assert client.post(reverse("portal:team_member_switch", args=[target, "deactivate"])).status_code == 403
    assert client.post(reverse("portal:team_member_link", args=[target])).status_code == 403
    assert not User.objects.filter(username="sneaky").exists()
    world.merchant_admin.refresh_from_db()
    assert world.merchant_admin.is_active and world.merchant_admin.membership.role == Membership.Role.ADMIN
    assert not AuditEntry.objects.filter(action__startswith="user.").exclude(action="user.create").exists()


def test_the_services_refuse_a_viewer_too(world):
    viewer = principal_for_user(world.merchant_viewer)
    with pytest.raises(NotAllowed):
        team.team_member_deactivate(actor=viewer, user=world.merchant_admin)
    with pytest.raises(NotAllowed):
        team.team_member_invite(actor=viewer, username="x", email="", role="viewer", place=world.merchant)


# --- inviting ------------------------------------------------------------------------------------


def test_a_merchant_admin_invites_a_viewer_with_a_one_time_link(world):
    client = client_for(world.merchant_admin)
    form = client.get(reverse("portal:team_invite"))
    assert "place" not in form.context["form"].fields  # one place: the merchant

    response = invite(client, username="nadia", email="nadia@example.com")

    assert response.status_code == 200
    nadia = User.objects.get(username="nadia")
    assert nadia.membership.merchant_id == world.merchant.pk
    assert nadia.membership.role == Membership.Role.VIEWER
    assert not nadia.has_usable_password()
    entry = audit("user.invite", nadia)
    assert entry.actor == "user:alice" and entry.actor_user_id == world.merchant_admin.pk
    assert entry.tenant_id == world.tenant.pk
    assert entry.data == {
        "role": "viewer",
        "email": "nadia@example.com",
        "place": "merchant",
        "place_id": world.merchant.pk,
        "place_name": "Corner Shop",
    }
    link = LINK.search(response.content.decode()).group(0)
    assert response["Cache-Control"].startswith("max-age=0")
    assert "no-store" in response["Cache-Control"]
    # Mailed as well, through Django's mail API.
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["nadia@example.com"]
    assert link in mail.outbox[0].body

    # The link sets a password once; then it is dead.
    anonymous = client_for(None)
    form_page = anonymous.get(link, follow=True)
    assert b"Choose a new password" in form_page.content
    set_url = form_page.redirect_chain[-1][0]
    done = anonymous.post(set_url, {"new_password1": PASSWORD, "new_password2": PASSWORD})
    assert done.status_code == 302
    nadia.refresh_from_db()
    assert nadia.check_password(PASSWORD)
    assert b"This link no longer works" in client_for(None).get(link, follow=True).content
    assert client_for(None).login(username="nadia", password=PASSWORD)


def test_an_invitation_without_an_address_sends_no_mail(world):
    response = invite(client_for(world.merchant_admin), username="noel")
    assert response.status_code == 200
    assert LINK.search(response.content.decode())
    assert mail.outbox == []


def test_an_aggregator_admin_places_people_in_the_aggregator_or_one_of_its_merchants(world):
    client = client_for(world.ma_admin)
    choices = dict(client.get(reverse("portal:team_invite")).context["form"].fields["place"].choices)
    assert choices == {
        f"ma-{world.ma.pk}": "Merchant aggregator Acme Aggregation",
        f"merchant-{world.merchant.pk}": "Merchant Corner Shop",
        f"merchant-{world.other_merchant.pk}": "Merchant Rival Shop",
    }
    invite(client, username="adam", role="admin", place=f"ma-{world.ma.pk}")
    invite(client, username="rita", place=f"merchant-{world.other_merchant.pk}")
    adam, rita = User.objects.get(username="adam"), User.objects.get(username="rita")
    assert adam.membership.merchant_aggregator_id == world.ma.pk and adam.membership.role == "admin"
    assert rita.membership.merchant_id == world.other_merchant.pk and rita.membership.role == "viewer"


def test_a_place_outside_the_scope_is_refused(world):
    far_merchant = MerchantFactory(merchant_aggregator=world.far_ma)
    response = invite(client_for(world.ma_admin), username="eve", place=f"merchant-{far_merchant.pk}")
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not User.objects.filter(username="eve").exists()
    merchant_admin = principal_for_user(world.merchant_admin)
    with pytest.raises(NotFound):
        team.team_member_invite(actor=merchant_admin, username="eve", email="", role="viewer", place=world.ma)
    with pytest.raises(NotFound):
        team.team_member_invite(
            actor=merchant_admin, username="eve", email="", role="viewer", place=world.other_merchant
        )
    assert not User.objects.filter(username="eve").exists()


def test_a_taken_username_or_a_bad_one_is_told_on_the_form(world):
    client = client_for(world.merchant_admin)
    taken = invite(client, username="VICTOR")
    assert "Someone already has this username" in taken.content.decode()
    bad = invite(client, username="no spaces please")
    assert (
        "Letters, digits and @/./+/-/_ only" in bad.content.decode() or "Enter a valid username" in bad.content.decode()
    )
    bad_role = invite(client, username="rolf", role="owner")
    assert "Select a valid choice" in bad_role.content.decode()
    assert not User.objects.filter(username__in=["no spaces please", "rolf"]).exists()


def test_a_new_link_for_someone_who_has_not_chosen_a_password(world):
    client = client_for(world.merchant_admin)
    first = LINK.search(invite(client, username="nadia").content.decode()).group(0)
    nadia = User.objects.get(username="nadia")
    page = client.get(reverse("portal:team_member", args=[nadia.pk]))
    assert b"Make a new link" in page.content
    response = client.post(reverse("portal:team_member_link", args=[nadia.pk]))
    assert response.status_code == 200
    second = LINK.search(response.content.decode()).group(0)
    assert audit("user.new_link", nadia).actor == "user:alice"
    # The new link cancels the old one (one sent to a wrong address dies with it).
    assert second != first
    assert "This link no longer works" in Client().get(first, follow=True).content.decode()
    assert "Set password" in Client().get(second, follow=True).content.decode()
    # Victor chose his password long ago: no link for him.
    refused = client.post(reverse("portal:team_member_link", args=[world.merchant_viewer.pk]), follow=True)
    assert "has chosen a password already" in refused.content.decode()


# --- roles ---------------------------------------------------------------------------------------


def test_an_aggregator_admin_changes_a_merchant_admins_role(world):
    client = client_for(world.ma_admin)
    response = client.post(reverse("portal:team_member_role", args=[world.merchant_admin.pk]), {"role": "viewer"})
    assert response.status_code == 302
    world.merchant_admin.refresh_from_db()
    assert world.merchant_admin.membership.role == Membership.Role.VIEWER
    assert not principal_for_user(world.merchant_admin).can_write
    entry = audit("user.set_role", world.merchant_admin)
    assert entry.actor == "user:agnes"
    assert entry.data == {"role": "viewer", "previous": "admin"}
    # The same role again changes nothing and writes nothing.
    client.post(reverse("portal:team_member_role", args=[world.merchant_admin.pk]), {"role": "viewer"})
    assert AuditEntry.objects.filter(action="user.set_role").count() == 1


def test_a_merchant_admin_promotes_a_viewer(world):
    client = client_for(world.merchant_admin)
    client.post(reverse("portal:team_member_role", args=[world.merchant_viewer.pk]), {"role": "admin"})
    world.merchant_viewer.refresh_from_db()
    assert world.merchant_viewer.membership.role == Membership.Role.ADMIN
    assert audit("user.set_role", world.merchant_viewer).data == {"role": "admin", "previous": "viewer"}


def test_nobody_gives_up_their_own_administrator_role(world):
    client = client_for(world.merchant_admin)
    page = client.get(reverse("portal:team_member", args=[world.merchant_admin.pk])).content.decode()
    assert "This is you." in page and "Save role" not in page and "Deactivate" not in page
    response = client.post(reverse("portal:team_member_role", args=[world.merchant_admin.pk]), {"role": "viewer"})
    assert response.status_code == 409
    assert "You cannot give up your own administrator role" in response.content.decode()
    world.merchant_admin.refresh_from_db()
    assert world.merchant_admin.membership.role == Membership.Role.ADMIN
    with pytest.raises(Conflict):
        team.team_member_set_role(
            actor=principal_for_user(world.ma_admin), user=world.ma_admin, role=Membership.Role.VIEWER
        )
    assert not AuditEntry.objects.filter(action="user.set_role").exists()


# --- deactivation ---------------------------------------------------------------------------------


def test_deactivating_someone_asks_first_signs_them_out_and_reactivating_lets_them_back(world):
    victor = client_for(world.merchant_viewer)
    assert victor.get(reverse("portal:home")).status_code == 200
    admin = client_for(world.merchant_admin)
    url = reverse("portal:team_member_switch", args=[world.merchant_viewer.pk, "deactivate"])

    confirm = admin.get(url)
    assert confirm.status_code == 200 and b"can no longer sign in" in confirm.content
    world.merchant_viewer.refresh_from_db()
    assert world.merchant_viewer.is_active

    assert admin.post(url).status_code == 302
    world.merchant_viewer.refresh_from_db()
    assert not world.merchant_viewer.is_active
    assert audit("user.deactivate", world.merchant_viewer).actor == "user:alice"
    assert victor.get(reverse("portal:home"))["Location"].startswith("/accounts/login/")
    assert not client_for(None).login(username="victor", password=PASSWORD)
    listed = admin.get(reverse("portal:team_list")).content.decode()
    assert "deactivated" in listed

    admin.post(reverse("portal:team_member_switch", args=[world.merchant_viewer.pk, "reactivate"]))
    world.merchant_viewer.refresh_from_db()
    assert world.merchant_viewer.is_active
    assert audit("user.reactivate", world.merchant_viewer).actor == "user:alice"
    assert client_for(None).login(username="victor", password=PASSWORD)


def test_nobody_deactivates_themselves(world):
    client = client_for(world.ma_admin)
    response = client.post(reverse("portal:team_member_switch", args=[world.ma_admin.pk, "deactivate"]))
    assert response.status_code == 409
    assert "You cannot deactivate yourself" in response.content.decode()
    world.ma_admin.refresh_from_db()
    assert world.ma_admin.is_active
    assert not AuditEntry.objects.filter(action="user.deactivate").exists()


def test_an_aggregator_admin_deactivates_a_merchants_person(world):
    client_for(world.ma_admin).post(
        reverse("portal:team_member_switch", args=[world.other_merchant_admin.pk, "deactivate"])
    )
    world.other_merchant_admin.refresh_from_db()
    assert not world.other_merchant_admin.is_active
    assert audit("user.deactivate", world.other_merchant_admin).data == {}


def test_an_unknown_action_is_not_found(world):
    url = reverse("portal:team_member_switch", args=[world.merchant_viewer.pk, "delete"])
    assert client_for(world.merchant_admin).post(url).status_code == 404


def test_a_deactivated_admin_made_by_another_admin_is_still_in_the_list(world):
    second = make_user(username="bob", merchant=world.merchant)
    client_for(world.merchant_admin).post(reverse("portal:team_member_switch", args=[second.pk, "deactivate"]))
    response = client_for(world.merchant_admin).get(reverse("portal:team_list"))
    assert "bob" in team_names(response)
    assert [m.username for m in response.context["members"]][-1] == "bob"  # the inactive last
