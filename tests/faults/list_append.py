"""A checker for Jepsen's list-append workload over recorded histories of transactions.

Owns: :func:`check_list_append` and its result types. Does not own the history model
(:mod:`tests.faults.history`) or any I/O.

A transaction is an :class:`~tests.faults.history.Op` of kind ``"txn"`` whose ``value`` is a list
of micro-ops ``("append", key, value)`` and ``("r", key, None)``. Its ``output`` (for ``ok``
transactions) is either the completed micro-op list, the same micro-ops with each read's ``None``
replaced by the list read (Jepsen's form), or just the list of read results, one per ``"r"`` in
order. A read of an absent key may return ``None``, which means ``[]``. Ops of other kinds are
ignored (and counted).

Preconditions: every appended value is unique per key, across all transactions of any status
(a repeated ``(key, value)`` raises ``ValueError``).

Anomalies reported (only reads of ``ok`` transactions are evidence; ``info`` and ``fail``
transactions' reads are ignored):

* ``duplicate`` - an element appears twice in one read;
* ``garbage-read`` - an element no transaction (ok or info) appended to that key;
* ``aborted-read`` - an element appended only by a ``fail`` transaction;
* ``internal`` - within one ok transaction, a read that does not see the transaction's own
  earlier appends at its end (in order), or that differs from an earlier read of the key plus the
  appends made since;
* ``incompatible-order`` - a read that is not a prefix of the longest read of its key (the reads
  of a key are not consistent with one total order of appends);
* ``lost-append`` - an ok append missing from a read whose transaction started after the
  append's transaction was acknowledged;
* ``stale-read`` - a read whose transaction started after another read's transaction was
  acknowledged, yet which is shorter than it (the database promises that a read sees every
  commit acknowledged before it began, so reads must grow in real time).

Those look at one key at a time. Across keys, in the manner of Elle, the reads also give a
dependency graph (:mod:`tests.faults.cycles`) whose cycles are reported as anomalies of kinds
``G0``, ``G1c``, ``G-single``, ``G2`` and, for cycles that need a real-time edge,
``G0-realtime``, ``G1c-realtime``, ``G-single-realtime`` and ``G2-realtime``
(:data:`CYCLE_KINDS`; the ``key`` of such an anomaly is the tuple of keys its edges are on).
The graph:

* nodes: the ok transactions, and the info ones whose appends some ok read saw;
* versions: the longest read of a key orders its appends (every read of a list is a prefix of
  its final value), each append a version; appends no read saw are in no edge;
* ``ww``: the writer of each element of the longest read to the writer of the next;
* ``wr``: the writer of the last element a transaction's first read of a key saw (its own
  earlier appends to that key stripped) to that transaction;
* ``rw``: a transaction whose first read of a key saw up to element ``i`` (nothing: ``i = 0``)
  to the writer of element ``i + 1`` of the longest read;
* ``rt``: real time (the sparse, transitively equivalent edge set of
  :func:`tests.faults.cycles.realtime_edges`), ok transactions having returned before a
  transaction was invoked.

Reads that are not a prefix of their key's longest read (``incompatible-order``) give no edge.

Invariant: the result is ``ok`` iff no anomaly was found. Real-time checks use ``call`` and
``ret`` of ok transactions only.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tests.faults.cycles import (
    CYCLE_KINDS,
    G0,
    G0_REALTIME,
    G1C,
    G1C_REALTIME,
    G2,
    G2_REALTIME,
    G_SINGLE,
    G_SINGLE_REALTIME,
    RT,
    RW,
    WR,
    WW,
    Cycle,
    DependencyGraph,
    find_cycles,
    realtime_edges,
)
from tests.faults.history import FAIL, INFO, OK, Op

DUPLICATE: Final = "duplicate"
GARBAGE_READ: Final = "garbage-read"
ABORTED_READ: Final = "aborted-read"
INTERNAL: Final = "internal"
INCOMPATIBLE_ORDER: Final = "incompatible-order"
LOST_APPEND: Final = "lost-append"
STALE_READ: Final = "stale-read"
KEY_KINDS: Final = (
    DUPLICATE,
    GARBAGE_READ,
    ABORTED_READ,
    INTERNAL,
    INCOMPATIBLE_ORDER,
    LOST_APPEND,
    STALE_READ,
)
"""The kinds found by looking at one key at a time."""
ANOMALY_KINDS: Final = KEY_KINDS + CYCLE_KINDS

_SHOWN: Final = 12


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One anomaly: its kind (one of :data:`ANOMALY_KINDS`), key (for a cycle, the tuple of
    the keys of its edges), explanation and evidence (for a cycle, its txns in order)."""

    kind: str
    key: Hashable
    details: str
    ops: tuple[Op, ...] = ()


@dataclass(frozen=True, slots=True)
class ListAppendResult:
    """The anomalies found and what was checked."""

    anomalies: tuple[Anomaly, ...]
    ok_txns: int = 0
    info_txns: int = 0
    fail_txns: int = 0
    reads: int = 0
    appends: int = 0
    ignored: int = 0
    keys: int = 0
    graph_txns: int = 0
    graph_edges: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether no anomaly was found."""
        return not self.anomalies

    def kinds(self) -> set[str]:
        """The kinds of anomaly found."""
        return {a.kind for a in self.anomalies}

    def of_kind(self, kind: str) -> list[Anomaly]:
        """The anomalies of one kind."""
        return [a for a in self.anomalies if a.kind == kind]

    def summary(self) -> str:
        """One line per anomaly (or a one-line pass), for assertion messages."""
        edges = ", ".join(f"{n} {kind}" for kind, n in self.graph_edges.items())
        head = (
            f"{len(self.anomalies)} anomalies in {self.ok_txns} ok / {self.info_txns} info / "
            f"{self.fail_txns} fail txns ({self.reads} reads, {self.appends} appends; "
            f"dependency graph of {self.graph_txns} txns, edges {edges or 'none'})"
        )
        return "\n".join([head, *(f"  {a.kind} {a.key!r}: {a.details}" for a in self.anomalies)])


@dataclass(slots=True)
class _Read:
    op: Op
    key: Hashable
    values: tuple[Any, ...]
    compatible: bool = True
    txn: int = -1  # the reading txn's index, for the dependency graph
    own: int = -1  # how many of its last elements are the txn's own earlier appends; -1: not
    # the txn's first read of the key (later reads add nothing to the graph)


def check_list_append(ops: Iterable[Op]) -> ListAppendResult:
    """Check a list-append history; see the module docstring for the anomalies reported."""
    anomalies: list[Anomaly] = []
    appended: dict[tuple[Hashable, Any], Op] = {}
    writer: dict[tuple[Hashable, Any], int] = {}  # (key, value) -> index in txns
    txns: list[Op] = []
    reads: list[_Read] = []
    counts = {OK: 0, INFO: 0, FAIL: 0}
    ignored = 0
    for op in ops:
        if op.kind != "txn":
            ignored += 1
            continue
        counts[op.status] += 1
        mops = _micro_ops(op)
        for f, key, value in mops:
            if f == "append":
                if (key, value) in appended:
                    raise ValueError(
                        f"value {value!r} appended twice to key {key!r}: "
                        f"{appended[key, value].describe()} and {op.describe()}"
                    )
                appended[key, value] = op
                writer[key, value] = len(txns)
        if op.status == OK:
            anomalies.extend(_internal(op, mops))
            reads.extend(_reads(op, len(txns), mops))
        txns.append(op)

    by_key: dict[Hashable, list[_Read]] = {}
    for read in reads:
        by_key.setdefault(read.key, []).append(read)
    ok_appends: dict[Hashable, list[tuple[float, Any, Op]]] = {}
    for (key, value), op in appended.items():
        if op.status == OK:
            ok_appends.setdefault(key, []).append((op.end, value, op))
    orders: dict[Hashable, tuple[Any, ...]] = {}
    for key in by_key.keys() | ok_appends.keys():
        key_reads = by_key.get(key, [])
        longest = orders[key] = _order(key, key_reads, anomalies)
        anomalies.extend(_lost(key, key_reads, longest, ok_appends.get(key, [])))
        anomalies.extend(_stale(key, key_reads))
    # A read that is a prefix of the longest holds the same elements as that prefix: look at
    # each element once per key, and at a read's own elements only where that finds something.
    clean = {key: _clean_prefix(key, order, appended) for key, order in orders.items()}
    for read in reads:
        if not read.compatible or len(read.values) > clean[read.key]:
            anomalies.extend(_elements(read, appended))

    graph, nodes = _dependencies(txns, writer, orders, by_key)
    anomalies.extend(_cycle_anomaly(cycle, nodes) for cycle in find_cycles(graph))

    return ListAppendResult(
        tuple(anomalies),
        ok_txns=counts[OK],
        info_txns=counts[INFO],
        fail_txns=counts[FAIL],
        reads=len(reads),
        appends=len(appended),
        ignored=ignored,
        keys=len(by_key.keys() | {k for k, _ in appended}),
        graph_txns=graph.n,
        graph_edges={name: graph.counts[kind]
                     for name, kind in (("ww", WW), ("wr", WR), ("rw", RW), ("rt", RT))},
    )


def _reads(op: Op, txn: int, mops: list[tuple[str, Hashable, Any]]) -> list[_Read]:
    """The reads of an ok txn; the first read of each key notes how many of its last elements
    are the txn's own earlier appends (if the read ends with them; else ``_internal`` flags
    it and they are not stripped)."""
    out = []
    mine: dict[Hashable, list[Any]] = {}
    read: set[Hashable] = set()
    for f, key, value in mops:
        if f == "append":
            mine.setdefault(key, []).append(value)
            continue
        values = tuple(value or ())
        own = -1
        if key not in read:
            read.add(key)
            before = mine.get(key, [])
            own = len(before) if before and list(values[-len(before):]) == before else 0
        out.append(_Read(op, key, values, txn=txn, own=own))
    return out


def _dependencies(
    txns: list[Op],
    writer: dict[tuple[Hashable, Any], int],
    orders: dict[Hashable, tuple[Any, ...]],
    by_key: dict[Hashable, list[_Read]],
) -> tuple[DependencyGraph, list[Op]]:
    """The dependency graph of the history (see the module docstring) and its nodes' txns."""
    keep = [i for i, op in enumerate(txns) if op.status == OK]
    observed = {
        writer[key, v]
        for key, order in orders.items()
        for v in order
        if (key, v) in writer and txns[writer[key, v]].status == INFO
    }
    keep = sorted({*keep, *observed})
    node = {i: n for n, i in enumerate(keep)}
    graph = DependencyGraph(len(keep))
    for key, order in orders.items():
        versions = [node.get(writer.get((key, v), -1)) for v in order]
        for a, b in itertools.pairwise(versions):
            if a is not None and b is not None:
                graph.add(a, b, WW, key)
        for read in by_key.get(key, []):
            if read.own < 0 or not read.compatible:
                continue
            seen = len(read.values) - read.own
            reader = node[read.txn]
            if seen > 0 and versions[seen - 1] is not None:
                graph.add(versions[seen - 1], reader, WR, key)  # type: ignore[arg-type]
            if seen < len(versions) and versions[seen] is not None:
                graph.add(reader, versions[seen], RW, key)  # type: ignore[arg-type]
    ops = [txns[i] for i in keep]
    for a, b in realtime_edges([(op.call, op.end) for op in ops]):
        graph.add(a, b, RT)
    return graph, ops


def _cycle_anomaly(cycle: Cycle, ops: list[Op]) -> Anomaly:
    """A cycle of the dependency graph as an anomaly."""
    def name(n: int) -> str:
        op = ops[n]
        ret = "?" if math.isinf(op.end) else f"{op.end:.6g}"
        return f"T{n} (p{op.process} {op.status} [{op.call:.6g}, {ret}])"

    keys = tuple(sorted({s.why for s in cycle.steps if s.why is not None}, key=repr))
    path = " ".join(
        f"{name(s.src)} -{s.name}" + (f" {s.why!r}" if s.why is not None else "") + "->"
        for s in cycle.steps
    )
    return Anomaly(
        cycle.kind,
        keys,
        f"cycle of {len(cycle.steps)} txns: {path} {name(cycle.steps[0].src)}",
        tuple(ops[n] for n in cycle.nodes),
    )


def _micro_ops(op: Op) -> list[tuple[str, Hashable, Any]]:
    """The transaction's micro-ops, with read results filled in from ``output`` when ``ok``."""
    mops = []
    for mop in op.value or ():
        f, key, value = mop
        if f not in ("append", "r"):
            raise ValueError(f"unknown micro-op {mop!r} in {op.describe()}")
        mops.append((f, key, value))
    if op.status != OK:
        return [(f, k, None if f == "r" else v) for f, k, v in mops]
    out = list(op.output or ())
    if len(out) == len(mops) and all(
        isinstance(o, tuple | list) and len(o) == 3 and o[0] == m[0] and o[1] == m[1]
        for o, m in zip(out, mops, strict=True)
    ):
        return [(f, k, o[2] if f == "r" else v) for (f, k, v), o in zip(mops, out, strict=True)]
    n_reads = sum(f == "r" for f, _, _ in mops)
    if len(out) != n_reads:
        raise ValueError(
            f"output of an ok txn must be its completed micro-ops or one result per read: "
            f"{op.describe()}"
        )
    results = iter(out)
    return [(f, k, next(results) if f == "r" else v) for f, k, v in mops]


def _internal(op: Op, mops: list[tuple[str, Hashable, Any]]) -> list[Anomaly]:
    """Reads within ``op`` that disagree with its own earlier reads and appends."""
    known: dict[Hashable, list[Any]] = {}
    since: dict[Hashable, list[Any]] = {}
    out = []
    for f, key, value in mops:
        if f == "append":
            since.setdefault(key, []).append(value)
            continue
        got = list(value or ())
        mine = since.pop(key, [])
        if key in known:
            expected = known[key] + mine
            if got != expected:
                out.append(
                    Anomaly(
                        INTERNAL,
                        key,
                        f"read {_short(got)} but this txn read {_short(known[key])} and then "
                        f"appended {_short(mine)}, so it must read {_short(expected)}",
                        (op,),
                    )
                )
        elif mine and got[-len(mine) :] != mine:
            out.append(
                Anomaly(
                    INTERNAL,
                    key,
                    f"read {_short(got)} which does not end with this txn's own appends "
                    f"{_short(mine)}",
                    (op,),
                )
            )
        known[key] = got
    return out


def _clean_prefix(key: Hashable, order: tuple[Any, ...],
                  appended: dict[tuple[Hashable, Any], Op]) -> int:
    """How many first elements of ``order`` are neither garbage, aborted nor repeated."""
    seen: set[Any] = set()
    for i, value in enumerate(order):
        writer = appended.get((key, value))
        if value in seen or writer is None or writer.status == FAIL:
            return i
        seen.add(value)
    return len(order)


def _elements(read: _Read, appended: dict[tuple[Hashable, Any], Op]) -> list[Anomaly]:
    """Duplicated, garbage and aborted elements of one read."""
    out = []
    seen: set[Any] = set()
    dups = []
    for value in read.values:
        if value in seen:
            dups.append(value)
        seen.add(value)
        writer = appended.get((read.key, value))
        if writer is None:
            out.append(
                Anomaly(
                    GARBAGE_READ,
                    read.key,
                    f"read element {value!r}, which no transaction appended to this key",
                    (read.op,),
                )
            )
        elif writer.status == FAIL:
            out.append(
                Anomaly(
                    ABORTED_READ,
                    read.key,
                    f"read element {value!r}, appended only by a failed transaction",
                    (read.op, writer),
                )
            )
    if dups:
        out.append(
            Anomaly(
                DUPLICATE,
                read.key,
                f"read {_short(read.values)} contains {_short(dups)} more than once",
                (read.op,),
            )
        )
    return out


def _order(key: Hashable, reads: list[_Read], anomalies: list[Anomaly]) -> tuple[Any, ...]:
    """The longest read of ``key``; flags (and reports) reads that are not a prefix of it."""
    if not reads:
        return ()
    top = max(reads, key=lambda r: len(r.values))
    longest = top.values
    for read in reads:
        if read.values != longest[: len(read.values)]:
            read.compatible = False
            anomalies.append(
                Anomaly(
                    INCOMPATIBLE_ORDER,
                    key,
                    f"read {_short(read.values)} is not a prefix of the longest read "
                    f"{_short(longest)}",
                    (read.op, top.op),
                )
            )
    return longest


def _lost(
    key: Hashable,
    reads: list[_Read],
    longest: tuple[Any, ...],
    ok_appends: list[tuple[float, Any, Op]],
) -> list[Anomaly]:
    """Reads missing an ok append acknowledged before they began."""
    if not reads or not ok_appends:
        return []
    ok_appends = sorted(ok_appends, key=lambda a: a[0])
    rets = [a[0] for a in ok_appends]
    position = {value: i for i, value in enumerate(longest)}
    # highest[i]: the greatest position in ``longest`` among the first i+1 acked appends.
    highest, top = [], -1
    for _, value, _ in ok_appends:
        top = max(top, position.get(value, len(longest)))
        highest.append(top)
    out = []
    for read in reads:
        acked = bisect.bisect_left(rets, read.op.call)  # appends with ret < call
        if not acked:
            continue
        # A compatible read holds exactly the first len(values) elements of ``longest``.
        if read.compatible and highest[acked - 1] < len(read.values):
            continue
        have = set(read.values)
        missing = [(v, op) for _, v, op in ok_appends[:acked] if v not in have]
        if missing:
            out.append(
                Anomaly(
                    LOST_APPEND,
                    key,
                    f"read {_short(read.values)} lacks {_short([v for v, _ in missing])}, "
                    f"appended by transactions acknowledged before the read began",
                    (read.op, *(op for _, op in missing[:_SHOWN])),
                )
            )
    return out


def _stale(key: Hashable, reads: list[_Read]) -> list[Anomaly]:
    """Reads shorter than a read whose transaction was acknowledged before they began."""
    earlier = sorted((r for r in reads if r.compatible), key=lambda r: r.op.end)
    rets = [r.op.end for r in earlier]
    # longest[i]: the longest of the first i+1 reads by return time.
    longest: list[_Read] = []
    for read in earlier:
        longest.append(
            read if not longest or len(read.values) > len(longest[-1].values) else longest[-1]
        )
    out = []
    for read in reads:
        if not read.compatible:
            continue
        before = bisect.bisect_left(rets, read.op.call)
        if before and len(longest[before - 1].values) > len(read.values):
            prior = longest[before - 1]
            out.append(
                Anomaly(
                    STALE_READ,
                    key,
                    f"read {_short(read.values)} began after a read of {_short(prior.values)} "
                    f"was acknowledged, and misses its last "
                    f"{len(prior.values) - len(read.values)} element(s)",
                    (read.op, prior.op),
                )
            )
    return out


def _short(values: Sequence[Any]) -> str:
    """A list for a report, eliding the middle of long ones."""
    values = list(values)
    if len(values) <= _SHOWN:
        return repr(values)
    half = _SHOWN // 2
    inner = ", ".join(repr(v) for v in values[:half])
    tail = ", ".join(repr(v) for v in values[-half:])
    return f"[{inner}, ... ({len(values) - 2 * half} more) ..., {tail}]"


__all__ = [
    "ABORTED_READ",
    "ANOMALY_KINDS",
    "CYCLE_KINDS",
    "DUPLICATE",
    "G0",
    "G0_REALTIME",
    "G1C",
    "G1C_REALTIME",
    "G2",
    "G2_REALTIME",
    "GARBAGE_READ",
    "G_SINGLE",
    "G_SINGLE_REALTIME",
    "INCOMPATIBLE_ORDER",
    "INTERNAL",
    "KEY_KINDS",
    "LOST_APPEND",
    "STALE_READ",
    "Anomaly",
    "ListAppendResult",
    "check_list_append",
]
