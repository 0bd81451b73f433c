"""Unit tests of nodes.limits (budgets, the stream watch) and of transaction ids (nodes.txn):
pure logic, no servers."""

from __future__ import annotations

import threading

import pytest

from nodes.limits import Admission, Budget, Limits, ResourceExhausted, StreamWatch
from nodes.txn import TransactionManager, Txn, TxnAborted, UnknownTransaction, WrongNode


def test_a_budget_refuses_past_the_client_limit_then_past_the_node_limit():
    b = Budget("open things", "--max-things", total=3, per_client=2)
    b.take("a")
    b.take("a")
    with pytest.raises(ResourceExhausted) as e:
        b.take("a")
    assert e.value.limit == "--max-things-per-client"
    assert "this client holds 2 open things" in str(e.value)
    b.take("b")
    with pytest.raises(ResourceExhausted) as e:
        b.take("c")  # c holds none, but the node holds 3
    assert e.value.limit == "--max-things"
    assert b.held == 3
    b.give("a")
    b.take("c")
    assert b.held == 3


def test_giving_back_what_was_never_taken_changes_nothing():
    b = Budget("open things", "--max-things", total=1, per_client=1)
    b.give("a")
    b.take("a")
    with pytest.raises(ResourceExhausted):
        b.take("b")
    b.give("b")  # b holds nothing: the node's count must not drop
    with pytest.raises(ResourceExhausted):
        b.take("b")


def test_holding_gives_back_when_the_block_fails():
    b = Budget("open things", "--max-things", total=1, per_client=1)
    with pytest.raises(RuntimeError), b.holding("a"):
        raise RuntimeError("boom")
    assert b.held == 0
    b.take("a")


def test_limits_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="positive"):
        Limits(streams=0).validated()
    with pytest.raises(ValueError, match="streams_per_client exceeds streams"):
        Limits(streams=2, streams_per_client=3).validated()
    with pytest.raises(ValueError, match="snapshots exceeds transactions"):
        Limits(transactions=10, transactions_per_client=10, snapshots=20,
               snapshots_per_client=5).validated()


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_watch_cancels_a_stream_whose_reader_stalls_and_only_that_one():
    clock = _Clock()
    watch = StreamWatch(10.0, clock=clock)
    cancelled: list[str] = []
    slow = watch.watch("slow", iter(range(5)), lambda: cancelled.append("slow"))
    busy = watch.watch("busy", iter(range(5)), lambda: cancelled.append("busy"))
    next(slow)  # handed a message to its reader, which never asks for the next
    next(busy)
    clock.now = 6.0
    next(busy)  # this reader took its message and asked again
    clock.now = 9.9
    assert watch.check() == 0  # slow has waited 9.9 s, less than 10
    clock.now = 10.5
    # slow waits since 0.0 (10.5 s > 10 s), busy since 6.0 (4.5 s)
    assert watch.check() == 1
    assert cancelled == ["slow"]
    assert watch.cancelled == 1
    assert watch.check() == 0  # cancelled once, not again


def test_time_spent_producing_a_message_is_not_a_stall():
    clock = _Clock()
    watch = StreamWatch(1.0, clock=clock)
    cancelled: list[int] = []

    def produce():
        yield 1
        clock.now += 100.0  # e.g. waiting for a lock before the next message
        watch.check()
        yield 2

    out = watch.watch("s", produce(), lambda: cancelled.append(1))
    assert next(out) == 1
    assert next(out) == 2
    assert cancelled == []


def test_a_finished_stream_is_no_longer_watched():
    clock = _Clock()
    watch = StreamWatch(1.0, clock=clock)
    assert list(watch.watch("s", iter([1, 2]), lambda: None)) == [1, 2]
    clock.now = 50.0
    assert watch.check() == 0


@pytest.fixture
def txns():
    managers: list[TransactionManager] = []

    def make(node_id: str = "n1", key: str = "cluster-a") -> TransactionManager:
        m = TransactionManager(node_id, "127.0.0.1:1", None, None, None,  # type: ignore[arg-type]
                               id_key=key)
        managers.append(m)
        return m

    yield make
    for m in managers:
        m.close()


def test_an_id_of_an_earlier_life_of_the_node_is_node_restarted(txns):
    earlier = txns()
    txn_id = earlier._next_id()
    later = txns()
    later.started_ms = earlier.started_ms + 1  # a process started after the earlier one
    later.incarnation = later._incarnation(later.started_ms, "abcd")
    with pytest.raises(TxnAborted) as e:
        later._lookup(txn_id)
    assert e.value.reason == "NODE_RESTARTED"


def test_an_id_no_life_of_the_node_issued_is_not_found(txns):
    m = txns()
    other_cluster = txns(key="cluster-b")  # same node id, another cluster's key
    forged = [
        f"deadbeef.1@{m.node_id}",  # not the form of an incarnation
        f"1-ab-123456.1@{m.node_id}",  # the form, with a wrong check
        f"{other_cluster._incarnation(m.started_ms - 5, 'ab12')}.1@{m.node_id}",
    ]
    for txn_id in forged:
        with pytest.raises(UnknownTransaction, match="never begun"):
            m._lookup(txn_id)
    # An id of this very process that is not open is NOT_FOUND too.
    with pytest.raises(UnknownTransaction, match="not open"):
        m._lookup(m._next_id())


def test_an_id_from_the_future_of_the_node_is_not_found(txns):
    m = txns()
    later = m._incarnation(m.started_ms + 60_000, "ab12")
    with pytest.raises(UnknownTransaction):
        m._lookup(f"{later}.1@{m.node_id}")


def test_another_nodes_id_is_wrong_node(txns):
    m = txns()
    with pytest.raises(WrongNode, match="belongs to node n2"):
        m._lookup(txns(node_id="n2")._next_id())


def test_budget_counts_are_exact_under_threads():
    b = Budget("open things", "--max-things", total=10_000, per_client=10_000)

    def churn(client: str) -> None:
        for _ in range(2000):
            b.take(client)
            b.give(client)

    threads = [threading.Thread(target=churn, args=(f"c{i % 3}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.held == 0


def _buffering(limits: Limits) -> TransactionManager:
    return TransactionManager("n1", "127.0.0.1:1", None, None, None,  # type: ignore[arg-type]
                              admission=Admission(limits))


def test_a_transaction_is_refused_writes_past_its_buffer_limit_and_the_node_counts_none():
    """900 bytes buffered of a 1,000-byte limit: a call of 200 more is refused naming
    --max-transaction-mb, and the node's buffer budget still counts only the 900."""
    m = _buffering(Limits(transaction_bytes=1000, buffered_bytes=5000))
    try:
        t = Txn("t1", read_only=False, started_at=0.0, last_used=0.0)
        m._buffer(t, 900)
        t.staging.staged_bytes = 900  # what merging the call's staging does
        with pytest.raises(ResourceExhausted) as e:
            m._buffer(t, 200)
        assert e.value.limit == "--max-transaction-mb"
        assert "the transaction stays open" in str(e.value)
        assert m.admission.buffered.held == 900 == t.buffered
    finally:
        m.close()


def test_open_transactions_together_are_refused_past_the_node_buffer_limit():
    """Two transactions of 600 bytes each against a node limit of 1,000: the second is
    refused naming --max-buffered-mb; once the first ends its bytes are given back."""
    m = _buffering(Limits(transaction_bytes=1000, buffered_bytes=1000))
    try:
        t1 = Txn("t1", read_only=False, started_at=0.0, last_used=0.0)
        t2 = Txn("t2", read_only=False, started_at=0.0, last_used=0.0)
        m.admission.transactions.take("")
        m._buffer(t1, 600)
        with pytest.raises(ResourceExhausted) as e:
            m._buffer(t2, 600)
        assert e.value.limit == "--max-buffered-mb"
        m._finish(t1, "ROLLED_BACK", "", release=False)
        assert m.admission.buffered.held == 0
        m._buffer(t2, 600)
    finally:
        m.close()
