"""The Cloud Connector rules: subscription, activation at MA, merchant and device level, and
who may use it (connector.services)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.errors import NotAllowed
from accounts.models import AuditEntry, Membership
from accounts.scope import principal_for_user
from connector import services
from connector.models import Activation, Device, DeviceSession, Subscription
from connector.services import Unusable
from tests.factories import DeviceFactory, MerchantFactory, StoreFactory, make_usable_device, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff():
    user = make_user(username="ops", is_staff=True)
    return principal_for_user(user)


@pytest.fixture
def device():
    """A usable device: tenant subscribed, MA, merchant and device active."""
    return make_usable_device()


def reason(device: Device) -> Unusable | None:
    device.refresh_from_db()
    return services.device_unusable_reason(device=device)


def annotated(device: Device) -> Device:
    return services.devices_with_activation(Device.objects.filter(pk=device.pk)).get()


def live_session(device: Device, session_id: str) -> DeviceSession:
    return DeviceSession.objects.create(
        id=session_id,
        device=device,
        state=DeviceSession.State.ONLINE,
        jwt_expires_at=timezone.now() + timedelta(minutes=5),
        online_at=timezone.now(),
    )


def test_a_device_beneath_an_active_merchant_and_aggregator_is_usable(device):
    assert reason(device) is None
    assert annotated(device).usable is True


def test_a_device_created_after_its_merchant_was_activated_is_inactive(device, staff):
    later = services.device_create(
        merchant=device.merchant, store=device.store, make="Ingenico", model="Move5000", serial="999", actor=staff
    )
    assert reason(later) == Unusable.DEVICE
    assert services.is_active(obj=later) is False
    assert annotated(later).usable is False


def test_activating_a_device_created_later_makes_it_usable_and_counts_it(device, staff):
    later = DeviceFactory(store=device.store)
    assert services.service_activate(obj=later, actor=staff) == 1
    assert reason(later) is None
    assert services.service_activate(obj=later, actor=staff) == 0


def test_deactivating_the_aggregator_makes_every_device_beneath_it_unusable(device, staff):
    ma = device.merchant.merchant_aggregator
    sibling_merchant = MerchantFactory(merchant_aggregator=ma)
    cousin = make_usable_device(store=StoreFactory(merchant=sibling_merchant))
    outsider = make_usable_device()

    services.service_deactivate(obj=ma, actor=staff)

    assert reason(device) == Unusable.MERCHANT_AGGREGATOR
    assert reason(cousin) == Unusable.MERCHANT_AGGREGATOR
    assert reason(outsider) is None
    # The devices keep their own activation: only the level above is off.
    assert services.is_active(obj=device) and services.is_active(obj=device.merchant)


def test_deactivating_the_merchant_makes_its_devices_unusable_and_no_others(device, staff):
    sibling = make_usable_device(
        store=StoreFactory(merchant=MerchantFactory(merchant_aggregator=device.merchant.merchant_aggregator))
    )

    services.service_deactivate(obj=device.merchant, actor=staff)

    assert reason(device) == Unusable.MERCHANT
    assert reason(sibling) is None


def test_deactivating_the_device_makes_only_it_unusable(device, staff):
    neighbour = DeviceFactory(store=device.store)
    services.service_activate(obj=neighbour, actor=staff)

    services.service_deactivate(obj=device, actor=staff)

    assert reason(device) == Unusable.DEVICE
    assert reason(neighbour) is None


def test_unsubscribing_the_tenant_makes_its_devices_unusable(device, staff):
    subscription = Subscription.objects.get(tenant=device.tenant)
    outsider = make_usable_device()

    services.subscription_delete(subscription=subscription, actor=staff)

    assert reason(device) == Unusable.SUBSCRIPTION
    assert reason(outsider) is None
    assert services.tenant_is_subscribed(tenant=device.tenant) is False


def test_reactivating_the_merchant_activates_the_devices_existing_at_that_moment(device, staff):
    merchant = device.merchant
    services.service_deactivate(obj=merchant, actor=staff)
    created_while_inactive = DeviceFactory(store=device.store)

    newly_activated = services.service_activate(obj=merchant, actor=staff)

    assert newly_activated == 1
    assert reason(device) is None
    assert reason(created_while_inactive) is None
    created_afterwards = DeviceFactory(store=device.store)
    assert reason(created_afterwards) == Unusable.DEVICE


def test_activating_an_aggregator_activates_the_devices_of_all_its_merchants(staff):
    first = DeviceFactory()
    ma = first.merchant.merchant_aggregator
    second = DeviceFactory(store=StoreFactory(merchant=MerchantFactory(merchant_aggregator=ma)))
    elsewhere = DeviceFactory()
    services.subscription_create(tenant=ma.tenant, actor=staff)

    assert services.activation_impact(obj=ma) == 2
    assert services.service_activate(obj=ma, actor=staff) == 2
    assert services.service_activate(obj=ma, actor=staff) == 0

    # Active at MA and device level, but the merchants are not active yet.
    assert reason(first) == Unusable.MERCHANT and reason(second) == Unusable.MERCHANT
    assert services.is_active(obj=elsewhere) is False
    assert Activation.objects.filter(device__in=[first, second]).count() == 2


def test_a_disabled_device_is_unusable_with_reason_disabled(device, staff):
    services.device_update(device=device, enabled=False, actor=staff)
    assert reason(device) == Unusable.DISABLED
    assert annotated(device).usable is False


def test_a_device_that_is_not_provisioned_is_unusable_with_reason_disabled(device, staff):
    services.device_update(device=device, provisioned=False, actor=staff)
    assert reason(device) == Unusable.DISABLED


def test_being_disabled_is_reported_before_any_missing_activation(device, staff):
    services.subscription_delete(subscription=Subscription.objects.get(tenant=device.tenant), actor=staff)
    services.device_update(device=device, enabled=False, actor=staff)
    assert reason(device) == Unusable.DISABLED


@pytest.mark.parametrize(
    "breakage",
    ["none", "subscription", "merchant_aggregator", "merchant", "device", "disabled", "not_provisioned"],
)
def test_the_list_annotations_agree_with_the_reason(device, staff, breakage):
    if breakage == "subscription":
        services.subscription_delete(subscription=Subscription.objects.get(tenant=device.tenant), actor=staff)
    elif breakage == "merchant_aggregator":
        services.service_deactivate(obj=device.merchant.merchant_aggregator, actor=staff)
    elif breakage == "merchant":
        services.service_deactivate(obj=device.merchant, actor=staff)
    elif breakage == "device":
        services.service_deactivate(obj=device, actor=staff)
    elif breakage == "disabled":
        services.device_update(device=device, enabled=False, actor=staff)
    elif breakage == "not_provisioned":
        services.device_update(device=device, provisioned=False, actor=staff)
    row = annotated(device)
    assert row.usable is (reason(device) is None)
    assert (breakage == "none") is row.usable
    assert services.usable_devices(Device.objects.filter(pk=device.pk)).exists() is row.usable


def test_activation_and_deactivation_are_audited_with_the_actor(device, staff):
    merchant = device.merchant
    AuditEntry.objects.all().delete()

    services.service_deactivate(obj=merchant, actor=staff)
    DeviceFactory(store=device.store)
    services.service_activate(obj=merchant, actor=staff)

    entries = list(AuditEntry.objects.order_by("id"))
    assert [entry.action for entry in entries] == [
        "merchant.cloud_connector.deactivate",
        "merchant.cloud_connector.activate",
    ]
    for entry in entries:
        assert entry.actor == "user:ops"
        assert entry.actor_user_id == staff.user_id
        assert entry.object_id == str(merchant.pk)
        assert entry.tenant_id == device.tenant_id
    assert entries[1].data == {"devices_activated": 1}


def test_deactivation_ends_the_live_sessions_beneath_and_no_others(device, staff):
    sibling_merchant = MerchantFactory(merchant_aggregator=device.merchant.merchant_aggregator)
    other = make_usable_device(store=StoreFactory(merchant=sibling_merchant))
    mine = live_session(device, "session-mine")
    theirs = live_session(other, "session-theirs")

    services.service_deactivate(obj=device.merchant, actor=staff)

    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.state == DeviceSession.State.ENDED and mine.end_reason == "device_unusable"
    assert theirs.state == DeviceSession.State.ONLINE


def test_disabling_a_device_ends_its_live_session(device, staff):
    session = live_session(device, "session-disabled")
    services.device_update(device=device, enabled=False, actor=staff)
    session.refresh_from_db()
    assert session.state == DeviceSession.State.ENDED


def test_a_viewer_may_not_activate_or_deactivate(device):
    viewer = make_user(
        username="watcher", merchant_aggregator=device.merchant.merchant_aggregator, role=Membership.Role.VIEWER
    )
    principal = principal_for_user(viewer)
    with pytest.raises(NotAllowed):
        services.service_deactivate(obj=device.merchant, actor=principal)
    with pytest.raises(NotAllowed):
        services.service_activate(obj=DeviceFactory(store=device.store), actor=principal)
    assert reason(device) is None


def test_only_the_aggregator_switches_cloud_connector_for_a_merchant_and_a_merchant_for_its_devices():
    device = make_usable_device()
    merchant = device.merchant
    merchant_user = principal_for_user(make_user(username="shopkeeper", merchant=merchant))
    aggregator_user = principal_for_user(
        make_user(username="aggregator", merchant_aggregator=merchant.merchant_aggregator)
    )
    with pytest.raises(NotAllowed):
        services.service_deactivate(obj=merchant, actor=merchant_user)
    with pytest.raises(NotAllowed):
        services.service_activate(obj=merchant.merchant_aggregator, actor=merchant_user)
    services.service_deactivate(obj=device, actor=merchant_user)
    services.service_activate(obj=device, actor=merchant_user)
    services.service_deactivate(obj=merchant, actor=aggregator_user)
    assert services.device_unusable_reason(device=device) == Unusable.MERCHANT
