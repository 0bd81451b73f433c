"""Lock modes for multiple-granularity locking, and their compatibility.

Owns: the five modes (IS, IX, S, SIX, X), the standard compatibility matrix (Gray et al.), the
order of strength (``covers``) and the least mode that covers two (``supremum``). Pure; no I/O.

================  ====  ====  ====  ====  ====
held \\ requested  IS    IX    S     SIX   X
================  ====  ====  ====  ====  ====
IS                yes   yes   yes   yes   no
IX                yes   yes   no    no    no
S                 yes   no    yes   no    no
SIX               yes   no    no    no    no
X                 no    no    no    no    no
================  ====  ====  ====  ====  ====

A row operation takes intention locks on the table and page above the row (IS for reads, IX for
writes); a scan takes S on the pages it covers; a transaction escalates many row locks of a page
into one lock on the page.
"""

from __future__ import annotations

import enum


class LockMode(enum.Enum):
    """A lock mode; the value is its short name as stored in etcd."""

    IS = "IS"
    IX = "IX"
    S = "S"
    SIX = "SIX"
    X = "X"

    # Members are singletons: identity hashing, done in C, instead of Enum's hash of the name
    # (a Python call on every set or dict lookup of a mode, which the lock paths do a lot).
    __hash__ = object.__hash__

    def compatible(self, other: LockMode) -> bool:
        """Whether a lock in this mode can be held together with one in ``other``."""
        return other in _COMPATIBLE[self]

    def covers(self, other: LockMode) -> bool:
        """Whether holding this mode gives every right that ``other`` gives."""
        return other in _COVERS[self]

    def supremum(self, other: LockMode) -> LockMode:
        """The weakest mode that covers both this and ``other``."""
        return _SUPREMUM[self, other]

    def is_intention(self) -> bool:
        """Whether this is IS or IX (modes that conflict only with S, SIX and X)."""
        return self in (LockMode.IS, LockMode.IX)

    def intention(self) -> LockMode:
        """The intention mode a parent needs for a lock in this mode on a child."""
        return LockMode.IS if self in (LockMode.IS, LockMode.S) else LockMode.IX


IS, IX, S, SIX, X = LockMode.IS, LockMode.IX, LockMode.S, LockMode.SIX, LockMode.X

_COMPATIBLE: dict[LockMode, frozenset[LockMode]] = {
    IS: frozenset({IS, IX, S, SIX}),
    IX: frozenset({IS, IX}),
    S: frozenset({IS, S}),
    SIX: frozenset({IS}),
    X: frozenset(),
}
_COVERS: dict[LockMode, frozenset[LockMode]] = {
    IS: frozenset({IS}),
    IX: frozenset({IS, IX}),
    S: frozenset({IS, S}),
    SIX: frozenset({IS, IX, S, SIX}),
    X: frozenset({IS, IX, S, SIX, X}),
}
_BY_STRENGTH = (IS, IX, S, SIX, X)



def _weakest_covering(a: LockMode, b: LockMode) -> LockMode:
    for m in _BY_STRENGTH:
        if m.covers(a) and m.covers(b):
            return m
    raise AssertionError("X covers every mode")


_SUPREMUM: dict[tuple[LockMode, LockMode], LockMode] = {
    (a, b): _weakest_covering(a, b) for a in _BY_STRENGTH for b in _BY_STRENGTH}
