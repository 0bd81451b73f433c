"""Unit tests of the fault runs' pure parts: which ops are writes, the list-append workload's
transactions, the nemesis's freeze lengths, and what makes a run's report pass."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from tests.faults.history import Op
from tests.faults.nemesis import FREEZE_MARGIN_S, Freeze, Nemesis
from tests.faults.run import Report
from tests.faults.workloads import WORKLOADS, Bank, ListAppend, Registers


def op(kind: str, status: str = "ok", value=None, output=None) -> Op:  # type: ignore[no-untyped-def]
    """An op of ``kind`` by process 0."""
    return Op(0, kind, 1, value, output, 0.0, None if status == "info" else 1.0, status)  # type: ignore[arg-type]


def test_only_ops_that_changed_state_count_as_writes():
    """Reads never; writes, swapping cas, transfers and txns with an append only when ok."""
    reg, bank, lists = Registers(1), Bank(1), ListAppend(1)
    assert reg.is_write(op("write"))
    assert reg.is_write(op("cas", value=(0, 5), output=True))
    assert not reg.is_write(op("cas", value=(0, 5), output=False))  # the condition said no
    assert not reg.is_write(op("read", output=3))
    assert not reg.is_write(op("write", "info"))
    assert bank.is_write(op("transfer", value=(0, 1, 5)))
    assert not bank.is_write(op("transfer", "fail", value=(0, 1, 5)))  # lacked funds
    assert not bank.is_write(op("read", output={0: 100}))
    appends = [("r", 1, None), ("append", 2, 7)]
    assert lists.is_write(op("txn", value=appends, output=appends))
    assert not lists.is_write(op("txn", value=[("r", 1, None)], output=[("r", 1, [3])]))
    assert not lists.is_write(op("txn", "info", value=appends))


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


@pytest.mark.parametrize("seed", range(20))
def test_the_first_freeze_of_every_run_outlasts_the_lease(seed):
    """Whatever the seed: the first pause is held past TTL + margin; later ones vary."""
    nemesis = Nemesis(SimpleNamespace(ttl_s=3), ["pause-node"], seed, 10)  # type: ignore[arg-type]
    first = nemesis.hold_s("pause-node", first=True)
    assert 3 + FREEZE_MARGIN_S <= first <= 3 + FREEZE_MARGIN_S + 1
    later = [nemesis.hold_s("pause-node", first=False) for _ in range(50)]
    assert min(later) < 3 - 1 and max(later) > 3  # within the lease, and past its end
    assert all(1.0 <= h <= 3 + FREEZE_MARGIN_S for h in later)
    again = Nemesis(SimpleNamespace(ttl_s=3), ["pause-node"], seed, 10)  # type: ignore[arg-type]
    assert again.hold_s("pause-node", first=True) == first  # replayed from the seed


def test_a_freeze_says_whether_it_outlasted_the_lease():
    """Past TTL + margin or not, in the report's words."""
    long = Freeze("SIGSTOP node-2", 5.4, 3)
    short = Freeze("SIGSTOP node-1", 4.9, 3)
    assert long.outlasted_lease and not short.outlasted_lease
    assert long.describe() == "SIGSTOP node-2 for 5.4 s (past the 3 s TTL + 2 s)"
    assert "not past" in short.describe()


def test_a_run_without_an_ok_write_after_the_last_heal_fails():
    """Reads after the heal are not enough: the report needs a write."""
    def report(writes: int) -> Report:
        return Report("registers", 1, 25.0, {"ok": 900, "fail": 10, "info": 3}, {"kill-node": 1},
                      True, "linearizability: ok", [], writes,
                      [Freeze("SIGSTOP node-2", 5.4, 3)])

    assert report(1).ok
    failed = report(0)
    assert not failed.ok
    assert "ok writes after healing 0" in failed.text()
    assert "freezes (1 past the lease)" in failed.text()
    assert set(WORKLOADS) == {"registers", "bank", "list-append"}
