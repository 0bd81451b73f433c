"""Unit tests of storage.catalog (schema validation, key and row checks, stored form) and rows."""

from __future__ import annotations

import math

import msgpack
import pytest

from storage import MAX_ROW_BYTES, Column, Corrupt, InvalidInput, Schema, rows
from storage.catalog import MAX_COLUMNS, MAX_NAME_CHARS, MAX_PK_COLUMNS
from storage.keycode import encode
from storage.keys import MAX_ENCODED_PK


def cols(*spec: str) -> list[Column]:
    """Columns from ``"name:type"`` strings; a trailing ``!`` makes one NOT NULL."""
    out = []
    for s in spec:
        name, typ = s.split(":")
        out.append(Column(name, typ.rstrip("!"), typ.endswith("!")))
    return out


@pytest.fixture
def people() -> Schema:
    """A table keyed by (org string, id int64) with nullable and NOT NULL value columns."""
    return Schema.build(
        "people",
        cols("org:string", "id:int64", "name:string!", "age:int64", "score:double",
             "active:bool", "photo:bytes"),
        ["org", "id"],
    )


# -- Schema.build -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "x" * (MAX_NAME_CHARS + 1), "bad\nname", "nul\x00",
                                  "tab\there", "bell\x07", "del\x7f", "zw\u2028sep"])
def test_build_refuses_a_bad_table_name(name: str):
    """Table names must be 1..128 printable characters."""
    with pytest.raises(InvalidInput):
        Schema.build(name, cols("id:int64"), ["id"])


@pytest.mark.parametrize("name", ["", "c" * (MAX_NAME_CHARS + 1), "new\nline", "nul\x00"])
def test_build_refuses_a_bad_column_name(name: str):
    """Column names follow the same rules as table names."""
    with pytest.raises(InvalidInput):
        Schema.build("t", [Column("id", "int64"), Column(name, "string")], ["id"])


@pytest.mark.parametrize("name", ["t", "x" * MAX_NAME_CHARS, "tábla", "表", "with space"])
def test_build_accepts_printable_names_up_to_the_limit(name: str):
    """Printable Unicode names of up to 128 characters are valid, for tables and columns."""
    s = Schema.build(name, [Column(name, "int64")], [name])
    assert s.name == name and s.columns[0].name == name


def test_build_refuses_a_table_without_columns():
    """A table needs at least one column."""
    with pytest.raises(InvalidInput):
        Schema.build("t", [], ["id"])


def test_build_refuses_more_columns_than_the_limit():
    """At most 256 columns; 256 is accepted, 257 refused."""
    many = [Column(f"c{i}", "int64") for i in range(MAX_COLUMNS)]
    assert len(Schema.build("t", many, ["c0"]).columns) == MAX_COLUMNS
    with pytest.raises(InvalidInput):
        Schema.build("t", [*many, Column("extra", "int64")], ["c0"])


def test_build_refuses_a_column_defined_twice():
    """Two columns of the same name are refused."""
    with pytest.raises(InvalidInput, match="twice"):
        Schema.build("t", cols("id:int64", "v:string", "v:int64"), ["id"])


@pytest.mark.parametrize("typ", ["int", "INT64", "text", "", "float", "null"])
def test_build_refuses_an_unknown_column_type(typ: str):
    """Column types are exactly bool, int64, double, string and bytes."""
    with pytest.raises(InvalidInput):
        Schema.build("t", [Column("id", "int64"), Column("v", typ)], ["id"])


def test_build_refuses_a_table_without_primary_key():
    """Every table has a primary key of at least one column."""
    with pytest.raises(InvalidInput):
        Schema.build("t", cols("id:int64"), [])


def test_build_refuses_a_primary_key_naming_a_column_twice():
    """A primary-key column may appear once."""
    with pytest.raises(InvalidInput):
        Schema.build("t", cols("a:int64", "b:int64"), ["a", "b", "a"])


def test_build_refuses_a_primary_key_naming_an_unknown_column():
    """Primary-key columns must be columns of the table."""
    with pytest.raises(InvalidInput, match="nope"):
        Schema.build("t", cols("id:int64"), ["id", "nope"])


def test_build_refuses_more_primary_key_columns_than_the_limit():
    """At most 16 primary-key columns; 16 is accepted, 17 refused."""
    many = [Column(f"k{i}", "int64") for i in range(MAX_PK_COLUMNS + 1)]
    names = [c.name for c in many]
    assert len(Schema.build("t", many, names[:MAX_PK_COLUMNS]).primary_key) == MAX_PK_COLUMNS
    with pytest.raises(InvalidInput):
        Schema.build("t", many, names)


def test_build_makes_primary_key_columns_not_null_and_leaves_others_alone(people: Schema):
    """PK columns become NOT NULL; other columns keep their declared nullability."""
    nn = {c.name: c.not_null for c in people.columns}
    assert nn == {"org": True, "id": True, "name": True, "age": False, "score": False,
                  "active": False, "photo": False}


def test_build_keeps_the_declared_column_and_key_order(people: Schema):
    """Columns keep their order, and pk_columns follow the primary key's order."""
    assert [c.name for c in people.columns][:3] == ["org", "id", "name"]
    assert [c.name for c in people.pk_columns] == ["org", "id"]
    assert people.table_id == 0


# -- check_key ----------------------------------------------------------------------------------


def test_check_key_encodes_a_valid_key(people: Schema):
    """A well-typed full key is returned keycode-encoded."""
    assert people.check_key(("acme", 7)) == encode(("acme", 7))


@pytest.mark.parametrize("key", [(), ("acme",), ("acme", 1, 2)])
def test_check_key_refuses_the_wrong_number_of_parts(people: Schema, key: tuple):
    """A full key has exactly one value per primary-key column."""
    with pytest.raises(InvalidInput):
        people.check_key(key)


@pytest.mark.parametrize("key", [(1, 1), ("acme", "1"), ("acme", 1.0), ("acme", True),
                                 (b"acme", 1), ("acme", 2**63)])
def test_check_key_refuses_a_value_of_the_wrong_type(people: Schema, key: tuple):
    """Each key part must have its column's type (bool is not int64, int64 is in range)."""
    with pytest.raises(InvalidInput):
        people.check_key(key)


@pytest.mark.parametrize("key", [(None, 1), ("acme", None)])
def test_check_key_refuses_null(people: Schema, key: tuple):
    """Primary-key parts cannot be NULL."""
    with pytest.raises(InvalidInput, match="NULL"):
        people.check_key(key)


def test_check_key_refuses_nan():
    """A double primary-key part cannot be NaN."""
    s = Schema.build("t", cols("x:double"), ["x"])
    with pytest.raises(InvalidInput):
        s.check_key((math.nan,))


def test_check_key_accepts_a_key_of_exactly_the_maximum_encoded_length():
    """An encoded key of MAX_ENCODED_PK bytes fits; one byte more is refused."""
    s = Schema.build("t", cols("k:string"), ["k"])
    overhead = len(encode(("",)))
    longest = "x" * (MAX_ENCODED_PK - overhead)
    assert len(s.check_key((longest,))) == MAX_ENCODED_PK
    with pytest.raises(InvalidInput, match="bytes"):
        s.check_key((longest + "x",))


def test_check_key_counts_encoded_bytes_not_characters():
    """Multi-byte characters and escaped NULs count by their encoded size."""
    s = Schema.build("t", cols("k:bytes"), ["k"])
    with pytest.raises(InvalidInput):
        s.check_key((b"\x00" * 300,))  # 300 bytes, 600 once escaped


def test_check_key_in_prefix_mode_accepts_a_leading_part(people: Schema):
    """With prefix=True, fewer parts (even none) are fine and are encoded as a prefix."""
    assert people.check_key(("acme",), prefix=True) == encode(("acme",))
    assert people.check_key((), prefix=True) == b""
    assert people.check_key(("acme", 1), prefix=True) == encode(("acme", 1))


def test_check_key_in_prefix_mode_refuses_too_many_parts(people: Schema):
    """A prefix cannot be longer than the primary key."""
    with pytest.raises(InvalidInput, match="at most 2"):
        people.check_key(("acme", 1, 2), prefix=True)


def test_check_key_in_prefix_mode_still_checks_types_and_null(people: Schema):
    """Prefix parts are type-checked and cannot be NULL."""
    with pytest.raises(InvalidInput):
        people.check_key((1,), prefix=True)
    with pytest.raises(InvalidInput):
        people.check_key((None,), prefix=True)


# -- full_row / check_columns -------------------------------------------------------------------


def test_full_row_returns_values_in_column_order_with_absent_columns_null(people: Schema):
    """A valid row becomes a list in column order, NULL for the columns not given."""
    got = people.full_row({"name": "Ann", "id": 1, "org": "acme", "score": 2.5})
    assert got == ["acme", 1, "Ann", None, 2.5, None, None]


def test_full_row_refuses_an_unknown_column(people: Schema):
    """A column that the table does not have is refused, naming it."""
    with pytest.raises(InvalidInput, match="colour"):
        people.full_row({"org": "acme", "id": 1, "name": "Ann", "colour": "red"})


@pytest.mark.parametrize(("column", "value"), [
    ("age", True),  # bool is not int64
    ("age", "1"),
    ("age", 1.0),
    ("age", 2**63),
    ("score", 1),  # int is not double
    ("active", 1),  # int is not bool
    ("active", "true"),
    ("name", b"Ann"),
    ("photo", "png"),
    ("photo", bytearray(b"png")),
])
def test_full_row_refuses_a_value_of_the_wrong_type(people: Schema, column: str, value: object):
    """Each value must have exactly its column's type."""
    row = {"org": "acme", "id": 1, "name": "Ann", column: value}
    with pytest.raises(InvalidInput, match=column):
        people.full_row(row)


@pytest.mark.parametrize("missing", ["org", "id", "name"])
def test_full_row_refuses_a_missing_not_null_column(people: Schema, missing: str):
    """NOT NULL columns (primary-key ones included) must be given."""
    row = {"org": "acme", "id": 1, "name": "Ann"}
    del row[missing]
    with pytest.raises(InvalidInput, match=missing):
        people.full_row(row)


def test_full_row_refuses_an_explicit_null_in_a_not_null_column(people: Schema):
    """Giving None for a NOT NULL column is refused like leaving it out."""
    with pytest.raises(InvalidInput, match="name"):
        people.full_row({"org": "acme", "id": 1, "name": None})


def test_check_columns_accepts_a_partial_row(people: Schema):
    """check_columns checks only the columns given, so an update may omit NOT NULL ones."""
    people.check_columns({"id": 1, "age": None})


def test_check_columns_refuses_an_unknown_column(people: Schema):
    """check_columns refuses a column that the table does not have."""
    with pytest.raises(InvalidInput):
        people.check_columns({"nope": 1})


def test_key_of_refuses_a_row_missing_a_primary_key_column(people: Schema):
    """The key of a row needs every primary-key column."""
    assert people.key_of({"org": "a", "id": 3, "name": "x"}) == ("a", 3)
    with pytest.raises(InvalidInput, match="id"):
        people.key_of({"org": "a"})


# -- stored form --------------------------------------------------------------------------------


def test_schema_survives_encode_and_decode(people: Schema):
    """decode(encode(s)) gives back the same schema, with its id and nullability."""
    stored = people.with_id(42)
    back = Schema.decode(stored.encode())
    assert back == stored
    assert back.table_id == 42
    assert [c.not_null for c in back.columns] == [c.not_null for c in stored.columns]
    assert [c.name for c in back.pk_columns] == ["org", "id"]


@pytest.mark.parametrize("data", [
    b"",
    b"\xc1",
    b"\x92",
    b"\x01",
    msgpack.packb("schema"),
    msgpack.packb([1, 2, 3]),
    msgpack.packb({"name": "t", "id": 1, "pk": ["id"]}),
    msgpack.packb({"name": "t", "id": 1, "columns": [["id", "int64"]], "pk": ["id"]}),
    msgpack.packb({"name": "t", "id": "x", "columns": [], "pk": []}),
    msgpack.packb({"name": "t", "id": 1, "columns": 5, "pk": []}),
], ids=["empty", "reserved-byte", "truncated", "int", "str", "list", "no-columns",
        "short-column", "bad-id", "columns-not-list"])
def test_schema_decode_of_garbage_raises_corrupt(data: bytes):
    """Bytes that are not a schema record raise Corrupt, not a foreign error."""
    with pytest.raises(Corrupt):
        Schema.decode(data)


@pytest.mark.parametrize("record", [
    {"name": 5, "id": 1, "columns": [["id", "int64", True]], "pk": ["id"]},
    {"name": "t", "id": 1, "columns": [[1, 2, 3]], "pk": ["id"]},
    {"name": "t", "id": 1, "columns": [["id", "no-such-type", True]], "pk": ["id"]},
    {"name": "t", "id": 1, "columns": [["id", "int64", True]], "pk": ["nope"]},
], ids=["int-name", "int-column-fields", "unknown-type", "pk-names-no-column"])
def test_schema_decode_of_a_record_with_invalid_fields_raises_corrupt(record: dict):
    """A msgpack map that is not a valid schema record (wrong field types, unknown column type,
    key naming no column) raises Corrupt instead of becoming a nonsense Schema."""
    with pytest.raises(Corrupt):
        Schema.decode(msgpack.packb(record))


# -- rows ---------------------------------------------------------------------------------------


def test_row_survives_encode_and_decode():
    """A row's version and values, bytes and str kept apart, survive the stored form."""
    values = ["s", b"b\x00", 1, -(2**63), 2.5, True, None]
    assert rows.decode(rows.encode(7, values)) == (7, values)
    _, back = rows.decode(rows.encode(7, values))
    assert [type(v) for v in back] == [type(v) for v in values]


def test_row_encode_refuses_a_row_over_the_size_limit():
    """An encoded row larger than MAX_ROW_BYTES is refused with InvalidInput."""
    with pytest.raises(InvalidInput, match="limit"):
        rows.encode(1, [b"x" * MAX_ROW_BYTES])


def test_row_encode_accepts_a_row_just_under_the_size_limit():
    """A row whose encoding is within MAX_ROW_BYTES is accepted."""
    data = rows.encode(1, [b"x" * (MAX_ROW_BYTES - 64)])
    assert len(data) <= MAX_ROW_BYTES


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x01", msgpack.packb([1, 2]),
                                  msgpack.packb(["v", []]), msgpack.packb([1, 2, 3])],
                         ids=["empty", "reserved-byte", "int", "int-values", "str-version",
                              "three-items"])
def test_row_decode_of_garbage_raises_corrupt(data: bytes):
    """Bytes that are not a stored row raise Corrupt."""
    with pytest.raises(Corrupt):
        rows.decode(data)


@pytest.mark.parametrize("data", [msgpack.packb([1, "abc"]), msgpack.packb([1, {"a": 1}])],
                         ids=["str-values", "map-values"])
def test_row_decode_of_a_non_list_value_part_raises_corrupt(data: bytes):
    """A stored row whose values part is not a list raises Corrupt, not a list of its pieces."""
    with pytest.raises(Corrupt):
        rows.decode(data)


# -- packed rows: a layout per request, then values in its order --------------------------------


def _packed_schema():
    from storage import Column, Schema

    return Schema.build("p", [Column("id", "int64"), Column("v", "string", True),
                              Column("n", "int64"), Column("b", "bytes")], ["id"])


def test_a_packed_row_becomes_the_row_a_dict_would_give():
    s = _packed_schema()
    layout = s.layout(["n", "id", "v"])  # any order, a column left out
    assert s.row_from(layout, [3, 1, "a"]) == s.full_row({"id": 1, "v": "a", "n": 3}) == [
        1, "a", 3, None]
    assert s.key_from(s.row_from(layout, [3, 1, "a"])) == (1,)


def test_a_packed_row_is_validated_as_a_dict_row_is():
    import pytest

    from storage import InvalidInput

    s = _packed_schema()
    layout = s.layout(["id", "v", "n"])
    bad = [
        ([1, "a"], "1 column|2 value"),
        ([1, None, 2], "NOT NULL"),
        ([1, 5, 2], "column 'v' is string"),
        ([1, "a", True], "column 'n' is int64"),
        ([1, "a", 2**63], "column 'n' is int64"),
        (["1", "a", 2], "column 'id' is int64"),
    ]
    for values, message in bad:
        with pytest.raises(InvalidInput, match=message):
            s.row_from(layout, values)
    with pytest.raises(InvalidInput, match="NOT NULL and was not given"):
        s.row_from(s.layout(["id"]), [1])
    with pytest.raises(InvalidInput, match="no column 'x'"):
        s.layout(["id", "x"])
    with pytest.raises(InvalidInput, match="named twice"):
        s.layout(["id", "v", "id"])
