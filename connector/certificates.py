"""Device identity by certificate (v1.1 §15): enrolment, removal and `require_mtls`, and
the fingerprint a TLS proxy vouches for.

A certificate is one terminal's identity: its key stays in the terminal's secure element,
so unlike a POS credential shared by a store it cannot register as another terminal. The
TLS proxy (nginx, docs/deploy.md) verifies the chain, expiry and revocation against the
operator's device CA; this module only says which device a verified certificate is, by
its SHA-256 fingerprint.

nginx offers only a SHA-1 `$ssl_client_fingerprint`, so it forwards the certificate
itself (`$ssl_client_escaped_cert`) and the fingerprint is computed here. The proxy's
headers are stripped at the ASGI entry from any peer outside `FORWARDED_ALLOW_IPS`
(portal.proxies), so what reaches `presented_fingerprint` came from the proxy.

Writes follow connector.services: one transaction, audited, the write table's
`DEVICE_CERTIFICATE` kind; the sockets they take away close 4410 on commit (sessions_end).
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.audit import audit_record
from accounts.errors import Conflict, Invalid
from accounts.permissions import Kind
from accounts.scope import Principal
from accounts.services import require_authority
from connector.models import Device, DeviceCertificate, DeviceSession
from connector.selectors import LIVE

# The headers the proxy sets (docs/nginx/cloud-connector.conf), lower case as ASGI has them.
VERIFY_HEADER = b"x-client-cert-verify"
CERT_HEADER = b"x-client-cert"
PROXY_HEADERS = frozenset({VERIFY_HEADER, CERT_HEADER})

PEM_LIMIT = 16_384
MAX_PER_DEVICE = 10
_BEGIN = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class ParsedCertificate:
    fingerprint_sha256: str
    subject: str
    not_after: datetime
    pem: str


def _refused(message: str) -> Invalid:
    return Invalid({"pem": [message]})


def certificate_parse(pem: object, *, now: datetime | None = None) -> ParsedCertificate:
    """One PEM certificate, still valid, that is not a CA's: its fingerprint, subject and
    expiry, and the PEM as `cryptography` writes it back. Anything else is refused with a
    message for the `pem` field (a key pasted by mistake is named as such, so that the
    person knows to keep it on the terminal)."""
    if not isinstance(pem, str) or not pem.strip():
        raise _refused("Paste one PEM certificate (-----BEGIN CERTIFICATE----- ...).")
    if len(pem) > PEM_LIMIT:
        raise _refused(f"A certificate is at most {PEM_LIMIT} characters.")
    if "PRIVATE KEY" in pem:
        raise _refused("This holds a private key: paste the certificate only, the key stays on the terminal.")
    blocks = pem.count(_BEGIN)
    if blocks == 0:
        raise _refused("This is not a PEM certificate (-----BEGIN CERTIFICATE----- ...).")
    if blocks > 1:
        raise _refused("Paste one certificate, the device's own, not a chain.")
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("utf-8", "replace"))
    except ValueError:
        raise _refused("This certificate cannot be read.") from None
    now = now or timezone.now()
    if certificate.not_valid_after_utc <= now:
        raise _refused(f"This certificate expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC.")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    except ValueError:
        raise _refused("This certificate's extensions cannot be read.") from None
    if constraints is not None and constraints.ca:
        raise _refused("This is a CA certificate: enrol the device's own certificate.")
    return ParsedCertificate(
        fingerprint_sha256=certificate.fingerprint(hashes.SHA256()).hex(),
        subject=certificate.subject.rfc4514_string()[:500],
        not_after=certificate.not_valid_after_utc,
        pem=certificate.public_bytes(Encoding.PEM).decode("ascii"),
    )


def presented_fingerprint(headers: list[tuple[bytes, bytes]]) -> str:
    """The SHA-256 fingerprint of the client certificate the proxy verified for this
    request, or "" when it verified none. Only the proxy's word counts: `SUCCESS` and the
    certificate, which portal.proxies lets through from `FORWARDED_ALLOW_IPS` only."""
    verify = cert = None
    for name, value in headers:
        if name == VERIFY_HEADER:
            verify = value
        elif name == CERT_HEADER:
            cert = value
    if verify != b"SUCCESS" or not cert:
        return ""
    try:
        der = ssl.PEM_cert_to_DER_cert(unquote(cert.decode("latin-1")))
    except ValueError:
        return ""
    return hashlib.sha256(der).hexdigest()


# --- reads -----------------------------------------------------------------------------------


def device_certificates(*, device: Device) -> QuerySet[DeviceCertificate]:
    """A device's enrolled certificates, oldest first (the device found in scope first)."""
    return DeviceCertificate.objects.filter(device=device).order_by("id")


def certificate_for_fingerprint(fingerprint: str) -> DeviceCertificate | None:
    """The enrolled certificate with this fingerprint and its device (with the merchant,
    for the device's scope), or None."""
    if not fingerprint:
        return None
    return DeviceCertificate.objects.select_related("device__merchant").filter(fingerprint_sha256=fingerprint).first()


def _live_session_ids(device_id: int, **conditions: str) -> list[str]:
    return list(DeviceSession.objects.filter(LIVE, device_id=device_id, **conditions).values_list("pk", flat=True))


# --- writes ----------------------------------------------------------------------------------


@transaction.atomic
def device_certificate_enrol(*, device: Device, pem: object, actor: Principal) -> DeviceCertificate:
    """Enrol a certificate for a device: from now on a registration presenting it, verified
    by the proxy, registers this device without credentials."""
    require_authority(actor, Kind.DEVICE_CERTIFICATE)
    parsed = certificate_parse(pem)
    taken = DeviceCertificate.objects.filter(fingerprint_sha256=parsed.fingerprint_sha256).first()
    if taken is not None:
        # Another device's certificate may lie outside the actor's scope: not named.
        same = taken.device_id == device.pk
        raise _refused(
            "This certificate is already enrolled for this device." if same else "This certificate cannot be used."
        )
    if DeviceCertificate.objects.filter(device=device).count() >= MAX_PER_DEVICE:
        raise _refused(f"A device holds at most {MAX_PER_DEVICE} certificates: remove an old one first.")
    certificate = DeviceCertificate(
        device=device,
        fingerprint_sha256=parsed.fingerprint_sha256,
        subject=parsed.subject,
        not_after=parsed.not_after,
        pem=parsed.pem,
    )
    try:
        with transaction.atomic():
            certificate.save()
    except IntegrityError:
        raise _refused("This certificate cannot be used.") from None  # enrolled meanwhile elsewhere
    audit_record(
        actor=actor,
        action="device.certificate_enrol",
        obj=device,
        tenant_id=device.tenant_id,
        data={"fingerprint_sha256": parsed.fingerprint_sha256, "subject": parsed.subject},
    )
    return certificate


@transaction.atomic
def device_certificate_remove(*, certificate: DeviceCertificate, actor: Principal) -> None:
    """Remove a certificate: it registers nothing from now on, and the live sessions that
    registered with it end (their sockets close 4410 on commit).

    The row is deleted before the sessions are read: a registration with this certificate
    holds a share lock on the row (registrations._credential_still_holds) until it commits, so
    either it finds the row gone, or the delete waits and the read below finds its session."""
    from connector.sessions import sessions_end

    require_authority(actor, Kind.DEVICE_CERTIFICATE)
    device = certificate.device
    fingerprint = certificate.fingerprint_sha256
    deleted, _ = DeviceCertificate.objects.filter(pk=certificate.pk).delete()
    if not deleted:
        raise Conflict("This certificate has already been removed.")
    audit_record(
        actor=actor,
        action="device.certificate_remove",
        obj=device,
        tenant_id=device.tenant_id,
        data={"fingerprint_sha256": fingerprint, "subject": certificate.subject},
    )
    sessions_end(
        session_ids=_live_session_ids(device.pk, registered_fingerprint=fingerprint), reason="certificate_removed"
    )


@transaction.atomic
def device_require_mtls_set(*, device: Device, require: bool, actor: Principal) -> Device:
    """Turn `require_mtls` on or off. On: the device's live sessions registered with a
    credential end (4410 on commit), and credential registrations answer 403 mtls_required.

    The device's live sessions are locked first, then the device row, the order a
    registration takes them (registrations._register): a credential registration racing this
    either commits first, and its session is found and ended below, or reads the flag on."""
    from connector.sessions import sessions_end, sessions_lock

    require_authority(actor, Kind.DEVICE_CERTIFICATE)
    sessions_lock(_live_session_ids(device.pk))
    Device.objects.filter(pk=device.pk).update(require_mtls=require)
    device.require_mtls = require  # a save of this object afterwards must not write it back
    audit_record(
        actor=actor,
        action="device.require_mtls",
        obj=device,
        tenant_id=device.tenant_id,
        data={"require_mtls": require},
    )
    if require:
        sessions_end(session_ids=_live_session_ids(device.pk, registered_fingerprint=""), reason="mtls_required")
    return device
