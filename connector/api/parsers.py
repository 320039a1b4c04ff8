"""The REST API's JSON parser: any body it cannot turn into plain, storable JSON is a 400.

DRF's JSONParser answers most bad bodies with a ParseError already (bad UTF-8, NaN and
Infinity, syntax errors). What it lets through, and what this adds:

- nesting deeper than MAX_DEPTH: Python's decoder recurses once per level and a body of
  100 000 `[` ends in a RecursionError, a 500. No request of the API nests beyond a few
  levels, so the depth is counted before decoding;
- lone surrogates (`"\\ud800"`): valid JSON escapes that make a string no encoder can write
  back, neither the database nor the renderer of an error message that echoes a key;
- numbers beyond a float (`1e999`), which Python reads as infinity.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_DEPTH = 32

# A JSON string (escapes included) or one bracket; everything else is skipped.
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]', re.DOTALL)


def nesting_depth(text: str) -> int:
    """How deep the arrays and objects of `text` nest, brackets inside strings not counted."""
    depth = deepest = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                return deepest
        elif token in "]}":
            depth -= 1
    return deepest


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"the number {literal[:40]} is out of range")
    return value


def _lone_surrogate(value: Any) -> bool:
    """Does any string (key or value) hold a lone surrogate? Iterative: depth is bounded
    already, but a walk needs no recursion at all."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


class StrictJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        encoding = (parser_context or {}).get("encoding", "utf-8")
        try:
            text = stream.read().decode(encoding) if stream is not None else ""
        except (UnicodeDecodeError, LookupError) as error:
            raise ParseError(f"JSON parse error - the body is not valid {encoding}: {error}") from None
        if nesting_depth(text) > MAX_DEPTH:
            raise ParseError(f"JSON parse error - arrays and objects nest deeper than {MAX_DEPTH} levels.")
        try:
            data = json.loads(text, parse_constant=self._refuse_constant, parse_float=_finite_float)
        except (ValueError, RecursionError) as error:
            raise ParseError(f"JSON parse error - {error}") from None
        if _lone_surrogate(data):
            raise ParseError("JSON parse error - a string holds a lone UTF-16 surrogate.")
        return data

    @staticmethod
    def _refuse_constant(name: str) -> None:
        raise ValueError(f"Out of range float values are not JSON compliant: {name!r}")
