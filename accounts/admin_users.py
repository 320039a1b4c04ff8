"""The admin of people: users with their membership, and the audit log (read-only)."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.contrib.auth import password_validation
from django.contrib.auth.models import Group

from accounts import services
from accounts.admin_base import ReadOnlyAdmin, ServiceModelAdmin
from accounts.models import AuditEntry, Membership, Merchant, MerchantAggregator, User


class UserCreateForm(forms.ModelForm):
    password1 = forms.CharField(label="Password", strip=False, widget=forms.PasswordInput)
    password2 = forms.CharField(label="Password again", strip=False, widget=forms.PasswordInput)
    is_staff = forms.BooleanField(
        required=False, label="Platform staff", help_text="Staff administer every tenant through this admin."
    )
    merchant_aggregator = forms.ModelChoiceField(
        queryset=MerchantAggregator.objects.select_related("tenant"), required=False
    )
    merchant = forms.ModelChoiceField(
        queryset=Merchant.objects.select_related("merchant_aggregator__tenant"), required=False
    )
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.ADMIN)

    class Meta:
        model = User
        fields = ["username", "email"]

    def clean(self):
        cleaned = super().clean()
        one, two = cleaned.get("password1"), cleaned.get("password2")
        if one and two and one != two:
            self.add_error("password2", "The two passwords differ.")
        elif one:
            try:
                password_validation.validate_password(one, User(username=cleaned.get("username", "")))
            except forms.ValidationError as error:
                self.add_error("password1", error)
        places = [cleaned.get("merchant_aggregator"), cleaned.get("merchant")]
        if not cleaned.get("is_staff") and sum(place is not None for place in places) != 1:
            self.add_error(None, "Choose exactly one merchant aggregator or one merchant (or make the user staff).")
        return cleaned


class MembershipInline(admin.StackedInline):
    model = Membership
    fields = ["merchant_aggregator", "merchant", "role"]
    readonly_fields = fields
    can_delete = False
    extra = 0

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(User)
class UserAdmin(ServiceModelAdmin):
    """People. Created through `user_create` (with their membership); there is no service to
    change a person yet, so their page is read-only."""

    add_form = UserCreateForm
    list_display = ["username", "email", "is_staff", "is_active", "place", "role", "last_login"]
    list_filter = ["is_staff", "is_active", "membership__role"]
    search_fields = ["username", "email"]
    readonly_fields = ["place", "role", "last_login", "date_joined"]
    inlines = [MembershipInline]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("membership__merchant_aggregator__tenant", "membership__merchant__merchant_aggregator")
        )

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return [
                "username",
                "email",
                "password1",
                "password2",
                "is_staff",
                "merchant_aggregator",
                "merchant",
                "role",
            ]
        return ["username", "email", "first_name", "last_name", "is_staff", "is_superuser", "is_active"] + list(
            self.readonly_fields
        )

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else []

    def _membership(self, obj) -> Membership | None:
        return getattr(obj, "membership", None)

    @admin.display(description="Place")
    def place(self, obj):
        membership = self._membership(obj)
        if membership is None:
            return "platform staff" if obj.is_staff else "-"
        return membership.merchant_aggregator or membership.merchant

    @admin.display(description="Role")
    def role(self, obj):
        membership = self._membership(obj)
        return membership.get_role_display() if membership else "-"

    def create_through_service(self, request, form):
        data = form.cleaned_data
        return services.user_create(
            username=data["username"],
            password=data["password1"],
            email=data.get("email", ""),
            actor=self.principal(request),
            merchant_aggregator=None if data["is_staff"] else data.get("merchant_aggregator"),
            merchant=None if data["is_staff"] else data.get("merchant"),
            role=data["role"],
            is_staff=data["is_staff"],
        )


@admin.register(Membership)
class MembershipAdmin(ReadOnlyAdmin):
    list_display = ["user", "merchant_aggregator", "merchant", "role"]
    list_filter = ["role"]
    search_fields = ["user__username", "merchant_aggregator__name", "merchant__name"]
    list_select_related = ["user", "merchant_aggregator", "merchant"]


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "actor", "action", "object_type", "object_id", "object_repr", "tenant"]
    list_filter = ["object_type", "tenant"]
    search_fields = ["actor", "action", "object_repr", "object_id"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant"]
    fields = [
        "created_at",
        "actor",
        "actor_user",
        "action",
        "object_type",
        "object_id",
        "object_repr",
        "tenant",
        "data",
    ]
    readonly_fields = fields


if admin.site.is_registered(Group):
    # Every staff member is a superuser (accounts.services.user_create): groups would grant nothing.
    admin.site.unregister(Group)
