"""The LMDB environment when the volume fills up and when another process grows the map:
real LMDB files, a real second process (spawned, never forked)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from storage import MapFull
from storage.lmdb_env import LmdbEnv

ROOT = str(Path(__file__).resolve().parents[3])
SMALL = 1 << 20


def _fill(env: LmdbEnv) -> int:
    """Write 200-byte values in groups of 20 until the map is full; return how many keys were
    committed (keys ``k0..k<n-1>``)."""
    committed = 0
    with pytest.raises(MapFull) as full:
        while True:
            with env.write_txn() as txn:
                for i in range(committed, committed + 20):
                    txn.put(b"k%08d" % i, os.urandom(200))
            committed += 20
    assert "--map-size" in str(full.value) and "full" in str(full.value)
    return committed


def _grow_elsewhere(path: Path, map_size: int, extra_keys: int = 0) -> None:
    """Open the environment in another process with ``map_size`` and commit key ``grown``
    plus ``extra_keys`` 200-byte values (``e0``, ``e1``, ...)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from storage.lmdb_env import LmdbEnv; "
            "e = LmdbEnv(sys.argv[2], map_size=int(sys.argv[3]));\n"
            "with e.write_txn() as t:\n"
            "    t.put(b'grown', b'y')\n"
            "    for i in range(int(sys.argv[4])): t.put(b'e%d' % i, b'z' * 200)\n"
            "e.close()")
    subprocess.run([sys.executable, "-c", code, ROOT, str(path), str(map_size), str(extra_keys)],
                   check=True, timeout=60)


def test_a_full_map_refuses_writes_and_keeps_what_was_committed(tmp_path: Path) -> None:
    env = LmdbEnv(str(tmp_path / "v"), map_size=SMALL)
    n = _fill(env)
    assert n > 1000
    with env.read_txn() as txn:
        assert all(txn.get(b"k%08d" % i) is not None for i in range(n))
        assert txn.get(b"k%08d" % n) is None  # the refused group left nothing
    env.close()


def test_a_map_grown_by_another_process_is_adopted_by_readers_and_writers(tmp_path: Path
                                                                         ) -> None:
    path = tmp_path / "v"
    env = LmdbEnv(str(path), map_size=SMALL)
    n = _fill(env)
    assert not env.adopt_map_size(), "nothing grew yet"
    _grow_elsewhere(path, 8 * SMALL, extra_keys=10_000)  # data now lies past our 1 MiB map
    # A reader gets MapResizedError from LMDB, adopts the size and begins again by itself.
    with env.read_txn() as txn:
        assert txn.get(b"grown") == b"y"
        assert txn.get(b"e9999") == b"z" * 200
        assert txn.get(b"k%08d" % (n - 1)) is not None
    assert env.map_size() == 8 * SMALL
    with env.write_txn() as txn:
        for i in range(3000):
            txn.put(b"after%08d" % i, b"x" * 200)
    with env.read_txn() as txn:
        assert txn.get(b"after%08d" % 2999) == b"x" * 200
    env.close()


def test_a_writer_adopts_after_map_full_when_the_meta_page_grew(tmp_path: Path) -> None:
    path = tmp_path / "v"
    env = LmdbEnv(str(path), map_size=SMALL)
    _fill(env)
    _grow_elsewhere(path, 4 * SMALL)
    try:
        with env.write_txn() as txn:
            for i in range(2000):
                txn.put(b"w%08d" % i, b"x" * 200)
    except MapFull:
        assert env.adopt_map_size()
        with env.write_txn() as txn:
            for i in range(2000):
                txn.put(b"w%08d" % i, b"x" * 200)
    with env.read_txn() as txn:
        assert txn.get(b"w%08d" % 1999) is not None
    env.close()


def test_a_transaction_may_end_in_another_thread_than_the_one_that_began_it(tmp_path: Path
                                                                            ) -> None:
    env = LmdbEnv(str(tmp_path / "v"), map_size=SMALL)
    ctx = env.read_txn()
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
    env = LmdbEnv(str(tmp_path / "v"), map_size=SMALL)
    opened, release = threading.Event(), threading.Event()

    def long_reader() -> None:
        with env.read_txn():
            opened.set()
            release.wait(10)

    t = threading.Thread(target=long_reader)
    t.start()
    try:
        assert opened.wait(10)
        assert env.adopt_map_size(timeout_s=0.2) is False
        # A thread inside a transaction may begin another, a resize pending or not.
        with env.read_txn(), env.read_txn():
            pass
    finally:
        release.set()
        t.join(10)
    assert env.adopt_map_size(timeout_s=2) is False  # nothing grew, but it got the gate
    env.close()
