"""Unit tests of nodes.replication's SyncGate (the policy core, over a fake etcd and a manual
clock) and of the lag figures; the real thing runs in tests/integration/test_replica.py."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from lockmgr import KeyValue
from nodes.replication import (
    DEMOTED,
    SYNC,
    CommitNotReplicated,
    ReadNotReplicated,
    ReplicaRecord,
    SyncGate,
    needed_from,
    replica_key,
    sync_key,
    sync_state,
    sync_value,
)

CLUSTER = "c"


class FakeEtcd:
    """Keys in a dict; watches called by hand through ``emit``."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.watchers: list[tuple[bytes, Callable[[Any], None]]] = []
        self.puts: list[tuple[bytes, bytes]] = []

    def txn(self, ops: list[Any]) -> tuple[int, list[list[KeyValue]]]:
        out = []
        for op in ops:
            prefix = op.request_range.key
            out.append([KeyValue(k, v, 0, 1, 1) for k, v in sorted(self.data.items())
                        if k.startswith(prefix)])
        return 7, out

    def watch_prefix(self, prefix: bytes, rev: int, cb: Callable[[Any], None]
                     ) -> Callable[[], None]:
        self.watchers.append((prefix, cb))
        return lambda: None

    def put(self, key: bytes, value: bytes, lease_id: int = 0) -> None:
        self.puts.append((key, value))
        self.emit(key, value)

    def emit(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value
        for prefix, cb in self.watchers:
            if key.startswith(prefix):
                cb([(key, value)])


def record(rid: str, position: int) -> bytes:
    return ReplicaRecord(rid, "h:1", "sync", position, 0.0, True, 1, 0.0, 0.0).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def gate_with(etcd: FakeEtcd, policy: str = "strict") -> tuple[SyncGate, Clock]:
    clock = Clock()
    gate = SyncGate(etcd, CLUSTER, node_id="n1", policy=policy, timeout_s=1.0,  # type: ignore[arg-type]
                    clock=clock)
    gate.reload()
    return gate, clock


def test_without_synchronous_replicas_everything_is_held_at_once() -> None:
    gate, _ = gate_with(FakeEtcd())
    done: list[str] = []
    gate.after(10**9, lambda: done.append("ok"), lambda e: done.append("fail"))
    gate.wait_held(10**9)
    assert done == ["ok"] and gate.held() == float("inf")


def test_a_commit_is_answered_once_the_replica_reports_its_position() -> None:
    etcd = FakeEtcd()
    etcd.data[sync_key(CLUSTER, "r")] = sync_value(SYNC, "r")
    etcd.data[replica_key(CLUSTER, "r")] = record("r", 5)
    gate, _ = gate_with(etcd)
    done: list[int] = []
    gate.after(5, lambda: done.append(5), lambda e: done.append(-5))
    gate.after(8, lambda: done.append(8), lambda e: done.append(-8))
    assert done == [5]
    gate.report("r", 7)
    assert done == [5]
    etcd.emit(replica_key(CLUSTER, "r"), record("r", 8))  # through etcd works as well
    assert done == [5, 8]
    gate.report("r", 3)  # a lower report (a fresh copy) never lowers what was heard
    assert gate.held() == 8


def test_a_member_of_the_set_that_is_not_running_holds_nothing() -> None:
    etcd = FakeEtcd()
    etcd.data[sync_key(CLUSTER, "gone")] = sync_value(SYNC, "gone")
    gate, _ = gate_with(etcd)
    assert gate.held() == 0


def test_strict_fails_late_commits_as_outcome_unknown_and_late_reads_as_not_applied() -> None:
    etcd = FakeEtcd()
    etcd.data[sync_key(CLUSTER, "r")] = sync_value(SYNC, "r")
    etcd.data[replica_key(CLUSTER, "r")] = record("r", 1)
    gate, clock = gate_with(etcd, "strict")
    failed: list[Exception] = []
    gate.after(2, lambda: None, failed.append)
    clock.now += 0.5
    gate.tick()
    assert failed == []  # not late yet
    clock.now += 0.6
    gate.tick()
    assert len(failed) == 1 and isinstance(failed[0], CommitNotReplicated)
    assert failed[0].applied_unknown and "replica(s) r" in str(failed[0])
    assert etcd.puts == []  # strict never demotes


def test_demote_marks_the_laggard_demoted_and_lets_the_waits_go() -> None:
    etcd = FakeEtcd()
    for rid, pos in (("slow", 1), ("fast", 9)):
        etcd.data[sync_key(CLUSTER, rid)] = sync_value(SYNC, rid)
        etcd.data[replica_key(CLUSTER, rid)] = record(rid, pos)
    gate, clock = gate_with(etcd, "demote")
    done: list[str] = []
    gate.after(5, lambda: done.append("ok"), lambda e: done.append("fail"))
    clock.now += 1.5
    gate.tick()
    assert done == ["ok"]
    assert [k for k, v in etcd.puts] == [sync_key(CLUSTER, "slow")]
    assert sync_state(etcd.puts[0][1]) == DEMOTED
    assert gate.members() == {"slow": DEMOTED, "fast": SYNC} and gate.held() == 9
    # Back in the set (the replica does this once caught up): waited for again.
    etcd.emit(sync_key(CLUSTER, "slow"), sync_value(SYNC, "slow"))
    assert gate.held() == 1


def test_a_read_fails_not_applied_when_strict_gives_up() -> None:
    etcd = FakeEtcd()
    etcd.data[sync_key(CLUSTER, "r")] = sync_value(SYNC, "r")
    gate, clock = gate_with(etcd, "strict")
    errors: list[BaseException] = []

    def read() -> None:
        try:
            gate.wait_held(3)
        except ReadNotReplicated as e:
            errors.append(e)

    t = threading.Thread(target=read)
    t.start()
    for _ in range(100):  # the read registers its wait, then the policy gives up on it
        clock.now += 0.1
        gate.tick()
        if errors:
            break
        t.join(0.01)
    t.join(5)
    assert len(errors) == 1 and not errors[0].applied_unknown  # type: ignore[attr-defined]


@pytest.mark.parametrize(("positions", "expected"), [([], None), ([4, 9], 5), ([0], 1)])
def test_the_log_is_needed_from_the_oldest_replica_position_plus_one(positions, expected
                                                                    ) -> None:  # type: ignore[no-untyped-def]
    recs = [ReplicaRecord(f"r{i}", "a", "async", p, 0.0, True, 1, 0.0, 0.0)
            for i, p in enumerate(positions)]
    assert needed_from(recs) == expected


def test_wait_for_position_returns_when_held_and_fails_clearly_past_its_timeout() -> None:
    from nodes.replication import PositionNotReached, wait_for_position
    from storage import Change, Store
    from storage.memory import MemoryEngine

    store = Store(MemoryEngine())
    with store.write() as w:
        w.append_log(ts=0.0, node="n", changes=[Change("t", "put", (1,))])
    wakes: list[float] = []
    wait_for_position(store, 1, 0.0, wakes.append, "node n")  # held: no wait at all
    assert wakes == []
    import time

    t0 = time.monotonic()
    with pytest.raises(PositionNotReached, match="node n holds commit position 1, not yet 2"):
        wait_for_position(store, 2, 0.0, wakes.append, "node n")  # 0 s means 0 s
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(PositionNotReached):
        wait_for_position(store, 2, 0.05, lambda s: wakes.append(s), "node n")
    assert wakes and all(0 < s <= 0.002 for s in wakes)
