"""Unit tests of tests.faults.linearizability: classic register histories, info and fail ops,
many keys, the search budget, explanations, speed, and generated histories (hypothesis)."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.faults.history import Op
from tests.faults.linearizability import (
    LinearizabilityResult,
    check_register,
    check_registers,
)

quick = settings(database=None, deadline=None, max_examples=200)

INF = math.inf


def w(p: int, v: Any, call: float, ret: float | None, status: str = "ok", key: Any = "x") -> Op:
    """A write of ``v``."""
    return Op(p, "write", key, v, None, call, ret, status)  # type: ignore[arg-type]


def r(p: int, out: Any, call: float, ret: float | None, status: str = "ok", key: Any = "x") -> Op:
    """A read that returned ``out``."""
    return Op(p, "read", key, None, out, call, ret, status)  # type: ignore[arg-type]


def cas(
    p: int,
    expected: Any,
    new: Any,
    out: bool | None,
    call: float,
    ret: float | None,
    status: str = "ok",
    key: Any = "x",
) -> Op:
    """A compare-and-set from ``expected`` to ``new`` that returned ``out``."""
    return Op(p, "cas", key, (expected, new), out, call, ret, status)  # type: ignore[arg-type]


def verdict(*ops: Op, **kwargs: Any) -> str:
    """The verdict of checking ``ops``."""
    return check_registers(ops, **kwargs).verdict


# ---- classic histories -------------------------------------------------------------------------


def test_empty_history_is_linearizable():
    """Nothing happened; nothing is wrong."""
    result = check_registers([])
    assert result.ok and result.verdict == "ok" and result.keys == ()
    assert check_register([]).ok


def test_sequential_write_then_read_is_linearizable():
    """A read after an acknowledged write sees it."""
    assert verdict(w(0, 1, 0, 1), r(1, 1, 2, 3)) == "ok"


def test_absent_key_reads_none_unless_an_initial_value_is_given():
    """The register starts absent (None) unless told otherwise."""
    assert verdict(r(0, None, 0, 1)) == "ok"
    assert verdict(r(0, 5, 0, 1)) == "violation"
    assert verdict(r(0, 5, 0, 1), initial={"x": 5}) == "ok"
    assert verdict(r(0, None, 0, 1), initial={"x": 5}) == "violation"
    assert check_register([r(0, 5, 0, 1)], initial=5).ok


def test_stale_read_after_an_acknowledged_write_is_a_violation():
    """Once a write is acknowledged, a later read must not see the older value."""
    result = check_registers([w(0, 1, 0, 1), r(1, None, 2, 3)])
    assert result.verdict == "violation" and not result.ok and not result.timed_out
    assert result.key == "x"
    (key,) = result.keys
    assert key.unplaced[0] == r(1, None, 2, 3)
    assert key.prefix == (w(0, 1, 0, 1),)
    assert key.state == 1


def test_read_of_a_value_never_written_is_a_violation():
    """A read can only return the initial value or a written one."""
    assert verdict(w(0, 1, 0, 1), r(1, 2, 2, 3)) == "violation"
    assert verdict(w(0, 1, 0, 10), r(1, 2, 2, 3)) == "violation"


def test_reads_seeing_two_overlapping_writes_in_either_order_are_fine():
    """Two concurrent writes may take effect in either order."""
    writes = (w(0, 1, 0, 10), w(1, 2, 0, 10))
    assert verdict(*writes, r(2, 1, 11, 12), r(2, 1, 13, 14)) == "ok"
    assert verdict(*writes, r(2, 2, 11, 12), r(2, 2, 13, 14)) == "ok"
    assert verdict(*writes, r(2, 2, 1, 2), r(2, 1, 3, 4)) == "ok"
    assert verdict(*writes, r(2, 1, 1, 2), r(2, 2, 3, 4)) == "ok"


def test_reads_seeing_two_overlapping_writes_in_an_impossible_order_are_a_violation():
    """Each write takes effect once: the register cannot go 1, 2, 1, nor change after both end."""
    writes = (w(0, 1, 0, 10), w(1, 2, 0, 10))
    assert verdict(*writes, r(2, 1, 1, 2), r(2, 2, 3, 4), r(2, 1, 5, 6)) == "violation"
    assert verdict(*writes, r(2, 2, 11, 12), r(2, 1, 13, 14)) == "violation"
    assert verdict(*writes, r(2, 1, 11, 12), r(3, 2, 13, 14)) == "violation"


def test_concurrency_makes_an_otherwise_impossible_order_legal():
    """A read may see a write before the write is acknowledged, or not, while they overlap."""
    assert verdict(w(0, 1, 0, 5), r(1, 1, 1, 2)) == "ok"
    assert verdict(w(0, 1, 0, 5), r(1, None, 1, 2)) == "ok"
    # Two overlapping reads may disagree while the write is in flight...
    assert verdict(w(0, 1, 0, 10), r(1, None, 1, 5), r(2, 1, 2, 6)) == "ok"
    assert verdict(w(0, 1, 0, 10), r(1, 1, 1, 5), r(2, None, 2, 6)) == "ok"
    # ...but once one read saw it, a read starting after that read returned must too.
    assert verdict(w(0, 1, 0, 10), r(1, 1, 1, 2), r(2, None, 3, 4)) == "violation"


def test_touching_operations_count_as_concurrent():
    """A call at the very instant of another op's return may be ordered either way."""
    assert verdict(w(0, 1, 0, 2), r(1, None, 2, 3)) == "ok"
    assert verdict(w(0, 1, 0, 2), r(1, None, 2.001, 3)) == "violation"


def test_cas_succeeding_twice_from_the_same_expected_value_is_a_violation():
    """Only one of two cas from 0 can win, unless someone wrote 0 again in between."""
    base = (w(0, 0, 0, 1), cas(1, 0, 1, True, 2, 5), cas(2, 0, 2, True, 3, 6))
    assert verdict(*base) == "violation"
    assert verdict(*base, w(3, 0, 2, 7)) == "ok"


def test_cas_outcomes_must_match_the_state():
    """cas returns True iff the register held the expected value."""
    assert verdict(w(0, 0, 0, 1), cas(1, 0, 1, True, 2, 3), r(2, 1, 4, 5)) == "ok"
    assert verdict(w(0, 0, 0, 1), cas(1, 0, 1, False, 2, 3)) == "violation"
    assert verdict(w(0, 0, 0, 1), cas(1, 5, 1, True, 2, 3)) == "violation"
    assert verdict(w(0, 0, 0, 1), cas(1, 5, 1, False, 2, 3), r(2, 0, 4, 5)) == "ok"
    assert verdict(cas(1, None, 1, True, 0, 1), r(2, 1, 2, 3)) == "ok"
    # A failed cas changes nothing.
    assert verdict(w(0, 0, 0, 1), cas(1, 5, 1, False, 2, 3), r(2, 1, 4, 5)) == "violation"


# ---- info and fail ops -------------------------------------------------------------------------


def test_info_write_may_explain_a_later_read_or_not_have_happened():
    """A timed-out write may have taken effect (at any time after its call) or not at all."""
    assert verdict(w(0, 1, 0, None, "info"), r(1, 1, 5, 6)) == "ok"
    assert verdict(w(0, 1, 0, None, "info"), r(1, None, 5, 6)) == "ok"
    assert verdict(w(0, 1, 0, 1, "info"), r(1, None, 2, 3), r(1, 1, 4, 5)) == "ok"
    assert verdict(w(0, 1, 0, INF, "info"), r(1, 1, 5, 6)) == "ok"


def test_info_write_cannot_take_effect_before_its_call_or_be_undone():
    """Taking effect late is fine, but once seen it stays, and never before it was asked."""
    assert verdict(w(0, 1, 0, None, "info"), r(1, 1, 2, 3), r(1, None, 4, 5)) == "violation"
    assert verdict(r(1, 1, 0, 1), w(0, 1, 2, None, "info")) == "violation"


def test_a_repeated_value_written_late_by_an_info_write_still_explains_a_read():
    """The info write of 2 may land after the write of 1, the ok write of 2 explaining the first
    read of 2 (values are not unique here, so the info write's window must not be narrowed)."""
    history = (
        w(0, 2, 2, None, "info"),
        w(1, 2, 3, 3.5),
        r(2, 2, 3.6, 4),
        w(1, 1, 5, 6),
        r(2, 2, 7, 8),
    )
    assert verdict(*history) == "ok"
    assert verdict(*history[1:]) == "violation"


def test_an_observed_unique_info_write_must_precede_its_first_observer():
    """Once a read saw the info write's value, the register cannot return to the old one."""
    history = (w(0, 1, 0, 1), w(1, 2, 2, None, "info"), r(2, 2, 3, 4), r(2, 1, 5, 6))
    assert verdict(*history) == "violation"
    assert verdict(*history[:3]) == "ok"


def test_an_unobserved_info_write_can_explain_a_failed_cas():
    """No read saw 7, but the failed cas from 0 shows something replaced the 0."""
    history = (w(0, 0, 0, 1), w(1, 7, 2, None, "info"), cas(2, 0, 9, False, 3, 4))
    assert verdict(*history) == "ok"
    assert verdict(*history, r(3, 0, 5, 6)) == "violation"


def test_info_cas_may_or_may_not_take_effect():
    """A timed-out cas applies (if the state allowed) or not."""
    base = (w(0, 0, 0, 1), cas(1, 0, 1, None, 2, None, "info"))
    assert verdict(*base, r(2, 1, 5, 6)) == "ok"
    assert verdict(*base, r(2, 0, 5, 6)) == "ok"
    assert verdict(*base, r(2, 0, 5, 6), r(2, 1, 7, 8)) == "ok"
    assert verdict(*base, r(2, 1, 5, 6), r(2, 0, 7, 8)) == "violation"
    # An info cas from a value never held cannot apply.
    assert verdict(w(0, 0, 0, 1), cas(1, 5, 1, None, 2, None, "info"), r(2, 1, 5, 6)) == (
        "violation"
    )


def test_info_ops_chain_through_an_observed_intermediate_value():
    """An info write of 7 and an info cas 7 -> 8 explain a read of 8."""
    history = (
        w(0, 0, 0, 1),
        w(1, 7, 2, None, "info"),
        cas(2, 7, 8, None, 3, None, "info"),
        r(3, 8, 5, 6),
    )
    assert verdict(*history) == "ok"
    assert verdict(*history, r(3, 7, 7, 8)) == "violation"


def test_fail_ops_are_ignored_and_info_reads_constrain_nothing():
    """A failed write did not happen; an unanswered read says nothing."""
    assert verdict(w(0, 1, 0, 1, "fail"), r(1, 1, 2, 3)) == "violation"
    assert verdict(w(0, 1, 0, 1, "fail"), r(1, None, 2, 3)) == "ok"
    assert verdict(cas(0, None, 1, True, 0, 1, "fail"), r(1, None, 2, 3)) == "ok"
    assert verdict(r(0, 99, 0, None, "info")) == "ok"


def test_ok_op_without_a_return_time_is_treated_as_still_pending():
    """An ok op with unknown ret may take effect at any time after its call."""
    assert verdict(w(0, 1, 0, None), r(1, None, 2, 3), r(1, 1, 4, 5)) == "ok"


# ---- keys, results, explanations -------------------------------------------------------------


def test_keys_are_checked_independently_and_the_failing_key_is_named():
    """P-compositionality: a violation on y is reported as y's, x stays ok."""
    result = check_registers(
        [
            w(0, 1, 0, 1, key="x"),
            r(1, 1, 2, 3, key="x"),
            w(0, 1, 0, 1, key="y"),
            r(1, 2, 2, 3, key="y"),
            r(1, None, 2, 3, key="z"),
        ]
    )
    assert result.verdict == "violation"
    assert result.key == "y"
    assert {k.key: k.verdict for k in result.keys} == {"x": "ok", "y": "violation", "z": "ok"}
    assert [k.key for k in result.failures] == ["y"]
    assert "'y'" in result.explanation


def test_explanation_gives_the_longest_prefix_and_the_ops_that_could_not_be_placed():
    """Sequential w1, w2, then a read of 1: the prefix is both writes, the read is stuck."""
    ops = [w(0, 1, 0, 1), w(0, 2, 2, 3), r(1, 1, 4, 5), r(2, 5, 4.5, 6)]
    result = check_registers(ops)
    (key,) = result.failures
    assert key.prefix == (ops[0], ops[1])
    assert key.state == 2
    assert key.unplaced == (ops[2], ops[3])  # the stuck read, then the concurrent one
    text = result.explanation
    assert "not linearizable" in text
    assert "2 of 4 ops" in text
    assert ops[2].describe() in text


def test_malformed_ops_are_rejected():
    """Unknown kinds and malformed cas are errors in the workload, not anomalies."""
    with pytest.raises(ValueError, match="register operation"):
        check_registers([Op(0, "append", "x", 1, None, 0, 1)])
    with pytest.raises(ValueError, match="expected, new"):
        check_registers([Op(0, "cas", "x", 1, True, 0, 1)])
    with pytest.raises(ValueError, match="True or False"):
        check_registers([cas(0, None, 1, None, 0, 1)])


# ---- budget ------------------------------------------------------------------------------------


def concurrent_history(n: int, processes: int, seed: int, info: float = 0.0) -> list[Op]:
    """A linearizable history of ``n`` ops on one register, built by giving each op a random
    interval and a linearization point inside it, and applying the ops in that order."""
    rnd = random.Random(seed)
    free = [0.0] * processes
    planned = []
    for _ in range(n):
        p = rnd.randrange(processes)
        call = free[p] + rnd.random() * 0.2
        ret = call + rnd.random() * 3
        free[p] = ret
        planned.append((rnd.uniform(call, ret), p, call, ret))
    planned.sort()
    state: Any = None
    ops = []
    for written, (_, p, call, ret) in enumerate(planned, start=1):
        status = "info" if rnd.random() < info else "ok"
        end = None if status == "info" else ret
        roll = rnd.random()
        if roll < 0.4:
            ops.append(r(p, state, call, ret))
        elif roll < 0.75:
            state = written
            ops.append(w(p, written, call, end, status))
        else:
            expected = state if rnd.random() < 0.5 else written - 2
            won = expected == state
            if won:
                state = written
            ops.append(cas(p, expected, written, won, call, end, status))
    ops.sort(key=lambda op: op.call)
    return ops


def test_exhausted_step_budget_gives_unknown_never_ok():
    """Running out of steps is not a pass."""
    ops = concurrent_history(200, 5, seed=1)
    assert check_registers(ops).verdict == "ok"
    result = check_registers(ops, max_steps=10)
    assert result.verdict == "unknown"
    assert not result.ok and result.timed_out
    assert result.key == "x"
    assert "budget" in result.explanation


def test_exhausted_budget_on_a_violating_history_is_unknown_not_a_verdict():
    """Without finishing the search the checker can neither pass nor (soundly) fail it."""
    ops = [*concurrent_history(200, 5, seed=2), r(9, "never", 10_000, 10_001)]
    assert check_registers(ops).verdict == "violation"
    assert check_registers(ops, max_steps=10).verdict == "unknown"


def test_exhausted_time_budget_gives_unknown():
    """A zero time budget leaves every key unchecked, hence unknown."""
    ops = [w(0, 1, 0, 1, key=k) for k in range(3)]
    result = check_registers(ops, max_seconds=0)
    assert result.verdict == "unknown" and result.timed_out and not result.ok
    assert len(result.failures) == 3
    assert check_register(ops[:1], max_seconds=0).verdict == "unknown"


def test_a_violation_anywhere_outranks_unknown_elsewhere():
    """A definite violation on one key is reported even if another key ran out of budget."""
    good = [dataclasses.replace(op, key="a") for op in concurrent_history(100, 5, seed=3)]
    bad = [w(0, 1, 0, 1, key="b"), r(1, None, 2, 3, key="b")]
    result = check_registers([*good, *bad], max_steps=40)
    assert {k.key: k.verdict for k in result.keys} == {"a": "unknown", "b": "violation"}
    assert result.verdict == "violation"
    assert result.key == "b"
    assert result.timed_out


# ---- speed -------------------------------------------------------------------------------------


@pytest.mark.parametrize("info", [0.0, 0.05])
def test_thousands_of_ops_with_ten_processes_check_fast(info: float):
    """3000 ops, 10 processes, writes, reads and cas (some info): well under a second."""
    ops = concurrent_history(3000, 10, seed=4, info=info)
    start = time.perf_counter()
    result = check_registers(ops)
    elapsed = time.perf_counter() - start
    assert result.verdict == "ok", result.explanation
    assert elapsed < 2.0, f"took {elapsed:.2f}s"


def test_a_late_violation_in_a_long_history_is_found():
    """A stale read at the end of 3000 ops is still proven a violation within the budget."""
    ops = concurrent_history(3000, 10, seed=5)
    last = max(i for i, op in enumerate(ops) if op.kind == "read")
    ops[last] = dataclasses.replace(ops[last], output=-1)
    result = check_registers(ops)
    assert result.verdict == "violation"
    assert result.keys[0].unplaced[0] == ops[last]


# ---- generated histories -----------------------------------------------------------------------

STEP = st.tuples(
    st.sampled_from(["read", "write", "cas"]),
    st.integers(0, 3),
    st.integers(0, 3),
    st.sampled_from(["ok", "ok", "ok", "fail", "info"]),
    st.booleans(),
)


def sequential(steps: list[tuple[str, int, int, str, bool]]) -> list[Op]:
    """Run ``steps`` one after another against a real register; info ops apply or not."""
    state: Any = None
    ops = []
    for i, (kind, a, b, status, applies) in enumerate(steps):
        call, ret = 2.0 * i, 2.0 * i + 1
        p = i % 3
        happens = status == "ok" or (status == "info" and applies)
        if kind == "read":
            ops.append(r(p, state if status == "ok" else None, call, ret, status))
        elif kind == "write":
            if happens:
                state = a
            ops.append(w(p, a, call, ret, status))
        else:
            won = state == a
            if happens and won:
                state = b
            ops.append(cas(p, a, b, won if status == "ok" else None, call, ret, status))
    return ops


@quick
@given(st.lists(STEP, max_size=40))
def test_sequential_executions_of_a_real_register_are_accepted(steps):
    """Whatever a real register does, one op at a time, is linearizable."""
    result = check_registers(sequential(steps))
    assert result.verdict == "ok", result.explanation


@quick
@given(
    st.lists(
        st.tuples(
            st.integers(0, 4),  # process
            st.floats(0, 1),  # idle time before the call
            st.floats(0, 3),  # duration
            st.floats(0, 1),  # where in the interval it takes effect
            STEP,
        ),
        max_size=30,
    )
)
def test_concurrent_executions_of_a_real_register_are_accepted(plan):
    """Ops taking effect at some instant within their interval are linearizable."""
    free = [0.0] * 5
    timed = []
    for p, idle, duration, at, step in plan:
        call = free[p] + idle
        ret = call + duration
        free[p] = ret
        timed.append((call + at * duration, p, call, ret, step))
    timed.sort(key=lambda t: t[0])
    state: Any = None
    ops = []
    for _, p, call, ret, (kind, a, b, status, applies) in timed:
        happens = status == "ok" or (status == "info" and applies)
        end = None if status == "info" else ret
        if kind == "read":
            ops.append(r(p, state if status == "ok" else None, call, end, status))
        elif kind == "write":
            if happens:
                state = a
            ops.append(w(p, a, call, end, status))
        else:
            won = state == a
            if happens and won:
                state = b
            ops.append(cas(p, a, b, won if status == "ok" else None, call, end, status))
    result = check_registers(ops)
    assert result.verdict == "ok", result.explanation


DEFINITE_STEP = st.tuples(
    st.sampled_from(["read", "write", "write", "cas"]),
    st.integers(0, 3),
    st.integers(0, 3),
    st.sampled_from(["ok", "ok", "ok", "fail"]),
    st.just(False),
)


@quick
@given(st.lists(DEFINITE_STEP, min_size=1, max_size=40), st.data())
def test_a_read_changed_to_a_value_never_written_is_rejected(steps, data):
    """Mutating any ok read to return a value nobody wrote breaks linearizability."""
    ops = sequential([*steps, ("read", 0, 0, "ok", False)])
    reads = [i for i, op in enumerate(ops) if op.kind == "read" and op.status == "ok"]
    i = data.draw(st.sampled_from(reads))
    ops[i] = dataclasses.replace(ops[i], output="never written")
    result = check_registers(ops)
    assert result.verdict == "violation"
    assert result.keys[0].unplaced[0] == ops[i]


@quick
@given(st.lists(DEFINITE_STEP, min_size=1, max_size=40), st.data())
def test_a_read_changed_to_an_older_value_is_rejected(steps, data):
    """Mutating an ok read to return a value the register held earlier (but not any more, a
    newer write having been acknowledged) breaks linearizability."""
    ops = sequential([*steps, ("read", 0, 0, "ok", False)])
    history: list[Any] = [None]  # the register's successive values
    stale: list[tuple[int, Any]] = []
    for i, op in enumerate(ops):
        if op.status != "ok":
            continue
        if op.kind == "write" or (op.kind == "cas" and op.output):
            new = op.value if op.kind == "write" else op.value[1]
            history.append(new)
        elif op.kind == "read":
            stale.extend((i, old) for old in set(history) if old != op.output)
    if not stale:
        return
    i, old = data.draw(st.sampled_from(stale))
    ops[i] = dataclasses.replace(ops[i], output=old)
    result: LinearizabilityResult = check_registers(ops)
    assert result.verdict == "violation", [op.describe() for op in ops]


def brute_force(ops: list[Op]) -> bool:
    """Linearizability by trying every order that respects real time (tiny histories only).

    Fail ops and info reads are dropped; info writes and cas may be placed anywhere after their
    call, and those never placed are the ones that did not happen (or happened at the end).
    """
    live = [
        op for op in ops if op.status != "fail" and not (op.kind == "read" and op.status == "info")
    ]

    def step(op: Op, state: Any) -> tuple[bool, Any]:
        if op.kind == "read":
            return op.output == state, state
        if op.kind == "write":
            return True, op.value
        expected, new = op.value
        if op.status == "info":
            return True, new if state == expected else state
        if op.output:
            return state == expected, new
        return state != expected, state

    def search(remaining: tuple[Op, ...], state: Any) -> bool:
        if all(op.status == "info" for op in remaining):
            return True
        for i, op in enumerate(remaining):
            if any(p.end < op.call for p in remaining if p is not op):
                continue
            legal, new = step(op, state)
            if legal and search(remaining[:i] + remaining[i + 1 :], new):
                return True
        return False

    return search(tuple(live), None)


RANDOM_OP = st.tuples(
    st.integers(0, 3),  # process
    st.integers(0, 6),  # call
    st.integers(0, 4),  # duration
    st.sampled_from(["read", "write", "cas"]),
    st.sampled_from([None, 0, 1, 2]),
    st.sampled_from([None, 0, 1, 2]),
    st.booleans(),
    st.sampled_from(["ok", "ok", "ok", "fail", "info"]),
)


@settings(database=None, deadline=None, max_examples=400)
@given(st.lists(RANDOM_OP, max_size=7))
def test_verdicts_agree_with_brute_force_on_arbitrary_small_histories(spec):
    """On random (mostly non-linearizable) histories, the search with its reductions agrees
    with trying every order."""
    ops = []
    for p, call, duration, kind, a, b, won, status in spec:
        ret = None if status == "info" else float(call + duration)
        if kind == "read":
            ops.append(r(p, a, call, ret, status))
        elif kind == "write":
            ops.append(w(p, a, call, ret, status))
        else:
            ops.append(cas(p, a, b, None if status == "info" else won, call, ret, status))
    expected = "ok" if brute_force(ops) else "violation"
    assert check_registers(ops).verdict == expected, [op.describe() for op in ops]
