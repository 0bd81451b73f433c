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

Invariant: the result is ``ok`` iff no anomaly was found. Real-time checks use ``call`` and
``ret`` of ok transactions only.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tests.faults.history import FAIL, INFO, OK, Op

DUPLICATE: Final = "duplicate"
GARBAGE_READ: Final = "garbage-read"
ABORTED_READ: Final = "aborted-read"
INTERNAL: Final = "internal"
INCOMPATIBLE_ORDER: Final = "incompatible-order"
LOST_APPEND: Final = "lost-append"
STALE_READ: Final = "stale-read"
ANOMALY_KINDS: Final = (
    DUPLICATE,
    GARBAGE_READ,
    ABORTED_READ,
    INTERNAL,
    INCOMPATIBLE_ORDER,
    LOST_APPEND,
    STALE_READ,
)

_SHOWN: Final = 12


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One anomaly: its kind (one of :data:`ANOMALY_KINDS`), key, explanation and evidence."""

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
        head = (
            f"{len(self.anomalies)} anomalies in {self.ok_txns} ok / {self.info_txns} info / "
            f"{self.fail_txns} fail txns ({self.reads} reads, {self.appends} appends)"
        )
        return "\n".join([head, *(f"  {a.kind} {a.key!r}: {a.details}" for a in self.anomalies)])


@dataclass(slots=True)
class _Read:
    op: Op
    key: Hashable
    values: tuple[Any, ...]
    compatible: bool = True


def check_list_append(ops: Iterable[Op]) -> ListAppendResult:
    """Check a list-append history; see the module docstring for the anomalies reported."""
    anomalies: list[Anomaly] = []
    appended: dict[tuple[Hashable, Any], Op] = {}
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
        if op.status == OK:
            anomalies.extend(_internal(op, mops))
            reads.extend(_Read(op, key, tuple(value or ())) for f, key, value in mops if f == "r")

    for read in reads:
        anomalies.extend(_elements(read, appended))

    by_key: dict[Hashable, list[_Read]] = {}
    for read in reads:
        by_key.setdefault(read.key, []).append(read)
    ok_appends: dict[Hashable, list[tuple[float, Any, Op]]] = {}
    for (key, value), op in appended.items():
        if op.status == OK:
            ok_appends.setdefault(key, []).append((op.end, value, op))
    for key in by_key.keys() | ok_appends.keys():
        key_reads = by_key.get(key, [])
        longest = _order(key, key_reads, anomalies)
        anomalies.extend(_lost(key, key_reads, longest, ok_appends.get(key, [])))
        anomalies.extend(_stale(key, key_reads))

    return ListAppendResult(
        tuple(anomalies),
        ok_txns=counts[OK],
        info_txns=counts[INFO],
        fail_txns=counts[FAIL],
        reads=len(reads),
        appends=len(appended),
        ignored=ignored,
        keys=len(by_key.keys() | {k for k, _ in appended}),
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
    "DUPLICATE",
    "GARBAGE_READ",
    "INCOMPATIBLE_ORDER",
    "INTERNAL",
    "LOST_APPEND",
    "STALE_READ",
    "Anomaly",
    "ListAppendResult",
    "check_list_append",
]
