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


# --- insert -----------------------------------------------------------------------------------

INSERTED_MODELS = (
    "accounts.AuditEntry",
    "connector.DeviceConnection",
    "connector.DeviceSession",
    "connector.Event",
    "connector.SessionSocket",
)


def test_insert_is_used_only_for_models_no_save_signal_listens_to():
    # insert() sends no pre_save/post_save: a receiver added for these models would be skipped.
    from django.apps import apps
    from django.db.models.signals import post_save, pre_save

    for label in INSERTED_MODELS:
        model = apps.get_model(label)
        assert not pre_save.has_listeners(model) and not post_save.has_listeners(model), label


def test_insert_writes_the_row_the_orm_would_and_numbers_it():
    from accounts.audit import audit_record
    from accounts.models import AuditEntry
    from accounts.scope import SYSTEM

    pos = make_pos()
    entry = audit_record(actor=SYSTEM, action="x.test", obj=pos, tenant_id=None, data={"a": [1, "é"]})
    assert entry.pk is not None and not entry._state.adding
    stored = AuditEntry.objects.get(pk=entry.pk)
    assert (stored.action, stored.object_type, stored.object_id, stored.data) == (
        "x.test",
        "pos",
        str(pos.pk),
        {"a": [1, "é"]},
    )
    assert stored.created_at is not None and stored.created_at == entry.created_at  # auto_now_add
    second = audit_record(actor=SYSTEM, action="x.test", obj=pos, tenant_id=None)
    assert second.pk > entry.pk and AuditEntry.objects.get(pk=second.pk).data == {}


def test_insert_with_a_given_key_and_a_json_field_and_a_duplicate_raises_integrity_error():
    from django.db import IntegrityError, transaction
    from django.utils import timezone

    from accounts.prepared import insert
    from connector.models import DeviceSession
    from tests.factories import DeviceFactory

    device = DeviceFactory()
    now = timezone.now()
    session = insert(DeviceSession(id="s" * 32, device=device, endpoints=["/", "/x"], jwt_expires_at=now))
    stored = DeviceSession.objects.get(pk="s" * 32)
    assert (stored.device_id, stored.endpoints, stored.state, stored.jwt_expires_at) == (
        device.pk, ["/", "/x"], DeviceSession.State.REGISTERED, now,
    )  # fmt: skip
    assert session.created_at == stored.created_at
    with pytest.raises(IntegrityError), transaction.atomic():
        insert(DeviceSession(id="s" * 32, device=device, endpoints=["/"], jwt_expires_at=now))


def test_a_value_the_backend_wraps_in_an_integer_type_is_still_prepared_and_answers_right():
    # PostgreSQL's backend hands a bigint column's value over as psycopg's Int8 (an int
    # subclass): the marker must still be found, and the real value sent wrapped alike.
    from connector.models import SessionSocket

    def sockets_of(_shape, *, application_id):
        return SessionSocket.objects.filter(application_id=application_id).values("pk")

    prepared = Prepared(sockets_of, required=["application_id"])
    pos = make_pos()
    assert prepared.rows(None, application_id=pos.application.pk) == []
    (compiled,) = prepared._shapes.values()
    assert not isinstance(compiled, str), "fell back to the ORM"
    for _index, _name, wrapper in compiled.slots:
        assert wrapper is None or (issubclass(wrapper, int) and wrapper(5) == 5)


def test_update_changes_only_the_named_row_and_fields():
    from django.utils import timezone

    from accounts.prepared import update
    from connector.models import DeviceSession
    from tests.factories import DeviceFactory

    device, other = DeviceFactory(), DeviceFactory()
    now = timezone.now()
    for pk, dev in (("a" * 32, device), ("b" * 32, other)):
        DeviceSession.objects.create(id=pk, device=dev, endpoints=["/"], jwt_expires_at=now)
    pos = make_pos()
    assert update(DeviceSession, "a" * 32, claimed_by_id=pos.application.pk, claimed_at=now, endpoints=["/", "/y"]) == 1
    changed, untouched = DeviceSession.objects.get(pk="a" * 32), DeviceSession.objects.get(pk="b" * 32)
    assert (changed.claimed_by_id, changed.claimed_at, changed.endpoints) == (pos.application.pk, now, ["/", "/y"])
    assert (untouched.claimed_by_id, untouched.endpoints) == (None, ["/"])
    assert update(DeviceSession, "nope", claimed_at=now) == 0


def test_on_postgresql_the_constants_are_written_into_the_sql_once_and_only_the_values_bound():
    # A device lookup binds a dozen constants (a state, the service code...) for a few values:
    # on PostgreSQL (client-side binding) they are inlined at compile time, with the answers unchanged.
    from django.db import connection

    from accounts.scope import Level
    from connector import selectors
    from tests.factories import DeviceFactory

    device = DeviceFactory()
    ids = {"tenant_id": None, "merchant_aggregator_id": None, "merchant_id": device.merchant_id, "store_id": None}
    prepared = Prepared(selectors._device_candidates_query, required=["serials"])
    rows = prepared.rows(Level.MERCHANT, serials=[device.serial.lower()], **ids)
    orm = list(selectors._device_candidates_query(Level.MERCHANT, serials=[device.serial.lower()], **ids))
    assert rows == orm and rows[0]["id"] == device.pk
    (compiled,) = prepared._shapes.values()
    assert not isinstance(compiled, str), "fell back to the ORM"
    if connection.vendor == "postgresql":
        assert len(compiled.params) == len(compiled.slots) == 2  # the merchant and the serial
        assert "'cloud-connector'" in compiled.sql
    assert prepared.rows(Level.MERCHANT, serials=["nothing-like-it"], **ids) == []
