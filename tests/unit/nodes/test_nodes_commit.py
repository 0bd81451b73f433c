"""Unit tests of nodes.commit: transaction planning semantics and the group committer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nodes.commit import (
    DELETE,
    INSERT,
    UPDATE,
    UPSERT,
    AckWithheld,
    Check,
    CommitTimeout,
    CreateTable,
    DropTable,
    GroupCommitter,
    KeyAbandoned,
    KeyReused,
    Outcome,
    Plan,
    Read,
    SettleKey,
    Transaction,
    Unavailable,
    Write,
)
from storage import (
    AlreadyExists,
    Column,
    ConditionFailed,
    InvalidInput,
    MapFull,
    NotFound,
    Schema,
    Store,
    WriteView,
    open_volume,
)
from storage.keycode import encode
from storage.memory import MemoryEngine


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A volume holding table ``t`` and an empty log (a copy of one made elsewhere, taken at
    position 0), so that the first commit of a test is position 1."""
    s = open_volume(str(tmp_path / "vol"), map_size=64 << 20)
    src = Store(MemoryEngine())
    try:
        with src.write() as w:
            w.create_table(Schema.build(
                "t", [Column("id", "int64"), Column("v", "string", True), Column("n", "int64")],
                ["id"]))
        with src.read() as r, s.write() as w:
            w.load_copy(r.replicated_items())
            w.restart_log_at(0)
        yield s
    finally:
        s.close()


@pytest.fixture
def committer(store: Store) -> Iterator[GroupCommitter]:
    gc = GroupCommitter(store, "n1", wall_clock=lambda: 1000.0)
    try:
        yield gc
    finally:
        gc.close()


def run(store: Store, work) -> Outcome:
    """Plan and apply one request in its own write transaction, as the group committer does."""
    with store.write() as view:
        position = view.next_position()
        plan = work.plan(view, position)
        plan.apply(view, position)
        if plan.changes:
            assert view.append_log(ts=0.0, node="n1", changes=plan.changes) == position
    return plan.outcome


def row(store: Store, id_: int) -> tuple[int, dict] | None:
    """Version and column -> value of row ``id_`` of table t, or None."""
    with store.read() as r:
        s = r.require_table("t")
        got = r.get(s, encode((id_,)))
        return None if got is None else (got[0], s.as_dict(got[1]))


def ins(id_: int, v: str = "x", n: int | None = None, **kw) -> Write:
    return Write("t", INSERT, {"id": id_, "v": v, "n": n}, **kw)


def tx(*writes: Write, checks=(), reads=()) -> Transaction:
    return Transaction(list(writes), list(checks), list(reads))


def commit_position(store: Store) -> int:
    with store.read() as r:
        return r.commit_position()


# -- Transaction.plan: writes ---------------------------------------------------------------------


def test_insert_writes_a_row_at_the_commit_position(store: Store):
    """An insert creates the row with version equal to the returned commit position."""
    out = run(store, tx(ins(1, "a", 5)))
    assert out.commit_position == 1 and out.rows_affected == 1
    assert row(store, 1) == (1, {"id": 1, "v": "a", "n": 5})


def test_insert_of_an_existing_row_raises_already_exists(store: Store):
    """Inserting a key that exists is refused and the stored row is unchanged."""
    run(store, tx(ins(1, "a")))
    with pytest.raises(AlreadyExists):
        run(store, tx(ins(1, "b")))
    assert row(store, 1) == (1, {"id": 1, "v": "a", "n": None})


def test_upsert_replaces_the_whole_row(store: Store):
    """An upsert of an existing key replaces every column (absent ones become NULL)."""
    run(store, tx(ins(1, "a", 5)))
    out = run(store, tx(Write("t", UPSERT, {"id": 1, "v": "b"})))
    assert row(store, 1) == (out.commit_position, {"id": 1, "v": "b", "n": None})


def test_update_of_a_missing_row_raises_not_found(store: Store):
    """Update needs the row to exist."""
    with pytest.raises(NotFound):
        run(store, tx(Write("t", UPDATE, {"id": 1, "n": 2})))
    assert row(store, 1) is None


def test_update_changes_only_the_given_columns(store: Store):
    """An update merges the given columns into the stored row and bumps its version."""
    run(store, tx(ins(1, "keep", 5)))
    out = run(store, tx(Write("t", UPDATE, {"id": 1, "n": 6})))
    assert out.commit_position == 2
    assert row(store, 1) == (2, {"id": 1, "v": "keep", "n": 6})


def test_update_to_null_in_a_not_null_column_raises_invalid_input(store: Store):
    """An update cannot set a NOT NULL column to NULL."""
    run(store, tx(ins(1, "a")))
    with pytest.raises(InvalidInput):
        run(store, tx(Write("t", UPDATE, {"id": 1, "v": None})))


def test_delete_of_an_existing_row_counts_one(store: Store):
    """Deleting an existing row removes it and counts it in rows_affected."""
    run(store, tx(ins(1)))
    out = run(store, tx(Write("t", DELETE, {"id": 1})))
    assert (out.rows_affected, out.commit_position) == (1, 2)
    assert row(store, 1) is None


def test_delete_of_a_missing_row_counts_zero_and_commits_nothing(store: Store):
    """Deleting a missing row is not an error, counts 0, and takes no commit position."""
    out = run(store, tx(Write("t", DELETE, {}, key=(9,))))
    assert (out.rows_affected, out.commit_position) == (0, 0)
    assert commit_position(store) == 0


def test_delete_with_non_key_columns_raises_invalid_input(store: Store):
    """A delete names its row by primary-key columns only."""
    run(store, tx(ins(1)))
    with pytest.raises(InvalidInput, match="only primary-key"):
        run(store, tx(Write("t", DELETE, {"id": 1, "n": 3})))


def test_a_write_to_an_unknown_table_raises_not_found(store: Store):
    """Writes name existing tables."""
    with pytest.raises(NotFound):
        run(store, tx(Write("ghost", INSERT, {"id": 1})))


def test_a_write_of_an_unknown_kind_raises_invalid_input(store: Store):
    """A write kind other than insert, upsert, update or delete is refused."""
    with pytest.raises(InvalidInput):
        run(store, tx(Write("t", "merge", {"id": 1, "v": "a"})))


def test_every_row_of_one_transaction_gets_the_same_version(store: Store):
    """All rows written by one request share its commit position as their version."""
    out = run(store, tx(ins(1), ins(2), ins(3)))
    assert out.rows_affected == 3
    assert {row(store, i)[0] for i in (1, 2, 3)} == {out.commit_position}


# -- expected_version ---------------------------------------------------------------------------


def test_expected_version_mismatch_raises_condition_failed_and_writes_nothing(store: Store):
    """A wrong expected_version fails the request; its other writes are not applied either."""
    run(store, tx(ins(1, "a")))
    bad = tx(ins(2, "new"), Write("t", UPDATE, {"id": 1, "v": "b"}, expected_version=7))
    with store.write() as view:
        with pytest.raises(ConditionFailed, match="version 1"):
            bad.plan(view, view.next_position())
        assert view.get(view.require_table("t"), encode((2,))) is None  # plan has no effect
    assert row(store, 2) is None
    assert row(store, 1) == (1, {"id": 1, "v": "a", "n": None})
    assert commit_position(store) == 1


def test_expected_version_equal_to_the_current_version_lets_the_write_through(store: Store):
    """A matching expected_version lets the write apply."""
    run(store, tx(ins(1, "a")))
    run(store, tx(Write("t", UPDATE, {"id": 1, "v": "b"}, expected_version=1)))
    assert row(store, 1) == (2, {"id": 1, "v": "b", "n": None})


def test_expected_version_zero_refuses_an_existing_row(store: Store):
    """expected_version=0 means the row must not exist."""
    run(store, tx(ins(1, "a")))
    with pytest.raises(ConditionFailed):
        run(store, tx(Write("t", UPSERT, {"id": 1, "v": "b"}, expected_version=0)))
    assert row(store, 1)[1]["v"] == "a"


def test_expected_version_zero_admits_a_missing_row(store: Store):
    """expected_version=0 on a missing row lets an upsert create it."""
    run(store, tx(Write("t", UPSERT, {"id": 1, "v": "b"}, expected_version=0)))
    assert row(store, 1) == (1, {"id": 1, "v": "b", "n": None})


# -- several writes to one row ------------------------------------------------------------------


def test_an_update_after_an_insert_of_the_same_row_sees_the_insert(store: Store):
    """Writes to one row in one transaction apply in order: the update merges into the insert."""
    out = run(store, tx(ins(1, "a", 1), Write("t", UPDATE, {"id": 1, "n": 2})))
    assert out.rows_affected == 2
    assert row(store, 1) == (1, {"id": 1, "v": "a", "n": 2})


def test_a_second_insert_of_the_same_row_in_one_transaction_raises_already_exists(store: Store):
    """The second insert sees the first one's staged row."""
    with pytest.raises(AlreadyExists):
        run(store, tx(ins(1, "a"), ins(1, "b")))
    assert row(store, 1) is None


def test_an_insert_after_a_delete_of_the_same_row_succeeds(store: Store):
    """A delete followed by an insert of the same key in one transaction leaves the new row."""
    run(store, tx(ins(1, "old")))
    run(store, tx(Write("t", DELETE, {"id": 1}), ins(1, "new")))
    assert row(store, 1) == (2, {"id": 1, "v": "new", "n": None})


def test_an_update_after_a_delete_of_the_same_row_raises_not_found(store: Store):
    """The update sees the staged delete, so the row is missing."""
    run(store, tx(ins(1)))
    with pytest.raises(NotFound):
        run(store, tx(Write("t", DELETE, {"id": 1}), Write("t", UPDATE, {"id": 1, "n": 1})))
    assert row(store, 1) is not None


def test_a_delete_after_an_insert_of_the_same_row_leaves_no_row(store: Store):
    """Insert then delete in one transaction ends with the row absent."""
    run(store, tx(ins(1), Write("t", DELETE, {"id": 1})))
    assert row(store, 1) is None


# -- conditions and reads -----------------------------------------------------------------------


@pytest.mark.parametrize(("check", "holds"), [
    (Check("t", (1,), "exists", exists=True), True),
    (Check("t", (2,), "exists", exists=True), False),
    (Check("t", (2,), "exists", exists=False), True),
    (Check("t", (1,), "exists", exists=False), False),
    (Check("t", (1,), "version", version=1), True),
    (Check("t", (1,), "version", version=2), False),
    (Check("t", (2,), "version", version=0), True),
    (Check("t", (1,), "version", version=0), False),
    (Check("t", (1,), "column_equals", column="v", value="a"), True),
    (Check("t", (1,), "column_equals", column="v", value="b"), False),
    (Check("t", (1,), "column_equals", column="n", value=None), True),
    (Check("t", (1,), "column_equals", column="v", value=None), False),
    (Check("t", (2,), "column_equals", column="v", value="a"), False),
])
def test_a_condition_gates_the_writes(store: Store, check: Check, holds: bool):
    """Each condition kind lets the writes through when it holds, and otherwise writes nothing."""
    run(store, tx(ins(1, "a")))
    txn = tx(ins(3), checks=[check])
    if holds:
        run(store, txn)
        assert row(store, 3) is not None
    else:
        with pytest.raises(ConditionFailed):
            run(store, txn)
        assert row(store, 3) is None


@pytest.mark.parametrize("check", [
    Check("t", (1,), "column_equals", column="nope", value=1),
    Check("t", (1,), "column_equals", column="n", value="1"),
    Check("t", (1,), "column_equals", column="n", value=True),
    Check("t", ("1",), "exists", exists=True),
    Check("t", (1,), "sometimes"),
])
def test_a_malformed_condition_raises_invalid_input(store: Store, check: Check):
    """Unknown columns, ill-typed values or keys, and unknown kinds are malformed."""
    run(store, tx(ins(1, "a", 1)))
    with pytest.raises(InvalidInput):
        run(store, tx(ins(3), checks=[check]))


def test_reads_see_the_state_before_the_writes(store: Store):
    """Reads in a transaction return the rows as they were before its writes."""
    run(store, tx(ins(1, "old", 1)))
    out = run(store, tx(Write("t", UPDATE, {"id": 1, "v": "new"}), ins(2),
                        reads=[Read("t", (1,)), Read("t", (2,), ["v"])]))
    assert out.reads == [(1, {"id": 1, "v": "old", "n": 1}), None]
    assert row(store, 1)[1]["v"] == "new"


def test_reads_are_projected_onto_the_requested_columns(store: Store):
    """A read with columns returns only those columns."""
    run(store, tx(ins(1, "a", 7)))
    out = run(store, tx(reads=[Read("t", (1,), ["n", "v"])]))
    assert out.reads == [(1, {"n": 7, "v": "a"})]
    assert out.commit_position == 0


def test_a_read_of_an_unknown_column_raises_invalid_input(store: Store):
    """A projection names only columns of the table."""
    with pytest.raises(InvalidInput):
        run(store, tx(reads=[Read("t", (1,), ["nope"])]))


# -- GroupCommitter -----------------------------------------------------------------------------


def test_concurrent_submits_get_distinct_consecutive_positions(store: Store,
                                                                committer: GroupCommitter):
    """Many threads committing at once get positions 1..N, one each, and every row is stored."""
    n = 64
    with ThreadPoolExecutor(max_workers=16) as pool:
        outs = list(pool.map(lambda i: committer.submit(tx(ins(i)), timeout_s=30), range(n)))
    assert sorted(o.commit_position for o in outs) == list(range(1, n + 1))
    with store.read() as r:
        s = r.require_table("t")
        assert r.count(s) == n
        assert r.commit_position() == n
        assert [x.position for x in r.log()] == list(range(1, n + 1))
    for i, o in enumerate(outs):
        assert row(store, i) == (o.commit_position, {"id": i, "v": "x", "n": None})
    assert committer.commits == n


class Gate:
    """A request whose plan blocks until released, so that later submits queue up behind it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def plan(self, view: WriteView, position: int) -> Plan:
        self.entered.set()
        assert self.release.wait(timeout=30)
        return Plan(Outcome())


class Explodes:
    """A request whose plan fails with an unexpected (non-storage) error."""

    def plan(self, view: WriteView, position: int) -> Plan:
        raise RuntimeError("bug in plan")


def submit_all_in_one_batch(committer: GroupCommitter, works: list) -> list:
    """Submit ``works`` from one thread each while a gate holds the committer, so that they are
    all queued, then release: they commit together in the next batch. Returns each outcome or
    the exception it raised."""
    gate = Gate()
    results: list = [None] * len(works)

    def call(i: int) -> None:
        try:
            results[i] = committer.submit(works[i], timeout_s=30)
        except Exception as e:
            results[i] = e

    gate_thread = threading.Thread(target=committer.submit, args=(gate,))
    gate_thread.start()
    assert gate.entered.wait(timeout=10)
    batches_before = committer.batches
    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(works))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while committer._queue.qsize() < len(works):  # all queued behind the gate
        assert time.monotonic() < deadline, "submits did not queue"
        time.sleep(0.005)
    gate.release.set()
    for t in [gate_thread, *threads]:
        t.join(timeout=30)
    assert committer.batches == batches_before + 2  # the gate's batch, then all of these
    return results


def test_a_failing_request_does_not_affect_the_others_in_its_batch(store: Store,
                                                                   committer: GroupCommitter):
    """Refused requests fail alone; the good ones of the same batch commit at consecutive
    positions."""
    run(store, tx(ins(100, "taken")))
    works = [
        tx(ins(1)),
        tx(ins(100, "dup")),  # AlreadyExists
        tx(ins(2)),
        tx(ins(3), Write("t", INSERT, {"id": 4, "v": 5})),  # InvalidInput on the 2nd write
        tx(ins(5)),
        tx(ins(6), checks=[Check("t", (100,), "version", version=99)]),  # ConditionFailed
        Explodes(),  # an unexpected error
        tx(ins(7)),
    ]
    res = submit_all_in_one_batch(committer, works)
    assert [type(r) for r in res] == [Outcome, AlreadyExists, Outcome, InvalidInput, Outcome,
                                      ConditionFailed, RuntimeError, Outcome]
    assert [r.commit_position for r in res if isinstance(r, Outcome)] == [2, 3, 4, 5]
    for i in (1, 2, 5, 7):
        assert row(store, i) is not None
    for i in (3, 4, 6):
        assert row(store, i) is None
    assert row(store, 100)[1]["v"] == "taken"
    assert commit_position(store) == 5


class ApplyFails:
    """A request whose plan passes but whose apply fails the whole write transaction."""

    def plan(self, view: WriteView, position: int) -> Plan:
        def boom(_: WriteView) -> None:
            raise MapFull("the volume is full (test)")

        return Plan(Outcome(), ddl=boom)


def test_a_request_refused_in_a_batch_whose_commit_fails_gets_the_commit_error(
        store: Store, committer: GroupCommitter):
    """A plan sees the writes of the requests before it in its batch; when the batch's commit
    then fails, a refusal based on that state would be false (it never existed), so the
    refused request gets the commit's error like the rest, and nothing is applied."""
    run(store, tx(ins(1, "a")))
    gate = Gate()
    gate_thread = threading.Thread(target=committer.submit, args=(gate,))
    gate_thread.start()
    assert gate.entered.wait(timeout=10)
    futures = [committer.enqueue(w) for w in [
        tx(Write("t", UPDATE, {"id": 1, "v": "b"})),
        tx(ins(2), checks=[Check("t", (1,), "column_equals", column="v", value="a")]),
        ApplyFails()]]
    gate.release.set()
    gate_thread.join(timeout=30)
    errors = [f.exception(timeout=10) for f in futures]
    assert all(isinstance(e, MapFull) for e in errors), errors
    assert row(store, 1)[1]["v"] == "a" and row(store, 2) is None


def test_a_request_whose_caller_went_away_is_not_applied(store: Store,
                                                         committer: GroupCommitter):
    """A request that is no longer active when its turn comes fails with CommitTimeout."""
    with pytest.raises(CommitTimeout):
        committer.submit(tx(ins(1)), is_active=lambda: False)
    assert row(store, 1) is None
    assert committer.submit(tx(ins(2))).commit_position == 1


def test_a_submit_that_outlives_its_timeout_raises_commit_timeout(store: Store,
                                                                  committer: GroupCommitter):
    """No answer within timeout_s raises CommitTimeout; the queued work may still commit."""
    gate = Gate()
    holder = threading.Thread(target=committer.submit, args=(gate,))
    holder.start()
    try:
        assert gate.entered.wait(timeout=10)
        with pytest.raises(CommitTimeout):
            committer.submit(tx(ins(1)), timeout_s=0.05)
    finally:
        gate.release.set()
        holder.join(timeout=10)
    committer.close()  # finishes what is queued
    assert row(store, 1) is not None


def test_create_table_through_the_committer_returns_the_stored_schema(store: Store,
                                                                      committer: GroupCommitter):
    """CreateTable commits at a log position and returns the schema with its new id."""
    out = committer.submit(CreateTable(Schema.build("u", [Column("k", "bytes")], ["k"])))
    assert out.commit_position == 1
    assert out.value.table_id == 2
    with store.read() as r:
        assert r.table("u") == out.value
        assert [c.op for c in next(iter(r.log())).changes] == ["create_table"]


def test_create_table_if_not_exists_returns_the_existing_table(store: Store,
                                                               committer: GroupCommitter):
    """With if_not_exists an existing table is returned and nothing is committed."""
    again = Schema.build("t", [Column("id", "int64")], ["id"])
    with pytest.raises(AlreadyExists):
        committer.submit(CreateTable(again))
    out = committer.submit(CreateTable(again, if_not_exists=True))
    assert out.value.name == "t" and out.value.table_id == 1
    assert out.commit_position == 0
    assert commit_position(store) == 0


def test_drop_table_removes_the_table_and_counts_its_rows(store: Store,
                                                          committer: GroupCommitter):
    """DropTable deletes the table and reports how many rows went with it."""
    committer.submit(tx(ins(1), ins(2)))
    out = committer.submit(DropTable("t"))
    assert (out.value, out.rows_affected, out.commit_position) == (True, 2, 2)
    with store.read() as r:
        assert r.table("t") is None
    with pytest.raises(NotFound):
        committer.submit(DropTable("t"))
    assert committer.submit(DropTable("t", if_exists=True)).value is False


def test_submit_after_close_raises_unavailable(committer: GroupCommitter):
    """A closed committer refuses new work with Unavailable."""
    committer.close()
    with pytest.raises(Unavailable):
        committer.submit(tx(ins(1)))


def test_close_is_idempotent(committer: GroupCommitter):
    """Closing twice is harmless."""
    committer.close()
    committer.close()
    with pytest.raises(Unavailable):
        committer.submit(tx(ins(1)))


# -- admission and confirmation (nodes/epoch.py) -------------------------------------------------


def test_a_batch_that_admit_refuses_applies_nothing(store: Store):
    """``admit`` raising Unavailable fails the batch whole, before the write transaction."""
    def refuse() -> None:
        raise Unavailable("superseded")

    gc = GroupCommitter(store, "n1", admit=refuse)
    try:
        with pytest.raises(Unavailable, match="superseded"):
            gc.submit(tx(ins(1)))
    finally:
        gc.close()
    assert row(store, 1) is None and commit_position(store) == 0


def test_a_commit_that_may_no_longer_be_acknowledged_stands_and_its_answer_says_unknown(
        store: Store):
    """``confirm`` raising AckWithheld when the batch is answered (the node froze past its
    lease since ``admit``): the commit is durable, but the caller gets AckWithheld (outcome
    unknown), not its outcome. A refusal applied nothing and keeps its own answer."""
    confirmed = []

    def confirm() -> None:
        confirmed.append(1)
        raise AckWithheld("session ended")

    gc = GroupCommitter(store, "n1", admit=lambda: None, confirm=confirm)
    try:
        with pytest.raises(AckWithheld) as e:
            gc.submit(tx(ins(1)))
        assert e.value.applied_unknown
        with pytest.raises(NotFound):
            gc.submit(tx(Write("t", UPDATE, {"id": 9, "v": "y"})))
    finally:
        gc.close()
    assert row(store, 1) is not None, "the commit must stand"
    assert confirmed == [1]


def test_the_committer_outlives_a_batch_whose_hook_fails_unexpectedly(store: Store):
    """A hook failing with something the committer does not handle (a bug, an error of etcd's
    client): that batch is told its outcome is unknown, and the thread goes on committing
    (it died on the old code, and every later commit waited on it for ever)."""
    failures = {"left": 1}

    def admit() -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("a bug in admit")

    gc = GroupCommitter(store, "n1", admit=admit)
    try:
        with pytest.raises(CommitTimeout, match="failed in the group committer"):
            gc.submit(tx(ins(1)), timeout_s=3)
        out = gc.submit(tx(ins(2)), timeout_s=3)
    finally:
        gc.close()
    assert out.commit_position == 1 and row(store, 2) is not None


def test_confirm_lets_the_outcome_through_when_it_passes(store: Store):
    gc = GroupCommitter(store, "n1", admit=lambda: None, confirm=lambda: None)
    try:
        out = gc.submit(tx(ins(1)))
    finally:
        gc.close()
    assert out.commit_position == 1 and row(store, 1) is not None


# -- idempotency keys: fingerprints, remembered refusals, settling -------------------------------


def keyed(*writes: Write, key: str = "k1", checks=()) -> Transaction:
    ws = list(writes)
    return Transaction(ws, list(checks), idempotency_key=key,
                       fingerprint=repr((ws, list(checks))))  # any digest of the request


def test_a_retry_with_the_same_key_and_request_replays_the_first_outcome(
        committer: GroupCommitter, store: Store):
    first = committer.submit(keyed(ins(1)), timeout_s=5)
    again = committer.submit(keyed(ins(1)), timeout_s=5)
    assert again.replayed and again.commit_position == first.commit_position
    assert commit_position(store) == first.commit_position  # nothing applied again


def test_a_key_reused_for_another_request_is_refused_and_applies_nothing(
        committer: GroupCommitter, store: Store):
    committer.submit(keyed(ins(1, "a")), timeout_s=5)
    before = commit_position(store)
    with pytest.raises(KeyReused, match="first used for a different request"):
        committer.submit(keyed(ins(2, "b")), timeout_s=5)
    assert row(store, 2) is None and commit_position(store) == before


def test_a_refusal_decided_by_the_data_is_remembered_under_its_key(
        committer: GroupCommitter, store: Store):
    committer.submit(tx(ins(1)), timeout_s=5)
    with pytest.raises(AlreadyExists):
        committer.submit(keyed(ins(1), key="dup"), timeout_s=5)
    # The row goes; a retry of the same request still gets the first answer, and applies
    # nothing (the first attempt's outcome stands, whatever the data says now).
    committer.submit(tx(Write("t", DELETE, {"id": 1})), timeout_s=5)
    with pytest.raises(AlreadyExists, match="the first attempt with idempotency key 'dup'"):
        committer.submit(keyed(ins(1), key="dup"), timeout_s=5)
    assert row(store, 1) is None
    with store.read() as view:
        assert view.idempotent_result("dup")["failed"] == "ALREADY_EXISTS"


def test_a_refusal_for_a_malformed_request_is_not_remembered(committer: GroupCommitter,
                                                             store: Store):
    with pytest.raises(InvalidInput):
        committer.submit(keyed(Write("t", INSERT, {"id": 1, "nope": 1}), key="bad"),
                         timeout_s=5)
    with store.read() as view:
        assert view.idempotent_result("bad") is None


def test_settling_an_unknown_key_abandons_it_and_the_late_write_is_refused(
        committer: GroupCommitter, store: Store):
    got = committer.submit(SettleKey("late"), timeout_s=5).value
    assert got["failed"] == "ABANDONED"
    with pytest.raises(KeyAbandoned, match="settled as abandoned"):
        committer.submit(keyed(ins(7), key="late"), timeout_s=5)
    assert row(store, 7) is None
    # Settling again, or settling a key that applied, answers what is recorded.
    assert committer.submit(SettleKey("late"), timeout_s=5).value["failed"] == "ABANDONED"
    first = committer.submit(keyed(ins(8), key="done"), timeout_s=5)
    rec = committer.submit(SettleKey("done"), timeout_s=5).value
    assert rec["pos"] == first.commit_position and "failed" not in rec


def test_the_abandoned_mark_is_in_the_commit_log_for_replicas(committer: GroupCommitter,
                                                              store: Store):
    before = commit_position(store)
    committer.submit(SettleKey("late"), timeout_s=5)
    assert commit_position(store) == before + 1  # a record of its own carries the mark


# -- packed rows ---------------------------------------------------------------------------------


def test_packed_rows_are_written_as_the_same_rows_given_as_dicts_would_be(store: Store):
    cols = ("v", "id", "n")
    packed = [Write("t", INSERT, {}, packed=(cols, ["a", 1, 5])),
              Write("t", UPSERT, {}, packed=(cols, ["b", 2, None]))]
    run(store, Transaction(packed))
    assert row(store, 1)[1] == {"id": 1, "v": "a", "n": 5}
    assert row(store, 2)[1] == {"id": 2, "v": "b", "n": None}
    with pytest.raises(AlreadyExists):  # an insert of a packed row that exists
        run(store, Transaction([Write("t", INSERT, {}, packed=(cols, ["c", 1, 0]))]))


def test_a_packed_batch_with_one_bad_row_names_it_and_writes_nothing(store: Store):
    cols = ("id", "v", "n")
    batch = [Write("t", INSERT, {}, packed=(cols, [10 + i, "ok", i])) for i in range(5)]
    batch[3] = Write("t", INSERT, {}, packed=(cols, [13, "ok", "not an int"]))
    before = commit_position(store)
    with pytest.raises(InvalidInput, match="row 3: column 'n' is int64"):
        run(store, Transaction(batch))
    assert commit_position(store) == before and row(store, 10) is None


def test_packed_rows_are_only_for_insert_and_upsert(store: Store):
    with pytest.raises(InvalidInput, match="packed rows are for Insert and Upsert"):
        run(store, Transaction([Write("t", UPDATE, {}, packed=(("id",), [1]))]))


# -- what the committer counts (nodes/metrics.py reads it) ---------------------------------------


def test_commits_are_counted_by_kind_and_each_group_size_is_told(store: Store):
    """Applied requests count under their ``commit_kind``; a refused one counts in its group's
    size but not as a commit; ``on_group`` hears one size per committed write transaction."""
    sizes: list[int] = []
    gc = GroupCommitter(store, "n1", on_group=sizes.append)
    try:
        gc.submit(tx(ins(1)))
        gc.submit(tx(ins(2)))
        with pytest.raises(AlreadyExists):
            gc.submit(tx(ins(1)))
        gc.submit(CreateTable(Schema.build("u", [Column("id", "int64")], ["id"])))
    finally:
        gc.close()
    assert gc.commits_by_kind == {"one_shot": 2, "ddl": 1}
    assert sizes == [1, 1, 1, 1] and gc.batches == 4
