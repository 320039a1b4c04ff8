"""Who may write what: the one table, read by every place that lets someone change something.

The services (accounts.services.require_authority, and connector.services through it), the
REST API's permission (connector/api/permissions.py), the portal (portal/views/base.py
require_write and the `may_write` template filter) and the admin (accounts.admin_base.
ServiceModelAdmin) all ask `write_refusal`; each words the refusal its own way. A principal
writes objects of a kind when its role may write at all (`can_write`) and it stands at the
kind's level or above it (a lower `Level` reaches more). tests/accounts/test_write_table.py
checks that each of them follows this table.

Kinds are names, not model classes, so that accounts never imports the apps that build on it:
`kind_of` maps a model (of any app) to its kind by its label.
"""

from __future__ import annotations

import enum

from django.db import models

from accounts.scope import Level, Principal


class Kind(enum.StrEnum):
    """What a write creates, changes or deletes."""

    TENANT = "tenant"
    MERCHANT_AGGREGATOR = "merchant_aggregator"
    MERCHANT = "merchant"
    STORE = "store"
    POS = "pos"
    CLOUD_APPLICATION = "cloud_application"
    PROVISIONING_CLIENT = "provisioning_client"
    USER = "user"
    STAFF_USER = "staff_user"
    SUBSCRIPTION = "subscription"
    DEVICE = "device"
    DEVICE_SESSION = "device_session"
    # Switching Cloud Connector on or off, per level it is switched at.
    MERCHANT_AGGREGATOR_ACTIVATION = "merchant_aggregator_activation"
    MERCHANT_ACTIVATION = "merchant_activation"
    DEVICE_ACTIVATION = "device_activation"
    WEBHOOK_ENDPOINT = "webhook_endpoint"
    DEVICE_CERTIFICATE = "device_certificate"


# The deepest level at which a principal may write objects of each kind: at this level or
# above it, it may; beneath it, it may not. Mostly the level of the object's parent: a
# merchant user manages its stores, POS and devices, not its merchant.
WRITE_LEVEL: dict[Kind, Level] = {
    Kind.TENANT: Level.PLATFORM,
    Kind.MERCHANT_AGGREGATOR: Level.TENANT,
    Kind.MERCHANT: Level.MERCHANT_AGGREGATOR,
    Kind.STORE: Level.MERCHANT,
    Kind.POS: Level.STORE,
    Kind.CLOUD_APPLICATION: Level.MERCHANT_AGGREGATOR,
    # A provisioning client acts for the whole tenant: nobody below the tenant may make one.
    Kind.PROVISIONING_CLIENT: Level.TENANT,
    # People: an aggregator's administrators manage its people and its merchants'; a merchant's,
    # the merchant's (accounts.team, the portal's Team pages). Which people is the team's scope.
    Kind.USER: Level.MERCHANT,
    Kind.STAFF_USER: Level.PLATFORM,
    Kind.SUBSCRIPTION: Level.TENANT,
    Kind.DEVICE: Level.MERCHANT,
    # Ending a session is an operational act: anyone who may write and sees it may end it.
    Kind.DEVICE_SESSION: Level.STORE,
    # The merchant aggregator manages the service for itself and its merchants; a merchant
    # manages its own devices (e.g. one created after the merchant was activated).
    Kind.MERCHANT_AGGREGATOR_ACTIVATION: Level.MERCHANT_AGGREGATOR,
    Kind.MERCHANT_ACTIVATION: Level.MERCHANT_AGGREGATOR,
    Kind.DEVICE_ACTIVATION: Level.MERCHANT,
    # A merchant's back office receives its devices' events; an aggregator's, all of its
    # merchants'. Which scope a merchant's people may give an endpoint is the service's rule
    # (connector.webhook_endpoints): their merchant's, not their aggregator's.
    Kind.WEBHOOK_ENDPOINT: Level.MERCHANT,
    # A device's identity (v1.1 §15): its enrolled certificates and whether it must present
    # one. Those who manage the merchant's devices manage their identities too.
    Kind.DEVICE_CERTIFICATE: Level.MERCHANT,
}


class Refusal(enum.Enum):
    """Why a principal may not write; each edge words it for its audience."""

    READ_ONLY = "read_only"
    ABOVE_LEVEL = "above_level"


def write_refusal(principal: Principal, kind: Kind) -> Refusal | None:
    """Why `principal` may not write objects of `kind`, or None if it may."""
    if not principal.can_write:
        return Refusal.READ_ONLY
    if principal.level > WRITE_LEVEL[kind]:
        return Refusal.ABOVE_LEVEL
    return None


def may_write(principal: Principal, kind: Kind) -> bool:
    return write_refusal(principal, kind) is None


# Models by label (`app_label.model_name`), so that no app's models need importing here.
_KIND_OF_LABEL = {
    "accounts.tenant": Kind.TENANT,
    "accounts.merchantaggregator": Kind.MERCHANT_AGGREGATOR,
    "accounts.merchant": Kind.MERCHANT,
    "accounts.store": Kind.STORE,
    "accounts.pos": Kind.POS,
    "accounts.cloudapplication": Kind.CLOUD_APPLICATION,
    "accounts.provisioningclient": Kind.PROVISIONING_CLIENT,
    "accounts.user": Kind.USER,
    "accounts.membership": Kind.USER,
    "connector.subscription": Kind.SUBSCRIPTION,
    "connector.device": Kind.DEVICE,
    "connector.devicesession": Kind.DEVICE_SESSION,
    "connector.webhookendpoint": Kind.WEBHOOK_ENDPOINT,
    "connector.devicecertificate": Kind.DEVICE_CERTIFICATE,
}


def kind_of(model: type[models.Model]) -> Kind | None:
    """The kind of a model's objects; None for a model no one writes through a service."""
    return _KIND_OF_LABEL.get(model._meta.label_lower)


def activation_kind(level: str) -> Kind:
    """The kind of switching Cloud Connector at `level` ("merchant_aggregator", "merchant"
    or "device", as connector.services.activation_level names them)."""
    return Kind(f"{level}_activation")
