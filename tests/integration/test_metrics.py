"""Node metrics over HTTP, from real node processes (``--metrics-listen``; docs/operations.md,
"Metrics").

What these tests pin down: the counters move by exactly what the clients did, on the node that
did it. Writes count as calls (by method and code) and as one-shot commits in groups; a
transaction that waits for a lock counts one granted lock wait (as long as it waited) on the
waiter's node only, and an interactive commit on the holder's; a lock wait that times out counts
an abort LOCK_TIMEOUT, a lock wait ended by the timeout and an ABORTED call; open transactions
and lock waiters show while they are there and go back to zero; etcd round trips, the volume's
bytes, reader slots and resident memory are reported. A node of two processes serves both
workers' metrics at its one address.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shardless import abort_reason, connect
from shardless.client import Client
from tests.harness.cluster import Cluster, Node, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LOCK_TIMEOUT_S = 3.0
ROW = "shardless.v1.RowService"
TXN = "shardless.v1.TransactionService"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of ``url``'s exposition, by name and labels."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 if absent: a labelled series appears at its first event)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


class Delta:
    """What moved on one node between :meth:`__init__` and each :meth:`__call__`."""

    def __init__(self, node: Node) -> None:
        self.url = node.metrics_url
        self.before = scrape(self.url)

    def __call__(self) -> Callable[..., float]:
        after = scrape(self.url)
        return lambda name, **labels: value(after, name, **labels) - value(
            self.before, name, **labels)


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    """Two nodes with metrics ports and a short lock timeout (logs shown on failure)."""
    return make_cluster("--lock-timeout", str(LOCK_TIMEOUT_S), n=2, metrics=True)


def _pinned(node: Node) -> Client:
    c = connect([node.address], timeout_s=20, refresh_s=None)
    c.attempts = 1  # no retry by the helper: each call here is one call on the node
    return c


def test_metrics_count_writes_lock_waits_and_aborts_on_the_node_that_saw_them(
        cluster: Cluster) -> None:
    """Writes, a waited-for lock and a lock timeout move each counter by exactly that much."""
    n1, n2 = cluster[0], cluster[1]
    c1, c2 = _pinned(n1), _pinned(n2)
    try:
        c1.create_table("acct", {"id": "int64", "bal": "int64"}, primary_key="id")
        d1, d2 = Delta(n1), Delta(n2)

        # -- five one-shot writes and one refused, on node 1 ----------------------------------
        for i in range(5):
            c1.insert("acct", {"id": i, "bal": 100})
        with pytest.raises(grpc.RpcError) as dup:
            c1.insert("acct", {"id": 0, "bal": 1})
        assert dup.value.code() == grpc.StatusCode.ALREADY_EXISTS
        m1 = d1()
        assert m1("shardless_grpc_calls_total", service=ROW, method="Insert", code="OK") == 5
        assert m1("shardless_grpc_calls_total", service=ROW, method="Insert",
                  code="ALREADY_EXISTS") == 1
        assert m1("shardless_grpc_call_duration_seconds_count", service=ROW,
                  method="Insert") == 6
        assert m1("shardless_commits_total", kind="one_shot") == 5
        assert m1("shardless_commit_group_size_sum") >= 6  # the refused one was in a group
        assert m1("shardless_commit_groups_total") >= 6
        assert d2()("shardless_commits_total", kind="one_shot") == 0

        # -- a transaction on node 2 waits for a row that one on node 1 holds -----------------
        d1, d2 = Delta(n1), Delta(n2)
        holder = c1.begin()
        holder.get("acct", 1, for_update=True)
        waiter = c2.begin()
        got: list[object] = []
        t = threading.Thread(target=lambda: got.append(waiter.get("acct", 1, for_update=True)),
                             daemon=True)
        t.start()
        try:
            wait_for(lambda: value(scrape(n2.metrics_url),
                                   "shardless_lock_waiting_transactions") == 1, 10,
                     message="node 2 reporting one lock waiter")
            mid = scrape(n2.metrics_url)
            assert value(mid, "shardless_open_transactions", mode="read_write") == 1
            assert value(scrape(n1.metrics_url), "shardless_open_transactions",
                         mode="read_write") == 1
            time.sleep(0.3)
            holder.update("acct", {"id": 1, "bal": 90})
            holder.commit()
            t.join(10)
            assert not t.is_alive() and got, "the waiter was not granted after the commit"
            waiter.update("acct", {"id": 1, "bal": 80})
            waiter.commit()
        finally:
            for txn in (holder, waiter):
                if not txn.done:
                    txn.rollback()
        m1, m2 = d1(), d2()
        assert m2("shardless_lock_wait_seconds_count", outcome="granted") == 1
        assert m2("shardless_lock_wait_seconds_sum", outcome="granted") >= 0.3
        assert m1("shardless_lock_wait_seconds_count", outcome="granted") == 0
        assert m1("shardless_commits_total", kind="interactive") == 1
        assert m2("shardless_commits_total", kind="interactive") == 1
        assert m2("shardless_grpc_calls_total", service=TXN, method="Commit", code="OK") == 1
        assert m1("shardless_transaction_aborts_total", kind="interactive",
                  reason="LOCK_TIMEOUT") == 0
        after = scrape(n2.metrics_url)
        assert value(after, "shardless_lock_waiting_transactions") == 0
        assert value(after, "shardless_open_transactions", mode="read_write") == 0

        # -- a lock wait on node 2 that times out: an abort -----------------------------------
        d1, d2 = Delta(n1), Delta(n2)
        holder = c1.begin()
        late = c2.begin()
        try:
            holder.get("acct", 2, for_update=True)
            with pytest.raises(grpc.RpcError) as timed_out:
                late.get("acct", 2, for_update=True)
            assert timed_out.value.code() == grpc.StatusCode.ABORTED
            assert abort_reason(timed_out.value) == "LOCK_TIMEOUT"
        finally:
            holder.rollback()
            if not late.done:
                try:
                    late.rollback()
                except grpc.RpcError:
                    pass
        m1, m2 = d1(), d2()
        assert m2("shardless_transaction_aborts_total", kind="interactive",
                  reason="LOCK_TIMEOUT") == 1
        assert m1("shardless_transaction_aborts_total", kind="interactive",
                  reason="LOCK_TIMEOUT") == 0
        assert m2("shardless_lock_wait_seconds_count", outcome="lock_timeout") == 1
        assert m2("shardless_lock_wait_seconds_sum", outcome="lock_timeout") >= \
            LOCK_TIMEOUT_S * 0.8
        assert m2("shardless_grpc_calls_total", service=ROW, method="Get",
                  code="ABORTED") == 1
    finally:
        c1.close()
        c2.close()

    # -- the rest: etcd, the volume, the process -----------------------------------------------
    s = scrape(n1.metrics_url)
    assert total(s, "shardless_etcd_request_duration_seconds_count", op="txn") > 0
    assert total(s, "shardless_etcd_request_duration_seconds_count", op="keepalive") > 0
    assert value(s, "shardless_volume_map_used_bytes") > 0
    assert value(s, "shardless_volume_disk_bytes") > 0
    assert value(s, "shardless_volume_map_size_bytes") >= value(
        s, "shardless_volume_map_used_bytes")
    assert value(s, "shardless_lmdb_reader_slots_max") > 0
    assert value(s, "shardless_lmdb_reader_slots", scope="volume", state="held") >= value(
        s, "shardless_lmdb_reader_slots", scope="process", state="held")
    assert value(s, "process_resident_memory_bytes") > 10 << 20
    assert value(s, "shardless_node_info", node_id=n1.node_id or "", version="0.1.0") == 1


def test_a_node_of_two_processes_serves_both_workers_metrics_at_its_address(
        make_cluster: Callable[..., Cluster]) -> None:
    """``--processes 2``: one scrape of the node's metrics address has every series once per
    worker (labelled ``worker``), and the inserts, wherever the kernel sent them, add up."""
    node = make_cluster("--processes", "2", n=1, metrics=True)[0]
    url = node.metrics_url
    workers = {f"{node.node_id}.w0", f"{node.node_id}.w1"}

    def both_up() -> bool:
        s = scrape(url)
        return all(value(s, "shardless_worker_up", worker=w) == 1 for w in workers)

    wait_for(both_up, 30, message="both workers answering the supervisor's scrape")
    before = scrape(url)
    db = connect([node.address], timeout_s=20, refresh_s=None)
    try:
        db.create_table("t", {"id": "int64"}, primary_key="id")
        for i in range(6):
            db.insert("t", {"id": i})
    finally:
        db.close()
    after = scrape(url)
    inserts = total(after, "shardless_grpc_calls_total", service=ROW, method="Insert",
                    code="OK") - total(before, "shardless_grpc_calls_total", service=ROW,
                                       method="Insert", code="OK")
    assert inserts == 6
    assert value(after, "shardless_worker_up", worker="supervisor") == 1
    for w in workers:
        assert value(after, "shardless_node_info", node_id=w, version="0.1.0", worker=w) == 1
        assert value(after, "process_resident_memory_bytes", worker=w) > 10 << 20
