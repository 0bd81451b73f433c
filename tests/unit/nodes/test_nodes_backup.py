"""``restore`` (``nodes/backup.py``) on real LMDB volumes, without a cluster: a full copy plus
segments replayed to a position or a time equals the source at that point; a gap is refused
and named; the result is a new primary's volume that passes the volume check."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodes.backup import CommandError, parse_time, restore
from storage import PRIMARY, Store, open_volume
from storage import backup as fmt
from storage.integrity import check_volume
from tests.harness.imports import imported_by
from tests.unit.storage.test_storage_backup import _backup, _commit, _lmdb_backup, _segments


def _state(store: Store) -> list[tuple[bytes, bytes]]:
    with store.read() as view:
        return list(view.replicated_items())


def test_restore_to_a_position_and_to_a_time_equals_the_source_there(tmp_path: Path) -> None:
    src = open_volume(str(tmp_path / "src"), map_size=1 << 26)
    for i in range(5):
        _commit(src, i, ts=100.0 + i)
    manifest = _backup(src, tmp_path / "b")
    states = {}
    for i in range(5, 40):
        pos = _commit(src, i, ts=100.0 + i)
        states[pos] = _state(src)
    _segments(src, tmp_path / "a", manifest.copy.position + 1, per_segment=4)
    with src.read() as view:
        identity = view.volume_identity()
    src.close()

    for n, target in enumerate((manifest.copy.position, 12, 40)):
        out = tmp_path / f"r{n}"
        got = restore(str(tmp_path / "b"), str(out), archives=[str(tmp_path / "a")],
                      to_position=target)
        assert got.position == target
        store = open_volume(str(out), map_size=1 << 26)
        try:
            if target in states:
                assert _state(store) == states[target]
            with store.read() as view:
                ident = view.volume_identity()
                assert view.commit_position() == target
            assert ident is not None and ident.role == PRIMARY
            assert identity is None or ident.volume_id != identity.volume_id
            assert check_volume(store).problems == []
        finally:
            store.close()
    by_time = restore(str(tmp_path / "b"), str(tmp_path / "rt"),
                      archives=[str(tmp_path / "a")], to_time=120.5)
    assert by_time.position == 21  # the commit at ts 120 is position 21
    with pytest.raises(CommandError, match="records on hand end at position 40"):
        restore(str(tmp_path / "b"), str(tmp_path / "rt2"), archives=[str(tmp_path / "a")],
                to_time=1000.0)


def test_restore_refuses_a_gap_and_says_where(tmp_path: Path) -> None:
    src = open_volume(str(tmp_path / "src"), map_size=1 << 26)
    _commit(src, 0)
    manifest = _backup(src, tmp_path / "b")
    for i in range(1, 13):
        _commit(src, i)
    segs = _segments(src, tmp_path / "b", manifest.copy.position + 1, per_segment=4)
    src.close()
    (tmp_path / "b" / fmt.LOG_DIR / segs[1].name).unlink()
    with pytest.raises(CommandError, match=rf"positions {segs[1].first}\.\.{segs[1].last} are "
                                           rf"missing"):
        restore(str(tmp_path / "b"), str(tmp_path / "r"), to_position=13)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
    assert restore(str(tmp_path / "b"), str(tmp_path / "r2"), to_position=5).position == 5


def test_parse_time_takes_unix_seconds_and_iso_8601() -> None:
    assert parse_time("1700000000.5") == 1700000000.5
    assert parse_time("2023-11-14T22:13:20+00:00") == 1700000000.0
    with pytest.raises(ValueError, match="neither"):
        parse_time("yesterday")


def test_progress_is_a_plain_line_without_rich(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """``rich`` is an optional extra: without it the progress is one line on stderr."""
    import sys

    from nodes.backup import Progress

    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "rich.progress", None)
    bar = Progress("backup from a:1")
    bar.update(3 << 20, "at position 7")
    bar.close()
    assert "backup from a:1: 3.0 MiB" in capsys.readouterr().err


def test_restore_from_an_lmdb_copy_and_segments_equals_the_source_there(tmp_path: Path) -> None:
    """An LMDB copy (``backup --volume``) restores like a logical one: the replicated key
    space at each target, a new primary identity, no fence of the source, a sound volume."""
    src = open_volume(str(tmp_path / "src"), map_size=1 << 26)
    for i in range(5):
        _commit(src, i)
    src.transact(lambda w: w.fence(7, ts=1.0, by="n"))
    manifest = _lmdb_backup(src, tmp_path / "b")
    states = {manifest.copy.position: _state(src)}
    for i in range(5, 20):
        pos = _commit(src, i)
        states[pos] = _state(src)
    _segments(src, tmp_path / "a", manifest.copy.position + 1, per_segment=4)
    src.close()
    for n, target in enumerate((manifest.copy.position, 13, 20)):
        out = tmp_path / f"r{n}"
        got = restore(str(tmp_path / "b"), str(out), archives=[str(tmp_path / "a")],
                      to_position=target)
        assert (got.position, got.copy_position) == (target, manifest.copy.position)
        store = open_volume(str(out), map_size=1 << 26)
        try:
            assert _state(store) == states[target]
            with store.read() as view:
                ident = view.volume_identity()
                assert view.commit_position() == target and not view.is_fenced(7)
            assert ident is not None and ident.role == PRIMARY
            assert check_volume(store).problems == []
        finally:
            store.close()


def test_restore_checks_the_chunked_checksum_and_takes_a_format_2_copy(tmp_path: Path) -> None:
    """restore refuses an LMDB copy with a flipped byte in a later piece of its chunked
    checksum, and restores a copy of a format 2 manifest (the whole file's SHA-256)."""
    src = open_volume(str(tmp_path / "src"), map_size=1 << 26)
    for i in range(5):
        _commit(src, i)
    manifest = _lmdb_backup(src, tmp_path / "b", chunk_bytes=4096)
    expected = _state(src)
    src.close()
    copy = tmp_path / "b" / fmt.LMDB_FILE
    saved = copy.read_bytes()
    copy.write_bytes(saved[:-100] + bytes([saved[-100] ^ 0x04]) + saved[-99:])
    with pytest.raises(CommandError, match="does not match the manifest"):
        restore(str(tmp_path / "b"), str(tmp_path / "bad"))
    copy.write_bytes(saved)
    sha, size = fmt.file_sha256(str(copy))
    old = fmt.CopyInfo(fmt.LMDB_FILE, manifest.copy.position, 0, sha, size, 0.0, fmt.LMDB_KIND)
    fmt.write_manifest(str(tmp_path / "b"), fmt.Manifest("c", "vol", 0.0, old))
    assert fmt.read_manifest(str(tmp_path / "b")).format == 2  # type: ignore[union-attr]
    got = restore(str(tmp_path / "b"), str(tmp_path / "r"))
    assert got.position == manifest.copy.position
    store = open_volume(str(tmp_path / "r"), map_size=1 << 26)
    try:
        assert _state(store) == expected
    finally:
        store.close()


@pytest.mark.parametrize("argv", [["backup", "--help"], ["verify", "--help"],
                                  ["restore", "--help"], ["archive", "--help"]])
def test_the_backup_commands_start_without_grpc_etcd_or_the_node(argv: list[str]) -> None:
    """``shardless backup --volume``, ``verify`` and ``restore`` pay no start-up for modules
    they do not use: building their parser imports neither grpc, the API's stubs, etcd3, the
    lock manager nor the node (docs/benchmarks.md, 'Backup and restore')."""
    heavy = sorted(m for m in imported_by(argv)
                   if m.split(".")[0] in ("grpc", "etcd3", "lockmgr", "shardless", "google")
                   or m in ("nodes.admin", "nodes.node", "nodes.up", "nodes.config"))
    assert heavy == []


def test_the_whole_command_still_lists_every_command_and_dispatches_backup_alone(
        capsys: pytest.CaptureFixture[str]) -> None:
    """``shardless --help`` lists the node's and the operator's commands beside the backup
    ones, and ``shardless verify`` runs through the backup commands' own parser."""
    from nodes import cli

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("node", "up", "status", "backup", "verify", "restore", "bench"):
        assert command in out
    assert cli.main(["verify", "/nonexistent/backup"]) == 1
    assert "does not exist" in capsys.readouterr().err
