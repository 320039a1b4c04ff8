"""One translation table from domain errors to REST answers.

The contract's shapes: a 400 is always `{"field": ["message", ...]}` (errors that belong to
no field under `non_field_errors`); every other error is `{"detail": "message"}`.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DataError, IntegrityError
from django.db.models import ProtectedError, RestrictedError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from accounts import errors as domain

logger = logging.getLogger(__name__)

NON_FIELD = api_settings.NON_FIELD_ERRORS_KEY

_DOMAIN_STATUS = (
    (domain.NotFound, status.HTTP_404_NOT_FOUND),
    (domain.NotAllowed, status.HTTP_403_FORBIDDEN),
    (domain.Conflict, status.HTTP_409_CONFLICT),
)


def exception_handler(exc: Exception, context: dict) -> Response | None:
    response = _domain_response(exc) or _database_response(exc) or drf_exception_handler(exc, context)
    if response is not None and response.status_code == status.HTTP_400_BAD_REQUEST:
        response.data = field_errors(response.data)
    return response


def _domain_response(exc: Exception) -> Response | None:
    if isinstance(exc, domain.Invalid):
        return Response(field_errors(exc.errors), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, domain.RateLimited):
        return Response(
            {"detail": exc.message},
            status=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(exc.retry_after)},
        )
    for error_class, code in _DOMAIN_STATUS:
        if isinstance(exc, error_class):
            return Response({"detail": exc.message}, status=code)
    return None


def _database_response(exc: Exception) -> Response | None:
    # The services check what they can before writing; these are the races and the
    # rules only the database knows. They are the client's conflict, not a crash.
    if isinstance(exc, (ProtectedError, RestrictedError)):
        set_rollback()
        return Response(
            {"detail": "Other objects still depend on this one; remove them first."},
            status=status.HTTP_409_CONFLICT,
        )
    if isinstance(exc, IntegrityError):
        set_rollback()
        logger.info("REST API write refused by the database: %s", exc)
        return Response(
            {"detail": "The change conflicts with the current state (it may have been made concurrently)."},
            status=status.HTTP_409_CONFLICT,
        )
    if isinstance(exc, DataError):
        set_rollback()
        logger.info("REST API input refused by the database: %s", exc)
        return Response({NON_FIELD: ["A value is out of range or not storable."]}, status=status.HTTP_400_BAD_REQUEST)
    return None


def field_errors(data: Any) -> dict[str, list[str]]:
    """Flatten any DRF error structure into `{"field": ["message", ...]}`; nested errors
    (list items, nested objects) keep their path in the message."""
    if isinstance(data, exceptions.ErrorDetail | str):
        return {NON_FIELD: [str(data)]}
    if isinstance(data, list):
        return {NON_FIELD: _messages(data)}
    if isinstance(data, dict):
        if set(data) == {"detail"}:
            return {NON_FIELD: _messages(data["detail"])}
        return {str(field): _messages(value) for field, value in data.items()}
    return {NON_FIELD: [str(data)]}


def _messages(value: Any, path: str = "") -> list[str]:
    prefix = f"{path}: " if path else ""
    if isinstance(value, dict):
        return [msg for key, item in value.items() for msg in _messages(item, _join(path, key))]
    if isinstance(value, list | tuple):
        if all(not isinstance(item, dict | list | tuple) for item in value):
            return [f"{prefix}{item}" for item in value]
        return [msg for index, item in enumerate(value) if item for msg in _messages(item, _join(path, index))]
    return [f"{prefix}{value}"]


def _join(path: str, key: object) -> str:
    return f"{path}[{key}]" if path else (f"item {key}" if isinstance(key, int) else str(key))
