"""The write services of the organisation tree, its credentials and its devices: validation,
deletion rules, secrets at rest, roles and the audit log."""

from __future__ import annotations

import pytest
from django.contrib.auth.hashers import check_password, identify_hasher
from oauth2_provider.models import AccessToken

from accounts import services
from accounts.errors import Conflict, Invalid, NotAllowed
from accounts.models import (
    POS,
    Application,
    AuditEntry,
    CloudApplication,
    Membership,
    Merchant,
    MerchantAggregator,
    Store,
    Tenant,
    User,
)
from accounts.scope import SYSTEM, principal_for_user
from connector import services as connector_services
from connector.models import Device
from portal import settings as project_settings
from tests.factories import (
    DeviceFactory,
    MerchantAggregatorFactory,
    MerchantFactory,
    StoreFactory,
    TenantFactory,
    make_access_token,
    make_cloud_application,
    make_pos,
    make_user,
)

pytestmark = pytest.mark.django_db

TOO_LONG = "x" * 101


@pytest.fixture
def production_hashing(settings):
    """The production hashers, in place of the fast ones of tests/conftest.py."""
    settings.PASSWORD_HASHERS = project_settings.PASSWORD_HASHERS


@pytest.fixture
def staff():
    return principal_for_user(make_user(username="ops", is_staff=True))


@pytest.fixture
def store():
    return StoreFactory()


@pytest.fixture
def viewer(store):
    user = make_user(
        username="watcher", merchant_aggregator=store.merchant.merchant_aggregator, role=Membership.Role.VIEWER
    )
    return principal_for_user(user)


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["Demo", "-demo", "demo-", "de_mo", "de mo", "", "d" * 64])
def test_it_refuses_a_bad_tenant_domain(staff, domain):
    with pytest.raises(Invalid) as refused:
        services.tenant_create(domain=domain, name="Acme", actor=staff)
    assert "domain" in refused.value.errors
    assert not Tenant.objects.exists()


def test_it_refuses_a_domain_taken_by_another_tenant(staff):
    services.tenant_create(domain="acme", name="Acme", actor=staff)
    with pytest.raises(Invalid) as refused:
        services.tenant_create(domain="acme", name="Other", actor=staff)
    assert "domain" in refused.value.errors


def test_it_refuses_names_that_are_too_long(staff, store):
    with pytest.raises(Invalid) as refused:
        services.merchant_aggregator_create(tenant=TenantFactory(), name=TOO_LONG, actor=staff)
    assert "name" in refused.value.errors
    with pytest.raises(Invalid):
        services.merchant_create(merchant_aggregator=MerchantAggregatorFactory(), name=TOO_LONG, actor=staff)
    with pytest.raises(Invalid):
        services.store_create(merchant=store.merchant, name=TOO_LONG, actor=staff)
    with pytest.raises(Invalid):
        services.pos_create(store=store, name=TOO_LONG, actor=staff)
    with pytest.raises(Invalid):
        services.object_rename(obj=store, name=TOO_LONG, actor=staff)
    assert not POS.objects.exists() and not Application.objects.exists()


def test_it_refuses_an_empty_name(staff):
    with pytest.raises(Invalid) as refused:
        services.merchant_aggregator_create(tenant=TenantFactory(), name="", actor=staff)
    assert "name" in refused.value.errors


def test_it_refuses_a_device_in_a_store_of_another_merchant(staff, store):
    with pytest.raises(Invalid) as refused:
        connector_services.device_create(
            merchant=MerchantFactory(), store=store, make="Ingenico", model="Lane3000", serial="1", actor=staff
        )
    assert "store" in refused.value.errors
    assert not Device.objects.exists()


def test_it_refuses_to_move_a_device_to_a_store_of_another_merchant(staff):
    device = DeviceFactory()
    with pytest.raises(Invalid) as refused:
        connector_services.device_update(device=device, store=StoreFactory(), actor=staff)
    assert "store" in refused.value.errors


@pytest.mark.parametrize("serial", ["23 01", "23/01", "230é", ""])
def test_it_refuses_a_serial_with_bad_characters(staff, store, serial):
    with pytest.raises(Invalid) as refused:
        connector_services.device_create(
            merchant=store.merchant, store=store, make="Ingenico", model="Lane3000", serial=serial, actor=staff
        )
    assert "serial" in refused.value.errors


def create_device(store: Store, *, make: str = "Ingenico", serial: str = "ABC123", actor=SYSTEM) -> Device:
    return connector_services.device_create(
        merchant=store.merchant, store=store, make=make, model="Lane3000", serial=serial, actor=actor
    )


def test_it_refuses_a_serial_that_differs_only_in_case_for_the_same_make_in_the_tenant(staff, store):
    create_device(store, serial="abc123")
    other_store_same_tenant = StoreFactory(
        merchant=MerchantFactory(merchant_aggregator=store.merchant.merchant_aggregator)
    )
    with pytest.raises(Invalid) as refused:
        create_device(other_store_same_tenant, make="INGENICO", serial="ABC123", actor=staff)
    assert "serial" in refused.value.errors
    assert refused.value.errors["serial"] == ["This serial number cannot be used."]
    assert Device.objects.count() == 1


def test_it_refuses_to_rename_a_serial_onto_an_existing_one(staff, store):
    create_device(store, serial="ONE")
    second = create_device(store, serial="TWO")
    with pytest.raises(Invalid) as refused:
        connector_services.device_update(device=second, serial="one", actor=staff)
    assert "serial" in refused.value.errors


def test_the_same_serial_is_fine_for_another_make(staff, store):
    create_device(store, make="Ingenico", serial="ABC123")
    create_device(store, make="Verifone", serial="ABC123", actor=staff)
    assert Device.objects.count() == 2


def test_the_same_serial_and_make_is_fine_in_another_tenant(staff, store):
    create_device(store, serial="ABC123")
    create_device(StoreFactory(), serial="abc123", actor=staff)
    assert Device.objects.count() == 2


def test_it_refuses_a_duplicate_username_whatever_its_case(staff, store):
    make_user(username="alice", merchant=store.merchant)
    with pytest.raises(Invalid) as refused:
        services.user_create(username="ALICE", password="x" * 12, merchant=store.merchant, actor=staff)
    assert "username" in refused.value.errors


def test_a_user_belongs_to_exactly_one_place(staff, store):
    with pytest.raises(Invalid):
        services.user_create(username="nowhere", password="x" * 12, actor=staff)
    with pytest.raises(Invalid):
        services.user_create(
            username="everywhere",
            password="x" * 12,
            merchant=store.merchant,
            merchant_aggregator=store.merchant.merchant_aggregator,
            actor=staff,
        )
    assert not User.objects.filter(username__in=["nowhere", "everywhere"]).exists()


def test_a_new_user_has_a_hashed_password_and_a_membership(staff, store):
    user = services.user_create(
        username="bob", password="correct horse battery", merchant=store.merchant, role="viewer", actor=staff
    )
    assert user.password != "correct horse battery" and user.check_password("correct horse battery")
    assert user.membership.merchant == store.merchant and user.membership.role == Membership.Role.VIEWER
    assert principal_for_user(user).can_write is False


def test_it_refuses_an_unknown_application_service_grant_or_role(staff):
    with pytest.raises(Invalid) as refused:
        services.cloud_application_create(
            merchant_aggregator=MerchantAggregatorFactory(),
            name="App",
            services=["payments-api"],
            grant_types=["password"],
            roles=["admin"],
            actor=staff,
        )
    assert set(refused.value.errors) == {"services", "grant_types", "roles"}
    assert not CloudApplication.objects.exists() and not Application.objects.exists()


# --- deletion --------------------------------------------------------------------------------


def test_a_store_with_devices_cannot_be_deleted(staff, store):
    DeviceFactory(store=store)
    with pytest.raises(Conflict):
        services.store_delete(store=store, actor=staff)
    assert Store.objects.filter(pk=store.pk).exists()


def test_deleting_a_store_deletes_its_pos_and_their_credentials(staff, store):
    pos = make_pos(store=store)
    make_access_token(pos)
    services.store_delete(store=store, actor=staff)
    assert not Store.objects.filter(pk=store.pk).exists()
    assert not POS.objects.filter(pk=pos.pk).exists()
    assert not Application.objects.filter(pk=pos.application_id).exists()
    assert not AccessToken.objects.filter(application_id=pos.application_id).exists()
    actions = list(AuditEntry.objects.filter(actor="user:ops").order_by("id").values_list("action", flat=True))
    assert actions == ["pos.delete", "store.delete"]


def test_a_merchant_with_devices_cannot_be_deleted(staff):
    device = DeviceFactory()
    with pytest.raises(Conflict):
        services.merchant_delete(merchant=device.merchant, actor=staff)
    with pytest.raises(Conflict):
        services.merchant_aggregator_delete(merchant_aggregator=device.merchant.merchant_aggregator, actor=staff)
    assert Merchant.objects.filter(pk=device.merchant_id).exists()


def test_deleting_an_aggregator_deletes_its_merchants_stores_and_applications(staff, store):
    ma = store.merchant.merchant_aggregator
    app = make_cloud_application(merchant_aggregator=ma)
    pos = make_pos(store=store)
    services.merchant_aggregator_delete(merchant_aggregator=ma, actor=staff)
    assert not MerchantAggregator.objects.filter(pk=ma.pk).exists()
    assert not Merchant.objects.filter(pk=store.merchant_id).exists()
    assert not Application.objects.filter(pk__in=[app.application_id, pos.application_id]).exists()


# --- credentials -----------------------------------------------------------------------------


def test_a_pos_secret_is_stored_hashed_and_checks(staff, store, production_hashing):
    issued = services.pos_create(store=store, name="Till", actor=staff)
    stored = Application.objects.get(client_id=issued.client_id)
    assert stored.client_secret != issued.client_secret
    assert identify_hasher(stored.client_secret).algorithm == "pbkdf2_sha256_client_secret"
    assert check_password(issued.client_secret, stored.client_secret)
    assert stored.kind == Application.Kind.POS and stored.tenant_id == store.merchant.merchant_aggregator.tenant_id
    entry = AuditEntry.objects.get(action="pos.create")
    assert entry.actor == "user:ops" and entry.data == {"client_id": issued.client_id}
    assert issued.client_secret not in str(entry.data)


def test_an_application_and_a_provisioning_client_secret_are_stored_hashed(staff):
    app = services.cloud_application_create(merchant_aggregator=MerchantAggregatorFactory(), name="App", actor=staff)
    client = services.provisioning_client_create(tenant=TenantFactory(), actor=staff)
    for issued in (app, client):
        stored = Application.objects.get(client_id=issued.client_id).client_secret
        assert stored != issued.client_secret and check_password(issued.client_secret, stored)


def test_rotating_a_secret_replaces_it_and_revokes_the_tokens(staff, store):
    pos = make_pos(store=store)
    make_access_token(pos)
    issued = services.credential_rotate(obj=pos, actor=staff)
    stored = Application.objects.get(pk=pos.application_id).client_secret
    assert issued.client_id == pos.application.client_id
    assert issued.client_secret != pos.client_secret
    assert check_password(issued.client_secret, stored)
    assert not check_password(pos.client_secret, stored)
    assert not AccessToken.objects.filter(application_id=pos.application_id).exists()
    assert AuditEntry.objects.filter(action="pos.rotate_secret", actor="user:ops").exists()


def test_deleting_a_pos_deletes_its_credential_and_tokens(staff, store):
    pos = make_pos(store=store)
    make_access_token(pos)
    services.pos_delete(pos=pos, actor=staff)
    assert not Application.objects.filter(pk=pos.application_id).exists()
    assert not AccessToken.objects.filter(application_id=pos.application_id).exists()


def test_deleting_an_application_deletes_its_credential(staff):
    app = make_cloud_application()
    services.cloud_application_delete(app=app, actor=staff)
    assert not Application.objects.filter(pk=app.application_id).exists()
    assert AuditEntry.objects.filter(action="application.delete", data__client_id=app.application.client_id).exists()


def test_an_application_losing_the_role_loses_its_tokens(staff):
    app = make_cloud_application(complete=True)
    make_access_token(app)
    services.cloud_application_update(app=app, roles=[], actor=staff)
    assert app.missing_for_cloud_connector() == ["the Point-of-sale Terminal role"]
    assert not AccessToken.objects.filter(application=app.application).exists()


def test_renaming_an_application_keeps_its_tokens(staff):
    app = make_cloud_application(complete=True)
    make_access_token(app)
    services.cloud_application_update(app=app, name="Renamed", actor=staff)
    assert AccessToken.objects.filter(application=app.application).exists()


# --- roles -----------------------------------------------------------------------------------


def viewer_writes(store: Store):
    """Every write a viewer might try, against objects of its own merchant aggregator."""
    ma = store.merchant.merchant_aggregator
    return {
        "merchant_aggregator_create": lambda actor: services.merchant_aggregator_create(
            tenant=ma.tenant, name="X", actor=actor
        ),
        "merchant_create": lambda actor: services.merchant_create(merchant_aggregator=ma, name="X", actor=actor),
        "store_create": lambda actor: services.store_create(merchant=store.merchant, name="X", actor=actor),
        "object_rename": lambda actor: services.object_rename(obj=store, name="X", actor=actor),
        "store_delete": lambda actor: services.store_delete(store=store, actor=actor),
        "merchant_delete": lambda actor: services.merchant_delete(merchant=store.merchant, actor=actor),
        "pos_create": lambda actor: services.pos_create(store=store, name="X", actor=actor),
        "credential_rotate": lambda actor: services.credential_rotate(obj=make_pos(store=store), actor=actor),
        "pos_delete": lambda actor: services.pos_delete(pos=make_pos(store=store), actor=actor),
        "cloud_application_create": lambda actor: services.cloud_application_create(
            merchant_aggregator=ma, name="X", actor=actor
        ),
        "user_create": lambda actor: services.user_create(
            username="new", password="x" * 12, merchant=store.merchant, actor=actor
        ),
        "provisioning_client_create": lambda actor: services.provisioning_client_create(tenant=ma.tenant, actor=actor),
        "device_create": lambda actor: create_device(store, actor=actor),
        "device_update": lambda actor: connector_services.device_update(
            device=DeviceFactory(store=store), enabled=False, actor=actor
        ),
        "device_delete": lambda actor: connector_services.device_delete(device=DeviceFactory(store=store), actor=actor),
    }


WRITES = [
    "merchant_aggregator_create",
    "merchant_create",
    "store_create",
    "object_rename",
    "store_delete",
    "merchant_delete",
    "pos_create",
    "credential_rotate",
    "pos_delete",
    "cloud_application_create",
    "user_create",
    "provisioning_client_create",
    "device_create",
    "device_update",
    "device_delete",
]


@pytest.mark.parametrize("write", WRITES)
def test_a_viewer_may_not_write(store, viewer, write):
    audit_before = AuditEntry.objects.filter(actor="user:watcher").count()
    with pytest.raises(NotAllowed):
        viewer_writes(store)[write](viewer)
    assert AuditEntry.objects.filter(actor="user:watcher").count() == audit_before == 0
    assert Store.objects.filter(pk=store.pk, name=store.name).exists()


def test_only_platform_staff_create_tenants(store):
    ma_admin = principal_for_user(make_user(username="boss", merchant_aggregator=store.merchant.merchant_aggregator))
    with pytest.raises(NotAllowed):
        services.tenant_create(domain="mine", name="Mine", actor=ma_admin)
    assert not Tenant.objects.filter(domain="mine").exists()


def test_only_platform_staff_create_staff(store):
    ma_admin = principal_for_user(make_user(username="boss", merchant_aggregator=store.merchant.merchant_aggregator))
    with pytest.raises(NotAllowed):
        services.user_create(username="sneaky", password="x" * 12, is_staff=True, actor=ma_admin)
    assert not User.objects.filter(username="sneaky").exists()


# --- audit -----------------------------------------------------------------------------------


def test_every_write_of_the_tree_is_audited_with_its_actor(staff):
    tenant = services.tenant_create(domain="acme", name="Acme", actor=staff)
    ma = services.merchant_aggregator_create(tenant=tenant, name="MA", actor=staff)
    merchant = services.merchant_create(merchant_aggregator=ma, name="M", actor=staff)
    store = services.store_create(merchant=merchant, name="S", actor=staff)
    services.object_rename(obj=store, name="S2", actor=staff)
    entries = AuditEntry.objects.filter(tenant=tenant).order_by("id")
    assert [(entry.action, entry.object_repr) for entry in entries] == [
        ("tenant.create", "acme"),
        ("merchant_aggregator.create", "MA"),
        ("merchant.create", "M"),
        ("store.create", "S"),
        ("store.rename", "S2"),
    ]
    assert {(entry.actor, entry.actor_user_id) for entry in entries} == {("user:ops", staff.user_id)}


def test_names_are_unique_among_siblings_without_case_for_every_caller(staff, store):
    services.pos_create(store=store, name="Till", actor=staff)
    with pytest.raises(Invalid) as pos_clash:
        services.pos_create(store=store, name="TILL", actor=staff)
    assert pos_clash.value.errors == {"name": ["There is already a POS called “TILL” here. Choose another name."]}
    other = services.store_create(merchant=store.merchant, name="Annexe", actor=staff)
    services.pos_create(store=other, name="till", actor=staff)  # another store: allowed
    with pytest.raises(Invalid) as store_clash:
        services.object_rename(obj=other, name=store.name.upper(), actor=staff)
    assert "already a store called" in store_clash.value.errors["name"][0]
    issued = services.cloud_application_create(
        merchant_aggregator=store.merchant.merchant_aggregator, name="App", actor=staff
    )
    services.cloud_application_update(app=issued.obj, name="App", actor=staff)  # its own name: allowed
    with pytest.raises(Invalid):
        services.cloud_application_create(
            merchant_aggregator=store.merchant.merchant_aggregator, name="app", actor=staff
        )


def test_a_caller_changes_only_what_its_own_node_manages_whatever_the_edge(store):
    merchant = store.merchant
    shopkeeper = principal_for_user(make_user(username="shopkeeper", merchant=merchant))
    with pytest.raises(NotAllowed):
        services.object_rename(obj=merchant, name="Mine now", actor=shopkeeper)
    with pytest.raises(NotAllowed):
        services.merchant_create(merchant_aggregator=merchant.merchant_aggregator, name="Sibling", actor=shopkeeper)
    with pytest.raises(NotAllowed):
        services.cloud_application_create(merchant_aggregator=merchant.merchant_aggregator, name="A", actor=shopkeeper)
    assert services.store_create(merchant=merchant, name="Kiosk", actor=shopkeeper).merchant == merchant
    merchant.refresh_from_db()
    assert merchant.name != "Mine now"
