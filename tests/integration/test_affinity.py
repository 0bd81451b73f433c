"""Lock affinity against a real etcd: a node keeps its table intention lock between
transactions and gives it up promptly when anyone wants a conflicting mode
(``lockmgr/affinity.py``).

Two lock managers on one etcd stand for two nodes. What these tests pin down:

* a second transaction on the table rides the node's cached IX: it puts no table entry;
* a strong table request from another node waits while a rider holds locks under the table,
  is granted once the last rider releases, and no transaction rides the cache meanwhile (a new
  local one queues behind the strong request, FIFO);
* a rider that asks for a strong lock on its own table gets it (no self-deadlock), and one
  waiting for a strong requester that waits for the cache is a deadlock the detector breaks;
* a transaction that was establishing the cache and gave up leaves no cache entry behind.
"""

from __future__ import annotations

import time
from collections.abc import Generator

import pytest

from lockmgr import EtcdClient, LockManager, LockMode, Resource, Session
from tests.harness.calls import in_thread, join
from tests.harness.cluster import wait_for
from tests.harness.etcd import EtcdServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

IX, S, X = LockMode.IX, LockMode.S, LockMode.X
TABLE = Resource("1")


class _NoFence:
    def fence(self, lease_id: int) -> None:
        """No session dies here."""


@pytest.fixture
def nodes(etcd: EtcdServer) -> Generator[tuple[LockManager, LockManager], None, None]:
    made = []
    try:
        for name in ("n1", "n2"):
            client = EtcdClient(etcd.endpoint)
            session = Session(client, 5)
            lm = LockManager(client, "t", name, _NoFence(), wait_timeout_s=5)
            lm.attach(session)
            made.append((lm, session, client))
        yield made[0][0], made[1][0]
    finally:
        for lm, session, client in made:
            lm.close()
            session.close()
            client.close()


def row(n: int, mode: LockMode = X) -> tuple[Resource, LockMode]:
    return Resource("1", f"{n:04d}", f"r{n}"), mode


def table_entries(lm: LockManager) -> list[tuple[str, LockMode]]:
    return sorted((e.txn_id, e.mode) for e in lm.entries() if e.resource == "t/1")


def test_a_later_transaction_rides_the_cached_table_lock(
        nodes: tuple[LockManager, LockManager]) -> None:
    """The first transaction puts the node's cache entry; it stays after its release, and the
    next transaction of the node puts no table entry of its own."""
    n1, _ = nodes
    a = n1.begin("a@n1")
    n1.acquire(a, [row(1)])
    n1.release(a)
    assert n1.flush_releases()
    assert table_entries(n1) == [(n1.caches.owner(), IX)]
    rides = n1.caches.rides
    b = n1.begin("b@n1")
    n1.acquire(b, [row(2)])
    assert n1.caches.rides == rides + 1
    assert [e.resource for e in n1.entries() if e.txn_id == b.txn_id] == ["p/1/0002"]
    n1.release(b)


def test_a_strong_request_from_another_node_waits_for_the_riders_then_gets_the_table(
        nodes: tuple[LockManager, LockManager]) -> None:
    """A rides n1's cache; n2's table X waits; a new n1 transaction then queues behind it
    instead of riding; when A releases, the cache entry goes and X is granted, and the new
    transaction only after X is released."""
    n1, n2 = nodes
    a = n1.begin("a@n1")
    n1.acquire(a, [row(1)])
    drop = n2.begin("d@n2")
    t_drop, dropped = in_thread(n2.acquire, drop, [(TABLE, X)])
    assert not dropped.done.wait(0.5), f"X granted over a rider: {dropped.describe()}"
    wait_for(lambda: n1.caches.revoked, 5, message="n1 to give its cache up")
    c = n1.begin("c@n1")
    t_c, later = in_thread(n1.acquire, c, [row(7)])
    assert not later.done.wait(0.5), f"a new transaction rode a revoking cache: {later.describe()}"
    n1.release(a)
    join(t_drop, dropped, 5, "X after the last rider released")
    assert dropped.error is None, dropped.describe()
    assert n1.caches.owner() not in {txn for txn, _ in table_entries(n1)}
    assert not later.done.wait(0.3), "the local IX was granted while X is held"
    n2.release(drop)
    join(t_c, later, 5, "the local transaction after X")
    assert later.error is None, later.describe()
    n1.release(c)


def test_a_rider_gets_a_strong_lock_on_its_own_table(
        nodes: tuple[LockManager, LockManager]) -> None:
    """A rides the cache, then asks for S on the whole table (a wide scan): it takes an
    intention entry of its own, stops riding, and gets S at once."""
    n1, _ = nodes
    warm = n1.begin("w@n1")
    n1.acquire(warm, [row(1)])
    n1.release(warm)
    a = n1.begin("a@n1")
    n1.acquire(a, [row(2)])
    assert "t/1" in a.riding
    started = time.monotonic()
    n1.acquire(a, [(TABLE, S)], timeout_s=5)
    assert time.monotonic() - started < 2
    assert a.held[TABLE] in (S, LockMode.SIX)
    assert not a.riding
    n1.release(a)


def test_a_rider_waiting_for_a_strong_requester_that_waits_for_the_cache_is_a_deadlock(
        nodes: tuple[LockManager, LockManager]) -> None:
    """n2's D holds row 5 and asks for X on the table (waits for n1's cache, ridden by A);
    A asks for row 5 (waits for D). The cycle runs through the cache's wait record; the
    detector aborts the younger, D (never the cache), and A gets row 5 once D released."""
    n1, n2 = nodes
    a = n1.begin("a@n1")
    n1.acquire(a, [row(1)])
    time.sleep(0.01)
    d = n2.begin("d@n2")
    n2.acquire(d, [row(5)])
    t_d, d_call = in_thread(n2.acquire, d, [(TABLE, X)])
    wait_for(lambda: n1.caches.revoked, 5, message="n1 to give its cache up")
    t_a, a_call = in_thread(n1.acquire, a, [row(5)])
    t_d.join(10)
    assert not t_d.is_alive(), "the deadlock was not broken"
    assert "deadlock" in str(d_call.unexpected).lower(), d_call.describe()
    n2.release(d)  # as a node does for an aborted transaction: A gets row 5 now
    join(t_a, a_call, 10, "A after the victim's release")
    assert a_call.error is None, a_call.describe()
    n1.release(a)


def test_a_transaction_that_gives_up_establishing_the_cache_leaves_no_entry(
        nodes: tuple[LockManager, LockManager]) -> None:
    """n2 holds S on the table; n1's first transaction queues the cache entry behind it and
    times out: the cache entry is deleted, and a later S request is not blocked by it."""
    n1, n2 = nodes
    s = n2.begin("s@n2")
    n2.acquire(s, [(TABLE, S)])
    a = n1.begin("a@n1")
    with pytest.raises(Exception) as timed_out:
        n1.acquire(a, [row(1)], timeout_s=0.5)
    assert "lock_timeout" in str(timed_out.value).lower()
    n1.release(a)
    wait_for(lambda: n1.caches.owner() not in {t for t, _ in table_entries(n1)}, 5,
             message="the abandoned cache entry to go")
    n2.release(s)
    s2 = n2.begin("s2@n2")
    n2.acquire(s2, [(TABLE, S)], timeout_s=2)
    n2.release(s2)
