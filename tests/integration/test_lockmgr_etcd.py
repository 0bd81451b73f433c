"""The lock manager against a real etcd, without nodes: a transaction over many pages waits for
a conflict on any one of them, and only for that."""

from __future__ import annotations

import time
from collections.abc import Generator

import pytest

from lockmgr import EtcdClient, EtcdUnavailable, LockManager, LockMode, Resource, Session
from tests.harness.calls import Call, in_thread, join
from tests.harness.etcd import EtcdServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class _NoFence:
    def fence(self, lease_id: int) -> None:
        """No session dies here."""


@pytest.fixture
def lm(etcd: EtcdServer) -> Generator[LockManager, None, None]:
    client = EtcdClient(etcd.endpoint)
    session = Session(client, 5)
    m = LockManager(client, "t", "n1", _NoFence(), wait_timeout_s=5)
    m.attach(session)
    try:
        yield m
    finally:
        m.close()
        session.close()
        client.close()


def _rows(pages: range, table: str = "1") -> list[tuple[Resource, LockMode]]:
    return [(Resource(table, f"{p:04d}", f"r{p}"), LockMode.X) for p in pages]


@pytest.mark.parametrize("spread", [2, 8])
def test_a_transaction_over_many_pages_waits_for_a_conflict_on_any_of_them(
        lm: LockManager, spread: int) -> None:
    """B holds X on one row of one page; A asks for X on that row among rows of ``spread``
    pages: A waits until B releases, then gets all;
    rows of the same pages that nobody holds never block, and a page S lock waits for A."""
    b = lm.begin("b@n1")
    lm.acquire(b, _rows(range(1, 2)))
    a = lm.begin("a@n1")
    t, take = in_thread(lm.acquire, a, _rows(range(spread)))
    assert not take.done.wait(0.5), f"A was granted a row B holds: {take.describe()}"
    other = lm.begin("c@n1")
    lm.acquire(other, [(Resource("1", "0001", "other-row"), LockMode.X)], timeout_s=2)
    lm.release(other)
    lm.release(b)
    join(t, take, 5, "A's acquire after B released")
    assert all(Resource("1", f"{p:04d}", f"r{p}") in a.held for p in range(spread))
    scan = lm.begin("d@n1")
    started = time.monotonic()
    with pytest.raises(Exception) as timed_out:
        lm.acquire(scan, [(Resource("1", f"{spread - 1:04d}"), LockMode.S)], timeout_s=0.5)
    assert "lock_timeout" in str(timed_out.value).lower()
    assert time.monotonic() - started < 3
    lm.release(scan)
    lm.release(a)
    assert lm.flush_releases()


def _granted_within(lm: LockManager, txn, needs, seconds: float) -> Call:  # type: ignore[no-untyped-def]
    """Start ``lm.acquire(txn, needs)`` in a thread and give it ``seconds``; its call (``done``
    is set once it has been granted, or has failed: ``granted`` tells which)."""
    _, call = in_thread(lm.acquire, txn, needs)
    call.done.wait(seconds)
    return call


def granted(call: Call, seconds: float = 0.0) -> bool:
    """Whether the acquire of ``call`` was granted (within ``seconds`` more); an acquire that
    raised fails the test."""
    call.done.wait(seconds)
    assert call.unexpected is None and call.error is None, call.describe()
    return call.done.is_set()


def test_table_locks_conflict_across_the_split_of_intention_and_strong_entries(
        lm: LockManager) -> None:
    """A holds IX on the table (through a row); B's table S waits for A; C's row X (IX on the
    table) waits behind B's S (FIFO) though it is compatible with A; D's table IS does not
    wait for A (IS and IX are compatible) but waits for nothing else either."""
    a = lm.begin("a@n1")
    lm.acquire(a, _rows(range(1)))
    b = lm.begin("b@n1")
    b_done = _granted_within(lm, b, [(Resource("1"), LockMode.S)], 0.5)
    assert not granted(b_done), "a table S was granted over an IX"
    c = lm.begin("c@n1")
    c_done = _granted_within(lm, c, [(Resource("1", "0009", "r9"), LockMode.X)], 0.5)
    assert not granted(c_done), "an IX jumped over the S waiting before it"
    lm.release(a)
    assert granted(b_done, 5), "the table S was not granted once the IX went"
    assert not granted(c_done, 0.3), "the IX was granted while the S is held"
    lm.release(b)
    assert granted(c_done, 5), "the IX was not granted once the S went"
    d = lm.begin("d@n1")
    assert granted(_granted_within(lm, d, [(Resource("1", "0001", "r1"), LockMode.S)], 5))
    for t in (c, d):
        lm.release(t)
    assert lm.flush_releases()


def test_a_request_beyond_etcds_operation_limit_goes_in_batches_one_entry_per_page(
        lm: LockManager) -> None:
    """300 rows on 300 pages: more than one etcd transaction holds (128 operations), yet each
    page gets one entry carrying its row; the table's intention lock is the node's cached one
    (lock affinity), which stays after the transaction."""
    t = lm.begin("big@n1")
    lm.acquire(t, _rows(range(300)))
    mine = [e for e in lm.entries() if e.txn_id == t.txn_id]
    assert len(mine) == 300, len(mine)
    assert sorted(len(e.rows) for e in mine) == [1] * 300
    table = [e for e in lm.entries() if e.resource == "t/1"]
    assert [(e.txn_id, e.mode) for e in table] == [(lm.caches.owner(), LockMode.IX)]
    assert all(Resource("1", f"{p:04d}", f"r{p}") in t.held for p in range(300))
    lm.release(t)
    assert lm.flush_releases()
    assert not [e for e in lm.entries() if e.txn_id == t.txn_id]


def test_lock_waits_and_etcd_round_trips_are_told_to_their_observers(
        etcd: EtcdServer) -> None:
    """``on_wait`` hears one wait per conflict with its length and outcome (granted, then a
    timeout), and ``on_call`` every etcd round trip, by client method."""
    calls: list[tuple[str, float, bool]] = []
    waits: list[tuple[float, str]] = []
    client = EtcdClient(etcd.endpoint, on_call=lambda *c: calls.append(c))
    session = Session(client, 5)
    m = LockManager(client, "t", "n1", _NoFence(), wait_timeout_s=5,
                    on_wait=lambda s, how: waits.append((s, how)))
    m.attach(session)
    try:
        assert {op for op, _, _ in calls} >= {"grant", "txn"}
        assert all(s >= 0 and not failed for _, s, failed in calls)
        holder = m.begin("h@n1")
        m.acquire(holder, _rows(range(1)))
        assert waits == []  # granted at once: no wait
        waiter = m.begin("w@n1")
        t, take = in_thread(m.acquire, waiter, _rows(range(1)))
        time.sleep(0.3)
        m.release(holder)
        join(t, take, 5, "the waiter's acquire after the release")
        assert len(waits) == 1 and waits[0][1] == "granted" and waits[0][0] >= 0.25
        late = m.begin("l@n1")
        with pytest.raises(Exception, match="lock_timeout"):
            m.acquire(late, _rows(range(1)), timeout_s=0.3)
        assert [how for _, how in waits] == ["granted", "lock_timeout"]
        assert 0.25 <= waits[1][0] < 3
        m.release(late)
        m.release(waiter)
    finally:
        m.close()
        session.close()
        client.close()


def test_a_failed_etcd_call_is_told_as_failed() -> None:
    """A round trip to an etcd that is not there is told with ``failed`` set."""
    calls: list[tuple[str, float, bool]] = []
    client = EtcdClient("127.0.0.1:1", timeout_s=0.2, on_call=lambda *c: calls.append(c))
    try:
        with pytest.raises(EtcdUnavailable):
            client.put(b"k", b"v")
    finally:
        client.close()
    assert [(op, failed) for op, _, failed in calls] == [("put", True)]
