"""Unit tests of storage.keycode: order, prefixes, round trips, prefix ends and refusals."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import InvalidInput
from storage.keycode import INT64_MAX, INT64_MIN, decode, encode, encode_value, prefix_end

# No example database: the tests must not write files into the working tree.
quick = settings(database=None, deadline=None, max_examples=150)

NASTY_CHARS = ["\x00", "\x01", "\x7f", "\x80", "\xff", "é", "\u0100", "\uffff", "\U0001f600",
               "\U0010ffff", "a", "b"]

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "bool": st.booleans(),
    "int64": st.one_of(
        st.sampled_from([INT64_MIN, INT64_MIN + 1, -256, -1, 0, 1, 255, INT64_MAX - 1, INT64_MAX]),
        st.integers(INT64_MIN, INT64_MAX),
    ),
    "double": st.one_of(
        st.sampled_from([math.inf, -math.inf, -0.0, 0.0, 5e-324, -5e-324, 1.7976931348623157e308,
                         -1.7976931348623157e308, 1.0, -1.0]),
        st.floats(allow_nan=False),
    ),
    "str": st.text(st.one_of(st.sampled_from(NASTY_CHARS), st.characters(codec="utf-8")),
                   max_size=8),
    "bytes": st.one_of(
        st.lists(st.sampled_from([0x00, 0x01, 0x7f, 0xfe, 0xff]), max_size=8).map(bytes),
        st.binary(max_size=8),
    ),
}
TYPES = st.sampled_from(sorted(VALUES))


def tuples_of(types: list[str]) -> st.SearchStrategy[tuple[Any, ...]]:
    """Tuples whose i-th element has type ``types[i]``."""
    return st.tuples(*(VALUES[t] for t in types))


@st.composite
def same_typed_tuples(draw: st.DrawFn, min_size: int = 2) -> list[tuple[Any, ...]]:
    """A list of tuples that all share one list of column types (drawn first)."""
    types = draw(st.lists(TYPES, min_size=1, max_size=4))
    return draw(st.lists(tuples_of(types), min_size=min_size, max_size=12))


def sign(x: int) -> int:
    return (x > 0) - (x < 0)


def compare(a: Any, b: Any) -> int:
    return sign((a > b) - (a < b))


@quick
@given(same_typed_tuples())
def test_sorting_encodings_gives_the_same_order_as_sorting_tuples(ts: list[tuple[Any, ...]]):
    """Sorting the encodings orders them exactly as sorting the tuples does."""
    assert [encode(t) for t in sorted(ts)] == sorted(encode(t) for t in ts)


@quick
@given(same_typed_tuples())
def test_every_pair_of_tuples_compares_like_its_encodings(ts: list[tuple[Any, ...]]):
    """For any two tuples of the same types, <, == and > agree with their encodings."""
    for a in ts:
        for b in ts:
            assert compare(encode(a), encode(b)) == compare(a, b), (a, b)


@quick
@given(st.data())
def test_a_tuple_sorts_before_every_longer_tuple_it_prefixes(data: st.DataObject):
    """A tuple's encoding is below that of any longer tuple that starts with it."""
    types = data.draw(st.lists(TYPES, min_size=2, max_size=5))
    k = data.draw(st.integers(0, len(types) - 1))
    longer = data.draw(tuples_of(types))
    shorter = longer[:k]
    assert shorter < longer
    assert encode(shorter) < encode(longer)


@quick
@given(same_typed_tuples(min_size=1))
def test_decoding_an_encoding_gives_back_the_tuple(ts: list[tuple[Any, ...]]):
    """decode(encode(t)) == t, with every element of the same type (bool stays bool)."""
    for t in ts:
        got = decode(encode(t))
        assert got == t
        assert [type(v) for v in got] == [type(v) for v in t]


@quick
@given(st.lists(VALUES["double"], min_size=1, max_size=4))
def test_negative_zero_decodes_as_positive_zero(values: list[float]):
    """-0.0 is stored as 0.0, so it decodes with a positive sign and encodes like 0.0."""
    got = decode(encode(values))
    for v, g in zip(values, got, strict=True):
        if v == 0.0:
            assert math.copysign(1.0, g) == 1.0
            assert encode_value(v) == encode_value(0.0)
        else:
            assert g == v


@quick
@given(st.data())
def test_prefix_end_is_above_every_key_with_the_prefix(data: st.DataObject):
    """prefix_end(encode(p)) is above, and encode(p) at or below, every key starting with p."""
    types = data.draw(st.lists(TYPES, min_size=1, max_size=4))
    k = data.draw(st.integers(0, len(types)))
    keys = data.draw(st.lists(tuples_of(types), min_size=1, max_size=8))
    p = encode(keys[0][:k])
    for key in keys:
        if key[:k] == keys[0][:k]:
            assert p <= encode(key) < prefix_end(p)


@quick
@given(st.data())
def test_prefix_end_is_below_every_key_of_a_greater_prefix(data: st.DataObject):
    """prefix_end(encode(p)) is below the encoding of any greater prefix q and its extensions."""
    types = data.draw(st.lists(TYPES, min_size=1, max_size=4))
    k = data.draw(st.integers(1, len(types)))
    keys = data.draw(st.lists(tuples_of(types), min_size=2, max_size=8))
    for a in keys:
        for b in keys:
            p, q = a[:k], b[:k]
            if p < q:
                assert prefix_end(encode(p)) < encode(q)
                assert prefix_end(encode(p)) < encode(b)


def test_the_largest_int64_sorts_below_the_end_of_its_prefix():
    """INT64_MAX's payload is all 0xFF bytes, yet its extensions stay below its prefix end."""
    p = encode([INT64_MAX])
    assert encode([INT64_MAX, INT64_MAX]) < prefix_end(p) < encode([math.inf])


@pytest.mark.parametrize("value", [math.nan, -math.nan, float("nan")])
def test_nan_is_refused_as_a_key_value(value: float):
    """NaN has no place in an order, so it cannot be encoded."""
    with pytest.raises(InvalidInput):
        encode([1, value])


@pytest.mark.parametrize("value", [INT64_MAX + 1, INT64_MIN - 1, 2**64, -(2**64), 10**30])
def test_an_integer_outside_int64_is_refused(value: int):
    """Integers are stored in 8 bytes, so values outside int64 are refused."""
    with pytest.raises(InvalidInput):
        encode([value])


@pytest.mark.parametrize("value", [object(), [1], (1,), {"a": 1}, 1 + 2j, Decimal("1.5"),
                                   {1}])
def test_an_unsupported_type_is_refused(value: object):
    """Only None, bool, int, float, str and bytes can be key values."""
    with pytest.raises(InvalidInput):
        encode([value])  # type: ignore[list-item]


def test_a_string_with_a_lone_surrogate_is_refused():
    """A str that is not valid Unicode cannot be UTF-8 encoded, so it is refused."""
    with pytest.raises(InvalidInput):
        encode(["ok\ud800"])


def test_values_of_different_types_order_by_type_tag():
    """NULL < False < True < int < double < str < bytes, whatever the values."""
    ordered = [None, False, True, INT64_MAX, -math.inf, "", b""]
    encs = [encode_value(v) for v in ordered]
    assert encs == sorted(encs)
    assert len(set(encs)) == len(encs)


def test_no_encoding_starts_with_the_prefix_end_byte():
    """No tag is 0xFF, so prefix + 0xFF is above every key starting with prefix."""
    for v in [None, False, True, 0, 0.0, "", b""]:
        assert encode_value(v)[0] != 0xFF
