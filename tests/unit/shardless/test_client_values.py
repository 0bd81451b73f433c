"""Unit tests of shardless.client: value conversion, channel setup, and retries over real gRPC."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from shardless import (
    Condition,
    Mutation,
    Record,
    connect,
    from_key,
    from_row,
    from_value,
    to_filter,
    to_key,
    to_row,
    to_value,
)
from shardless import client as client_mod
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as api_grpc
from shardless.v1 import types_pb2 as pb

WRITE_METHODS = {
    ("shardless.v1.RowService", m) for m in ("Insert", "Upsert", "Update", "Delete", "Write")
} | {
    ("shardless.v1.TableService", "CreateTable"),
    ("shardless.v1.TableService", "DropTable"),
    ("shardless.v1.TransactionService", "Execute"),
}

# --- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("py", "kind"),
    [
        (True, "bool_value"),
        (False, "bool_value"),
        (0, "int_value"),
        (-(2**63), "int_value"),
        (2**63 - 1, "int_value"),
        (1.5, "double_value"),
        (-0.0, "double_value"),
        (math.inf, "double_value"),
        ("", "string_value"),
        ("héllo ☃", "string_value"),
        (b"", "bytes_value"),
        (b"\x00\xff", "bytes_value"),
    ],
)
def test_value_round_trips_with_its_kind(py: object, kind: str) -> None:
    """Each supported Python type maps to its own Value kind and back unchanged."""
    v = to_value(py)  # type: ignore[arg-type]
    assert v.WhichOneof("kind") == kind
    back = from_value(pb.Value.FromString(v.SerializeToString()))
    assert back == py
    assert type(back) is type(py)


def test_none_is_a_value_with_no_kind() -> None:
    """None is sent as SQL NULL (no kind set) and read back as None."""
    assert to_value(None).WhichOneof("kind") is None
    assert from_value(pb.Value()) is None


def test_bool_is_not_stored_as_int() -> None:
    """True and False become bool_value, never int_value (bool is an int subclass)."""
    assert to_value(True) == pb.Value(bool_value=True)
    assert to_value(1) == pb.Value(int_value=1)
    assert to_value(True) != to_value(1)


def test_bytearray_and_memoryview_become_bytes() -> None:
    """Byte-like values are stored as bytes and read back as bytes."""
    assert from_value(to_value(bytearray(b"ab"))) == b"ab"
    assert from_value(to_value(memoryview(b"cd"))) == b"cd"


@pytest.mark.parametrize("big", [2**63, -(2**63) - 1, 10**30])
def test_int_outside_int64_is_rejected(big: int) -> None:
    """Integers that do not fit int64 raise ValueError instead of being truncated."""
    with pytest.raises(ValueError, match="int64"):
        to_value(big)


@pytest.mark.parametrize("bad", [object(), [1], {"a": 1}, 1 + 2j])
def test_unsupported_type_is_rejected(bad: object) -> None:
    """Values with no matching column type raise TypeError."""
    with pytest.raises(TypeError):
        to_value(bad)  # type: ignore[arg-type]


def test_row_round_trips_with_nulls_and_version() -> None:
    """A dict goes to a Row and back, keeping explicit NULLs; the version rides on the Record."""
    d = {"id": 7, "name": "ada", "ok": True, "score": 2.5, "blob": b"x", "gone": None}
    row = to_row(d)
    assert set(row.columns) == set(d)
    row.version = 42
    rec = from_row(pb.Row.FromString(row.SerializeToString()))
    assert isinstance(rec, Record)
    assert isinstance(rec, dict)
    assert rec == d
    assert rec.version == 42
    assert "version=42" in repr(rec)


def test_row_rejects_non_string_column_names() -> None:
    """Column names must be strings."""
    with pytest.raises(TypeError):
        to_row({1: "x"})  # type: ignore[dict-item]


# --- keys and filters ---------------------------------------------------------------------------


def test_scalar_key_has_one_part() -> None:
    """A scalar key is a one-part Key."""
    assert to_key(5) == pb.Key(parts=[pb.Value(int_value=5)])
    assert from_key(to_key("a")) == ("a",)


def test_tuple_and_list_keys_keep_their_order() -> None:
    """Tuples and lists become multi-part keys in the given order; a Key passes through."""
    k = to_key((1, "b", b"c", True))
    assert from_key(k) == (1, "b", b"c", True)
    assert to_key([1, "b"]) == to_key((1, "b"))
    assert to_key(k) is k
    assert to_key(()) == pb.Key()


def test_none_key_is_rejected() -> None:
    """A key cannot be None (key columns are never NULL)."""
    with pytest.raises(ValueError):
        to_key(None)


def test_key_parts_are_range_checked() -> None:
    """Key parts go through the same int64 check as values."""
    with pytest.raises(ValueError):
        to_key((1, 2**64))


@pytest.mark.parametrize(
    ("spec", "op"),
    [
        (("age", ">=", 30), pb.Filter.GE),
        (("age", "GT", 30), pb.Filter.GT),
        (("age", "=", 30), pb.Filter.EQ),
        (("age", "<>", 30), pb.Filter.NE),
        (("name", "is null"), pb.Filter.IS_NULL),
        (("name", "IS  NOT NULL"), pb.Filter.IS_NOT_NULL),
    ],
)
def test_filter_tuples_map_to_ops(spec: tuple[object, ...], op: int) -> None:
    """Filter tuples map to the matching Filter op, with the value converted."""
    f = to_filter(spec)
    assert f.column == spec[0]
    assert f.op == op
    if len(spec) == 3:
        assert from_value(f.value) == spec[2]


@pytest.mark.parametrize(
    "spec", [("age", "~", 1), ("age", ">="), ("age", "is null", 1), ("age", "=", None), ("age",)]
)
def test_bad_filters_are_rejected(spec: tuple[object, ...]) -> None:
    """Unknown ops, wrong arity and comparisons with NULL raise ValueError."""
    with pytest.raises(ValueError):
        to_filter(spec)


def test_column_type_names_and_aliases() -> None:
    """Type names and their Python aliases map to the ColumnType enum; others are rejected."""
    assert client_mod.column_type("int") == client_mod.column_type("INT64") == pb.COLUMN_TYPE_INT64
    assert client_mod.column_type("float") == pb.COLUMN_TYPE_DOUBLE
    assert client_mod.column_type("str") == pb.COLUMN_TYPE_STRING
    with pytest.raises(ValueError):
        client_mod.column_type("decimal")


def test_builders_set_kind_and_expected_version() -> None:
    """Mutation and Condition builders fill the right fields; expected_version stays optional."""
    m = Mutation.insert("t", {"id": 1})
    assert m.kind == pb.Mutation.INSERT
    assert not m.HasField("expected_version")
    m = Mutation.update("t", {"id": 1}, expected_version=0)
    assert m.HasField("expected_version")
    assert m.expected_version == 0
    assert Mutation.delete("t", {"id": 1}).kind == pb.Mutation.DELETE
    c = Condition.column_equals("t", 1, "name", None)
    assert c.WhichOneof("check") == "column_equals"
    assert Condition.version("t", (1, "a"), 0).WhichOneof("check") == "version"


# --- channel ------------------------------------------------------------------------------------


def test_target_lists_every_address_in_one_ipv4_target() -> None:
    """Several addresses (localhost mapped to 127.0.0.1) become one ipv4: target."""
    target = client_mod.channel_target(["127.0.0.1:50051", "localhost:50052", " 10.0.0.1:1 "])
    assert target == "ipv4:127.0.0.1:50051,127.0.0.1:50052,10.0.0.1:1"
    assert client_mod.channel_target("127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert client_mod.channel_target(["[::1]:1", "[::1]:2"]) == "ipv6:[::1]:1,[::1]:2"
    assert client_mod.channel_target("db.example:5") == "db.example:5"


@pytest.mark.parametrize(
    "addresses",
    [[], ["127.0.0.1"], ["127.0.0.1:x"], ["127.0.0.1:1", "[::1]:2"], ["a.example:1", "b:2"]],
)
def test_bad_addresses_are_rejected(addresses: list[str]) -> None:
    """Missing ports, mixed families and several host names raise ValueError."""
    with pytest.raises(ValueError):
        client_mod.channel_target(addresses)


def test_service_config_retries_only_safe_methods() -> None:
    """The retry policy names exactly the methods that change no data (reads, and Begin),
    all real, and no write."""
    options = dict(client_mod.channel_options())
    assert options["grpc.lb_policy_name"] == "round_robin"
    assert options["grpc.enable_retries"] == 1
    config = json.loads(options["grpc.service_config"])
    [method_config] = config["methodConfig"]
    named = {(n["service"], n["method"]) for n in method_config["name"]}
    assert named == {
        ("shardless.v1.RowService", "Get"),
        ("shardless.v1.RowService", "BatchGet"),
        ("shardless.v1.RowService", "Scan"),
        ("shardless.v1.TableService", "ListTables"),
        ("shardless.v1.TableService", "DescribeTable"),
        ("shardless.v1.ClusterService", "Status"),
        ("shardless.v1.TransactionService", "Begin"),
    }
    assert not named & WRITE_METHODS
    by_full_name = {s.full_name: s for s in api.DESCRIPTOR.services_by_name.values()}
    for service, method in named:
        assert method in by_full_name[service].methods_by_name, (service, method)
    every_method = {(s, m) for s, d in by_full_name.items() for m in d.methods_by_name}
    assert every_method >= WRITE_METHODS  # the write list above is itself real
    policy = method_config["retryPolicy"]
    assert policy == {
        "maxAttempts": 5,
        "initialBackoff": "0.05s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }


# --- real gRPC ----------------------------------------------------------------------------------


class FlakyRows(api_grpc.RowServiceServicer):
    """Fails the first Get and the first Insert with UNAVAILABLE, then answers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = {"Get": 0, "Insert": 0, "Scan": 0}
        self.requests: list[api.GetRequest] = []
        self.insert_keys: list[str] = []

    def _count(self, method: str) -> int:
        with self.lock:
            self.calls[method] += 1
            return self.calls[method]

    def Get(self, request: api.GetRequest, context: grpc.ServicerContext) -> api.GetResponse:
        if self._count("Get") == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "first Get fails")
        self.requests.append(request)
        row = to_row({"id": from_key(request.key)[0], "name": "ada"})
        row.version = 9
        return api.GetResponse(found=True, row=row)

    def Insert(self, request: api.WriteRowsRequest, context: grpc.ServicerContext
               ) -> api.WriteResponse:
        self.insert_keys.append(request.idempotency_key)
        if self._count("Insert") == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "first Insert fails")
        return api.WriteResponse(commit_position=10, rows_affected=len(request.rows))

    def Scan(self, request: api.ScanRequest, context: grpc.ServicerContext
             ) -> Iterator[api.ScanResponse]:
        self._count("Scan")
        yield api.ScanResponse(rows=[to_row({"id": 1}), to_row({"id": 2})])
        yield api.ScanResponse(rows=[to_row({"id": 3})])


@pytest.fixture
def flaky() -> Iterator[tuple[FlakyRows, int]]:
    servicer = FlakyRows()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    api_grpc.add_RowServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(grace=None).wait(timeout=5)


@pytest.mark.timeout(30)
def test_get_round_trips_and_is_retried_on_unavailable(flaky: tuple[FlakyRows, int]) -> None:
    """A Get answered UNAVAILABLE once is retried by the channel and returns the row."""
    servicer, port = flaky
    with connect([f"127.0.0.1:{port}"], timeout_s=5) as db:
        rec = db.get("users", 1, columns=["name"])
    assert rec == {"id": 1, "name": "ada"}
    assert rec is not None and rec.version == 9
    assert servicer.calls["Get"] == 2
    [request] = servicer.requests
    assert request.table == "users"
    assert list(request.columns) == ["name"]
    assert from_key(request.key) == (1,)


@pytest.mark.timeout(30)
def test_insert_without_idempotency_is_not_retried_on_unavailable(
        flaky: tuple[FlakyRows, int]) -> None:
    """With idempotent_writes off, an Insert answered UNAVAILABLE raises at once: a write
    without a key is never re-sent."""
    servicer, port = flaky
    with connect(f"localhost:{port}", timeout_s=5, idempotent_writes=False,
                 refresh_s=None) as db:
        with pytest.raises(grpc.RpcError) as err:
            db.insert("users", {"id": 1, "name": "ada"})
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert servicer.calls["Insert"] == 1
        assert db.insert("users", [{"id": 1}, {"id": 2}]) == 10
    assert servicer.calls["Insert"] == 2
    assert servicer.insert_keys == ["", ""]


@pytest.mark.timeout(30)
def test_insert_is_retried_on_unavailable_with_one_idempotency_key(
        flaky: tuple[FlakyRows, int]) -> None:
    """By default a write carries an idempotency key and is retried under that same key."""
    servicer, port = flaky
    with connect(f"localhost:{port}", timeout_s=5, refresh_s=None) as db:
        assert db.insert("users", {"id": 1, "name": "ada"}) == 10
    assert servicer.calls["Insert"] == 2
    assert len(set(servicer.insert_keys)) == 1 and servicer.insert_keys[0]


@pytest.mark.timeout(30)
def test_scan_yields_rows_across_messages(flaky: tuple[FlakyRows, int]) -> None:
    """Scan flattens the streamed messages into records in order."""
    _, port = flaky
    with connect([f"127.0.0.1:{port}"], timeout_s=5) as db:
        rows = list(db.scan("users", start=1, filters=[("id", ">", 0)]))
    assert [r["id"] for r in rows] == [1, 2, 3]
