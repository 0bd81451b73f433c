"""Unit tests of tests.faults.history: the Op record and the thread-safe History recorder."""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable

import pytest

from tests.faults.history import History, Op


def fake_clock(start: float = 0.0, step: float = 1.0) -> Callable[[], float]:
    """A clock that advances by ``step`` on every reading."""
    now = [start - step]

    def clock() -> float:
        now[0] += step
        return now[0]

    return clock


def test_invoke_then_complete_records_times_input_and_output():
    """An op carries what was asked, what came back, and the two clock readings."""
    h = History(clock=fake_clock())
    handle = h.invoke(3, "write", "k", 7)
    op = h.complete(handle, "ok", None)
    assert op == Op(3, "write", "k", 7, None, 0.0, 1.0, "ok")
    assert h.ops() == [op]
    assert len(h) == 1


def test_ops_are_in_invocation_order_whatever_the_completion_order():
    """Completing out of order does not reorder the history."""
    h = History(clock=fake_clock())
    a = h.invoke(0, "read", "k")
    b = h.invoke(1, "write", "k", 1)
    h.complete(b, "ok")
    h.complete(a, "ok", 1)
    assert [op.process for op in h.ops()] == [0, 1]
    assert h.ops()[0].output == 1


def test_open_ops_are_reported_as_info_with_unknown_return():
    """An op never completed may or may not have happened: info, no ret, end at infinity."""
    h = History(clock=fake_clock())
    h.invoke(0, "write", "k", 1)
    (op,) = h.ops()
    assert op.status == "info"
    assert op.ret is None
    assert op.end == math.inf


def test_completing_twice_or_an_unknown_handle_raises():
    """A handle completes exactly once."""
    h = History(clock=fake_clock())
    handle = h.invoke(0, "read", "k")
    h.complete(handle, "fail")
    with pytest.raises(ValueError, match="twice"):
        h.complete(handle, "ok")
    with pytest.raises(KeyError):
        h.complete(5, "ok")


def test_bad_status_is_rejected():
    """Only ok, fail and info exist."""
    h = History(clock=fake_clock())
    handle = h.invoke(0, "read", "k")
    with pytest.raises(ValueError, match="status"):
        h.complete(handle, "timeout")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status"):
        Op(0, "read", status="maybe")  # type: ignore[arg-type]


def test_op_rejects_a_return_before_its_call():
    """Times come from one monotonic clock."""
    with pytest.raises(ValueError, match="precedes"):
        Op(0, "read", call=2.0, ret=1.0)


def test_end_is_the_return_for_ok_and_fail_and_infinity_for_info():
    """An info op may take effect at any time after its call, even after its reply."""
    assert Op(0, "write", call=1.0, ret=2.0, status="ok").end == 2.0
    assert Op(0, "write", call=1.0, ret=2.0, status="fail").end == 2.0
    assert Op(0, "write", call=1.0, ret=2.0, status="info").end == math.inf
    assert Op(0, "write", call=1.0, ret=math.inf, status="ok").end == math.inf
    assert Op(0, "write", call=1.0, status="ok").end == math.inf


def test_describe_is_short_and_names_the_essentials():
    """The report form shows process, kind, key, value, output, status and times."""
    text = Op(4, "cas", "k", (1, 2), True, 1.5, 2.5, "ok").describe()
    assert text == "p4 cas 'k' (1, 2) -> True ok [1.5, 2.5]"
    assert "?" in Op(4, "write", "k", 1, status="info", call=1.0).describe()


def test_recorder_is_thread_safe():
    """Many threads invoking and completing at once lose and mix up nothing."""
    h = History()
    per_thread = 400

    def worker(p: int) -> None:
        for i in range(per_thread):
            handle = h.invoke(p, "write", p, i)
            h.complete(handle, "ok", (p, i))

    threads = [threading.Thread(target=worker, args=(p,)) for p in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ops = h.ops()
    assert len(ops) == 8 * per_thread
    assert all(op.status == "ok" and op.output == (op.process, op.value) for op in ops)
    for p in range(8):
        mine = [op for op in ops if op.process == p]
        assert [op.value for op in mine] == list(range(per_thread))
        assert all(a.ret is not None and a.ret <= b.call for a, b in itertools.pairwise(mine))
