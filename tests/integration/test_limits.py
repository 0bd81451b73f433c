"""No client can stop the cluster (``nodes/limits.py``, ``docs/limits.md``): open read-only
transactions and unread scan streams are bounded per client and per node and refused beyond with
RESOURCE_EXHAUSTED naming the limit, while other clients' reads, writes and health checks go on;
a stream whose reader stalls is ended; a request that is not a valid message gets
INVALID_ARGUMENT."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shardless import connect, error_reason, to_key
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from tests.harness.cluster import Cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RE = grpc.StatusCode.RESOURCE_EXHAUSTED


@contextlib.contextmanager
def channels(address: str, n: int) -> Iterator[list[grpc.Channel]]:
    """``n`` channels to ``address``, each its own connection (a client of its own)."""
    # No BDP probing: the flow-control window stays small, so that a stream that is not read
    # fills it and waits (with probing, a connection's window can grow to hold a whole scan).
    made = [grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1),
                                                    ("grpc.http2.bdp_probe", 0)])
            for _ in range(n)]
    try:
        yield made
    finally:
        for ch in made:
            ch.close()


def _code(fn: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        fn()
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as ch:
        got = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
    return got.status == health_pb2.HealthCheckResponse.SERVING


def _others_work(cluster: Cluster, key: int) -> None:
    """A fresh client's write and read through every node, and health SERVING on each."""
    for node in cluster.live_nodes:
        with connect([node.address], refresh_s=None, attempts=1, timeout_s=5) as db:
            db.upsert("t", {"id": key, "v": f"from {node.node_id}"})
            assert db.get("t", key)["v"] == f"from {node.node_id}"
        assert _serving(node.address)


def test_read_only_transactions_are_bounded_per_client_and_per_node(
        make_cluster: Callable[..., Cluster]) -> None:
    """The issue's attack: one client opens 1,000 read-only transactions (each holds a slot of
    the volume's reader table, which every node shares), then 19 more clients do the same. With
    the default limits the first client gets 64 and then RESOURCE_EXHAUSTED naming the per-client
    limit; the node stops at 256 and names its own limit; everything else on every node goes
    on, and a client that ends a transaction can begin another."""
    cluster = make_cluster(n=2)
    with connect(cluster.addresses, refresh_s=None) as db:
        db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    target = cluster[0].address
    with channels(target, 20) as chans:
        first = rpc.TransactionServiceStub(chans[0])
        begun: list[tuple[rpc.TransactionServiceStub, str]] = []
        refused: list[str] = []
        for _ in range(1000):
            code, details = _code(lambda: begun.append(
                (first, first.Begin(api.BeginRequest(read_only=True), timeout=5)
                 .transaction_id)))
            if code != grpc.StatusCode.OK:
                assert code == RE, (code, details)
                refused.append(details)
        assert len(begun) == 64, len(begun)
        assert len(refused) == 936
        assert "--max-snapshots-per-client" in refused[0], refused[0]
        _others_work(cluster, 1)
        node_refusals: list[str] = []
        for ch in chans[1:]:
            stub = rpc.TransactionServiceStub(ch)
            for _ in range(64):
                code, details = _code(lambda s=stub: begun.append(
                    (s, s.Begin(api.BeginRequest(read_only=True), timeout=5).transaction_id)))
                if code != grpc.StatusCode.OK:
                    assert code == RE, (code, details)
                    node_refusals.append(details)
        assert len(begun) == 256, len(begun)
        assert any("its limit (--max-snapshots)" in d for d in node_refusals), node_refusals[:3]
        # A read-write transaction and every one-shot call still work, here and elsewhere.
        _others_work(cluster, 2)
        with connect([target], refresh_s=None, attempts=1, timeout_s=5) as db:
            txn = db.begin()
            txn.upsert("t", {"id": 3, "v": "in a read-write transaction"})
            txn.commit()
        # The open snapshots still read.
        stub, txn_id = begun[0]
        got = rpc.RowServiceStub(chans[0]).Get(api.GetRequest(
            table="t", key=to_key(1), transaction_id=txn_id),
            timeout=5)
        assert not got.found  # begun before row 1 was written
        # The first client ends one and can begin one again.
        stub.Rollback(api.RollbackRequest(transaction_id=txn_id), timeout=5)
        again = first.Begin(api.BeginRequest(read_only=True), timeout=5)
        assert again.transaction_id
        with pytest.raises(grpc.RpcError) as e:
            first.Begin(api.BeginRequest(read_only=True), timeout=5)
        assert e.value.code() == RE
        assert error_reason(e.value) == "LIMIT"  # and the limit in its metadata
    # Closing the channels does not end the transactions; the idle timeout does. Until then
    # the node still serves everyone else.
    _others_work(cluster, 4)


def _fill(db: Any, rows: int, size: int) -> None:
    pad = "x" * size
    for start in range(0, rows, 250):
        db.upsert("t", [{"id": i, "v": pad} for i in range(start, min(rows, start + 250))])


def test_unread_scan_streams_hold_no_more_than_their_limit_and_stalled_ones_end(
        make_cluster: Callable[..., Cluster]) -> None:
    """The issue's attack: 64 scan streams that are never read (they used to take all 64 gRPC
    workers: the node stopped answering, health included). Now each client connection gets 8
    and the node 16 (RESOURCE_EXHAUSTED beyond, naming the limit); the node keeps answering
    reads, writes and health checks; and after ``--stream-stall-timeout`` the stalled streams
    are ended (CANCELLED) and their slots are free for new scans."""
    stall_s = 3.0
    cluster = make_cluster("--stream-stall-timeout", str(stall_s), n=1)
    address = cluster[0].address
    with connect([address], refresh_s=None) as db:
        db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
        _fill(db, 3000, 4000)  # 12 MB: far more than the flow-control windows hold
    with channels(address, 8) as chans:
        opened: list[Any] = []
        refused: list[str] = []
        for i in range(64):
            ch = chans[0] if i < 10 else chans[1 + i % 7]  # the first client tries 10
            call = rpc.RowServiceStub(ch).Scan(api.ScanRequest(table="t"), timeout=120)
            try:
                next(call)  # its first message; never read again
                opened.append(call)
            except grpc.RpcError as e:
                assert e.code() == RE, (e.code(), e.details())
                refused.append(e.details() or "")
        t0 = time.monotonic()
        assert len(opened) == 16, len(opened)
        assert any("--max-streams-per-client" in d for d in refused), refused[:3]
        assert any("its limit (--max-streams)" in d for d in refused), refused[:3]
        # The node answers everything else while they stall.
        assert _serving(address)
        _others_work(cluster, 10**6)
        with connect([address], refresh_s=None, attempts=1, timeout_s=5) as db:
            assert len(db.batch_get("t", list(range(100)))) == 100
            with pytest.raises(grpc.RpcError) as e:
                list(db.scan("t"))
            assert e.value.code() == RE
        # The stalled streams end once they have waited stall_s for their readers.
        wait_for(lambda: _scan_all(address) == 3001, 30,  # the rows, and _others_work's
                 message="a new scan to succeed once the stalled streams ended")
        took = time.monotonic() - t0
        assert took >= stall_s - 0.5, f"streams ended after {took:.1f} s, before the stall"
        code, _ = _code(lambda: list(opened[0]))
        assert code == grpc.StatusCode.CANCELLED, code
        print(f"stalled streams ended {took:.1f} s after they stalled "
              f"(--stream-stall-timeout {stall_s:g})")


def _scan_all(address: str) -> int:
    try:
        with connect([address], refresh_s=None, attempts=1, timeout_s=10) as db:
            return len(list(db.scan("t")))
    except grpc.RpcError:
        return -1


@pytest.mark.parametrize("method", [
    "/shardless.v1.RowService/Get",  # unary
    "/shardless.v1.RowService/Scan",  # server stream
    "/shardless.v1.ClusterService/StreamPositions",  # client stream
    "/grpc.health.v1.Health/Check",
])
def test_garbage_bytes_get_invalid_argument_and_the_node_goes_on(
        cluster: Cluster, method: str) -> None:
    """Bytes that are not a protobuf message (a field tag of wire type 7, then junk) get
    INVALID_ARGUMENT naming the method, not INTERNAL; two hundred of them are logged a few
    times, not each; the node serves on."""
    address = cluster[0].address
    garbage = b"\x0f\xff\xff\xff\xff\xff"
    with grpc.insecure_channel(address) as ch:
        for _ in range(200):
            if method.endswith("Scan"):
                call: Any = ch.unary_stream(method)(garbage, timeout=5)
                code, details = _code(lambda c=call: list(c))
            elif method.endswith("StreamPositions"):
                code, details = _code(lambda: ch.stream_unary(method)(iter([garbage]),
                                                                      timeout=5))
            else:
                code, details = _code(lambda: ch.unary_unary(method)(garbage, timeout=5))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
            assert method in details, details
    assert _serving(address)
    with connect([address], refresh_s=None) as db:
        db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
        db.upsert("t", {"id": 1, "v": "fine"})
    log = cluster[0].log_path.read_text()
    assert "Exception deserializing" not in log
    assert 1 <= log.count("is not a valid message") <= 3, log.count("is not a valid message")
