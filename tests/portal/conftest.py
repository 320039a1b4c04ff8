"""Personas for the portal's tests: an owner, a viewer and outsiders at each level."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.core.cache import cache
from django.test import Client

from accounts.models import POS, CloudApplication, Membership, Merchant, MerchantAggregator, Store, Tenant, User
from connector.models import Device
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

PASSWORD = "correct horse battery staple"


@dataclass
class World:
    tenant: Tenant
    ma: MerchantAggregator
    merchant: Merchant
    store: Store
    pos: POS
    device: Device
    app: CloudApplication
    other_merchant: Merchant
    other_store: Store
    other_pos: POS
    other_device: Device
    far_ma: MerchantAggregator
    far_app: CloudApplication
    far_store: Store
    far_pos: POS
    far_device: Device
    merchant_admin: User
    merchant_viewer: User
    other_merchant_admin: User
    ma_admin: User
    ma_viewer: User
    far_ma_admin: User
    staff: User


def build_world() -> World:
    tenant = TenantFactory(domain="acme", name="Acme Payments")
    ma = MerchantAggregatorFactory(tenant=tenant, name="Acme Aggregation")
    merchant = MerchantFactory(merchant_aggregator=ma, name="Corner Shop")
    store = StoreFactory(merchant=merchant, name="High Street")
    other_merchant = MerchantFactory(merchant_aggregator=ma, name="Rival Shop")
    other_store = StoreFactory(merchant=other_merchant, name="Market Square")
    far_tenant = TenantFactory(domain="globex", name="Globex")
    far_ma = MerchantAggregatorFactory(tenant=far_tenant, name="Globex Aggregation")
    far_store = StoreFactory(merchant=MerchantFactory(merchant_aggregator=far_ma, name="Globex Shop"), name="Far Away")
    return World(
        tenant=tenant,
        ma=ma,
        merchant=merchant,
        store=store,
        pos=make_pos(store=store, name="Till 1"),
        device=DeviceFactory(store=store, serial="230000001"),
        app=make_cloud_application(merchant_aggregator=ma, name="Acme POS cloud", complete=False),
        other_merchant=other_merchant,
        other_store=other_store,
        other_pos=make_pos(store=other_store, name="Rival till"),
        other_device=DeviceFactory(store=other_store, serial="230000002"),
        far_ma=far_ma,
        far_app=make_cloud_application(merchant_aggregator=far_ma, name="Globex app"),
        far_store=far_store,
        far_pos=make_pos(store=far_store, name="Far till"),
        far_device=DeviceFactory(store=far_store, serial="230000003"),
        merchant_admin=make_user(username="alice", merchant=merchant),
        merchant_viewer=make_user(username="victor", merchant=merchant, role=Membership.Role.VIEWER),
        other_merchant_admin=make_user(username="mallory", merchant=other_merchant),
        ma_admin=make_user(username="agnes", merchant_aggregator=ma),
        ma_viewer=make_user(username="vera", merchant_aggregator=ma, role=Membership.Role.VIEWER),
        far_ma_admin=make_user(username="oscar", merchant_aggregator=far_ma),
        staff=make_user(username="sam", is_staff=True),
    )


@pytest.fixture(autouse=True)
def clear_login_throttle(settings):
    """The throttle counts in the cache, which outlives a test: each test gets an empty
    in-memory cache of its own (clearing a Redis cache would flush a database that the
    channel layer shares). test_auth checks the configured cache separately."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "portal"}}
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def fast_hashing(settings):
    """Users and credentials hash their secrets; a fast hasher keeps hundreds of tests quick.
    Not for live-server tests: the server process keeps the real hashers."""
    settings.PASSWORD_HASHERS = FAST_HASHERS


@pytest.fixture
def world(db, fast_hashing) -> World:
    return build_world()


def client_for(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client
