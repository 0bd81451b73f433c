"""The in-process lock table: what one transaction holds, and which requests a new need takes.

Owns: ``TxnLocks`` (a transaction's held modes, its etcd entry keys, its abort signal) and
``plan``, the pure function that turns "these rows/pages/tables in these modes" into the lock
requests to send: intention locks on the parents, one request per resource at the supremum of the
modes needed, nothing already covered, and escalation of many row locks of one page into a lock
on the page. No I/O.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from lockmgr.modes import LockMode
from lockmgr.resource import Resource

DEFAULT_ESCALATE_AFTER = 32
"""Row locks of one page a transaction holds before its next row of the page locks the page.

Half of an integer-keyed page: storage's int64 pages hold 64 consecutive keys
(``storage.pages.INT_PAGE_KEYS``), so a threshold of 64 or more could never be passed and a
bulk loader of keys 1, 2, 3, ... would never escalate; at 32 it escalates each page on its 33rd
key and takes no further row locks there. Pages of other key types (string and bytes pages are
two-byte prefixes) hold many more keys: there it bounds how many rows ride in one etcd entry,
at the price that an escalated writer blocks every writer of the prefix (``storage/pages.py``,
Limits). ``lockmgr`` does not know page sizes; a test in ``tests/unit/lockmgr`` keeps the two
numbers consistent.
"""


@dataclass
class TxnLocks:
    """One transaction's locks. Not thread-safe: one call at a time per transaction."""

    txn_id: str
    lease_id: int
    started_at: float
    node_id: str = ""
    held: dict[Resource, LockMode] = field(default_factory=dict)
    keys: list[bytes] = field(default_factory=list)
    rows_per_page: Counter[Resource] = field(default_factory=Counter)
    waiting_for: frozenset[str] = frozenset()
    waiting_on: str | None = None
    seq: int = 0  # numbers this transaction's lock entries
    abort_reason: str | None = None
    abort_detail: str = ""
    wake: threading.Event = field(default_factory=threading.Event)
    riding: set[str] = field(default_factory=set)  # tables whose cached IX lock it relies on

    def abort(self, reason: str, detail: str = "") -> None:
        """Mark the transaction aborted and wake it if it waits for a lock."""
        if self.abort_reason is None:
            self.abort_reason, self.abort_detail = reason, detail
        self.wake.set()

    def covers(self, resource: Resource, mode: LockMode) -> bool:
        """Whether the locks held already give ``mode`` on ``resource`` (directly, or through
        an S/X lock on its page or table)."""
        held = self.held.get(resource)
        if held is not None and held.covers(mode):
            return True
        for parent in resource.parents():
            p = self.held.get(parent)
            if p is not None and p in (LockMode.S, LockMode.SIX, LockMode.X) and \
                    p.covers(LockMode.S if mode in (LockMode.IS, LockMode.S) else LockMode.X):
                return True
        return False


def plan(txn: TxnLocks, needs: list[tuple[Resource, LockMode]],
         escalate_after: int = DEFAULT_ESCALATE_AFTER) -> list[tuple[Resource, LockMode]]:
    """The lock requests that give ``txn`` every (resource, mode) of ``needs``.

    Parents get intention locks (IS under S, IX under X); requests for one resource merge at the
    supremum; what ``txn`` already covers is left out. When a page would hold more than
    ``escalate_after`` row locks of the transaction, the page itself is requested (S, or X if
    any of its rows needs X) and its further row locks are not. Table and page requests come
    before row requests (a fixed order: parents first).
    """
    want: dict[Resource, LockMode] = {}

    def add(res: Resource, mode: LockMode) -> None:
        cur = want.get(res)
        want[res] = mode if cur is None else cur.supremum(mode)

    rows_by_page: dict[Resource, list[tuple[Resource, LockMode]]] = {}
    for res, mode in needs:
        if res.kind == "row":
            page = Resource(res.table, res.page)
            rows_by_page.setdefault(page, []).append((res, mode))
        else:
            add(res, mode)
    for page, rows in rows_by_page.items():
        fresh = [(r, m) for r, m in rows if not txn.covers(r, m)]
        if not fresh:
            continue
        if txn.rows_per_page[page] + len({r for r, _ in fresh}) > escalate_after:
            strong = any(m in (LockMode.IX, LockMode.SIX, LockMode.X) for _, m in fresh) or \
                txn.held.get(page) in (LockMode.IX, LockMode.SIX, LockMode.X)
            add(page, LockMode.X if strong else LockMode.S)
        else:
            for r, m in fresh:
                add(r, m)
    for res, mode in list(want.items()):
        for parent in res.parents():
            add(parent, mode.intention())
    out = []
    for res in sorted(want, key=lambda r: ({"table": 0, "page": 1, "row": 2}[r.kind], r)):
        mode = want[res]
        held = txn.held.get(res)
        if txn.covers(res, mode):
            continue
        out.append((res, mode if held is None else held.supremum(mode)))
    return out
