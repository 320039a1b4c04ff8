"""Personas and a two-tenant world for the REST API tests.

Tenant A ("alpha") has two merchant aggregators; the first has two merchants, the first of
those two stores. Tenant B ("beta") mirrors a small part of it. The callers: a provisioning
client of A (by bearer token), platform staff, an admin of A's first MA, an admin of its
first merchant, and read-only viewers of both.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.utils import timezone
from oauth2_provider.models import AccessToken
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.credentials import SCOPE_CLOUD_CONNECTOR, SCOPE_PROVISIONING
from accounts.models import POS, Application, CloudApplication, Membership, Merchant, MerchantAggregator, Store, Tenant
from accounts.scope import SYSTEM
from connector.models import Device, DeviceSession
from tests.factories import (
    DeviceFactory,
    MerchantAggregatorFactory,
    MerchantFactory,
    StoreFactory,
    TenantFactory,
    make_cloud_application,
    make_pos,
    make_user,
)
from tests.hashing import FAST_HASHERS

API = "/api/v1"


def issue_token(application: Application, *, scope: str = SCOPE_PROVISIONING, expires_in: int = 3600) -> str:
    """An access token row as the token endpoint would store it: by checksum only.

    Legitimate for API tests: the token endpoint has its own tests; here it only needs to
    exist in the database."""
    raw = secrets.token_urlsafe(30)
    AccessToken.objects.create(
        token="",
        token_checksum=hashlib.sha256(raw.encode()).hexdigest(),
        application=application,
        scope=scope,
        expires=timezone.now() + timedelta(seconds=expires_in),
    )
    return raw


def bearer_client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def session_client(user, *, enforce_csrf: bool = False) -> APIClient:
    client = APIClient(enforce_csrf_checks=enforce_csrf)
    client.force_login(user)
    return client


def make_session(device: Device, *, state: str = DeviceSession.State.ONLINE, **fields) -> DeviceSession:
    now = timezone.now()
    return DeviceSession.objects.create(
        id=secrets.token_urlsafe(32),
        device=device,
        state=state,
        endpoints=fields.pop("endpoints", ["/upp/v1/transaction"]),
        jwt_expires_at=now + timedelta(minutes=5),
        online_at=now if state == DeviceSession.State.ONLINE else None,
        **fields,
    )


@dataclass
class World:
    tenant_a: Tenant
    ma_a1: MerchantAggregator
    ma_a2: MerchantAggregator
    merchant_a1: Merchant  # under ma_a1
    merchant_a2: Merchant  # under ma_a1
    merchant_a3: Merchant  # under ma_a2
    store_a1: Store  # merchant_a1
    store_a1b: Store  # merchant_a1
    store_a2: Store  # merchant_a2
    store_a3: Store  # merchant_a3
    device_a1: Device
    device_a2: Device
    device_a3: Device
    pos_a1: POS
    pos_a2: POS
    pos_a3: POS
    app_a1: CloudApplication
    app_a2: CloudApplication
    tenant_b: Tenant
    ma_b: MerchantAggregator
    merchant_b: Merchant
    store_b: Store
    device_b: Device
    pos_b: POS
    app_b: CloudApplication
    provisioning_token: str


@pytest.fixture
def world(db) -> World:
    tenant_a = TenantFactory(domain="alpha", name="Alpha")
    ma_a1 = MerchantAggregatorFactory(tenant=tenant_a, name="Alpha MA 1")
    ma_a2 = MerchantAggregatorFactory(tenant=tenant_a, name="Alpha MA 2")
    merchant_a1 = MerchantFactory(merchant_aggregator=ma_a1, name="Alpha merchant 1")
    merchant_a2 = MerchantFactory(merchant_aggregator=ma_a1, name="Alpha merchant 2")
    merchant_a3 = MerchantFactory(merchant_aggregator=ma_a2, name="Alpha merchant 3")
    store_a1 = StoreFactory(merchant=merchant_a1, name="Store 1")
    store_a1b = StoreFactory(merchant=merchant_a1, name="Store 1b")
    store_a2 = StoreFactory(merchant=merchant_a2, name="Store 2")
    store_a3 = StoreFactory(merchant=merchant_a3, name="Store 3")
    tenant_b = TenantFactory(domain="beta", name="Beta")
    ma_b = MerchantAggregatorFactory(tenant=tenant_b, name="Beta MA")
    merchant_b = MerchantFactory(merchant_aggregator=ma_b, name="Beta merchant")
    store_b = StoreFactory(merchant=merchant_b, name="Beta store")
    provisioning = account_services.provisioning_client_create(tenant=tenant_a, actor=SYSTEM)
    return World(
        tenant_a=tenant_a,
        ma_a1=ma_a1,
        ma_a2=ma_a2,
        merchant_a1=merchant_a1,
        merchant_a2=merchant_a2,
        merchant_a3=merchant_a3,
        store_a1=store_a1,
        store_a1b=store_a1b,
        store_a2=store_a2,
        store_a3=store_a3,
        device_a1=DeviceFactory(store=store_a1, serial="A1000001"),
        device_a2=DeviceFactory(store=store_a2, serial="A2000001"),
        device_a3=DeviceFactory(store=store_a3, serial="A3000001"),
        pos_a1=make_pos(store=store_a1, name="Till A1"),
        pos_a2=make_pos(store=store_a2, name="Till A2"),
        pos_a3=make_pos(store=store_a3, name="Till A3"),
        app_a1=make_cloud_application(merchant_aggregator=ma_a1, name="App A1"),
        app_a2=make_cloud_application(merchant_aggregator=ma_a2, name="App A2"),
        tenant_b=tenant_b,
        ma_b=ma_b,
        merchant_b=merchant_b,
        store_b=store_b,
        device_b=DeviceFactory(store=store_b, serial="B0000001"),
        pos_b=make_pos(store=store_b, name="Till B"),
        app_b=make_cloud_application(merchant_aggregator=ma_b, name="App B"),
        provisioning_token=issue_token(provisioning.obj.application),
    )


@pytest.fixture
def provisioning(world: World) -> APIClient:
    """The provisioning client of tenant A, by bearer token."""
    return bearer_client(world.provisioning_token)


@pytest.fixture
def staff(world: World) -> APIClient:
    return session_client(make_user(username="operator", is_staff=True))


@pytest.fixture
def ma_admin(world: World) -> APIClient:
    return session_client(make_user(username="ma-admin", merchant_aggregator=world.ma_a1))


@pytest.fixture
def merchant_admin(world: World) -> APIClient:
    return session_client(make_user(username="merchant-admin", merchant=world.merchant_a1))


@pytest.fixture
def ma_viewer(world: World) -> APIClient:
    return session_client(make_user(username="ma-viewer", merchant_aggregator=world.ma_a1, role=Membership.Role.VIEWER))


@pytest.fixture
def merchant_viewer(world: World) -> APIClient:
    user = make_user(username="merchant-viewer", merchant=world.merchant_a1, role=Membership.Role.VIEWER)
    return session_client(user)


@pytest.fixture
def pos_token_client(world: World) -> APIClient:
    """A store POS token: scope cloud-connector, not provisioning."""
    return bearer_client(issue_token(world.pos_a1.application, scope=SCOPE_CLOUD_CONNECTOR))


@pytest.fixture
def callers(provisioning, staff, ma_admin, merchant_admin, ma_viewer, merchant_viewer) -> dict[str, APIClient]:
    return {
        "provisioning": provisioning,
        "staff": staff,
        "ma_admin": ma_admin,
        "merchant_admin": merchant_admin,
        "ma_viewer": ma_viewer,
        "merchant_viewer": merchant_viewer,
    }


@pytest.fixture(autouse=True)
def fast_password_hashing(request, settings):
    """Client secrets and passwords are hashed with PBKDF2 on every credential made; the API
    tests make many. A live server process keeps the real hashers (it must verify secrets)."""
    if "live" not in request.fixturenames:
        settings.PASSWORD_HASHERS = FAST_HASHERS


def db_snapshot() -> dict[str, list]:
    """Everything the API could change, to show that a refused request changed nothing."""
    from accounts.models import AuditEntry, ProvisioningClient
    from connector.models import Activation, Subscription

    models = (
        Tenant,
        MerchantAggregator,
        Merchant,
        Store,
        POS,
        CloudApplication,
        Application,
        ProvisioningClient,
        Device,
        Activation,
        Subscription,
        DeviceSession,
        AccessToken,
        AuditEntry,
    )
    return {model.__name__: list(model.objects.order_by("pk").values()) for model in models}
