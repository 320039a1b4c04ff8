"""Query filters of the list endpoints. A value that cannot be read (a non-integer id, a
boolean that is neither true nor false, an unknown state, or an id, boolean or state given
empty) is a 400, never ignored; an id that matches nothing in scope simply gives an empty
list. An empty text filter (`make`, `tsn`, `search`) is a valid string and filters nothing."""

from __future__ import annotations

import django_filters
import django_filters.fields
from django import forms
from django.db.models import Q, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field

from accounts.models import POS, CloudApplication, Merchant, Store
from connector.api.serializers import MAX_ID
from connector.models import Device, DeviceSession, tsn_lower


class NotBlankMixin:
    """A parameter left out filters nothing; one given empty (`?state=`) is refused, since the
    schema has no empty id, boolean or state and a client that sends one has a bug."""

    blank_message = "Give a value or leave the parameter out."

    def clean(self, value):
        if value == "":
            raise forms.ValidationError(self.blank_message, code="blank")
        return super().clean(value)


class NotBlankIntegerField(NotBlankMixin, forms.IntegerField):
    pass


class NotBlankChoiceField(NotBlankMixin, django_filters.fields.ChoiceField):
    pass


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": MAX_ID})
class IdFilter(django_filters.Filter):
    field_class = NotBlankIntegerField

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_ID)
        super().__init__(*args, **kwargs)


class StrictBooleanField(NotBlankMixin, forms.Field):
    default_error_messages = {"invalid": "Use true or false."}
    truthy = {"true"}
    falsy = {"false"}

    def to_python(self, value):
        if value in (None, ""):
            return None
        text = str(value).strip().lower()
        if text in self.truthy:
            return True
        if text in self.falsy:
            return False
        raise forms.ValidationError(self.error_messages["invalid"], code="invalid")


@extend_schema_field(OpenApiTypes.BOOL)
class StrictBooleanFilter(django_filters.BooleanFilter):
    field_class = StrictBooleanField


def filter_tsn(queryset: QuerySet, *, value: str, prefix: str = "") -> QuerySet:
    """Match a terminal serial number as the relay does: the fully qualified
    `{make}-{model}-{serial}` or the serial alone, case-insensitively."""
    return queryset.annotate(_tsn=tsn_lower(prefix)).filter(
        Q(_tsn=value.lower()) | Q(**{f"{prefix}serial__iexact": value})
    )


TSN_HELP = "A terminal serial number: `{make}-{model}-{serial}` or the serial alone, case-insensitive."


class MerchantFilter(django_filters.FilterSet):
    merchant_aggregator = IdFilter(field_name="merchant_aggregator_id")

    class Meta:
        model = Merchant
        fields = ["merchant_aggregator"]


class StoreFilter(django_filters.FilterSet):
    merchant = IdFilter(field_name="merchant_id")

    class Meta:
        model = Store
        fields = ["merchant"]


class PosFilter(django_filters.FilterSet):
    store = IdFilter(field_name="store_id")
    merchant = IdFilter(field_name="store__merchant_id")

    class Meta:
        model = POS
        fields = ["store", "merchant"]


class ApplicationFilter(django_filters.FilterSet):
    merchant_aggregator = IdFilter(field_name="merchant_aggregator_id")

    class Meta:
        model = CloudApplication
        fields = ["merchant_aggregator"]


class DeviceFilter(django_filters.FilterSet):
    merchant = IdFilter(field_name="merchant_id")
    store = IdFilter(field_name="store_id")
    make = django_filters.CharFilter(field_name="make", lookup_expr="iexact", max_length=40)
    enabled = StrictBooleanFilter(field_name="enabled")
    active = StrictBooleanFilter(field_name="device_active", help_text="Activated for the device itself.")
    online = StrictBooleanFilter(field_name="online")
    tsn = django_filters.CharFilter(method="filter_by_tsn", max_length=150, help_text=TSN_HELP)
    search = django_filters.CharFilter(
        method="filter_by_search", max_length=150, help_text="Part of the terminal serial number (make, model, serial)."
    )

    class Meta:
        model = Device
        fields = ["merchant", "store", "make", "enabled", "active", "online", "tsn", "search"]

    def filter_by_tsn(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return filter_tsn(queryset, value=value)

    def filter_by_search(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.annotate(_tsn=tsn_lower()).filter(_tsn__contains=value.lower())


class StateFilter(django_filters.ChoiceFilter):
    field_class = NotBlankChoiceField


class DeviceSessionFilter(django_filters.FilterSet):
    state = StateFilter(choices=DeviceSession.State.choices)
    tsn = django_filters.CharFilter(method="filter_by_tsn", max_length=150, help_text=TSN_HELP)

    class Meta:
        model = DeviceSession
        fields = ["state", "tsn"]

    def filter_by_tsn(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return filter_tsn(queryset, value=value, prefix="device__")
