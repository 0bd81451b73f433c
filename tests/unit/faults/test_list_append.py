"""Unit tests of tests.faults.list_append: each per-key anomaly kind, each kind of cycle across
keys (G0, G1c, G-single, G2 and through real time), valid concurrent histories (given and
generated), broken generated ones, the output forms, malformed input, and the time it takes."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.faults.history import Op
from tests.faults.list_append import (
    ABORTED_READ,
    CYCLE_KINDS,
    DUPLICATE,
    G0,
    G0_REALTIME,
    G1C,
    G2,
    G_SINGLE,
    G_SINGLE_REALTIME,
    GARBAGE_READ,
    INCOMPATIBLE_ORDER,
    INTERNAL,
    KEY_KINDS,
    LOST_APPEND,
    STALE_READ,
    check_list_append,
)

quick = settings(database=None, deadline=None, max_examples=150)


def a(key: str, value: Any) -> tuple[str, str, Any]:
    """An append micro-op."""
    return ("append", key, value)


def rd(key: str, values: list[Any] | None) -> tuple[str, str, Any]:
    """A completed read micro-op (``values`` is what it returned)."""
    return ("r", key, values)


def txn(p: int, call: float, ret: float | None, *mops: tuple, status: str = "ok") -> Op:
    """A transaction: ``value`` has the reads blanked, ``output`` the completed micro-ops."""
    value = [(f, k, None if f == "r" else v) for f, k, v in mops]
    output = list(mops) if status == "ok" else None
    return Op(p, "txn", None, value, output, call, ret, status)  # type: ignore[arg-type]


def kinds_of(*ops: Op) -> set[str]:
    """The anomaly kinds found in ``ops``."""
    return check_list_append(ops).kinds()


def test_valid_concurrent_history_is_accepted():
    """Overlapping txns, an info txn that applied, one that did not, a failed one never seen."""
    ops = [
        txn(0, 0, 2, a("x", 1), rd("y", None)),
        txn(1, 1, 3, a("x", 2), a("y", 1)),
        txn(2, 1.5, 2.5, rd("x", [1])),  # concurrent with the append of 2: may miss it
        txn(3, 4, None, a("x", 3), status="info"),  # applied: seen below
        txn(4, 4, None, a("y", 2), status="info"),  # never applied
        txn(5, 4, 5, a("x", 99), status="fail"),
        txn(0, 6, 7, rd("x", [1, 2, 3]), rd("y", [1])),
        txn(1, 6, 8, rd("x", [1, 2, 3]), a("x", 4), rd("x", [1, 2, 3, 4])),  # concurrent
        txn(2, 9, 10, rd("x", [1, 2, 3, 4]), rd("y", [1])),
        Op(3, "read", "z", None, 1, 0, 1),  # not a txn: ignored
    ]
    result = check_list_append(ops)
    assert result.ok, result.summary()
    assert (result.ok_txns, result.info_txns, result.fail_txns) == (6, 2, 1)
    assert result.reads == 8 and result.appends == 7 and result.ignored == 1
    assert result.keys == 2


def test_reads_may_use_the_list_of_read_results_form():
    """``output`` may be just the read results, one per read micro-op in order."""
    ops = [
        Op(0, "txn", None, [a("x", 1)], None, 0, 1),
        Op(1, "txn", None, [rd("x", None), a("x", 2), rd("x", None)], [[1], [1, 2]], 2, 3),
    ]
    assert check_list_append(ops).ok
    bad = [*ops, Op(2, "txn", None, [rd("x", None)], [[2]], 4, 5)]
    assert check_list_append(bad).kinds() == {INCOMPATIBLE_ORDER, LOST_APPEND}


def test_duplicate_element_in_a_read():
    """An element read twice was applied twice."""
    found = check_list_append([txn(0, 0, 1, a("x", 1)), txn(1, 2, 3, rd("x", [1, 1]))])
    assert found.kinds() == {DUPLICATE}
    (anomaly,) = found.anomalies
    assert anomaly.key == "x"
    assert "[1]" in anomaly.details


def test_incompatible_order_between_two_reads():
    """[1, 2] and [2, 1] cannot both be prefixes of one order of appends."""
    ops = [
        txn(0, 0, 1, a("x", 1)),
        txn(1, 0, 1, a("x", 2)),
        txn(2, 2, 3, rd("x", [1, 2])),
        txn(3, 2, 3, rd("x", [2, 1])),
    ]
    found = check_list_append(ops)
    assert found.kinds() == {INCOMPATIBLE_ORDER}
    assert len(found.anomalies) == 1
    assert "not a prefix" in found.anomalies[0].details


def test_lost_append():
    """An acknowledged append missing from a read that began after the acknowledgement."""
    ops = [
        txn(0, 0, 1, a("x", 1)),
        txn(1, 0, 1, a("x", 2)),
        txn(2, 2, 3, rd("x", [1])),
    ]
    found = check_list_append(ops)
    assert found.kinds() == {LOST_APPEND}
    (anomaly,) = found.of_kind(LOST_APPEND)
    assert "[2]" in anomaly.details
    assert ops[1] in anomaly.ops


def test_lost_append_never_seen_by_any_read():
    """An acknowledged append that no later read contains at all is lost."""
    ops = [txn(0, 0, 1, a("x", 1)), txn(1, 2, 3, rd("x", None))]
    assert kinds_of(*ops) == {LOST_APPEND}


def test_a_read_concurrent_with_an_append_may_miss_it():
    """Only appends acknowledged before the read began are required."""
    ops = [txn(0, 0, 2, a("x", 1)), txn(1, 1, 3, rd("x", None)), txn(1, 2, 3, rd("x", []))]
    assert check_list_append(ops).ok


def test_aborted_read():
    """An element appended only by a failed txn must never be visible."""
    ops = [txn(0, 0, 1, a("x", 1), status="fail"), txn(1, 2, 3, rd("x", [1]))]
    found = check_list_append(ops)
    assert found.kinds() == {ABORTED_READ}
    assert found.anomalies[0].ops == (ops[1], ops[0])


def test_garbage_read():
    """An element nobody appended to that key (even if appended to another)."""
    ops = [txn(0, 0, 1, a("y", 7)), txn(1, 2, 3, rd("x", [7])), txn(1, 4, 5, rd("y", [7]))]
    found = check_list_append(ops)
    assert found.kinds() == {GARBAGE_READ}
    assert [x.key for x in found.anomalies] == ["x"]


def test_info_append_may_be_read_but_not_required():
    """An append with an unknown outcome may or may not appear."""
    ops = [txn(0, 0, None, a("x", 1), status="info"), txn(1, 2, 3, rd("x", [1]))]
    assert check_list_append(ops).ok
    ops = [txn(0, 0, None, a("x", 1), status="info"), txn(1, 2, 3, rd("x", None))]
    assert check_list_append(ops).ok


def test_internal_read_must_end_with_own_appends():
    """A txn reading a key after appending to it must see its own append last."""
    ops = [txn(0, 0, 1, a("x", 1)), txn(1, 2, 3, a("x", 2), rd("x", [2, 1]))]
    found = check_list_append(ops)
    assert INTERNAL in found.kinds()
    assert all(x.kind != INTERNAL or x.ops == (ops[1],) for x in found.anomalies)
    # Reading its own append with nothing before it is fine.
    assert check_list_append([txn(0, 0, 1, a("x", 1), rd("x", [1]))]).ok


def test_internal_reads_must_agree_with_earlier_reads_of_the_txn():
    """Within a txn: read [1], append 2, the next read must be exactly [1, 2]."""
    ops = [
        txn(0, 0, 1, a("x", 1)),
        txn(0, 0, 1, a("x", 3)),
        txn(1, 2, 3, rd("x", [1, 3]), a("x", 2), rd("x", [1, 2])),
    ]
    (anomaly,) = check_list_append(ops).of_kind(INTERNAL)
    assert "must read [1, 3, 2]" in anomaly.details
    # Two reads without an append in between must agree too.
    ops = [txn(0, 0, 1, a("x", 1)), txn(1, 0, 3, rd("x", []), rd("x", [1]))]
    assert kinds_of(*ops) == {INTERNAL}


def test_stale_read():
    """A read that began after another read returned must extend it."""
    ops = [
        txn(0, 0, 10, a("x", 1)),
        txn(0, 0, 10, a("x", 2)),
        txn(1, 1, 2, rd("x", [1, 2])),  # saw both appends while they were in flight
        txn(2, 3, 4, rd("x", [1])),  # began after that read returned: went backwards
    ]
    found = check_list_append(ops)
    # Across keys too: the stale read closes a cycle through real time.
    assert found.kinds() == {STALE_READ, G_SINGLE_REALTIME}
    (anomaly,) = found.of_kind(STALE_READ)
    assert anomaly.ops == (ops[3], ops[2])
    assert "misses its last 1" in anomaly.details


def test_reads_of_info_and_failed_txns_are_not_evidence():
    """Only ok txns' reads are checked."""
    ops = [
        txn(0, 0, 1, a("x", 1)),
        Op(1, "txn", None, [rd("x", None)], [rd("x", [5, 5])], 2, 3, "info"),
        Op(1, "txn", None, [rd("x", None)], [rd("x", [6])], 2, 3, "fail"),
    ]
    assert check_list_append(ops).ok


def test_every_kind_is_detected_together_and_each_once():
    """One history with one of each anomaly, on separate keys."""
    ops = [
        # duplicate on d
        txn(0, 0, 1, a("d", 1)),
        txn(0, 2, 3, rd("d", [1, 1])),
        # garbage on g
        txn(0, 0, 1, rd("g", [42])),
        # aborted read on b
        txn(0, 0, 1, a("b", 1), status="fail"),
        txn(0, 2, 3, rd("b", [1])),
        # internal on i
        txn(0, 0, 1, rd("i", []), rd("i", None), a("i", 1), rd("i", [])),
        # incompatible order on o (both reads concurrent with each other)
        txn(0, 0, 1, a("o", 1)),
        txn(0, 0, 1, a("o", 2)),
        txn(0, 2, 3, rd("o", [1, 2])),
        txn(1, 2, 3, rd("o", [2, 1])),
        # lost append on l
        txn(0, 0, 1, a("l", 1)),
        txn(0, 2, 3, rd("l", [])),
        # stale read on s
        txn(0, 0, 10, a("s", 1)),
        txn(0, 1, 2, rd("s", [1])),
        txn(0, 3, 4, rd("s", [])),
    ]
    found = check_list_append(ops)
    by_kind = {kind: [x.key for x in found.of_kind(kind)] for kind in KEY_KINDS}
    assert by_kind == {
        DUPLICATE: ["d"],
        GARBAGE_READ: ["g"],
        ABORTED_READ: ["b"],
        INTERNAL: ["i"],
        INCOMPATIBLE_ORDER: ["o"],
        LOST_APPEND: ["l"],
        STALE_READ: ["s"],
    }, found.summary()
    # The stale read is a cycle through real time as well; nothing else is.
    assert [(x.kind, x.key) for x in found.anomalies if x.kind not in KEY_KINDS] == [
        (G_SINGLE_REALTIME, ("s",))
    ]
    assert not found.ok


def test_malformed_input_is_rejected():
    """Appending the same value twice to a key, unknown micro-ops, mismatched outputs."""
    with pytest.raises(ValueError, match="appended twice"):
        check_list_append([txn(0, 0, 1, a("x", 1)), txn(1, 0, 1, a("x", 1), status="fail")])
    with pytest.raises(ValueError, match="micro-op"):
        check_list_append([Op(0, "txn", None, [("del", "x", None)], [], 0, 1)])
    with pytest.raises(ValueError, match="output"):
        check_list_append([Op(0, "txn", None, [rd("x", None)], [[1], [2]], 0, 1)])


def simulate(seed: int, n: int, processes: int, keys: int, max_mops: int = 4,
             stale: float = 0.0) -> list[Op]:
    """Serializable txns, each taking effect at one instant inside its interval, with reads
    seeing every txn that took effect before (so also every one acknowledged before it began).

    With ``stale`` > 0, that share of the txns read an older state (a broken store): their
    reads miss the last few txns, though their appends go on top of the current state."""
    rnd = random.Random(seed)
    free = [0.0] * processes
    planned = []
    for _ in range(n):
        p = rnd.randrange(processes)
        call = free[p] + rnd.random()
        ret = call + rnd.random() * 3
        free[p] = ret
        planned.append((rnd.uniform(call, ret), p, call, ret))
    planned.sort()
    state: dict[str, tuple[int, ...]] = {}  # never changed in place: a txn copies what it changes
    past: list[dict[str, tuple[int, ...]]] = []
    counter = 0
    ops = []
    for _, p, call, ret in planned:
        status = rnd.choice(["ok", "ok", "ok", "ok", "info", "fail"])
        applied = status == "ok" or (status == "info" and rnd.random() < 0.5)
        view = dict(state)
        seen = (past[-rnd.randint(1, min(5, len(past)))] if stale and past and rnd.random() < stale
                else view)
        mine: dict[str, tuple[int, ...]] = {}
        mops = []
        for _ in range(rnd.randint(1, max_mops)):
            key = f"k{rnd.randrange(keys)}"
            if rnd.random() < 0.5:
                counter += 1
                view[key] = (*view.get(key, ()), counter)
                mine[key] = (*mine.get(key, ()), counter)
                mops.append(a(key, counter))
            elif seen is view:
                mops.append(rd(key, list(view[key]) if key in view else None))
            else:
                got = seen.get(key, ()) + mine.get(key, ())
                mops.append(rd(key, list(got) or None))
        if applied:
            past.append(state)
            state = view
        ops.append(txn(p, call, ret if status != "info" else None, *mops, status=status))
    return ops


@quick
@given(st.integers(0, 2**32), st.integers(1, 60), st.integers(1, 6), st.integers(1, 4))
def test_generated_serializable_histories_are_accepted(seed, n, processes, keys):
    """Whatever a strictly serializable store produces passes every check."""
    result = check_list_append(simulate(seed, n, processes, keys))
    assert result.ok, result.summary()


def test_a_large_history_checks_fast():
    """Thousands of txns on a few keys: the checks are near-linear."""
    ops = simulate(7, 4000, 10, 5)
    result = check_list_append(ops)
    assert result.ok, result.summary()
    assert result.reads > 1000


@pytest.mark.parametrize(("n", "keys"), [
    pytest.param(1000, 10, id="ci-10-keys"),
    pytest.param(1000, 50, id="ci-50-keys"),
    pytest.param(30_000, 30, id="long-run", marks=pytest.mark.slow),
])
def test_histories_of_the_ci_and_long_run_sizes_check_in_seconds(n, keys):
    """Txns of up to 8 micro-ops: a valid history passes, with every edge kind in its graph,
    and the check of even the long-run size takes seconds (no quadratic step)."""
    ops = simulate(11, n, 8, keys, max_mops=8)
    started = time.process_time()  # CPU time: other processes on the machine do not count
    result = check_list_append(ops)
    took = time.process_time() - started
    assert result.ok, result.summary()
    assert all(result.graph_edges[k] > 0 for k in ("ww", "wr", "rw", "rt")), result.summary()
    assert result.graph_edges["rt"] < 20 * result.graph_txns
    assert took < n / 1000, f"{n} txns took {took:.1f}s"


@pytest.mark.parametrize("seed", range(5))
def test_generated_histories_of_a_store_with_stale_reads_fail_across_keys(seed):
    """A store whose reads sometimes miss the last txns: the cycle check says so."""
    result = check_list_append(simulate(seed, 400, 6, 8, max_mops=6, stale=0.05))
    assert result.kinds() & set(CYCLE_KINDS), result.summary()


# -- anomalies across keys: cycles in the dependency graph -------------------------------------


def procs(txns: tuple[Op, ...]) -> set[int]:
    """The processes of ``txns`` (each txn of these tests has its own process)."""
    return {op.process for op in txns}


def cycles_of(*ops: Op) -> list[tuple[str, tuple, tuple[Op, ...]]]:
    """The cycle anomalies found in ``ops``: (kind, keys, txns), after checking that the
    per-key checks find nothing there."""
    found = check_list_append(ops)
    assert not found.kinds() & set(KEY_KINDS), found.summary()
    return [(x.kind, x.key, x.ops) for x in found.anomalies]


def test_two_txns_appending_to_two_keys_in_opposite_orders_are_a_write_cycle():
    """G0: T0's append is before T1's on x, after it on y."""
    t0 = txn(0, 0, 2, a("x", 1), a("y", 2))
    t1 = txn(1, 0, 2, a("x", 2), a("y", 1))
    final = txn(2, 3, 4, rd("x", [1, 2]), rd("y", [1, 2]))
    ((kind, keys, txns),) = cycles_of(t0, t1, final)
    assert (kind, keys, procs(txns)) == (G0, ("x", "y"), {0, 1})


def test_two_txns_each_reading_the_others_append_are_circular_information_flow():
    """G1c: T0 read T1's append to y and T1 read T0's append to x."""
    t0 = txn(0, 0, 2, a("x", 1), rd("y", [1]))
    t1 = txn(1, 0, 2, a("y", 1), rd("x", [1]))
    ((kind, keys, txns),) = cycles_of(t0, t1)
    assert (kind, keys, procs(txns)) == (G1C, ("x", "y"), {0, 1})


def test_read_skew_is_g_single():
    """T1 read T0's x and appended y; T2 saw T1's y but not T0's x."""
    t0 = txn(0, 0, 3, a("x", 1))
    t1 = txn(1, 0, 3, rd("x", [1]), a("y", 1))
    t2 = txn(2, 0, 3, rd("y", [1]), rd("x", []))
    ((kind, keys, txns),) = cycles_of(t0, t1, t2)
    assert (kind, keys, procs(txns)) == (G_SINGLE, ("x", "y"), {0, 1, 2})


def test_fractured_read_is_g_single():
    """T1 saw T0's append to x but not its append to y, made in the same txn."""
    t0 = txn(0, 0, 2, a("x", 1), a("y", 1))
    t1 = txn(1, 0, 2, rd("x", [1]), rd("y", []))
    final = txn(2, 3, 4, rd("x", [1]), rd("y", [1]))
    ((kind, keys, txns),) = cycles_of(t0, t1, final)
    assert (kind, keys, procs(txns)) == (G_SINGLE, ("x", "y"), {0, 1})
    explanation = check_list_append([t0, t1, final]).anomalies[0].details
    assert "-wr 'x'->" in explanation and "-rw 'y'->" in explanation


def test_write_skew_is_g2():
    """Each txn read both keys empty and appended to one: neither saw the other's append."""
    t0 = txn(0, 0, 2, rd("x", []), rd("y", []), a("x", 1))
    t1 = txn(1, 0, 2, rd("x", []), rd("y", []), a("y", 1))
    final = txn(2, 3, 4, rd("x", [1]), rd("y", [1]))
    ((kind, keys, txns),) = cycles_of(t0, t1, final)
    assert (kind, keys, procs(txns)) == (G2, ("x", "y"), {0, 1})


def test_a_stale_read_across_keys_is_a_cycle_only_through_real_time():
    """T1 began after T0 returned; T2 (concurrent with both) saw T1's y but not T0's x. Only
    real time orders T0 before T1; with overlapping T0 and T1 the same reads are serializable."""
    t0 = txn(0, 0, 1, a("x", 1))
    t1 = txn(1, 2, 3, a("y", 1))
    t2 = txn(2, 0, 4, rd("y", [1]), rd("x", []))
    final = txn(3, 5, 6, rd("x", [1]), rd("y", [1]))
    ((kind, keys, txns),) = cycles_of(t0, t1, t2, final)
    assert (kind, keys, procs(txns)) == (G_SINGLE_REALTIME, ("x", "y"), {0, 1, 2})
    overlapping = txn(1, 0.5, 3, a("y", 1))
    assert check_list_append([t0, overlapping, t2, final]).ok


def test_appends_ordered_against_real_time_are_a_realtime_write_cycle():
    """T1 began after T0 returned, yet its append comes first in x."""
    t0 = txn(0, 0, 1, a("x", 1))
    t1 = txn(1, 2, 3, a("x", 2))
    final = txn(2, 4, 5, rd("x", [2, 1]))
    ((kind, keys, txns),) = cycles_of(t0, t1, final)
    assert (kind, keys, procs(txns)) == (G0_REALTIME, ("x",), {0, 1})


def test_a_read_after_the_txns_own_append_still_shows_what_it_saw_of_others():
    """T1 appended 2 to x and read [1, 2]: it saw T0's 1, yet missed T0's append to y (which a
    later read saw: appends that no read saw are in no dependency)."""
    t0 = txn(0, 0, 3, a("x", 1), a("y", 1))
    t1 = txn(1, 0, 3, a("x", 2), rd("x", [1, 2]), rd("y", []))
    final = txn(2, 4, 5, rd("y", [1]))
    ((kind, _, txns),) = cycles_of(t0, t1, final)
    assert (kind, procs(txns)) == (G_SINGLE, {0, 1})


def test_an_info_txn_whose_appends_were_seen_takes_part_in_cycles():
    """A fractured read of an info txn's two appends is still a fractured read."""
    t0 = txn(0, 0, None, a("x", 1), a("y", 1), status="info")
    t1 = txn(1, 1, 2, rd("x", [1]), rd("y", []))
    final = txn(2, 3, 4, rd("y", [1]))
    ((kind, _, txns),) = cycles_of(t0, t1, final)
    assert (kind, procs(txns)) == (G_SINGLE, {0, 1})


def test_reads_of_info_and_failed_txns_give_no_dependencies():
    """A write skew whose other half is an info txn (its reads unknown) is no evidence."""
    t0 = txn(0, 0, 2, rd("x", []), rd("y", []), a("x", 1))
    t1 = Op(1, "txn", None, [rd("x", None), rd("y", None), a("y", 1)],
            [rd("x", []), rd("y", []), a("y", 1)], 0, 2, "info")
    t2 = Op(2, "txn", None, [rd("x", None), a("z", 1)], [rd("x", []), a("z", 1)], 0, 2, "fail")
    final = txn(2, 3, 4, rd("x", [1]), rd("y", [1]), rd("z", []))
    result = check_list_append([t0, t1, t2, final])
    assert result.ok, result.summary()
    assert result.graph_txns == 3  # t0, the info t1 (its append was seen) and the final read
    assert result.graph_edges["rw"] == 1  # t0 missed t1's append to y; t1's reads count not


def test_a_serializable_history_with_concurrency_info_and_failures_has_no_cycle():
    """Overlapping multi-key txns in the serial order T0 T2 T1 I T3 T4 T6, an info txn that
    applied, one that did not, a failed one, and an info reader: no anomaly of any kind."""
    ops = [
        txn(0, 0, 2, a("x", 1), rd("y", None)),  # T0
        txn(2, 1, 4, rd("z", None), rd("x", [1]), a("x", 2)),  # T2
        txn(1, 1.5, 3, rd("x", [1, 2]), a("y", 1), a("z", 1)),  # T1, after T2 though it ended first
        txn(3, 3.5, None, a("y", 2), a("x", 3), status="info"),  # I: applied
        txn(4, 3.5, None, a("z", 9), status="info"),  # never applied
        txn(5, 3.6, 3.9, a("x", 99), status="fail"),
        txn(0, 5, 6, rd("x", [1, 2, 3]), rd("y", [1, 2]), rd("z", [1])),  # T3
        txn(1, 5.5, 7, rd("z", [1]), a("z", 2), rd("z", [1, 2])),  # T4
        txn(2, 8, None, rd("x", None), status="info"),
        txn(3, 8, 9, rd("x", [1, 2, 3]), rd("y", [1, 2]), rd("z", [1, 2])),  # T6
    ]
    result = check_list_append(ops)
    assert result.ok, result.summary()
    assert result.graph_txns == 7
    assert all(result.graph_edges[k] > 0 for k in ("ww", "wr", "rw", "rt")), result.summary()
