"""Bulk loads with packed rows (``WriteRowsRequest.packed``) through a real node: the helper
sends many rows packed, they land as rows sent one message each would, a bad row or bad bytes
refuse the whole batch, and the idempotency key works as for any write."""

from __future__ import annotations

import grpc
import msgpack
import pytest

from shardless import connect, to_row
from shardless.client import PACK_MIN_ROWS
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from shardless.v1 import types_pb2 as pb
from tests.harness.cluster import Cluster

pytestmark = pytest.mark.integration


def _packed(columns: list[str], rows: list[list[object]]) -> pb.PackedRows:
    return pb.PackedRows(columns=columns, rows=msgpack.packb([[0, r] for r in rows],
                                                             use_bin_type=True))


def test_a_bulk_load_of_packed_rows_lands_whole_and_a_bad_batch_lands_not_at_all(
        cluster: Cluster) -> None:
    db = connect(cluster.addresses)
    db.create_table("t", {"id": "int64", "v": "string", "n": "int64", "b": "bytes"},
                    primary_key="id", not_null=["v"])
    rows = [{"id": i, "v": f"v{i}", "n": i * 2, "b": bytes([i % 256])} for i in range(5000)]
    rows[7] = {"id": 7, "v": "no n, no b"}  # absent columns are NULL, as with Row messages
    assert len(rows) >= PACK_MIN_ROWS
    position = db.insert("t", rows)
    got = list(db.scan("t"))
    assert len(got) == 5000 and got[7]["n"] is None and got[7]["b"] is None
    assert got[42]["v"] == "v42" and got[42]["b"] == bytes([42])
    assert {r.version for r in got} == {position}  # one commit

    stub = rpc.RowServiceStub(grpc.insecure_channel(cluster[1].address))
    cols = ["id", "v", "n"]

    def refused(request: api.WriteRowsRequest, method: str = "Insert") -> str:
        with pytest.raises(grpc.RpcError) as e:
            getattr(stub, method)(request, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
        return e.value.details() or ""

    batch = [[10_000 + i, "ok", i] for i in range(100)]
    batch[57] = [10_057, None, 1]
    assert "row 57" in refused(api.WriteRowsRequest(table="t", packed=_packed(cols, batch)))
    assert "not valid MessagePack" in refused(api.WriteRowsRequest(
        table="t", packed=pb.PackedRows(columns=cols, rows=b"\xc1\xff")))
    assert "[version, [value" in refused(api.WriteRowsRequest(
        table="t", packed=pb.PackedRows(columns=cols, rows=msgpack.packb([[1, 2, 3]]))))
    assert "either rows or packed" in refused(api.WriteRowsRequest(
        table="t", rows=[to_row({"id": 1, "v": "x"})], packed=_packed(cols, batch[:1])))
    assert "Insert and Upsert" in refused(api.WriteRowsRequest(
        table="t", packed=_packed(cols, batch[:1])), "Update")
    assert db.get("t", 10_000) is None

    # The idempotency key: a retry of the same packed request replays the first result.
    good = api.WriteRowsRequest(table="t", packed=_packed(cols, batch[:50]),
                                idempotency_key="bulk-1")
    first = stub.Upsert(good, timeout=10)
    again = rpc.RowServiceStub(db.channel).Upsert(good, timeout=10)
    assert again.replayed and again.commit_position == first.commit_position
    assert first.rows_affected == 50
    db.close()
