"""Unit tests of nodes.bench.keys: the uniform and YCSB scrambled-zipfian key choosers."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from nodes.bench.keys import (
    ZETAN,
    ScrambledZipfian,
    Uniform,
    Zipfian,
    chooser,
    distinct,
    fnvhash64,
)

N = 10_000


def _reference_fnv1a(value: int) -> int:
    """FNV-1a 64 over the 8 little-endian bytes, then Java's Math.abs of the signed result."""
    h = 0xCBF29CE484222325
    for byte in value.to_bytes(8, "little"):
        h = ((h ^ byte) * 1099511628211) % (1 << 64)
    signed = h - (1 << 64) if h >= 1 << 63 else h
    return abs(signed)


@pytest.mark.parametrize("value", [0, 1, 255, 256, 123_456_789, 10_000_000_000, (1 << 63) - 1])
def test_fnvhash64_is_fnv1a_over_the_little_endian_bytes(value: int) -> None:
    """The hash is YCSB's: FNV-1a over the value's 8 bytes, made non-negative."""
    assert fnvhash64(value) == _reference_fnv1a(value)
    assert 0 <= fnvhash64(value) < 1 << 63


def test_zipfian_maps_u_to_ranks_as_ycsb_does() -> None:
    """u below 1/zeta gives rank 0, the next band rank 1, and larger u never a smaller rank."""
    z = Zipfian(10_000_000_001, 0.99, ZETAN)
    assert z.value(0.0) == 0
    assert z.value(0.999 / ZETAN) == 0
    assert z.value(1.001 / ZETAN) == 1
    us = [i / 1000 for i in range(1000)]
    ranks = [z.value(u) for u in us]
    assert ranks == sorted(ranks)
    assert ranks[-1] > 1_000_000


def test_scrambled_zipfian_stays_in_range() -> None:
    """Every draw is a record id in 0..n-1, for small and large n."""
    rng = random.Random(1)
    for n in (1, 2, 7, N):
        z = ScrambledZipfian(n)
        assert all(0 <= z.next(rng) < n for _ in range(5000))


def test_scrambled_zipfian_hottest_key_takes_about_one_over_zeta() -> None:
    """With constant 0.99 the most popular key gets about 1/zeta = 3.8% of the draws."""
    rng = random.Random(2)
    z = ScrambledZipfian(N)
    counts = Counter(z.next(rng) for _ in range(200_000))
    share = counts.most_common(1)[0][1] / 200_000
    assert 0.030 < share < 0.047, share
    top10 = sum(n for _, n in counts.most_common(10)) / 200_000
    assert 0.09 < top10 < 0.14, top10


def test_scrambled_zipfian_spreads_the_hot_keys_over_the_key_space() -> None:
    """The hottest keys are not the first ids: the scramble hashes ranks across the space."""
    rng = random.Random(3)
    z = ScrambledZipfian(N)
    counts = Counter(z.next(rng) for _ in range(100_000))
    hot = [k for k, _ in counts.most_common(10)]
    assert max(hot) - min(hot) > N // 2
    assert hot[0] == fnvhash64(0) % N


def test_uniform_is_flat() -> None:
    """Each tenth of the key space gets a tenth of the draws (within 5%)."""
    rng = random.Random(4)
    u = Uniform(N)
    counts = Counter(u.next(rng) * 10 // N for _ in range(100_000))
    assert all(abs(counts[d] - 10_000) < 500 for d in range(10)), counts


def test_choosers_repeat_with_the_same_seed() -> None:
    """A seed makes a run's keys repeatable."""
    for name in ("uniform", "zipfian"):
        c = chooser(name, N)
        a, b = random.Random(5), random.Random(5)
        assert [c.next(a) for _ in range(100)] == [c.next(b) for _ in range(100)]


def test_chooser_refuses_unknown_distribution_and_empty_key_space() -> None:
    """A wrong name or no records is a clear ValueError."""
    with pytest.raises(ValueError, match="unknown key distribution"):
        chooser("pareto", N)
    with pytest.raises(ValueError):
        chooser("uniform", 0)


@pytest.mark.parametrize("name", ["uniform", "zipfian"])
def test_distinct_draws_sorted_distinct_keys(name: str) -> None:
    """A batch's keys are distinct and sorted, even when the chooser is skewed."""
    rng = random.Random(6)
    c = chooser(name, 200)
    for count in (1, 2, 100, 200):
        keys = distinct(c, rng, count)
        assert keys == sorted(set(keys)) and len(keys) == count
        assert all(0 <= k < 200 for k in keys)


def test_distinct_refuses_more_keys_than_records() -> None:
    """Asking for more distinct keys than there are records is an error, not a hang."""
    with pytest.raises(ValueError, match="cannot draw"):
        distinct(Uniform(3), random.Random(7), 4)
