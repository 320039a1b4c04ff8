"""accounts.prepared: a read compiled once per shape answers what the ORM answers, and a
shape it cannot prepare safely runs through the ORM."""

from __future__ import annotations

import pytest

from accounts.models import Application
from accounts.prepared import Prepared
from accounts.scope import application_row, application_row_paths
from tests.factories import make_cloud_application, make_pos

pytestmark = pytest.mark.django_db


def by_client_id(_shape, *, client_id):
    return Application.objects.filter(client_id=client_id).values("client_secret", **application_row_paths())


def test_a_prepared_read_answers_what_the_orm_answers():
    pos, app = make_pos(), make_cloud_application()
    prepared = Prepared(by_client_id, required=["client_id"])
    for credential in (pos, app, pos):
        client_id = credential.application.client_id
        assert prepared.rows("client", client_id=client_id) == list(by_client_id("client", client_id=client_id))
    assert prepared.rows("client", client_id="nobody") == []
    assert application_row(prepared.rows("client", client_id=app.application.client_id)[0])["app_roles"] == (app.roles)


def test_it_compiles_a_shape_once_and_sends_the_same_sql_again(django_assert_num_queries):
    pos, other = make_pos(), make_pos()
    prepared = Prepared(by_client_id, required=["client_id"])
    prepared.rows("client", client_id=pos.application.client_id)
    (compiled,) = prepared._shapes.values()
    assert compiled not in ("orm", "empty")
    with django_assert_num_queries(1):
        (row,) = prepared.rows("client", client_id=other.application.client_id)
    assert application_row(row)["id"] == other.application_id
    assert prepared._shapes == {next(iter(prepared._shapes)): compiled}


def test_lists_of_different_lengths_are_different_shapes():
    pos, other = make_pos(), make_pos()
    ids = [pos.application.client_id, other.application.client_id]

    def among(_shape, *, client_ids):
        return Application.objects.filter(client_id__in=client_ids).order_by("pk").values("client_id")

    prepared = Prepared(among, required=["client_ids"])
    assert [row["client_id"] for row in prepared.rows("among", client_ids=ids[:1])] == ids[:1]
    assert [row["client_id"] for row in prepared.rows("among", client_ids=ids)] == ids
    assert prepared.rows("among", client_ids=[]) == []


def test_a_value_the_orm_changes_is_never_prepared():
    pos = make_pos()

    def containing(_shape, *, part):
        return Application.objects.filter(client_id__contains=part).values("client_id")

    prepared = Prepared(containing, required=["part"])
    part = pos.application.client_id[3:12]
    assert prepared.rows("contains", part=part) == [{"client_id": pos.application.client_id}]
    assert list(prepared._shapes.values()) == ["orm"]
    assert prepared.rows("contains", part="no such part") == []


def test_a_required_value_missing_from_the_parameters_is_never_prepared():
    pos = make_pos()

    def ignoring(_shape, *, client_id):
        return Application.objects.filter(pk=pos.application_id).values("client_id")

    prepared = Prepared(ignoring, required=["client_id"])
    assert prepared.rows("ignoring", client_id="whatever") == [{"client_id": pos.application.client_id}]
    assert list(prepared._shapes.values()) == ["orm"]


def test_a_boolean_value_is_refused_it_belongs_to_the_shape():
    prepared = Prepared(by_client_id)
    with pytest.raises(TypeError):
        prepared.rows("client", client_id=True)
