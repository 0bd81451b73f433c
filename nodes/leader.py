"""The leader's duties, as a loop of small steps; ``run_cycle`` returns what it did.

One node holds the leader key (``lockmgr.Election``) on its session lease. Every node runs this
loop: a follower waits for the key to go (a watch) and campaigns at once; the leader runs a cycle
every ``CYCLE_S``:

- fence the sessions that ended without closing (so their markers do not wait for an acquirer),
- the storage engine's upkeep (LMDB: free reader slots left by dead processes, so that the
  volume's file does not grow without bound while stale readers pin old pages),
- purge idempotency records past their retention (every ``PURGE_EVERY`` cycles),
- trim the commit log by its retention rule (``storage/retention.py``; up to ``TRIM_ROUNDS``
  short write transactions of ``TRIM_BATCH`` records per cycle),
- publish what it did in the leader record (shown by cluster status).

Deadlock detection runs on every node for its own waiters (deterministic victims, see
``lockmgr.deadlock``), so it does not wait for the leader. No other node's work waits for the
leader: if it dies, the duties pause until the next leader, within one TTL, at once when the
death is seen through the file lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from lockmgr import Election, EtcdUnavailable, LockManager, SessionExpired
from nodes.changes import needed_by_holds
from nodes.membership import Membership
from nodes.replication import ReplicaRecord, needed_from
from storage import Retention, StorageError, Store
from storage.retention import DEFAULT_RETENTION

log = logging.getLogger(__name__)

CYCLE_S = 1.0
PURGE_EVERY = 60
TRIM_BATCH = 2000
TRIM_ROUNDS = 5


def trim_log(store: Store, retention: Retention, replicas: Sequence[ReplicaRecord],
             holds: Sequence[tuple[str, int]], what: str) -> int:
    """Remove the records of ``store``'s commit log that ``retention`` lets go, keeping what
    ``replicas`` and the retention ``holds`` still need (within the log's hard bounds, which
    are logged when they cut what is needed); return how many went. The primary's leader
    runs it on the primary's log, a replica on its copy's (``nodes/replica.py``)."""
    needed = min((p for p in (needed_from(replicas), needed_by_holds(holds)) if p is not None),
                 default=None)
    n = 0
    for _ in range(TRIM_ROUNDS):
        cut = store.trim_log(retention, now=time.time(), needed_from=needed, limit=TRIM_BATCH)
        if cut.forced:
            log.warning("%s passed its bounds: records before %d went although a replica or a "
                        "hold still needed them (a replica will take a new copy)", what,
                        cut.before)
        n += cut.records
        if cut.records < TRIM_BATCH:
            break
    return n


class Leader:
    """Campaign for leadership and, while leader, run the duties."""

    def __init__(self, election: Election, membership: Membership, locks: LockManager,
                 store: Store, *, node_id: str, address: str,
                 log_retention: Retention = DEFAULT_RETENTION,
                 replicas: Callable[[], Sequence[ReplicaRecord]] = list,
                 holds: Callable[[], Sequence[tuple[str, int]]] = list) -> None:
        self._election = election
        self._membership = membership
        self._locks = locks
        self._store = store
        self._retention = log_retention
        self._replicas = replicas
        self._holds = holds  # change-stream consumers' retention holds (nodes/changes.py)
        self.node_id = node_id
        self.address = address
        self.lease_id = 0  # the session under which we lead (0: not leader)
        self.since = 0.0
        self.cycles = 0
        self.last_cycle = ""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="leader", daemon=True)

    @property
    def is_leader(self) -> bool:
        """Whether this node leads now (under a valid session)."""
        return self.lease_id != 0 and self._membership.is_valid(self.lease_id)

    def start(self) -> None:
        """Start campaigning."""
        self._thread.start()

    def _record(self) -> dict[str, Any]:
        return {"node": self.node_id, "address": self.address, "since": self.since,
                "last_cycle": self.last_cycle, "at": time.time()}

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except (EtcdUnavailable, SessionExpired, StorageError) as e:
                log.warning("leader loop: %s", e)
                self._stop.wait(0.5)
            except Exception:  # the loop must survive anything
                log.exception("leader loop failed")
                self._stop.wait(0.5)

    def _step(self) -> None:
        session = self._membership.session
        if session is None or not session.is_valid():
            self.lease_id = 0
            self._stop.wait(0.2)
            return
        if self.lease_id != session.lease_id:
            self.lease_id = 0
            if self._election.campaign(session.lease_id, self._record()):
                self.lease_id = session.lease_id
                self.since = time.time()
                log.info("node %s is the leader (session %x)", self.node_id, self.lease_id)
            else:
                self._wait_vacant()
                return
        self.last_cycle = self.run_cycle()
        self._election.proclaim(self.lease_id, self._record())
        self._stop.wait(CYCLE_S)

    def _wait_vacant(self) -> None:
        """Wait until the leader key goes (or a second passes, to re-check our session)."""
        self._wake.clear()
        rev = self._election.revision()
        if rev == 0:
            return  # vacant already: campaign again now
        cancel = self._election.wait_vacant(rev, self._wake)
        try:
            self._wake.wait(1.0)
        finally:
            cancel()

    def run_cycle(self) -> str:
        """Run the duties once; return a one-line description."""
        self.cycles += 1
        fenced = self._locks.fence_dead_sessions()
        upkeep = self._store.housekeeping()
        purged = 0
        if self.cycles % PURGE_EVERY == 1:
            purged = self._store.transact(lambda view: view.purge_idempotency(now=time.time()))
        trimmed = self._trim_log()
        parts = [f"cycle {self.cycles}",
                 f"fenced {len(fenced)} dead session(s)"
                 + (f" ({', '.join(f'{x:x}' for x in fenced)})" if fenced else ""),
                 *(f"{what} {n}" for what, n in upkeep.items()),
                 f"purged {purged} idempotency record(s)",
                 f"trimmed {trimmed} commit-log record(s)"]
        return "; ".join(parts)

    def _trim_log(self) -> int:
        """Remove the commit-log records that the retention rule lets go; return how many."""
        # Read before trimming, and never trimmed without: a replica that registered since
        # is then still needed (it registers before it copies).
        return trim_log(self._store, self._retention, self._replicas(), self._holds(),
                        "the commit log")

    def stop(self) -> None:
        """Stop the loop and give up the post (before the session is closed)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=3)
        if self.lease_id:
            try:
                self._election.resign(self.lease_id)
            except (EtcdUnavailable, SessionExpired):
                pass
            self.lease_id = 0
