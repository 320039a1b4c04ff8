"""Writes to the organisation tree and its credentials. Each runs in a transaction and
records its actor in the audit log; callers fetch the objects they pass through the
scope selectors, so a service never sees an object outside its caller's reach."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import models, transaction
from oauth2_provider.generators import generate_client_id, generate_client_secret
from oauth2_provider.models import AccessToken, RefreshToken

from accounts.audit import audit_record
from accounts.errors import Conflict, Invalid, NotAllowed
from accounts.models import (
    POS,
    Application,
    CloudApplication,
    Membership,
    Merchant,
    MerchantAggregator,
    ProvisioningClient,
    Store,
    Tenant,
    User,
)
from accounts.permissions import Kind, kind_of, write_refusal
from accounts.scope import Principal
from accounts.signals import credential_revoked, secret_replaced


@dataclass(frozen=True)
class IssuedSecret:
    """A credential together with its secret in clear text, which exists only here."""

    obj: models.Model
    client_id: str
    client_secret: str


def require_authority(actor: Principal, kind: Kind | type[models.Model]) -> None:
    """Refuse unless the write table (accounts.permissions) lets `actor` create, change or
    delete objects of `kind` (a Kind, or a model that has one)."""
    if write_refusal(actor, kind if isinstance(kind, Kind) else kind_of(kind)) is not None:
        raise NotAllowed("Your role may not change this.")


def validated(obj: models.Model, *, exclude: list[str] | None = None) -> models.Model:
    """Run the model's validation and raise it as a domain error with field messages."""
    try:
        obj.full_clean(exclude=exclude)
    except ValidationError as error:
        raise Invalid(error.message_dict) from None
    return obj


def _siblings(obj: Store | POS | CloudApplication) -> models.QuerySet | None:
    """The objects whose names must differ from obj's: people pick stores, POS and
    applications by name, so two alike under one parent would be a trap."""
    if isinstance(obj, Store):
        siblings = Store.objects.filter(merchant_id=obj.merchant_id)
    elif isinstance(obj, POS):
        siblings = POS.objects.filter(store_id=obj.store_id)
    elif isinstance(obj, CloudApplication):
        siblings = CloudApplication.objects.filter(merchant_aggregator_id=obj.merchant_aggregator_id)
    else:
        return None
    return siblings.exclude(pk=obj.pk) if obj.pk else siblings


def require_unique_name(obj: models.Model, *, owner: models.Model | None = None) -> None:
    """Refuse a name already used by a sibling (compared without case); `owner`, when
    given, names the parent in the message."""
    siblings = _siblings(obj)
    if siblings is None or not siblings.filter(name__iexact=obj.name).exists():
        return
    article, noun = {Store: ("a", "store"), POS: ("a", "POS"), CloudApplication: ("an", "application")}[type(obj)]
    if owner is not None:
        message = f"{owner} already has {article} {noun} called “{obj.name}”. Choose another name."
    else:
        message = f"There is already {article} {noun} called “{obj.name}” here. Choose another name."
    raise Invalid({"name": [message]})


# --- tenants and the hierarchy -------------------------------------------------------


@transaction.atomic
def tenant_create(*, domain: str, name: str, actor: Principal) -> Tenant:
    require_authority(actor, Kind.TENANT)
    tenant = validated(Tenant(domain=domain, name=name or domain))
    tenant.save()
    audit_record(actor=actor, action="tenant.create", obj=tenant, tenant_id=tenant.pk)
    return tenant


@transaction.atomic
def merchant_aggregator_create(*, tenant: Tenant, name: str, actor: Principal) -> MerchantAggregator:
    require_authority(actor, MerchantAggregator)
    ma = validated(MerchantAggregator(tenant=tenant, name=name))
    ma.save()
    audit_record(actor=actor, action="merchant_aggregator.create", obj=ma, tenant_id=tenant.pk)
    return ma


@transaction.atomic
def merchant_create(*, merchant_aggregator: MerchantAggregator, name: str, actor: Principal) -> Merchant:
    require_authority(actor, Merchant)
    merchant = validated(Merchant(merchant_aggregator=merchant_aggregator, name=name))
    merchant.save()
    audit_record(actor=actor, action="merchant.create", obj=merchant, tenant_id=merchant_aggregator.tenant_id)
    return merchant


@transaction.atomic
def store_create(*, merchant: Merchant, name: str, actor: Principal) -> Store:
    require_authority(actor, Store)
    store = validated(Store(merchant=merchant, name=name))
    require_unique_name(store, owner=merchant)
    store.save()
    audit_record(actor=actor, action="store.create", obj=store, tenant_id=_tenant_of_merchant(merchant))
    return store


@transaction.atomic
def object_rename(*, obj: MerchantAggregator | Merchant | Store | POS | CloudApplication, name: str, actor: Principal):
    require_authority(actor, type(obj))
    obj.name = name
    validated(obj)
    require_unique_name(obj)
    obj.save(update_fields=["name"])
    audit_record(
        actor=actor, action=f"{obj._meta.model_name}.rename", obj=obj, tenant_id=_tenant_of(obj), data={"name": name}
    )
    return obj


@transaction.atomic
def store_delete(*, store: Store, actor: Principal) -> None:
    require_authority(actor, Store)
    if store.devices.exists():
        raise Conflict("The store still has devices; move or delete them first.")
    for pos in list(store.pos.all()):
        pos_delete(pos=pos, actor=actor)
    audit_record(actor=actor, action="store.delete", obj=store, tenant_id=_tenant_of(store))
    store.delete()


@transaction.atomic
def merchant_delete(*, merchant: Merchant, actor: Principal) -> None:
    require_authority(actor, Merchant)
    if merchant.devices.exists():
        raise Conflict("The merchant still has devices; delete them first.")
    for store in list(merchant.stores.all()):
        store_delete(store=store, actor=actor)
    audit_record(actor=actor, action="merchant.delete", obj=merchant, tenant_id=_tenant_of(merchant))
    merchant.delete()


@transaction.atomic
def merchant_aggregator_delete(*, merchant_aggregator: MerchantAggregator, actor: Principal) -> None:
    require_authority(actor, MerchantAggregator)
    for merchant in list(merchant_aggregator.merchants.all()):
        merchant_delete(merchant=merchant, actor=actor)
    for app in list(merchant_aggregator.applications.all()):
        cloud_application_delete(app=app, actor=actor)
    audit_record(
        actor=actor,
        action="merchant_aggregator.delete",
        obj=merchant_aggregator,
        tenant_id=merchant_aggregator.tenant_id,
    )
    merchant_aggregator.delete()


# --- credentials -----------------------------------------------------------------------


def _application_new(*, tenant_id: int, kind: str, name: str) -> tuple[Application, str]:
    secret = generate_client_secret()
    application = Application(
        tenant_id=tenant_id,
        kind=kind,
        name=name[:255],
        client_id=generate_client_id(),
        client_secret=secret,
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
        hash_client_secret=True,
    )
    application.save()  # hashes the secret: from here on only `secret` holds it in clear
    return application, secret


def credential_revoke_tokens(*, application: Application, reason: str = "credential_revoked") -> None:
    """Revoke every token of a credential; the relay, told by the `credential_revoked`
    signal, closes the sockets that used them and ends the sessions registered with it."""
    # Locked first, so that a registration checked against this credential either commits
    # before (and its session is found and ended) or waits and is refused (the relay's
    # caller authentication checks that the credential still holds, under this lock).
    list(Application.objects.select_for_update().filter(pk=application.pk).values_list("pk"))
    AccessToken.objects.filter(application=application).delete()
    RefreshToken.objects.filter(application=application).delete()
    credential_revoked.send(sender=Application, application_id=application.pk, reason=reason)


@transaction.atomic
def pos_create(*, store: Store, name: str, actor: Principal) -> IssuedSecret:
    require_authority(actor, POS)
    tenant_id = _tenant_of(store)
    require_unique_name(validated(POS(store=store, name=name), exclude=["application"]))
    application, secret = _application_new(tenant_id=tenant_id, kind=Application.Kind.POS, name=f"POS {name}")
    pos = POS.objects.create(store=store, name=name, application=application)
    audit_record(
        actor=actor, action="pos.create", obj=pos, tenant_id=tenant_id, data={"client_id": application.client_id}
    )
    return IssuedSecret(obj=pos, client_id=application.client_id, client_secret=secret)


@transaction.atomic
def credential_rotate(*, obj: POS | CloudApplication | ProvisioningClient, actor: Principal) -> IssuedSecret:
    """A new secret; the old one fails from the commit on, its tokens are revoked, and the
    sessions registered with either end (their sockets close 4410)."""
    require_authority(actor, type(obj))
    application = obj.application
    secret_replaced.send(sender=Application, previous_hash=application.client_secret)
    secret = generate_client_secret()
    application.client_secret = secret
    application.save()
    credential_revoke_tokens(application=application, reason="secret_rotated")
    audit_record(actor=actor, action=f"{obj._meta.model_name}.rotate_secret", obj=obj, tenant_id=application.tenant_id)
    return IssuedSecret(obj=obj, client_id=application.client_id, client_secret=secret)


@transaction.atomic
def pos_delete(*, pos: POS, actor: Principal) -> None:
    require_authority(actor, POS)
    application = pos.application
    credential_revoke_tokens(application=application, reason="credential_deleted")
    audit_record(
        actor=actor,
        action="pos.delete",
        obj=pos,
        tenant_id=application.tenant_id,
        data={"client_id": application.client_id},
    )
    pos.delete()
    application.delete()


def _validate_choices(*, services: list[str], grant_types: list[str], roles: list[str]) -> None:
    errors = {}
    for field, values, allowed in (
        ("services", services, CloudApplication.SERVICE_CHOICES),
        ("grant_types", grant_types, CloudApplication.GRANT_TYPE_CHOICES),
        ("roles", roles, CloudApplication.ROLE_CHOICES),
    ):
        unknown = [value for value in values if value not in allowed]
        if unknown:
            errors[field] = [f"Unknown value(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}."]
    if errors:
        raise Invalid(errors)


@transaction.atomic
def cloud_application_create(
    *,
    merchant_aggregator: MerchantAggregator,
    name: str,
    actor: Principal,
    services: list[str] = (),
    grant_types: list[str] = (),
    roles: list[str] = (),
) -> IssuedSecret:
    require_authority(actor, CloudApplication)
    _validate_choices(services=list(services), grant_types=list(grant_types), roles=list(roles))
    app = CloudApplication(
        merchant_aggregator=merchant_aggregator,
        name=name,
        services=sorted(set(services)),
        grant_types=sorted(set(grant_types)),
        roles=sorted(set(roles)),
    )
    require_unique_name(validated(app, exclude=["application"]), owner=merchant_aggregator)
    application, secret = _application_new(
        tenant_id=merchant_aggregator.tenant_id, kind=Application.Kind.CLOUD_API, name=name
    )
    app.application = application
    app.save()
    audit_record(
        actor=actor,
        action="application.create",
        obj=app,
        tenant_id=merchant_aggregator.tenant_id,
        data={"client_id": application.client_id},
    )
    return IssuedSecret(obj=app, client_id=application.client_id, client_secret=secret)


@transaction.atomic
def cloud_application_update(
    *,
    app: CloudApplication,
    actor: Principal,
    name: str | None = None,
    services: list[str] | None = None,
    grant_types: list[str] | None = None,
    roles: list[str] | None = None,
) -> CloudApplication:
    """Change an application; losing what Cloud Connector needs revokes its tokens."""
    require_authority(actor, CloudApplication)
    was_complete = not app.missing_for_cloud_connector()
    _validate_choices(services=services or [], grant_types=grant_types or [], roles=roles or [])
    changes = {}
    for field, value in (("name", name), ("services", services), ("grant_types", grant_types), ("roles", roles)):
        if value is not None:
            value = value if field == "name" else sorted(set(value))
            setattr(app, field, value)
            changes[field] = value
    validated(app, exclude=["application"])
    if name is not None:
        require_unique_name(app)
    app.save()
    if was_complete and app.missing_for_cloud_connector():
        credential_revoke_tokens(application=app.application)
    audit_record(actor=actor, action="application.update", obj=app, tenant_id=app.application.tenant_id, data=changes)
    return app


@transaction.atomic
def cloud_application_delete(*, app: CloudApplication, actor: Principal) -> None:
    require_authority(actor, CloudApplication)
    application = app.application
    credential_revoke_tokens(application=application, reason="credential_deleted")
    audit_record(
        actor=actor,
        action="application.delete",
        obj=app,
        tenant_id=application.tenant_id,
        data={"client_id": application.client_id},
    )
    app.delete()
    application.delete()


@transaction.atomic
def provisioning_client_create(*, tenant: Tenant, actor: Principal, name: str = "provisioning") -> IssuedSecret:
    require_authority(actor, Kind.PROVISIONING_CLIENT)
    application, secret = _application_new(tenant_id=tenant.pk, kind=Application.Kind.PROVISIONING, name=name)
    client = ProvisioningClient.objects.create(tenant=tenant, name=name, application=application)
    audit_record(
        actor=actor,
        action="provisioning_client.create",
        obj=client,
        tenant_id=tenant.pk,
        data={"client_id": application.client_id},
    )
    return IssuedSecret(obj=client, client_id=application.client_id, client_secret=secret)


# --- people ------------------------------------------------------------------------------


@transaction.atomic
def user_create(
    *,
    username: str,
    password: str,
    actor: Principal,
    email: str = "",
    merchant_aggregator: MerchantAggregator | None = None,
    merchant: Merchant | None = None,
    role: str = Membership.Role.ADMIN,
    is_staff: bool = False,
) -> User:
    require_authority(actor, Kind.STAFF_USER if is_staff else Kind.USER)
    if (merchant_aggregator is None) == (merchant is None) and not is_staff:
        raise Invalid("A user belongs to exactly one merchant aggregator or one merchant.")
    if User.objects.filter(username__iexact=username).exists():
        raise Invalid({"username": ["A user with that username already exists."]})
    user = User(username=username, email=email, is_staff=is_staff, is_superuser=is_staff)
    user.set_password(password)
    validated(user)
    user.save()
    tenant_id = None
    if not is_staff:
        Membership.objects.create(user=user, merchant_aggregator=merchant_aggregator, merchant=merchant, role=role)
        tenant_id = merchant_aggregator.tenant_id if merchant_aggregator else _tenant_of(merchant)
    audit_record(actor=actor, action="user.create", obj=user, tenant_id=tenant_id, data={"role": role})
    return user


# --- helpers -----------------------------------------------------------------------------


def _tenant_of_merchant(merchant: Merchant) -> int:
    return merchant.merchant_aggregator.tenant_id


def _tenant_of(obj: models.Model) -> int | None:
    """The tenant id of any object of the organisation tree."""
    if isinstance(obj, Tenant):
        return obj.pk
    if isinstance(obj, MerchantAggregator):
        return obj.tenant_id
    if isinstance(obj, Merchant):
        return _tenant_of_merchant(obj)
    if isinstance(obj, Store):
        return _tenant_of_merchant(obj.merchant)
    if isinstance(obj, (POS, CloudApplication, ProvisioningClient)):
        return obj.application.tenant_id
    return None
