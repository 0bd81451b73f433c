"""Unit tests of nodes.metrics: registries per process, the call interceptor (on an in-process
gRPC server with generic handlers, no node), the observers, the merge of a node's processes,
and the exposition endpoint."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from nodes.metrics import MetricsServer, NodeMetrics, merge_scrapes, parse_listen
from nodes.status import DecodeGuard

SERVICE = "t.Svc"


def _value(m: NodeMetrics, name: str, **labels: str) -> float:
    got = m.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def _calls(m: NodeMetrics, method: str, code: str) -> float:
    return _value(m, "shardless_grpc_calls_total", service=SERVICE, method=method, code=code)


def _timed(m: NodeMetrics, method: str) -> float:
    return _value(m, "shardless_grpc_call_duration_seconds_count", service=SERVICE,
                  method=method)


def _ok(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def _abort(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.ABORTED, "no")
    raise AssertionError("unreachable")


def _crash(request: bytes, context: grpc.ServicerContext) -> bytes:
    raise RuntimeError("bug")


def _stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    yield from (request, request, request)


def _strict(raw: bytes) -> bytes:
    if raw == b"garbage":
        raise ValueError("not a message")
    return raw


@pytest.fixture
def served() -> Iterator[tuple[NodeMetrics, grpc.Channel]]:
    """A server with the metrics' interceptor before DecodeGuard, and a channel to it."""
    m = NodeMetrics()
    pool = futures.ThreadPoolExecutor(max_workers=4)
    srv = grpc.server(pool, interceptors=[m.interceptor(), DecodeGuard()])
    uu = grpc.unary_unary_rpc_method_handler
    srv.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        "Ok": uu(_ok, request_deserializer=_strict), "Abort": uu(_abort), "Crash": uu(_crash),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream)})])
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield m, ch
    finally:
        ch.close()
        srv.stop(None).wait()
        pool.shutdown()


def _call(ch: grpc.Channel, method: str, body: bytes = b"x") -> grpc.StatusCode:
    try:
        ch.unary_unary(f"/{SERVICE}/{method}")(body, timeout=5)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def test_calls_are_counted_by_method_and_code_and_timed(
        served: tuple[NodeMetrics, grpc.Channel]) -> None:
    """Two OK calls, an ABORTED one and one that raised count under their own codes (the
    raise as UNKNOWN), each timed under its method."""
    m, ch = served
    assert _call(ch, "Ok") == grpc.StatusCode.OK
    assert _call(ch, "Ok") == grpc.StatusCode.OK
    assert _call(ch, "Abort") == grpc.StatusCode.ABORTED
    assert _call(ch, "Crash") == grpc.StatusCode.UNKNOWN
    assert _calls(m, "Ok", "OK") == 2 and _timed(m, "Ok") == 2
    assert _calls(m, "Abort", "ABORTED") == 1 and _calls(m, "Abort", "OK") == 0
    assert _calls(m, "Crash", "UNKNOWN") == 1 and _timed(m, "Crash") == 1
    assert _value(m, "shardless_grpc_call_duration_seconds_sum", service=SERVICE,
                  method="Ok") > 0


def test_a_request_that_decode_guard_refuses_is_counted_invalid_argument(
        served: tuple[NodeMetrics, grpc.Channel]) -> None:
    """The interceptor sits before DecodeGuard, so an undecodable request is counted."""
    m, ch = served
    assert _call(ch, "Ok", b"garbage") == grpc.StatusCode.INVALID_ARGUMENT
    assert _calls(m, "Ok", "INVALID_ARGUMENT") == 1 and _calls(m, "Ok", "OK") == 0


def test_a_stream_is_counted_once_when_it_ends(
        served: tuple[NodeMetrics, grpc.Channel]) -> None:
    """A server stream counts one call (OK) after its last message, not one per message."""
    m, ch = served
    got = list(ch.unary_stream(f"/{SERVICE}/Stream")(b"s", timeout=5))
    assert got == [b"s"] * 3
    assert _calls(m, "Stream", "OK") == 1 and _timed(m, "Stream") == 1


def test_an_unknown_method_is_not_counted(served: tuple[NodeMetrics, grpc.Channel]) -> None:
    """Method names come from registered handlers only: no series for made-up names."""
    m, ch = served
    assert _call(ch, "Nope") == grpc.StatusCode.UNIMPLEMENTED
    text = m.registry.get_sample_value
    assert text("shardless_grpc_calls_total", {"service": SERVICE, "method": "Nope",
                                               "code": "UNIMPLEMENTED"}) is None


def test_two_nodes_in_one_process_share_no_series() -> None:
    """Each NodeMetrics has a registry of its own (no import-time globals)."""
    a, b = NodeMetrics(), NodeMetrics()
    a.observe_group(3)
    a.observe_lock_wait(0.5, "granted")
    a.observe_etcd_call("txn", 0.002, False)
    a.observe_etcd_call("txn", 0.5, True)
    assert _value(a, "shardless_commit_group_size_sum") == 3
    assert _value(a, "shardless_lock_wait_seconds_count", outcome="granted") == 1
    assert _value(a, "shardless_etcd_request_duration_seconds_count", op="txn") == 2
    assert _value(a, "shardless_etcd_request_failures_total", op="txn") == 1
    assert _value(b, "shardless_commit_group_size_count") == 0
    assert _value(b, "shardless_etcd_request_duration_seconds_count", op="txn") == 0


def test_the_process_collector_reports_resident_memory() -> None:
    """process_resident_memory_bytes is there (Linux), and plausible."""
    assert _value(NodeMetrics(), "process_resident_memory_bytes") > 1 << 20


def test_the_endpoint_serves_the_registry_over_http() -> None:
    """Port 0 binds a free port; /metrics answers the exposition format; close frees it."""
    m = NodeMetrics()
    m.observe_group(2)
    url = m.serve("127.0.0.1:0")
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        assert "shardless_commit_group_size_sum 2.0" in text
    finally:
        m.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def test_a_taken_port_is_a_clear_error() -> None:
    """A second server on the same port fails with the address in the message."""
    m = NodeMetrics()
    first = MetricsServer(m.registry, "127.0.0.1:0")
    try:
        with pytest.raises(RuntimeError, match=f"127.0.0.1:{first.port}"):
            MetricsServer(m.registry, f"127.0.0.1:{first.port}")
    finally:
        first.close()


@pytest.mark.parametrize("spec", ["", "localhost", "h:x", "h:70000"])
def test_a_malformed_listen_address_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="--metrics-listen"):
        parse_listen(spec)


def test_listen_addresses_parse() -> None:
    assert parse_listen("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_listen(":9100") == ("0.0.0.0", 9100)
    assert parse_listen("[::1]:9100") == ("::1", 9100)


# -- a node of several processes ----------------------------------------------------------------


def _exposition(fill: Callable[[NodeMetrics], Any]) -> str:
    from prometheus_client import generate_latest

    m = NodeMetrics()
    fill(m)
    return generate_latest(m.registry).decode()


def test_merged_scrapes_label_each_worker_and_keep_one_family_per_name() -> None:
    """Two workers' expositions become one: every sample labelled with its worker, one
    family per name (the exposition stays valid), and a worker that did not answer is
    ``shardless_worker_up 0``."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    w0 = _exposition(lambda m: m.observe_group(2))
    w1 = _exposition(lambda m: (m.observe_group(3), m.observe_group(1)))
    merged = merge_scrapes([("n.w0", w0), ("n.w1", w1), ("n.w2", None)])

    class Fixed:
        def collect(self) -> Any:
            return merged

    reg = CollectorRegistry()
    reg.register(Fixed())
    text = generate_latest(reg).decode()
    names = [f.name for f in text_string_to_metric_families(text)]
    assert len(names) == len(set(names))
    assert text.count("# TYPE shardless_commit_group_size histogram") == 1
    get = reg.get_sample_value
    assert get("shardless_commit_group_size_sum", {"worker": "n.w0"}) == 2
    assert get("shardless_commit_group_size_count", {"worker": "n.w1"}) == 2
    assert get("shardless_worker_up", {"worker": "n.w1"}) == 1
    assert get("shardless_worker_up", {"worker": "n.w2"}) == 0
    assert get("process_resident_memory_bytes", {"worker": "n.w0"}) > 0
