"""Portal forms: they read and check what people type; services do the writing.

Choices that name objects (a merchant, a store, a credential) are built from querysets
that the view got from the scope selectors, so a form can never offer or accept an object
outside the user's reach.
"""

from __future__ import annotations

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.db.models import QuerySet

from accounts.errors import Conflict, DomainError, Invalid
from accounts.models import NAME_MAX_LENGTH, POS, CloudApplication, Merchant, MerchantAggregator, Store
from portal.login_throttle import BUSY, LOCKED, client_address, lockout_minutes, login_locked, throttled


def apply_domain_error(form: forms.Form, error: DomainError) -> None:
    """Show a service's domain error on the form: field messages where the field is on the
    form, the rest above it. The one place where the portal translates Invalid/Conflict."""
    if isinstance(error, Invalid):
        for field, messages in error.errors.items():
            target = field if field in form.fields else None
            for message in messages:
                form.add_error(target, message)
    elif isinstance(error, Conflict):
        form.add_error(None, error.message)
    else:
        raise error


class NameForm(forms.Form):
    """A name; that it differs from its siblings' is the service's rule (require_unique_name)."""

    name = forms.CharField(max_length=NAME_MAX_LENGTH, strip=True)


class ParentChoiceForm(NameForm):
    """A name and the parent to create it under, chosen only by people who reach more than
    one: `parents` comes from a scope selector."""

    parent_field = ""

    def __init__(self, *args, parents: QuerySet, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        candidates = list(parents[:2])
        self.only_parent = candidates[0] if len(candidates) == 1 else None
        if self.only_parent is not None:
            del self.fields[self.parent_field]
        else:
            self.fields[self.parent_field].queryset = parents
            self.fields[self.parent_field].required = True

    def chosen_parent(self):
        return self.only_parent or self.cleaned_data.get(self.parent_field)


class StoreCreateForm(ParentChoiceForm):
    """A store's name and, for people above one merchant, its merchant."""

    merchant = forms.ModelChoiceField(queryset=Merchant.objects.none(), required=False)
    parent_field = "merchant"
    field_order = ["merchant", "name"]


class ApplicationCreateForm(ParentChoiceForm):
    merchant_aggregator = forms.ModelChoiceField(
        queryset=MerchantAggregator.objects.none(), required=False, label="Merchant aggregator"
    )
    parent_field = "merchant_aggregator"
    field_order = ["merchant_aggregator", "name"]


SERVICE_LABELS = {"retail-api": "Retail API"}
GRANT_TYPE_LABELS = {"client_credentials": "Client Credentials Grant"}
ROLE_LABELS = {"pos-terminal": "Point-of-sale Terminal"}


class ApplicationConfigForm(forms.Form):
    """The seed's three sections: API, Credentials & Security > Credentials, > Roles."""

    name = forms.CharField(max_length=NAME_MAX_LENGTH, strip=True)
    services = forms.MultipleChoiceField(
        choices=[(code, SERVICE_LABELS.get(code, code)) for code in CloudApplication.SERVICE_CHOICES],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        label="Services",
    )
    grant_types = forms.MultipleChoiceField(
        choices=[(code, GRANT_TYPE_LABELS.get(code, code)) for code in CloudApplication.GRANT_TYPE_CHOICES],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        label="Grant types",
    )
    roles = forms.MultipleChoiceField(
        choices=[(code, ROLE_LABELS.get(code, code)) for code in CloudApplication.ROLE_CHOICES],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        label="Roles",
    )

    def __init__(self, *args, app: CloudApplication, **kwargs) -> None:
        kwargs.setdefault(
            "initial", {"name": app.name, "services": app.services, "grant_types": app.grant_types, "roles": app.roles}
        )
        super().__init__(*args, **kwargs)


YES_NO = [("", "Any"), ("yes", "Yes"), ("no", "No")]


class QualifiedStoreField(forms.ModelChoiceField):
    """A store named with its merchant ("Corner Shop › High Street"): an aggregator's
    merchants may each have a store called "High Street"."""

    def label_from_instance(self, obj: Store) -> str:
        return f"{obj.merchant.name} › {obj.name}"


DEVICE_SORTS = [
    ("store", "Store"),
    ("-store", "Store, Z to A"),
    ("tsn", "Device (TSN)"),
    ("-tsn", "Device (TSN), Z to A"),
    ("connection", "Offline first"),
    ("-connection", "Online first"),
    ("-last_seen", "Seen most recently"),
    ("last_seen", "Seen longest ago"),
    ("merchant", "Merchant"),
]


class DeviceFilterForm(forms.Form):
    """The devices list's search, filters and order; `merchants` is None for a merchant's
    users (no merchant filter, store names without their merchant)."""

    q = forms.CharField(required=False, max_length=120, strip=True, label="Search serial or TSN")
    merchant = forms.ModelChoiceField(queryset=Merchant.objects.none(), required=False, empty_label="All merchants")
    store = forms.ModelChoiceField(queryset=Store.objects.none(), required=False, empty_label="All stores")
    make = forms.ChoiceField(required=False)
    active = forms.ChoiceField(choices=YES_NO, required=False, label="Cloud Connector active")
    online = forms.ChoiceField(choices=YES_NO, required=False)
    sort = forms.ChoiceField(choices=DEVICE_SORTS, required=False, label="Order")

    def __init__(
        self, *args, stores: QuerySet[Store], makes: list[str], merchants: QuerySet[Merchant] | None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fields["q"].widget.attrs.update(type="search", placeholder="e.g. 230000050", autocomplete="off")
        if merchants is None:
            del self.fields["merchant"]
            self.fields["sort"].choices = DEVICE_SORTS[:-1]
            self.fields["store"].queryset = stores
        else:
            self.fields["merchant"].queryset = merchants
            self.fields["store"] = QualifiedStoreField(
                queryset=stores.select_related("merchant"), required=False, empty_label="All stores"
            )
        self.fields["make"].choices = [("", "All makes")] + [(make, make) for make in makes]


class TerminalConfigForm(forms.Form):
    """Which credential the terminal registers with, and where its CA file lies."""

    credential = forms.ChoiceField(required=False, label="Credential")
    ssl_profile_crt = forms.CharField(
        required=False,
        max_length=200,
        label="Location of the pem file on the device",
        help_text="Optional: filled into ssl_profile_crt.",
    )

    def __init__(self, *args, pos: QuerySet[POS], applications: QuerySet[CloudApplication], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pos_by_key = {f"pos-{p.pk}": p for p in pos}
        self.apps_by_key = {f"app-{a.pk}": a for a in applications}
        choices = [(key, f"POS {p.name}") for key, p in self.pos_by_key.items()]
        choices += [
            (key, f"Application {a.name} (all devices of {a.merchant_aggregator})")
            for key, a in self.apps_by_key.items()
        ]
        self.fields["credential"].choices = choices

    def clean_ssl_profile_crt(self) -> str:
        value = self.cleaned_data["ssl_profile_crt"]
        if any(char in value for char in '"\n\r'):
            raise forms.ValidationError("A file location may not contain quotes or line breaks.")
        return value

    def chosen(self) -> POS | CloudApplication | None:
        key = self.cleaned_data.get("credential") if self.is_valid() else None
        if not key and self.pos_by_key:
            key = next(iter(self.pos_by_key))
        elif not key and self.apps_by_key:
            key = next(iter(self.apps_by_key))
        return self.pos_by_key.get(key) or self.apps_by_key.get(key)


class PortalAuthenticationForm(AuthenticationForm):
    """The sign-in form; says plainly when repeated failures have locked sign-in, or when a
    busy address must try again in a moment (portal.login_throttle)."""

    def clean(self) -> dict:
        username = self.cleaned_data.get("username")
        if username and login_locked(username=username, address=client_address(self.request)):
            raise self.locked_error()
        try:
            return super().clean()
        except forms.ValidationError:
            reason = throttled(self.request)
            if reason == LOCKED:
                raise self.locked_error() from None
            if reason == BUSY:
                raise forms.ValidationError(
                    "Many sign-ins are failing from your network; try again in a few seconds.", code="throttled"
                ) from None
            raise

    @staticmethod
    def locked_error() -> forms.ValidationError:
        return forms.ValidationError(
            f"Too many failed sign-ins. Try again in {lockout_minutes()} minutes, or reset your password.",
            code="throttled",
        )
