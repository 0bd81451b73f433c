"""Unit tests of nodes.heap: when the trimmer gives freed memory back, and that trimming does.

The decision (``Trimmer.due``) is driven by a fake call counter and a manual clock; one test
frees memory in threads for real and trims it, which needs glibc (skipped elsewhere).
"""

from __future__ import annotations

import threading

import pytest

from nodes import heap
from nodes.heap import Trimmer


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _trimmer(calls: list[int], clock: _Clock) -> Trimmer:
    return Trimmer(lambda: calls[0], clock=clock, check_s=1.0, quiet_trim_s=10.0,
                   busy_trim_s=60.0)


def test_a_quiet_check_after_calls_is_due_at_once():
    """Calls during one check period, none in the next: the next check trims."""
    calls, clock = [0], _Clock()
    t = _trimmer(calls, clock)
    calls[0] = 50
    clock.now += 1
    assert not t.due()  # busy this period
    clock.now += 1
    assert t.due()  # quiet now, and busy since the last trim


def test_a_node_that_stays_quiet_is_trimmed_only_every_quiet_trim_s():
    """No calls at all: no trim before quiet_trim_s has passed since the last one."""
    calls, clock = [0], _Clock()
    t = _trimmer(calls, clock)
    clock.now += 5
    assert not t.due()
    clock.now += 5
    assert t.due()


def test_under_unbroken_load_a_trim_comes_only_after_busy_trim_s():
    """Calls in every check period: never quiet, so a trim only once busy_trim_s passed."""
    calls, clock = [0], _Clock()
    t = _trimmer(calls, clock)
    for _ in range(59):
        calls[0] += 10
        clock.now += 1
        assert not t.due()
    calls[0] += 10
    clock.now += 1
    assert t.due()


def test_a_step_that_trims_resets_the_reasons_to_trim():
    """After a trim, a quiet node waits quiet_trim_s for the next one."""
    calls, clock = [0], _Clock()
    t = _trimmer(calls, clock)
    calls[0] = 5
    clock.now += 1
    t.step()
    clock.now += 1
    t.step()
    assert t.trims == 1
    clock.now += 1
    t.step()
    assert t.trims == 1


@pytest.mark.skipif(heap._LIBC is None, reason="needs glibc's malloc_trim")
def test_trim_gives_back_memory_that_threads_freed():
    """Many threads allocate and free about 100 MiB of medium objects; trimming brings the
    private memory back down by most of it."""
    keep: list[list[bytes]] = []

    def churn() -> None:
        chunks = [bytes(3000 + i % 2000) for i in range(8000)]
        keep.append(chunks[::100])  # a few survivors pin nothing but their own chunks

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    before = heap.private_kb()
    heap.trim()
    after = heap.private_kb()
    assert before - after > 20 * 1024, (before, after)
