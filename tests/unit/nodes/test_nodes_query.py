"""Unit tests of nodes.query: scan bounds as byte ranges (checked on a Store) and filters."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodes.query import (
    EQ,
    GE,
    GT,
    IS_NOT_NULL,
    IS_NULL,
    LE,
    LT,
    MAX_FILTERS,
    NE,
    Filter,
    byte_range,
    compile_filters,
)
from storage import Column, InvalidInput, Schema, Store, open_volume
from storage.keycode import encode

A_VALUES = [1, 2, 3]
B_VALUES = ["x", "y", "z"]
ALL = [(a, b) for a in A_VALUES for b in B_VALUES]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A volume with tables before, t and after; t keyed by (a int64, b string) holds ALL."""
    s = open_volume(str(tmp_path / "vol"), map_size=64 << 20)
    try:
        with s.write() as w:
            for name in ("before", "t", "after"):
                schema = w.create_table(Schema.build(
                    name, [Column("a", "int64"), Column("b", "string"), Column("v", "int64")],
                    ["a", "b"]))
                for a, b in ALL:
                    w.put(schema, encode((a, b)), 1, [a, b, 0])
        yield s
    finally:
        s.close()


def scan(store: Store, start=None, start_exclusive=False, end=None, end_exclusive=False,
         reverse=False) -> list[tuple]:
    """Keys of t within the byte range of the given bounds, as the node would scan them."""
    with store.read() as r:
        schema = r.require_table("t")
        lo, hi = byte_range(schema, start, start_exclusive, end, end_exclusive)
        return [(vals[0], vals[1]) for _, vals in r.scan(schema, lo, hi, reverse)]


def schema_of(store: Store) -> Schema:
    with store.read() as r:
        return r.require_table("t")


# -- byte_range ---------------------------------------------------------------------------------


def test_no_bounds_scans_the_whole_table(store: Store):
    """Unset bounds are unbounded, and a scan never reaches the neighbouring tables."""
    assert scan(store) == ALL
    assert scan(store, reverse=True) == ALL[::-1]


def test_inclusive_full_key_bounds_include_both_ends(store: Store):
    """Inclusive start and end on full keys include those keys."""
    assert scan(store, (1, "y"), False, (2, "y"), False) == [(1, "y"), (1, "z"), (2, "x"),
                                                             (2, "y")]


def test_exclusive_full_key_bounds_exclude_both_ends(store: Store):
    """Exclusive start and end on full keys leave those keys out."""
    assert scan(store, (1, "y"), True, (2, "y"), True) == [(1, "z"), (2, "x")]


def test_bounds_on_keys_that_are_not_stored_fall_between_stored_keys(store: Store):
    """A bound need not exist: it cuts the key order where it would sort."""
    assert scan(store, (1, "yy"), False, (2, "a"), False) == [(1, "z")]
    assert scan(store, (1, "yy"), True, (2, "a"), True) == [(1, "z")]


def test_the_same_full_key_as_inclusive_start_and_end_gives_that_row(store: Store):
    """start == end, both inclusive, is a point scan."""
    assert scan(store, (2, "y"), False, (2, "y"), False) == [(2, "y")]


def test_an_inclusive_prefix_start_begins_at_the_first_key_with_the_prefix(store: Store):
    """start=(2,) inclusive begins at (2, 'x')."""
    assert scan(store, (2,), False) == [(2, "x"), (2, "y"), (2, "z"), (3, "x"), (3, "y"),
                                        (3, "z")]


def test_an_exclusive_prefix_start_begins_after_the_last_key_with_the_prefix(store: Store):
    """start=(2,) exclusive skips every key starting with 2."""
    assert scan(store, (2,), True) == [(3, "x"), (3, "y"), (3, "z")]


def test_an_inclusive_prefix_end_stops_after_the_last_key_with_the_prefix(store: Store):
    """end=(2,) inclusive includes every key starting with 2."""
    assert scan(store, end=(2,), end_exclusive=False) == ALL[:6]


def test_an_exclusive_prefix_end_stops_before_the_first_key_with_the_prefix(store: Store):
    """end=(2,) exclusive stops before (2, 'x')."""
    assert scan(store, end=(2,), end_exclusive=True) == ALL[:3]


def test_the_same_prefix_as_inclusive_start_and_end_gives_every_key_with_it(store: Store):
    """start = end = (2,) inclusive is a prefix scan, forward and reverse."""
    rows = [(2, "x"), (2, "y"), (2, "z")]
    assert scan(store, (2,), False, (2,), False) == rows
    assert scan(store, (2,), False, (2,), False, reverse=True) == rows[::-1]


def test_an_empty_prefix_bound_is_the_whole_table(store: Store):
    """A bound with no parts is the prefix of every key."""
    assert scan(store, (), False, (), False) == ALL


def test_a_prefix_start_with_a_full_key_end_mixes_correctly(store: Store):
    """Prefix and full-key bounds combine: (1,) inclusive to (2, 'x') exclusive."""
    assert scan(store, (1,), False, (2, "x"), True) == ALL[:3]


def test_a_reverse_scan_walks_the_same_range_backwards(store: Store):
    """reverse does not change which rows a range holds, only their order."""
    fwd = scan(store, (1, "y"), True, (3,), True)
    assert fwd == [(1, "z"), (2, "x"), (2, "y"), (2, "z")]
    assert scan(store, (1, "y"), True, (3,), True, reverse=True) == fwd[::-1]


@pytest.mark.parametrize(("start", "start_ex", "end", "end_ex"), [
    ((3,), False, (1,), False),
    ((2, "y"), False, (2, "x"), False),
    ((2,), True, (2, "y"), False),  # after every (2, *) key, but the end is (2, 'y')
    ((2, "z"), False, (2,), True),  # the end is before every (2, *) key
])
def test_a_start_after_the_end_raises_invalid_input(store: Store, start, start_ex, end, end_ex):
    """A range whose start is after its end is malformed."""
    with pytest.raises(InvalidInput, match="after"):
        byte_range(schema_of(store), start, start_ex, end, end_ex)


@pytest.mark.parametrize("bound", [("1",), (1.0,), (True,), (1, 2), (None,), (1, None),
                                   (2**63,)])
def test_a_bound_of_the_wrong_type_raises_invalid_input(store: Store, bound):
    """Each part of a bound must have its key column's type and cannot be NULL."""
    schema = schema_of(store)
    with pytest.raises(InvalidInput):
        byte_range(schema, bound, False, None, False)
    with pytest.raises(InvalidInput):
        byte_range(schema, None, False, bound, False)


def test_a_bound_with_too_many_parts_raises_invalid_input(store: Store):
    """A bound cannot have more parts than the primary key."""
    schema = schema_of(store)
    with pytest.raises(InvalidInput):
        byte_range(schema, (1, "x", 3), False, None, False)
    with pytest.raises(InvalidInput):
        byte_range(schema, None, False, (1, "x", "y"), True)


@pytest.mark.parametrize(("start_ex", "end_ex", "reverse", "expected"), [
    (False, False, False, 1), (False, False, True, 1), (True, False, False, 0),
    (True, False, True, 0), (False, True, True, 0),
])
def test_bounds_on_a_maximum_length_key_scan_correctly(tmp_path: Path, start_ex, end_ex,
                                                       reverse, expected):
    """prefix_end of a 506-byte key makes a bound one byte over LMDB's key limit; scans work."""
    s = open_volume(str(tmp_path / "long"), map_size=16 << 20)
    try:
        with s.write() as w:
            t = w.create_table(Schema.build("s", [Column("k", "string")], ["k"]))
            k = "x" * 503
            w.put(t, t.check_key((k,)), 1, [k])
        lo, hi = byte_range(t, (k,), start_ex, (k,), end_ex)
        with s.read() as r:
            assert len(list(r.scan(t, lo, hi, reverse))) == expected
    finally:
        s.close()


# -- compile_filters ----------------------------------------------------------------------------


@pytest.fixture
def wide() -> Schema:
    return Schema.build("w", [Column("id", "int64"), Column("n", "int64"), Column("s", "string"),
                              Column("f", "double"), Column("b", "bool"),
                              Column("raw", "bytes")], ["id"])


# Rows (column order id, n, s, f, b, raw); row i has n = i except row 0 whose values are NULL.
ROWS = [
    [0, None, None, None, None, None],
    [1, 1, "a", -1.5, False, b"\x00"],
    [2, 2, "b", 0.0, True, b"\x01"],
    [3, 3, "c", math.inf, True, b"\xff"],
]


def matching(schema: Schema, *filters: Filter) -> list[int]:
    pred = compile_filters(schema, list(filters))
    return [r[0] for r in ROWS if pred(r)]


@pytest.mark.parametrize(("op", "expected"), [
    (EQ, [2]), (NE, [1, 3]), (LT, [1]), (LE, [1, 2]), (GT, [3]), (GE, [2, 3]),
])
def test_a_comparison_filter_selects_the_matching_rows_and_never_null(wide: Schema, op,
                                                                      expected):
    """Each comparison op holds where Python's comparison does, and is false on NULL."""
    assert matching(wide, Filter("n", op, 2)) == expected


@pytest.mark.parametrize(("column", "op", "value", "expected"), [
    ("s", GE, "b", [2, 3]),
    ("f", LT, 0.0, [1]),
    ("f", EQ, -0.0, [2]),
    ("f", GT, 1e308, [3]),
    ("b", EQ, True, [2, 3]),
    ("b", NE, True, [1]),
    ("raw", GT, b"\x00", [2, 3]),
])
def test_comparison_filters_work_on_every_column_type(wide: Schema, column, op, value,
                                                      expected):
    """Strings, doubles, bools and bytes compare by their natural order, NULL never matching."""
    assert matching(wide, Filter(column, op, value)) == expected


def test_is_null_selects_only_null_values(wide: Schema):
    """IS_NULL holds exactly on rows whose column is NULL."""
    assert matching(wide, Filter("n", IS_NULL)) == [0]


def test_is_not_null_selects_only_non_null_values(wide: Schema):
    """IS_NOT_NULL holds exactly on rows whose column is not NULL."""
    assert matching(wide, Filter("s", IS_NOT_NULL)) == [1, 2, 3]


def test_every_filter_must_hold(wide: Schema):
    """Several filters combine with AND."""
    assert matching(wide, Filter("n", GE, 2), Filter("s", NE, "c")) == [2]
    assert matching(wide, Filter("n", IS_NULL), Filter("n", IS_NOT_NULL)) == []


def test_no_filters_match_every_row(wide: Schema):
    """An empty filter list accepts everything, NULL rows included."""
    assert matching(wide) == [0, 1, 2, 3]


def test_a_filter_on_an_unknown_column_raises_invalid_input(wide: Schema):
    """Filters name columns of the table."""
    with pytest.raises(InvalidInput, match="nope"):
        compile_filters(wide, [Filter("nope", EQ, 1)])


@pytest.mark.parametrize("op", [EQ, NE, LT, LE, GT, GE])
def test_a_comparison_with_null_raises_invalid_input(wide: Schema, op: str):
    """Comparing with NULL is refused; IS_NULL / IS_NOT_NULL are the way to test for it."""
    with pytest.raises(InvalidInput, match="IS_NULL"):
        compile_filters(wide, [Filter("n", op, None)])


@pytest.mark.parametrize(("column", "value"), [("n", "2"), ("n", 2.0), ("n", True), ("f", 1),
                                                ("s", b"a"), ("b", 1), ("raw", "a")])
def test_a_filter_value_of_the_wrong_type_raises_invalid_input(wide: Schema, column, value):
    """A filter's value must have its column's type (bool is not int64, int not double)."""
    with pytest.raises(InvalidInput):
        compile_filters(wide, [Filter(column, EQ, value)])


@pytest.mark.parametrize("op", ["", "like", "EQ", "between"])
def test_a_filter_with_an_unknown_op_raises_invalid_input(wide: Schema, op: str):
    """Only the eight documented ops exist (lower-case internally)."""
    with pytest.raises(InvalidInput):
        compile_filters(wide, [Filter("n", op, 1)])


def test_more_filters_than_the_limit_raise_invalid_input(wide: Schema):
    """At most MAX_FILTERS filters; that many is fine, one more is refused."""
    compile_filters(wide, [Filter("n", IS_NULL)] * MAX_FILTERS)
    with pytest.raises(InvalidInput):
        compile_filters(wide, [Filter("n", IS_NULL)] * (MAX_FILTERS + 1))
