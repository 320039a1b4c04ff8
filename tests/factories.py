"""Factories for the organisation tree, credentials, devices and access tokens.

Credentials are made through the service functions, so that their OAuth2 application
exists and their secret is known: `make_pos()` returns a POS whose `.client_secret`
attribute holds the secret in clear (it is not stored anywhere else). The world the tests
share, built from these, is in tests/world.py.
"""

from __future__ import annotations

from datetime import timedelta

import factory
from django.utils import timezone
from oauth2_provider.models import AccessToken
from oauthlib.common import generate_token

from accounts import services as account_services
from accounts.credentials import SCOPE_CLOUD_CONNECTOR, SCOPE_PROVISIONING, token_checksum
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
from accounts.scope import SYSTEM
from connector.models import Device

PASSWORD = "correct horse battery staple"

# People's passwords with MD5 (fast; never in production), client secrets with the project's
# own hasher, which django-oauth-toolkit is configured to use. The root conftest puts these in
# place for every test but those of a live server, whose process keeps the real hashers.
FAST_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", "accounts.hashers.ClientSecretHasher"]


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant
        django_get_or_create = ("domain",)

    name = factory.Sequence(lambda n: f"Tenant {n}")
    domain = factory.Sequence(lambda n: f"tenant-{n}")


class MerchantAggregatorFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MerchantAggregator

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"Aggregator {n}")


class MerchantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Merchant

    merchant_aggregator = factory.SubFactory(MerchantAggregatorFactory)
    name = factory.Sequence(lambda n: f"Merchant {n}")


class StoreFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Store

    merchant = factory.SubFactory(MerchantFactory)
    name = factory.Sequence(lambda n: f"Store {n}")


class DeviceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Device

    store = factory.SubFactory(StoreFactory)
    merchant = factory.SelfAttribute("store.merchant")
    tenant = factory.SelfAttribute("merchant.merchant_aggregator.tenant")
    make = "Ingenico"
    model = "Lane3000"
    serial = factory.Sequence(lambda n: f"2301{n:05d}")


def make_pos(*, store: Store | None = None, name: str | None = None) -> POS:
    """A POS; unnamed, it is the store's next till ("Till 1", "Till 2"...), names being unique per store."""
    store = store or StoreFactory()
    name = name or f"Till {store.pos.count() + 1}"
    issued = account_services.pos_create(store=store, name=name, actor=SYSTEM)
    pos = issued.obj
    pos.client_secret = issued.client_secret
    return pos


def make_cloud_application(
    *,
    merchant_aggregator: MerchantAggregator | None = None,
    name: str | None = None,
    complete: bool = True,
) -> CloudApplication:
    """An MA application; `complete` gives it the service, grant and role Cloud Connector needs.
    Unnamed, it is the MA's next "Cloud app" ("Cloud app", "Cloud app 2"...)."""
    extra = {"services": ["retail-api"], "grant_types": ["client_credentials"], "roles": ["pos-terminal"]}
    merchant_aggregator = merchant_aggregator or MerchantAggregatorFactory()
    count = merchant_aggregator.applications.count()
    issued = account_services.cloud_application_create(
        merchant_aggregator=merchant_aggregator,
        name=name or ("Cloud app" if count == 0 else f"Cloud app {count + 1}"),
        actor=SYSTEM,
        **(extra if complete else {}),
    )
    app = issued.obj
    app.client_secret = issued.client_secret
    return app


def make_provisioning_client(*, tenant: Tenant | None = None) -> ProvisioningClient:
    """A tenant's provisioning client, with `.client_secret` in clear."""
    issued = account_services.provisioning_client_create(tenant=tenant or TenantFactory(), actor=SYSTEM)
    client = issued.obj
    client.client_secret = issued.client_secret
    return client


def make_user(
    *,
    username: str,
    merchant_aggregator: MerchantAggregator | None = None,
    merchant: Merchant | None = None,
    role: str = Membership.Role.ADMIN,
    is_staff: bool = False,
    password: str = PASSWORD,
) -> User:
    return account_services.user_create(
        username=username,
        password=password,
        actor=SYSTEM,
        merchant_aggregator=merchant_aggregator,
        merchant=merchant,
        role=role,
        is_staff=is_staff,
    )


def switch_cloud_connector_on(merchant: Merchant) -> None:
    """Subscribe the merchant's tenant and activate its aggregator and the merchant, which
    activates every device beneath them now (a device made later needs its own activation)."""
    from connector import services as connector_services
    from connector.models import Subscription

    ma = merchant.merchant_aggregator
    if not Subscription.objects.filter(tenant=ma.tenant).exists():
        connector_services.subscription_create(tenant=ma.tenant, actor=SYSTEM)
    connector_services.service_activate(obj=ma, actor=SYSTEM)
    connector_services.service_activate(obj=merchant, actor=SYSTEM)


def make_usable_device(*, store: Store | None = None, **kwargs) -> Device:
    """A device that may use Cloud Connector now: tenant subscribed, MA, merchant and
    device active, provisioned and enabled."""
    device = DeviceFactory(store=store or StoreFactory(), **kwargs)
    switch_cloud_connector_on(device.merchant)
    device.refresh_from_db()
    return device


def make_access_token(
    credential: POS | CloudApplication | ProvisioningClient | Application,
    *,
    scope: str | None = None,
    expires_in: int = 3600,
) -> str:
    """An access token of a credential (or of its OAuth2 application), stored as the token
    endpoint stores one: by checksum only. Returns the raw token. Without `scope`, it has the
    scope the endpoint grants that kind of client: provisioning for a provisioning client,
    cloud-connector for a POS or an application. A negative `expires_in` makes it expired."""
    application = credential if isinstance(credential, Application) else credential.application
    if scope is None:
        provisioning = application.kind == Application.Kind.PROVISIONING
        scope = SCOPE_PROVISIONING if provisioning else SCOPE_CLOUD_CONNECTOR
    raw = generate_token()  # what the token endpoint issues (oauthlib's default): 30 letters and digits
    AccessToken.objects.create(
        application=application,
        token="",
        token_checksum=token_checksum(raw),
        scope=scope,
        expires=timezone.now() + timedelta(seconds=expires_in),
    )
    return raw
