"""Unit tests of lockmgr.probe: the lock-free check decides exactly as acquire would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lockmgr import LockMode, Resource, TxnLocks, plan, probe
from lockmgr.entries import Entry, group

IS, IX, S, SIX, X = LockMode.IS, LockMode.IX, LockMode.S, LockMode.SIX, LockMode.X
quick = settings(database=None, deadline=None, max_examples=300)

rows = st.lists(st.tuples(st.sampled_from(["7", "8"]), st.sampled_from(["p0", "p1", "p2"]),
                          st.integers(0, 9), st.sampled_from([S, X])), max_size=40)


def shape(reqs):  # type: ignore[no-untyped-def]
    return sorted((r.name, r.mode, tuple(sorted(r.rows.items(), key=lambda x: x[0])))
                  for r in reqs)


@quick
@given(rows, st.integers(1, 8))
def test_row_requests_equal_what_plan_and_group_would_put(needs, escalate_after) -> None:  # type: ignore[no-untyped-def]
    """For row needs (what one-shot requests have), the direct computation gives the same
    entries as the manager's plan and group, escalation included."""
    ns = [(Resource(t, p, f"{p}r{n}"), m) for t, p, n, m in needs]
    expected = group(plan(TxnLocks("probe", 0, 0.0), ns, escalate_after))
    assert shape(probe.requests(ns, escalate_after)) == shape(expected)


def entry(name: str, mode: LockMode, rows: dict[str, LockMode] | None = None) -> Entry:
    return Entry(name, "other@n2", mode, b"k", 5, "n2", dict(rows or {}))


def test_a_write_is_blocked_by_another_transactions_lock_on_its_row_only() -> None:
    """X on a row conflicts with S on that row, not with locks on other rows of the page."""
    reqs = probe.requests([(Resource("7", "p0", "p0r1"), X)])
    held = {"p/7/p0": [entry("p/7/p0", IS, {"p0r2": S})]}
    assert not probe.blocked(reqs, lambda n: held.get(n, []))
    held = {"p/7/p0": [entry("p/7/p0", IS, {"p0r1": S})]}
    assert probe.blocked(reqs, lambda n: held.get(n, []))


def test_a_write_is_blocked_by_a_scan_lock_on_its_page_or_table() -> None:
    """S on the page (a scan in a transaction) or on the table blocks a row write."""
    reqs = probe.requests([(Resource("7", "p0", "p0r1"), X)])
    assert probe.blocked(reqs, lambda n: [entry("p/7/p0", S)] if n == "p/7/p0" else [])
    assert probe.blocked(reqs, lambda n: [entry("t/7", S)] if n == "t/7" else [])
    assert not probe.blocked(reqs, lambda n: [entry("t/7", IX)] if n == "t/7" else [])


def test_only_page_entries_and_strong_table_entries_are_published() -> None:
    """A table's intention entries can never block a lock-free request, so they are not
    published; page entries and strong table entries are."""
    granted = group([(Resource("7"), IX), (Resource("7", "p0"), IX),
                     (Resource("7", "p0", "p0r1"), X), (Resource("8"), S)])
    out = probe.published("t1@n1", 3, granted)
    assert [(name, tag) for name, tag, _ in out] == [("p/7/p0", "t1@n1/p3"), ("t/8", "t1@n1/p4")]
    tag = out[0][1]
    e = probe.entry("p/7/p0", tag, granted[1].value())
    assert (e.txn_id, e.mode, e.rows) == ("t1@n1", IX, {"p0r1": X})
