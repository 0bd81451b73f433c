"""Key choosers: which record an operation touches.

Owns: :class:`Uniform` and :class:`ScrambledZipfian` over the record ids ``0 .. n-1``, and
:func:`distinct`, which draws the distinct, sorted keys of one batched call. Pure: each chooser
draws from the ``random.Random`` it is given, so a seed makes a run repeatable.

The zipfian chooser is YCSB's ``ScrambledZipfianGenerator`` (``core/.../generator``): a zipfian
over a fixed item count of 10^10 with constant 0.99 and its precomputed zeta (Gray et al.,
"Quickly Generating Billion-Record Synthetic Databases", SIGMOD 1994), whose value is hashed
(64-bit FNV-1a over the 8 little-endian bytes, as YCSB's ``Utils.fnvhash64``) into ``0 .. n-1``.
So the popular keys are spread over the key space instead of being its first keys, and the skew
does not depend on ``n``: the hottest key takes about 1/zeta = 3.8% of the draws.
"""

from __future__ import annotations

import math
import random
from typing import Protocol

ZIPFIAN_CONSTANT = 0.99
ITEM_COUNT = 10_000_000_000
"""The item count of YCSB's scrambled zipfian (its ``ITEM_COUNT``)."""
ZETAN = 26.46902820178302
"""zeta(ITEM_COUNT, 0.99), precomputed by YCSB (its ``ZETAN``)."""

FNV_OFFSET_BASIS_64 = 0xCBF29CE484222325
FNV_PRIME_64 = 1099511628211
_MASK64 = (1 << 64) - 1

DISTRIBUTIONS = ("uniform", "zipfian")


class Chooser(Protocol):
    """Draws one record id in ``0 .. n-1``."""

    n: int

    def next(self, rng: random.Random) -> int:
        """Return the next record id."""
        ...


def fnvhash64(value: int) -> int:
    """Hash a 64-bit value as YCSB's ``Utils.fnvhash64`` does (FNV-1a, then ``Math.abs``).

    Returns:
        A non-negative int below 2**63 (YCSB's ``Math.abs(Long.MIN_VALUE)`` stays negative; we
        map that one value to 0 instead).
    """
    h = FNV_OFFSET_BASIS_64
    v = value & _MASK64
    for _ in range(8):
        h ^= v & 0xFF
        v >>= 8
        h = (h * FNV_PRIME_64) & _MASK64
    signed = h - (1 << 64) if h >> 63 else h
    out = abs(signed)
    return out if out < (1 << 63) else 0


class Uniform:
    """Every record equally likely."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError("a chooser needs at least one record")
        self.n = n

    def next(self, rng: random.Random) -> int:
        """Return a uniformly chosen record id."""
        return rng.randrange(self.n)


class Zipfian:
    """YCSB's ``ZipfianGenerator`` over ``0 .. items-1`` (rank 0 the most popular)."""

    def __init__(self, items: int, theta: float = ZIPFIAN_CONSTANT,
                 zetan: float | None = None) -> None:
        if items < 1:
            raise ValueError("a zipfian needs at least one item")
        self.items = items
        self.theta = theta
        self.zetan = zetan if zetan is not None else _zeta(items, theta)
        self.alpha = 1.0 / (1.0 - theta)
        zeta2 = 1.0 + 0.5**theta
        self.eta = (1.0 - (2.0 / items) ** (1.0 - theta)) / (1.0 - zeta2 / self.zetan)
        self._second = 1.0 + 0.5**theta

    def value(self, u: float) -> int:
        """Map a uniform ``u`` in [0, 1) to a rank, as YCSB's ``nextLong`` does."""
        uz = u * self.zetan
        if uz < 1.0:
            return 0
        if uz < self._second:
            return 1
        return int(self.items * (self.eta * u - self.eta + 1.0) ** self.alpha)

    def next(self, rng: random.Random) -> int:
        """Return the next rank."""
        return self.value(rng.random())


def _zeta(n: int, theta: float) -> float:
    return math.fsum(1.0 / (i + 1) ** theta for i in range(n))


class ScrambledZipfian:
    """YCSB's scrambled zipfian over the record ids ``0 .. n-1`` (see the module docstring)."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError("a chooser needs at least one record")
        self.n = n
        # YCSB: ZipfianGenerator(0, ITEM_COUNT, 0.99, ZETAN), i.e. ITEM_COUNT + 1 items.
        self._zipf = Zipfian(ITEM_COUNT + 1, ZIPFIAN_CONSTANT, ZETAN)

    def value(self, u: float) -> int:
        """Map a uniform ``u`` in [0, 1) to a record id."""
        return fnvhash64(self._zipf.value(u)) % self.n

    def next(self, rng: random.Random) -> int:
        """Return the next record id."""
        return self.value(rng.random())


def chooser(distribution: str, n: int) -> Chooser:
    """Build the chooser named ``distribution`` (``uniform`` or ``zipfian``) over ``n`` records.

    Raises:
        ValueError: an unknown distribution or ``n < 1``.
    """
    if distribution == "uniform":
        return Uniform(n)
    if distribution == "zipfian":
        return ScrambledZipfian(n)
    raise ValueError(f"unknown key distribution {distribution!r} (choose from "
                     f"{', '.join(DISTRIBUTIONS)})")


def distinct(keys: Chooser, rng: random.Random, count: int) -> list[int]:
    """Draw ``count`` distinct record ids, sorted (one batched call's keys).

    Sorted, so that concurrent batches lock rows in one order in every system (no deadlocks
    between batches); distinct, since a multi-row upsert may not name a row twice in PostgreSQL
    or etcd. With a skewed chooser the hot keys come first and the rest are drawn again.

    Raises:
        ValueError: ``count`` exceeds the number of records.
    """
    if count > keys.n:
        raise ValueError(f"cannot draw {count} distinct keys from {keys.n} records")
    seen: set[int] = set()
    tries = 0
    while len(seen) < count:
        seen.add(keys.next(rng))
        tries += 1
        if tries > 50 * count + 1000:  # a very skewed chooser over few records: fill uniformly
            while len(seen) < count:
                seen.add(rng.randrange(keys.n))
    return sorted(seen)
