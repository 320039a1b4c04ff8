"""The admin site: every write goes through the services with the staff user as actor, lists
and filters show the Cloud Connector state, and no client secret is ever rendered twice."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.auth.hashers import check_password
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from oauth2_provider.models import AccessToken

from accounts import services as account_services
from accounts.errors import Conflict
from accounts.models import (
    POS,
    Application,
    AuditEntry,
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
from connector import services
from connector.models import Activation, Device, DeviceSession, Subscription
from connector.services import Unusable
from tests.factories import (
    DeviceFactory,
    MerchantFactory,
    StoreFactory,
    make_cloud_application,
    make_pos,
    make_usable_device,
    make_user,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_user() -> User:
    return make_user(username="ops", is_staff=True)


@pytest.fixture
def staff(client, staff_user):
    client.force_login(staff_user)
    return client


def changelist(model) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def change_url(obj) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


def act(client, model, action: str, objects, **extra):
    data = {"action": action, helpers.ACTION_CHECKBOX_NAME: [obj.pk for obj in objects], **extra}
    return client.post(changelist(model), data, follow=True)


def staff_audit(staff_user, action: str):
    return AuditEntry.objects.filter(action=action, actor="user:ops", actor_user=staff_user)


def reason(device: Device) -> Unusable | None:
    device.refresh_from_db()
    return services.device_unusable_reason(device=device)


def tsns_listed(response) -> set[str]:
    return {device.tsn for device in response.context["cl"].result_list}


# --- bulk actions ----------------------------------------------------------------------------


def test_disabling_and_enabling_devices_goes_through_the_service(staff, staff_user):
    first, second = make_usable_device(), make_usable_device()
    session = DeviceSession.objects.create(
        id="s1", device=first, state="online", jwt_expires_at=timezone.now() + timedelta(minutes=5)
    )

    response = act(staff, Device, "disable_devices", [first, second])

    assert response.status_code == 200
    assert reason(first) == Unusable.DISABLED and reason(second) == Unusable.DISABLED
    assert staff_audit(staff_user, "device.update").count() == 2
    session.refresh_from_db()
    assert session.state == DeviceSession.State.ENDED
    assert b"Devices disabled: 2." in response.content

    act(staff, Device, "enable_devices", [first])
    assert reason(first) is None and reason(second) == Unusable.DISABLED
    assert staff_audit(staff_user, "device.update").count() == 3


def test_activating_and_deactivating_devices_goes_through_the_service(staff, staff_user):
    usable = make_usable_device()
    later = DeviceFactory(store=usable.store)
    assert reason(later) == Unusable.DEVICE

    response = act(staff, Device, "activate_cloud_connector", [later, usable])

    assert reason(later) is None
    assert staff_audit(staff_user, "device.cloud_connector.activate").count() == 1  # the active one is skipped
    assert b"Cloud Connector activated for devices: 1." in response.content

    act(staff, Device, "deactivate_cloud_connector", [usable])
    assert reason(usable) == Unusable.DEVICE
    assert staff_audit(staff_user, "device.cloud_connector.deactivate").count() == 1


def test_activating_devices_says_which_stay_unusable_and_why(staff):
    device = DeviceFactory()
    services.subscription_create(tenant=device.tenant, actor=SYSTEM)
    response = act(staff, Device, "activate_cloud_connector", [device])
    assert services.is_active(obj=device)
    assert b"1 selected device(s) still unusable: merchant aggregator not active." in response.content


def test_activating_a_merchant_activates_its_devices_through_the_service(staff, staff_user):
    device = DeviceFactory()
    merchant = device.merchant
    services.subscription_create(tenant=device.tenant, actor=SYSTEM)
    services.service_activate(obj=merchant.merchant_aggregator, actor=SYSTEM)
    Activation.objects.filter(device=device).delete()

    response = act(staff, Merchant, "activate_cloud_connector", [merchant])

    assert reason(device) is None
    entry = staff_audit(staff_user, "merchant.cloud_connector.activate").get()
    assert entry.data == {"devices_activated": 1}
    assert b"Devices newly activated beneath them: 1." in response.content


def test_deactivating_an_aggregator_asks_first_then_goes_through_the_service(staff, staff_user):
    device = make_usable_device()
    ma = device.merchant.merchant_aggregator

    page = staff.post(
        changelist(MerchantAggregator),
        {"action": "deactivate_cloud_connector", helpers.ACTION_CHECKBOX_NAME: [ma.pk]},
    )
    assert page.status_code == 200
    assert b"1 device beneath it becomes unusable" in page.content
    assert reason(device) is None

    act(staff, MerchantAggregator, "deactivate_cloud_connector", [ma], confirmed="yes")
    assert reason(device) == Unusable.MERCHANT_AGGREGATOR
    assert staff_audit(staff_user, "merchant_aggregator.cloud_connector.deactivate").count() == 1

    act(staff, MerchantAggregator, "activate_cloud_connector", [ma])
    assert reason(device) is None


def test_unsubscribing_a_tenant_asks_first_then_goes_through_the_service(staff, staff_user):
    device = make_usable_device()
    page = staff.post(changelist(Tenant), {"action": "unsubscribe", helpers.ACTION_CHECKBOX_NAME: [device.tenant_id]})
    assert b"Every live device session of these tenants ends now." in page.content
    assert reason(device) is None

    act(staff, Tenant, "unsubscribe", [device.tenant], confirmed="yes")
    assert reason(device) == Unusable.SUBSCRIPTION
    assert staff_audit(staff_user, "subscription.delete").count() == 1

    act(staff, Tenant, "subscribe", [device.tenant])
    assert reason(device) is None


def test_ending_a_session_goes_through_the_service(staff, staff_user):
    device = make_usable_device()
    session = DeviceSession.objects.create(
        id="live-1", device=device, state="online", jwt_expires_at=timezone.now() + timedelta(minutes=5)
    )
    act(staff, DeviceSession, "end_sessions", [session])
    session.refresh_from_db()
    assert session.state == DeviceSession.State.ENDED
    assert staff_audit(staff_user, "device.session_end").count() == 1


def test_a_bulk_delete_that_a_service_refuses_deletes_nothing(staff, monkeypatch):
    first, second = StoreFactory(), StoreFactory()
    calls = []

    def refuse_the_second(*, store, actor):
        calls.append(store.pk)
        if store.pk == second.pk:
            raise Conflict("Not this one.")
        Store.objects.filter(pk=store.pk).delete()

    monkeypatch.setattr(account_services, "store_delete", refuse_the_second)
    response = act(staff, Store, "delete_selected", [first, second], post="yes")
    assert b"Nothing was changed: Not this one." in response.content
    assert sorted(calls) == sorted([first.pk, second.pk])
    # The first deletion was rolled back with the refusal of the second.
    assert Store.objects.filter(pk__in=[first.pk, second.pk]).count() == 2


def test_the_admin_will_not_delete_a_merchant_that_still_has_devices(staff):
    busy = DeviceFactory().merchant
    response = act(staff, Merchant, "delete_selected", [busy], post="yes")
    assert b"Cannot delete" in response.content
    assert Merchant.objects.filter(pk=busy.pk).exists()


def test_a_bulk_delete_of_devices_goes_through_the_service(staff, staff_user):
    devices = [DeviceFactory(), DeviceFactory()]
    act(staff, Device, "delete_selected", devices, post="yes")
    assert not Device.objects.filter(pk__in=[device.pk for device in devices]).exists()
    assert staff_audit(staff_user, "device.delete").count() == 2


# --- forms -----------------------------------------------------------------------------------


def device_form(store: Store, **overrides) -> dict:
    data = {
        "merchant": store.merchant_id,
        "store": store.pk,
        "make": "Ingenico",
        "model": "Lane3000",
        "serial": "777",
        "enabled": "on",
        "provisioned": "on",
    }
    return {**data, **overrides}


def test_adding_a_device_goes_through_the_service(staff, staff_user):
    store = make_usable_device().store
    response = staff.post(reverse("admin:connector_device_add"), device_form(store))
    assert response.status_code == 302
    device = Device.objects.get(serial="777")
    assert staff_audit(staff_user, "device.create").get().object_id == str(device.pk)
    # Created after its merchant was activated: inactive until activated itself.
    assert reason(device) == Unusable.DEVICE


def test_the_device_form_shows_the_services_refusal(staff):
    store = StoreFactory()
    DeviceFactory(store=store, make="Ingenico", serial="777")

    duplicate = staff.post(reverse("admin:connector_device_add"), device_form(store, serial="777", make="INGENICO"))
    assert duplicate.status_code == 200
    assert "This serial number cannot be used." in duplicate.context["adminform"].form.errors["serial"]

    elsewhere = staff.post(reverse("admin:connector_device_add"), device_form(store, merchant=MerchantFactory().pk))
    assert elsewhere.status_code == 200
    assert "The store does not belong to the merchant." in elsewhere.context["adminform"].form.errors["store"]
    assert Device.objects.count() == 1


def test_changing_a_device_goes_through_the_service(staff, staff_user):
    device = make_usable_device()
    data = {"store": device.store_id, "make": device.make, "model": "Move5000", "serial": device.serial}
    data |= {"certificates-TOTAL_FORMS": "0", "certificates-INITIAL_FORMS": "0"}  # the certificates inline
    response = staff.post(change_url(device), data)  # unchecked boxes: enabled and provisioned off
    assert response.status_code == 302
    device.refresh_from_db()
    assert device.model == "Move5000" and device.enabled is False
    entry = staff_audit(staff_user, "device.update").get()
    assert entry.data == {"model": "Move5000", "enabled": False, "provisioned": False}


def test_deleting_a_store_with_devices_is_refused(staff):
    store = DeviceFactory().store
    response = staff.post(reverse("admin:accounts_store_delete", args=[store.pk]), {"post": "yes"}, follow=True)
    assert b"Cannot delete store" in response.content
    assert Store.objects.filter(pk=store.pk).exists()


def test_a_delete_that_the_service_refuses_is_reported_on_the_object(staff, monkeypatch):
    store = StoreFactory()

    def refuse(*, store, actor):
        raise Conflict("The store is busy.")

    monkeypatch.setattr(account_services, "store_delete", refuse)
    response = staff.post(reverse("admin:accounts_store_delete", args=[store.pk]), {"post": "yes"}, follow=True)
    assert response.redirect_chain[-1][0] == change_url(store)
    assert b"Nothing was deleted: The store is busy." in response.content
    assert Store.objects.filter(pk=store.pk).exists()


def test_renaming_and_deleting_a_store_go_through_the_services(staff, staff_user):
    store = StoreFactory()
    staff.post(change_url(store), {"name": "Renamed"})
    store.refresh_from_db()
    assert store.name == "Renamed"
    assert staff_audit(staff_user, "store.rename").count() == 1
    staff.post(reverse("admin:accounts_store_delete", args=[store.pk]), {"post": "yes"})
    assert not Store.objects.filter(pk=store.pk).exists()
    assert staff_audit(staff_user, "store.delete").count() == 1


def test_adding_a_tenant_subscribes_it_through_the_services(staff, staff_user):
    response = staff.post(reverse("admin:accounts_tenant_add"), {"domain": "acme", "name": "Acme", "subscribe": "on"})
    assert response.status_code == 302
    tenant = Tenant.objects.get(domain="acme")
    assert Subscription.objects.filter(tenant=tenant).exists()
    assert staff_audit(staff_user, "tenant.create").count() == 1
    assert staff_audit(staff_user, "subscription.create").count() == 1

    bad = staff.post(reverse("admin:accounts_tenant_add"), {"domain": "Not A Domain", "name": "X"})
    assert bad.status_code == 200 and "domain" in bad.context["adminform"].form.errors


def test_a_tenant_is_renamed_through_the_service_and_keeps_its_domain(staff, staff_user):
    tenant = DeviceFactory().tenant
    domain = tenant.domain
    response = staff.post(change_url(tenant), {"name": "Renamed Client", "domain": "hijacked"})
    assert response.status_code == 302
    tenant.refresh_from_db()
    assert (tenant.name, tenant.domain) == ("Renamed Client", domain)
    assert staff_audit(staff_user, "tenant.rename").get().data == {"name": "Renamed Client"}


def test_adding_a_user_creates_the_membership_through_the_service(staff, staff_user):
    merchant = MerchantFactory()
    data = {
        "username": "newbie",
        "email": "newbie@example.com",
        "password1": "a long enough passphrase",
        "password2": "a long enough passphrase",
        "merchant": merchant.pk,
        "role": "viewer",
    }
    response = staff.post(reverse("admin:accounts_user_add"), data)
    assert response.status_code == 302
    user = User.objects.get(username="newbie")
    assert user.check_password("a long enough passphrase")
    assert (user.membership.merchant, user.membership.role) == (merchant, Membership.Role.VIEWER)
    assert staff_audit(staff_user, "user.create").count() == 1

    nowhere = staff.post(reverse("admin:accounts_user_add"), {**data, "username": "nowhere", "merchant": ""})
    assert nowhere.status_code == 200
    assert not User.objects.filter(username="nowhere").exists()


# --- secrets ---------------------------------------------------------------------------------


def shown_secret(response) -> tuple[str, str]:
    body = response.content.decode()
    client_id = re.search(r'<code class="client-id">([^<]+)</code>', body).group(1)
    secret = re.search(r'<code class="client-secret">([^<]+)</code>', body).group(1)
    return client_id, secret


def assert_never_rendered(client, secret: str, hashed: str, urls: list[str]) -> None:
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        assert secret.encode() not in response.content, url
        assert hashed.encode() not in response.content, url
        assert hashed.split("$")[-1].encode() not in response.content, url


def test_a_pos_created_in_the_admin_shows_its_secret_once_and_never_again(staff, staff_user):
    store = StoreFactory()

    response = staff.post(reverse("admin:accounts_pos_add"), {"store": store.pk, "name": "Till 9"})

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    client_id, secret = shown_secret(response)
    pos = POS.objects.get(name="Till 9")
    assert pos.application.client_id == client_id
    assert check_password(secret, pos.application.client_secret)
    assert staff_audit(staff_user, "pos.create").get().data == {"client_id": client_id}
    assert_never_rendered(
        staff,
        secret,
        pos.application.client_secret,
        [
            changelist(POS),
            change_url(pos),
            changelist(Application),
            change_url(pos.application),
            changelist(AuditEntry),
            change_url(AuditEntry.objects.get(action="pos.create")),
            reverse("admin:accounts_pos_history", args=[pos.pk]),
        ],
    )


def test_rotating_secrets_asks_first_then_shows_the_new_ones_once(staff, staff_user):
    pos = make_pos()
    page = staff.post(changelist(POS), {"action": "rotate_secret", helpers.ACTION_CHECKBOX_NAME: [pos.pk]})
    assert b"The old secret stops working" in page.content
    assert check_password(pos.client_secret, Application.objects.get(pk=pos.application_id).client_secret)

    response = staff.post(
        changelist(POS), {"action": "rotate_secret", helpers.ACTION_CHECKBOX_NAME: [pos.pk], "confirmed": "yes"}
    )

    client_id, secret = shown_secret(response)
    stored = Application.objects.get(pk=pos.application_id).client_secret
    assert client_id == pos.application.client_id
    assert check_password(secret, stored) and not check_password(pos.client_secret, stored)
    assert staff_audit(staff_user, "pos.rotate_secret").count() == 1
    assert_never_rendered(staff, secret, stored, [changelist(POS), change_url(pos)])


def test_a_cloud_application_created_in_the_admin_goes_through_the_service(staff, staff_user):
    ma = make_usable_device().merchant.merchant_aggregator
    data = {
        "merchant_aggregator": ma.pk,
        "name": "Cloud POS",
        "services": ["retail-api"],
        "grant_types": ["client_credentials"],
        "roles": ["pos-terminal"],
    }
    response = staff.post(reverse("admin:accounts_cloudapplication_add"), data)
    client_id, secret = shown_secret(response)
    app = CloudApplication.objects.get(application__client_id=client_id)
    assert app.missing_for_cloud_connector() == []
    assert staff_audit(staff_user, "application.create").count() == 1
    assert_never_rendered(staff, secret, app.application.client_secret, [changelist(CloudApplication), change_url(app)])

    staff.post(change_url(app), {**data, "roles": []})
    app.refresh_from_db()
    assert app.roles == []
    assert staff_audit(staff_user, "application.update").get().data == {"roles": []}


def test_a_provisioning_client_created_in_the_admin_shows_its_secret_once(staff, staff_user):
    tenant = DeviceFactory().tenant
    response = staff.post(reverse("admin:accounts_provisioningclient_add"), {"tenant": tenant.pk, "name": "ci"})
    client_id, secret = shown_secret(response)
    client = ProvisioningClient.objects.get(application__client_id=client_id)
    assert staff_audit(staff_user, "provisioning_client.create").count() == 1
    assert_never_rendered(
        staff, secret, client.application.client_secret, [changelist(ProvisioningClient), change_url(client)]
    )


def test_oauth_clients_are_read_only_and_secretless(staff):
    app = make_cloud_application()
    page = staff.get(change_url(app.application))
    assert page.status_code == 200
    assert app.application.client_id.encode() in page.content
    assert b"client_secret" not in page.content
    assert staff.get(reverse("admin:accounts_application_add")).status_code == 403
    assert staff.post(change_url(app.application), {"name": "x"}).status_code == 403
    assert staff.post(reverse("admin:accounts_application_delete", args=[app.application_id])).status_code == 403


# --- read-only -------------------------------------------------------------------------------


def test_the_audit_log_is_read_only(staff):
    entry = AuditEntry.objects.create(actor="system", action="x.y", object_type="x")
    assert staff.get(change_url(entry)).status_code == 200
    assert staff.get(reverse("admin:accounts_auditentry_add")).status_code == 403
    assert staff.post(change_url(entry), {"action": "forged"}).status_code == 403
    assert staff.post(reverse("admin:accounts_auditentry_delete", args=[entry.pk]), {"post": "yes"}).status_code == 403
    entry.refresh_from_db()
    assert entry.action == "x.y"


def test_what_no_service_writes_cannot_be_added_changed_or_deleted(staff_user):
    from django.test import RequestFactory

    request = RequestFactory().get("/admin/")
    request.user = staff_user
    read_only = [AuditEntry, Application, Membership, DeviceSession, Activation]
    for model in read_only:
        model_admin = admin.site._registry[model]
        assert not model_admin.has_add_permission(request), model
        assert not model_admin.has_change_permission(request), model
    user_admin = admin.site._registry[User]
    assert user_admin.has_add_permission(request) and not user_admin.has_change_permission(request)
    assert not admin.site._registry[Tenant].has_delete_permission(request)


@pytest.mark.parametrize("model", [model for model in admin.site._registry])
def test_every_admin_list_add_and_change_page_answers(staff, model):
    device = make_usable_device()
    pos = make_pos(store=device.store)
    token = AccessToken.objects.create(
        application=pos.application, token="raw-token-value-1234567890", expires=timezone.now() + timedelta(hours=1)
    )
    make_cloud_application(merchant_aggregator=device.merchant.merchant_aggregator)
    make_user(username="member", merchant=device.merchant)
    account_services.provisioning_client_create(tenant=device.tenant, actor=SYSTEM)
    DeviceSession.objects.create(id="s", device=device, jwt_expires_at=timezone.now() + timedelta(minutes=5))

    response = staff.get(changelist(model))
    assert response.status_code == 200
    model_admin = admin.site._registry[model]
    add = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_add")
    assert staff.get(add).status_code == (200 if model_admin.has_add_permission(response.wsgi_request) else 403)
    obj = model_admin.get_queryset(response.wsgi_request).first()
    if obj is not None:
        page = staff.get(change_url(obj))
        assert page.status_code == 200
        assert token.token.encode() not in page.content and token.token.encode() not in response.content


def test_a_user_who_is_not_staff_cannot_use_the_admin(client):
    merchant_admin = make_user(username="boss", merchant=MerchantFactory())
    client.force_login(merchant_admin)
    device = DeviceFactory()
    response = client.post(changelist(Device), {"action": "disable_devices", helpers.ACTION_CHECKBOX_NAME: [device.pk]})
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    device.refresh_from_db()
    assert device.enabled


# --- the device list -------------------------------------------------------------------------


@pytest.fixture
def fleet():
    """Devices in each state, under one MA with two merchants, plus one of another tenant."""
    usable = make_usable_device(make="Ingenico", model="Lane3000", serial="USABLE1")
    store = usable.store
    disabled = make_usable_device(store=store, serial="DISABLED1")
    services.device_update(device=disabled, enabled=False, actor=SYSTEM)
    later = DeviceFactory(store=store, make="Ingenico", model="Move5000", serial="LATER1")
    sibling = StoreFactory(merchant=MerchantFactory(merchant_aggregator=store.merchant.merchant_aggregator))
    inactive_merchant = DeviceFactory(store=sibling, make="Verifone", model="P400", serial="SIBLING1")
    services.service_activate(obj=inactive_merchant, actor=SYSTEM)
    foreign = DeviceFactory(make="PAX", model="A920", serial="FOREIGN1")
    DeviceSession.objects.create(
        id="online-1", device=usable, state="online", jwt_expires_at=timezone.now() + timedelta(minutes=5)
    )
    # What the relay writes with it (connector.history.went_online): presence is stored.
    Device.objects.filter(pk=usable.pk).update(online=True, online_since=timezone.now())
    return {
        "usable": usable,
        "later": later,
        "disabled": disabled,
        "inactive_merchant": inactive_merchant,
        "foreign": foreign,
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("active=yes", {"usable", "disabled", "inactive_merchant"}),
        ("active=no", {"later", "foreign"}),
        ("usable=yes", {"usable"}),
        ("usable=device", {"later"}),
        ("usable=disabled", {"disabled"}),
        ("usable=merchant", {"inactive_merchant"}),
        ("usable=subscription", {"foreign"}),
        ("usable=merchant_aggregator", set()),
        ("online=yes", {"usable"}),
        ("online=no", {"later", "disabled", "inactive_merchant", "foreign"}),
        ("make=Verifone", {"inactive_merchant"}),
        ("enabled__exact=0", {"disabled"}),
        ("q=later1", {"later"}),
        ("q=ingenico-move5000-LATER1", {"later"}),
        ("q=Verifone", {"inactive_merchant"}),
    ],
)
def test_the_device_list_filters_and_searches(staff, fleet, query, expected):
    response = staff.get(f"{changelist(Device)}?{query}")
    assert response.status_code == 200
    assert tsns_listed(response) == {fleet[name].tsn for name in expected}


def test_the_device_list_filters_by_tenant_merchant_and_store(staff, fleet):
    usable = fleet["usable"]
    by_tenant = staff.get(f"{changelist(Device)}?tenant__id__exact={usable.tenant_id}")
    assert tsns_listed(by_tenant) == {fleet[n].tsn for n in ("usable", "later", "disabled", "inactive_merchant")}
    by_merchant = staff.get(f"{changelist(Device)}?merchant__id__exact={usable.merchant_id}")
    assert tsns_listed(by_merchant) == {fleet[n].tsn for n in ("usable", "later", "disabled")}
    by_store = staff.get(f"{changelist(Device)}?store__id__exact={fleet['inactive_merchant'].store_id}")
    assert tsns_listed(by_store) == {fleet["inactive_merchant"].tsn}


def test_the_device_list_shows_why_a_device_is_unusable(staff, fleet):
    body = staff.get(changelist(Device)).content.decode()
    for name, text in [
        ("later", "no: device not active"),
        ("disabled", "no: device disabled or not provisioned"),
        ("inactive_merchant", "no: merchant not active"),
        ("foreign", "no: tenant not subscribed"),
    ]:
        row = re.search(rf"<tr>.*?{re.escape(fleet[name].tsn)}.*?</tr>", body, re.S).group(0)
        assert text in row, name


def test_the_device_list_costs_the_same_queries_for_many_devices(staff):
    store = make_usable_device().store
    with CaptureQueriesContext(connection) as few:
        assert staff.get(changelist(Device)).status_code == 200
    for _ in range(20):
        make_usable_device(store=StoreFactory())
    DeviceFactory(store=store)
    with CaptureQueriesContext(connection) as many:
        response = staff.get(changelist(Device))
    assert len(response.context["cl"].result_list) == 22
    # The merchant and store filters list the values present: no per-row query either way.
    assert len(many.captured_queries) == len(few.captured_queries)
