"""The REST API's tests: the personas of tests/world.py as API clients, by bearer token (the
provisioning client, a POS) or by portal session (staff, the aggregator's and the merchant's
admins and viewers)."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from django.utils import timezone
from oauth2_provider.models import AccessToken
from rest_framework.test import APIClient

from accounts.models import POS, Application, CloudApplication, Merchant, MerchantAggregator, Store, Tenant
from connector.models import Device, DeviceSession
from tests.world import World

API = "/api/v1"


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


@pytest.fixture
def provisioning(world: World) -> APIClient:
    """The provisioning client of acme, by bearer token."""
    return bearer_client(world.provisioning_token)


@pytest.fixture
def staff(world: World) -> APIClient:
    return session_client(world.staff)


@pytest.fixture
def ma_admin(world: World) -> APIClient:
    return session_client(world.ma_admin)


@pytest.fixture
def merchant_admin(world: World) -> APIClient:
    return session_client(world.merchant_admin)


@pytest.fixture
def ma_viewer(world: World) -> APIClient:
    return session_client(world.ma_viewer)


@pytest.fixture
def merchant_viewer(world: World) -> APIClient:
    return session_client(world.merchant_viewer)


@pytest.fixture
def pos_token_client(world: World) -> APIClient:
    """The store POS by its token: scope cloud-connector, not provisioning."""
    return bearer_client(world.pos_token)


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
