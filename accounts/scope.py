"""Who is acting and what they may reach: the one place that answers it.

A `Principal` is the caller (a user, a POS credential, a Cloud API application, a
provisioning client, or the system) reduced to the node of the organisation tree it
stands on. Every selector takes one and returns only what lies beneath that node, so the
REST API, the portal and the relay consumers answer "not found" for everything else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from django.db.models import F, QuerySet

from accounts.models import (
    POS,
    Application,
    CloudApplication,
    Merchant,
    MerchantAggregator,
    ProvisioningClient,
    Store,
    Tenant,
    User,
)


class Level(enum.IntEnum):
    """How high in the tree a principal stands; lower values reach more."""

    PLATFORM = 0
    TENANT = 1
    MERCHANT_AGGREGATOR = 2
    MERCHANT = 3
    STORE = 4
    NOTHING = 5


@dataclass(frozen=True)
class Principal:
    level: Level
    label: str
    tenant_id: int | None = None
    merchant_aggregator_id: int | None = None
    merchant_id: int | None = None
    store_id: int | None = None
    user_id: int | None = None
    application_id: int | None = None
    can_write: bool = True

    @property
    def is_platform(self) -> bool:
        return self.level == Level.PLATFORM


SYSTEM = Principal(level=Level.PLATFORM, label="system")
NOBODY = Principal(level=Level.NOTHING, label="nobody", can_write=False)


def principal_for_user(user: User) -> Principal:
    if not user.is_active:
        return NOBODY
    label = f"user:{user.get_username()}"
    if user.is_staff:
        return Principal(level=Level.PLATFORM, label=label, user_id=user.pk)
    membership = getattr(user, "membership", None)
    if membership is None:
        return Principal(level=Level.NOTHING, label=label, user_id=user.pk, can_write=False)
    can_write = membership.role == membership.Role.ADMIN
    if membership.merchant_aggregator_id:
        ma = membership.merchant_aggregator
        return Principal(
            level=Level.MERCHANT_AGGREGATOR,
            label=label,
            tenant_id=ma.tenant_id,
            merchant_aggregator_id=ma.pk,
            user_id=user.pk,
            can_write=can_write,
        )
    merchant = membership.merchant
    return Principal(
        level=Level.MERCHANT,
        label=label,
        tenant_id=merchant.merchant_aggregator.tenant_id,
        merchant_aggregator_id=merchant.merchant_aggregator_id,
        merchant_id=merchant.pk,
        user_id=user.pk,
        can_write=can_write,
    )


def _store_pos_principal(*, client_id: str, application_id: int, tenant_id, ma_id, merchant_id, store_id) -> Principal:
    return Principal(
        level=Level.STORE,
        label=f"pos:{client_id}",
        tenant_id=tenant_id,
        merchant_aggregator_id=ma_id,
        merchant_id=merchant_id,
        store_id=store_id,
        application_id=application_id,
        can_write=False,
    )


def _cloud_application_principal(*, client_id: str, application_id: int, tenant_id, ma_id) -> Principal:
    return Principal(
        level=Level.MERCHANT_AGGREGATOR,
        label=f"application:{client_id}",
        tenant_id=tenant_id,
        merchant_aggregator_id=ma_id,
        application_id=application_id,
        can_write=False,
    )


def _provisioning_principal(*, client_id: str, application_id: int, tenant_id) -> Principal:
    return Principal(
        level=Level.TENANT, label=f"provisioning:{client_id}", tenant_id=tenant_id, application_id=application_id
    )


def principal_for_pos(pos: POS) -> Principal:
    merchant = pos.store.merchant
    return _store_pos_principal(
        client_id=pos.application.client_id,
        application_id=pos.application_id,
        tenant_id=merchant.merchant_aggregator.tenant_id,
        ma_id=merchant.merchant_aggregator_id,
        merchant_id=merchant.pk,
        store_id=pos.store_id,
    )


def principal_for_cloud_application(app: CloudApplication) -> Principal:
    return _cloud_application_principal(
        client_id=app.application.client_id,
        application_id=app.application_id,
        tenant_id=app.merchant_aggregator.tenant_id,
        ma_id=app.merchant_aggregator_id,
    )


def principal_for_provisioning_client(client: ProvisioningClient) -> Principal:
    return _provisioning_principal(
        client_id=client.application.client_id, application_id=client.application_id, tenant_id=client.tenant_id
    )


def principal_for_application(application: Application) -> Principal:
    """The principal of any OAuth2 client, by what owns it."""
    kind = Application.Kind
    if application.kind == kind.POS:
        return principal_for_pos(
            POS.objects.select_related("store__merchant__merchant_aggregator", "application").get(
                application=application
            )
        )
    if application.kind == kind.CLOUD_API:
        return principal_for_cloud_application(
            CloudApplication.objects.select_related("merchant_aggregator", "application").get(application=application)
        )
    if application.kind == kind.PROVISIONING:
        return principal_for_provisioning_client(
            ProvisioningClient.objects.select_related("application").get(application=application)
        )
    return NOBODY


# What `principal_for_application` reads, as one row: the application and, through the
# reverse one-to-one links, whichever owner it has with the ids above that owner.
APPLICATION_ROW = {
    "id": "id",
    "client_id": "client_id",
    "kind": "kind",
    "pos_store_id": "pos__store_id",
    "pos_merchant_id": "pos__store__merchant_id",
    "pos_merchant_aggregator_id": "pos__store__merchant__merchant_aggregator_id",
    "pos_tenant_id": "pos__store__merchant__merchant_aggregator__tenant_id",
    "app_id": "cloud_application__id",
    "app_merchant_aggregator_id": "cloud_application__merchant_aggregator_id",
    "app_tenant_id": "cloud_application__merchant_aggregator__tenant_id",
    "app_services": "cloud_application__services",
    "app_grant_types": "cloud_application__grant_types",
    "app_roles": "cloud_application__roles",
    "provisioning_tenant_id": "provisioning_client__tenant_id",
}


def application_row_paths(through: str = "") -> dict[str, F]:
    """`values()` keyword arguments that read APPLICATION_ROW, through a relation path
    (`"application__"` from an access token); the aliases cannot clash with a field."""
    return {f"cred_{name}": F(f"{through}{path}") for name, path in APPLICATION_ROW.items()}


def application_row(values: dict) -> dict:
    """The APPLICATION_ROW part of a `values()` row read with `application_row_paths`."""
    return {name: values[f"cred_{name}"] for name in APPLICATION_ROW}


def principal_from_application_row(row: dict) -> Principal:
    """`principal_for_application`, from a row read in the same query as the application
    (no further query): the relay authenticates on every connect and request."""
    kind, client_id, application_id = row["kind"], row["client_id"], row["id"]
    if kind == Application.Kind.POS and row["pos_store_id"] is not None:
        return _store_pos_principal(
            client_id=client_id,
            application_id=application_id,
            tenant_id=row["pos_tenant_id"],
            ma_id=row["pos_merchant_aggregator_id"],
            merchant_id=row["pos_merchant_id"],
            store_id=row["pos_store_id"],
        )
    if kind == Application.Kind.CLOUD_API and row["app_id"] is not None:
        return _cloud_application_principal(
            client_id=client_id,
            application_id=application_id,
            tenant_id=row["app_tenant_id"],
            ma_id=row["app_merchant_aggregator_id"],
        )
    if kind == Application.Kind.PROVISIONING and row["provisioning_tenant_id"] is not None:
        return _provisioning_principal(
            client_id=client_id, application_id=application_id, tenant_id=row["provisioning_tenant_id"]
        )
    return NOBODY


def row_reaches_terminals(row: dict) -> bool:
    """May this credential reach terminals (Cloud Connector)? A store POS always; a Cloud
    API application only while it has the service, the grant and the role."""
    kind = Application.Kind
    if row["kind"] == kind.POS:
        return row["pos_store_id"] is not None
    if row["kind"] == kind.CLOUD_API and row["app_id"] is not None:
        app = CloudApplication(
            services=row["app_services"] or [], grant_types=row["app_grant_types"] or [], roles=row["app_roles"] or []
        )
        return not app.missing_for_cloud_connector()
    return False


# --- selectors -------------------------------------------------------------------------
#
# Each one filters by the principal's own node and everything above it is implied by the
# foreign keys, so an id from another tenant, MA, merchant or store simply isn't there.


def _prefix_filter(principal: Principal, path: dict[Level, str]) -> dict[str, int] | None:
    """The filter kwargs that keep a queryset beneath the principal, or None for nothing."""
    if principal.level == Level.NOTHING:
        return None
    if principal.level == Level.PLATFORM:
        return {}
    ids = {
        Level.TENANT: principal.tenant_id,
        Level.MERCHANT_AGGREGATOR: principal.merchant_aggregator_id,
        Level.MERCHANT: principal.merchant_id,
        Level.STORE: principal.store_id,
    }
    # The deepest level the model's path knows at or above the principal's own: a merchant
    # user sees its own MA (by id), a store credential its own merchant.
    for level in (Level.STORE, Level.MERCHANT, Level.MERCHANT_AGGREGATOR, Level.TENANT):
        if principal.level >= level and level in path:
            return {path[level]: ids[level]}
    return None


def _scoped(queryset: QuerySet, principal: Principal, path: dict[Level, str]) -> QuerySet:
    kwargs = _prefix_filter(principal, path)
    if kwargs is None:
        return queryset.none()
    return queryset.filter(**kwargs)


def tenants_in_scope(*, principal: Principal) -> QuerySet[Tenant]:
    return _scoped(Tenant.objects.all(), principal, {Level.TENANT: "id"})


def merchant_aggregators_in_scope(*, principal: Principal) -> QuerySet[MerchantAggregator]:
    return _scoped(
        MerchantAggregator.objects.all(),
        principal,
        {Level.TENANT: "tenant_id", Level.MERCHANT_AGGREGATOR: "id"},
    )


def merchants_in_scope(*, principal: Principal) -> QuerySet[Merchant]:
    return _scoped(
        Merchant.objects.select_related("merchant_aggregator"),
        principal,
        {
            Level.TENANT: "merchant_aggregator__tenant_id",
            Level.MERCHANT_AGGREGATOR: "merchant_aggregator_id",
            Level.MERCHANT: "id",
        },
    )


def stores_in_scope(*, principal: Principal) -> QuerySet[Store]:
    return _scoped(
        Store.objects.select_related("merchant__merchant_aggregator"),
        principal,
        {
            Level.TENANT: "merchant__merchant_aggregator__tenant_id",
            Level.MERCHANT_AGGREGATOR: "merchant__merchant_aggregator_id",
            Level.MERCHANT: "merchant_id",
            Level.STORE: "id",
        },
    )


def pos_in_scope(*, principal: Principal) -> QuerySet[POS]:
    return _scoped(
        POS.objects.select_related("store__merchant__merchant_aggregator", "application"),
        principal,
        {
            Level.TENANT: "store__merchant__merchant_aggregator__tenant_id",
            Level.MERCHANT_AGGREGATOR: "store__merchant__merchant_aggregator_id",
            Level.MERCHANT: "store__merchant_id",
            Level.STORE: "store_id",
        },
    )


def cloud_applications_in_scope(*, principal: Principal) -> QuerySet[CloudApplication]:
    # Applications belong to the MA; people and credentials below it never see them.
    if principal.level > Level.MERCHANT_AGGREGATOR:
        return CloudApplication.objects.none()
    return _scoped(
        CloudApplication.objects.select_related("merchant_aggregator", "application"),
        principal,
        {Level.TENANT: "merchant_aggregator__tenant_id", Level.MERCHANT_AGGREGATOR: "merchant_aggregator_id"},
    )


def in_scope(queryset: QuerySet, principal: Principal, path: dict[Level, str]) -> QuerySet:
    """The queryset cut to what lies beneath the principal, `path` naming for each level the
    lookup of that level's id: the rule of these selectors, for the selectors of the apps
    above accounts (connector.selectors: devices and their sessions)."""
    return _scoped(queryset, principal, path)
