"""The team pages' forms: who to invite, where, and with which role. The places offered come
from accounts.team.team_places (the scope selectors), so a form never accepts a place outside
the administrator's reach; the rules themselves are the services' (accounts.team)."""

from __future__ import annotations

from django import forms
from django.contrib.auth.validators import UnicodeUsernameValidator

from accounts.models import Membership, MerchantAggregator
from accounts.team import Place

ROLE_HELP = "Administrators change things; viewers see everything of their place and change nothing."


def place_key(place: Place) -> str:
    return f"{'ma' if isinstance(place, MerchantAggregator) else 'merchant'}-{place.pk}"


def place_label(place: Place) -> str:
    if isinstance(place, MerchantAggregator):
        return f"Merchant aggregator {place.name}"
    return f"Merchant {place.name}"


class TeamInviteForm(forms.Form):
    username = forms.CharField(
        max_length=150,
        validators=[UnicodeUsernameValidator()],
        help_text="Letters, digits and @ . + - _ only. They sign in with it.",
    )
    email = forms.EmailField(
        required=False,
        label="E-mail (optional)",
        help_text="When given, the set-password link is also sent there.",
    )
    place = forms.ChoiceField(label="Member of")
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.VIEWER, help_text=ROLE_HELP)

    def __init__(self, *args, places: list[Place], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.places = {place_key(place): place for place in places}
        if len(self.places) == 1:
            del self.fields["place"]
        else:
            self.fields["place"].choices = [(key, place_label(place)) for key, place in self.places.items()]

    def chosen_place(self) -> Place:
        if "place" not in self.fields:
            return next(iter(self.places.values()))
        return self.places[self.cleaned_data["place"]]


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices, help_text=ROLE_HELP)
