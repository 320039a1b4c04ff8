"""A device's client certificates in the REST API (v1.1 §15):
`GET/POST devices/{id}/certificates/`, `DELETE devices/{id}/certificates/{certificate_id}/`.

The device is found through the caller's scope first (404 outside it, as its detail); the
certificate only among that device's. Writes are connector.certificates' services: the
write table's `device_certificate` kind says who may (merchant administrators and above).
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.permissions import Kind
from connector import certificates
from connector.api.schema import errors
from connector.api.serializers import TimestampField

CERTIFICATE_ACTIONS = ("certificates", "certificates_enrol", "certificate")


class DeviceCertificateSerializer(serializers.Serializer):
    """An enrolled certificate: what identifies it, never its private key (the API never sees one)."""

    id = serializers.IntegerField(read_only=True)
    fingerprint_sha256 = serializers.CharField(read_only=True, help_text="SHA-256 of the DER certificate, hex.")
    subject = serializers.CharField(read_only=True, help_text="The certificate's subject (RFC 4514).")
    not_after = TimestampField(allow_null=False, help_text="When the certificate expires.")
    created_at = TimestampField(allow_null=False, help_text="When it was enrolled.")


class CertificateEnrolSerializer(serializers.Serializer):
    pem = serializers.CharField(
        trim_whitespace=False,
        max_length=certificates.PEM_LIMIT,
        help_text="One PEM certificate (-----BEGIN CERTIFICATE-----), the device's own: not a chain, "
        "not a CA's, not expired, and never a private key.",
    )


class CertificatesMixin:
    """The `certificates` actions of the device resource."""

    def write_kind(self) -> Kind:
        if self.action in CERTIFICATE_ACTIONS:
            return Kind.DEVICE_CERTIFICATE
        return super().write_kind()

    @extend_schema(
        summary="List a device's certificates",
        description="The client certificates enrolled for the device, oldest first. 404 for a device "
        "outside the caller's scope.",
        responses={200: DeviceCertificateSerializer(many=True), **errors(400, 404)},
    )
    @action(detail=True, methods=["get"], filter_backends=[], serializer_class=DeviceCertificateSerializer)
    def certificates(self, request: Request, pk: int) -> Response:
        page = self.paginate_queryset(certificates.device_certificates(device=self.get_object()))
        return self.get_paginated_response(DeviceCertificateSerializer(page, many=True).data)

    @extend_schema(
        summary="Enrol a certificate for a device",
        description="From now on a registration presenting this certificate, verified by the TLS proxy "
        "against the operator's device CA, registers the device without `custom_registration_data` "
        "(v1.1 §15). Refused with 400 on `pem`: not one PEM certificate, a private key, a chain, a CA's "
        "certificate, an expired one, or one already enrolled.",
        request=CertificateEnrolSerializer,
        responses={201: DeviceCertificateSerializer, **errors(400, 404)},
    )
    @certificates.mapping.post
    def certificates_enrol(self, request: Request, pk: int) -> Response:
        device = self.get_object()
        body = CertificateEnrolSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        enrolled = certificates.device_certificate_enrol(
            device=device, pem=body.validated_data["pem"], actor=self.principal
        )
        return Response(DeviceCertificateSerializer(enrolled).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Remove a device's certificate",
        description="The certificate registers nothing from now on; the device's live sockets that "
        "registered with it close within a second (4410). 409 when it was removed meanwhile.",
        request=None,
        responses={204: None, **errors(404, 409)},
    )
    @action(detail=True, methods=["delete"], url_path="certificates/<int:certificate_id>", filter_backends=[])
    def certificate(self, request: Request, pk: int, certificate_id: int) -> Response:
        device = self.get_object()
        found = certificates.device_certificates(device=device).filter(pk=certificate_id).first()
        if found is None:
            raise NotFound("No such certificate for this device.")
        certificates.device_certificate_remove(certificate=found, actor=self.principal)
        return Response(status=status.HTTP_204_NO_CONTENT)
