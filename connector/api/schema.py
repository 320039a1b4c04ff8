"""OpenAPI pieces: the bearer scheme, the error shapes, and the error answers of each kind
of operation, so that every endpoint documents what it may refuse and how."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from rest_framework import serializers


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.api_auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An access token with scope `provisioning` from `POST /oauth2/v1/{domain}/token` "
            "(client credentials grant).",
        }


class ErrorDetailSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="What went wrong, for a person to read.")


class FieldErrorsSerializer(serializers.Serializer):
    """Stands for `{"field": ["message", ...]}`; its schema comes from the extension below."""


class FieldErrorsScheme(OpenApiSerializerExtension):
    target_class = FieldErrorsSerializer

    def map_serializer(self, auto_schema, direction):
        return {
            "type": "object",
            "description": "Messages per field; errors that concern no single field are under `non_field_errors`.",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        }

    def get_name(self, auto_schema, direction):
        return "FieldErrors"


def _detail(description: str, example: str) -> OpenApiResponse:
    return OpenApiResponse(
        response=ErrorDetailSerializer,
        description=description,
        examples=[OpenApiExample("Error", value={"detail": example})],
    )


ERRORS = {
    400: OpenApiResponse(
        response=FieldErrorsSerializer,
        description="Invalid input: messages per field.",
        examples=[
            OpenApiExample(
                "Invalid input",
                value={"name": ["Ensure this field has no more than 100 characters."]},
            )
        ],
    ),
    401: _detail("Not authenticated, or the token is invalid, expired or revoked.", "The access token is invalid."),
    403: _detail(
        "Authenticated, but not allowed: a token without the provisioning scope, a read-only role, "
        "a write above the caller's level, or a missing CSRF token on a session request.",
        "You are not allowed to do that.",
    ),
    404: _detail(
        "No such object, or one outside the caller's scope (the same answer).",
        "No Merchant matches the given query.",
    ),
    409: _detail("The request conflicts with the current state.", "The store still has devices."),
    429: _detail(
        "Too many requests from this address or with this credential; the Retry-After header says "
        "in how many seconds to try again.",
        "Request was throttled. Expected available in 12 seconds.",
    ),
}


def errors(*codes: int) -> dict[int, OpenApiResponse]:
    """The documented error answers; 401, 403 and 429 apply to every operation."""
    return {code: ERRORS[code] for code in sorted({401, 403, 429, *codes})}
