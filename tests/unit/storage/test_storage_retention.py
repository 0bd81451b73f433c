"""The commit-log retention rule (storage/retention.py) and Store.trim_log."""

from __future__ import annotations

import pytest

from storage import Change, Retention, Store
from storage.memory import MemoryEngine
from storage.retention import cut

POLICY = Retention(keep_s=10.0, max_bytes=1000, max_age_s=100.0)


def recs(*ages: float, now: float = 1000.0, size: int = 10) -> list[tuple[int, float, int]]:
    """Records at positions 1.. with the given ages (oldest first)."""
    return [(i + 1, now - age, size) for i, age in enumerate(ages)]


def test_records_older_than_keep_go_when_nobody_needs_them() -> None:
    got = cut(recs(50, 30, 11, 9, 1), held_bytes=50, now=1000.0, needed_from=None,
              policy=POLICY)
    assert (got.before, got.records, got.bytes, got.forced) == (4, 3, 30, False)


def test_a_young_record_stops_the_cut_even_if_older_ones_follow() -> None:
    """Clocks of nodes differ a little: the cut stops at the first record that stays."""
    got = cut(recs(50, 5, 60), held_bytes=30, now=1000.0, needed_from=None, policy=POLICY)
    assert got.before == 2


def test_records_a_consumer_needs_stay_within_the_bounds() -> None:
    got = cut(recs(50, 40, 30, 20), held_bytes=40, now=1000.0, needed_from=3, policy=POLICY)
    assert (got.before, got.forced) == (3, False)


def test_past_max_bytes_the_oldest_go_even_if_needed() -> None:
    got = cut(recs(50, 40, 30, 20, size=400), held_bytes=1600, now=1000.0, needed_from=1,
              policy=POLICY)
    # 1600 > 1000: the first goes (1200 left, still over): the second goes (800): stop.
    assert (got.before, got.records, got.bytes, got.forced) == (3, 2, 800, True)


def test_past_max_age_a_record_goes_even_if_needed() -> None:
    got = cut(recs(150, 120, 50), held_bytes=30, now=1000.0, needed_from=1, policy=POLICY)
    assert (got.before, got.forced) == (3, True)


def test_nothing_held_cuts_nothing() -> None:
    got = cut([], held_bytes=0, now=1000.0, needed_from=None, policy=POLICY)
    assert (got.before, got.records) == (0, 0)


@pytest.mark.parametrize("bad", [Retention(keep_s=-1), Retention(max_bytes=-1),
                                 Retention(keep_s=200, max_age_s=100)])
def test_impossible_policies_are_refused(bad: Retention) -> None:
    with pytest.raises(ValueError):
        bad.validated()


def test_trim_log_removes_what_the_rule_lets_go_and_keeps_the_rest() -> None:
    store = Store(MemoryEngine())
    for ts in (100.0, 200.0, 300.0, 995.0):
        with store.write() as w:
            w.append_log(ts=ts, node="n", changes=[Change("t", "put", (1,))])
    got = store.trim_log(POLICY, now=1000.0, needed_from=None)
    assert (got.before, got.records) == (4, 3)
    with store.read() as r:
        oldest, last, held = r.log_bounds()
        assert (oldest, last) == (4, 4)
        assert held == sum(x.size for x in r.log())
    assert store.trim_log(POLICY, now=1000.0, needed_from=None).records == 0


def test_trim_log_goes_at_most_limit_records_at_a_time() -> None:
    store = Store(MemoryEngine())
    for _ in range(7):
        with store.write() as w:
            w.append_log(ts=0.0, node="n", changes=[])
    assert store.trim_log(POLICY, now=1000.0, needed_from=None, limit=3).before == 4
    assert store.trim_log(POLICY, now=1000.0, needed_from=None, limit=3).before == 7
    with store.read() as r:
        assert r.log_bounds()[:2] == (7, 7)
