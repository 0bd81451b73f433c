"""The storage engine contract (``storage/kv.py``), one suite run over every engine: LMDB on a
real volume in a temporary directory, and the in-memory engine.

Each test names one promise of ``kv.Engine``; the last one checks the whole of it against a
model (a sorted dict with transactions) on random histories.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import Engine, MapFull, StorageError, open_volume
from storage.kv import MIN_KEY_BYTES, delete_range
from storage.memory import MemoryEngine

SIZE = 32 << 20

Factory = Callable[[Path, int], Engine]


def lmdb_engine(path: Path, size: int) -> Engine:
    return open_volume(str(path), map_size=size).engine


def memory_engine(path: Path, size: int) -> Engine:
    return MemoryEngine(max_bytes=size)


@pytest.fixture(params=[lmdb_engine, memory_engine], ids=["lmdb", "memory"])
def make(request: pytest.FixtureRequest) -> Factory:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def engine(make: Factory, tmp_path: Path) -> Iterator[Engine]:
    e = make(tmp_path / "vol", SIZE)
    try:
        yield e
    finally:
        e.close()


def put_all(engine: Engine, items: dict[bytes, bytes]) -> None:
    with engine.write() as w:
        for k, v in items.items():
            w.put(k, v)


def keys_of(pairs: Iterator[tuple[bytes, bytes]]) -> list[bytes]:
    return [k for k, _ in pairs]


KEYS = [b"\x00", b"\x00\x00", b"\x00\x01", b"a", b"ab", b"b", b"\xfe", b"\xff", b"\xff\xff"]


@pytest.fixture
def filled(engine: Engine) -> Engine:
    put_all(engine, {k: b"v" + k for k in KEYS})
    return engine


def test_a_committed_put_is_read_back_and_a_missing_key_is_none(engine: Engine) -> None:
    """get returns what the last commit stored, None for a key never stored; empty values are
    values."""
    put_all(engine, {b"k": b"v", b"empty": b""})
    with engine.read() as r:
        assert r.get(b"k") == b"v"
        assert r.get(b"empty") == b""
        assert r.get(b"nope") is None


def test_scan_is_in_byte_order_with_lo_inclusive_and_hi_exclusive(filled: Engine) -> None:
    """Keys sort as unsigned bytes, a prefix before its extensions; ``hi`` None is unbounded."""
    with filled.read() as r:
        assert keys_of(r.scan(b"\x00")) == KEYS
        assert keys_of(r.scan(b"\x00\x00", b"ab")) == [b"\x00\x00", b"\x00\x01", b"a"]
        assert keys_of(r.scan(b"a\x00", b"b")) == [b"ab"]
        assert keys_of(r.scan(b"c", b"d")) == []
        assert keys_of(r.scan(b"\xff\xff\xff")) == []
        assert [v for _, v in r.scan(b"a", b"b")] == [b"va", b"vab"]


def test_reverse_scan_walks_the_same_range_backwards(filled: Engine) -> None:
    """A reverse scan yields exactly the forward range, last key first, whether or not ``hi``
    is a stored key, lies between keys or beyond them all."""
    with filled.read() as r:
        for lo, hi in [(b"\x00", None), (b"a", b"b"), (b"a", b"b\x00"), (b"\x00\x01", b"\xff"),
                       (b"c", b"d"), (b"\x00", b"\x00"), (b"b", b"\xff\xff\xff")]:
            assert keys_of(r.scan(lo, hi, reverse=True)) == keys_of(r.scan(lo, hi))[::-1], \
                (lo, hi)


def test_scan_stops_after_limit_in_either_direction(filled: Engine) -> None:
    with filled.read() as r:
        assert keys_of(r.scan(b"a", limit=2)) == [b"a", b"ab"]
        assert keys_of(r.scan(b"\x00", b"b", reverse=True, limit=2)) == [b"ab", b"a"]
        assert keys_of(r.scan(b"\x00", limit=0)) == []
        assert keys_of(r.scan(b"\x00", limit=100)) == KEYS


def test_a_write_reads_its_own_puts_and_deletes_in_gets_and_scans(filled: Engine) -> None:
    with filled.write() as w:
        w.put(b"aa", b"new")
        w.put(b"a", b"changed")
        assert w.delete(b"ab") is True
        assert w.delete(b"ab") is False
        assert w.delete(b"never") is False
        assert w.get(b"aa") == b"new"
        assert w.get(b"ab") is None
        assert list(w.scan(b"a", b"b")) == [(b"a", b"changed"), (b"aa", b"new")]
        assert keys_of(w.scan(b"a", b"b", reverse=True)) == [b"aa", b"a"]
    with filled.read() as r:
        assert list(r.scan(b"a", b"b")) == [(b"a", b"changed"), (b"aa", b"new")]


def test_a_write_block_that_raises_leaves_nothing(filled: Engine) -> None:
    with pytest.raises(RuntimeError, match="boom"), filled.write() as w:
        w.put(b"new", b"x")
        w.delete(b"a")
        raise RuntimeError("boom")
    with filled.read() as r:
        assert r.get(b"new") is None
        assert r.get(b"a") == b"va"


def test_a_full_engine_refuses_the_write_whole_and_keeps_earlier_commits(make: Factory,
                                                                       tmp_path: Path) -> None:
    engine = make(tmp_path / "small", 1 << 20)
    try:
        put_all(engine, {b"kept": b"x"})
        with pytest.raises(MapFull), engine.write() as w:
            for i in range(100):
                w.put(b"big%03d" % i, b"x" * 100_000)
        assert engine.make_room() is False  # nobody set a bigger size
        with engine.read() as r:
            assert keys_of(r.scan(b"\x00")) == [b"kept"]
        put_all(engine, {b"after": b"y"})  # the engine still works
        with engine.read() as r:
            assert r.get(b"after") == b"y"
    finally:
        engine.close()


def test_a_snapshot_sees_nothing_committed_after_it_was_taken(filled: Engine) -> None:
    with filled.read() as before:
        put_all(filled, {b"later": b"x", b"a": b"overwritten"})
        with filled.write() as w:
            w.delete(b"b")
        assert before.get(b"later") is None
        assert before.get(b"a") == b"va"
        assert before.get(b"b") == b"vb"
        assert keys_of(before.scan(b"\x00")) == KEYS
        with filled.read() as after:
            assert after.get(b"later") == b"x"
            assert after.get(b"b") is None


def test_write_transactions_run_one_at_a_time(engine: Engine) -> None:
    """Read-modify-write of one counter from four threads loses no increment: write
    transactions are serializable (each sees every earlier commit)."""
    put_all(engine, {b"n": b"0"})
    per_thread = 50

    def bump() -> None:
        for _ in range(per_thread):
            with engine.write() as w:
                n = int(w.get(b"n") or b"0")
                w.put(b"n", str(n + 1).encode())

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    with engine.read() as r:
        assert r.get(b"n") == str(4 * per_thread).encode()


def test_keys_up_to_max_key_bytes_work_and_longer_or_empty_ones_are_refused(engine: Engine
                                                                            ) -> None:
    assert engine.max_key_bytes >= MIN_KEY_BYTES
    longest = b"k" * engine.max_key_bytes
    put_all(engine, {longest: b"v"})
    with engine.read() as r:
        assert r.get(longest) == b"v"
        assert keys_of(r.scan(b"k")) == [longest]
    for bad in (longest + b"k", b""):
        with pytest.raises(StorageError), engine.write() as w:
            w.put(bad, b"v")
    with engine.read() as r:
        assert keys_of(r.scan(b"\x00")) == [longest]


def test_delete_range_removes_exactly_the_range_in_batches(filled: Engine) -> None:
    with filled.write() as w:
        for i in range(25):
            w.put(b"m%02d" % i, b"x")
    with filled.write() as w:
        assert delete_range(w, b"a", b"m20", batch=4) == 2 + 1 + 20  # a, ab, b, m00..m19
    with filled.read() as r:
        assert keys_of(r.scan(b"a", b"n")) == [b"m%02d" % i for i in range(20, 25)]
        assert r.get(b"\x00") is not None and r.get(b"\xfe") is not None


def test_version_moves_with_each_commit_and_with_nothing_else(engine: Engine) -> None:
    before = engine.version()
    with engine.read() as r:
        r.get(b"a")
    with pytest.raises(RuntimeError), engine.write() as w:  # undone: no commit
        w.put(b"a", b"1")
        raise RuntimeError("undo")
    assert engine.version() == before
    seen = {before}
    for i in range(3):
        with engine.write() as w:
            w.put(b"a", b"%d" % i)
        assert engine.version() not in seen  # a follower polling it learns of every commit
        seen.add(engine.version())


def test_housekeeping_and_info_report_counts_by_name(engine: Engine) -> None:
    for figures in (engine.housekeeping(), engine.info()):
        assert all(isinstance(k, str) and isinstance(v, int) for k, v in figures.items())


# -- the whole contract against a model, on random histories -----------------------------------

key_st = st.binary(min_size=1, max_size=3)
op_st = st.one_of(
    st.tuples(st.just("put"), key_st, st.binary(max_size=4)),
    st.tuples(st.just("delete"), key_st),
    st.tuples(st.just("get"), key_st),
    st.tuples(st.just("scan"), key_st, st.one_of(st.none(), key_st), st.booleans(),
              st.one_of(st.none(), st.integers(0, 5))),
)
txn_st = st.tuples(st.booleans(), st.lists(op_st, max_size=12))  # (commit?, ops)


def model_scan(data: dict[bytes, bytes], lo: bytes, hi: bytes | None, reverse: bool,
               limit: int | None) -> list[tuple[bytes, bytes]]:
    out = sorted((k, v) for k, v in data.items() if k >= lo and (hi is None or k < hi))
    if reverse:
        out.reverse()
    return out if limit is None else out[:limit]


class _Abort(Exception):
    pass


@pytest.mark.parametrize("make_engine", [lmdb_engine, memory_engine], ids=["lmdb", "memory"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=st.lists(txn_st, max_size=8))
def test_the_engine_behaves_as_a_sorted_map_with_transactions(
        make_engine: Factory, history: list[tuple[bool, list[tuple]]]) -> None:
    """Every get and scan, inside write transactions and in snapshots after them, returns what
    a sorted dict would, where committed transactions apply and aborted ones leave nothing."""
    with tempfile.TemporaryDirectory() as d:
        engine = make_engine(Path(d) / "vol", SIZE)
        committed: dict[bytes, bytes] = {}
        try:
            for commit, ops in history:
                pending = dict(committed)
                try:
                    with engine.write() as w:
                        for op in ops:
                            if op[0] == "put":
                                w.put(op[1], op[2])
                                pending[op[1]] = op[2]
                            elif op[0] == "delete":
                                assert w.delete(op[1]) is (op[1] in pending)
                                pending.pop(op[1], None)
                            elif op[0] == "get":
                                assert w.get(op[1]) == pending.get(op[1])
                            else:
                                _, lo, hi, rev, lim = op
                                assert list(w.scan(lo, hi, reverse=rev, limit=lim)) == \
                                    model_scan(pending, lo, hi, rev, lim)
                        if not commit:
                            raise _Abort
                except _Abort:
                    pass
                else:
                    committed = pending
                with engine.read() as r:
                    assert list(r.scan(b"\x00")) == model_scan(committed, b"\x00", None,
                                                               False, None)
        finally:
            engine.close()
