"""Unit tests of nodes.bench.stats: latency histograms, percentiles and tallies."""

from __future__ import annotations

import math
import random

import pytest

from nodes.bench.stats import Histogram, Tally, bucket, bucket_value, median


def _exact(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def test_percentiles_are_within_one_percent_of_the_exact_value() -> None:
    """p50, p99 and p999 from the histogram are within 1% of nearest-rank percentiles."""
    rng = random.Random(1)
    values = [rng.lognormvariate(math.log(0.002), 1.0) for _ in range(50_000)]
    h = Histogram()
    for v in values:
        h.add(v)
    for p in (1, 50, 90, 99, 99.9, 100):
        assert h.percentile(p) == pytest.approx(_exact(values, p), rel=0.01), p


def test_bucket_value_lies_inside_its_bucket() -> None:
    """A bucket's value maps back to the bucket, so reported latencies are consistent."""
    for latency in (1e-6, 3.3e-5, 0.0123, 1.0, 42.0):
        assert bucket(bucket_value(bucket(latency))) == bucket(latency)
    assert bucket(0.0) == 0


def test_merged_histograms_count_both() -> None:
    """Merging adds counts: the merged percentile is that of all latencies together."""
    a, b, both = Histogram(), Histogram(), Histogram()
    for i in range(1, 1001):
        (a if i % 2 else b).add(i / 1000)
        both.add(i / 1000)
    a.merge(b)
    assert a.total == 1000
    assert a.percentile(99) == both.percentile(99)


def test_empty_histogram_and_bad_percentile() -> None:
    """No latencies give 0.0; a percentile outside 0-100 is refused."""
    assert Histogram().percentile(50) == 0.0
    with pytest.raises(ValueError):
        Histogram().percentile(101)


def test_tally_counts_per_second_and_merges() -> None:
    """A tally counts ops, rows and per-second buckets; merging adds them and keeps the
    longest measured time."""
    a, b = Tally(seconds=2.0), Tally(seconds=2.5)
    a.count(0, 1, 0.001)
    a.count(1, 1, 0.002)
    b.count(2, 100, 0.003)
    b.fail("UNAVAILABLE", "connection refused")
    b.retries["ABORTED"] += 2
    a.merge(b)
    assert (a.ops, a.rows, a.seconds) == (3, 102, 2.5)
    assert a.per_second == [1, 1, 1]
    assert a.errors == {"UNAVAILABLE": 1} and a.retries == {"ABORTED": 2}
    assert a.examples == {"UNAVAILABLE": "connection refused"}
    assert a.ops_per_s == pytest.approx(3 / 2.5)
    assert a.rows_per_s == pytest.approx(102 / 2.5)


def test_tally_survives_the_trip_between_processes() -> None:
    """to_json/from_json keep every figure (a tally travels from client processes as JSON)."""
    t = Tally(seconds=1.5)
    for i in range(100):
        t.count(i // 50, 2, (i + 1) / 10_000)
    t.fail("ABORTED", "deadlock")
    back = Tally.from_json(t.to_json())
    assert back.figures() == t.figures()


def test_median_of_rounds() -> None:
    """The median of an odd and an even number of rounds; none gives 0."""
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([1.0, 2.0]) == 1.5
    assert median([]) == 0.0
