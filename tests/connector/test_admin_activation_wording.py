"""The admin's Cloud Connector actions say what they will do in words that count right: no
"deactivate 0 merchants?" when nothing is active, no "1 merchants"."""

from __future__ import annotations

import pytest
from django.contrib.admin import helpers
from django.urls import reverse

from accounts.models import Merchant, MerchantAggregator, Tenant
from accounts.scope import SYSTEM
from connector import services
from tests.factories import MerchantFactory, make_usable_device, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    client.force_login(make_user(username="ops", is_staff=True))
    return client


def ask(client, model, action: str, objects):
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    return client.post(url, {"action": action, helpers.ACTION_CHECKBOX_NAME: [obj.pk for obj in objects]}, follow=True)


def test_deactivating_merchants_none_of_which_is_active_asks_nothing(staff):
    inactive = MerchantFactory()
    response = ask(staff, Merchant, "deactivate_cloud_connector", [inactive])
    page = response.content.decode()
    assert "Nothing to do: Cloud Connector is already off for the selection." in page
    assert "Deactivate Cloud Connector for 0" not in page
    assert response.redirect_chain  # back on the list, not on a confirmation page


def test_one_merchant_is_one_merchant_and_one_device_is_one_device(staff):
    device = make_usable_device()
    page = ask(staff, Merchant, "deactivate_cloud_connector", [device.merchant]).content.decode()
    assert "Deactivate Cloud Connector for 1 merchant?" in page
    assert "1 merchants" not in page
    assert "1 device beneath it becomes unusable" in page


def test_two_merchants_are_counted_in_the_plural(staff):
    first = make_usable_device()
    second = MerchantFactory(merchant_aggregator=first.merchant.merchant_aggregator)
    services.service_activate(obj=second, actor=SYSTEM)
    page = ask(staff, Merchant, "deactivate_cloud_connector", [first.merchant, second]).content.decode()
    assert "Deactivate Cloud Connector for 2 merchants?" in page
    assert "0 devices beneath it become unusable" in page


def test_one_aggregator_and_one_tenant_read_in_the_singular(staff):
    device = make_usable_device()
    ma = device.merchant.merchant_aggregator
    page = ask(staff, MerchantAggregator, "deactivate_cloud_connector", [ma]).content.decode()
    assert "Deactivate Cloud Connector for 1 merchant aggregator?" in page
    page = ask(staff, Tenant, "unsubscribe", [ma.tenant]).content.decode()
    assert "Unsubscribe 1 tenant from Cloud Connector?" in page
    assert "1 device becomes unusable" in page


def test_unsubscribing_tenants_none_of_which_is_subscribed_asks_nothing(staff):
    device = make_usable_device()
    services.subscription_delete(subscription=device.tenant.subscriptions.get(), actor=SYSTEM)
    page = ask(staff, Tenant, "unsubscribe", [device.tenant]).content.decode()
    assert "Nothing to do: none of the selected tenants is subscribed." in page
    assert "Unsubscribe 0" not in page
