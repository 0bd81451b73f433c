"""Unit tests of lockmgr.table.plan: intention locks, merging, coverage, escalation, order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lockmgr import DEFAULT_ESCALATE_AFTER, LockMode, Resource, TxnLocks, plan
from storage import keycode
from storage.pages import INT_PAGE_KEYS, page_of

IS, IX, S, SIX, X = LockMode.IS, LockMode.IX, LockMode.S, LockMode.SIX, LockMode.X

quick = settings(database=None, deadline=None, max_examples=200)

T = Resource("7")
P1 = Resource("7", "040000000000000000")
P2 = Resource("7", "040000000000000001")


def row(page: Resource, n: int) -> Resource:
    """Row ``n`` of ``page`` (row ids are opaque strings to the lock manager)."""
    assert page.page is not None
    return Resource(page.table, page.page, f"{page.page}{n:02x}")


def txn(held: dict[Resource, LockMode] | None = None) -> TxnLocks:
    """A transaction holding ``held``; rows held are counted per page as the manager does."""
    t = TxnLocks("t1", lease_id=0x1, started_at=0.0)
    for res, mode in (held or {}).items():
        t.held[res] = mode
        if res.kind == "row":
            t.rows_per_page[Resource(res.table, res.page)] += 1
    return t


def test_row_x_request_adds_ix_on_its_table_and_page():
    """A write of one row asks for IX on the table, IX on the page, then X on the row."""
    r = row(P1, 1)
    assert plan(txn(), [(r, X)]) == [(T, IX), (P1, IX), (r, X)]


def test_row_s_request_adds_is_on_its_table_and_page():
    """A read of one row asks for IS on the table and the page, then S on the row."""
    r = row(P1, 1)
    assert plan(txn(), [(r, S)]) == [(T, IS), (P1, IS), (r, S)]


def test_page_s_request_adds_is_on_its_table_only():
    """A scan's S on a page asks for IS on the table and nothing below the page."""
    assert plan(txn(), [(P1, S)]) == [(T, IS), (P1, S)]


def test_table_request_has_no_parents():
    """A table lock is requested alone."""
    assert plan(txn(), [(T, X)]) == [(T, X)]


def test_read_and_write_of_rows_on_one_page_merge_the_intentions():
    """S on one row and X on another of the same page give IX (not IS and IX) on the parents."""
    r1, r2 = row(P1, 1), row(P1, 2)
    assert plan(txn(), [(r1, S), (r2, X)]) == [(T, IX), (P1, IX), (r1, S), (r2, X)]


def test_two_requests_for_one_row_merge_at_the_supremum():
    """The same row asked in S and in X is requested once, in X."""
    r = row(P1, 1)
    assert plan(txn(), [(r, S), (r, X)]) == [(T, IX), (P1, IX), (r, X)]


def test_a_scan_and_a_write_in_one_page_give_six_on_the_page():
    """S on a page and X on a row of it merge into SIX on the page (S with IX)."""
    r = row(P1, 1)
    assert plan(txn(), [(P1, S), (r, X)]) == [(T, IX), (P1, SIX), (r, X)]


def test_a_row_already_held_in_the_mode_is_skipped_with_its_parents():
    """A request the transaction already holds asks for nothing at all."""
    r = row(P1, 1)
    t = txn({T: IX, P1: IX, r: X})
    assert plan(t, [(r, X)]) == []
    assert plan(t, [(r, S)]) == []


def test_only_the_missing_locks_of_a_new_row_are_requested():
    """With the table and page intention locks held, a new row of the page asks for the row."""
    r1, r2 = row(P1, 1), row(P1, 2)
    t = txn({T: IX, P1: IX, r1: X})
    assert plan(t, [(r2, X)]) == [(r2, X)]


def test_an_ix_held_on_the_table_covers_the_is_a_read_needs():
    """A held IX covers IS, so a read under it asks only for what is missing below."""
    r = row(P2, 1)
    t = txn({T: IX})
    assert plan(t, [(r, S)]) == [(P2, IS), (r, S)]


def test_rows_under_a_table_x_are_covered():
    """A table X covers every read and write of its rows and pages."""
    t = txn({T: X})
    assert plan(t, [(row(P1, 1), X), (row(P2, 1), S), (P1, S)]) == []


def test_rows_under_a_table_s_are_covered_for_reads_only():
    """A table S covers reads below it; a write below it upgrades the table to SIX."""
    r = row(P1, 1)
    t = txn({T: S})
    assert plan(t, [(r, S)]) == []
    assert plan(t, [(r, X)]) == [(T, SIX), (P1, IX), (r, X)]


def test_rows_under_a_page_s_are_covered_for_reads():
    """A page S (from a scan) covers reads of its rows."""
    t = txn({T: IS, P1: S})
    assert plan(t, [(row(P1, 1), S), (row(P1, 2), IS)]) == []


def test_rows_under_a_page_x_are_covered():
    """After escalation to a page X, further rows of the page need no lock."""
    t = txn({T: IX, P1: X})
    assert plan(t, [(row(P1, 1), X), (row(P1, 2), S)]) == []


def test_an_intention_lock_on_the_parent_covers_nothing_below():
    """IS/IX on the table or page give no right on a row: the row is still requested."""
    r = row(P1, 1)
    t = txn({T: IX, P1: IX})
    assert plan(t, [(r, S)]) == [(r, S)]


def test_a_held_s_row_then_x_requested_gives_the_supremum():
    """A row read in S and then written is requested in X, and the parents move IS -> IX."""
    r = row(P1, 1)
    t = txn({T: IS, P1: IS, r: S})
    assert plan(t, [(r, X)]) == [(T, IX), (P1, IX), (r, X)]


def test_a_held_s_table_then_ix_requested_gives_six():
    """The supremum of a held S and a requested IX is SIX, not IX."""
    t = txn({T: S})
    assert plan(t, [(T, IX)]) == [(T, SIX)]


def test_a_held_ix_page_then_s_requested_gives_six():
    """A writer of a page that then scans it asks for SIX on the page."""
    t = txn({T: IX, P1: IX})
    assert plan(t, [(P1, S)]) == [(P1, SIX)]


def test_a_held_s_row_then_s_requested_again_is_skipped():
    """Asking again for a held mode, or a weaker one, asks for nothing."""
    r = row(P1, 1)
    t = txn({T: IS, P1: IS, r: S})
    assert plan(t, [(r, S), (r, IS)]) == []


def test_more_than_escalate_after_rows_of_a_page_become_one_page_x():
    """Five X rows of one page with escalate_after=4: the page in X, and no row locks."""
    needs = [(row(P1, n), X) for n in range(5)]
    assert plan(txn(), needs, escalate_after=4) == [(T, IX), (P1, X)]


def test_exactly_escalate_after_rows_of_a_page_are_not_escalated():
    """Escalation starts above escalate_after, not at it."""
    needs = [(row(P1, n), X) for n in range(4)]
    out = plan(txn(), needs, escalate_after=4)
    assert out == [(T, IX), (P1, IX), *needs]


def test_escalated_read_rows_give_a_page_s():
    """Many S rows of one page escalate to S on the page, with IS on the table."""
    needs = [(row(P1, n), S) for n in range(5)]
    assert plan(txn(), needs, escalate_after=4) == [(T, IS), (P1, S)]


def test_one_x_among_escalated_rows_makes_the_page_x():
    """If any row of an escalated page needs X, the page lock is X."""
    needs = [(row(P1, n), S) for n in range(4)] + [(row(P1, 4), X)]
    assert plan(txn(), needs, escalate_after=4) == [(T, IX), (P1, X)]


def test_escalated_read_rows_of_a_page_written_before_give_a_page_x():
    """A page the transaction holds IX on (it wrote there) escalates to X even for reads."""
    t = txn({T: IX, P1: IX})
    needs = [(row(P1, n), S) for n in range(5)]
    assert plan(t, needs, escalate_after=4) == [(P1, X)]


def test_rows_held_before_count_towards_escalation():
    """Three rows held plus two new ones of the same page exceed escalate_after=4."""
    held = {T: IX, P1: IX, **{row(P1, n): X for n in range(3)}}
    t = txn(held)
    needs = [(row(P1, n), X) for n in range(3, 5)]
    assert plan(t, needs, escalate_after=4) == [(P1, X)]


def test_rows_already_held_do_not_count_twice_towards_escalation():
    """Asking again for held rows adds no new rows, so it does not escalate."""
    held = {T: IX, P1: IX, **{row(P1, n): X for n in range(4)}}
    t = txn(held)
    assert plan(t, [(row(P1, n), X) for n in range(4)], escalate_after=4) == []


def test_a_row_asked_twice_counts_once_towards_escalation():
    """Duplicates in one request are one row for the escalation count."""
    needs = [(row(P1, n), X) for n in range(4)] * 2
    out = plan(txn(), needs, escalate_after=4)
    assert out == [(T, IX), (P1, IX), *[(row(P1, n), X) for n in range(4)]]


def test_rows_in_different_pages_are_not_escalated():
    """Three rows in each of two pages stay row locks with escalate_after=4."""
    needs = [(row(p, n), X) for p in (P1, P2) for n in range(3)]
    out = plan(txn(), needs, escalate_after=4)
    assert out == [(T, IX), (P1, IX), (P2, IX), *needs]


def test_only_the_crowded_page_is_escalated():
    """Five rows of one page escalate it; two rows of another page stay row locks."""
    many = [(row(P1, n), X) for n in range(5)]
    few = [(row(P2, n), X) for n in range(2)]
    out = plan(txn(), few + many, escalate_after=4)
    assert out == [(T, IX), (P1, X), (P2, IX), *few]


def test_the_default_escalation_threshold_is_32_rows():
    """32 rows of one page stay rows; 33 escalate (the default of the manager)."""
    assert DEFAULT_ESCALATE_AFTER == 32
    assert (P1, IX) in plan(txn(), [(row(P1, n), X) for n in range(32)])
    assert plan(txn(), [(row(P1, n), X) for n in range(33)]) == [(T, IX), (P1, X)]


def test_the_default_escalation_threshold_can_be_passed_within_one_int64_page():
    """An int64 page holds 64 keys; escalation needs more than the threshold's rows of one
    page, so the threshold must stay below the page's size or integer keys never escalate."""
    assert DEFAULT_ESCALATE_AFTER < INT_PAGE_KEYS == 64


def _grant(t: TxnLocks, out: list[tuple[Resource, LockMode]]) -> None:
    """Record a plan's requests as held, as the manager does on grant."""
    for res, mode in out:
        if res.kind == "row" and res not in t.held:
            t.rows_per_page[Resource(res.table, res.page)] += 1
        t.held[res] = mode


def _int_row(table: str, key: int) -> Resource:
    """The lock resource of an int64 primary key, with storage's real page id."""
    enc = keycode.encode((key,))
    return Resource(table, page_of(enc), enc.hex())


def test_a_writer_of_sequential_int_keys_escalates_to_one_page_x_and_no_more_row_locks():
    """Writing keys 0, 1, 2, ... of one int64 page one at a time (as an interactive
    transaction does): rows 0-31 take row locks, the 33rd takes the page in X, and keys 33-63
    of the page need no lock at all; key 64, the next page, starts with row locks again."""
    t = txn()
    page = Resource("7", page_of(keycode.encode((0,))))
    assert all(page_of(keycode.encode((k,))) == page.page for k in range(INT_PAGE_KEYS))
    asked: list[list[tuple[Resource, LockMode]]] = []
    for key in range(INT_PAGE_KEYS):
        out = plan(t, [(_int_row("7", key), X)])
        asked.append(out)
        _grant(t, out)
    assert asked[0] == [(T, IX), (page, IX), (_int_row("7", 0), X)]
    assert all(out == [(_int_row("7", k), X)] for k, out in enumerate(asked[1:32], start=1))
    assert asked[32] == [(page, X)]
    assert all(out == [] for out in asked[33:]), asked[33:]
    assert t.held[page] == X
    assert sum(1 for r in t.held if r.kind == "row") == 32
    nxt = _int_row("7", INT_PAGE_KEYS)
    assert nxt.page != page.page
    assert plan(t, [(nxt, X)]) == [(Resource("7", nxt.page), IX), (nxt, X)]


def test_a_batch_of_40_sequential_int_keys_takes_one_page_x_and_no_row_locks():
    """One call writing 40 sequential keys of one int64 page (128-167, all in 128-191) asks
    for the page in X and no row lock at all."""
    t = txn()
    needs = [(_int_row("7", k), X) for k in range(128, 168)]
    page = Resource("7", needs[0][0].page)
    assert {r.page for r, _ in needs} == {page.page}
    assert plan(t, needs) == [(T, IX), (page, X)]


def test_parents_come_first_tables_then_pages_then_rows():
    """Whatever the order of the needs, requests are tables, then pages, then rows."""
    u = Resource("8")
    q = Resource("8", "040000000000000005")
    needs = [(row(P2, 1), X), (row(q, 3), S), (row(P1, 2), X), (u, IS)]
    out = plan(txn(), needs)
    kinds = [r.kind for r, _ in out]
    assert kinds == sorted(kinds, key=["table", "page", "row"].index)
    assert out == [(T, IX), (u, IS), (P1, IX), (P2, IX), (q, IS),
                   (row(P1, 2), X), (row(P2, 1), X), (row(q, 3), S)]


RESOURCES = st.sampled_from([T, P1, P2, *(row(p, n) for p in (P1, P2) for n in range(6)),
                             Resource("8"), Resource("8", "040000000000000000"),
                             Resource("8", "040000000000000000", "04000000000000000000")])
MODES = st.sampled_from(list(LockMode))
NEEDS = st.lists(st.tuples(RESOURCES, MODES), max_size=20)


@quick
@given(NEEDS, NEEDS, st.integers(1, 8))
def test_granting_the_plan_covers_every_need(first, second, escalate_after):
    """Applying a plan's requests (as the manager does on grant) leaves every need covered,
    with intention locks on the parents above it, and a second plan of the same needs is
    empty; parents always come before children and no request is weaker than what is held."""
    t = txn()
    for needs in (first, second):
        out = plan(t, needs, escalate_after)
        order = [{"table": 0, "page": 1, "row": 2}[r.kind] for r, _ in out]
        assert order == sorted(order)
        assert len({r for r, _ in out}) == len(out)
        for res, mode in out:
            held = t.held.get(res)
            if held is not None:
                assert mode.covers(held), (res, held, mode)
            if res.kind == "row" and res not in t.held:
                t.rows_per_page[Resource(res.table, res.page)] += 1
            t.held[res] = mode
        for res, mode in needs:
            assert t.covers(res, mode), (res, mode, t.held)
            for parent in res.parents():  # intention locks down to where a lock covers it
                held = t.held.get(parent)
                assert held is not None and held.covers(mode.intention()), (parent, t.held)
                if held in (S, SIX, X) and held.covers(S if mode in (IS, S) else X):
                    break
        assert plan(t, needs, escalate_after) == []
