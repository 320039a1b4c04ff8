"""Importing devices from CSV: every row checked first, then all created or none
(connector.csv_import, and its admin page)."""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from accounts.errors import NotAllowed, NotFound
from accounts.models import AuditEntry, Membership
from accounts.scope import principal_for_user
from connector import csv_import, services
from connector.csv_import import devices_import_csv
from connector.models import Device
from connector.services import Unusable
from tests.factories import (
    DeviceFactory,
    MerchantAggregatorFactory,
    MerchantFactory,
    StoreFactory,
    TenantFactory,
    make_user,
)

pytestmark = pytest.mark.django_db

HEADER = "make,model,serial,merchant,store\n"
IMPORT_URL = "/admin/connector/device/import-csv/"


class Estate:
    """A tenant with two merchants; Cafe Nord is active for Cloud Connector."""

    def __init__(self) -> None:
        self.staff_user = make_user(username="ops", is_staff=True)
        self.staff = principal_for_user(self.staff_user)
        self.tenant = TenantFactory(domain="estate")
        self.ma = MerchantAggregatorFactory(tenant=self.tenant, name="Estate MA")
        self.nord = MerchantFactory(merchant_aggregator=self.ma, name="Cafe Nord")
        self.sud = MerchantFactory(merchant_aggregator=self.ma, name="Cafe Sud")
        self.nord_1 = StoreFactory(merchant=self.nord, name="Store 1")
        self.nord_2 = StoreFactory(merchant=self.nord, name="Store 2")
        self.sud_1 = StoreFactory(merchant=self.sud, name="Store 1")
        self.harbour = StoreFactory(merchant=self.sud, name="Harbour")
        services.subscription_create(tenant=self.tenant, actor=self.staff)
        services.service_activate(obj=self.ma, actor=self.staff)
        services.service_activate(obj=self.nord, actor=self.staff)

    def run(self, text: str | bytes, *, actor=None, tenant=None):
        data = text.encode() if isinstance(text, str) else text
        return devices_import_csv(tenant=tenant or self.tenant, file=io.BytesIO(data), actor=actor or self.staff)


@pytest.fixture
def estate() -> Estate:
    return Estate()


GOOD = (
    HEADER
    + "Ingenico,Lane3000,230000101,Cafe Nord,Store 1\n"
    + "Ingenico,Move5000,230000102,Cafe Nord,Store 2\n"
    + "Ingenico,Lane3000,230000103,Cafe Sud,Store 1\n"
)


def test_a_good_file_creates_every_device_in_its_merchant_and_store(estate):
    result = estate.run(GOOD)

    assert result.ok and result.created == 3 and result.errors == ()
    devices = {device.serial: device for device in Device.objects.filter(pk__in=result.device_ids)}
    assert set(devices) == {"230000101", "230000102", "230000103"}
    assert (devices["230000101"].merchant, devices["230000101"].store) == (estate.nord, estate.nord_1)
    assert (devices["230000102"].model, devices["230000102"].store) == ("Move5000", estate.nord_2)
    assert (devices["230000103"].merchant, devices["230000103"].store) == (estate.sud, estate.sud_1)
    assert all(device.tenant == estate.tenant and device.enabled for device in devices.values())


def test_imported_devices_follow_the_rule_for_devices_created_after_activation(estate):
    result = estate.run(GOOD)
    by_serial = {device.serial: device for device in Device.objects.filter(pk__in=result.device_ids)}
    # Cafe Nord was activated before the import: its new devices still need their own activation.
    assert services.device_unusable_reason(device=by_serial["230000101"]) == Unusable.DEVICE
    assert services.device_unusable_reason(device=by_serial["230000103"]) == Unusable.MERCHANT
    services.service_activate(obj=by_serial["230000101"], actor=estate.staff)
    assert services.device_unusable_reason(device=by_serial["230000101"]) is None


def test_an_import_is_audited_per_device_and_as_a_whole_with_its_actor(estate):
    result = estate.run(GOOD)
    created = AuditEntry.objects.filter(action="device.create", object_id__in=[str(pk) for pk in result.device_ids])
    assert created.count() == 3
    assert set(created.values_list("actor", "actor_user_id")) == {("user:ops", estate.staff_user.pk)}
    summary = AuditEntry.objects.get(action="device.import_csv")
    assert summary.tenant == estate.tenant and summary.data == {"devices_created": 3}
    assert summary.actor_user == estate.staff_user


def test_the_header_may_come_in_any_order_and_case_with_a_bom_crlf_and_blank_lines(estate):
    text = "\ufeff Store ,MERCHANT,serial,Model,make\r\n\r\nStore 2,Cafe Nord,A-1,Lane3000,Ingenico\r\n\r\n"
    result = estate.run(text)
    assert result.ok and result.created == 1
    device = Device.objects.get(serial="A-1")
    assert (device.make, device.model, device.store) == ("Ingenico", "Lane3000", estate.nord_2)


def test_surrounding_spaces_are_ignored(estate):
    result = estate.run(HEADER + " Ingenico , Lane3000 , 555 , Cafe Nord , Store 1 \n")
    assert result.ok
    assert Device.objects.filter(make="Ingenico", serial="555", store=estate.nord_1).exists()


def test_one_bad_row_among_good_ones_imports_nothing_and_names_its_line(estate):
    text = (
        HEADER
        + "Ingenico,Lane3000,230000101,Cafe Nord,Store 1\n"
        + "Ingenico,Lane3000,230000102,Cafe Nowhere,Store 1\n"
        + "Ingenico,Lane3000,230000103,Cafe Nord,Store 2\n"
    )
    result = estate.run(text)
    assert not result.ok and result.created == 0
    assert [(error.line, error.reason) for error in result.errors] == [
        (3, "unknown merchant 'Cafe Nowhere' in this tenant")
    ]
    assert not Device.objects.exists()
    assert not AuditEntry.objects.filter(action__in=["device.create", "device.import_csv"]).exists()


def test_every_bad_row_is_reported_in_line_order(estate):
    text = (
        HEADER
        + "Ingenico,Lane3000,1,Cafe Nord,Store 1\n"
        + "Ingenico,Lane3000\n"
        + "Ingenico,Lane3000,3,Cafe Nord,Nowhere\n"
        + "Ingenico,Lane3000,1,Cafe Nord,Store 2\n"
    )
    result = estate.run(text)
    assert [error.line for error in result.errors] == [3, 4, 5]
    assert "expected 5 values, found 2" in result.errors[0].reason
    assert "unknown store 'Nowhere'" in result.errors[1].reason
    assert "duplicate of line 2" in result.errors[2].reason
    assert not Device.objects.exists()


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("Ingenico,Lane3000,9,Cafe Nowhere,Store 1", "unknown merchant 'Cafe Nowhere'"),
        ("Ingenico,Lane3000,9,Cafe Nord,Basement", "unknown store 'Basement'"),
        ("Ingenico,Lane3000,9,Cafe Nord,Harbour", "store 'Harbour' is not a store of merchant 'Cafe Nord'"),
        ("Ingenico,Lane3000,9,cafe nord,Store 1", "unknown merchant 'cafe nord'"),
        ("Ingenico,Lane3000,23 01,Cafe Nord,Store 1", "serial '23 01': Use only letters, digits"),
        ("Ingenico,Lane/3000,9,Cafe Nord,Store 1", "model 'Lane/3000': Use only letters, digits"),
        ("Ingénico,Lane3000,9,Cafe Nord,Store 1", "make 'Ingénico': Use only letters, digits"),
        (f"Ingenico,{'L' * 41},9,Cafe Nord,Store 1", "model is longer than 40 characters"),
        (f"Ingenico,Lane3000,{'9' * 61},Cafe Nord,Store 1", "serial is longer than 60 characters"),
        (f"Ingenico,Lane3000,9,{'C' * 101},Store 1", "merchant is longer than 100 characters"),
        (",Lane3000,9,Cafe Nord,Store 1", "make is empty"),
        ("Ingenico,Lane3000,,Cafe Nord,Store 1", "serial is empty"),
        ("Ingenico,Lane3000,9,Cafe Nord,", "store is empty"),
        ('Ingenico,Lane3000,9,"Cafe\x07Nord",Store 1', "merchant contains control characters"),
        ("Ingenico,Lane3000,9,Cafe Nord", "expected 5 values, found 4"),
        ("Ingenico,Lane3000,9,Cafe Nord,Store 1,extra", "expected 5 values, found 6"),
    ],
)
def test_it_refuses_a_bad_row_with_its_reason(estate, row, reason):
    result = estate.run(HEADER + "Ingenico,Lane3000,1,Cafe Nord,Store 1\n" + row + "\n")
    assert not result.ok
    assert [error.line for error in result.errors] == [3]
    assert reason in result.errors[0].reason
    assert not Device.objects.exists()


def test_it_refuses_a_serial_repeated_in_the_file_whatever_its_case(estate):
    text = HEADER + "Ingenico,Lane3000,abc,Cafe Nord,Store 1\n" + "INGENICO,Move5000,ABC,Cafe Sud,Harbour\n"
    result = estate.run(text)
    assert [(error.line, error.reason) for error in result.errors] == [
        (3, "duplicate of line 2 (same make and serial)")
    ]


def test_it_refuses_a_serial_that_exists_in_the_tenant_whatever_its_case(estate):
    DeviceFactory(store=estate.harbour, make="ingenico", serial="ABC")
    result = estate.run(HEADER + "Ingenico,Lane3000,abc,Cafe Nord,Store 1\n")
    assert [error.line for error in result.errors] == [2]
    assert result.errors[0].reason == "Ingenico serial 'abc': This serial number cannot be used."
    assert Device.objects.count() == 1


def test_the_same_serial_is_fine_for_another_make_or_in_another_tenant(estate):
    DeviceFactory(store=estate.harbour, make="Verifone", serial="ABC")
    DeviceFactory(make="Ingenico", serial="ABC")  # another tenant
    text = HEADER + "Ingenico,Lane3000,ABC,Cafe Nord,Store 1\n" + "PAX,A920,ABC,Cafe Nord,Store 1\n"
    result = estate.run(text)
    assert result.ok and result.created == 2


def test_a_merchant_name_must_be_unambiguous_in_the_tenant(estate):
    other_ma = MerchantAggregatorFactory(tenant=estate.tenant)
    MerchantFactory(merchant_aggregator=other_ma, name="Cafe Nord")
    result = estate.run(HEADER + "Ingenico,Lane3000,1,Cafe Nord,Store 1\n")
    assert "2 merchants are named 'Cafe Nord' in this tenant" in result.errors[0].reason


def test_a_merchant_of_the_same_name_in_another_tenant_does_not_matter(estate):
    MerchantFactory(name="Cafe Nord")
    assert estate.run(HEADER + "Ingenico,Lane3000,1,Cafe Nord,Store 1\n").ok


def test_a_merchant_of_another_tenant_is_unknown(estate):
    elsewhere = StoreFactory(name="Far Store", merchant=MerchantFactory(name="Far Merchant"))
    result = estate.run(HEADER + f"Ingenico,Lane3000,1,{elsewhere.merchant.name},{elsewhere.name}\n")
    assert "unknown merchant 'Far Merchant'" in result.errors[0].reason


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        (b"", None, "The file is empty"),
        (b"  \n\n", None, "The file is empty"),
        (HEADER.encode(), None, "no device rows"),
        (b"make,model,serial,merchant\nIngenico,Lane3000,1,Cafe Nord\n", 1, "The header must name the columns"),
        (b"make;model;serial;merchant;store\n", 1, "The header must name the columns"),
        (b"Ingenico,Lane3000,1,Cafe Nord,Store 1\n", 1, "The header must name the columns"),
        (b"make,model,serial,merchant,store,store\n", 1, "The header must name the columns"),
        (HEADER.encode() + b"Ingenico,Lane3000,1,Cafe Nord,Store 1\nIngenico,Lane3000,2,Caf\xe9,Store 1\n", 3, "UTF-8"),
        (b"\xff\xfem\x00a\x00k\x00e\x00", 1, "UTF-8"),
        (HEADER.encode() + b'Ingenico,Lane3000,1,"Cafe Nord,Store 1\n', 2, "Unreadable CSV"),
    ],
)
def test_it_refuses_a_file_that_is_not_a_device_csv(estate, content, line, reason):
    result = estate.run(content)
    assert len(result.errors) == 1
    assert result.errors[0].line == line
    assert reason in result.errors[0].reason
    assert not Device.objects.exists()


def test_it_refuses_a_file_that_is_too_large(estate, monkeypatch):
    monkeypatch.setattr(csv_import, "MAX_FILE_BYTES", 100)
    result = estate.run(GOOD)
    assert "larger than" in result.errors[0].reason
    assert not Device.objects.exists()


def test_it_refuses_too_many_rows(estate, monkeypatch):
    monkeypatch.setattr(csv_import, "MAX_ROWS", 2)
    result = estate.run(GOOD)
    assert "more than 2 device rows" in result.errors[0].reason
    assert not Device.objects.exists()


def test_a_serial_taken_after_the_checks_rolls_the_whole_import_back(estate, monkeypatch):
    # As if another request created the serial between the checks and the writes.
    monkeypatch.setattr(csv_import, "_check_serials", lambda rows, tenant: None)
    DeviceFactory(store=estate.harbour, make="Ingenico", serial="230000103")
    result = estate.run(GOOD)
    assert [(error.line, "cannot be used" in error.reason) for error in result.errors] == [(4, True)]
    assert Device.objects.count() == 1


def test_a_viewer_may_not_import(estate):
    viewer = make_user(username="watcher", merchant_aggregator=estate.ma, role=Membership.Role.VIEWER)
    with pytest.raises(NotAllowed):
        estate.run(GOOD, actor=principal_for_user(viewer))
    assert not Device.objects.exists()


def test_an_aggregator_user_imports_only_into_its_own_merchants(estate):
    other_ma = MerchantAggregatorFactory(tenant=estate.tenant)
    theirs = StoreFactory(merchant=MerchantFactory(merchant_aggregator=other_ma, name="Their Cafe"), name="Theirs")
    boss = principal_for_user(make_user(username="boss", merchant_aggregator=estate.ma))

    result = estate.run(HEADER + f"Ingenico,Lane3000,1,Their Cafe,{theirs.name}\n", actor=boss)
    assert "unknown merchant 'Their Cafe'" in result.errors[0].reason

    assert estate.run(GOOD, actor=boss).created == 3


def test_an_outsider_may_not_import_into_a_tenant_it_does_not_reach(estate):
    outsider = principal_for_user(make_user(username="outsider", merchant_aggregator=MerchantAggregatorFactory()))
    with pytest.raises(NotFound):
        estate.run(GOOD, actor=outsider)
    assert not Device.objects.exists()


# --- the admin page --------------------------------------------------------------------------


def upload(client, estate: Estate, content: str | bytes):
    data = content.encode() if isinstance(content, str) else content
    return client.post(
        IMPORT_URL,
        {"tenant": estate.tenant.pk, "file": SimpleUploadedFile("devices.csv", data, content_type="text/csv")},
    )


def test_the_device_list_links_to_the_import(client, estate):
    client.force_login(estate.staff_user)
    response = client.get(reverse("admin:connector_device_changelist"))
    assert response.status_code == 200
    assert IMPORT_URL.encode() in response.content


def test_staff_import_a_good_file_through_the_admin(client, estate):
    client.force_login(estate.staff_user)
    assert client.get(IMPORT_URL).status_code == 200

    response = upload(client, estate, GOOD)

    assert response.status_code == 302
    assert response["Location"].endswith(f"?tenant__id__exact={estate.tenant.pk}")
    assert Device.objects.filter(tenant=estate.tenant).count() == 3
    assert AuditEntry.objects.get(action="device.import_csv").actor_user == estate.staff_user
    page = client.get(response["Location"])
    assert b"Imported 3 device(s)" in page.content


def test_the_admin_lists_every_bad_line_and_imports_nothing(client, estate):
    client.force_login(estate.staff_user)
    text = GOOD + "Ingenico,Lane3000,230000104,Cafe Nord,Harbour\n" + "Ingenico,Lane3000,230000101,Cafe Nord,Store 1\n"

    response = upload(client, estate, text)

    assert response.status_code == 200
    body = response.content.decode()
    assert "Nothing was imported: 2 problems." in body
    assert "<td>5</td><td>store &#x27;Harbour&#x27; is not a store of merchant &#x27;Cafe Nord&#x27;</td>" in body
    assert "<td>6</td><td>duplicate of line 2 (same make and serial)</td>" in body
    assert not Device.objects.exists()


def test_the_admin_explains_an_empty_file(client, estate):
    client.force_login(estate.staff_user)
    response = upload(client, estate, b"")
    assert response.status_code == 200
    assert b"The file is empty" in response.content


def test_the_admin_import_needs_a_tenant_and_a_file(client, estate):
    client.force_login(estate.staff_user)
    response = client.post(IMPORT_URL, {})
    assert response.status_code == 200
    assert response.content.count(b"This field is required.") == 2


def test_a_user_who_is_not_staff_cannot_reach_the_import(client, estate):
    client.force_login(make_user(username="merchant-boss", merchant=estate.nord))
    for response in (client.get(IMPORT_URL), upload(client, estate, GOOD)):
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")
    assert not Device.objects.exists()


def test_an_anonymous_visitor_cannot_reach_the_import(client, estate):
    response = upload(client, estate, GOOD)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert not Device.objects.exists()
