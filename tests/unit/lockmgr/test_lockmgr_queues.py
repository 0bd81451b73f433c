"""Unit tests of lockmgr.queues: entries split into holders and waiters by the grant rule."""

from __future__ import annotations

import json

from lockmgr import KeyValue, LockMode, queues
from lockmgr.entries import Entry, parse_entries
from lockmgr.manager import parse_waits

IS, IX, S, X = LockMode.IS, LockMode.IX, LockMode.S, LockMode.X


def entry(resource: str, txn: str, mode: LockMode, revision: int,
          rows: dict[str, LockMode] | None = None) -> Entry:
    return Entry(resource, txn, mode, f"k/{txn}/{revision}".encode(), revision,
                 txn.rpartition("@")[2], dict(rows or {}))


def test_an_entry_behind_an_incompatible_holder_waits_and_names_it() -> None:
    """X on a page after X on the same page is a waiter blocked by the first transaction."""
    (q,) = queues([entry("p/1/a", "t2@n2", X, 9), entry("p/1/a", "t1@n1", X, 5)])
    assert [e.txn_id for e in q.holders] == ["t1@n1"]
    assert [(w.entry.txn_id, w.blocked_by) for w in q.waiters] == [("t2@n2", ("t1@n1",))]


def test_waiters_are_listed_in_fifo_order_even_when_compatible_with_each_other() -> None:
    """Two S requests queued behind an X wait in create-revision order; neither overtakes."""
    (q,) = queues([entry("t/1", "c@n1", S, 12), entry("t/1", "a@n1", X, 3),
                   entry("t/1", "b@n2", S, 7)])
    assert [w.entry.txn_id for w in q.waiters] == ["b@n2", "c@n1"]
    assert q.waiters[1].blocked_by == ("a@n1",)


def test_row_locks_of_one_page_conflict_only_on_the_same_row() -> None:
    """IX page entries with X on different rows both hold; X on the same row waits."""
    qs = queues([entry("p/1/a", "t1@n1", IX, 1, {"r1": X}),
                 entry("p/1/a", "t2@n2", IX, 2, {"r2": X}),
                 entry("p/1/a", "t3@n3", IX, 3, {"r1": X})])
    (q,) = qs
    assert [e.txn_id for e in q.holders] == ["t1@n1", "t2@n2"]
    assert [(w.entry.txn_id, w.blocked_by) for w in q.waiters] == [("t3@n3", ("t1@n1",))]


def test_a_transactions_own_earlier_entry_never_makes_it_wait() -> None:
    """An S then X upgrade by one transaction alone holds both."""
    (q,) = queues([entry("p/1/a", "t1@n1", S, 1), entry("p/1/a", "t1@n1", X, 2)])
    assert len(q.holders) == 2 and not q.waiters


def test_queues_are_per_resource_and_sorted_by_name() -> None:
    """Entries of different resources never conflict; queues come sorted by resource."""
    qs = queues([entry("t/2", "a@n1", X, 1), entry("t/1", "b@n1", X, 2)])
    assert [q.resource for q in qs] == ["t/1", "t/2"]
    assert all(q.holders and not q.waiters for q in qs)


def test_entries_and_wait_records_parse_from_their_etcd_keys() -> None:
    """A strong table entry (ts/) belongs to its table; a wait record's fields come through."""
    kvs = [KeyValue(b"/shardless/c/locks/ts/4/t9@n2/0", b"X", 1, 7, 7),
           KeyValue(b"/shardless/c/locks/p/4/00ff/t8@n1/0", b"IX|0a=X", 1, 5, 5)]
    entries = parse_entries("c", kvs)
    assert {(e.resource, e.txn_id, e.node) for e in entries} == {
        ("t/4", "t9@n2", "n2"), ("p/4/00ff", "t8@n1", "n1")}
    record = json.dumps({"node": "n2", "started_at": 1.5, "resource": "t/4", "mode": "X",
                         "waits_for": ["t8@n1"]}).encode()
    (w,) = parse_waits([KeyValue(b"/shardless/c/waits/t9@n2", record, 1, 8, 8),
                        KeyValue(b"/shardless/c/waits/bad", b"not json", 1, 9, 9)])
    assert (w.txn_id, w.resource, w.waits_for) == ("t9@n2", "t/4", ("t8@n1",))
