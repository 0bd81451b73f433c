"""Unit tests of the domain store (storage.Store), run over both engines: a real LMDB
environment in a temporary directory and the in-memory engine; a few LMDB-only ones at the
end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import (
    AlreadyExists,
    Change,
    Column,
    InvalidInput,
    MapFull,
    NotFound,
    Schema,
    StorageError,
    Store,
    open_volume,
)
from storage.catalog import MAX_NAME_CHARS
from storage.keycode import encode
from storage.keys import MAX_ENCODED_PK
from storage.memory import MemoryEngine

MAP_SIZE = 64 << 20


def schema(name: str) -> Schema:
    return Schema.build(name, [Column("id", "int64"), Column("v", "string")], ["id"])


def open_store(kind: str, tmp_path: Path, size: int) -> Store:
    """A store over engine ``kind`` of about ``size`` bytes."""
    if kind == "lmdb":
        return open_volume(str(tmp_path / "vol"), map_size=size)
    return Store(MemoryEngine(max_bytes=size))


@pytest.fixture(params=["lmdb", "memory"])
def engine_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(engine_kind: str, tmp_path: Path) -> Iterator[Store]:
    s = open_store(engine_kind, tmp_path, MAP_SIZE)
    try:
        yield s
    finally:
        s.close()


def create(store: Store, name: str) -> Schema:
    with store.write() as w:
        return w.create_table(schema(name))


def put_rows(store: Store, table: Schema, ids: list[int], version: int = 1) -> None:
    with store.write() as w:
        for i in ids:
            w.put(table, encode((i,)), version, [i, f"{table.name}-{i}"])


def scan_ids(store: Store, table: Schema, lo: int | None = None, hi: int | None = None,
             reverse: bool = False) -> list[int]:
    with store.read() as r:
        return [vals[0] for _, vals in r.scan(table, None if lo is None else encode((lo,)),
                                              None if hi is None else encode((hi,)), reverse)]


@pytest.fixture
def three(store: Store) -> tuple[Schema, Schema, Schema]:
    """Tables a, b, c (ids 1, 2, 3), each holding rows 1..5 under the same keys."""
    a, b, c = create(store, "a"), create(store, "b"), create(store, "c")
    for t in (a, b, c):
        put_rows(store, t, [1, 2, 3, 4, 5])
    return a, b, c


# -- catalog ------------------------------------------------------------------------------------


def test_create_table_assigns_increasing_ids_from_one(store: Store):
    """Each new table gets the next table id, starting at 1."""
    assert [create(store, n).table_id for n in ("x", "y", "z")] == [1, 2, 3]


def test_create_table_of_an_existing_name_raises_already_exists(store: Store):
    """A second table of the same name is refused and the first is unchanged."""
    first = create(store, "t")
    with pytest.raises(AlreadyExists), store.write() as w:
        w.create_table(schema("t"))
    with store.read() as r:
        assert r.table("t") == first


def test_table_returns_the_stored_schema_with_its_id(store: Store):
    """A created table reads back with the same columns, key and id."""
    created = create(store, "t")
    with store.read() as r:
        assert r.table("t") == created
        assert r.table("t").table_id == created.table_id == 1
        assert r.table("missing") is None


def test_require_table_raises_not_found_for_a_missing_table(store: Store):
    """require_table names a missing table with NotFound."""
    with store.read() as r, pytest.raises(NotFound, match="ghost"):
        r.require_table("ghost")


def test_require_table_raises_invalid_input_for_a_bad_name(store: Store):
    """An empty or unprintable table name is malformed, not missing."""
    with store.read() as r:
        with pytest.raises(InvalidInput):
            r.require_table("")
        with pytest.raises(InvalidInput):
            r.require_table("a\nb")


def test_tables_lists_every_table_by_name(store: Store):
    """tables() returns every table in name order."""
    for n in ("m", "b", "z"):
        create(store, n)
    with store.read() as r:
        assert [t.name for t in r.tables()] == ["b", "m", "z"]


def test_a_table_name_within_the_documented_limit_never_fails_internally(store: Store):
    """A 128-character name of 4-byte UTF-8 characters is created, or refused as InvalidInput."""
    name = "\U0001f600" * MAX_NAME_CHARS  # 512 bytes of UTF-8: over LMDB's 511-byte key limit
    try:
        created = create(store, name)
    except InvalidInput:
        return
    with store.read() as r:
        assert r.table(name) == created


# -- rows ---------------------------------------------------------------------------------------


def test_put_then_get_returns_the_version_and_values(store: Store):
    """A put row reads back with its version and values."""
    t = create(store, "t")
    with store.write() as w:
        w.put(t, encode((1,)), 9, [1, "one"])
    with store.read() as r:
        assert r.get(t, encode((1,))) == (9, [1, "one"])
        assert r.get(t, encode((2,))) is None


def test_put_overwrites_an_existing_row(store: Store):
    """A second put of the same key replaces version and values."""
    t = create(store, "t")
    put_rows(store, t, [1], version=1)
    with store.write() as w:
        w.put(t, encode((1,)), 2, [1, "new"])
    with store.read() as r:
        assert r.get(t, encode((1,))) == (2, [1, "new"])


def test_delete_removes_a_row_and_reports_whether_it_existed(store: Store):
    """delete returns True for an existing row and False for a missing one."""
    t = create(store, "t")
    put_rows(store, t, [1])
    with store.write() as w:
        assert w.delete(t, encode((1,))) is True
        assert w.delete(t, encode((1,))) is False
    with store.read() as r:
        assert r.get(t, encode((1,))) is None


def test_a_key_of_the_maximum_encoded_length_can_be_stored_and_read(store: Store):
    """A primary key of exactly MAX_ENCODED_PK encoded bytes fits in LMDB with its row prefix."""
    with store.write() as w:
        t = w.create_table(Schema.build("s", [Column("k", "string")], ["k"]))
    k = "x" * (MAX_ENCODED_PK - len(encode(("",))))
    enc = t.check_key((k,))
    assert len(enc) == MAX_ENCODED_PK
    with store.write() as w:
        w.put(t, enc, 1, [k])
    with store.read() as r:
        assert r.get(t, enc) == (1, [k])
        assert [vals for _, vals in r.scan(t, None, None, reverse=True)] == [[k]]


def test_put_of_an_over_size_row_raises_invalid_input(store: Store):
    """A row whose encoding is over MAX_ROW_BYTES is refused before it reaches LMDB."""
    t = create(store, "t")
    with pytest.raises(InvalidInput), store.write() as w:
        w.put(t, encode((1,)), 1, [1, "x" * (1 << 20)])


def test_rows_of_one_table_are_invisible_from_another(store: Store, three):
    """get on one table never returns a row stored under the same key in another table."""
    a, b, _ = three
    put_rows(store, a, [6])
    with store.read() as r:
        assert r.get(b, encode((6,))) is None
        assert r.get(a, encode((1,)))[1] == [1, "a-1"]
        assert r.get(b, encode((1,)))[1] == [1, "b-1"]


# -- scans --------------------------------------------------------------------------------------


def test_scan_forward_returns_only_the_tables_rows_in_key_order(store: Store, three):
    """A full forward scan of the middle table yields its rows only, despite its neighbours."""
    _, b, _ = three
    with store.read() as r:
        got = [(v, vals) for v, vals in r.scan(b, None, None)]
    assert got == [(1, [i, f"b-{i}"]) for i in [1, 2, 3, 4, 5]]


def test_scan_reverse_returns_only_the_tables_rows_backwards(store: Store, three):
    """A full reverse scan of the middle table yields its rows only, last key first."""
    _, b, _ = three
    with store.read() as r:
        got = [vals for _, vals in r.scan(b, None, None, reverse=True)]
    assert got == [[i, f"b-{i}"] for i in [5, 4, 3, 2, 1]]


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("reverse", [False, True])
def test_unbounded_scan_of_any_table_does_not_leak_into_its_neighbours(store: Store, three,
                                                                        which: int,
                                                                        reverse: bool):
    """First, middle and last tables each scan exactly their own five rows."""
    t = three[which]
    with store.read() as r:
        names = {vals[1].split("-")[0] for _, vals in r.scan(t, None, None, reverse)}
    assert names == {t.name}
    expected = [1, 2, 3, 4, 5][::-1] if reverse else [1, 2, 3, 4, 5]
    assert scan_ids(store, t, reverse=reverse) == expected


def test_reverse_scan_of_the_last_table_skips_the_commit_log(store: Store, three):
    """Commit-log keys sort after every row; a reverse scan of the last table ignores them."""
    _, _, c = three
    with store.write() as w:
        w.append_log(ts=1.0, node="n1", changes=[Change("c", "put", (1,))])
    assert scan_ids(store, c, reverse=True) == [5, 4, 3, 2, 1]


def test_reverse_scan_of_the_last_key_in_the_volume_starts_at_that_key(store: Store):
    """When the table's rows are the last keys of the volume, a reverse scan still finds them."""
    t = create(store, "only")
    put_rows(store, t, [1, 2, 3])
    assert scan_ids(store, t, reverse=True) == [3, 2, 1]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("lo", "hi", "expected"), [
    (2, 4, [2, 3]),
    (2, None, [2, 3, 4, 5]),
    (None, 4, [1, 2, 3]),
    (0, 100, [1, 2, 3, 4, 5]),
    (3, 3, []),
    (4, 2, []),
    (6, None, []),
    (None, 1, []),
])
def test_scan_bounds_are_lo_inclusive_and_hi_exclusive(store: Store, three, lo, hi, expected,
                                                       reverse: bool):
    """Rows with lo <= key < hi, forward or reversed, and never a neighbour's row."""
    _, b, _ = three
    assert scan_ids(store, b, lo, hi, reverse) == (expected[::-1] if reverse else expected)


def test_count_counts_only_the_tables_rows(store: Store, three):
    """count() walks one table's keys, not its neighbours'."""
    a, b, c = three
    put_rows(store, b, [6, 7])
    with store.read() as r:
        assert [r.count(t) for t in (a, b, c)] == [5, 7, 5]


# -- drop ---------------------------------------------------------------------------------------


def test_drop_table_removes_its_rows_and_returns_how_many(store: Store, three):
    """drop_table deletes the schema and every row, and reports the row count."""
    a, b, c = three
    with store.write() as w:
        assert w.drop_table(b) == 5
    with store.read() as r:
        assert r.table("b") is None
        assert r.count(b) == 0
        assert r.get(b, encode((1,))) is None
        assert [r.count(t) for t in (a, c)] == [5, 5]


def test_drop_table_of_the_last_keys_in_the_volume_removes_them_all(store: Store):
    """Dropping a table whose rows are the volume's last keys removes them all."""
    t = create(store, "t")
    put_rows(store, t, [1, 2, 3])
    with store.write() as w:
        assert w.drop_table(t) == 3
    with store.read() as r:
        assert r.count(t) == 0


def test_a_recreated_table_gets_a_new_id_and_starts_empty(store: Store, three):
    """Table ids are never reused, so a re-created table does not see the dropped rows."""
    _, b, _ = three
    with store.write() as w:
        w.drop_table(b)
    again = create(store, "b")
    assert again.table_id == 4
    assert scan_ids(store, again) == []
    with store.read() as r:
        assert r.count(again) == 0
        assert r.get(again, encode((1,))) is None


# -- commit log ---------------------------------------------------------------------------------


def test_commit_positions_start_at_one_and_have_no_gaps(store: Store):
    """Three commits get positions 1, 2, 3, and commit_position follows them."""
    with store.read() as r:
        assert r.commit_position() == 0
    got = []
    for i in range(3):
        with store.write() as w:
            assert w.next_position() == i + 1
            got.append(w.append_log(ts=float(i), node="n1", changes=[]))
    assert got == [1, 2, 3]
    with store.read() as r:
        assert r.commit_position() == 3


def test_log_returns_the_appended_records_in_order(store: Store):
    """log() yields each record with its position, time, node and changes."""
    with store.write() as w:
        w.append_log(ts=10.5, node="n1", changes=[Change("t", "put", (1, "a"))])
    with store.write() as w:
        w.append_log(ts=11.0, node="n2", changes=[Change("t", "del", (2, b"\x00")),
                                                   Change("u", "put", (True,))])
    with store.read() as r:
        recs = list(r.log())
        from_two = list(r.log(2))
    assert [(x.position, x.ts, x.node) for x in recs] == [(1, 10.5, "n1"), (2, 11.0, "n2")]
    assert recs[0].changes == (Change("t", "put", (1, "a")),)
    assert recs[1].changes == (Change("t", "del", (2, b"\x00")), Change("u", "put", (True,)))
    assert [x.position for x in from_two] == [2]


def test_log_from_past_the_end_is_empty(store: Store):
    """Reading the log after its last position yields nothing."""
    with store.write() as w:
        w.append_log(ts=0.0, node="n", changes=[])
    with store.read() as r:
        assert list(r.log(2)) == []


# -- transactions -------------------------------------------------------------------------------


def test_an_exception_inside_a_write_leaves_nothing_written(store: Store):
    """A write block that raises aborts: no table, row or log record survives."""
    t = create(store, "t")  # its changes get a record of their own: position 1
    with pytest.raises(RuntimeError, match="boom"), store.write() as w:
        w.create_table(schema("u"))
        w.put(t, encode((1,)), 1, [1, "x"])
        w.append_log(ts=0.0, node="n", changes=[Change("t", "put", (1,))])
        raise RuntimeError("boom")
    with store.read() as r:
        assert r.table("u") is None
        assert r.get(t, encode((1,))) is None
        assert r.commit_position() == 1
        assert [rec.position for rec in r.log()] == [1]
    assert create(store, "u").table_id == 2  # the aborted id allocation was undone too


def test_a_full_map_raises_map_full_and_keeps_earlier_commits(engine_kind: str, tmp_path: Path):
    """Overflowing the map fails only that write, with MapFull; committed data survives."""
    s = open_store(engine_kind, tmp_path, 1 << 20)
    try:
        t = create(s, "t")
        put_rows(s, t, [1])
        with pytest.raises(MapFull), s.write() as w:
            for i in range(2, 100):
                w.put(t, encode((i,)), 1, [i, "x" * 100_000])
        with s.read() as r:
            assert r.count(t) == 1
        put_rows(s, t, [2])
        assert scan_ids(s, t) == [1, 2]
    finally:
        s.close()


def test_a_snapshot_does_not_see_a_later_commit_but_a_new_one_does(store: Store):
    """A read view is a snapshot: it misses commits made after it was opened."""
    t = create(store, "t")
    with store.read() as before:
        put_rows(store, t, [1])
        assert before.get(t, encode((1,))) is None
        assert before.count(t) == 0
        with store.read() as after:
            assert after.get(t, encode((1,))) == (1, [1, "t-1"])


def test_a_write_sees_its_own_uncommitted_changes(store: Store):
    """Inside a write, reads see what the same write has put."""
    t = create(store, "t")
    with store.write() as w:
        w.put(t, encode((1,)), 1, [1, "x"])
        assert w.get(t, encode((1,))) == (1, [1, "x"])
        assert [vals for _, vals in w.scan(t, None, None)] == [[1, "x"]]


def test_a_second_open_of_one_volume_in_the_same_process_is_refused(tmp_path: Path):
    """LMDB allows one environment per volume per process; a second open raises StorageError."""
    store = open_volume(str(tmp_path / "vol"), map_size=MAP_SIZE)
    try:
        t = create(store, "t")
        with pytest.raises(StorageError, match="already open"):
            open_volume(str(tmp_path / "vol"), map_size=MAP_SIZE)
        put_rows(store, t, [1])  # the first Store is unharmed
        assert scan_ids(store, t) == [1]
    finally:
        store.close()


def test_commits_made_on_another_thread_are_seen_by_new_snapshots(store: Store):
    """Threads share the process's Store; a commit on one is visible to later reads on another."""
    t = create(store, "t")
    worker = threading.Thread(target=put_rows, args=(store, t, [1, 2]))
    worker.start()
    worker.join(timeout=10)
    assert scan_ids(store, t) == [1, 2]


def test_reopening_a_volume_keeps_committed_data(tmp_path: Path):
    """Data committed before close is there after reopening the volume."""
    path = str(tmp_path / "vol")
    s = open_volume(path, map_size=MAP_SIZE)
    t = create(s, "t")
    put_rows(s, t, [1, 2])
    s.close()
    assert (tmp_path / "vol" / "lmdb" / "data.mdb").exists()
    s = open_volume(path, map_size=MAP_SIZE)
    try:
        with s.read() as r:
            assert r.table("t") == t
            assert r.count(t) == 2
    finally:
        s.close()


def test_grants_under_a_prefix_are_seen_and_go_when_withdrawn(store: Store) -> None:
    """``has_grants_under`` finds a published grant by a prefix of its resource name (a prefix
    that also covers a longer name is a false alarm by design), and nothing once withdrawn."""
    with store.write() as w:
        w.publish_grants(7, [("p/12/0003", "t1@n/p0", b"IX")])
    with store.read() as r:
        assert r.has_grants_under("p/12/")
        assert r.has_grants_under("p/1")  # covers p/12/...: a false alarm, allowed
        assert not r.has_grants_under("p/13/")
        assert not r.has_grants_under("t/12")
    with store.write() as w:
        w.withdraw_grants([("p/12/0003", "t1@n/p0")])
    with store.read() as r:
        assert not r.has_grants_under("p/")


# -- the volume's identity (storage/volume.py) ----------------------------------------------


def test_a_volume_has_no_identity_until_one_is_written_and_keeps_it(store: Store) -> None:
    from storage import PRIMARY, REPLICA, Identity

    with store.read() as view:
        assert view.volume_identity() is None
    ident = Identity.new(REPLICA)
    store.transact(lambda view: view.set_volume_identity(ident))
    with store.read() as view:
        assert view.volume_identity() == ident
    promoted = ident.promoted(7)
    store.transact(lambda view: view.set_volume_identity(promoted))
    with store.read() as view:
        got = view.volume_identity()
    assert got is not None and (got.volume_id, got.role, got.epoch) == (ident.volume_id,
                                                                        PRIMARY, 7)
    assert Identity.new(PRIMARY).volume_id != ident.volume_id


def test_the_identity_is_never_copied_nor_logged(store: Store) -> None:
    """A copy (``replicated_items``) and the log's replay ops leave the identity out, so that
    a replica never inherits the primary's."""
    from storage import REPLICA, Identity
    from storage.keys import VOLUME_IDENTITY

    create(store, "t")
    with store.read() as view:
        before = view.commit_position()
    store.transact(lambda view: view.set_volume_identity(Identity.new(REPLICA)))
    with store.read() as view:
        assert view.commit_position() == before  # nothing logged
        assert all(k != VOLUME_IDENTITY for k, _ in view.replicated_items())


def test_a_garbled_identity_is_reported_as_corrupt(store: Store) -> None:
    from storage import Corrupt
    from storage.keys import VOLUME_IDENTITY

    with store.write() as view:
        view._txn.put(VOLUME_IDENTITY, b"\xc1garbage")
    with store.read() as view, pytest.raises(Corrupt):
        view.volume_identity()
