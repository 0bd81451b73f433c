"""The commit log over real gRPC from real nodes: replaying what ``ReadLog`` returns onto an empty
store reproduces the volume, the leader keeps the log in bounds, and a position that is gone
gets OUT_OF_RANGE naming the oldest one held."""

from __future__ import annotations

import re

import grpc
import msgpack
import pytest

from shardless import connect
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from storage import Store, open_volume
from storage.commitlog import decode
from storage.keys import log as log_key
from storage.memory import MemoryEngine
from tests.harness.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _read_log(stub: rpc.ClusterServiceStub, **kw) -> list[api.LogRecord]:  # type: ignore[no-untyped-def]
    out: list[api.LogRecord] = []
    for m in stub.ReadLog(api.ReadLogRequest(**kw), timeout=30):
        out.extend(m.records)
    return out


def test_replaying_the_log_read_over_grpc_reproduces_the_volume(cluster: Cluster) -> None:
    """Tables made and dropped, rows put, updated and deleted, idempotent writes, through
    several nodes; then the log from position 1, replayed onto an empty store, equals the
    volume at the same position."""
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("acct", {"id": "int64", "owner": "string", "n": "int64"}, primary_key="id")
    db.create_table("gone", {"k": "string"}, primary_key="k")
    db.upsert("gone", [{"k": f"x{i}"} for i in range(30)])
    for i in range(40):
        db.upsert("acct", [{"id": i, "owner": f"o{i}", "n": i}])
    db.upsert("acct", [{"id": i, "owner": "batch", "n": -i} for i in range(0, 40, 3)],
              idempotency_key="batch-1")
    db.delete("acct", [(i,) for i in range(0, 40, 7)])
    db.drop_table("gone")
    db.close()

    # A consistent copy of the volume, read as any process of the host may.
    volume = open_volume(str(cluster.volume), map_size=1 << 30)
    try:
        with volume.read() as view:
            position = view.commit_position()
            expected = list(view.replicated_items())
    finally:
        volume.close()

    stub = rpc.ClusterServiceStub(grpc.insecure_channel(cluster.addresses[1]))
    records = _read_log(stub, start_position=1, max_records=position, batch_records=7)
    assert [r.position for r in records] == list(range(1, position + 1))
    replica = Store(MemoryEngine())
    with replica.write() as w:
        for r in records:
            w.apply_record(decode(log_key(r.position), r.data))
    with replica.read() as view:
        assert list(view.replicated_items()) == expected
        assert view.table("gone") is None and view.count(view.require_table("acct")) == 34
    first = msgpack.unpackb(records[0].data, raw=False)
    assert first["changes"] == [["acct", "create_table", []]] and first["ops"]
    assert records[0].ts == first["ts"] and records[0].node_id.startswith("node-")


def test_the_leader_trims_the_log_and_a_gone_position_is_out_of_range(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster("--log-keep", "1", n=1)
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("t", {"id": "int64"}, primary_key="id")
    for i in range(20):
        db.upsert("t", [{"id": i}])
    stub = rpc.ClusterServiceStub(grpc.insecure_channel(cluster.addresses[0]))
    before = stub.Status(api.StatusRequest(), timeout=10)
    assert before.log_oldest_position == 1 and before.log_bytes > 0
    # Records older than a second go at the leader's next cycle (one a second).
    cluster.wait_for(lambda: stub.Status(api.StatusRequest(), timeout=10).log_oldest_position
                     > before.commit_position, 15, message="the log trimmed")
    after = stub.Status(api.StatusRequest(), timeout=10)
    assert after.log_bytes < before.log_bytes
    with pytest.raises(grpc.RpcError) as gone:
        _read_log(stub, start_position=1)
    assert gone.value.code() == grpc.StatusCode.OUT_OF_RANGE
    held = re.search(r"oldest position held is (\d+)", gone.value.details() or "")
    assert held and int(held.group(1)) >= after.log_oldest_position, gone.value.details()
    # New commits are held, and start_position 0 begins at the oldest held.
    db.upsert("t", [{"id": 100}])
    got = _read_log(stub)
    assert got and got[0].position >= after.log_oldest_position
    assert got[-1].position == stub.Status(api.StatusRequest(), timeout=10).commit_position
    with pytest.raises(grpc.RpcError) as bad:
        _read_log(stub, batch_records=20_000)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _read_log(stub, start_position=10**9) == []  # the future: nothing yet
    db.close()
