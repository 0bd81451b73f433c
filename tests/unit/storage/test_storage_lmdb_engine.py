"""The LMDB engine's own mechanics (the contract is in tests/contract): the volume filling up,
another process growing the map, reader slots of dead processes; real LMDB files, real second
processes (spawned, never forked)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from storage import MapFull, Store, WriteView
from storage.lmdb_env import LmdbEngine, reader_slots

ROOT = str(Path(__file__).resolve().parents[3])
SMALL = 1 << 20


def _fill(env: LmdbEngine) -> int:
    """Write 200-byte values in groups of 20 until the map is full; return how many keys were
    committed (keys ``k0..k<n-1>``)."""
    committed = 0
    with pytest.raises(MapFull) as full:
        while True:
            with env.write() as txn:
                for i in range(committed, committed + 20):
                    txn.put(b"k%08d" % i, os.urandom(200))
            committed += 20
    assert "--map-size" in str(full.value) and "full" in str(full.value)
    return committed


def _grow_elsewhere(path: Path, map_size: int, extra_keys: int = 0) -> None:
    """Open the environment in another process with ``map_size`` and commit key ``grown``
    plus ``extra_keys`` 200-byte values (``e0``, ``e1``, ...)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from storage.lmdb_env import LmdbEngine; "
            "e = LmdbEngine(sys.argv[2], map_size=int(sys.argv[3]));\n"
            "with e.write() as t:\n"
            "    t.put(b'grown', b'y')\n"
            "    for i in range(int(sys.argv[4])): t.put(b'e%d' % i, b'z' * 200)\n"
            "e.close()")
    subprocess.run([sys.executable, "-c", code, ROOT, str(path), str(map_size), str(extra_keys)],
                   check=True, timeout=60)


def test_version_sees_a_commit_of_another_process_without_a_snapshot(tmp_path: Path) -> None:
    env = LmdbEngine(str(tmp_path / "v"), map_size=SMALL)
    with env.write() as txn:
        txn.put(b"a", b"x")
    before = env.version()
    _grow_elsewhere(tmp_path / "v", SMALL)  # what a change stream's tail polls for
    assert env.version() > before
    with env.read() as txn:
        assert txn.get(b"grown") == b"y"
    env.close()


def test_a_full_map_refuses_writes_and_keeps_what_was_committed(tmp_path: Path) -> None:
    env = LmdbEngine(str(tmp_path / "v"), map_size=SMALL)
    n = _fill(env)
    assert n > 1000
    with env.read() as txn:
        assert all(txn.get(b"k%08d" % i) is not None for i in range(n))
        assert txn.get(b"k%08d" % n) is None  # the refused group left nothing
    env.close()


def test_a_map_grown_by_another_process_is_adopted_by_readers_and_writers(tmp_path: Path
                                                                         ) -> None:
    path = tmp_path / "v"
    env = LmdbEngine(str(path), map_size=SMALL)
    n = _fill(env)
    assert not env.adopt_map_size(), "nothing grew yet"
    _grow_elsewhere(path, 8 * SMALL, extra_keys=10_000)  # data now lies past our 1 MiB map
    # A reader gets MapResizedError from LMDB, adopts the size and begins again by itself.
    with env.read() as txn:
        assert txn.get(b"grown") == b"y"
        assert txn.get(b"e9999") == b"z" * 200
        assert txn.get(b"k%08d" % (n - 1)) is not None
    assert env.map_size() == 8 * SMALL
    with env.write() as txn:
        for i in range(3000):
            txn.put(b"after%08d" % i, b"x" * 200)
    with env.read() as txn:
        assert txn.get(b"after%08d" % 2999) == b"x" * 200
    env.close()


def test_a_writer_adopts_after_map_full_when_the_meta_page_grew(tmp_path: Path) -> None:
    path = tmp_path / "v"
    env = LmdbEngine(str(path), map_size=SMALL)
    _fill(env)
    _grow_elsewhere(path, 4 * SMALL)
    try:
        with env.write() as txn:
            for i in range(2000):
                txn.put(b"w%08d" % i, b"x" * 200)
    except MapFull:
        assert env.adopt_map_size()
        with env.write() as txn:
            for i in range(2000):
                txn.put(b"w%08d" % i, b"x" * 200)
    with env.read() as txn:
        assert txn.get(b"w%08d" % 1999) is not None
    env.close()


def test_a_transaction_may_end_in_another_thread_than_the_one_that_began_it(tmp_path: Path
                                                                            ) -> None:
    env = LmdbEngine(str(tmp_path / "v"), map_size=SMALL)
    ctx = env.read()
    ctx.__enter__()
    ended: list[BaseException] = []

    def end() -> None:
        try:
            ctx.__exit__(None, None, None)
        except BaseException as e:
            ended.append(e)

    t = threading.Thread(target=end)
    t.start()
    t.join(10)
    assert not ended, ended
    assert env.adopt_map_size(timeout_s=1) is False  # the gate is free again: nothing grew
    env.close()


def test_adoption_waits_for_open_transactions_and_gives_up_after_its_timeout(tmp_path: Path
                                                                             ) -> None:
    env = LmdbEngine(str(tmp_path / "v"), map_size=SMALL)
    opened, release = threading.Event(), threading.Event()

    def long_reader() -> None:
        with env.read():
            opened.set()
            release.wait(10)

    t = threading.Thread(target=long_reader)
    t.start()
    try:
        assert opened.wait(10)
        assert env.adopt_map_size(timeout_s=0.2) is False
        # A thread inside a transaction may begin another, a resize pending or not.
        with env.read(), env.read():
            pass
    finally:
        release.set()
        t.join(10)
    assert env.adopt_map_size(timeout_s=2) is False  # nothing grew, but it got the gate
    env.close()


def test_store_transact_runs_the_work_again_after_another_process_grew_the_map(tmp_path: Path
                                                                              ) -> None:
    """The retry that nodes rely on lives in storage: one call, the work runs twice, one
    commit."""
    path = tmp_path / "v"
    store = Store(LmdbEngine(str(path), map_size=SMALL))
    _fill(store.engine)  # type: ignore[arg-type]
    _grow_elsewhere(path, 4 * SMALL)
    runs = []

    def work(view: WriteView) -> int:
        runs.append(view.next_position())
        for i in range(2000):
            view.record_idempotent(f"w{i}", "x" * 200, ts=0.0)
        return len(runs)

    assert store.transact(work) == 2
    with store.read() as view:
        assert view.idempotent_result("w1999") == "x" * 200
    with store.engine.read() as snap:
        assert snap.get(b"grown") == b"y"
    store.close()


def test_store_transact_raises_map_full_when_no_room_can_be_made(tmp_path: Path) -> None:
    store = Store(LmdbEngine(str(tmp_path / "v"), map_size=SMALL))
    _fill(store.engine)  # type: ignore[arg-type]
    runs = []

    def work(view: WriteView) -> None:
        runs.append(1)
        for i in range(2000):
            view.record_idempotent(f"w{i}", "x" * 200, ts=0.0)

    with pytest.raises(MapFull):
        store.transact(work)
    assert runs == [1]
    with store.read() as view:
        assert view.idempotent_result("w0") is None
    store.close()


def test_housekeeping_frees_the_reader_slot_of_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "v"
    engine = LmdbEngine(str(path), map_size=SMALL)
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); "
            "from storage.lmdb_env import LmdbEngine; e = LmdbEngine(sys.argv[2]);\n"
            "ctx = e.read(); ctx.__enter__(); print('reading', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, ROOT, str(path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "reading"
        assert engine.housekeeping() == {"stale reader slots freed": 0}  # it is alive
    finally:
        proc.kill()
        proc.wait(10)
    assert engine.housekeeping() == {"stale reader slots freed": 1}
    engine.close()


def test_write_transactions_of_several_processes_are_totally_ordered(tmp_path: Path) -> None:
    """kv.py's promise across processes, which fencing and positions rest on: read-modify-write
    of one counter from three processes at once loses no increment."""
    path = tmp_path / "v"
    engine = LmdbEngine(str(path), map_size=SMALL)
    with engine.write() as w:
        w.put(b"n", b"0")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from storage.lmdb_env import "
            "LmdbEngine; e = LmdbEngine(sys.argv[2], map_size=int(sys.argv[3]))\n"
            "for _ in range(200):\n"
            "    with e.write() as w:\n"
            "        w.put(b'n', str(int(w.get(b'n')) + 1).encode())\n"
            "e.close()")
    procs = [subprocess.Popen([sys.executable, "-c", code, ROOT, str(path), str(SMALL)])
             for _ in range(3)]
    try:
        assert [p.wait(120) for p in procs] == [0, 0, 0]
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
    with engine.read() as r:
        assert r.get(b"n") == b"600"
    engine.close()


def test_reader_slots_counts_held_and_reading_slots_per_process() -> None:
    """The reader table's text is counted as slots held, reading, and those of one pid."""
    table = ("    pid     thread     txnid\n"
             "      100 7f00 12\n      100 7f01 -\n      200 7f02 12\n")
    assert reader_slots(table, 100) == {"reader_slots_held": 3, "reader_slots_reading": 2,
                                        "reader_slots_held_here": 2,
                                        "reader_slots_reading_here": 1}
    assert reader_slots("(no active readers)\n", 100)["reader_slots_held"] == 0


def test_info_reports_an_open_snapshot_and_the_space_used(tmp_path: Path) -> None:
    """``info`` sees this process's snapshot in the reader table and the volume's bytes."""
    env = LmdbEngine(str(tmp_path), map_size=SMALL)
    try:
        with env.write() as txn:
            for i in range(50):
                txn.put(b"k%04d" % i, os.urandom(200))
        before = env.info()
        with env.read():
            during = env.info()
        assert during["reader_slots_reading_here"] == before["reader_slots_reading_here"] + 1
        assert during["reader_slots_reading"] >= during["reader_slots_reading_here"]
        assert before["map_used_bytes"] >= 50 * 200
        assert before["file_bytes"] >= before["map_used_bytes"]
        assert before["disk_bytes"] > 0 and before["map_size"] == SMALL
    finally:
        env.close()
