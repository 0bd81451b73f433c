"""Packed rows (``PackedRows``; ``packed`` on BatchGet and Scan) against the plain form, with a
real node over real gRPC: the same rows, versions and NULLs, through every path the node takes
(stored rows passed on as they are, projections and filters re-packed, transactions' own
writes, reverse scans, scans of several messages), and the same errors.
"""

from __future__ import annotations

import grpc
import pytest

from shardless import connect
from shardless.client import Record, from_packed, from_row, to_filter, to_key
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from shardless.v1 import types_pb2 as pb
from tests.harness.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

COLUMNS = {"id": "int64", "b": "bool", "d": "double", "s": "string", "raw": "bytes"}
N = 1_200  # more than one scan message (512 rows each)


def _row(i: int) -> dict:  # type: ignore[type-arg]
    return {"id": i, "b": i % 2 == 0, "d": i / 7 if i % 5 else None, "s": f"é{i}" * (i % 4),
            "raw": bytes([i % 256]) * (i % 3) if i % 11 else None}


def _scan(stub: rpc.RowServiceStub, packed: bool, **kw) -> list[Record]:  # type: ignore[no-untyped-def]
    out: list[Record] = []
    for m in stub.Scan(api.ScanRequest(table="t", packed=packed, **kw), timeout=20):
        if packed:
            assert not m.rows and m.HasField("packed")
            out.extend(r for r in from_packed(m.packed) if r is not None)
        else:
            assert not m.HasField("packed")
            out.extend(from_row(r) for r in m.rows)
    return out


def _batch(stub: rpc.RowServiceStub, packed: bool, keys: list[int], **kw  # type: ignore[no-untyped-def]
           ) -> list[Record | None]:
    resp = stub.BatchGet(api.BatchGetRequest(table="t", keys=[to_key(k) for k in keys],
                                             packed=packed, **kw), timeout=20)
    if packed:
        assert not resp.results
        return from_packed(resp.packed)
    return [from_row(r.row) if r.found else None for r in resp.results]


def _same(a: list[Record | None], b: list[Record | None]) -> None:
    assert [None if r is None else (dict(r), r.version) for r in a] == \
        [None if r is None else (dict(r), r.version) for r in b]


def test_packed_reads_give_what_plain_reads_give(cluster: Cluster) -> None:
    db = connect([cluster.addresses[0]], refresh_s=None)
    db.create_table("t", COLUMNS, primary_key="id")
    for lo in range(0, N, 400):
        db.upsert("t", [_row(i) for i in range(lo, min(N, lo + 400))])
    with grpc.insecure_channel(cluster.addresses[0]) as ch:
        stub = rpc.RowServiceStub(ch)
        whole = _scan(stub, True)
        assert [dict(r) for r in whole] == [_row(i) for i in range(N)]
        assert all(r.version > 0 for r in whole)
        _same(whole, _scan(stub, False))
        for kw in ({"reverse": True}, {"limit": 513}, {"columns": ["s", "id"]},
                   {"filters": [to_filter(("id", ">=", 1000))]},
                   {"start": pb.Bound(key=to_key(10)), "end": pb.Bound(key=to_key(20))}):
            _same(_scan(stub, True, **kw), _scan(stub, False, **kw))
        keys = [5, -1, 7, N + 3, 0, 5]
        got = _batch(stub, True, keys)
        assert [None if r is None else r["id"] for r in got] == [5, None, 7, None, 0, 5]
        _same(got, _batch(stub, False, keys))
        _same(_batch(stub, True, keys, columns=["raw"]), _batch(stub, False, keys, columns=["raw"]))
    db.close()


def test_packed_reads_in_a_transaction_see_its_own_writes(cluster: Cluster) -> None:
    """Inside a transaction, packed BatchGet and Scan (the client helper's) see the
    transaction's staged writes, and their results equal the plain ones."""
    db = connect([cluster.addresses[1]], refresh_s=None)
    db.create_table("t", COLUMNS, primary_key="id")
    db.upsert("t", [_row(i) for i in range(20)])
    with db.begin() as txn:
        txn.upsert("t", {"id": 100, "s": "staged"})
        txn.delete("t", [3])
        got = txn.batch_get("t", [100, 3, 4], for_update=True)
        assert got[0] is not None and got[0]["s"] == "staged" and got[0]["d"] is None
        assert got[1] is None and got[2] is not None and dict(got[2]) == _row(4)
        with grpc.insecure_channel(txn.address) as ch:
            stub = rpc.RowServiceStub(ch)
            _same(_batch(stub, True, [100, 3, 4], transaction_id=txn.id),
                  _batch(stub, False, [100, 3, 4], transaction_id=txn.id))
            _same(_scan(stub, True, transaction_id=txn.id, columns=["id", "s"]),
                  _scan(stub, False, transaction_id=txn.id, columns=["id", "s"]))
        ids = [r["id"] for r in txn.scan("t")]
        assert ids == [i for i in range(20) if i != 3] + [100]
    db.close()


def test_packed_reads_refuse_bad_input_as_plain_reads_do(cluster: Cluster) -> None:
    db = connect([cluster.addresses[2]], refresh_s=None)
    db.create_table("t", COLUMNS, primary_key="id")
    with grpc.insecure_channel(cluster.addresses[2]) as ch:
        stub = rpc.RowServiceStub(ch)
        for packed in (True, False):
            with pytest.raises(grpc.RpcError) as e:
                _batch(stub, packed, [1], columns=["nope"])
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, packed
            with pytest.raises(grpc.RpcError) as e:
                stub.BatchGet(api.BatchGetRequest(table="t", packed=packed, keys=[
                    pb.Key(parts=[pb.Value(string_value="x")])]), timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, packed
            with pytest.raises(grpc.RpcError) as e:
                list(stub.Scan(api.ScanRequest(table="missing", packed=packed), timeout=10))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND, packed
    db.close()
