"""Figures of a round: counts, a latency histogram, per-second throughput, and their merge.

Owns: :class:`Histogram` (logarithmic buckets 1% wide, so percentiles are within 0.5% of the
exact value, and merging two histograms is adding counts), :class:`Tally` (what one client
thread, process or whole round measured), :func:`median`. Pure; no clock is read here.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MIN_LATENCY_S = 1e-6
"""The lower edge of bucket 0; faster operations fall into it."""
GROWTH = 1.01
"""Each bucket is 1% wider than the one before."""
_INV_LOG_GROWTH = 1.0 / math.log(GROWTH)


def bucket(latency_s: float) -> int:
    """Return the histogram bucket of a latency."""
    if latency_s <= MIN_LATENCY_S:
        return 0
    return int(math.log(latency_s / MIN_LATENCY_S) * _INV_LOG_GROWTH)


def bucket_value(index: int) -> float:
    """Return the value a bucket stands for: the geometric middle of its edges, in seconds."""
    return MIN_LATENCY_S * GROWTH ** (index + 0.5)


class Histogram:
    """Counts of latencies per logarithmic bucket."""

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self.counts: Counter[int] = Counter(counts or {})

    def add(self, latency_s: float) -> None:
        """Count one latency."""
        self.counts[bucket(latency_s)] += 1

    def merge(self, other: Histogram) -> None:
        """Add another histogram's counts to this one."""
        self.counts.update(other.counts)

    @property
    def total(self) -> int:
        """How many latencies were counted."""
        return sum(self.counts.values())

    def percentile(self, p: float) -> float:
        """Return the latency at percentile ``p`` (0-100), in seconds; 0.0 when empty.

        The value is the smallest bucket whose cumulative count reaches ``p`` percent (the
        "nearest rank" definition), reported as that bucket's middle.
        """
        if not 0 <= p <= 100:
            raise ValueError(f"percentile {p} is not in 0..100")
        total = self.total
        if total == 0:
            return 0.0
        rank = max(1, math.ceil(p / 100.0 * total))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return bucket_value(index)
        return bucket_value(max(self.counts))

    def cdf(self) -> list[tuple[float, float]]:
        """Return (latency in seconds, fraction of operations at most that slow) per bucket."""
        total = self.total
        out, seen = [], 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            out.append((bucket_value(index), seen / total))
        return out

    def to_json(self) -> dict[str, int]:
        """The non-empty buckets as ``{index: count}`` (JSON keys are strings)."""
        return {str(i): n for i, n in sorted(self.counts.items()) if n}

    @classmethod
    def from_json(cls, data: Mapping[str, int]) -> Histogram:
        """Rebuild a histogram from :meth:`to_json`."""
        return cls({int(i): int(n) for i, n in data.items()})


@dataclass
class Tally:
    """What a client thread, a client process or a whole round measured.

    ``seconds`` is the measured time: from the common start until the last operation ended.
    ``per_second[i]`` counts operations that started in second ``i`` of the round.
    ``retries`` counts conflicts retried inside one operation (ABORTED, a failed etcd compare,
    a PostgreSQL serialization failure...); ``errors`` counts operations that failed, by gRPC
    status code or exception type.
    """

    ops: int = 0
    rows: int = 0
    seconds: float = 0.0
    hist: Histogram = field(default_factory=Histogram)
    per_second: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    """The first message seen of each kind of error."""

    def fail(self, name: str, message: str) -> None:
        """Count one operation that failed."""
        self.errors[name] += 1
        self.examples.setdefault(name, message[:500])

    def count(self, second: int, rows: int, latency_s: float) -> None:
        """Count one operation that succeeded."""
        self.ops += 1
        self.rows += rows
        self.hist.add(latency_s)
        while len(self.per_second) <= second:
            self.per_second.append(0)
        self.per_second[second] += 1

    def merge(self, other: Tally) -> None:
        """Add another tally (run at the same time) to this one."""
        self.ops += other.ops
        self.rows += other.rows
        self.seconds = max(self.seconds, other.seconds)
        self.hist.merge(other.hist)
        if len(other.per_second) > len(self.per_second):
            self.per_second.extend([0] * (len(other.per_second) - len(self.per_second)))
        for i, n in enumerate(other.per_second):
            self.per_second[i] += n
        self.errors.update(other.errors)
        self.retries.update(other.retries)
        for name, message in other.examples.items():
            self.examples.setdefault(name, message)

    @property
    def ops_per_s(self) -> float:
        """Operations per second over the measured time."""
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def rows_per_s(self) -> float:
        """Rows per second over the measured time."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_count(self) -> int:
        """Operations that failed."""
        return sum(self.errors.values())

    def figures(self) -> dict[str, Any]:
        """The round's figures for the report (latencies in milliseconds)."""
        return {
            "ops": self.ops, "rows": self.rows, "seconds": round(self.seconds, 4),
            "ops_per_s": self.ops_per_s, "rows_per_s": self.rows_per_s,
            "p50_ms": self.hist.percentile(50) * 1e3, "p99_ms": self.hist.percentile(99) * 1e3,
            "p999_ms": self.hist.percentile(99.9) * 1e3,
            "errors": dict(self.errors), "retries": dict(self.retries),
            "error_examples": dict(self.examples), "per_second": list(self.per_second),
        }

    def to_json(self) -> dict[str, Any]:
        """Everything, for sending between processes or storing."""
        return {"ops": self.ops, "rows": self.rows, "seconds": self.seconds,
                "hist": self.hist.to_json(), "per_second": self.per_second,
                "errors": dict(self.errors), "retries": dict(self.retries),
                "examples": dict(self.examples)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tally:
        """Rebuild a tally from :meth:`to_json`."""
        return cls(ops=int(data["ops"]), rows=int(data["rows"]), seconds=float(data["seconds"]),
                   hist=Histogram.from_json(data["hist"]),
                   per_second=[int(n) for n in data["per_second"]],
                   errors=Counter(data["errors"]), retries=Counter(data["retries"]),
                   examples=dict(data.get("examples", {})))


def median(values: Iterable[float]) -> float:
    """The median of the values; 0.0 for none."""
    vs = list(values)
    return float(statistics.median(vs)) if vs else 0.0
