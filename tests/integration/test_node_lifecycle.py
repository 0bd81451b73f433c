"""A node's life as operators and tools see it: health, reflection, SIGTERM, and the README."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from shardless import connect
from tests.harness.cluster import Cluster, wait_for

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def test_health_and_reflection_answer_like_standard_grpc_tools_expect(cluster: Cluster) -> None:
    """The health service says SERVING and reflection lists every Shardless service."""
    with grpc.insecure_channel(cluster[0].address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "shardless.v1.RowService"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = list(refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
        names = {s.name for s in answers[0].list_services_response.service}
        # Reflection v1 (what newer tools ask first) answers too: the same messages under
        # another package name.
        v1 = ch.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        asked = [reflection_pb2.ServerReflectionRequest(list_services=""),
                 reflection_pb2.ServerReflectionRequest(
                     file_containing_symbol="shardless.v1.RowService")]
        got = list(v1(iter(asked), timeout=5))
        names_v1 = {s.name for s in got[0].list_services_response.service}
        assert got[1].file_descriptor_response.file_descriptor_proto, got[1]
    wanted = {"shardless.v1.TableService", "shardless.v1.RowService",
              "shardless.v1.TransactionService", "shardless.v1.ClusterService",
              "grpc.health.v1.Health"}
    assert wanted <= names
    assert wanted | {"grpc.reflection.v1.ServerReflection",
                     "grpc.reflection.v1alpha.ServerReflection"} <= names_v1


def test_sigterm_finishes_in_flight_calls_and_leaves_the_member_list_at_once(
        cluster: Cluster) -> None:
    """SIGTERM: in-flight writes complete, the node exits 0, its member key goes well before the
    lease TTL would expire it."""
    victim = cluster[2]
    db = connect([victim.address])
    db.create_table("t", {"k": "int64"}, primary_key="k")
    others = connect([cluster[0].address])
    results: list[object] = []
    unexpected: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        k = 0
        try:
            while not stop.is_set():
                k += 1
                try:
                    db.insert("t", {"k": k})
                    results.append(k)
                except grpc.RpcError as e:
                    results.append(e.code())
                    return
        except BaseException as e:  # reported below
            unexpected.append(e)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        wait_for(lambda: len(results) > 20 or unexpected, 20, message="writes before SIGTERM")
        assert not unexpected, f"the writer raised {unexpected[0]!r}"
        sent = time.monotonic()
        assert victim.terminate(timeout_s=20) == 0
        gone = wait_for(lambda: victim.node_id not in {m.node_id for m in
                                                       others.status().members}
                        and time.monotonic(), 10, message="member key to go")
    finally:
        stop.set()
        t.join(timeout=20)
    assert not t.is_alive(), "the writer did not finish"
    assert not unexpected, f"the writer raised {unexpected[0]!r}"
    assert gone - sent < cluster.ttl_s, "member key lasted as long as the lease: not revoked"
    acked = [r for r in results if isinstance(r, int)]
    failures = [r for r in results if not isinstance(r, int)]
    # After shutdown began, new calls are refused: UNAVAILABLE from the node's gate, or
    # CANCELLED if one reaches the transport as it closes. Neither applied anything (below).
    assert all(f in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
               for f in failures), failures
    present = {r["k"] for r in others.scan("t")}
    assert set(acked) <= present
    assert present - set(acked) == set(), "a write was applied that was not acknowledged"
    db.close()
    others.close()


def test_the_readme_client_example_runs(cluster: Cluster) -> None:
    """The README's five-line helper example works against a real cluster."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    for code in blocks:
        code = re.sub(r'\["127\.0\.0\.1:50051".*?\]', repr(cluster.addresses), code)
        code = code.replace('"127.0.0.1:50051"', repr(cluster[0].address))
        exec(compile(code, "README.md", "exec"), {})
    with connect(cluster.addresses) as db:
        assert db.get("users", 1)["name"] == "Ada"
        assert db.get("users", 4)["name"] == "barbara"
        assert db.get("users", 3)["name"] == "edsger"
