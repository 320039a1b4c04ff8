"""Read queries compiled once and sent again with other values: the relay's busiest reads.

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
import secrets
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connections
from django.db.models import QuerySet

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
    slots: tuple[tuple[int, str], ...]  # (parameter index, flat name of the value)
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
        for index, name in compiled.slots:
            params[index] = flat[name]
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
            name = by_marker.get(param) if type(param) in (str, int) else None
            if name is not None:
                slots.append((index, name))
            elif _holds_marker(param, by_marker):
                return _ORM
        found = {name.split("#", 1)[0] for _index, name in slots}
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
        return _Compiled(
            alias=queryset.db,
            sql=sql,
            params=tuple(params),
            slots=tuple(slots),
            names=tuple(names),
            converters=tuple(compiler.get_converters(expressions).items()),
        )


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


def _holds_marker(value: Any, by_marker: dict[Any, str]) -> bool:
    if isinstance(value, str):
        return _TAG in value
    if type(value) is int:
        return value in by_marker
    if isinstance(value, list | tuple | set | frozenset):
        return any(_holds_marker(item, by_marker) for item in value)
    return False
