"""``nodes.changes.wait_new``: how a change stream at the end of the log learns of new commits,
its own node's (the committer wakes it) and other nodes' (the volume's version moves)."""

from __future__ import annotations

import threading
import time

from nodes.changes import wait_new


class _Committer:
    """The committer's ``batches`` and ``wait_for_commit``, as ``nodes/commit.py`` has them."""

    def __init__(self) -> None:
        self.batches = 0
        self._cond = threading.Condition()

    def commit(self) -> None:
        with self._cond:
            self.batches += 1
            self._cond.notify_all()

    def wait_for_commit(self, seen: int, timeout_s: float) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self.batches != seen, timeout=timeout_s)
            return self.batches


def _later(delay_s: float, fn: object) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(delay_s), fn()))  # type: ignore[operator]
    t.start()
    return t


def test_another_nodes_commit_ends_the_wait_long_before_its_timeout() -> None:
    committer, version = _Committer(), [7]
    t = _later(0.05, lambda: version.__setitem__(0, 8))  # a commit this node did not make
    started = time.monotonic()
    assert wait_new(committer, lambda: version[0], 0, 7, 10.0) == 0
    assert time.monotonic() - started < 5.0
    t.join()


def test_a_commit_between_the_read_and_the_wait_is_not_missed() -> None:
    committer = _Committer()
    started = time.monotonic()
    wait_new(committer, lambda: 8, 0, 7, 10.0)  # the mark was taken before the read
    assert time.monotonic() - started < 5.0


def test_its_own_nodes_commit_ends_the_wait_and_counts_the_batch() -> None:
    committer = _Committer()
    t = _later(0.05, committer.commit)
    started = time.monotonic()
    assert wait_new(committer, lambda: 7, 0, 7, 10.0) == 1
    assert time.monotonic() - started < 5.0
    t.join()


def test_with_nothing_new_it_waits_for_its_timeout() -> None:
    for version in (lambda: 7, None):  # polled, or only woken by the committer
        started = time.monotonic()
        assert wait_new(_Committer(), version, 0, 7, 0.2) == 0
        assert time.monotonic() - started >= 0.19
