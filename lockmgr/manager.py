"""The lock manager: lock entries in etcd on the session lease, granted in FIFO order.

Owns: acquiring a batch of lock requests (one etcd transaction per batch of at most ``max_ops``
operations), waiting for a grant by watching the conflicting entry just ahead (no polling, no
thundering herd), the lock-wait timeout, releasing all of a transaction's entries in one etcd
transaction, publishing wait records, finding deadlocks across nodes, and making sure every
session that ended without a clean close is fenced before a lock is acted on. Does not own: what
the resources are (the caller's), or the fence itself (a ``Fencer`` given by the caller).

How a request is granted
------------------------
A request is an entry ``locks/<resource>/<txn>/<mode>`` put on the session lease; its etcd
``create_revision`` is its place in the resource's queue. A request is granted when every entry
of *another* transaction that came earlier in the queue is compatible with it (so a waiter never
overtakes an earlier incompatible waiter: FIFO, no starvation). A transaction's own earlier
entries never block it, so an upgrade (S, then X) waits only for the others. A waiter watches the
latest conflicting entry ahead of it for deletion, then checks again; only the waiters behind a
released entry wake.

Fencing (the invariant of ARCHITECTURE.md)
------------------------------------------
Releases are asynchronous and batched: a transaction's keys are deleted after its commit is
durable, together with those of other transactions released meanwhile.

A session writes a marker ``sessions/<lease>`` that has no lease and a liveness key
``live/<lease>`` on its lease. Every acquisition reads both lists in the same etcd transaction as
its lock entries; a marker without a liveness key is a session that ended without closing
cleanly (its entries vanished with its lease). Before such a grant is acted on, the caller's
``Fencer`` makes a fence record for that session durable in storage, and the marker is removed.
The old holder's commits check for that record inside their storage write transaction, so either
they landed before the fence (and the new holder reads them) or they are refused.

Timeline::

    A: holds X(r) ....... frozen ...................... wakes, commit -> fenced, refused
    etcd:            A's lease expires, A's entries go
    B:                        acquire X(r): A dead -> fence(A) -> granted -> read r -> commit
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from lockmgr import deadlock, resource
from lockmgr.affinity import TableCaches
from lockmgr.batcher import Batcher
from lockmgr.entries import Entry, Request, blocked_on, find_conflicts, group, parse_entries
from lockmgr.errors import (
    Aborted,
    Deadlock,
    EtcdUnavailable,
    LockTimeout,
    SessionExpired,
)
from lockmgr.etcd import EtcdClient, KeyValue
from lockmgr.modes import LockMode
from lockmgr.resource import Resource
from lockmgr.session import Session
from lockmgr.table import DEFAULT_ESCALATE_AFTER, TxnLocks, plan

log = logging.getLogger(__name__)

DEFAULT_WAIT_TIMEOUT_S = 10.0
RECHECK_S = 2.0
"""A waiter re-reads its resource this often even without a watch event: a safety net for a
notification lost with an etcd member (a watch stream that broke and was re-created on a member
still catching up). Normal wake-ups come from the watch, at once."""
DEFAULT_MAX_OPS = 128  # etcd's default --max-txn-ops
DETECT_INTERVAL_S = 0.1


class Fencer(Protocol):
    """Makes a fence record for a session durable in storage (``nodes`` wires it)."""

    def fence(self, lease_id: int) -> None: ...


@dataclass(frozen=True)
class WaitRecord:
    """One waiting transaction as published in etcd."""

    txn_id: str
    node: str
    started_at: float
    resource: str
    mode: str
    waits_for: tuple[str, ...]


def parse_waits(kvs: Iterable[KeyValue]) -> list[WaitRecord]:
    """The wait records among ``kvs`` (keys read from under ``resource.waits_prefix``); a
    record that does not parse (written by another version) is skipped."""
    out = []
    for kv in kvs:
        try:
            d = json.loads(kv.value)
            out.append(WaitRecord(kv.key.decode().rsplit("/", 1)[1], str(d["node"]),
                                  float(d["started_at"]), str(d["resource"]),
                                  str(d["mode"]), tuple(d["waits_for"])))
        except (ValueError, KeyError, TypeError):
            continue
    return out
WaitObserver = Callable[[float, str], None]
"""``on_wait(seconds, outcome)``: told of every lock wait as it ends, with how long it lasted
and how it ended: ``granted``, an abort's reason (``lock_timeout``, ``deadlock``, ...),
``session_expired``, ``etcd_unavailable`` or ``error``. Called on the waiting thread; keep it
cheap (``nodes/metrics.py`` observes a histogram)."""


class LockManager:
    """Locks for the transactions of one process, over the process's session.

    ``on_wait`` (a :data:`WaitObserver`) hears of every wait for a conflicting entry."""

    def __init__(self, client: EtcdClient, cluster: str, node_id: str, fencer: Fencer, *,
                 wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
                 escalate_after: int = DEFAULT_ESCALATE_AFTER,
                 max_ops: int = DEFAULT_MAX_OPS,
                 table_affinity: bool = True,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 on_wait: WaitObserver | None = None) -> None:
        self._client = client
        self._on_wait = on_wait
        self.cluster = cluster
        self.node_id = node_id
        self._fencer = fencer
        self.wait_timeout_s = wait_timeout_s
        self.escalate_after = escalate_after
        self.max_ops = max(max_ops, 8)
        self._clock = clock
        self._wall = wall_clock
        self._session: Session | None = None
        self._lock = threading.Lock()
        self._waiting: dict[str, TxnLocks] = {}
        self._stop = threading.Event()
        self.deadlocks_found = 0
        self.fenced_sessions: list[int] = []
        self._release_cv = threading.Condition()
        self._to_release: list[tuple[list[bytes], int]] = []
        self._releasing = False
        self._detector = threading.Thread(target=self._detect_loop, name="deadlock-detector",
                                          daemon=True)
        self._detector.start()
        self._releaser = threading.Thread(target=self._release_loop, name="lock-releaser",
                                          daemon=True)
        self._releaser.start()
        self.batcher = Batcher(client, cluster, max_ops=self.max_ops)
        self.caches = TableCaches(client, cluster, node_id, enabled=table_affinity)

    # -- sessions ---------------------------------------------------------------------------

    def attach(self, session: Session) -> None:
        """Use ``session`` for new transactions; write its marker and liveness key.

        Raises:
            EtcdUnavailable, SessionExpired: the keys could not be written.
        """
        marker = json.dumps({"node": self.node_id, "started_at": self._wall()}).encode()
        self._client.txn([
            EtcdClient.put_op(resource.session_key(self.cluster, session.lease_id), marker),
            EtcdClient.put_op(resource.live_key(self.cluster, session.lease_id),
                              self.node_id.encode(), session.lease_id),
        ])
        self.caches.reset(session.lease_id)
        self._session = session

    def detach(self, session: Session) -> None:
        """Mark ``session`` as closed cleanly (no fence needed); call before revoking it."""
        if self._session is session:
            self._session = None
        try:
            self._client.delete(resource.session_key(self.cluster, session.lease_id))
        except EtcdUnavailable as e:
            log.warning("could not remove the marker of session %x (it will be fenced): %s",
                        session.lease_id, e)

    @property
    def session(self) -> Session:
        """The session new transactions use.

        Raises:
            SessionExpired: there is none (between sessions).
        """
        s = self._session
        if s is None or not s.is_valid():
            raise SessionExpired("this node has no valid session at the moment")
        return s

    # -- transactions -------------------------------------------------------------------------

    def begin(self, txn_id: str) -> TxnLocks:
        """A new transaction's lock state, on the current session. ``txn_id`` must be unique
        in the cluster, contain no ``/`` and end with ``@<node id>``.

        Raises:
            SessionExpired: the node has no valid session.
        """
        assert "/" not in txn_id, txn_id
        session = self.session
        return TxnLocks(txn_id, session.lease_id, self._wall(), self.node_id)

    def requests(self, txn: TxnLocks, needs: Iterable[tuple[Resource, LockMode]]
                 ) -> list[Request]:
        """The entries ``acquire(txn, needs)`` would put now (none: all held). Pure."""
        return group(plan(txn, list(needs), self.escalate_after))

    def acquire(self, txn: TxnLocks, needs: Iterable[tuple[Resource, LockMode]],
                timeout_s: float | None = None, *,
                planned: list[Request] | None = None) -> list[Request]:
        """Take every lock ``needs`` implies (see ``table.plan``), waiting as long as needed;
        return the entries put for it, all granted now (none: ``txn`` held every lock).

        Raises:
            Deadlock: chosen as a deadlock victim.
            LockTimeout: not granted within ``timeout_s`` (at most ``wait_timeout_s``).
            Aborted: aborted for another reason meanwhile.
            SessionExpired: the session is gone (its locks with it).
            EtcdUnavailable: etcd did not answer.

        ``planned``: what ``requests(txn, needs)`` gave, if the caller asked already (nothing of
        ``txn`` may have changed since).
        """
        self._check_aborted(txn)
        grouped = self.requests(txn, needs) if planned is None else planned
        if not grouped:
            return []
        limit = self.wait_timeout_s if timeout_s is None else min(timeout_s, self.wait_timeout_s)
        deadline = self._clock() + limit
        sent = self.caches.rewrite(txn, grouped)
        # Group first (a page's rows ride in its entry), then cut at etcd's operation limit:
        # each entry costs a put and its reads, and each batch two session reads.
        chunk: list[Request] = []
        budget = self.max_ops - 2
        try:
            for req in sent:
                cost = 1 + len(req.read_names())
                if chunk and cost > budget:
                    self._acquire_chunk(txn, chunk, deadline)
                    chunk, budget = [], self.max_ops - 2
                chunk.append(req)
                budget -= cost
            if chunk:
                self._acquire_chunk(txn, chunk, deadline)
        except BaseException:
            self.caches.abandoned(txn, sent)
            raise
        return grouped

    def _acquire_chunk(self, txn: TxnLocks, reqs: list[Request], deadline: float) -> None:
        for req in reqs:
            if req.cache_key:  # the node's cached table lock: it outlives the transaction
                req.key = req.cache_key
                continue
            txn.seq += 1
            stored = resource.entry_name(req.name, req.mode.is_intention())
            req.key = resource.entry_key(self.cluster, stored, txn.txn_id, str(txn.seq))
            # Known before etcd answers: a request that times out may still have written it,
            # and the release must then delete it (else it blocks others as long as the
            # session).
            txn.keys.append(req.key)
        answer = self.batcher.put_and_read(txn.lease_id, reqs)
        rev = answer.revision
        self._fence_dead(answer.markers, answer.live)
        waits = []
        for req in reqs:
            entries = self._entries([kv for n in req.read_names() for kv in answer.reads[n]])
            req.revision = rev  # a key created in this etcd transaction has its revision
            conflicts = find_conflicts(self._owner(txn, req), req, entries)
            if conflicts:
                waits.append((req, conflicts))
            else:
                self._granted(txn, req, rev, entries)
        for req, conflicts in waits:
            self._wait(txn, req, conflicts, rev, deadline)

    def _owner(self, txn: TxnLocks, req: Request) -> str:
        """Whose entry ``req`` is: the node's table cache's, or ``txn``'s own."""
        return self.caches.owner() if req.cache_key else txn.txn_id

    def _granted(self, txn: TxnLocks, req: Request, revision: int, seen: list[Entry]) -> None:
        if req.cache_key or req.leave_cache:
            self.caches.granted(txn, req, revision, seen)
        for res, mode in req.grants:
            if res.kind == "row" and res not in txn.held:
                txn.rows_per_page[Resource(res.table, res.page)] += 1
            held = txn.held.get(res)
            txn.held[res] = mode if held is None else held.supremum(mode)

    def _entries(self, kvs: list[KeyValue]) -> list[Entry]:
        return parse_entries(self.cluster, kvs)

    def fence_dead_sessions(self) -> list[int]:
        """Fence every session that ended without closing cleanly; return their leases (the
        leader runs this, so dead sessions are fenced even when nobody wants their locks)."""
        before = len(self.fenced_sessions)
        _, results = self._client.txn([
            EtcdClient.range_op(resource.sessions_prefix(self.cluster)),
            EtcdClient.range_op(resource.live_prefix(self.cluster))])
        self._fence_dead(results[0] or [], results[1] or [])
        return self.fenced_sessions[before:]

    def _fence_dead(self, markers: list[KeyValue], live: list[KeyValue]) -> None:
        alive = {resource.lease_of_key(kv.key) for kv in live}
        for kv in markers:
            lease = resource.lease_of_key(kv.key)
            if lease in alive:
                continue
            log.warning("session %x ended without closing; fencing it before acting", lease)
            self._fencer.fence(lease)  # durable before we go on
            self.fenced_sessions.append(lease)
            self._client.delete(kv.key)

    def _wait(self, txn: TxnLocks, req: Request, conflicts: list[Entry], seen_rev: int,
              deadline: float) -> None:
        """Wait until ``req`` is granted (see :meth:`_wait_for_grant`), telling ``on_wait``."""
        if self._on_wait is None:
            return self._wait_for_grant(txn, req, conflicts, seen_rev, deadline)
        start, outcome = self._clock(), "error"
        try:
            self._wait_for_grant(txn, req, conflicts, seen_rev, deadline)
            outcome = "granted"
        except Aborted as e:
            outcome = str(e.reason)
            raise
        except SessionExpired:
            outcome = "session_expired"
            raise
        except EtcdUnavailable:
            outcome = "etcd_unavailable"
            raise
        finally:
            self._on_wait(self._clock() - start, outcome)

    def _wait_for_grant(self, txn: TxnLocks, req: Request, conflicts: list[Entry],
                        seen_rev: int, deadline: float) -> None:
        wkey = resource.wait_key(self.cluster, txn.txn_id)
        with self._lock:
            self._waiting[txn.txn_id] = txn
        try:
            while True:
                self._check_aborted(txn)
                blockers = frozenset(e.txn_id for e in conflicts)
                on, on_mode = blocked_on(req, conflicts)
                if blockers != txn.waiting_for or txn.waiting_on != on:
                    txn.waiting_for, txn.waiting_on = blockers, on
                    self._client.put(wkey, json.dumps({
                        "node": self.node_id, "started_at": txn.started_at,
                        "resource": on, "mode": on_mode,
                        "waits_for": sorted(blockers)}).encode(), txn.lease_id)
                ahead = max(conflicts, key=lambda e: e.create_revision)
                txn.wake.clear()
                cancel = self._client.watch_delete(ahead.key, seen_rev + 1, txn.wake.set)
                try:
                    remaining = deadline - self._clock()
                    if remaining <= 0 or (not txn.wake.wait(min(remaining, RECHECK_S))
                                          and self._clock() >= deadline):
                        txn.abort(LockTimeout.reason, f"waited for {req.name} "
                                  f"({req.describe()}) behind {', '.join(sorted(blockers))}")
                        self._check_aborted(txn)
                finally:
                    cancel()
                self._check_aborted(txn)
                names = resource.read_names(req.name, req.mode.is_intention())
                seen_rev, results = self._client.txn([
                    EtcdClient.get_op(req.key),
                    *(EtcdClient.range_op(resource.resource_prefix(self.cluster, name))
                      for name in names),
                    EtcdClient.range_op(resource.sessions_prefix(self.cluster), keys_only=True),
                    EtcdClient.range_op(resource.live_prefix(self.cluster), keys_only=True),
                ])
                self._fence_dead(results[-2] or [], results[-1] or [])
                entries = self._entries([kv for r in results[1:-2] for kv in (r or [])])
                if not results[0]:
                    raise SessionExpired(f"lock entry of {txn.txn_id} on {req.name} is gone: "
                                         f"its session ended")
                conflicts = find_conflicts(self._owner(txn, req), req, entries)
                if not conflicts:
                    self._granted(txn, req, seen_rev, entries)
                    return
        finally:
            with self._lock:
                self._waiting.pop(txn.txn_id, None)
            if txn.waiting_for:
                txn.waiting_for, txn.waiting_on = frozenset(), None
                try:
                    self._client.delete(wkey)
                except (EtcdUnavailable, SessionExpired):
                    # A stale wait record could make the detector see a deadlock: the releaser
                    # deletes it once etcd answers.
                    self._enqueue_release([wkey], txn.lease_id)

    def _check_aborted(self, txn: TxnLocks) -> None:
        if txn.abort_reason is None:
            return
        cls = {Deadlock.reason: Deadlock, LockTimeout.reason: LockTimeout}.get(
            txn.abort_reason, Aborted)
        err = cls(f"transaction {txn.txn_id} aborted ({txn.abort_reason}): {txn.abort_detail}")
        err.reason = txn.abort_reason
        raise err

    def release(self, txn: TxnLocks) -> None:
        """Release every lock of ``txn`` (and its wait record), without waiting for etcd.

        The keys go to the releaser thread, which deletes the keys of every transaction
        released meanwhile together, in etcd transactions of at most ``max_ops`` keys, and
        retries while etcd is unreachable; at the latest they go with the session lease. Call it
        only after the transaction's commit is durable (strict two-phase locking).
        """
        self.caches.release(txn)
        keys = [*txn.keys]
        if txn.waiting_for or not keys:
            keys.append(resource.wait_key(self.cluster, txn.txn_id))
        txn.keys = []
        txn.held.clear()
        txn.rows_per_page.clear()
        self._enqueue_release(keys, txn.lease_id)

    def _enqueue_release(self, keys: list[bytes], lease_id: int) -> None:
        """Hand ``keys`` of session ``lease_id`` to the releaser thread."""
        with self._release_cv:
            self._to_release.append((keys, lease_id))
            self._release_cv.notify()

    def flush_releases(self, timeout_s: float = 5.0) -> bool:
        """Wait until every release queued so far reached etcd; return whether it did."""
        with self._release_cv:
            return self._release_cv.wait_for(
                lambda: not self._to_release and not self._releasing, timeout=timeout_s)

    def _release_loop(self) -> None:
        while True:
            with self._release_cv:
                self._release_cv.wait_for(lambda: self._to_release or self._stop.is_set())
                if not self._to_release and self._stop.is_set():
                    return
                batch, self._to_release = self._to_release, []
                self._releasing = True
            try:
                self._release_batch(batch)
            finally:
                with self._release_cv:
                    self._releasing = False
                    self._release_cv.notify_all()

    def _release_batch(self, batch: list[tuple[list[bytes], int]]) -> None:
        delay = 0.05
        while batch:
            live = self._session
            # Keys of a lease that is gone or given up need no delete: they went with it.
            batch = [(k, lease) for k, lease in batch
                     if live is not None and live.lease_id == lease and not live.done.is_set()]
            keys = [k for ks, _ in batch for k in ks]
            try:
                self._delete_all(keys)
                return
            except Exception as e:  # etcd away, or anything else: the keys must still go
                # (nothing but close() may end this thread: locks never released would hold
                # up every other transaction for as long as the session lives).
                log.warning("releasing %d lock keys failed (%s); retrying", len(keys), e)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, 2.0)

    def _delete_all(self, keys: list[bytes]) -> None:
        for i in range(0, len(keys), self.max_ops):
            self._client.txn([EtcdClient.delete_op(k) for k in keys[i:i + self.max_ops]])

    # -- deadlocks ------------------------------------------------------------------------------

    def waits(self) -> list[WaitRecord]:
        """Every published wait record of the cluster."""
        return parse_waits(self._client.get_prefix(resource.waits_prefix(self.cluster)))

    def detect_once(self) -> list[str]:
        """Look for deadlocks now; abort this node's victims; return every victim found."""
        records = self.waits()
        edges = {w.txn_id: set(w.waits_for) for w in records}
        started = {w.txn_id: w.started_at for w in records}
        found = deadlock.victims(edges, started)
        for victim in found:
            with self._lock:
                txn = self._waiting.get(victim)
            if txn is not None:
                self.deadlocks_found += 1
                cycle = f"{victim} waits for {', '.join(sorted(edges.get(victim, ())))}"
                log.info("deadlock: aborting %s (youngest in the cycle; %s)", victim, cycle)
                txn.abort(Deadlock.reason, f"victim of a deadlock: {cycle}")
        return found

    def _detect_loop(self) -> None:
        while not self._stop.wait(DETECT_INTERVAL_S):
            with self._lock:
                idle = not self._waiting
            if idle:
                continue
            try:
                self.detect_once()
            except Exception as e:  # the loop must survive etcd outages and bugs alike
                log.warning("deadlock detection failed: %s", e)

    def entries(self) -> list[Entry]:
        """Every lock entry of the cluster (for status)."""
        return self._entries(self._client.get_prefix(resource.locks_prefix(self.cluster)))

    def waiting(self) -> list[TxnLocks]:
        """This node's transactions that wait for a lock now."""
        with self._lock:
            return list(self._waiting.values())

    def close(self) -> None:
        """Push out queued releases, then stop the detector and the releaser."""
        self.flush_releases(timeout_s=2.0)
        self._stop.set()
        with self._release_cv:
            self._release_cv.notify_all()
        self._detector.join(timeout=2)
        self._releaser.join(timeout=2)
        self.batcher.close()
        self.caches.close()
