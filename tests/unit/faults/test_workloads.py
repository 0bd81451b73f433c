"""Unit tests of the fault runs' pure parts: the list-append workload's transactions."""

from __future__ import annotations

import random

from tests.faults.workloads import ListAppend


def test_list_append_txns_read_and_append_several_keys_that_rotate():
    """One txn in eight or more reads 2+ keys and appends to 2+; values are unique; a key
    retires after MAX_APPENDS appends, so many keys get used."""
    w = ListAppend(7)
    rng = random.Random(7)
    txns = [w.plan(p % 6, rng) for p in range(2000)]
    multi = sum(1 for mops in txns
                if len({k for f, k, _ in mops if f == "r"}) >= 2
                and len({k for f, k, _ in mops if f == "append"}) >= 2)
    assert multi >= len(txns) // 8
    appended = [(k, v) for mops in txns for f, k, v in mops if f == "append"]
    assert len(set(appended)) == len(appended)
    per_key: dict[int, int] = {}
    for k, _ in appended:
        per_key[k] = per_key.get(k, 0) + 1
    assert max(per_key.values()) <= ListAppend.MAX_APPENDS
    assert len(per_key) > 3 * ListAppend.KEYS
