"""The history model shared by the fault-injection checkers: ``Op`` records and a recorder.

Owns: :class:`Op` (one client operation: what was asked, what came back, when, and whether it
certainly happened) and :class:`History` (a thread-safe recorder that workloads call around each
request). Does not own any checking; see :mod:`tests.faults.linearizability`,
:mod:`tests.faults.list_append` and :mod:`tests.faults.bank`.

Invariants:

* ``status`` is one of ``"ok"`` (acknowledged: the effect happened, between ``call`` and
  ``ret``), ``"fail"`` (definitely had no effect) or ``"info"`` (unknown: the effect may or may
  not have happened, at any time after ``call``, even after ``ret``).
* ``call <= ret`` whenever ``ret`` is known. An unknown ``ret`` is ``None`` or ``math.inf``;
  checkers use :attr:`Op.end`, which is ``math.inf`` for every ``info`` op.
* Times come from one monotonic clock, so ``a.end < b.call`` means ``a`` finished before ``b``
  began (real-time order).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final, Literal

Status = Literal["ok", "fail", "info"]
OK: Final = "ok"
FAIL: Final = "fail"
INFO: Final = "info"
STATUSES: Final = frozenset({OK, FAIL, INFO})


@dataclass(frozen=True, slots=True)
class Op:
    """One completed client operation.

    ``value`` is the input (a write's value, a cas's ``(expected, new)``, a txn's micro-ops, a
    transfer's ``(from, to, amount)``); ``output`` the result (the value read, a cas's bool, a
    txn's completed micro-ops, a read's snapshot).
    """

    process: int
    kind: str
    key: Hashable = None
    value: Any = None
    output: Any = None
    call: float = 0.0
    ret: float | None = None
    status: Status = OK

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}, not {self.status!r}")
        if self.ret is not None and self.ret < self.call:
            raise ValueError(f"ret {self.ret} precedes call {self.call} in {self.kind} op")

    @property
    def end(self) -> float:
        """The latest time the effect may have happened: ``ret``, or infinity if unknown/info."""
        if self.status == INFO or self.ret is None:
            return math.inf
        return self.ret

    def describe(self) -> str:
        """A short human-readable form for reports: ``p3 write k='x' -> None ok [1.2, 1.4]``."""
        ret = "?" if self.ret is None or math.isinf(self.ret) else f"{self.ret:.6g}"
        key = "" if self.key is None else f" {self.key!r}"
        return (
            f"p{self.process} {self.kind}{key} {self.value!r} -> {self.output!r} "
            f"{self.status} [{self.call:.6g}, {ret}]"
        )


class History:
    """A thread-safe recorder: ``h = rec.invoke(...)`` before a request, ``rec.complete(h, ...)``.

    Operations never completed (the client died, the test ended) are reported as ``info`` with an
    unknown ``ret``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._invoked: list[tuple[int, str, Hashable, Any, float]] = []
        self._done: dict[int, Op] = {}

    def invoke(self, process: int, kind: str, key: Hashable = None, value: Any = None) -> int:
        """Record the invocation of an operation now; return its handle for :meth:`complete`."""
        with self._lock:
            self._invoked.append((process, kind, key, value, self._clock()))
            return len(self._invoked) - 1

    def complete(self, handle: int, status: Status, output: Any = None) -> Op:
        """Record that operation ``handle`` returned now with ``status``; return the ``Op``."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}, not {status!r}")
        with self._lock:
            if not 0 <= handle < len(self._invoked):
                raise KeyError(f"unknown handle {handle}")
            if handle in self._done:
                raise ValueError(f"operation {handle} completed twice")
            process, kind, key, value, call = self._invoked[handle]
            op = Op(process, kind, key, value, output, call, max(call, self._clock()), status)
            self._done[handle] = op
            return op

    def ops(self) -> list[Op]:
        """Every operation in invocation order; those still open are ``info`` with no ``ret``."""
        with self._lock:
            out = []
            for handle, (process, kind, key, value, call) in enumerate(self._invoked):
                op = self._done.get(handle)
                if op is None:
                    op = Op(process, kind, key, value, None, call, None, INFO)
                out.append(op)
            return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._invoked)
