"""The portal's webhook endpoint forms: the URL, the event types as checkboxes, whether it is
enabled, and (on create, for people who reach more than one) whose devices' events it gets.

The forms read what people type. Whether the URL may be used and the event types make sense
is the service's rule (connector.webhook_endpoints): the form asks its URL check up front, and
any other refusal comes back onto the form through portal.forms.apply_domain_error.
"""

from __future__ import annotations

from django import forms
from django.db.models import QuerySet

from accounts.errors import Invalid
from accounts.models import Merchant, MerchantAggregator
from connector.models import WEBHOOK_EVENT_TYPES
from connector.webhook_endpoints import clean_url
from connector.webhooks.guard import MAX_URL_LENGTH

EVENT_LABELS = {
    "device.online": "device.online: a device connected",
    "device.offline": "device.offline: a device went offline (with the reason)",
    "session.claimed": "session.claimed: a POS claimed a device",
    "session.released": "session.released: the POS released it",
    "session.taken_over": "session.taken_over: another POS took the device over",
    "session.ended": "session.ended: a device's session ended",
    "device.activation_changed": "device.activation_changed: Cloud Connector switched on or off for a device",
}


class WebhookEndpointForm(forms.Form):
    """What may change on an endpoint: where it is, what it receives, whether it is on."""

    url = forms.CharField(
        label="URL",
        max_length=MAX_URL_LENGTH,
        strip=True,
        # A text input (the portal's inputs are styled by type); the server judges the URL.
        widget=forms.TextInput(
            attrs={"inputmode": "url", "placeholder": "https://backoffice.example.com/cloud-connector/events"}
        ),
        help_text="Events are POSTed here, signed with the endpoint's secret. It must start with https://.",
    )
    events = forms.MultipleChoiceField(
        label="Events",
        choices=[(name, EVENT_LABELS.get(name, name)) for name in WEBHOOK_EVENT_TYPES],
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one event type."},
    )
    enabled = forms.BooleanField(label="Enabled: send events to this endpoint", required=False, initial=True)

    def clean_url(self) -> str:
        """The service's URL rule, checked here too so that its message shows beside the
        other fields' errors rather than after they are fixed."""
        try:
            return clean_url(self.cleaned_data["url"])
        except Invalid as error:
            raise forms.ValidationError(error.errors["url"]) from None


class WebhookEndpointCreateForm(WebhookEndpointForm):
    """An endpoint to create; `scope` only for people who reach more than one aggregator or
    merchant. The choices come from scope selectors, so nothing outside the user's reach can
    be offered or accepted."""

    scope = forms.ChoiceField(label="Events of the devices of")
    field_order = ["scope", "url", "events", "enabled"]

    def __init__(
        self,
        *args,
        aggregators: QuerySet[MerchantAggregator],
        merchants: QuerySet[Merchant],
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.targets: dict[str, MerchantAggregator | Merchant] = {}
        for ma in aggregators.order_by("name"):
            self.targets[f"ma-{ma.pk}"] = ma
        for merchant in merchants.select_related("merchant_aggregator").order_by("merchant_aggregator__name", "name"):
            self.targets[f"merchant-{merchant.pk}"] = merchant
        self.fields["scope"].choices = [(key, _scope_label(target)) for key, target in self.targets.items()]
        self.only_target = next(iter(self.targets.values())) if len(self.targets) == 1 else None
        if len(self.targets) <= 1:
            del self.fields["scope"]

    def chosen(self) -> dict[str, MerchantAggregator | Merchant]:
        """The service's scope keyword: `merchant_aggregator=` or `merchant=`."""
        target = self.only_target or self.targets.get(self.cleaned_data.get("scope", ""))
        if isinstance(target, MerchantAggregator):
            return {"merchant_aggregator": target}
        return {"merchant": target} if target is not None else {}


def _scope_label(target: MerchantAggregator | Merchant) -> str:
    if isinstance(target, MerchantAggregator):
        return f"Aggregator {target.name} (all its merchants)"
    return f"Merchant {target.name} ({target.merchant_aggregator.name})"


def scope_label(endpoint) -> str:
    """Whose devices' events an endpoint receives, in words."""
    if endpoint.merchant_aggregator_id:
        return _scope_label(endpoint.merchant_aggregator)
    return _scope_label(endpoint.merchant)
