"""A linearizability checker for single-key registers (read, write, cas) over recorded histories.

Owns: :func:`check_registers` (partition by key, check each key independently: linearizability
is P-compositional) and :func:`check_register` (one register), and their result types.

Algorithm: Wing & Gong's search with Lowe's just-in-time linearization and memoization, as in
porcupine. The calls and returns of one key are sorted by time (a call before a return at equal
times, so touching operations count as concurrent) into a doubly linked list. The search walks it
from the head: at a call it tries to linearize that operation now (apply it to the model; if the
model accepts its output and ``(linearized bitset, state)`` was not seen before, it "lifts" the
call and its return out of the list, pushes it on a stack and restarts from the head); at a return
whose call is still in the list it must backtrack (pop, reinsert, try the next call). The history
is linearizable iff the list empties. One partial-order reduction on top: a pending read (or
failed cas) that is legal in the current state is linearized at once as the only choice tried
there, since moving a pure op earlier never invalidates a linearization. An ``ok`` op without a
``ret`` is treated as still pending at the end.

Semantics of the model (state is the register's value, ``None`` when absent):

* ``read`` (ok): legal iff ``output == state``.
* ``write`` (ok or info): always legal; ``state = value``.
* ``cas`` with ``value = (expected, new)``: output ``True`` is legal iff ``state == expected`` and
  sets ``state = new``; output ``False`` is legal iff ``state != expected`` (a read); an ``info``
  cas is always legal and sets ``new`` iff ``state == expected``.
* ``fail`` ops are dropped (they had no effect); ``info`` reads are dropped (they constrain
  nothing); ``info`` writes and cas have ``ret = inf``: they may take effect at any point after
  their call, and taking effect after everything else is the same as never taking effect.

Invariants: the verdict is ``"ok"`` only if a linearization was found for every key; it is
``"unknown"`` (never ``"ok"``) when the search budget ran out first; ``"violation"`` means the
search was exhaustive and found none. Values must be hashable (they are memoized).

Two reductions keep ``info`` ops (which stay pending to the end, and so multiply the search)
cheap in the common cases; both are sound (see :func:`_relevant`):

* on a key with no failed cas, an info write whose value no op observes (no ok read returned it,
  no cas expected it) is dropped: wherever it was linearized, the next state change must be a
  write and nothing in between could tell, so moving it to the very end changes nothing;
* an info write (or cas) whose value is unique on its key and was observed must have taken effect
  before its first observer returned, which becomes its return time.

With many unobserved info ops and non-unique values, proving a violation can take exponential
time: the verdict is then ``unknown``. Workloads should write unique values.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from tests.faults.history import FAIL, INFO, Op

Verdict = Literal["ok", "violation", "unknown"]

DEFAULT_MAX_STEPS: Final = 2_000_000
_CLOCK_EVERY: Final = 4096

# Compiled operation codes for the model's step function.
_READ, _WRITE, _CAS_TRUE, _CAS_FALSE, _CAS_INFO = range(5)


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The verdict for one key.

    ``prefix`` is the longest linearizable prefix the search found (in linearization order) and
    ``unplaced`` the operations that could not be placed after it: first the one whose return was
    reached without being linearized, then the other calls still pending at that point.
    ``state`` is the register's value after ``prefix``.
    """

    key: Hashable
    verdict: Verdict
    ops: int
    steps: int
    explanation: str = ""
    prefix: tuple[Op, ...] = ()
    unplaced: tuple[Op, ...] = ()
    state: Any = None


@dataclass(frozen=True, slots=True)
class LinearizabilityResult:
    """The verdict over all keys: ``violation`` if any key has one, else ``unknown`` if any key
    ran out of budget, else ``ok``."""

    verdict: Verdict
    keys: tuple[KeyResult, ...]

    @property
    def ok(self) -> bool:
        """True only for a definite pass; False for a violation and for an unknown verdict."""
        return self.verdict == "ok"

    @property
    def timed_out(self) -> bool:
        """Whether the budget ran out for at least one key."""
        return any(k.verdict == "unknown" for k in self.keys)

    @property
    def failures(self) -> tuple[KeyResult, ...]:
        """The keys whose verdict is not ``ok``: violations first, then unknowns."""
        bad = [k for k in self.keys if k.verdict == "violation"]
        return (*bad, *(k for k in self.keys if k.verdict == "unknown"))

    @property
    def key(self) -> Hashable:
        """The first failing key (a violation if any), or None when ``ok``."""
        failures = self.failures
        return failures[0].key if failures else None

    @property
    def explanation(self) -> str:
        """The explanations of the failing keys, or ``""`` when ``ok``."""
        return "\n".join(k.explanation for k in self.failures)


def check_register(
    ops: Iterable[Op],
    *,
    initial: Any = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    max_seconds: float | None = None,
) -> LinearizabilityResult:
    """Check that ``ops`` (all on one register, their ``key`` ignored) are linearizable."""
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    ops = list(ops)
    key = ops[0].key if ops else None
    result = _check_key(key, ops, initial, max_steps, deadline)
    return LinearizabilityResult(result.verdict, (result,))


def check_registers(
    ops: Iterable[Op],
    *,
    initial: Mapping[Hashable, Any] | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    max_seconds: float | None = None,
) -> LinearizabilityResult:
    """Check that ``ops`` on many independent registers are linearizable, key by key.

    ``initial`` maps keys to their initial values (absent keys start as ``None``).
    ``max_steps`` bounds the search of each key; ``max_seconds`` the whole call. Keys left
    unchecked when the time runs out are ``unknown``.
    """
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    by_key: dict[Hashable, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    initial = initial or {}
    results = [
        _check_key(key, key_ops, initial.get(key), max_steps, deadline)
        for key, key_ops in by_key.items()
    ]
    verdicts = {r.verdict for r in results}
    verdict: Verdict = (
        "violation" if "violation" in verdicts else "unknown" if "unknown" in verdicts else "ok"
    )
    return LinearizabilityResult(verdict, tuple(results))


def _compile(op: Op) -> tuple[int, Any, Any] | None:
    """The model step of ``op`` as ``(code, a, b)``, or None if it constrains nothing."""
    if op.status == FAIL:
        return None
    if op.kind == "read":
        return None if op.status == INFO else (_READ, op.output, None)
    if op.kind == "write":
        return (_WRITE, op.value, None)
    if op.kind == "cas":
        try:
            expected, new = op.value
        except (TypeError, ValueError):
            raise ValueError(f"cas value must be (expected, new): {op.describe()}") from None
        if op.status == INFO:
            return (_CAS_INFO, expected, new)
        if op.output is True:
            return (_CAS_TRUE, expected, new)
        if op.output is False:
            return (_CAS_FALSE, expected, None)
        raise ValueError(f"an ok cas must output True or False: {op.describe()}")
    raise ValueError(f"not a register operation (read, write, cas): {op.describe()}")


def _relevant(ops: list[Op], initial: Any) -> list[tuple[Op, int, Any, Any, float]]:
    """The ops that constrain the search as ``(op, code, a, b, end)``, ``end`` its latest time.

    Two sound reductions of ``info`` ops (see the module docstring):

    * on a key with no failed cas, an info write whose value no op could observe (no ok read
      returned it, no cas expected it) is left out;
    * an info write or cas whose new value is produced by no other op (and is not the initial
      value) but was observed (an ok read returned it, or an ok cas expected it) must have taken
      effect before the earliest such observer returned: that return becomes its ``end``, and an
      info cas becomes a successful one.
    """
    compiled = []
    for op in ops:
        step = _compile(op)
        if step is not None:
            end = math.inf if op.status == INFO or op.ret is None else op.ret
            compiled.append((op, *step, end))
    if not any(code == _CAS_FALSE for _, code, *_ in compiled):
        observers = {a for _, code, a, _, _ in compiled if code in (_READ, _CAS_TRUE, _CAS_INFO)}
        compiled = [
            c
            for c in compiled
            if not (c[0].status == INFO and c[1] == _WRITE and c[2] not in observers)
        ]
    produced: dict[Any, int] = {}
    for _, code, a, b, _ in compiled:
        if code == _WRITE:
            produced[a] = produced.get(a, 0) + 1
        elif code in (_CAS_TRUE, _CAS_INFO):
            produced[b] = produced.get(b, 0) + 1
    observed: dict[Any, float] = {}
    for op, code, a, _, end in compiled:
        if code in (_READ, _CAS_TRUE) and op.status != INFO:
            observed[a] = min(end, observed.get(a, math.inf))
    out = []
    for op, code, a, b, end in compiled:
        new = a if code == _WRITE else b
        if op.status == INFO and code in (_WRITE, _CAS_INFO) and produced[new] == 1:
            seen = observed.get(new, math.inf)
            if seen < end and new != initial:
                end = max(seen, op.call)
                code = _CAS_TRUE if code == _CAS_INFO else code
        out.append((op, code, a, b, end))
    return out


def _check_key(
    key: Hashable, all_ops: list[Op], initial: Any, max_steps: int, deadline: float | None
) -> KeyResult:
    relevant = _relevant(all_ops, initial)
    n = len(relevant)
    if deadline is not None and time.monotonic() >= deadline:
        return KeyResult(key, "unknown", n, 0, f"key {key!r}: not checked, time budget exhausted")
    ops = [r[0] for r in relevant]
    codes = [r[1] for r in relevant]
    args_a = [r[2] for r in relevant]
    args_b = [r[3] for r in relevant]

    # Nodes 1..2n are the events in time order; node 0 is the head sentinel; -1 is the end.
    events = []
    for i, (op, _, _, _, end) in enumerate(relevant):
        events.append((op.call, 0, i))
        events.append((end, 1, i))
    events.sort()  # by time; at equal times calls (0) before returns (1)
    size = 2 * n + 1
    op_of = [-1] * size
    match = [-1] * size  # call node -> its return node; -1 for return nodes
    call_node = [0] * n
    for node, (_, is_return, i) in enumerate(events, start=1):
        op_of[node] = i
        if not is_return:
            call_node[i] = node
    for node, (_, is_return, i) in enumerate(events, start=1):
        if is_return:
            match[call_node[i]] = node
    nxt = [*range(1, size), -1]
    prv = [-1, *range(0, size - 1)]
    bits = [1 << i for i in range(n)]

    linearized = 0
    state = initial
    stack: list[tuple[int, Any, bool]] = []  # (call node, state before it, forced)
    cache: set[tuple[int, Any]] = set()
    best_depth = -1
    best: tuple[list[int], Any, int, list[int]] = ([], initial, -1, [])
    steps = 0
    entry = nxt[0]
    fresh = True  # at a new search node, with entry at the head
    while nxt[0] != -1:
        steps += 1
        if steps > max_steps or (
            deadline is not None and steps % _CLOCK_EVERY == 0 and time.monotonic() >= deadline
        ):
            return KeyResult(
                key,
                "unknown",
                n,
                steps,
                f"key {key!r}: search budget exhausted after {steps - 1} steps "
                f"({n} ops, deepest linearizable prefix {max(best_depth, len(stack))}); "
                "neither a linearization nor a proof of violation was found",
            )
        dead = False
        if fresh:
            # Partial-order reduction: a pending read (or failed cas) that is legal in this state
            # can be linearized right now without loss of generality (it changes no state, and
            # every op that must precede it is linearized already), so it is the only choice
            # tried at this node: when it is popped, the node has failed.
            fresh = False
            node = entry
            while match[node] != -1:
                i = op_of[node]
                code = codes[i]
                if (code == _READ and args_a[i] == state) or (
                    code == _CAS_FALSE and args_a[i] != state
                ):
                    break
                node = nxt[node]
            if match[node] != -1:
                new_linearized = linearized | bits[i]
                memo = (new_linearized, state)
                if memo not in cache:
                    cache.add(memo)
                    stack.append((node, state, True))
                    linearized = new_linearized
                    _lift(node, match[node], nxt, prv)
                    entry = nxt[0]
                    fresh = True
                    continue
                dead = True  # explored before, from this very node: it failed
        m = match[entry]
        if m != -1 and not dead:  # a call: try to linearize it now
            i = op_of[entry]
            code = codes[i]
            if code == _WRITE:
                legal, new = True, args_a[i]
            elif code == _CAS_TRUE:
                legal, new = args_a[i] == state, args_b[i]
            elif code == _CAS_INFO:
                legal, new = True, (args_b[i] if args_a[i] == state else state)
            else:  # pure ops legal here were tried by the reduction above
                legal, new = False, state
            if legal:
                new_linearized = linearized | bits[i]
                memo = (new_linearized, new)
                if memo not in cache:
                    cache.add(memo)
                    stack.append((entry, state, False))
                    state, linearized = new, new_linearized
                    _lift(entry, m, nxt, prv)
                    entry = nxt[0]
                    fresh = True
                    continue
            entry = nxt[entry]
            continue
        # A return whose call is not linearized (or a dead node): backtrack to the last choice.
        if not dead and len(stack) > best_depth:
            best_depth = len(stack)
            pending = []
            node = nxt[0]
            while node != entry:
                if match[node] != -1:
                    pending.append(op_of[node])
                node = nxt[node]
            best = ([op_of[c] for c, _, _ in stack], state, op_of[entry], pending)
        while stack:
            node, state, forced = stack.pop()
            linearized ^= bits[op_of[node]]
            _unlift(node, match[node], nxt, prv)
            if not forced:
                break
        else:
            break  # no choice left: not linearizable
        entry = nxt[node]
    else:
        return KeyResult(key, "ok", n, steps)

    order, after, blocked, pending = best
    prefix = tuple(ops[i] for i in order)
    unplaced = (ops[blocked], *(ops[i] for i in pending if i != blocked))
    return KeyResult(
        key,
        "violation",
        n,
        steps,
        _explain(key, n, prefix, after, unplaced),
        prefix,
        unplaced,
        after,
    )


def _lift(call: int, ret: int, nxt: list[int], prv: list[int]) -> None:
    """Unlink ``call`` and its ``ret`` from the event list (they keep their own links)."""
    p, q = prv[call], nxt[call]
    nxt[p] = q
    prv[q] = p  # a call is always followed by at least its return
    p, q = prv[ret], nxt[ret]
    nxt[p] = q
    if q != -1:
        prv[q] = p


def _unlift(call: int, ret: int, nxt: list[int], prv: list[int]) -> None:
    """Relink ``ret`` then ``call``: the exact reverse of :func:`_lift` (dancing links)."""
    nxt[prv[ret]] = ret
    if nxt[ret] != -1:
        prv[nxt[ret]] = ret
    nxt[prv[call]] = call
    prv[nxt[call]] = call


def _explain(
    key: Hashable, n: int, prefix: tuple[Op, ...], state: Any, unplaced: tuple[Op, ...]
) -> str:
    """A readable account of where the search got stuck."""
    lines = [
        f"key {key!r}: not linearizable; the longest linearizable prefix has {len(prefix)} "
        f"of {n} ops, leaving the register at {state!r}."
    ]
    if prefix:
        shown = prefix[-5:]
        lines.append(f"  last {len(shown)} op(s) of that prefix:")
        lines.extend(f"    {op.describe()}" for op in shown)
    lines.append(f"  then this op could not be linearized: {unplaced[0].describe()}")
    if len(unplaced) > 1:
        lines.append("  nor could any concurrent pending op lead to a state that explains it:")
        lines.extend(f"    {op.describe()}" for op in unplaced[1:])
    return "\n".join(lines)


__all__ = [
    "DEFAULT_MAX_STEPS",
    "KeyResult",
    "LinearizabilityResult",
    "Verdict",
    "check_register",
    "check_registers",
]
