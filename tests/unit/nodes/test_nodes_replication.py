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
        self.leases: list[int] = []

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
        if lease_id:
            self.leases.append(lease_id)
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


# -- joining, and the epoch ------------------------------------------------------------------


def test_a_joining_replica_is_waited_for_like_a_synchronous_one() -> None:
    from nodes.replication import JOINING

    etcd = FakeEtcd()
    etcd.data[sync_key(CLUSTER, "r")] = sync_value(JOINING, "r", "j1")
    etcd.data[replica_key(CLUSTER, "r")] = record("r", 4)
    gate, _ = gate_with(etcd)
    done: list[int] = []
    gate.after(6, lambda: done.append(6), lambda e: done.append(-6))
    assert done == [] and gate.held() == 4
    gate.report("r", 6)
    assert done == [6]


def test_each_node_says_once_per_join_and_session_that_it_waits_for_a_replica() -> None:
    from nodes.replication import JOINING, seen_key

    etcd = FakeEtcd()
    etcd.data[sync_key(CLUSTER, "r")] = sync_value(JOINING, "r", "j1")
    lease = [0]
    gate = SyncGate(etcd, CLUSTER, node_id="n1", lease=lambda: lease[0])  # type: ignore[arg-type]
    gate.reload()
    gate.acknowledge_joins()
    assert etcd.puts == []  # no session: nothing said (the next one says it)
    lease[0] = 11
    gate.acknowledge_joins()
    gate.acknowledge_joins()
    assert etcd.puts == [(seen_key(CLUSTER, "r", "n1"), b'{"join": "j1"}')]
    etcd.emit(sync_key(CLUSTER, "r"), sync_value(JOINING, "r", "j2"))  # joined anew
    gate.acknowledge_joins()
    lease[0] = 12  # a new session
    gate.acknowledge_joins()
    assert [v for _, v in etcd.puts] == [b'{"join": "j1"}', b'{"join": "j2"}',
                                         b'{"join": "j2"}']
    assert etcd.leases == [11, 11, 12]


class EpochEtcd(FakeEtcd):
    """A FakeEtcd whose compares on the epoch key succeed only while ``epoch_ok``."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch_ok = True

    def txn_if_unchanged(self, revisions: dict[bytes, int], ops: list[Any]) -> bool:
        if not self.epoch_ok:
            return False
        for op in ops:
            self.put(op.request_put.key, op.request_put.value)
        return True


def test_a_demotion_is_written_only_while_the_epoch_is_unchanged() -> None:
    """A promotion and a demotion of the same replica never both win: the demotion is an
    etcd transaction conditional on the epoch record; when it fails, the node reads the epoch
    again (and stops, if it was superseded)."""
    etcd = EpochEtcd()
    etcd.data[sync_key(CLUSTER, "r")] = sync_value(SYNC, "r", "j")
    etcd.data[replica_key(CLUSTER, "r")] = record("r", 1)
    changed: list[int] = []
    clock = Clock()
    gate = SyncGate(etcd, CLUSTER, node_id="n1", policy="demote", timeout_s=1.0,  # type: ignore[arg-type]
                    clock=clock, epoch_compare=lambda: {b"epoch": 5},
                    epoch_changed=lambda: changed.append(1))
    gate.reload()
    done: list[str] = []
    gate.after(3, lambda: done.append("ok"), lambda e: done.append("fail"))
    etcd.epoch_ok = False
    clock.now += 2
    gate.tick()
    assert changed == [1] and etcd.puts == [] and gate.members() == {"r": SYNC}
    assert done == []  # still waiting for r
    etcd.epoch_ok = True
    gate.tick()
    assert gate.members() == {"r": DEMOTED} and done == ["ok"]
    assert sync_state(etcd.data[sync_key(CLUSTER, "r")]) == DEMOTED


def test_a_superseded_node_fails_every_wait_and_acknowledges_nothing_more() -> None:
    etcd = FakeEtcd()
    etcd.data[sync_key(CLUSTER, "r")] = sync_value(SYNC, "r")
    etcd.data[replica_key(CLUSTER, "r")] = record("r", 1)
    gate, _ = gate_with(etcd)
    failed: list[Exception] = []
    gate.after(5, lambda: failed.append(AssertionError("acknowledged")), failed.append)
    gate.supersede("volume v was superseded")
    assert len(failed) == 1 and isinstance(failed[0], CommitNotReplicated)
    assert failed[0].applied_unknown
    gate.after(1, lambda: failed.append(AssertionError("acknowledged")), failed.append)
    assert len(failed) == 2 and isinstance(failed[1], CommitNotReplicated)
    with pytest.raises(ReadNotReplicated, match="superseded"):
        gate.wait_held(1)


def test_a_replica_whose_entry_goes_is_waited_for_until_the_epoch_is_read_again() -> None:
    """A promotion deletes its replica's sync entry in the transaction that changes the
    epoch; the entry's watch may deliver first. The gate must not let a commit go on that
    event alone: it still waits for the replica until the epoch read again says the volume is
    still the primary (then it lets go), or not (then it never does)."""
    superseded: list[bool] = [False]

    def epoch_changed() -> None:
        if superseded[0]:
            raise RuntimeError("superseded")

    etcd = FakeEtcd()
    etcd.data[sync_key(CLUSTER, "r")] = sync_value(SYNC, "r")
    etcd.data[replica_key(CLUSTER, "r")] = record("r", 5)
    gate = SyncGate(etcd, CLUSTER, node_id="n1", policy="strict", timeout_s=1.0,  # type: ignore[arg-type]
                    clock=Clock(), epoch_changed=epoch_changed)
    gate.reload()
    done: list[str] = []
    gate.after(8, lambda: done.append("ok"), lambda e: done.append("fail"))
    superseded[0] = True
    etcd.emit(sync_key(CLUSTER, "r"), None)  # the promotion's delete, seen first
    assert done == [] and gate.held() == 5
    gate._let_go()  # the epoch names another volume: still waited for
    assert done == [] and gate.held() == 5
    superseded[0] = False  # (a replica that left on its own: the epoch is unchanged)
    gate._let_go()
    assert done == ["ok"] and gate.held() == float("inf")


def test_an_old_primary_is_set_aside_only_when_no_process_holds_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The lock files of live node processes (flock held) keep a superseded volume in place."""
    import fcntl
    import os

    from nodes.replica import _held_lock_files

    d = tmp_path / "nodes"
    assert _held_lock_files(str(d)) == []  # no directory: nothing holds it
    d.mkdir()
    (d / "gone.1.lock").write_text("# pid 1\n")
    fd = os.open(d / "live.2.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        # flock is per open file description: a second open in this process is refused too.
        assert _held_lock_files(str(d)) == ["live.2.lock"]
    finally:
        os.close(fd)
    assert _held_lock_files(str(d)) == []
