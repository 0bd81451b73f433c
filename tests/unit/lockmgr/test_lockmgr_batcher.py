"""Unit tests of lockmgr.batcher: which requests share an etcd transaction, and their answers."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from lockmgr import EtcdUnavailable, LockMode
from lockmgr.batcher import Batcher
from lockmgr.entries import Request
from lockmgr.etcd import KeyValue

IX, X, S = LockMode.IX, LockMode.X, LockMode.S


class FakeEtcd:
    """Answers ``txn`` after a gate opens, recording every etcd transaction it was sent."""

    def __init__(self) -> None:
        self.txns: list[list[Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: Exception | None = None
        self.revision = 100

    def txn(self, ops: list[Any]) -> tuple[int, list[list[KeyValue] | None]]:
        self.gate.wait(5)
        self.txns.append(ops)
        if self.fail is not None:
            raise self.fail
        self.revision += 1
        return self.revision, [[] if op.HasField("request_range") else None for op in ops]


def req(name: str, mode: LockMode, rows: dict[str, LockMode] | None = None, n: int = 0
        ) -> Request:
    r = Request(name, mode, dict(rows or {}))
    r.key = f"/shardless/c/locks/{name}/t{n}@a/1".encode()
    return r


@pytest.fixture
def etcd() -> FakeEtcd:
    return FakeEtcd()


def in_background(b: Batcher, lease: int, reqs: list[Request]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["answer"] = b.put_and_read(lease, reqs)
        except Exception as e:
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    out["thread"] = t
    return out


def settle(b: Batcher, etcd: FakeEtcd, *calls: dict[str, Any]) -> None:
    etcd.gate.set()
    for c in calls:
        c["thread"].join(5)
        assert not c["thread"].is_alive()


def test_requests_waiting_together_share_one_etcd_transaction(etcd: FakeEtcd) -> None:
    """While one etcd call is in flight, compatible requests of other transactions queue and
    then go in one etcd transaction, each with its own reads and the same revision."""
    b = Batcher(etcd, "c")  # type: ignore[arg-type]
    try:
        etcd.gate.clear()
        first = in_background(b, 7, [req("p/1/a", IX, {"r1": X}, 1)])
        time.sleep(0.1)  # the first is in flight, blocked on the gate
        others = [in_background(b, 7, [req(f"p/1/{p}", IX, {"r": X}, n)])
                  for n, p in enumerate("bcd", start=2)]
        time.sleep(0.1)
        settle(b, etcd, first, *others)
        assert len(etcd.txns) == 2
        answers = [c["answer"] for c in others]
        assert len({a.revision for a in answers}) == 1
        assert [sorted(a.reads) for a in answers] == [["p/1/b"], ["p/1/c"], ["p/1/d"]]
        assert b.requests == 4 and b.etcd_txns == 2
    finally:
        b.close()


def test_conflicting_requests_never_share_an_etcd_transaction(etcd: FakeEtcd) -> None:
    """Two transactions' X locks on the same row would share a revision, so neither would see
    the other as earlier: the second waits for the next etcd transaction (and so does every
    request behind it, to keep arrival order)."""
    b = Batcher(etcd, "c")  # type: ignore[arg-type]
    try:
        etcd.gate.clear()
        first = in_background(b, 7, [req("p/1/z", IX, {"q": X}, 1)])
        time.sleep(0.1)
        a = in_background(b, 7, [req("p/1/a", IX, {"r1": X}, 2)])
        time.sleep(0.05)
        c = in_background(b, 7, [req("p/1/a", IX, {"r1": S}, 3)])
        time.sleep(0.05)
        d = in_background(b, 7, [req("p/1/b", IX, {"r9": X}, 4)])
        time.sleep(0.1)
        settle(b, etcd, first, a, c, d)
        assert a["answer"].revision < c["answer"].revision == d["answer"].revision
        assert len(etcd.txns) == 3
    finally:
        b.close()


def test_requests_of_different_sessions_go_in_different_etcd_transactions(
        etcd: FakeEtcd) -> None:
    """A put on a lease that is gone fails its whole etcd transaction: a batch holds one
    session's requests only."""
    b = Batcher(etcd, "c")  # type: ignore[arg-type]
    try:
        etcd.gate.clear()
        first = in_background(b, 7, [req("p/1/z", IX, {"q": X}, 1)])
        time.sleep(0.1)
        a = in_background(b, 7, [req("p/1/a", IX, {"r1": X}, 2)])
        time.sleep(0.05)
        c = in_background(b, 8, [req("p/1/b", IX, {"r2": X}, 3)])
        time.sleep(0.1)
        settle(b, etcd, first, a, c)
        assert a["answer"].revision != c["answer"].revision
        leases = [{op.request_put.lease for op in ops if op.HasField("request_put")}
                  for ops in etcd.txns]
        assert all(len(ls) == 1 for ls in leases)
    finally:
        b.close()


def test_a_failed_etcd_transaction_fails_every_request_it_carried(etcd: FakeEtcd) -> None:
    """Every request of the etcd transaction gets its error, none waits forever."""
    b = Batcher(etcd, "c")  # type: ignore[arg-type]
    try:
        etcd.fail = EtcdUnavailable("no quorum")
        with pytest.raises(EtcdUnavailable):
            b.put_and_read(7, [req("p/1/a", IX, {"r1": X}, 1)])
    finally:
        b.close()


def test_a_batch_stays_within_the_operation_limit(etcd: FakeEtcd) -> None:
    """Requests that would exceed max_ops together are split over etcd transactions."""
    b = Batcher(etcd, "c", max_ops=12)  # type: ignore[arg-type]
    try:
        etcd.gate.clear()
        first = in_background(b, 7, [req("p/1/z", IX, {"q": X}, 1)])
        time.sleep(0.1)
        calls = [in_background(b, 7, [req(f"p/1/{n}", IX, {"r": X}, n)]) for n in range(2, 12)]
        time.sleep(0.2)
        settle(b, etcd, first, *calls)
        assert all(len(ops) <= 12 for ops in etcd.txns)
        assert len(etcd.txns) >= 3
    finally:
        b.close()
