"""``nodes.changes``: how a change stream at the end of the log learns of new commits, its own
node's (the committer wakes it) and other nodes' (the volume's version moves), ``wait_new``;
and the messages a stream sends, encoded once per change and put together as bytes."""

from __future__ import annotations

import threading
import time

import pytest

from nodes.changes import _change, change_wire, wait_new, watch_message
from shardless.v1 import services_pb2 as api
from storage.changes import DELETE_ROW, PUT_ROW, RowChange


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


def _changes() -> list[RowChange]:
    return [
        RowChange(position=2**40 + 3, index=0, ts=1.7e9, kind=PUT_ROW, table="t", key=(7,),
                  values={"id": 7, "v": "x" * 300}),  # a body longer than 127: 2-byte length
        RowChange(position=2**40 + 3, index=1, ts=1.7e9, kind=DELETE_ROW, table="t",
                  key=(-1,)),
        RowChange(position=2**40 + 4, index=0, ts=1.7e9 + 1, kind=PUT_ROW, table="t",
                  key=(8,), values={"id": 8, "v": None}),
    ]


@pytest.mark.parametrize("position,oldest,last", [(2**40 + 4, 1, 2**40 + 9), (0, 5, 300),
                                                  (0, 0, 0)])
def test_a_message_of_encoded_changes_is_the_watch_response_protobuf_would_make(
        position: int, oldest: int, last: int) -> None:
    cs = _changes()
    raw = watch_message(b"".join(change_wire(c) for c in cs), position, oldest, last)
    expected = api.WatchResponse(changes=[_change(c) for c in cs], position=position,
                                 oldest_position=oldest, last_position=last)
    assert api.WatchResponse.FromString(raw) == expected
    assert raw == expected.SerializeToString()


def test_a_heartbeat_without_changes_decodes_to_its_positions_only() -> None:
    got = api.WatchResponse.FromString(watch_message(b"", 41, 2, 41))
    assert (list(got.changes), got.position, got.oldest_position, got.last_position) == \
        ([], 41, 2, 41)
