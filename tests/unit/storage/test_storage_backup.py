"""The backup formats (``storage/backup.py``) and the volume check (``storage/integrity.py``):
files check themselves, a manifest lists what a backup holds, the restore plan refuses a gap and
says where, and ``verify_dir`` finds a flipped byte and a missing segment."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from storage import (
    PRIMARY,
    Change,
    Column,
    Identity,
    Schema,
    StorageError,
    Store,
    keys,
    open_copy,
    open_volume,
    open_volume_from_copy,
)
from storage import backup as fmt
from storage.errors import Corrupt
from storage.integrity import check_volume
from storage.keycode import encode
from storage.keys import log as log_key
from storage.keys import row as row_key


def _schema() -> Schema:
    return Schema.build("t", [Column("id", "int64"), Column("v", "string")], ["id"])


def _commit(store: Store, i: int, ts: float = 1.0) -> int:
    with store.write() as w:
        t = w.table("t") or w.create_table(_schema())
        w.put(t, encode((i % 7,)), w.next_position(), [i % 7, f"v{i}"])
        return w.append_log(ts=ts, node="n", changes=[Change("t", "put", (i % 7,))])


def _volume(tmp_path: Path, name: str = "src") -> Store:
    return open_volume(str(tmp_path / name), map_size=1 << 26)


def _backup(store: Store, dest: Path, per_segment: int = 3) -> fmt.Manifest:
    """A full copy at the current position, and the log held as segments."""
    dest.mkdir(parents=True, exist_ok=True)
    w = fmt.FramedWriter(str(dest / fmt.COPY_FILE), fmt.COPY_MAGIC)
    with store.read() as view:
        items = list(view.replicated_items())
        position = view.commit_position()
    w.add(items)
    sha, size = w.finish()
    copy = fmt.CopyInfo(fmt.COPY_FILE, position, len(items), sha, size, 0.0)
    manifest = fmt.Manifest("c", "vol", 0.0, copy)
    fmt.write_manifest(str(dest), manifest)
    return manifest


def _segments(store: Store, dest: Path, start: int, per_segment: int = 3
              ) -> list[fmt.SegmentInfo]:
    with store.read() as view:
        held = view.log_stored(start, 10**6)
    return [fmt.write_segment(str(dest / fmt.LOG_DIR), held[i:i + per_segment])
            for i in range(0, len(held), per_segment)]


def test_a_framed_file_reads_back_and_a_flipped_byte_is_a_checksum_mismatch(tmp_path) -> None:
    """What was written is read back whole; one byte changed anywhere fails the read."""
    path = str(tmp_path / "f")
    w = fmt.FramedWriter(path, fmt.SEGMENT_MAGIC)
    for i in range(100):
        w.add([i, b"x" * i])
    sha, size = w.finish()
    assert not os.path.exists(path + fmt.PARTIAL)
    assert fmt.file_sha256(path) == (sha, size)
    assert list(fmt.read_framed(path, fmt.SEGMENT_MAGIC)) == [[i, b"x" * i] for i in range(100)]
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0x01
    Path(path).write_bytes(bytes(data))
    with pytest.raises(Corrupt):
        list(fmt.read_framed(path, fmt.SEGMENT_MAGIC))
    Path(path).write_bytes(bytes(data[:-5]))
    with pytest.raises(Corrupt):
        list(fmt.read_framed(path, fmt.SEGMENT_MAGIC))


def test_an_aborted_writer_leaves_nothing(tmp_path) -> None:
    """A file cut short never appears under its own name."""
    w = fmt.FramedWriter(str(tmp_path / "f"), fmt.COPY_MAGIC)
    w.add([1])
    w.abort()
    assert os.listdir(tmp_path) == []


def test_a_segment_checks_its_positions_against_its_name(tmp_path) -> None:
    """A segment renamed to other positions does not read."""
    store = _volume(tmp_path)
    for i in range(5):
        _commit(store, i)
    (info,) = _segments(store, tmp_path / "b", 1, per_segment=10)
    store.close()
    assert (info.first, info.last, info.records) == (1, 5, 5)
    path = tmp_path / "b" / fmt.LOG_DIR / info.name
    assert [p for p, _ in fmt.read_segment(str(path), decode=True)] == [1, 2, 3, 4, 5]
    moved = path.with_name(fmt.segment_name(2, 6))
    path.rename(moved)
    with pytest.raises(Corrupt, match="position 1 where 2 was expected"):
        list(fmt.read_segment(str(moved)))


def test_the_plan_takes_overlapping_segments_and_refuses_a_gap_naming_it() -> None:
    """Segments of an archive and of incremental backups may overlap; a hole is named."""
    segs = [(11, 20, "a"), (15, 30, "b"), (31, 35, "c"), (40, 50, "d")]
    p = fmt.plan(10, segs, 33)
    assert [(s.path, s.start, s.end) for s in p.steps] == [("a", 11, 20), ("b", 21, 30),
                                                            ("c", 31, 33)]
    with pytest.raises(fmt.Gap, match=r"positions 36\.\.39 are missing"):
        fmt.plan(10, segs, 45)
    with pytest.raises(fmt.Gap, match="position 60 is not reached"):
        fmt.plan(45, segs, 60)
    open_ended = fmt.plan(10, segs, None)
    assert open_ended.end == 35 and "36..39" in open_ended.gap
    assert fmt.plan(50, segs, None) == fmt.Plan((), 50, "")
    assert fmt.plan(10, segs, 10).steps == ()


def test_the_manifest_round_trips_and_a_foreign_format_is_refused(tmp_path) -> None:
    copy = fmt.CopyInfo(fmt.COPY_FILE, 7, 3, "ab", 10, 1.5)
    seg = fmt.SegmentInfo(fmt.segment_name(8, 9), 8, 9, 2.0, 3.0, "cd", 20)
    m = fmt.Manifest("c", "vol", 1.0, copy).with_segments([seg], 4.0)
    assert m.position == 9
    fmt.write_manifest(str(tmp_path), m)
    assert fmt.read_manifest(str(tmp_path)) == m
    (tmp_path / fmt.MANIFEST).write_text('{"format": 99}')
    with pytest.raises(Corrupt, match="format 99"):
        fmt.read_manifest(str(tmp_path))


def test_verify_finds_a_whole_backup_whole_and_names_a_flipped_byte_and_a_lost_segment(
        tmp_path) -> None:
    """A backup as the commands write it verifies; damage to the copy or a segment, and a
    segment gone, are each reported."""
    store = _volume(tmp_path)
    for i in range(4):
        _commit(store, i)
    dest = tmp_path / "b"
    manifest = _backup(store, dest)
    for i in range(4, 12):
        _commit(store, i)
    segs = _segments(store, dest, manifest.copy.position + 1)
    store.close()
    fmt.write_manifest(str(dest), manifest.with_segments(segs, 1.0))
    assert fmt.verify_dir(str(dest)) == ([], [])

    middle = dest / fmt.LOG_DIR / segs[1].name
    saved = middle.read_bytes()
    middle.write_bytes(saved[:20] + bytes([saved[20] ^ 0xFF]) + saved[21:])
    problems, _ = fmt.verify_dir(str(dest))
    assert any(segs[1].name in p and "SHA-256" in p for p in problems), problems
    middle.unlink()
    problems, _ = fmt.verify_dir(str(dest))
    assert any("missing" in p and segs[1].name in p for p in problems), problems
    assert any(f"gap: positions {segs[1].first}..{segs[1].last}" in p for p in problems)
    middle.write_bytes(saved)
    copy = dest / fmt.COPY_FILE
    data = bytearray(copy.read_bytes())
    data[-40] ^= 0x10
    copy.write_bytes(bytes(data))
    problems, _ = fmt.verify_dir(str(dest))
    assert problems == [f"{fmt.COPY_FILE}: SHA-256 mismatch (the file is damaged)"]


def test_a_directory_without_a_manifest_is_not_a_backup(tmp_path) -> None:
    (tmp_path / (fmt.COPY_FILE + fmt.PARTIAL)).write_bytes(b"half")
    problems, _ = fmt.verify_dir(str(tmp_path))
    assert problems and "no manifest.json" in problems[0]


def test_the_volume_check_passes_a_sound_volume_and_names_a_bad_row_and_a_log_gap(
        tmp_path) -> None:
    store = _volume(tmp_path)
    for i in range(6):
        _commit(store, i)
    report = check_volume(store)
    assert report.problems == [] and (report.tables, report.rows, report.records) == (1, 6, 6)
    with store.read() as view:
        table_id = view.require_table("t").table_id
    with store.engine.write() as txn:
        txn.put(row_key(table_id, encode((3,))), b"\x92\x01\x92\x03\xc3")  # v: a bool
        txn.put(row_key(table_id, encode((99,))), b"garbage")
        txn.delete(log_key(3))
    problems = check_volume(store).problems
    store.close()
    assert any("column 'v' is string; got bool" in p for p in problems), problems
    assert any("unreadable row" in p for p in problems), problems
    assert any("positions 3..3 missing" in p for p in problems), problems


def _lmdb_backup(store: Store, dest: Path, chunk_bytes: int = fmt.CHUNK_BYTES
                 ) -> fmt.Manifest:
    """A full backup as ``shardless backup --volume`` writes it."""
    dest.mkdir(parents=True, exist_ok=True)
    manifest = fmt.Manifest("c", "vol", 0.0, fmt.write_lmdb_copy(store, str(dest), 0.0,
                                                                 chunk_bytes=chunk_bytes))
    fmt.write_manifest(str(dest), manifest)
    return manifest


def test_an_lmdb_copy_holds_the_volume_at_the_position_it_returns(tmp_path) -> None:
    """``Store.copy_to`` writes the whole volume as one file and returns the copy's position;
    commits after it are not in the copy, and opening the copy writes nothing beside it."""
    store = _volume(tmp_path)
    for i in range(5):
        _commit(store, i)
    with store.read() as view:
        items, at = list(view.replicated_items()), view.commit_position()
    position = store.copy_to(str(tmp_path / "copy.mdb"))
    _commit(store, 5)
    store.close()
    assert position == at == 5
    copy = open_copy(str(tmp_path / "copy.mdb"))
    try:
        with copy.read() as view:
            assert view.commit_position() == 5 and list(view.replicated_items()) == items
        assert check_volume(copy).problems == []
    finally:
        copy.close()
    assert sorted(os.listdir(tmp_path)) == ["copy.mdb", "src"]
    with pytest.raises(StorageError, match="cannot create"):
        open_volume(str(tmp_path / "src"), map_size=1 << 26).copy_to(str(tmp_path / "copy.mdb"))


def test_an_lmdb_backup_round_trips_its_manifest_and_verify_names_damage(tmp_path) -> None:
    """The manifest of an LMDB copy is format 3 with kind ``lmdb`` and a chunked checksum;
    verify passes it, names a flipped byte in the first or the last piece by its checksum, and
    runs the volume check on a copy whose checksum fits."""
    store = _volume(tmp_path)
    for i in range(6):
        _commit(store, i)
    dest = tmp_path / "b"
    manifest = _lmdb_backup(store, dest, chunk_bytes=8192)
    assert fmt.read_manifest(str(dest)) == manifest
    assert (manifest.format, manifest.copy.kind, manifest.copy.position) == (3, "lmdb", 6)
    assert manifest.copy.chunk_bytes == 8192
    assert sorted(os.listdir(dest)) == [fmt.LMDB_FILE, fmt.MANIFEST]
    assert fmt.verify_dir(str(dest)) == ([], [])

    copy = dest / fmt.LMDB_FILE
    saved = copy.read_bytes()
    assert manifest.copy.size == len(saved) > 3 * 8192
    assert manifest.copy.sha256 == _chunked(saved, 8192)
    for at in (5000, len(saved) - 10):
        copy.write_bytes(saved[:at] + bytes([saved[at] ^ 0x01]) + saved[at + 1:])
        problems, _ = fmt.verify_dir(str(dest))
        assert problems == [f"{fmt.LMDB_FILE}: SHA-256 mismatch (the file is damaged)"]
    copy.write_bytes(saved)

    # A bad row in the copied volume, under a checksum that fits: the volume check finds it.
    with store.read() as view:
        table_id = view.require_table("t").table_id
    with store.engine.write() as txn:
        txn.put(row_key(table_id, encode((99,))), b"garbage")
    shutil.rmtree(dest)
    _lmdb_backup(store, dest)
    store.close()
    problems, _ = fmt.verify_dir(str(dest))
    assert any(p.startswith(fmt.LMDB_FILE) and "unreadable row" in p for p in problems), problems


def _chunked(data: bytes, chunk_bytes: int) -> str:
    """The chunked checksum, computed here on its own: SHA-256 of the pieces' SHA-256s."""
    return hashlib.sha256(b"".join(hashlib.sha256(data[i:i + chunk_bytes]).digest()
                                   for i in range(0, len(data), chunk_bytes))).hexdigest()


def test_the_chunk_hasher_follows_a_file_as_it_is_written_and_starts_over_when_told(
        tmp_path) -> None:
    """Pieces are hashed as a writer (another thread, in small writes) extends the file; a
    restart (the file emptied, written again) forgets what was hashed before; the result is the
    chunked checksum of the file as it ends, whatever its last piece's length."""
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    hasher = fmt.ChunkHasher(str(path), chunk_bytes=1000, threads=2, writeback=True)
    first, second = os.urandom(5500), os.urandom(4321)
    try:
        for data in (first, second):
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            hasher.restart()

            def write(data: bytes = data) -> None:
                for i in range(0, len(data), 700):
                    os.write(fd, data[i:i + 700])
                    time.sleep(0.002)

            writer = threading.Thread(target=write)
            writer.start()
            writer.join()
        got = hasher.finish()
    finally:
        os.close(fd)
    assert got == (_chunked(second, 1000), len(second))
    assert fmt.file_checksum(str(path), 1000) == got
    assert fmt.file_checksum(str(path), 0) == (hashlib.sha256(second).hexdigest(), len(second))


def test_an_lmdb_backup_of_format_2_still_verifies_and_its_manifest_reads_as_written(
        tmp_path) -> None:
    """A backup written before the chunked checksum (format 2: the whole file's SHA-256, no
    ``chunk_bytes``) reads, re-encodes byte for byte, verifies, and a flipped byte is found; a
    manifest whose format does not fit its checksum is refused."""
    store = _volume(tmp_path)
    for i in range(3):
        _commit(store, i)
    dest = tmp_path / "b"
    dest.mkdir()
    position = store.copy_to(str(dest / fmt.LMDB_FILE))
    store.close()
    sha, size = fmt.file_sha256(str(dest / fmt.LMDB_FILE))
    old = {"cluster": "c", "volume_id": "vol", "created_at": 0.0, "format": 2, "position":
           position, "segments": [], "updated_at": 0.0,
           "copy": {"name": fmt.LMDB_FILE, "position": position, "items": 0, "sha256": sha,
                    "size": size, "taken_at": 0.0, "kind": "lmdb"}}
    data = (json.dumps(old, indent=1, sort_keys=True) + "\n").encode()
    (dest / fmt.MANIFEST).write_bytes(data)
    manifest = fmt.read_manifest(str(dest))
    assert manifest is not None and (manifest.format, manifest.copy.chunk_bytes) == (2, 0)
    assert manifest.encode() == data
    assert fmt.verify_dir(str(dest)) == ([], [])
    copy = dest / fmt.LMDB_FILE
    saved = copy.read_bytes()
    copy.write_bytes(saved[:100] + bytes([saved[100] ^ 0x01]) + saved[101:])
    problems, _ = fmt.verify_dir(str(dest))
    assert problems == [f"{fmt.LMDB_FILE}: SHA-256 mismatch (the file is damaged)"]
    old["copy"]["chunk_bytes"] = 4096  # a chunked checksum under format 2
    (dest / fmt.MANIFEST).write_text(json.dumps(old))
    with pytest.raises(Corrupt, match="format 2 with a copy of kind 'lmdb' and chunk_bytes"):
        fmt.read_manifest(str(dest))


def test_keep_replicated_only_leaves_a_copy_its_replicated_key_space_and_an_empty_log(
        tmp_path) -> None:
    """A volume put in place from an LMDB copy loses its log, fences, grants and identity,
    keeps every replicated item, and its log goes on after the copy's position."""
    store = _volume(tmp_path)
    for i in range(4):
        _commit(store, i)
    store.transact(lambda w: w.fence(42, ts=1.0, by="n"))
    store.transact(lambda w: w.set_volume_identity(Identity.new(PRIMARY)))
    with store.read() as view:
        items = list(view.replicated_items())
    position = store.copy_to(str(tmp_path / "copy.mdb"))
    store.close()
    restored = open_volume_from_copy(str(tmp_path / "copy.mdb"), str(tmp_path / "new"),
                                     map_size=1 << 26)
    try:
        with pytest.raises(Corrupt, match="at position 4, not 3"):
            restored.transact(lambda w: w.keep_replicated_only(3))
        assert restored.transact(lambda w: w.keep_replicated_only(position)) >= 5
        with restored.read() as view:
            assert list(view.replicated_items()) == items
            assert view.commit_position() == 4 and view.log_bounds() == (5, 4, 0)
            assert not view.is_fenced(42) and view.volume_identity() is None
        with restored.engine.read() as txn:
            assert all(keys.is_replicated(k) or k in keys.LOG_META
                       for k, _ in txn.scan(b"\x00"))
        _commit(restored, 4)
        with restored.read() as view:
            assert view.commit_position() == 5
    finally:
        restored.close()
    with pytest.raises(StorageError, match="holds a volume already"):
        open_volume_from_copy(str(tmp_path / "copy.mdb"), str(tmp_path / "new"))
