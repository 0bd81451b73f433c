"""``nodes.changes``: how a change stream at the end of the log learns of new commits, its own
node's (the committer wakes it) and other nodes' (the volume's version moves), ``wait_new``;
and the messages a stream sends, encoded once per change and put together as bytes."""

from __future__ import annotations

import threading
import time

import pytest

from nodes import changes
from nodes.changes import LogTail, _change, change_wire, watch_message
from nodes.commit import wait_new
from shardless.v1 import services_pb2 as api
from storage import Change, Column, Schema, Store
from storage.changes import DELETE_ROW, PUT_ROW, RowChange
from storage.keycode import encode
from storage.memory import MemoryEngine


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
    got = api.WatchResponse.FromString(raw)
    assert got == expected
    # The same bytes protobuf would give, up to the order of a row's map entries (protobuf
    # gives no order there, so neither side's bytes can be compared whole): the same length,
    # so nothing more than what protobuf would put there.
    assert len(raw) == expected.ByteSize()


def test_a_heartbeat_without_changes_decodes_to_its_positions_only() -> None:
    got = api.WatchResponse.FromString(watch_message(b"", 41, 2, 41))
    assert (list(got.changes), got.position, got.oldest_position, got.last_position) == \
        ([], 41, 2, 41)


# --- the node's shared log tail, on a real store (the memory engine) ---

def _store_with_table() -> Store:
    store = Store(MemoryEngine())
    with store.write() as w:
        w.create_table(Schema.build("t", [Column("id", "int64"), Column("v", "string")], ["id"]))
        w.append_log(ts=1.0, node="n", changes=[Change("t", "create_table", ())])
    return store


def _put(store: Store, key: int) -> int:
    with store.write() as w:
        t = w.table("t")
        position = w.next_position()
        w.put(t, encode((key,)), position, [key, "x"])
        w.append_log(ts=1.0, node="n", changes=[Change("t", "put", (key,))])
    return position


def _follow(tail: LogTail, position: int, timeout_s: float = 5.0) -> list[int]:
    """Positions the tail holds from ``position`` on, once it holds any (or [])."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = tail.since(position, 0.05)
        if got and got[0]:
            return [r.position for r, _, _ in got[0]]
    return []


def test_the_log_tail_holds_new_commits_and_outlives_a_failing_version_read(monkeypatch) -> None:
    monkeypatch.setattr(changes, "FAILED_WAIT_S", 0.05)
    store, committer = _store_with_table(), _Committer()
    failures = {"left": 0}

    def version() -> int:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("volume went away for a moment")
        return store.version()

    tail = LogTail(store, committer, version=version)
    tail.acquire()
    try:
        deadline = time.monotonic() + 5
        while tail.since(10**9, 0.01) is None:  # started: it holds the end of the log
            assert time.monotonic() < deadline, "the tail never started"
        first = _put(store, 1)
        assert _follow(tail, first) == [first]
        failures["left"] = 3  # the next turns fail: the thread must go on
        time.sleep(0.3)
        assert failures["left"] == 0
        second = _put(store, 2)
        assert second in _follow(tail, second)
    finally:
        tail.release()
        tail.stop()
