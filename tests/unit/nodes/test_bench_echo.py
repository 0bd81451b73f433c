"""Unit tests of the echo baseline: the server answers the sizes asked, the stubs ask for the
sizes of Shardless's real responses (an in-process server on a free loopback port)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from nodes.bench.echo import STREAM, UNARY, build_server, header
from nodes.bench.targets import ACCOUNTS_TABLE, KV_TABLE
from nodes.bench.targets.cluster import RpcSession, channel, int_key
from nodes.bench.targets.echo import EchoStubs
from shardless.v1 import services_pb2 as api


@pytest.fixture
def address() -> Iterator[str]:
    """An echo server built as the bench builds it, serving on a free loopback port."""
    srv = build_server(max_workers=4)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        srv.stop(0).wait()


def test_server_answers_the_size_asked_in_the_messages_asked(address: str) -> None:
    """A unary call gets reply_size bytes; a stream gets them split over `messages`."""
    with grpc.insecure_channel(address) as ch:
        assert len(ch.unary_unary(UNARY)(header(1234) + b"payload", timeout=5)) == 1234
        parts = list(ch.unary_stream(STREAM)(header(1000, 2) + b"x", timeout=5))
        assert [len(p) for p in parts] == [500, 500]


def test_echo_stubs_return_shardless_shaped_replies_of_the_real_size(address: str) -> None:
    """Get returns a found row with the value size; a scan of 1000 rows comes as two
    messages of at most 512 rows, as the node streams them."""
    with channel(address) as ch:
        stubs = EchoStubs(ch, address, value_size=100)
        got = stubs.Get(api.GetRequest(table=KV_TABLE, key=int_key(7)), timeout=5)
        assert got.found and len(got.row.columns["v"].bytes_value) == 100
        scan = list(stubs.Scan(api.ScanRequest(table=KV_TABLE, limit=1000), timeout=5))
        assert [len(m.rows) for m in scan] == [512, 488]
        begun = stubs.Begin(api.BeginRequest(), timeout=5)
        assert begun.address == address


def test_shardless_operations_run_over_echo_stubs(address: str) -> None:
    """The very same operations as against Shardless run over the echo stubs (bank reads the
    canned balances)."""
    with channel(address) as ch:
        stubs = EchoStubs(ch, address, value_size=10)
        s = RpcSession(lambda _a: stubs, address, b"v" * 10, 5.0)
        assert s.read(1) == 1
        assert s.update(1) == 1
        assert s.batch_get([1, 2, 3]) == 3
        assert s.scan(1, 100) == 100
        assert s.rmw(1) == 1
        assert s.bank(1, 2, 5) == 2
        assert s.read_modify_write(3) == 1
    assert ACCOUNTS_TABLE != KV_TABLE
