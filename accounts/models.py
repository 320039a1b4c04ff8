"""Who is who: tenants and their hierarchy, users, credentials and the audit log."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from oauth2_provider.models import AbstractApplication

NAME_MAX_LENGTH = 100

domain_validator = RegexValidator(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
    "A domain is 1-63 lower-case letters, digits and hyphens, not starting or ending with a hyphen.",
)


class Tenant(models.Model):
    """A platform client (the PPaaS client), known to its integrators by `domain`."""

    name = models.CharField(max_length=NAME_MAX_LENGTH)
    domain = models.CharField(max_length=63, unique=True, validators=[domain_validator])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["domain"]

    def __str__(self) -> str:
        return self.domain


class MerchantAggregator(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="merchant_aggregators")
    name = models.CharField(max_length=NAME_MAX_LENGTH)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class Merchant(models.Model):
    merchant_aggregator = models.ForeignKey(MerchantAggregator, on_delete=models.CASCADE, related_name="merchants")
    name = models.CharField(max_length=NAME_MAX_LENGTH)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class Store(models.Model):
    merchant = models.ForeignKey(Merchant, on_delete=models.CASCADE, related_name="stores")
    name = models.CharField(max_length=NAME_MAX_LENGTH)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class Application(AbstractApplication):
    """An OAuth2 client. Exactly one of a POS, a Cloud API application or a provisioning
    client owns it; `kind` says which, and `tenant` is the domain its tokens belong to."""

    class Kind(models.TextChoices):
        POS = "pos", "Store POS"
        CLOUD_API = "cloud_api", "Cloud API application"
        PROVISIONING = "provisioning", "Provisioning client"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="oauth_applications")
    kind = models.CharField(max_length=20, choices=Kind.choices)

    class Meta(AbstractApplication.Meta):
        swappable = "OAUTH2_PROVIDER_APPLICATION_MODEL"


class POS(models.Model):
    """A point-of-sale in a store; its credential reaches the store's devices."""

    store = models.ForeignKey(Store, on_delete=models.CASCADE, related_name="pos")
    name = models.CharField(max_length=NAME_MAX_LENGTH)
    application = models.OneToOneField(
        settings.OAUTH2_PROVIDER_APPLICATION_MODEL, on_delete=models.PROTECT, related_name="pos"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "POS"
        verbose_name_plural = "POS"

    def __str__(self) -> str:
        return self.name


class CloudApplication(models.Model):
    """A Cloud API application of a merchant aggregator (the seed's developer application)."""

    SERVICE_CHOICES = ["retail-api"]
    GRANT_TYPE_CHOICES = ["client_credentials"]
    ROLE_CHOICES = ["pos-terminal"]

    merchant_aggregator = models.ForeignKey(MerchantAggregator, on_delete=models.CASCADE, related_name="applications")
    name = models.CharField(max_length=NAME_MAX_LENGTH)
    services = models.JSONField(default=list, blank=True)
    grant_types = models.JSONField(default=list, blank=True)
    roles = models.JSONField(default=list, blank=True)
    application = models.OneToOneField(
        settings.OAUTH2_PROVIDER_APPLICATION_MODEL, on_delete=models.PROTECT, related_name="cloud_application"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name

    def missing_for_cloud_connector(self) -> list[str]:
        """What the application still lacks to reach Cloud Connector, in the seed's words."""
        missing = []
        if "retail-api" not in self.services:
            missing.append("the Retail API service")
        if "client_credentials" not in self.grant_types:
            missing.append("the Client Credentials Grant")
        if "pos-terminal" not in self.roles:
            missing.append("the Point-of-sale Terminal role")
        return missing


class ProvisioningClient(models.Model):
    """A machine client of the REST API acting for its whole tenant."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="provisioning_clients")
    name = models.CharField(max_length=NAME_MAX_LENGTH, default="provisioning")
    application = models.OneToOneField(
        settings.OAUTH2_PROVIDER_APPLICATION_MODEL,
        on_delete=models.PROTECT,
        related_name="provisioning_client",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.tenant.domain}: {self.name}"


class User(AbstractUser):
    """A person. Platform staff are Django staff; everyone else has one membership."""


class Membership(models.Model):
    """A user's place: one merchant aggregator or one merchant, with a role."""

    class Role(models.TextChoices):
        ADMIN = "admin", "Administrator"
        VIEWER = "viewer", "Viewer (read-only)"

    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="membership")
    merchant_aggregator = models.ForeignKey(
        MerchantAggregator, null=True, blank=True, on_delete=models.CASCADE, related_name="memberships"
    )
    merchant = models.ForeignKey(Merchant, null=True, blank=True, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.ADMIN)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(Q(merchant_aggregator__isnull=False) & Q(merchant__isnull=True))
                | (Q(merchant_aggregator__isnull=True) & Q(merchant__isnull=False)),
                name="membership_one_place",
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} @ {self.merchant_aggregator or self.merchant}"


class AuditEntry(models.Model):
    """Who did what to which object, and when. Written by every service function."""

    actor_user = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_entries")
    actor = models.CharField(max_length=200, help_text="Who acted, e.g. user:alice or client:<id>")
    action = models.CharField(max_length=60)
    object_type = models.CharField(max_length=60)
    object_id = models.CharField(max_length=60, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.SET_NULL)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.actor} {self.action} {self.object_type}:{self.object_id}"
