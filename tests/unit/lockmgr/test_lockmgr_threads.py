"""Unit tests: nothing but close() ends the lock manager's background threads (the releaser,
the batcher, the table caches' worker): each outlives a failure it does not expect."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from lockmgr import LockMode, batcher
from lockmgr.affinity import TableCaches
from lockmgr.batcher import Batcher
from lockmgr.entries import Request
from lockmgr.errors import EtcdUnavailable
from lockmgr.etcd import KeyValue
from lockmgr.manager import LockManager


class FakeEtcd:
    """``txn`` fails with what ``failures`` holds (one each call), then answers; every key
    deleted is recorded."""

    def __init__(self) -> None:
        self.failures: list[Exception] = []
        self.malformed = 0  # answers left that lack their results
        self.deleted: list[bytes] = []
        self._mu = threading.Lock()

    def txn(self, ops: list[Any]) -> tuple[int, list[list[KeyValue] | None]]:
        with self._mu:
            if self.failures:
                raise self.failures.pop(0)
            if self.malformed:
                self.malformed -= 1
                return 1, []
            self.deleted += [op.request_delete_range.key for op in ops
                             if op.HasField("request_delete_range")]
        return 1, [[] if op.HasField("request_range") else None for op in ops]

    def get_prefix(self, prefix: bytes) -> list[KeyValue]:
        return []


class _Session:
    def __init__(self, lease_id: int) -> None:
        self.lease_id = lease_id
        self.done = threading.Event()

    def is_valid(self) -> bool:
        return True


def _eventually(cond: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


def test_the_releaser_outlives_an_unexpected_failure_and_still_deletes_the_keys() -> None:
    etcd = FakeEtcd()
    m = LockManager(etcd, "c", "n1", fencer=None)  # type: ignore[arg-type]
    try:
        m._session = _Session(7)  # type: ignore[assignment]
        etcd.failures = [RuntimeError("a bug"), KeyError("another")]
        m._enqueue_release([b"k1"], 7)
        assert _eventually(lambda: b"k1" in etcd.deleted), "the failed release was dropped"
        m._enqueue_release([b"k2"], 7)
        assert m.flush_releases(timeout_s=3.0)
        assert b"k2" in etcd.deleted, "the releaser thread died"
    finally:
        m.close()


def test_the_batcher_answers_a_batch_it_cannot_read_and_goes_on(monkeypatch) -> None:
    monkeypatch.setattr(batcher, "ANSWER_WAIT_S", 2.0)  # the old code's answer: a timeout
    etcd = FakeEtcd()
    b = Batcher(etcd, "c")  # type: ignore[arg-type]
    try:
        r = Request("p/1/a", LockMode.IX, {"r1": LockMode.X})
        r.key = b"/shardless/c/locks/p/1/a/t1@a/1"
        etcd.malformed = 1  # an answer without its results: reading it fails
        with pytest.raises(EtcdUnavailable, match="lock batch failed"):
            b.put_and_read(7, [r])
        answer = b.put_and_read(7, [r])
        assert answer.revision == 1
    finally:
        b.close()


def test_the_table_caches_worker_outlives_a_job_that_fails_unexpectedly() -> None:
    caches = TableCaches(FakeEtcd(), "c", "n1")  # type: ignore[arg-type]
    ran = threading.Event()

    def bug() -> None:
        raise AttributeError("a bug in a job")

    try:
        caches._later(bug)
        time.sleep(0.1)  # the worker has run it
        caches._later(ran.set)
        assert ran.wait(3.0), "the table caches' worker died"
    finally:
        caches.close()
