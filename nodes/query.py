"""Range scans: bounds to byte ranges, and column filters evaluated on the node.

Owns: turning a scan's start/end bounds (full keys or key prefixes, inclusive or exclusive) into
the encoded byte range storage scans, and compiling filters into a predicate on row values.
Refuses malformed scans with ``InvalidInput``.

Bound rule: a key prefix P stands for every key that starts with P. An inclusive start begins at
the first such key, an exclusive start after the last; an inclusive end stops after the last such
key, an exclusive end before the first. A full key is the prefix of only itself, so the same rule
gives the usual meaning for full keys.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

from storage import InvalidInput, Schema, Value, prefix_end
from storage.catalog import check_value

EQ, NE, LT, LE, GT, GE, IS_NULL, IS_NOT_NULL = (
    "eq", "ne", "lt", "le", "gt", "ge", "is_null", "is_not_null")
_COMPARE: dict[str, Callable[[object, object], bool]] = {
    EQ: operator.eq, NE: operator.ne, LT: operator.lt, LE: operator.le, GT: operator.gt,
    GE: operator.ge,
}
MAX_FILTERS = 64


@dataclass(frozen=True)
class Filter:
    """One column predicate: ``column op value``."""

    column: str
    op: str
    value: Value = None


def byte_range(schema: Schema, start: tuple[Value, ...] | None, start_exclusive: bool,
               end: tuple[Value, ...] | None, end_exclusive: bool
               ) -> tuple[bytes | None, bytes | None]:
    """Encoded ``[lo, hi)`` for a scan; see the module's bound rule.

    Raises:
        InvalidInput: a bound has a wrong type or too many parts, or start is after end.
    """
    lo = hi = None
    if start is not None:
        enc = schema.check_key(start, prefix=True)
        lo = prefix_end(enc) if start_exclusive else enc
    if end is not None:
        enc = schema.check_key(end, prefix=True)
        hi = enc if end_exclusive else prefix_end(enc)
    if lo is not None and hi is not None and lo > hi:
        # The start position is after the end position (this includes an exclusive start and
        # an exclusive end on the same key); an inclusive point range [k, k] is fine.
        raise InvalidInput("scan start is after scan end")
    return lo, hi


def compile_filters(schema: Schema, filters: list[Filter]) -> Callable[[list[Value]], bool]:
    """A predicate on row values (column order) that is true when every filter holds.

    Raises:
        InvalidInput: unknown column or op, a value of the wrong type, or too many filters.
    """
    if len(filters) > MAX_FILTERS:
        raise InvalidInput(f"scan has {len(filters)} filters; the limit is {MAX_FILTERS}")
    index = {c.name: i for i, c in enumerate(schema.columns)}
    tests: list[Callable[[list[Value]], bool]] = []
    for f in filters:
        col = schema.by_name.get(f.column)
        if col is None:
            raise InvalidInput(f"filter names unknown column {f.column!r}")
        i = index[f.column]
        if f.op == IS_NULL:
            tests.append(lambda row, i=i: row[i] is None)
        elif f.op == IS_NOT_NULL:
            tests.append(lambda row, i=i: row[i] is not None)
        elif f.op in _COMPARE:
            if f.value is None:
                raise InvalidInput(f"filter on {f.column!r} compares with NULL; use IS_NULL or "
                                   f"IS_NOT_NULL")
            check_value(col, f.value)
            cmp, v = _COMPARE[f.op], f.value
            tests.append(lambda row, i=i, cmp=cmp, v=v: row[i] is not None and cmp(row[i], v))
        else:
            raise InvalidInput(f"filter on {f.column!r} has no valid op")
    return lambda row: all(t(row) for t in tests)
