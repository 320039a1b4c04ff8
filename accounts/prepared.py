"""Queries compiled once and sent again with other values: the relay's busiest reads, and
its inserts (`insert`, at the end).

The ORM builds and compiles a queryset on every call. For the reads done on every socket
and request of the relay (an access token with its credential, a client, a device with
its activation flags) that costs several times what the database spends answering them.
`Prepared` has the ORM compile a `values()` queryset once per shape, with markers standing
for the values, and afterwards sends the same SQL with the markers replaced by the values.
The ORM stays the only author of the SQL, scope filters included.

Safe by construction: a shape is kept only if every marker of a required value shows up
unchanged among the parameters and no marker shows up anywhere else (changed on its way
into a parameter, or written into the SQL text); otherwise that shape runs through the ORM
every time. Markers are values no row holds (ids far below zero, strings with a random
tag), so a marker left in a query could only make it find nothing.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connections
from django.db.models import Model, QuerySet

_TAG = f"\u2063cc-marker-{secrets.token_hex(8)}-"
_serial = itertools.count(1)


def _marker(value: Any) -> Any:
    if isinstance(value, bool):
        raise TypeError("a boolean changes the SQL: put it in the shape and the builder, not in the values")
    if isinstance(value, str):
        return f"{_TAG}{next(_serial)}"
    if isinstance(value, int):
        return -(2**62) - next(_serial)  # primary keys are positive
    raise TypeError(f"no marker for {type(value).__name__}")


def _markers_for(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [_marker(item) for item in value]
    return _marker(value)


@dataclass(frozen=True)
class _Compiled:
    alias: str
    sql: str
    params: tuple
    # (parameter index, flat name of the value, the parameter's type when the backend wraps
    # an integer in one: psycopg's Int8 for a bigint column on PostgreSQL)
    slots: tuple[tuple[int, str, type | None], ...]
    names: tuple[str, ...]
    converters: tuple[tuple[int, tuple[list, Any]], ...]


_EMPTY = "empty"  # the shape matches nothing, whatever the values (EmptyResultSet)
_ORM = "orm"  # the shape could not be prepared safely: the ORM runs it every time


class Prepared:
    """`build(shape, **values)` returns a `values()` queryset; `rows(shape, **values)` runs it.

    Values are strings, integers, None, or lists of strings or integers. `shape` is what
    else the SQL depends on (a principal's level, say); which values are None and how long
    each list is are added to it here. The values named in `required` must each land in a
    parameter of their own, or the shape is not prepared.
    """

    def __init__(self, build: Callable[..., QuerySet], *, required: Iterable[str] = ()) -> None:
        self.build = build
        self.required = frozenset(required)
        self._shapes: dict[Hashable, _Compiled | str] = {}

    def rows(self, shape: Hashable, **values: Any) -> list[dict[str, Any]]:
        key = (shape, *((name, _form(value)) for name, value in sorted(values.items())))
        compiled = self._shapes.get(key)
        if compiled is None:
            compiled = self._shapes[key] = self._compile(shape, values)
        if compiled == _EMPTY:
            return []
        if compiled == _ORM:
            return list(self.build(shape, **values))
        flat = _flatten(values)
        params = list(compiled.params)
        for index, name, wrapper in compiled.slots:
            params[index] = flat[name] if wrapper is None else wrapper(flat[name])
        connection = connections[compiled.alias]
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, params)
            fetched = cursor.fetchall()
        rows = []
        for fetched_row in fetched:
            row = list(fetched_row)
            for position, (functions, expression) in compiled.converters:
                value = row[position]
                for function in functions:
                    value = function(value, expression, connection)
                row[position] = value
            rows.append(dict(zip(compiled.names, row, strict=True)))
        return rows

    def _compile(self, shape: Hashable, values: dict[str, Any]) -> _Compiled | str:
        markers = {name: _markers_for(value) for name, value in values.items()}
        queryset = self.build(shape, **markers)
        query = queryset.query
        compiler = query.get_compiler(using=queryset.db)
        try:
            sql, params = compiler.as_sql()
        except EmptyResultSet:
            return _EMPTY
        by_marker = {marker: name for name, marker in _flatten(markers).items()}
        slots = []
        for index, param in enumerate(params):
            name, wrapper = _marker_name(param, by_marker)
            if name is not None:
                slots.append((index, name, wrapper))
            elif _holds_marker(param, by_marker):
                return _ORM
        found = {name.split("#", 1)[0] for _index, name, _wrapper in slots}
        written = _TAG in sql or any(type(m) is int and str(m) in sql for m in by_marker)
        if written or not self.required <= found:
            return _ORM
        # The row's keys in the order of the SQL's columns: their aliases, which a values()
        # query names after its fields and annotations (what ValuesIterable would use).
        selected = compiler.select[0 : compiler.col_count]
        names = [alias for _expression, _sql, alias in selected]
        expressions = [expression for expression, _sql, _alias in selected]
        expected = list(query.selected) if getattr(query, "selected", None) else None
        if not names or None in names or (expected is not None and names != expected):
            return _ORM
        if len(set(names)) != len(names) or compiler.has_composite_fields(expressions):
            return _ORM
        sql, params, slots = _inline_constants(connections[queryset.db], sql, list(params), slots)
        return _Compiled(
            alias=queryset.db,
            sql=sql,
            params=tuple(params),
            slots=tuple(slots),
            names=tuple(names),
            converters=tuple(compiler.get_converters(expressions).items()),
        )


_PLACEHOLDER = re.compile(r"%%|%s")


def _inline_constants(connection: Any, sql: str, params: list, slots: list) -> tuple[str, list, list]:
    """On PostgreSQL, write the parameters that never change (a state, a service code, a
    constant the ORM bound) into the SQL once, as the literals psycopg's client-side binding
    would write on every execution anyway: each execution then converts only the values. A
    device lookup binds a dozen constants for three values; converting them was a sixth of
    a claim's CPU. Other databases bind parameters natively: left as they are."""
    if connection.vendor != "postgresql":
        return sql, params, slots
    if sum(1 for match in _PLACEHOLDER.finditer(sql) if match.group() == "%s") != len(params):
        return sql, params, slots  # not one placeholder per parameter: leave it as it is
    variable = {index for index, _name, _wrapper in slots}
    kept: list = []
    renumbered = {}
    position = iter(range(len(params)))

    def replace(match: re.Match) -> str:
        if match.group() == "%%":
            return "%%"
        index = next(position)
        if index in variable:
            renumbered[index] = len(kept)
            kept.append(params[index])
            return "%s"
        # The literal as psycopg's client-side binding writes it; a % in it escaped for the
        # placeholders that remain.
        return connection.ops.compose_sql("%s", [params[index]]).replace("%", "%%")

    inlined = _PLACEHOLDER.sub(replace, sql)
    return inlined, kept, [(renumbered[index], name, wrapper) for index, name, wrapper in slots]


def _form(value: Any) -> Any:
    if isinstance(value, list):
        return ("list", len(value), *sorted({type(item).__name__ for item in value}))
    return type(value).__name__


def _flatten(values: dict[str, Any]) -> dict[str, Any]:
    """Lists become one entry per item: `name#0`, `name#1`..."""
    flat = {}
    for name, value in values.items():
        if isinstance(value, list):
            flat.update((f"{name}#{i}", item) for i, item in enumerate(value))
        elif value is not None:
            flat[name] = value
    return flat


def _marker_name(param: Any, by_marker: dict[Any, str]) -> tuple[str | None, type | None]:
    """The value a parameter stands for, if it is one of the markers as it was put in, and
    the integer type the backend wrapped it in (None: a plain str or int)."""
    if type(param) is str or type(param) is int:
        return by_marker.get(param), None
    if isinstance(param, int) and not isinstance(param, bool):
        name = by_marker.get(int(param))
        return (name, type(param)) if name is not None else (None, None)
    return None, None


def _holds_marker(value: Any, by_marker: dict[Any, str]) -> bool:
    if isinstance(value, str):
        return _TAG in value
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value) in by_marker
    if isinstance(value, list | tuple | set | frozenset):
        return any(_holds_marker(item, by_marker) for item in value)
    return False


# --- inserts --------------------------------------------------------------------------------

_insert_sql: dict[tuple, tuple[str, bool]] = {}


def insert(obj: Model, *, using: str = "default") -> Model:
    """INSERT `obj` as `obj.save(force_insert=True)` would, with the SQL built once per model
    and database instead of compiled by the ORM on every call (the relay inserts a session,
    its sockets and an audit entry on every registration and connect).

    Each field's value goes through its own `pre_save` (auto_now_add, defaults already set by
    the model's __init__) and `get_db_prep_save` (JSON, datetimes), as the ORM does. No
    `pre_save`/`post_save` signal is sent: use it only for models nobody listens to (the
    test of this function names them). An IntegrityError comes out as from `save()`."""
    meta = obj._meta
    connection = connections[using]
    pk = meta.pk
    generated = pk.db_returning and obj.pk is None  # an AutoField the database numbers
    fields = [field for field in meta.local_concrete_fields if not (generated and field is pk)]
    key = (meta.label, using, generated)
    cached = _insert_sql.get(key)
    if cached is None:
        quote = connection.ops.quote_name
        columns = ", ".join(quote(field.column) for field in fields)
        placeholders = ", ".join(["%s"] * len(fields))
        sql = f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES ({placeholders})"
        returning = generated and connection.features.can_return_columns_from_insert
        if returning:
            sql += f" RETURNING {quote(meta.db_table)}.{quote(pk.column)}"
        cached = _insert_sql[key] = (sql, returning)
    sql, returning = cached
    values = [field.get_db_prep_save(field.pre_save(obj, add=True), connection) for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        if generated:
            new_pk = (
                cursor.fetchone()[0] if returning else connection.ops.last_insert_id(cursor, meta.db_table, pk.column)
            )
            setattr(obj, pk.attname, new_pk)
    obj._state.adding = False
    obj._state.db = using
    return obj


_update_sql: dict[tuple, str] = {}


def update(model: type[Model], pk: Any, /, *, using: str = "default", **values: Any) -> int:
    """`model.objects.filter(pk=pk).update(**values)` with the SQL built once per model and set
    of fields instead of compiled by the ORM on every call; values are plain values (no
    expressions), each through its field's `get_db_prep_save`. Returns the rows changed."""
    meta = model._meta
    connection = connections[using]
    fields = [meta.get_field(name) for name in values]
    key = (meta.label, using, tuple(values))
    sql = _update_sql.get(key)
    if sql is None:
        quote = connection.ops.quote_name
        assignments = ", ".join(f"{quote(field.column)} = %s" for field in fields)
        sql = _update_sql[key] = f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {quote(meta.pk.column)} = %s"
    params = [field.get_db_prep_save(value, connection) for field, value in zip(fields, values.values(), strict=True)]
    params.append(meta.pk.get_db_prep_value(pk, connection))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount
