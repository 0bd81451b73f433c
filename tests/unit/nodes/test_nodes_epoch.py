"""Unit tests of nodes.epoch: the epoch record and a node's guard over it (a fake etcd with
hand-driven watches); the real thing runs in tests/integration/test_promotion.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from lockmgr import KeyValue
from nodes.epoch import PRIMARY, PROMOTING, EpochGuard, EpochRecord, Superseded, epoch_key

CLUSTER = "c"
KEY = epoch_key(CLUSTER)


class FakeEtcd:
    def __init__(self) -> None:
        self.data: dict[bytes, tuple[bytes, int]] = {}
        self.rev = 10
        self.watchers: list[Callable[[Any], None]] = []

    def get(self, key: bytes) -> KeyValue | None:
        got = self.data.get(key)
        return None if got is None else KeyValue(key, got[0], 0, 1, got[1])

    def txn_if_unchanged(self, revisions: dict[bytes, int], ops: list[Any]) -> bool:
        if any((self.data.get(k, (b"", 0))[1]) != rev for k, rev in revisions.items()):
            return False
        for op in ops:
            self.write(op.request_put.key, op.request_put.value, notify=False)
        return True

    def write(self, key: bytes, value: bytes, notify: bool = True) -> None:
        self.rev += 1
        self.data[key] = (value, self.rev)
        if notify:
            for cb in self.watchers:
                cb([(key, value)])

    def watch_prefix(self, prefix: bytes, rev: int, cb: Callable[[Any], None]
                     ) -> Callable[[], None]:
        self.watchers.append(cb)
        return lambda: None


def rec(epoch: int, volume: str, state: str = PRIMARY, **kw: Any) -> EpochRecord:
    return EpochRecord(epoch, volume, state, 1.0, "test", **kw)


def test_a_record_reads_back_as_written_and_garbage_is_refused() -> None:
    r = rec(3, "v2", PROMOTING, replica_id="r1", previous_volume="v1", fence_wait_s=4.0,
            accept_loss=True)
    assert EpochRecord.decode(r.encode(), 9) == EpochRecord(**{**r.__dict__, "mod_revision": 9})
    for bad in (b"", b"[]", b'{"epoch": "x"}', b'{"epoch": 1}'):
        with pytest.raises(ValueError):
            EpochRecord.decode(bad, 1)


def test_the_first_node_of_a_primary_volume_creates_epoch_one() -> None:
    etcd = FakeEtcd()
    guard = EpochGuard(etcd, CLUSTER, "v1", node_id="n1")  # type: ignore[arg-type]
    got = guard.start(1.0, may_claim=True)
    guard.close()
    assert (got.epoch, got.volume_id, got.state) == (1, "v1", PRIMARY)
    assert guard.compare() == {KEY: etcd.data[KEY][1]}


def test_a_replica_copy_never_creates_the_first_epoch() -> None:
    guard = EpochGuard(FakeEtcd(), CLUSTER, "v1", node_id="n1")  # type: ignore[arg-type]
    with pytest.raises(Superseded, match="replica"):
        guard.start(1.0, may_claim=False)


def test_a_node_on_another_volume_than_the_epochs_refuses_to_start() -> None:
    etcd = FakeEtcd()
    etcd.write(KEY, rec(2, "v2", replica_id="r1").encode())
    guard = EpochGuard(etcd, CLUSTER, "v1", node_id="n1")  # type: ignore[arg-type]
    with pytest.raises(Superseded, match=r"epoch 2 .*superseded"):
        guard.start(1.0, may_claim=True)


def test_a_node_waits_while_its_volume_is_being_promoted() -> None:
    etcd = FakeEtcd()
    etcd.write(KEY, rec(2, "v1", PROMOTING).encode())
    guard = EpochGuard(etcd, CLUSTER, "v1", node_id="n1")  # type: ignore[arg-type]
    with pytest.raises(TimeoutError, match="being promoted"):
        guard.start(0.25, may_claim=True)


def test_a_promotion_elsewhere_supersedes_the_node_at_once_and_for_good() -> None:
    etcd = FakeEtcd()
    seen: list[EpochRecord] = []
    guard = EpochGuard(etcd, CLUSTER, "v1", node_id="n1",  # type: ignore[arg-type]
                       on_superseded=seen.append)
    guard.start(1.0, may_claim=True)
    try:
        guard.check()
        etcd.write(KEY, rec(2, "v2", PROMOTING, replica_id="r1").encode())  # the watch
        assert [r.epoch for r in seen] == [2]
        with pytest.raises(Superseded, match="superseded"):
            guard.check()
        with pytest.raises(Superseded):  # no member key or demotion under it any more
            guard.compare()
        etcd.write(KEY, rec(2, "v2", PRIMARY, replica_id="r1").encode())
        assert len(seen) == 1  # told once
    finally:
        guard.close()


def test_the_guard_goes_on_reading_the_record_after_an_unexpected_failure() -> None:
    """A read of the record failing with something unexpected must not end the guard's
    thread: a promotion whose watch event was missed is then still seen by the next read."""
    etcd = FakeEtcd()
    guard = EpochGuard(etcd, CLUSTER, "v1", node_id="n1")  # type: ignore[arg-type]
    guard.start(1.0, may_claim=True)
    real_get, failures = etcd.get, {"left": 1}

    def get(key: bytes) -> KeyValue | None:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("a bug in the client")
        return real_get(key)

    etcd.get = get  # type: ignore[method-assign]
    try:
        guard._wake.set()
        deadline = time.monotonic() + 5
        while failures["left"] and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        etcd.write(KEY, rec(2, "v2", PRIMARY, replica_id="r1").encode(), notify=False)
        guard._wake.set()
        while guard.superseded is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert guard.superseded is not None, "the epoch thread died"
    finally:
        guard.close()
