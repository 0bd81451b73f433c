"""API message conversions (``nodes/convert.py``): the fast path for encoded keys agrees with
the general one, and bad keys still get the general path's errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodes import convert
from shardless.v1 import types_pb2 as pb
from storage import Column, InvalidInput, Schema
from storage.keycode import INT64_MAX, INT64_MIN

INT_PK = Schema("t", (Column("id", "int64"), Column("v", "bytes")), ("id",), table_id=1)
TWO_PK = Schema("u", (Column("a", "int64"), Column("b", "string")), ("a", "b"), table_id=2)


def _k(*parts: pb.Value) -> pb.Key:
    return pb.Key(parts=list(parts))


@given(st.lists(st.integers(INT64_MIN, INT64_MAX), max_size=20))
def test_lone_int64_keys_encode_as_the_general_path_does(ids: list[int]) -> None:
    ks = [_k(pb.Value(int_value=i)) for i in ids]
    assert convert.encoded_keys(INT_PK, ks) == [INT_PK.check_key(convert.key(k)) for k in ks]


@given(st.lists(st.tuples(st.integers(INT64_MIN, INT64_MAX), st.text(max_size=8)), max_size=8))
def test_other_key_shapes_take_the_general_path(pairs: list[tuple[int, str]]) -> None:
    ks = [_k(pb.Value(int_value=a), pb.Value(string_value=b)) for a, b in pairs]
    assert convert.encoded_keys(TWO_PK, ks) == [TWO_PK.check_key((a, b)) for a, b in pairs]


@pytest.mark.parametrize("bad", [
    _k(),  # no part
    _k(pb.Value()),  # NULL
    _k(pb.Value(string_value="1")),  # wrong kind
    _k(pb.Value(int_value=1), pb.Value(int_value=2)),  # too many parts
])
def test_bad_keys_are_refused_with_the_general_paths_error(bad: pb.Key) -> None:
    with pytest.raises(InvalidInput) as fast:
        convert.encoded_keys(INT_PK, [_k(pb.Value(int_value=7)), bad])
    with pytest.raises(InvalidInput) as general:
        INT_PK.check_key(convert.key(bad))
    assert str(fast.value) == str(general.value)


def test_a_row_message_becomes_its_columns_with_null_for_an_unset_value() -> None:
    r = pb.Row(columns={"id": pb.Value(int_value=3), "v": pb.Value(bytes_value=b"x"),
                        "n": pb.Value(), "s": pb.Value(string_value="")})
    assert convert.row(r) == {"id": 3, "v": b"x", "n": None, "s": ""}
    assert convert.row(convert.to_row(convert.row(r))) == convert.row(r)
