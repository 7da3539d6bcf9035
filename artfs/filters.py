"""Filters over version records, in the MongoDB-style syntax of W&B's `Api().runs(filters=...)`.

`{"metadata.ap50": {"$gt": 0.9}, "aliases": "best"}` keeps versions whose metadata key `ap50`
is above 0.9 and that carry the alias `best`. A filter is checked whole when it is compiled, so
a mistake (an unknown operator or field, an operand of the wrong kind) fails before any request,
naming what is wrong. It reads only what a version record holds (metadata, aliases, size,
times...), never a manifest, so filtering costs the same whatever the versions contain.

Semantics follow MongoDB: fields are ANDed; a list value (aliases, or a list in metadata)
matches when the list itself or any element does; `$ne` and `$nin` also match a missing field;
comparisons between different kinds (a number and a string) never match. `version` compares
by number (`"v10"` is after `"v9"`); `created_at`/`updated_at` compare as times, from ISO 8601.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import InvalidFilter

COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$regex")
LOGICAL = ("$and", "$or")
#: Fields of a version record; `metadata.<a.b.c>` reaches into nested metadata.
FIELDS = ("version", "aliases", "created_at", "updated_at", "size", "file_count", "digest",
          "type", "description", "metadata")
_TIMES = ("created_at", "updated_at")
_MISSING = object()

Record = Mapping[str, Any]
Test = Callable[[Any], bool]


@dataclass(frozen=True)
class Filter:
    """A compiled filter: `matches(record)`, and which top-level fields it reads."""

    matches: Callable[[Record], bool]
    fields: frozenset[str]


def compile_filter(spec: Any) -> Filter:
    """Check `spec` and turn it into a predicate over version records (see the module doc)."""
    fields: set[str] = set()
    return Filter(_compile(spec, fields, "filter"), frozenset(fields))


def _compile(spec: Any, fields: set[str], where: str) -> Callable[[Record], bool]:
    if not isinstance(spec, Mapping):
        raise InvalidFilter(f"{where} must be a JSON object such as "
                            f'{{"metadata.ap50": {{"$gt": 0.9}}}}, not {spec!r}')
    parts = [_compile_key(str(k), v, fields) for k, v in spec.items()]
    return lambda rec: all(p(rec) for p in parts)


def _compile_key(key: str, value: Any, fields: set[str]) -> Callable[[Record], bool]:
    if key in LOGICAL:
        if not isinstance(value, list) or not value:
            raise InvalidFilter(f"{key} takes a non-empty list of filters, not {value!r}")
        subs = [_compile(v, fields, f"each filter in {key}") for v in value]
        if key == "$and":
            return lambda rec: all(s(rec) for s in subs)
        return lambda rec: any(s(rec) for s in subs)
    if key.startswith("$"):
        raise InvalidFilter(f"unknown operator {key!r} at the top of a filter: "
                            f"use a field name, {' or '.join(LOGICAL)}")
    path = _field_path(key)
    fields.add(path[0])
    if isinstance(value, Mapping) and any(str(k).startswith("$") for k in value):
        tests = _compile_ops(key, value)
    else:
        tests = [_equals(_operand(key, value))]

    def match(rec: Record) -> bool:
        found = _lookup(rec, path)
        return all(t(found) for t in tests)

    return match


def _field_path(key: str) -> list[str]:
    path = key.split(".")
    if path[0] not in FIELDS or (len(path) > 1 and path[0] != "metadata") or "" in path:
        raise InvalidFilter(f"unknown field {key!r} in filter: use metadata.<key> (dotted for "
                            f"nested keys) or one of {', '.join(f for f in FIELDS)}")
    return path


def _lookup(rec: Record, path: list[str]) -> Any:
    value: Any = rec
    for part in path:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    if path[0] in _TIMES and isinstance(value, str):
        return _time(value, path[0])
    return value


def _time(text: str, field: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidFilter(f"{field} must be an ISO 8601 time such as 2026-11-26T15:00:00Z, "
                            f"not {text!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _operand(key: str, value: Any) -> Any:
    """The operand as records hold it: `version` by number, times as datetimes."""
    field = key.split(".")[0]
    if field == "version":
        if isinstance(value, str) and re.fullmatch(r"v\d+", value):
            return int(value[1:])
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise InvalidFilter(f"version takes a version such as 'v3' (or its number), "
                            f"not {value!r}")
    if field in _TIMES:
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, str):
            return _time(value, field)
        raise InvalidFilter(f"{field} takes an ISO 8601 time, not {value!r}")
    return value


def _compile_ops(key: str, ops: Mapping[str, Any]) -> list[Test]:
    unknown = [k for k in ops if k not in COMPARISONS and k != "$options"]
    if unknown:
        raise InvalidFilter(f"unknown operator {unknown[0]!r} on {key!r}: supported are "
                            f"{', '.join(COMPARISONS + LOGICAL)}")
    if "$options" in ops and "$regex" not in ops:
        raise InvalidFilter(f"$options on {key!r} needs a $regex beside it")
    tests: list[Test] = []
    for op, arg in ops.items():
        if op == "$options":
            continue
        if op in ("$in", "$nin"):
            if not isinstance(arg, list):
                raise InvalidFilter(f"{op} on {key!r} takes a list, not {arg!r}")
            test = _member([_operand(key, a) for a in arg])
            tests.append(test if op == "$in" else _negate(test))
        elif op == "$exists":
            if not isinstance(arg, bool):
                raise InvalidFilter(f"$exists on {key!r} takes true or false, not {arg!r}")
            tests.append(lambda v, want=arg: (v is not _MISSING) == want)
        elif op == "$regex":
            tests.append(_regex(key, arg, ops.get("$options", "")))
        elif op in ("$eq", "$ne"):
            test = _equals(_operand(key, arg))
            tests.append(test if op == "$eq" else _negate(test))
        else:
            tests.append(_order(op, _operand(key, arg)))
    return tests


def _negate(test: Test) -> Test:
    return lambda v: not test(v)


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps true apart from 1, as JSON and MongoDB do."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _equals(want: Any) -> Test:
    def test(v: Any) -> bool:
        if _same(v, want):
            return True
        return isinstance(v, list) and any(_same(x, want) for x in v)

    return test


def _member(options: list[Any]) -> Test:
    def test(v: Any) -> bool:
        values = v if isinstance(v, list) else [v]
        return any(_same(x, o) for x in [v, *values] for o in options)

    return test


def _comparable(a: Any, b: Any) -> bool:
    def kind(x: Any) -> type | None:
        if isinstance(x, bool):
            return bool
        if isinstance(x, int | float):
            return float
        if isinstance(x, str | datetime):
            return type(x)
        return None

    return kind(a) is not None and kind(a) == kind(b)


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b,
}


def _order(op: str, bound: Any) -> Test:
    if not _comparable(bound, bound):
        raise InvalidFilter(f"{op} takes a number, a string or a time, not {bound!r}")
    compare = _ORDER[op]

    def test(v: Any) -> bool:
        values = v if isinstance(v, list) else [v]
        return any(_comparable(x, bound) and compare(x, bound) for x in values)

    return test


def _regex(key: str, pattern: Any, options: Any) -> Test:
    if not isinstance(pattern, str):
        raise InvalidFilter(f"$regex on {key!r} takes a string, not {pattern!r}")
    if not isinstance(options, str) or set(options) - set("imsx"):
        raise InvalidFilter(f"$options on {key!r} takes letters of 'imsx', not {options!r}")
    flags = 0
    for letter in options:
        flags |= {"i": re.I, "m": re.M, "s": re.S, "x": re.X}[letter]
    try:
        rx = re.compile(pattern, flags)
    except re.error as e:
        raise InvalidFilter(f"$regex {pattern!r} on {key!r} is not a valid pattern: {e}") from e
    version = key == "version"

    def test(v: Any) -> bool:
        values = v if isinstance(v, list) else [v]
        for x in values:
            if version and isinstance(x, int):
                x = f"v{x}"
            elif isinstance(x, datetime):
                x = x.isoformat()
            if isinstance(x, str) and rx.search(x):
                return True
        return False

    return test


def record_of(version: Any) -> dict[str, Any]:
    """What a filter sees of a version (anything with the attributes of `registry.Version`)."""
    return {f: getattr(version, f) for f in FIELDS}
