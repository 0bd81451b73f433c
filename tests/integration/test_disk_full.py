"""A full volume: writes fail with RESOURCE_EXHAUSTED and a clear message on every node,
nothing committed is damaged, and writing resumes on every node once one node is restarted with
a bigger --map-size (the others take the new size up without a restart)."""

from __future__ import annotations

import grpc
import pytest

from shardless import connect
from tests.harness.cluster import Cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(180)]

SMALL = 4 << 20
BIG = 64 << 20
ROW = "x" * 1000


def _set_map_size(node, size: int) -> None:  # type: ignore[no-untyped-def]
    args = list(node.extra_args)
    i = args.index("--map-size")
    args[i + 1] = str(size)
    node.extra_args = tuple(args)


def test_a_full_volume_refuses_writes_keeps_data_and_resumes_when_grown(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster("--map-size", str(SMALL))
    pinned = [connect([a], attempts=1, refresh_s=None) for a in cluster.addresses]
    pinned[0].create_table("blob", {"id": "int64", "v": "string"}, primary_key="id")
    acked = 0
    with pytest.raises(grpc.RpcError) as full:
        while True:
            pinned[acked // 50 % 3].insert(
                "blob", [{"id": acked + i, "v": ROW} for i in range(50)])
            acked += 50
            assert acked < 100_000, "the volume never filled up"
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, full.value
    message = full.value.details() or ""
    assert "full" in message and "--map-size" in message, message
    assert acked >= 500
    for c in pinned:  # every node refuses, and changes nothing
        with pytest.raises(grpc.RpcError) as refused:
            c.insert("blob", [{"id": 10**9 + i, "v": ROW} for i in range(50)])
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        rows = list(c.scan("blob"))
        assert [r["id"] for r in rows] == list(range(acked))
        assert all(r["v"] == ROW for r in rows)
        assert c.get("blob", acked - 1)["v"] == ROW

    # Grow: restart one node with a bigger map; its first commit records the size, and the
    # others adopt it at their next write or read.
    _set_map_size(cluster[0], BIG)
    cluster[0].terminate()
    cluster[0].restart()
    pinned[0].close()
    # Retries on: gRPC shares the connection to an address between channels, and the one to
    # the restarted node may still be in its reconnect backoff (up to 1 s), failing fast.
    pinned[0] = connect([cluster[0].address], refresh_s=None)
    more = acked
    for c in pinned:
        for _ in range(4):
            c.insert("blob", [{"id": more + i, "v": ROW} for i in range(50)])
            more += 50
    assert more > acked
    for c in pinned:
        wait_for(lambda c=c: c.describe_table("blob").row_count == more, 10,
                 message="every node to see every row")
        ids = [r["id"] for r in c.scan("blob")]
        assert ids == list(range(more))
    for c in pinned:
        c.close()
