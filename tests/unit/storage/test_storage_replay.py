"""The commit log as replicas and backups use it: replaying it from a consistent copy reproduces
the volume, and it is kept in bounds (truncation, the size it reports, a clear error for a
position that is gone)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import Change, Column, Schema, Store, open_volume
from storage.errors import Corrupt, LogTruncated, StorageError
from storage.keycode import encode
from storage.memory import MemoryEngine

TABLES = ["a", "b", "c"]


def schema(name: str) -> Schema:
    return Schema.build(name, [Column("id", "int64"), Column("v", "string")], ["id"])


def copy_of(source: Store, target: Store) -> int:
    """Copy ``source``'s replicated key space into ``target`` as a replica does; return the
    position of the copy."""
    with source.read() as r, target.write() as w:
        w.load_copy(r.replicated_items())
        position = r.commit_position()
        w.restart_log_at(position)
    return position


def replay(source: Store, target: Store, start: int) -> None:
    """Replay as a replica does, a few records per write transaction, from the decoded
    records and (every other one) from their stored bytes as ReadLog sends them."""
    with source.read() as r:
        records = list(r.log(start))
        stored = dict(r.log_stored(start, 10**6)) if records else {}
    for i in range(0, len(records), 3):
        with target.write() as w:
            for rec in records[i:i + 3]:
                if rec.position % 2:
                    assert w.apply_stored(rec.position, stored[rec.position]) == rec
                else:
                    w.apply_record(rec)


def state(store: Store) -> list[tuple[bytes, bytes]]:
    with store.read() as r:
        return list(r.replicated_items())


# One step of a random history: the domain operations that change the volume, replicated or not.
step_st = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(TABLES)),
    st.tuples(st.just("drop"), st.sampled_from(TABLES)),
    st.tuples(st.just("put"), st.sampled_from(TABLES), st.integers(0, 20), st.text(max_size=3)),
    st.tuples(st.just("delete"), st.sampled_from(TABLES), st.integers(0, 20)),
    st.tuples(st.just("idem"), st.integers(0, 5), st.floats(0, 200_000)),
    st.tuples(st.just("purge"), st.floats(0, 300_000)),
    st.tuples(st.just("grant"), st.integers(1, 3)),
    st.tuples(st.just("fence"), st.integers(1, 3)),
    st.tuples(st.just("log"),),
)
txn_st = st.tuples(st.booleans(), st.lists(step_st, max_size=6))


def run_txn(store: Store, commit: bool, steps: list[tuple]) -> None:
    class Abort(Exception):
        pass

    try:
        with store.write() as w:
            for step in steps:
                kind = step[0]
                if kind == "create":
                    if w.table(step[1]) is None:
                        w.create_table(schema(step[1]))
                elif kind == "drop":
                    t = w.table(step[1])
                    if t is not None:
                        w.drop_table(t)
                elif kind in ("put", "delete"):
                    t = w.table(step[1])
                    if t is None:
                        continue
                    if kind == "put":
                        w.put(t, encode((step[2],)), w.next_position(), [step[2], step[3]])
                    else:
                        w.delete(t, encode((step[2],)))
                elif kind == "idem":
                    w.record_idempotent(f"key{step[1]}", {"pos": step[1]}, ts=step[2])
                elif kind == "purge":
                    w.purge_idempotency(now=step[1])
                elif kind == "grant":
                    w.publish_grants(step[1], [(f"p/1/{step[1]}", f"tag{step[1]}", b"IX")])
                elif kind == "fence":
                    w.fence(step[1], ts=0.0, by="n")
                else:
                    w.append_log(ts=1.0, node="n", changes=[Change("a", "put", (1,))])
            if not commit:
                raise Abort
    except Abort:
        pass


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=st.lists(txn_st, max_size=6), after=st.lists(txn_st, max_size=10))
def test_replaying_the_log_from_a_copy_reproduces_the_volume(before, after) -> None:
    """Whatever committed (tables made and dropped, rows, idempotency records and purges, next
    to grants and fences that are not replicated), a copy at any position plus the log after
    it equals the volume, and the copy's log holds the same records at the same positions."""
    source, target = Store(MemoryEngine()), Store(MemoryEngine())
    for commit, steps in before:
        run_txn(source, commit, steps)
    at = copy_of(source, target)
    for commit, steps in after:
        run_txn(source, commit, steps)
    replay(source, target, at + 1)
    assert state(target) == state(source)
    with source.read() as r, target.read() as t:
        assert t.commit_position() == r.commit_position()
        assert [(x.position, x.changes, x.ops) for x in t.log()] == \
            [(x.position, x.changes, x.ops) for x in r.log(at + 1)]


def test_replay_onto_lmdb_reproduces_an_lmdb_volume(tmp_path: Path) -> None:
    """The same over real LMDB volumes, with a drop of a table of many rows (a range op)."""
    source = open_volume(str(tmp_path / "a"), map_size=64 << 20)
    target = open_volume(str(tmp_path / "b"), map_size=64 << 20)
    try:
        run_txn(source, True, [("create", "a"), ("create", "b")])
        run_txn(source, True, [("put", "a", i, "x") for i in range(20)])
        at = copy_of(source, target)
        run_txn(source, True, [("put", "b", i, "y") for i in range(20)] + [("idem", 1, 5.0)])
        run_txn(source, True, [("drop", "a"), ("delete", "b", 3), ("create", "c")])
        run_txn(source, True, [("purge", 100_000.0), ("grant", 1), ("fence", 2)])
        replay(source, target, at + 1)
        assert state(target) == state(source)
        with target.read() as t:
            assert t.table("a") is None and t.table("c") is not None
            assert t.count(t.require_table("b")) == 19
            assert not t.has_grants_under("p/") and not t.is_fenced(2)  # not replicated
    finally:
        source.close()
        target.close()


def test_a_record_out_of_order_or_without_ops_is_refused() -> None:
    source, target = Store(MemoryEngine()), Store(MemoryEngine())
    run_txn(source, True, [("create", "a")])
    run_txn(source, True, [("put", "a", 1, "x")])
    with source.read() as r:
        first, second = list(r.log())
    with pytest.raises(StorageError, match="does not follow"), target.write() as w:
        w.apply_record(second)
    old = type(first)(first.position, first.ts, first.node, first.changes, None)
    with pytest.raises(Corrupt, match="no replay ops"), target.write() as w:
        w.apply_record(old)
    assert state(target) == []


def test_truncation_keeps_the_positions_after_it_and_reports_the_size_held() -> None:
    store = Store(MemoryEngine())
    run_txn(store, True, [("create", "a")])
    for i in range(10):
        run_txn(store, True, [("put", "a", i, "x" * i), ("log",)])
    with store.read() as r:
        sizes = {rec.position: rec.size for rec in r.log()}
        assert r.log_bounds() == (1, 11, sum(sizes.values()))
    with store.write() as w:
        assert w.truncate_log(5) == (4, sum(sizes[p] for p in range(1, 5)))
        assert w.truncate_log(3) == (0, 0)  # nothing left before 5
    with store.read() as r:
        assert r.log_bounds() == (5, 11, sum(sizes[p] for p in range(5, 12)))
        assert [rec.position for rec in r.log()] == list(range(5, 12))
        assert [rec.position for rec in r.log(9)] == [9, 10, 11]
        with pytest.raises(LogTruncated, match=r"position 4 is gone.*oldest position held is 5"
                           ) as gone:
            list(r.log(4))
        assert gone.value.oldest == 5
    with store.write() as w:
        assert w.truncate_log(100)[0] == 7  # never past the last position
    run_txn(store, True, [("put", "a", 1, "y"), ("log",)])
    with store.read() as r:
        held = list(r.log())
        assert [rec.position for rec in held] == [12]
        assert r.log_bounds() == (12, 12, held[0].size)


def test_a_copy_taken_at_a_position_continues_the_positions() -> None:
    source, target = Store(MemoryEngine()), Store(MemoryEngine())
    for i in range(3):
        run_txn(source, True, [("create", TABLES[i])])
    at = copy_of(source, target)
    assert at == 3
    with target.read() as t:
        assert t.log_bounds() == (4, 3, 0)
        assert list(t.log()) == []
        with pytest.raises(LogTruncated):
            list(t.log(1))
    run_txn(target, True, [("put", "a", 1, "x"), ("log",)])
    with target.read() as t:
        assert [rec.position for rec in t.log()] == [4]


@pytest.mark.parametrize("overwrites", [3000])
def test_the_volume_stops_growing_when_the_log_is_truncated(overwrites: int) -> None:
    """Rows overwritten again and again with the log cut behind them: the LMDB file reaches a
    size and stays there (freed pages are reused)."""
    with tempfile.TemporaryDirectory() as d:
        store = open_volume(d, map_size=256 << 20)
        try:
            run_txn(store, True, [("create", "a")])
            sizes = []
            for i in range(overwrites):
                run_txn(store, True, [("put", "a", j, "v" * 200) for j in range(10)]
                        + [("log",)])
                if i % 100 == 99:
                    with store.read() as r:
                        last = r.commit_position()
                    with store.write() as w:
                        w.truncate_log(last - 50)
                    sizes.append((Path(d) / "lmdb" / "data.mdb").stat().st_size)
            assert sizes[-1] <= sizes[len(sizes) // 3] * 1.1, sizes
            with store.read() as r:
                oldest, last, held = r.log_bounds()
                assert last - oldest < 150 and held < 150 * 4000
        finally:
            store.close()
