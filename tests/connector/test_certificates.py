"""Device identity by certificate (v1.1 §15), in process: parsing what people paste, the
enrol/remove/require_mtls services and who may call them, the proxy's headers believed only
from FORWARDED_ALLOW_IPS, registration and device sockets by certificate, and the REST API
per role and scope. Through nginx and real TLS: test_mtls_nginx.py."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.urls import reverse

from accounts.errors import Conflict, Invalid, NotAllowed
from accounts.models import AuditEntry
from accounts.scope import principal_for_user
from connector import certificates
from connector.certificates import CERT_HEADER, VERIFY_HEADER
from connector.models import DeviceCertificate, DeviceSession
from portal.proxies import ProxyTrust, TrustedProxies
from tests.api.conftest import API, bearer_client, make_session, session_client
from tests.connector.mtls_pki import DeviceCA
from tests.connector.relay_world import (
    APP,
    HOST,
    communicator,
    expect_close,
    local_path,
    opened,
    refused_with,
    register,
    request,
)
from tests.factories import DeviceFactory
from tests.world import World, switch_cloud_connector_on

pytestmark = pytest.mark.django_db

LISTENER = "/cloud-connector/v1/device-listener"


@pytest.fixture(scope="module")
def ca() -> DeviceCA:
    return DeviceCA()


@pytest.fixture(scope="module")
def terminal_cert(ca):
    return ca.issue("A1000001")


def verified(issued) -> list[tuple[bytes, bytes]]:
    """The headers nginx sets for a client certificate it verified."""
    return [(VERIFY_HEADER, b"SUCCESS"), (CERT_HEADER, issued.escaped)]


def enrol(world: World, device, issued) -> DeviceCertificate:
    return certificates.device_certificate_enrol(
        device=device, pem=issued.pem, actor=principal_for_user(world.merchant_admin)
    )


# --- parsing ---------------------------------------------------------------------------------


def test_it_reads_the_fingerprint_subject_and_expiry_of_a_certificate(terminal_cert):
    parsed = certificates.certificate_parse(terminal_cert.pem)
    assert parsed.fingerprint_sha256 == terminal_cert.fingerprint
    assert len(parsed.fingerprint_sha256) == 64 and parsed.fingerprint_sha256 == parsed.fingerprint_sha256.lower()
    assert parsed.subject == "CN=A1000001,O=Acme Terminals"
    assert parsed.not_after == terminal_cert.certificate.not_valid_after_utc
    assert parsed.pem == terminal_cert.pem


def pem_refusal(pem) -> str:
    with pytest.raises(Invalid) as refused:
        certificates.certificate_parse(pem)
    assert set(refused.value.errors) == {"pem"}
    return refused.value.errors["pem"][0]


def test_it_refuses_garbage_keys_chains_cas_and_expired_certificates(ca, terminal_cert):
    assert "PEM certificate" in pem_refusal("hello")
    assert "PEM certificate" in pem_refusal("")
    assert "PEM certificate" in pem_refusal(42)
    assert "cannot be read" in pem_refusal("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert "private key" in pem_refusal(terminal_cert.key_pem)
    assert "private key" in pem_refusal(terminal_cert.pem + terminal_cert.key_pem)
    assert "not a chain" in pem_refusal(terminal_cert.pem + ca.pem)
    assert "CA certificate" in pem_refusal(ca.pem)
    assert "expired" in pem_refusal(ca.issue("old", expired=True).pem)
    assert "at most" in pem_refusal("x" * (certificates.PEM_LIMIT + 1))


def test_the_proxys_word_gives_the_fingerprint_only_for_a_verified_certificate(terminal_cert):
    assert certificates.presented_fingerprint(verified(terminal_cert)) == terminal_cert.fingerprint
    assert certificates.presented_fingerprint([(VERIFY_HEADER, b"NONE")]) == ""
    failed = [(VERIFY_HEADER, b"FAILED:certificate has expired"), (CERT_HEADER, terminal_cert.escaped)]
    assert certificates.presented_fingerprint(failed) == ""
    assert certificates.presented_fingerprint([(CERT_HEADER, terminal_cert.escaped)]) == ""
    assert certificates.presented_fingerprint([(VERIFY_HEADER, b"SUCCESS"), (CERT_HEADER, b"garbage")]) == ""


# --- the proxy's headers, from FORWARDED_ALLOW_IPS only ---------------------------------------


def test_trusted_proxies_read_addresses_networks_and_star():
    trusted = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "unix:/run/cc.sock"])
    assert "127.0.0.1" in trusted and "10.2.3.4" in trusted and "unix:/run/cc.sock" in trusted
    assert "127.0.0.2" not in trusted and "" not in trusted and None not in trusted
    assert "203.0.113.9" in TrustedProxies(["*"])


async def scope_seen(headers: list[tuple[bytes, bytes]], peer: str) -> dict:
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)

    wrapped = ProxyTrust(app, trusted=["127.0.0.1"])
    await wrapped({"type": "websocket", "client": (peer, 5000), "headers": headers, "scheme": "ws"}, None, None)
    return seen


async def test_certificate_headers_from_a_peer_outside_forwarded_allow_ips_are_dropped(terminal_cert):
    forged = [*verified(terminal_cert), (b"x-forwarded-for", b"198.51.100.7")]
    direct = await scope_seen(forged, "127.0.0.2")
    assert direct["headers"] == [(b"x-forwarded-for", b"198.51.100.7")]
    assert direct["client"] == ("127.0.0.2", 5000)
    proxied = await scope_seen(forged, "127.0.0.1")
    assert certificates.presented_fingerprint(proxied["headers"]) == terminal_cert.fingerprint
    assert proxied["client"][0] == "198.51.100.7"


# --- services -----------------------------------------------------------------------------------


def test_a_merchant_admin_enrols_a_certificate_and_it_is_audited(world, terminal_cert):
    enrolled = enrol(world, world.device, terminal_cert)
    assert (enrolled.device, enrolled.fingerprint_sha256) == (world.device, terminal_cert.fingerprint)
    entry = AuditEntry.objects.get(action="device.certificate_enrol")
    assert entry.actor == "user:alice" and entry.data["fingerprint_sha256"] == terminal_cert.fingerprint


def test_viewers_may_not_enrol_remove_or_require(world, terminal_cert):
    viewer = principal_for_user(world.merchant_viewer)
    with pytest.raises(NotAllowed):
        certificates.device_certificate_enrol(device=world.device, pem=terminal_cert.pem, actor=viewer)
    enrolled = enrol(world, world.device, terminal_cert)
    with pytest.raises(NotAllowed):
        certificates.device_certificate_remove(certificate=enrolled, actor=viewer)
    with pytest.raises(NotAllowed):
        certificates.device_require_mtls_set(device=world.device, require=True, actor=viewer)
    assert DeviceCertificate.objects.count() == 1


def test_a_certificate_is_one_devices_identity(world, terminal_cert):
    enrol(world, world.device, terminal_cert)
    with pytest.raises(Invalid, match="already enrolled for this device"):
        enrol(world, world.device, terminal_cert)
    # Another device's certificate may be outside the actor's scope: the refusal names nothing.
    with pytest.raises(Invalid) as refused:
        enrol(world, world.other_device, terminal_cert)
    assert refused.value.errors == {"pem": ["This certificate cannot be used."]}


def live_session(device, _label: str, fingerprint: str = "") -> DeviceSession:
    return make_session(device, registered_fingerprint=fingerprint)


def test_removing_a_certificate_ends_the_sessions_registered_with_it_only(world, ca, terminal_cert):
    enrolled = enrol(world, world.device, terminal_cert)
    by_cert = live_session(world.device, "by-cert", terminal_cert.fingerprint)
    other = ca.issue("other")
    by_other = live_session(world.other_device, "by-other", other.fingerprint)
    certificates.device_certificate_remove(certificate=enrolled, actor=principal_for_user(world.merchant_admin))
    by_cert.refresh_from_db()
    by_other.refresh_from_db()
    assert (by_cert.state, by_cert.end_reason) == (DeviceSession.State.ENDED, "certificate_removed")
    assert by_other.state == DeviceSession.State.ONLINE
    assert not DeviceCertificate.objects.exists()
    assert AuditEntry.objects.filter(action="device.certificate_remove").count() == 1


def test_requiring_mtls_ends_the_sessions_registered_with_a_credential(world, terminal_cert):
    by_credential = live_session(world.device, "by-credential")
    certificates.device_require_mtls_set(
        device=world.device, require=True, actor=principal_for_user(world.merchant_admin)
    )
    by_credential.refresh_from_db()
    world.device.refresh_from_db()
    assert world.device.require_mtls
    assert (by_credential.state, by_credential.end_reason) == (DeviceSession.State.ENDED, "mtls_required")
    by_cert = live_session(world.device, "by-cert", terminal_cert.fingerprint)
    certificates.device_require_mtls_set(
        device=world.device, require=True, actor=principal_for_user(world.merchant_admin)
    )
    by_cert.refresh_from_db()
    assert by_cert.state == DeviceSession.State.ONLINE


# --- registration and device sockets by certificate (in process) ----------------------------


def db(fn):
    return database_sync_to_async(fn)


async def register_with(headers, resource: dict) -> dict:
    comm = communicator(LISTENER, headers=headers)
    await opened(comm)
    await comm.send_to(text_data=request(resource))
    answer = json.loads(await comm.receive_from(5))
    await expect_close(comm, 1000)
    return answer["response"]["resource"]


def device_comm(registration: dict, headers=()) -> WebsocketCommunicator:
    header = registration["authorization_header"]["Authorization"].encode()
    return communicator(local_path(registration["connection_url"]), headers=[(b"authorization", header), *headers])


@pytest.mark.django_db(transaction=True)
@pytest.mark.cloud_connector_on
@pytest.mark.usefixtures("fresh_state")
async def test_an_enrolled_certificate_registers_its_device_without_credentials(world, terminal_cert):
    await db(enrol)(world, world.device, terminal_cert)
    resource = await register_with(verified(terminal_cert), {"tsn": world.device.tsn})
    assert resource["status"] == "ok", resource
    session = await db(DeviceSession.objects.get)(pk=resource["session_id"])
    assert session.registered_fingerprint == terminal_cert.fingerprint and session.registered_by is None
    # Its device sockets present the same certificate; without it, or with another, 4401.
    await refused_with(device_comm(resource), 4401)
    other = DeviceCA().issue("A1000001")
    await refused_with(device_comm(resource, verified(other)), 4401)
    socket = await opened(device_comm(resource, verified(terminal_cert)))
    # Removing the certificate closes it (4410).
    enrolled = await db(DeviceCertificate.objects.get)(fingerprint_sha256=terminal_cert.fingerprint)
    await db(certificates.device_certificate_remove)(
        certificate=enrolled, actor=principal_for_user(world.merchant_admin)
    )
    await expect_close(socket, 4410)


@pytest.mark.django_db(transaction=True)
@pytest.mark.cloud_connector_on
@pytest.mark.usefixtures("fresh_state")
async def test_another_devices_certificate_is_an_invalid_client_even_with_good_credentials(world, ca):
    theirs = ca.issue("A2000001")
    await db(enrol)(world, world.other_device, theirs)
    resource = await register_with(
        verified(theirs), {"tsn": world.device.tsn, "custom_registration_data": world.pos_credentials}
    )
    assert (resource["status_code"], resource["error"]) == (401, "invalid_client")
    assert "another device" in resource["message"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.cloud_connector_on
@pytest.mark.usefixtures("fresh_state")
async def test_a_certificate_enrolled_nowhere_leaves_it_to_the_credentials(world, ca):
    stranger = ca.issue("stranger")
    alone = await register_with(verified(stranger), {"tsn": world.device.tsn})
    assert (alone["status_code"], alone["error"]) == (401, "invalid_client")
    with_credentials = await register_with(
        verified(stranger), {"tsn": world.device.tsn, "custom_registration_data": world.pos_credentials}
    )
    assert with_credentials["status"] == "ok"


@pytest.mark.django_db(transaction=True)
@pytest.mark.cloud_connector_on
@pytest.mark.usefixtures("fresh_state")
async def test_a_device_requiring_mtls_refuses_credentials_with_403_mtls_required(world, terminal_cert):
    await db(certificates.device_require_mtls_set)(
        device=world.device, require=True, actor=principal_for_user(world.merchant_admin)
    )
    refused = await register(world.device.tsn, world.pos_credentials)
    assert (refused["status_code"], refused["error"]) == (403, "mtls_required")
    by_token = await register(world.device.tsn, token=world.app_token)
    assert (by_token["status_code"], by_token["error"]) == (403, "mtls_required")
    await db(enrol)(world, world.device, terminal_cert)
    accepted = await register_with(verified(terminal_cert), {"tsn": world.device.tsn})
    assert accepted["status"] == "ok"


@pytest.mark.django_db(transaction=True)
@pytest.mark.cloud_connector_on
@pytest.mark.usefixtures("fresh_state")
async def test_a_forged_verification_header_from_outside_forwarded_allow_ips_registers_nothing(world, terminal_cert):
    await db(enrol)(world, world.device, terminal_cert)
    app = ProxyTrust(APP, trusted=["127.0.0.1"])
    comm = WebsocketCommunicator(app, LISTENER, headers=[(b"host", HOST.encode()), *verified(terminal_cert)])
    comm.scope["client"] = ["203.0.113.5", 40000]
    comm.scope["server"] = ["127.0.0.1", 80]
    await opened(comm)
    await comm.send_to(text_data=request({"tsn": world.device.tsn}))
    resource = json.loads(await comm.receive_from(5))["response"]["resource"]
    await expect_close(comm, 1000)
    assert (resource["status_code"], resource["error"]) == (400, "invalid_request")
    assert not await db(DeviceSession.objects.exists)()


# --- the REST API -------------------------------------------------------------------------------


def certificates_url(device) -> str:
    return f"{API}/devices/{device.pk}/certificates/"


@pytest.mark.parametrize(
    ("persona", "expected"),
    [("merchant_admin", 201), ("ma_admin", 201), ("staff", 201), ("merchant_viewer", 403), ("ma_viewer", 403)],
)
def test_the_api_enrols_for_administrators_only(world, terminal_cert, persona, expected):
    client = session_client(getattr(world, persona))
    response = client.post(certificates_url(world.device), {"pem": terminal_cert.pem}, format="json")
    assert response.status_code == expected, response.content
    if expected == 201:
        body = response.json()
        assert body["fingerprint_sha256"] == terminal_cert.fingerprint
        assert body["subject"] == "CN=A1000001,O=Acme Terminals"
        assert body["not_after"].endswith("Z") and set(body) >= {"id", "fingerprint_sha256", "subject", "not_after"}
    else:
        assert not DeviceCertificate.objects.exists()


def test_the_provisioning_client_enrols_lists_and_removes(world, terminal_cert):
    client = bearer_client(world.provisioning_token)
    created = client.post(certificates_url(world.device), {"pem": terminal_cert.pem}, format="json").json()
    listed = client.get(certificates_url(world.device)).json()
    assert [entry["id"] for entry in listed["results"]] == [created["id"]]
    assert client.delete(f"{certificates_url(world.device)}{created['id']}/").status_code == 204
    assert client.get(certificates_url(world.device)).json()["results"] == []
    assert client.delete(f"{certificates_url(world.device)}{created['id']}/").status_code == 404


def test_outsiders_get_404_and_a_pos_token_is_refused(world, terminal_cert):
    enrolled = enrol(world, world.device, terminal_cert)
    mallory = session_client(world.other_merchant_admin)
    assert mallory.get(certificates_url(world.device)).status_code == 404
    assert mallory.post(certificates_url(world.device), {"pem": terminal_cert.pem}, format="json").status_code == 404
    assert mallory.delete(f"{certificates_url(world.device)}{enrolled.pk}/").status_code == 404
    # A certificate id under another device of the caller's scope is not found either.
    alice = session_client(world.merchant_admin)
    sibling = world.device.__class__.objects.create(
        tenant=world.tenant, merchant=world.merchant, store=world.store, make="Ingenico", model="X", serial="S2"
    )
    assert alice.delete(f"{certificates_url(sibling)}{enrolled.pk}/").status_code == 404
    assert bearer_client(world.pos_token).get(certificates_url(world.device)).status_code == 403
    assert DeviceCertificate.objects.count() == 1


def test_a_bad_pem_is_a_400_on_the_field(world, terminal_cert):
    client = session_client(world.merchant_admin)
    for body in ({"pem": terminal_cert.key_pem}, {"pem": "nonsense"}, {"pem": 5}, {}):
        response = client.post(certificates_url(world.device), body, format="json")
        assert response.status_code == 400, response.content
        assert "pem" in response.json()


def test_require_mtls_is_writable_on_the_device(world):
    client = session_client(world.merchant_admin)
    url = f"{API}/devices/{world.device.pk}/"
    assert client.get(url).json()["require_mtls"] is False
    session = live_session(world.device, "by-credential")
    response = client.patch(url, {"require_mtls": True, "enabled": True}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["require_mtls"] is True
    world.device.refresh_from_db()
    session.refresh_from_db()
    assert world.device.require_mtls and session.state == DeviceSession.State.ENDED
    viewer = session_client(world.merchant_viewer)
    assert viewer.patch(url, {"require_mtls": False}, format="json").status_code == 403
    assert client.patch(url, {"require_mtls": "yes"}, format="json").status_code == 400
    world.device.refresh_from_db()
    assert world.device.require_mtls


# --- the portal -------------------------------------------------------------------------------


def portal_as(client, user):
    client.force_login(user)
    return client


def device_page(client, device) -> str:
    response = client.get(reverse("portal:device_detail", args=[device.pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_the_device_page_lists_certificates_and_shows_the_mtls_block_without_a_secret(client, world, terminal_cert):
    enrol(world, world.device, terminal_cert)
    page = device_page(portal_as(client, world.merchant_admin), world.device)
    assert "CN=A1000001,O=Acme Terminals" in page and terminal_cert.fingerprint[:16] in page
    assert reverse("portal:certificate_enrol", args=[world.device.pk]) in page
    assert reverse("portal:require_mtls", args=[world.device.pk, "on"]) in page
    block = page[page.index('id="mtls-config-block"') :]
    block = block[: block.index("</pre>")]
    assert "ep_register_url: ws://testserver/cloud-connector/v1/device-listener" in block
    assert "ssl_client_crt: " in block and "ssl_client_key: " in block
    assert "custom_registration_data" not in block and "client_secret" not in block


def test_viewers_see_the_certificates_but_no_action(client, world, terminal_cert):
    enrolled = enrol(world, world.device, terminal_cert)
    viewer = portal_as(client, world.merchant_viewer)
    page = device_page(viewer, world.device)
    assert "CN=A1000001,O=Acme Terminals" in page
    assert "Enrol a certificate" not in page and "Remove" not in page and "Require a certificate" not in page
    for url in (
        reverse("portal:certificate_enrol", args=[world.device.pk]),
        reverse("portal:certificate_remove", args=[world.device.pk, enrolled.pk]),
        reverse("portal:require_mtls", args=[world.device.pk, "on"]),
    ):
        assert viewer.get(url).status_code == 403
        assert viewer.post(url, {"pem": terminal_cert.pem}).status_code == 403
    assert DeviceCertificate.objects.count() == 1


def test_a_merchant_admin_enrols_removes_and_requires_in_the_portal(client, world, ca, terminal_cert):
    alice = portal_as(client, world.merchant_admin)
    enrol_url = reverse("portal:certificate_enrol", args=[world.device.pk])
    refused = alice.post(enrol_url, {"pem": terminal_cert.key_pem})
    assert refused.status_code == 200 and "private key" in refused.content.decode()
    assert alice.post(enrol_url, {"pem": terminal_cert.pem}).status_code == 302
    enrolled = DeviceCertificate.objects.get(device=world.device)
    assert alice.post(reverse("portal:require_mtls", args=[world.device.pk, "on"])).status_code == 302
    world.device.refresh_from_db()
    assert world.device.require_mtls
    remove_url = reverse("portal:certificate_remove", args=[world.device.pk, enrolled.pk])
    assert "Remove this certificate" in alice.get(remove_url).content.decode()
    assert alice.post(remove_url).status_code == 302
    assert not DeviceCertificate.objects.exists()
    assert alice.get(reverse("portal:require_mtls", args=[world.device.pk, "sideways"])).status_code == 404


def test_an_outsider_gets_404_for_the_certificate_pages(client, world, terminal_cert):
    enrolled = enrol(world, world.device, terminal_cert)
    mallory = portal_as(client, world.other_merchant_admin)
    assert mallory.get(reverse("portal:certificate_enrol", args=[world.device.pk])).status_code == 404
    assert mallory.post(reverse("portal:certificate_remove", args=[world.device.pk, enrolled.pk])).status_code == 404
    assert mallory.post(reverse("portal:require_mtls", args=[world.device.pk, "on"])).status_code == 404
    assert DeviceCertificate.objects.count() == 1


def test_removing_twice_is_a_conflict(world, terminal_cert):
    enrolled = enrol(world, world.device, terminal_cert)
    actor = principal_for_user(world.merchant_admin)
    certificates.device_certificate_remove(certificate=enrolled, actor=actor)
    with pytest.raises(Conflict):
        certificates.device_certificate_remove(certificate=enrolled, actor=actor)


# --- the admin and the CSV import --------------------------------------------------------------


def admin_change(client, device, **extra) -> object:
    data = {
        "merchant": device.merchant_id,
        "store": device.store_id,
        "make": device.make,
        "model": device.model,
        "serial": device.serial,
        "enabled": "on",
        "provisioned": "on",
        "certificates-TOTAL_FORMS": "0",
        "certificates-INITIAL_FORMS": "0",
        **extra,
    }
    return client.post(reverse("admin:connector_device_change", args=[device.pk]), data)


def test_the_admin_enrols_removes_and_requires_through_the_services(client, world, terminal_cert):
    staff = portal_as(client, world.staff)
    response = admin_change(
        staff,
        world.device,
        require_mtls="on",
        **{"certificates-TOTAL_FORMS": "1", "certificates-0-pem": terminal_cert.pem, "certificates-0-device": ""},
    )
    assert response.status_code == 302, response.content.decode()[-3000:]
    enrolled = DeviceCertificate.objects.get(device=world.device)
    world.device.refresh_from_db()
    assert enrolled.fingerprint_sha256 == terminal_cert.fingerprint and world.device.require_mtls
    assert {"device.certificate_enrol", "device.require_mtls"} <= set(
        AuditEntry.objects.values_list("action", flat=True)
    )
    page = staff.get(reverse("admin:connector_device_change", args=[world.device.pk])).content.decode()
    assert terminal_cert.fingerprint in page
    removed = admin_change(
        staff,
        world.device,
        require_mtls="on",
        **{
            "certificates-TOTAL_FORMS": "1",
            "certificates-INITIAL_FORMS": "1",
            "certificates-0-id": str(enrolled.pk),
            "certificates-0-device": str(world.device.pk),
            "certificates-0-DELETE": "on",
        },
    )
    assert removed.status_code == 302, removed.content.decode()[-3000:]
    assert not DeviceCertificate.objects.exists()
    assert AuditEntry.objects.filter(action="device.certificate_remove").count() == 1


def test_the_admin_shows_a_bad_pem_on_its_row(client, world, terminal_cert):
    response = admin_change(
        portal_as(client, world.staff),
        world.device,
        **{"certificates-TOTAL_FORMS": "1", "certificates-0-pem": terminal_cert.key_pem},
    )
    assert response.status_code == 200
    assert "private key" in response.content.decode()
    assert not DeviceCertificate.objects.exists()


CSV_HEADER = "make,model,serial,merchant,store,certificate\n"


def csv_row(serial: str, pem: str = "") -> str:
    quoted = '"' + pem.replace('"', '""') + '"' if pem else ""
    return f"Ingenico,Lane3000,{serial},Corner Shop,High Street,{quoted}\n"


def import_csv(world, text: str):
    from connector.csv_import import devices_import_csv

    return devices_import_csv(tenant=world.tenant, file=text.encode(), actor=principal_for_user(world.staff))


def test_the_csv_import_enrols_an_optional_certificate_per_device(world, ca, terminal_cert):
    result = import_csv(world, CSV_HEADER + csv_row("C1", terminal_cert.pem) + csv_row("C2"))
    assert result.ok, result.errors
    assert DeviceCertificate.objects.get().device.serial == "C1"


def test_the_csv_import_refuses_bad_and_repeated_certificates_and_imports_nothing(world, ca, terminal_cert):
    enrol(world, world.device, terminal_cert)
    fresh = ca.issue("fresh")
    text = (
        CSV_HEADER
        + csv_row("C1", terminal_cert.pem)  # enrolled already (for another device)
        + csv_row("C2", fresh.key_pem)
        + csv_row("C3", fresh.pem)
        + csv_row("C4", fresh.pem)
    )
    result = import_csv(world, text)
    reasons = [str(error) for error in result.errors]
    assert not result.ok and len(reasons) == 3, reasons
    assert "This certificate cannot be used." in reasons[0]
    assert "private key" in reasons[1]
    assert "the same as on line" in reasons[2]
    assert DeviceCertificate.objects.count() == 1
    assert not world.device.__class__.objects.filter(serial__startswith="C").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cert", "t.pem"], "give --cert and --key together"),
        (["--key", "t.key"], "give --cert and --key together"),
        (["--cert", "t.pem", "--key", "t.key", "--url", "ws://127.0.0.1:8000"], "needs a TLS URL"),
        (["--cert", "/nonexistent.pem", "--key", "/nonexistent.key", "--url", "wss://x"], "cannot use the client"),
    ],
)
def test_simulate_device_refuses_bad_certificate_arguments_with_a_clear_message(args, message):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match=message):
        call_command("simulate_device", "--tsn", "1", *args)


@pytest.mark.django_db(transaction=True)
@pytest.mark.cloud_connector_on
@pytest.mark.usefixtures("fresh_state")
async def test_a_certificate_another_tenant_enrolled_on_a_twin_never_registers_the_terminal_as_the_twin(world, ca):
    """A certificate is no secret: another tenant creates a twin of this terminal (same make,
    model and serial) and enrols the terminal's certificate on it. The terminal registering
    with its certificate and its own tenant's credentials must not become the twin."""
    own = ca.issue(world.device.serial)

    def twin_with_the_certificate():
        twin = DeviceFactory(
            store=world.far_store, make=world.device.make, model=world.device.model, serial=world.device.serial
        )
        switch_cloud_connector_on(world.far_merchant)
        certificates.device_certificate_enrol(device=twin, pem=own.pem, actor=principal_for_user(world.far_ma_admin))
        return twin

    twin = await db(twin_with_the_certificate)()
    answer = await register_with(
        verified(own), {"tsn": world.device.tsn, "custom_registration_data": world.pos_credentials}
    )
    assert (answer["status_code"], answer["error"]) == (401, "invalid_client")
    assert not await db(DeviceSession.objects.filter(device=twin).exists)()
    # With its credentials alone, the terminal registers as itself.
    alone = await register(world.device.tsn, world.pos_credentials)
    session = await db(DeviceSession.objects.get)(pk=alone["session_id"])
    assert session.device_id == world.device.pk and session.registered_fingerprint == ""


@pytest.mark.django_db(transaction=True)
@pytest.mark.cloud_connector_on
@pytest.mark.usefixtures("fresh_state")
async def test_credentials_with_the_devices_own_certificate_bind_the_session_to_it(world, terminal_cert):
    await db(enrol)(world, world.device, terminal_cert)
    answer = await register_with(
        verified(terminal_cert), {"tsn": world.device.tsn, "custom_registration_data": world.pos_credentials}
    )
    session = await db(DeviceSession.objects.get)(pk=answer["session_id"])
    assert session.device_id == world.device.pk and session.registered_fingerprint == terminal_cert.fingerprint
