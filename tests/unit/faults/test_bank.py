"""Unit tests of tests.faults.bank: totals, negative balances, the final-state explanation by
ok and info transfers (exact and per-account), and generated valid histories."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.faults.bank import (
    NEGATIVE_BALANCE,
    UNEXPLAINED,
    UNKNOWN_ACCOUNT,
    WRONG_TOTAL,
    check_bank,
)
from tests.faults.history import Op

quick = settings(database=None, deadline=None, max_examples=150)

INITIAL = {"a": 10, "b": 10, "c": 10}


def read(balances: dict[str, int] | None, call: float = 0, status: str = "ok") -> Op:
    """A snapshot read of every balance."""
    return Op(0, "read", None, None, balances, call, call + 1, status)  # type: ignore[arg-type]


def transfer(src: str, dst: str, amount: int, status: str = "ok", call: float = 0) -> Op:
    """A transfer of ``amount`` from ``src`` to ``dst``."""
    ret = None if status == "info" else call + 1
    return Op(1, "transfer", None, (src, dst, amount), None, call, ret, status)  # type: ignore[arg-type]


def test_valid_history_is_accepted():
    """Transfers of every status, reads in between, and a final state that adds up."""
    ops = [
        read(INITIAL),
        transfer("a", "b", 3),
        read({"a": 7, "b": 13, "c": 10}, call=2),
        transfer("b", "c", 5, status="fail"),
        transfer("c", "a", 4),
        read({"a": 11, "b": 13, "c": 6}, call=4),
        read({"a": 0, "b": 0, "c": 0}, call=5, status="info"),  # unknown: not evidence
        Op(2, "write", "x", 1, None, 0, 1),  # not a bank op: ignored
    ]
    result = check_bank(INITIAL, ops, final={"a": 11, "b": 13, "c": 6})
    assert result.ok, result.summary()
    assert (result.reads, result.ok_transfers, result.fail_transfers) == (3, 2, 1)
    assert result.ignored == 1
    assert result.final_checked and result.exact
    assert result.applied_info == ()
    assert result.total == 30


def test_wrong_total_is_detected():
    """A read that does not sum to the initial total (money created or destroyed)."""
    bad = read({"a": 7, "b": 10, "c": 10}, call=2)
    result = check_bank(INITIAL, [transfer("a", "b", 3), bad])
    assert result.kinds() == {WRONG_TOTAL}
    (anomaly,) = result.anomalies
    assert anomaly.op == bad
    assert "off by -3" in anomaly.details


def test_negative_balance_is_detected():
    """Even with a correct total, no account may go below zero."""
    ops = [transfer("a", "b", 12), read({"a": -2, "b": 22, "c": 10}, call=2)]
    result = check_bank(INITIAL, ops)
    assert result.kinds() == {NEGATIVE_BALANCE}
    assert result.anomalies[0].account == "a"


def test_unknown_account_and_missing_snapshot_are_detected():
    """Snapshots name only known accounts; a read with no snapshot cannot be judged correct."""
    result = check_bank(INITIAL, [read({"a": 10, "b": 10, "c": 5, "z": 5})])
    assert result.kinds() == {UNKNOWN_ACCOUNT}
    assert check_bank(INITIAL, [read(None)]).kinds() == {WRONG_TOTAL}


def test_missing_accounts_count_as_zero():
    """An account absent from a snapshot has balance 0."""
    ops = [transfer("c", "a", 10), read({"a": 20, "b": 10}, call=2)]
    assert check_bank(INITIAL, ops, final={"a": 20, "b": 10}).ok


def test_lost_ok_transfer_is_detected():
    """An acknowledged transfer must be reflected in the final state."""
    ops = [transfer("a", "b", 3), transfer("b", "c", 2)]
    result = check_bank(INITIAL, ops, final={"a": 10, "b": 8, "c": 12})
    assert result.kinds() == {UNEXPLAINED}
    details = result.anomalies[0].details
    assert "'a': +3" in details and "'b': -3" in details


def test_failed_transfer_that_took_effect_is_detected():
    """A transfer reported as failed must not have happened."""
    ops = [transfer("a", "b", 3, status="fail")]
    result = check_bank(INITIAL, ops, final={"a": 7, "b": 13, "c": 10})
    assert result.kinds() == {UNEXPLAINED}


@pytest.mark.parametrize("happened", [True, False])
def test_info_transfer_may_or_may_not_have_happened(happened: bool):
    """A timed-out transfer explains the final state either way."""
    maybe = transfer("a", "c", 4, status="info")
    final = {"a": 6, "b": 10, "c": 14} if happened else dict(INITIAL)
    result = check_bank(INITIAL, [transfer("a", "b", 0), maybe], final=final)
    assert result.ok, result.summary()
    assert result.exact
    assert result.applied_info == ((maybe,) if happened else ())


def test_info_transfers_explain_a_combination_not_a_partial_one():
    """Some subset must match exactly: a half-applied transfer is unexplained."""
    info = [
        transfer("a", "b", 2, "info"),
        transfer("b", "c", 3, "info"),
        transfer("c", "a", 5, "info"),
    ]
    result = check_bank(INITIAL, info, final={"a": 13, "b": 12, "c": 5})
    assert result.ok
    assert result.applied_info is not None
    assert set(result.applied_info) == {info[0], info[2]}
    result = check_bank(INITIAL, info, final={"a": 9, "b": 11, "c": 10})
    assert result.kinds() == {UNEXPLAINED}
    assert result.exact


def test_final_read_is_checked_for_the_invariants_too():
    """A final state with the wrong total is both a wrong total and unexplained."""
    result = check_bank(INITIAL, [], final={"a": 10, "b": 10, "c": 11})
    assert result.kinds() == {WRONG_TOTAL, UNEXPLAINED}
    assert all(a.op is None for a in result.anomalies)


def test_transfers_may_be_given_as_mappings():
    """``value`` may be ``{"from": ..., "to": ..., "amount": ...}``."""
    op = Op(1, "transfer", None, {"from": "a", "to": "b", "amount": 1}, None, 0, 1, "ok")
    assert check_bank(INITIAL, [op], final={"a": 9, "b": 11, "c": 10}).ok
    with pytest.raises((TypeError, ValueError, KeyError)):
        check_bank(INITIAL, [Op(1, "transfer", None, ("a", "b"), None, 0, 1, "ok")])


def many_info_transfers(seed: int, n: int) -> tuple[list[Op], dict[str, int]]:
    """``n`` info transfers over 6 accounts, a random half of them applied: (ops, final)."""
    rnd = random.Random(seed)
    accounts = [f"acct{i}" for i in range(6)]
    balances = dict.fromkeys(accounts, 1000)
    ops = []
    for _ in range(n):
        src, dst = rnd.sample(accounts, 2)
        amount = rnd.randint(1, 9)
        ops.append(transfer(src, dst, amount, status="info"))
        if rnd.random() < 0.5:
            balances[src] -= amount
            balances[dst] += amount
    return ops, balances


def test_many_info_transfers_fall_back_to_the_per_account_check():
    """Past ``max_states`` the search degrades to a per-account necessary condition."""
    initial = {f"acct{i}": 1000 for i in range(6)}
    ops, final = many_info_transfers(seed=1, n=60)
    result = check_bank(initial, ops, final=final, max_states=1)
    assert result.ok, result.summary()
    assert not result.exact
    assert result.applied_info is None


def test_lost_transfer_is_still_caught_by_the_per_account_check():
    """Info transfers of even amounts cannot explain an odd difference on an account, which
    the exhaustive search takes long to prove but the per-account subset sums see at once."""
    initial = {"a": 1000, "b": 1000}
    info = [transfer(*pair, 2, status="info") for pair in [("a", "b"), ("b", "a")] * 30]
    lost = transfer("a", "b", 1)
    result = check_bank(initial, [*info, lost], final=initial, max_states=150)
    assert result.kinds() == {UNEXPLAINED}
    assert not result.exact
    assert "per-account" in result.anomalies[0].details
    result = check_bank(initial, [*info, lost], final=initial)
    assert result.kinds() == {UNEXPLAINED}
    assert result.exact


def test_a_dozen_info_transfers_are_searched_exactly_within_the_default_bound():
    """A dozen info transfers on a few accounts stay within the exact search."""
    initial = {f"acct{i}": 1000 for i in range(6)}
    ops, final = many_info_transfers(seed=2, n=14)
    result = check_bank(initial, ops, final=final)
    assert result.ok and result.exact, result.summary()


def test_difference_on_an_account_no_info_transfer_touched_is_unexplained():
    """An account's difference needs an info transfer touching that very account."""
    ops = [transfer("a", "b", 1, status="info")]
    result = check_bank(INITIAL, ops, final={"a": 10, "b": 9, "c": 11})
    assert result.kinds() == {UNEXPLAINED}
    assert result.anomalies[0].account == "c"


@quick
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d"]),
            st.sampled_from(["a", "b", "c", "d"]),
            st.integers(0, 8),
            st.sampled_from(["ok", "ok", "fail", "info"]),
            st.booleans(),
        ),
        max_size=25,
    )
)
def test_generated_valid_histories_are_accepted(plan: list[tuple[str, str, int, str, bool]]):
    """A real bank: transfers that overdraw fail, info ones apply or not, reads add up."""
    initial = {"a": 10, "b": 10, "c": 10, "d": 10}
    balances = dict(initial)
    ops: list[Op] = []
    for i, (src, dst, amount, status, applies) in enumerate(plan):
        if amount > balances[src]:
            status = "fail"
        if status == "ok" or (status == "info" and applies):
            balances[src] -= amount
            balances[dst] += amount
        ops.append(transfer(src, dst, amount, status=status, call=2 * i))
        ops.append(read(dict(balances), call=2 * i + 1))
    result: Any = check_bank(initial, ops, final=balances)
    assert result.ok, result.summary()
    assert result.exact
