"""The one translation table from domain and database errors to REST answers."""

from __future__ import annotations

import pytest
from django.db import DataError, IntegrityError
from django.db.models import ProtectedError
from rest_framework import exceptions

from accounts import errors as domain
from connector.api.errors import exception_handler, field_errors


def answer(exc: Exception) -> tuple[int, object]:
    response = exception_handler(exc, {})
    assert response is not None, exc
    return response.status_code, response.data


@pytest.mark.parametrize(
    ("exc", "status", "body"),
    [
        (domain.NotFound("No such device."), 404, {"detail": "No such device."}),
        (domain.NotAllowed("Your role may not change this."), 403, {"detail": "Your role may not change this."}),
        (domain.Conflict("The store still has devices."), 409, {"detail": "The store still has devices."}),
        (domain.Invalid({"serial": ["Taken."]}), 400, {"serial": ["Taken."]}),
        (domain.Invalid("Something is off."), 400, {"non_field_errors": ["Something is off."]}),
    ],
)
def test_domain_errors_become_their_http_answers(exc, status, body):
    assert answer(exc) == (status, body)


def test_a_protected_object_is_a_conflict():
    status, body = answer(ProtectedError("protected", set()))
    assert status == 409
    assert "depend" in body["detail"]


def test_an_integrity_error_is_a_conflict_that_reveals_no_sql():
    status, body = answer(IntegrityError('duplicate key value violates unique constraint "x" DETAIL: Key (serial)'))
    assert status == 409
    assert "DETAIL" not in body["detail"] and "constraint" not in body["detail"]


def test_a_value_the_database_cannot_store_is_a_400():
    status, body = answer(DataError("integer out of range"))
    assert status == 400
    assert set(body) == {"non_field_errors"}


def test_anything_else_is_left_to_drf_and_then_to_a_500():
    assert exception_handler(RuntimeError("bug"), {}) is None
    assert answer(exceptions.NotAuthenticated()) == (401, {"detail": "Authentication credentials were not provided."})


@pytest.mark.parametrize(
    ("data", "flat"),
    [
        ({"services": {0: ["Bad."]}}, {"services": ["item 0: Bad."]}),
        ({"detail": "JSON parse error"}, {"non_field_errors": ["JSON parse error"]}),
        (["Expected a dictionary."], {"non_field_errors": ["Expected a dictionary."]}),
        ({"a": {"b": ["x"], "c": {"d": ["y"]}}}, {"a": ["b: x", "c[d]: y"]}),
        ({"list": [{"x": ["bad"]}, {}]}, {"list": ["item 0[x]: bad"]}),
    ],
)
def test_every_400_is_flattened_to_messages_per_field(data, flat):
    assert field_errors(data) == flat
