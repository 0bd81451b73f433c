"""Read-only nodes on a replica's volume (``nodes/reader.py``), with real processes on one host:
a ``shardless node`` started on a replica's directory serves reads of the replica's copy at its
position, honours ``min_position`` (read-your-writes after a write on the primary), refuses
writes naming a primary node, and serves writes once the replica is promoted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from nodes.etcdserver import free_port
from nodes.up import NodeProcess, ReplicaProcess, node_env
from shardless import connect, error_reason, to_key
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from tests.harness.cluster import Cluster, wait_for
from tests.integration.test_promotion import (
    promote,
    replica_info,
    rows_of,
    serving,
    start_replica,
    sync_ready,
    writes_as_node,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def start_reader(cluster: Cluster, made: list[ReplicaProcess], tmp_path: Path,
                 replica: ReplicaProcess, name: str) -> NodeProcess:
    """A node process on ``replica``'s volume directory (cleaned up with the replicas)."""
    n = NodeProcess(name, etcd=cluster.etcd_endpoints, volume=replica.volume,
                    port=free_port(), log_path=tmp_path / name / "node.log", ttl_s=3)
    made.append(n)  # type: ignore[arg-type]
    n.start()
    return n


def test_a_node_on_a_replicas_volume_reads_at_its_position_refuses_writes_and_takes_over(
        make_cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(n=1)
    with connect(cluster.addresses, refresh_s=None) as db:
        db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
        db.upsert("t", [{"id": i, "v": f"a{i}"} for i in range(10)])
    r = start_replica(cluster, replicas, tmp_path, "r1", "sync", "--no-auto-promote")
    r.wait_serving(60)
    sync_ready(cluster, "r1")
    b = start_reader(cluster, replicas, tmp_path, r, "b1")
    wait_for(lambda: serving(b.address), 60, message="the read-only node serves")
    assert "read-only node b1" in b.log_tail(50)

    with connect(cluster.addresses, refresh_s=None) as db, \
            grpc.insecure_channel(b.address) as ch:
        rows = rpc.RowServiceStub(ch)
        # Read-your-writes: a write on the primary, then a read on b1 at least at its position.
        pos = db.upsert("t", {"id": 100, "v": "new"})
        got = rows.Get(api.GetRequest(table="t", key=to_key(100), min_position=pos),
                       timeout=10)
        assert got.found and got.row.columns["v"].string_value == "new"
        # A position far past the head: refused within the deadline, nothing done.
        with pytest.raises(grpc.RpcError) as e:
            rows.Get(api.GetRequest(table="t", key=to_key(1), min_position=pos + 10_000),
                     timeout=1.5)
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.DEADLINE_EXCEEDED), e.value
        # The change stream at the copy's position (the helper's watch, on b1 alone): the
        # write above, then one made after the stream began, as the replica applies it.
        with connect([b.address], refresh_s=None) as reader, \
                reader.watch("t", position=pos) as w:
            it = iter(w)
            c = next(it)
            assert (c.position, c.kind, c.key, c.row["v"]) == (pos, "put", (100,), "new")
            later = db.upsert("t", {"id": 101, "v": "later"})
            c = next(it)
            assert (c.position, c.kind, c.key, c.row["v"]) == (later, "put", (101,), "later")
        # Its own Status shows the copy's log held.
        own = rpc.ClusterServiceStub(ch).Status(api.StatusRequest(local_only=True), timeout=10)
        assert 0 < own.log_oldest_position <= pos and own.log_bytes > 0, own
        # Scans and read-only transactions see the copy.
        with connect([b.address], refresh_s=None) as reader:
            assert {row["id"] for row in reader.scan("t")} == {*range(10), 100, 101}
            t = reader.begin(read_only=True)
            assert t.get("t", 3)["v"] == "a3"
            t.commit()
        # Writes are refused, naming a primary node.
        with connect([b.address], refresh_s=None, attempts=1) as reader, \
                pytest.raises(grpc.RpcError) as e:
            reader.upsert("t", {"id": 5, "v": "no"})
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, e.value
        assert error_reason(e.value) == "READ_ONLY"
        assert cluster.addresses[0] in (e.value.details() or ""), e.value.details()
        assert db.get("t", 5)["v"] == "a5"

        # The primary's status lists it, at the copy's position.
        def listed() -> list[api.ReaderInfo]:
            return [rd for rd in db.status().readers if rd.node_id == "b1"]

        wait_for(lambda: listed() and listed()[0].position >= pos, 20,
                 message="status to list b1 at the copy's position")
        (rd,) = listed()
        assert rd.address == b.address and rd.volume_id == replica_info(cluster, "r1").volume_id  # type: ignore[union-attr]
        out = subprocess.run([sys.executable, "-m", "nodes", "status", cluster.addresses[0]],
                             capture_output=True, text=True, timeout=30, env=node_env())
        assert f"read-only node b1 at {b.address}" in out.stdout, out.stdout + out.stderr

    # The replica is promoted: the node on its volume turns into a node of the primary.
    got = promote(cluster, "r1")
    assert got.returncode == 0, got.stdout + got.stderr
    wait_for(lambda: writes_as_node(b.address), 60, message="b1 takes writes")
    with connect([b.address], refresh_s=None) as db:
        db.upsert("t", {"id": 200, "v": "via b1"})
    assert rows_of(r.address)[200] == "via b1"
    assert b.is_alive


def test_a_read_only_node_follows_its_replica_to_a_new_copy(
        make_cluster, replicas: list[ReplicaProcess], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The replica loses its place (the log trimmed past it while it was down), throws its copy
    away and takes a new one: the read-only node on its directory serves the new copy."""
    cluster: Cluster = make_cluster("--log-keep", "0", "--log-max-mb", "0.05", n=1)
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    db.upsert("t", {"id": -1, "v": "first"})
    r = start_replica(cluster, replicas, tmp_path, "r3", "async")
    r.wait_serving(60)
    b = start_reader(cluster, replicas, tmp_path, r, "b3")
    wait_for(lambda: serving(b.address), 60, message="the read-only node serves")
    r.kill()
    for i in range(40):  # ~4 KB per commit: far past the 50 KB bound
        pos = db.upsert("t", [{"id": j, "v": "x" * 30} for j in range(i * 40, i * 40 + 40)])
    # Meanwhile the node serves the old copy, as it was.
    with connect([b.address], refresh_s=None) as reader:
        assert [row["id"] for row in reader.scan("t")] == [-1]
    # The leader trims the log in its own cycle: wait until the replica's place is gone.
    wait_for(lambda: db.status().log_oldest_position > 3, 30,
             message="the log trimmed past the replica's place")
    r.start()
    wait_for(lambda: "lost its place" in r.log_tail(400), 60, message="the replica notices")

    def has_new_rows() -> bool:
        try:
            with grpc.insecure_channel(b.address) as ch:
                got = rpc.RowServiceStub(ch).Get(api.GetRequest(
                    table="t", key=to_key(1599), min_position=pos), timeout=2)
            return got.found
        except grpc.RpcError:
            return False

    wait_for(has_new_rows, 90, message="the read-only node serves the new copy")
    assert "replaced its copy" in b.log_tail(200)
    db.close()
