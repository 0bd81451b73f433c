"""A node frozen while it holds LMDB's one writer lock of the host (``nodes/deathwatch.py``):
once its session lease is gone its peers kill it, which frees the writer lock, so writes on the
other nodes go on within about the lease instead of for as long as the freeze lasts; the frozen
commit is not applied."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from nodes import faultpoints
from shardless import connect, to_row
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from tests.harness.cluster import Cluster, wait_for
from tests.integration.test_promotion import stopped

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(120)]

TTL_S = 3
FREEZE_S = 25.0  # how long the test would leave it frozen: far past the lease


def test_a_node_frozen_holding_the_writer_lock_is_killed_and_writes_go_on(
        make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster(n=2, ttl_s=TTL_S)
    with connect(cluster.addresses, refresh_s=None) as db:
        db.create_table("t", {"id": "int64", "v": "string"}, primary_key="id")
    frozen = cluster.add_node(env={faultpoints.ENV: f"{faultpoints.PAUSE_IN_COMMIT}=stuck-1"})
    answers: list[object] = []

    def stuck_write() -> None:
        with grpc.insecure_channel(frozen.address) as ch:
            try:
                answers.append(rpc.RowServiceStub(ch).Upsert(api.WriteRowsRequest(
                    table="t", rows=[to_row({"id": 1, "v": "stuck"})],
                    idempotency_key="stuck-1"), timeout=FREEZE_S + 10))
            except grpc.RpcError as e:
                answers.append(e)

    writer = threading.Thread(target=stuck_write, daemon=True)
    writer.start()
    try:
        wait_for(lambda: stopped(frozen.pid), 30,
                 message="the node to stop inside its write transaction")
        frozen_at = time.monotonic()
        # A write through another node waits for the writer lock, until the frozen one is
        # killed (its lease runs out within the TTL; a peer kills it a second or two later).
        with connect([cluster[0].address], refresh_s=None, attempts=1,
                     timeout_s=FREEZE_S) as db:
            db.upsert("t", {"id": 2, "v": "after"})
        took = time.monotonic() - frozen_at
    finally:
        frozen.resume()
    print(f"a write on another node went through {took:.1f} s after the freeze (TTL {TTL_S} s)")
    assert took < TTL_S + 5, f"writes stalled {took:.1f} s behind the frozen writer"
    assert frozen.wait(10) == -9, "the frozen node was not killed"
    logs = "".join(n.log_tail(200) for n in cluster.nodes if n is not frozen)
    assert "killing it (SIGKILL)" in logs
    with connect([cluster[0].address], refresh_s=None) as db:
        assert db.get("t", 2)["v"] == "after"
        assert db.get("t", 1) is None, "the frozen commit was applied"
    writer.join(30)
    assert answers and isinstance(answers[0], grpc.RpcError), answers  # its node died
