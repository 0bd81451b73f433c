"""A fuzz test of the API against a real node (hypothesis): random messages for every method,
raw garbage bytes, and random batches of good and bad rows. The node never answers INTERNAL or
UNKNOWN (a crash or an unmapped error), keeps serving, and a refused batch writes none of its
rows."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as d
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardless import connect, to_key, to_row
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from tests.harness.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
SKIP = {"Drain"}  # a Drain without a node id makes the node leave: not a fuzz target
CALL_TIMEOUT_S = 2.0
BATCHES = "fuzz_batches"

_methods: list[tuple[str, d.MethodDescriptor]] = [
    (f"/{svc.full_name}/{m.name}", m)
    for svc in api.DESCRIPTOR.services_by_name.values() for m in svc.methods
    if m.name not in SKIP]

_names = st.sampled_from(["t", "id", "v", "n", "", "nope", "T", "x" * 300, "é", "\x00"])
_ints = st.sampled_from([0, 1, 2, 3, -1, 7, 2**31, 2**63 - 1, -(2**63)])


def _value(field: d.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    t = field.type
    if t == d.FieldDescriptor.TYPE_MESSAGE:
        return _message(field.message_type, depth + 1)
    if t == d.FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values] + [99])
    if t == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (d.FieldDescriptor.TYPE_STRING,):
        return _names | st.text(max_size=12)
    if t == d.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=16)
    if t in (d.FieldDescriptor.TYPE_DOUBLE, d.FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if field.name in ("min_position", "lifetime_ms", "start_position"):
        return st.integers(0, 3)  # past the head, a read waits out its deadline: slow
    unsigned = t in (d.FieldDescriptor.TYPE_UINT32, d.FieldDescriptor.TYPE_UINT64,
                     d.FieldDescriptor.TYPE_FIXED32, d.FieldDescriptor.TYPE_FIXED64)
    bits = 32 if t in (d.FieldDescriptor.TYPE_UINT32, d.FieldDescriptor.TYPE_INT32,
                       d.FieldDescriptor.TYPE_SINT32, d.FieldDescriptor.TYPE_FIXED32,
                       d.FieldDescriptor.TYPE_SFIXED32) else 64
    lo, hi = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return _ints.filter(lambda v: lo <= v <= hi) | st.integers(lo, hi)


def _message(desc: d.Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    """Random instances of the message type ``desc`` (some fields set, nesting bounded)."""
    if depth > 3:
        return st.just(None)
    fields = list(desc.fields)

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        from google.protobuf import message_factory

        msg = message_factory.GetMessageClass(desc)()
        for f in draw(st.lists(st.sampled_from(fields), max_size=4, unique_by=lambda f: f.name)
                      if fields else st.just([])):
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                key_f, val_f = f.message_type.fields_by_name["key"], \
                    f.message_type.fields_by_name["value"]
                for _ in range(draw(st.integers(0, 2))):
                    k, v = draw(_value(key_f, depth)), draw(_value(val_f, depth))
                    if v is None:
                        continue
                    target = getattr(msg, f.name)
                    if val_f.message_type is not None:
                        target[k].CopyFrom(v)
                    else:
                        target[k] = v
                continue
            count = draw(st.integers(0, 3)) if f.is_repeated \
                else 1
            for _ in range(count):
                v = draw(_value(f, depth))
                if v is None:
                    continue
                if f.is_repeated:
                    if f.message_type is not None:
                        getattr(msg, f.name).add().CopyFrom(v)
                    else:
                        getattr(msg, f.name).append(v)
                elif f.message_type is not None:
                    getattr(msg, f.name).CopyFrom(v)
                else:
                    setattr(msg, f.name, v)
        return msg

    return build()


@st.composite
def _calls(draw: st.DrawFn) -> tuple[str, d.MethodDescriptor, Any]:
    path, method = draw(st.sampled_from(_methods))
    return path, method, draw(_message(method.input_type))


def _call(ch: grpc.Channel, path: str, method: d.MethodDescriptor, request: bytes
          ) -> grpc.StatusCode:
    try:
        if method.client_streaming:
            ch.stream_unary(path)(iter([request]), timeout=CALL_TIMEOUT_S)
        elif method.server_streaming:
            for _ in ch.unary_stream(path)(request, timeout=CALL_TIMEOUT_S):
                pass
        else:
            ch.unary_unary(path)(request, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def _log(c: Cluster) -> str:
    """The node's last log lines, for a failure's message (a module fixture's logs are not
    attached to the report)."""
    return c[0].log_tail(60)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("fuzz"), n=1) as c:
        with connect(c.addresses, refresh_s=None) as db:
            for name in ("t", BATCHES):  # t for the random calls; BATCHES they do not name
                db.create_table(name, {"id": "int64", "v": "string", "n": "int64"},
                                primary_key="id", not_null=["v"])
        yield c


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(call=_calls())
def test_random_messages_for_every_method_get_a_clear_status(node: Cluster, call: Any) -> None:
    path, method, request = call
    with grpc.insecure_channel(node[0].address) as ch:
        code = _call(ch, path, method, request.SerializeToString())
    assert code not in BAD, (path, request, code, _log(node))
    assert node[0].is_alive, _log(node)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=st.sampled_from(_methods), garbage=st.binary(min_size=1, max_size=64))
def test_garbage_bytes_for_every_method_get_a_clear_status(node: Cluster, method: Any,
                                                           garbage: bytes) -> None:
    path, desc = method
    with grpc.insecure_channel(node[0].address) as ch:
        code = _call(ch, path, desc, garbage)
    assert code not in BAD, (path, garbage, code, _log(node))


_ids = itertools.count(1_000_000, 100)
_cells = st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=8), st.none(),
                   st.booleans(), st.floats(allow_nan=False), st.binary(max_size=4))


@st.composite
def _batches(draw: st.DrawFn) -> tuple[str, list[dict[str, Any]]]:
    """A write call and a batch of rows, each well-formed or broken in one random way."""
    kind = draw(st.sampled_from(["Insert", "Upsert"]))
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        row: dict[str, Any] = {"v": "ok", "n": draw(st.integers(0, 9))}
        broken = draw(st.sampled_from(["", "", "", "v", "n", "extra", "v-null"]))
        if broken in ("v", "n"):
            row[broken] = draw(_cells)
        elif broken == "extra":
            row[draw(_names)] = draw(_cells)
        elif broken == "v-null":
            row["v"] = None
        rows.append(row)
    return kind, rows


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=_batches())
def test_a_batch_with_a_bad_row_writes_none_of_its_rows(node: Cluster, batch: Any) -> None:
    kind, rows = batch
    base = next(_ids)
    for i, r in enumerate(rows):
        r["id"] = base + i
    with grpc.insecure_channel(node[0].address) as ch:
        stub = rpc.RowServiceStub(ch)
        try:
            request = api.WriteRowsRequest(table=BATCHES, rows=[to_row(r) for r in rows])
        except (TypeError, ValueError):
            return  # the client helper refuses to encode it: nothing was sent
        try:
            getattr(stub, kind)(request, timeout=CALL_TIMEOUT_S)
            ok = True
        except grpc.RpcError as e:
            assert e.code() not in BAD, (rows, e, _log(node))
            ok = False
        got = stub.BatchGet(api.BatchGetRequest(
            table=BATCHES, keys=[to_key(base + i) for i in range(len(rows))]), timeout=5)
    found = [g.found for g in got.results]
    assert found == [ok] * len(rows), (kind, rows, ok, found)
