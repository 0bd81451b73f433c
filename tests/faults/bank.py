"""A checker for the bank workload: transfers between accounts must conserve the total.

Owns: :func:`check_bank` and its result types. Does not own the history model
(:mod:`tests.faults.history`) or any I/O.

Input: the initial balances, and ops of kind ``"read"`` (``output`` is a full snapshot
``{account: balance}``) and ``"transfer"`` (``value`` is ``(from, to, amount)`` or a mapping with
those keys). Other kinds are ignored (and counted). Optionally the ``final`` balances, read after
every fault has healed and every client has stopped.

Checks:

* every ``ok`` read (and the final read) sums to the initial total (``wrong-total``), has no
  negative balance (``negative-balance``) and names no account outside the initial set
  (``unknown-account``); an account missing from a snapshot counts as 0;
* the final balances equal the initial ones plus every ``ok`` transfer plus some subset of the
  ``info`` transfers, and no ``fail`` transfer (``unexplained``).

Limits (by design, keep them in mind when reading a pass):

* intermediate reads are only checked for the invariants above, not for which transfers they
  reflect (that is the list-append and register checkers' job);
* the subset search (depth-first, branch and bound on what the remaining transfers can still
  change per account, memoized) is exact while it explores at most ``max_states`` states; beyond
  that it falls back to a per-account check (each account's unexplained difference must be a
  subset sum of the info transfers touching it, or, if there are more than ``max_states`` such
  sums, lie within their range), which is necessary but not sufficient: ``exact`` is then False;
* a snapshot's values are trusted to be one atomic read; the checker cannot tell a torn read from
  a wrong total.

Invariant: ``ok`` is True iff no anomaly was found.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from tests.faults.history import FAIL, INFO, OK, Op

WRONG_TOTAL: Final = "wrong-total"
NEGATIVE_BALANCE: Final = "negative-balance"
UNKNOWN_ACCOUNT: Final = "unknown-account"
UNEXPLAINED: Final = "unexplained"

DEFAULT_MAX_STATES: Final = 100_000

Vector = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BankAnomaly:
    """One anomaly: its kind, explanation, the read it was found in (None for the final read)."""

    kind: str
    details: str
    op: Op | None = None
    account: Hashable = None


@dataclass(frozen=True, slots=True)
class BankResult:
    """The anomalies found and what was checked.

    ``applied_info`` is a subset of the info transfers that explains the final balances, when
    the exact search found one (None otherwise, or with no final read).
    """

    anomalies: tuple[BankAnomaly, ...]
    total: int
    reads: int = 0
    ok_transfers: int = 0
    info_transfers: int = 0
    fail_transfers: int = 0
    ignored: int = 0
    final_checked: bool = False
    exact: bool = True
    applied_info: tuple[Op, ...] | None = None

    @property
    def ok(self) -> bool:
        """Whether no anomaly was found."""
        return not self.anomalies

    def kinds(self) -> set[str]:
        """The kinds of anomaly found."""
        return {a.kind for a in self.anomalies}

    def summary(self) -> str:
        """One line per anomaly (or a one-line pass), for assertion messages."""
        head = (
            f"{len(self.anomalies)} anomalies; total {self.total}; {self.reads} reads; "
            f"{self.ok_transfers} ok / {self.info_transfers} info / {self.fail_transfers} fail "
            f"transfers; final {'checked' if self.final_checked else 'not given'}"
            f"{'' if self.exact else ' (approximately)'}"
        )
        return "\n".join([head, *(f"  {a.kind}: {a.details}" for a in self.anomalies)])


def transfer_parts(op: Op) -> tuple[Hashable, Hashable, int]:
    """``(from, to, amount)`` of a transfer op."""
    value = op.value
    if isinstance(value, Mapping):
        return value["from"], value["to"], value["amount"]
    source, dest, amount = value
    return source, dest, amount


def check_bank(
    initial: Mapping[Hashable, int],
    ops: Iterable[Op],
    *,
    final: Mapping[Hashable, int] | None = None,
    max_states: int = DEFAULT_MAX_STATES,
) -> BankResult:
    """Check a bank history against ``initial`` balances (and ``final`` ones, if given)."""
    total = sum(initial.values())
    anomalies: list[BankAnomaly] = []
    transfers: dict[str, list[Op]] = {OK: [], INFO: [], FAIL: []}
    reads = ignored = 0
    for op in ops:
        if op.kind == "transfer":
            transfer_parts(op)  # validates the shape early
            transfers[op.status].append(op)
        elif op.kind == "read":
            if op.status == OK:
                reads += 1
                anomalies.extend(_snapshot(initial, total, op.output, op))
        else:
            ignored += 1

    exact, applied = True, None
    if final is not None:
        anomalies.extend(_snapshot(initial, total, final, None))
        accounts = list(initial)
        accounts.extend(a for a in final if a not in initial)
        expected = dict.fromkeys(accounts, 0)
        expected.update(initial)
        for op in transfers[OK]:
            _apply(expected, op)
        delta = {a: final.get(a, 0) - expected.get(a, 0) for a in accounts}
        found, exact, applied = _explain(delta, transfers[INFO], max_states)
        anomalies.extend(found)

    return BankResult(
        tuple(anomalies),
        total,
        reads=reads,
        ok_transfers=len(transfers[OK]),
        info_transfers=len(transfers[INFO]),
        fail_transfers=len(transfers[FAIL]),
        ignored=ignored,
        final_checked=final is not None,
        exact=exact,
        applied_info=applied,
    )


def _snapshot(
    initial: Mapping[Hashable, int], total: int, balances: Any, op: Op | None
) -> list[BankAnomaly]:
    """The invariant violations of one snapshot."""
    where = "final read" if op is None else "read"
    if not isinstance(balances, Mapping):
        return [BankAnomaly(WRONG_TOTAL, f"{where} returned no snapshot: {balances!r}", op)]
    out = []
    got = sum(balances.values())
    if got != total:
        out.append(
            BankAnomaly(
                WRONG_TOTAL,
                f"{where} totals {got}, not {total} (off by {got - total}): {dict(balances)!r}",
                op,
            )
        )
    for account, balance in balances.items():
        if balance < 0:
            out.append(
                BankAnomaly(
                    NEGATIVE_BALANCE, f"{where}: account {account!r} at {balance}", op, account
                )
            )
        if account not in initial:
            out.append(
                BankAnomaly(UNKNOWN_ACCOUNT, f"{where}: unknown account {account!r}", op, account)
            )
    return out


def _apply(balances: dict[Hashable, int], op: Op) -> None:
    source, dest, amount = transfer_parts(op)
    balances[source] = balances.get(source, 0) - amount
    balances[dest] = balances.get(dest, 0) + amount


def _explain(
    delta: dict[Hashable, int], info: list[Op], max_states: int
) -> tuple[list[BankAnomaly], bool, tuple[Op, ...] | None]:
    """Find info transfers whose effects sum to ``delta``: (anomalies, exact, subset found)."""
    if not any(delta.values()):
        return [], True, ()
    effects: list[tuple[Op, dict[Hashable, int]]] = []
    for op in info:
        source, dest, amount = transfer_parts(op)
        if source != dest and amount:
            effects.append((op, {source: -amount, dest: amount}))
    touched = {a for _, eff in effects for a in eff}
    stray = [a for a, d in delta.items() if d and a not in touched]
    if stray:
        return [_unexplained(delta, stray, "no info transfer touches them")], True, None
    accounts = sorted(touched | {a for a, d in delta.items() if d}, key=repr)
    finished, subset = _subset_search(effects, accounts, delta, max_states)
    if subset is not None:
        return [], True, tuple(effects[i][0] for i in subset)
    if finished:
        return [_unexplained(delta, [a for a, d in delta.items() if d], "exact search")], True, None
    # The search gave up: a per-account necessary condition instead.
    bad = [a for a, d in delta.items() if d and not _account_ok(a, d, effects, max_states)]
    if bad:
        return [_unexplained(delta, bad, "per-account check")], False, None
    return [], False, None


def _subset_search(
    effects: list[tuple[Op, dict[Hashable, int]]],
    accounts: list[Hashable],
    delta: dict[Hashable, int],
    max_states: int,
) -> tuple[bool, tuple[int, ...] | None]:
    """``(finished, indices of effects summing to delta or None)``; not finished = gave up.

    Depth-first over "include effect t or not", memoizing the ``(t, partial sum)`` pairs already
    explored, and pruning (branch and bound) the partial sums from which the remaining effects
    cannot reach the target: ``low[t]`` and ``high[t]`` bound what effects ``t..`` can add to each
    account.
    """
    k = len(accounts)
    index = {a: i for i, a in enumerate(accounts)}
    target: Vector = tuple(delta.get(a, 0) for a in accounts)
    steps: list[Vector] = []
    for _, eff in effects:
        step = [0] * k
        for a, d in eff.items():
            step[index[a]] = d
        steps.append(tuple(step))
    low = [(0,) * k]
    high = [(0,) * k]
    for step in reversed(steps):
        low.append(tuple(lo + min(d, 0) for lo, d in zip(low[-1], step, strict=True)))
        high.append(tuple(hi + max(d, 0) for hi, d in zip(high[-1], step, strict=True)))
    low.reverse()
    high.reverse()

    def feasible(vec: Vector, t: int) -> bool:
        return all(
            lo <= want - v <= hi
            for v, want, lo, hi in zip(vec, target, low[t], high[t], strict=True)
        )

    n = len(steps)
    explored: set[tuple[int, Vector]] = set()
    chosen: list[int] = []  # the effects included on the current path
    stack: list[tuple[int, Vector, bool]] = [(0, (0,) * k, False)]  # (t, sum, include tried)
    while stack:
        t, vec, included = stack.pop()
        if included:  # the branch including t failed: undo it, try without
            chosen.pop()
            stack.append((t + 1, vec, False))
            continue
        if vec == target:
            return True, tuple(chosen)
        if t == n or (t, vec) in explored or not feasible(vec, t):
            continue
        explored.add((t, vec))
        if len(explored) > max_states:
            return False, None
        stack.append((t, vec, True))
        chosen.append(t)
        stack.append((t + 1, tuple(x + y for x, y in zip(vec, steps[t], strict=True)), False))
    return True, None


def _account_ok(
    account: Hashable, want: int, effects: list[tuple[Op, dict[Hashable, int]]], max_states: int
) -> bool:
    """Whether ``want`` is a subset sum of the info effects on ``account`` (or, past
    ``max_states`` distinct sums, within their range)."""
    parts = [eff[account] for _, eff in effects if account in eff]
    sums = {0}
    for p in parts:
        sums |= {s + p for s in sums}
        if len(sums) > max_states:
            low = sum(p for p in parts if p < 0)
            high = sum(p for p in parts if p > 0)
            return low <= want <= high
    return want in sums


def _unexplained(delta: dict[Hashable, int], accounts: list[Hashable], how: str) -> BankAnomaly:
    diffs = ", ".join(f"{a!r}: {delta[a]:+}" for a in accounts)
    return BankAnomaly(
        UNEXPLAINED,
        f"final balances differ from initial + ok transfers by {{{diffs}}}, and no subset of "
        f"the info transfers explains it ({how}); an ok transfer was lost or a failed/duplicated "
        "one applied",
        None,
        accounts[0] if accounts else None,
    )


__all__ = [
    "DEFAULT_MAX_STATES",
    "NEGATIVE_BALANCE",
    "UNEXPLAINED",
    "UNKNOWN_ACCOUNT",
    "WRONG_TOTAL",
    "BankAnomaly",
    "BankResult",
    "check_bank",
    "transfer_parts",
]
