"""Workloads: named operation mixes, and drawing one operation with its arguments.

Owns: the table of workloads (:data:`WORKLOADS`), parsing ``--workload`` (:func:`parse`), the
weighted choice of an operation kind (:class:`Picker`) and its arguments (:func:`draw`). Pure.
Does not own: what an operation does in each system (``nodes/bench/targets``).

Operation kinds (each target implements one method per kind):

=====================  ==========================================================  =========
kind                   what                                                        Shardless
                                                                                   RPCs
=====================  ==========================================================  =========
``read``               point get of one record                                     1
``update``             single-row upsert of one record (a whole new value)         1
``insert``             insert of a new key (never loaded, never inserted before)   1
``short_scan``         YCSB-E scan: from a chosen key, a length uniform in 1-100   1 stream
``scan``               scan of ``--batch`` rows from a chosen key                  1 stream
``read_modify_write``  YCSB-F: a get, then an upsert of the same key (not atomic)  2
``rmw``                interactive transaction: get for update with an inline      2
                       begin, then commit carrying the update
``batch_get``          one call reading ``--batch`` distinct keys                  1
``multi_write``        one call upserting ``--batch`` distinct keys (atomic)       1
``bank``               transfer between two accounts in one interactive            2
                       transaction: read both for update with an inline begin,
                       then commit carrying both updates
=====================  ==========================================================  =========

A workload named ``a+b+...`` mixes the named workloads: each operation first picks one of them
(equally likely), then an operation of its mix.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nodes.bench.keys import Chooser, distinct

SHORT_SCAN_MAX = 100
"""YCSB-E's maximum scan length (``maxscanlength``); lengths are uniform in 1..this."""

KINDS = ("read", "update", "insert", "short_scan", "scan", "read_modify_write", "rmw",
         "batch_get", "multi_write", "bank")
RPCS = {"read": 1, "update": 1, "insert": 1, "short_scan": 1, "scan": 1,
        "read_modify_write": 2, "rmw": 2, "batch_get": 1, "multi_write": 1, "bank": 2}
"""How many RPCs each kind makes against Shardless (and so how many echo calls)."""


@dataclass(frozen=True)
class Workload:
    """A named mix of operation kinds with weights that add up to 1."""

    name: str
    mix: tuple[tuple[str, float], ...]
    description: str

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds this workload uses."""
        return tuple(k for k, _ in self.mix)

    @property
    def uses_batch(self) -> bool:
        """Whether operations move ``--batch`` rows (so rows/s is reported)."""
        return any(k in ("scan", "batch_get", "multi_write") for k in self.kinds)

    @property
    def uses_accounts(self) -> bool:
        """Whether the workload transfers between accounts (and so checks the total)."""
        return "bank" in self.kinds


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("ycsb-a", (("read", 0.5), ("update", 0.5)), "YCSB A: 50% read, 50% update"),
    Workload("ycsb-b", (("read", 0.95), ("update", 0.05)), "YCSB B: 95% read, 5% update"),
    Workload("ycsb-c", (("read", 1.0),), "YCSB C: 100% read"),
    Workload("ycsb-e", (("short_scan", 0.95), ("insert", 0.05)),
             "YCSB E: 95% scans of 1-100 rows, 5% inserts of new keys"),
    Workload("ycsb-f", (("read", 0.5), ("read_modify_write", 0.5)),
             "YCSB F: 50% read, 50% read-modify-write (a get then an upsert)"),
    Workload("get", (("read", 1.0),), "point get"),
    Workload("write", (("update", 1.0),), "single-row upsert"),
    Workload("multi-write", (("multi_write", 1.0),), "one call upserting --batch rows"),
    Workload("batch-get", (("batch_get", 1.0),), "one call reading --batch keys"),
    Workload("scan", (("scan", 1.0),), "scan of --batch rows from a chosen key"),
    Workload("rmw", (("rmw", 1.0),),
             "interactive transaction: begin, get for update, update, commit"),
    Workload("bank", (("bank", 1.0),),
             "transfer between two accounts in one interactive transaction"),
)}


def combine(parts: Sequence[Workload]) -> Workload:
    """Mix several workloads: each operation picks one of them, equally likely, then its op."""
    weights: dict[str, float] = {}
    for w in parts:
        for kind, weight in w.mix:
            weights[kind] = weights.get(kind, 0.0) + weight / len(parts)
    return Workload("+".join(w.name for w in parts), tuple(weights.items()),
                    "mix of " + ", ".join(w.name for w in parts))


def parse(spec: str) -> list[Workload]:
    """Parse ``--workload``: names separated by commas, ``all``, or mixes ``a+b``.

    Raises:
        ValueError: an unknown or empty name (the message lists the known ones).
    """
    out: list[Workload] = []
    for item in spec.split(","):
        item = item.strip()
        if item == "all":
            out.extend(WORKLOADS.values())
            continue
        names = [n.strip() for n in item.split("+")]
        unknown = [n for n in names if n not in WORKLOADS]
        if not item or unknown:
            raise ValueError(f"unknown workload {', '.join(unknown) or repr(item)!s} (choose "
                             f"from {', '.join(WORKLOADS)}, all, or mixes such as ycsb-a+rmw)")
        out.append(WORKLOADS[names[0]] if len(names) == 1
                   else combine([WORKLOADS[n] for n in names]))
    if not out:
        raise ValueError("no workload given")
    return list(dict((w.name, w) for w in out).values())


class Picker:
    """Chooses an operation kind by the workload's weights."""

    def __init__(self, workload: Workload) -> None:
        self.kinds = [k for k, _ in workload.mix]
        total = sum(w for _, w in workload.mix)
        self._cumulative = list(itertools.accumulate(w / total for _, w in workload.mix))

    def next(self, rng: random.Random) -> str:
        """Return the next kind."""
        if len(self.kinds) == 1:
            return self.kinds[0]
        i = bisect.bisect_right(self._cumulative, rng.random())
        return self.kinds[min(i, len(self.kinds) - 1)]


def draw(kind: str, rng: random.Random, keys: Chooser, batch: int,
         new_key: Callable[[], int]) -> tuple[object, ...]:
    """Draw the arguments of one operation of ``kind``.

    Args:
        kind: One of :data:`KINDS`.
        rng: This client thread's random source.
        keys: The chooser over the loaded records (and, for ``bank``, the accounts).
        batch: ``--batch``.
        new_key: Returns a key never used before (for ``insert``).

    Returns:
        The arguments of the target's method for ``kind``.
    """
    if kind in ("read", "update", "read_modify_write", "rmw"):
        return (keys.next(rng),)
    if kind == "insert":
        return (new_key(),)
    if kind == "short_scan":
        return (keys.next(rng), rng.randint(1, SHORT_SCAN_MAX))
    if kind == "scan":
        return (keys.next(rng), batch)
    if kind in ("batch_get", "multi_write"):
        return (distinct(keys, rng, batch),)
    if kind == "bank":
        a, b = distinct(keys, rng, 2)
        return (a, b, rng.randint(1, 10))
    raise ValueError(f"unknown operation kind {kind!r}")
