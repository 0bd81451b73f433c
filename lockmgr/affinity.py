"""Table intention locks a node keeps between transactions: lock affinity, in the manner of
Oracle RAC's cached global locks and Db2 pureScale's retained locks.

Owns: :class:`TableCaches`, the node's cached IX entries on tables and the transactions riding
them. Does not own how entries are put, read or waited for (``manager.py``, which asks this
module how to rewrite a transaction's requests and tells it what was granted and released).

The protocol
------------
A cache is one entry ``locks/t/<table>/<cache id>/0`` in mode IX on the session lease, owned by
the pseudo-transaction ``cache.<lease hex>@<node id>``; to everyone else it is a transaction
holding IX on the table.

- A local transaction that needs IS or IX on a table whose cache is **held** puts no table
  entry: it *rides* the cache (it counts as holding IX there) until it releases its locks.
- When no cache exists, the first transaction that needs an intention lock on the table puts
  the cache entry instead of its own (**establishing**): it is granted, or waits, exactly as
  its own entry would (behind earlier S, SIX or X entries), and once granted the cache is held
  and the transaction rides it. If that transaction gives up first, the cache entry goes.
- A held cache watches the table's strong entries (``ts/<table>``) from the revision of its
  grant. A strong request from anyone (a put there), or a broken watch, starts **revoking**:
  no transaction rides it any more (new ones put their own table entries, which queue behind
  the strong request, FIFO); once its last rider released, the entry is deleted, and the
  strong request, which waited for it like for any other IX holder, is granted.
- A rider that asks for a strong lock on its table first takes an intention entry of its own
  (put with the strong request, before it) and stops riding once that is granted: until then
  the cache entry stands for its intention lock, after that its own entry does, so the table
  is never without an intention entry of a transaction that holds row or page locks there.
- A revoking cache with riders publishes a wait record (``waits/<cache id>``) naming them, so
  that a strong request waiting for the cache while a rider waits for that requester is a
  cycle the deadlock detector sees; the cache's start time is 0, so it is never the victim.

Why it is safe: for everyone else, the cache entry is an IX lock held from its grant until its
deletion, and it is deleted only when no local transaction relies on it any more. A strong
request conflicts with it like with any IX entry, so it is not granted while any rider holds
locks under the table, whatever the watch's latency. The watch only decides *when* the node
gives the cache up, never whether a conflict is seen; a rider that joins after a strong
request was put (before its watch event arrived) delays that request, by at most its own
transaction, and no rider joins once revoking has begun.

Page intention locks are not cached: a transaction's page entry carries its row locks, so it
must exist anyway, and a cached page entry would save no etcd operation.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from lockmgr import resource
from lockmgr.entries import Entry, Request
from lockmgr.errors import EtcdUnavailable, SessionExpired
from lockmgr.etcd import EtcdClient
from lockmgr.modes import LockMode
from lockmgr.resource import Resource
from lockmgr.table import TxnLocks

log = logging.getLogger(__name__)

ABSENT, ESTABLISHING, HELD, REVOKING = "absent", "establishing", "held", "revoking"
_STRONG = (LockMode.S, LockMode.SIX, LockMode.X)


@dataclass
class _Cache:
    table: str  # the table's resource name, ``t/<table id>``
    state: str = ABSENT
    key: bytes = b""
    riders: set[str] = field(default_factory=set)
    cancel_watch: Callable[[], None] | None = None
    waits_published: frozenset[str] = frozenset()


class TableCaches:
    """The cached table intention locks of one process (see the module docstring)."""

    def __init__(self, client: EtcdClient, cluster: str, node_id: str, *,
                 enabled: bool = True) -> None:
        self._client = client
        self.cluster = cluster
        self.node_id = node_id
        self.enabled = enabled
        self._lock = threading.Lock()
        self._caches: dict[str, _Cache] = {}
        self._lease = 0
        self._jobs: list[Callable[[], None]] = []
        self._jobs_cv = threading.Condition()  # its own lock: jobs are queued under _lock
        self._stop = False
        self.rides = 0  # intention locks served by a cache, no etcd entry put
        self.established = 0
        self.revoked = 0
        self._worker = threading.Thread(target=self._run, name="table-caches", daemon=True)
        self._worker.start()

    def owner(self) -> str:
        """The id of the pseudo-transaction that owns this session's cache entries."""
        return f"cache.{self._lease:x}@{self.node_id}"

    # -- sessions -------------------------------------------------------------------------------

    def reset(self, lease_id: int) -> None:
        """Forget every cache (a new session: the old entries went or go with the old lease)."""
        with self._lock:
            old = list(self._caches.values())
            self._caches.clear()
            self._lease = lease_id
        for c in old:
            if c.cancel_watch is not None:
                c.cancel_watch()

    # -- the acquire path -----------------------------------------------------------------------

    def rewrite(self, txn: TxnLocks, requests: list[Request]) -> list[Request]:
        """The requests to put for ``txn`` instead of ``requests``: intention requests on a
        held cache's table are served by it (dropped, ``txn`` rides); one on a table with no
        cache becomes the cache entry; a strong request on a table ``txn`` rides gets an
        intention request of ``txn``'s own before it (see the module docstring)."""
        if not self.enabled or txn.lease_id != self._lease:
            return requests
        out: list[Request] = []
        with self._lock:
            for r in requests:
                if not r.name.startswith("t/"):
                    out.append(r)
                    continue
                c = self._caches.setdefault(r.name, _Cache(r.name))
                if txn.held.get(Resource(r.name[2:])) in _STRONG and r.name not in txn.riding:
                    out.append(r)  # it holds the table in its own right: no cache for it
                    continue
                if not r.mode.is_intention():
                    self._revoke_locked(c, "a local strong request")
                    if r.name in txn.riding:
                        own = Request(r.name, LockMode.IX, grants=[(Resource(r.name[2:]),
                                                                    LockMode.IX)])
                        own.leave_cache = r.name
                        out.append(own)
                    out.append(r)
                elif c.state == HELD:
                    c.riders.add(txn.txn_id)
                    txn.riding.add(r.name)
                    self.rides += 1
                    for res, _ in r.grants:
                        txn.held[res] = LockMode.IX
                elif c.state == ABSENT:
                    c.state = ESTABLISHING
                    c.key = resource.entry_key(self.cluster, r.name, self.owner(), "0")
                    r.mode = LockMode.IX
                    r.cache_key = c.key
                    out.append(r)
                else:
                    out.append(r)
        return out

    def granted(self, txn: TxnLocks, req: Request, revision: int,
                seen: list[Entry]) -> None:
        """``req`` of ``txn`` was granted on what etcd showed at ``revision`` (``seen``: the
        entries read then)."""
        if req.cache_key:
            with self._lock:
                c = self._caches.get(req.name)
                if c is None or c.key != req.cache_key or c.state != ESTABLISHING:
                    return
                c.state = HELD
                c.riders.add(txn.txn_id)
                txn.riding.add(req.name)
                self.established += 1
            # A strong request put while the cache waited is behind it and was put before the
            # watch starts: give the cache up at once for it.
            if any(not e.mode.is_intention() for e in seen):
                self._revoke(c, "a strong request queued behind it")
            else:
                self._watch(c, revision)
        elif req.leave_cache:
            self._leave(txn, req.leave_cache)

    def abandoned(self, txn: TxnLocks, requests: list[Request]) -> None:
        """``txn``'s acquire failed: delete the cache entries it was establishing."""
        for r in requests:
            if not r.cache_key:
                continue
            with self._lock:
                c = self._caches.get(r.name)
                if c is None or c.key != r.cache_key or c.state != ESTABLISHING:
                    continue
                del self._caches[r.name]
            self._later(lambda key=r.cache_key: self._client.delete(key))

    def release(self, txn: TxnLocks) -> None:
        """``txn`` released its locks: it rides nothing any more."""
        for table in list(txn.riding):
            self._leave(txn, table)

    # -- holding and giving up ------------------------------------------------------------------

    def _leave(self, txn: TxnLocks, table: str) -> None:
        txn.riding.discard(table)
        with self._lock:
            c = self._caches.get(table)
            if c is None:
                return
            c.riders.discard(txn.txn_id)
            if c.state == REVOKING:
                self._settle_locked(c)

    def _watch(self, c: _Cache, revision: int) -> None:
        prefix = resource.resource_prefix(self.cluster, resource.STRONG_TABLE + c.table[2:])
        try:
            cancel = self._client.watch_puts(prefix, revision + 1,
                                             lambda: self._revoke(c, "a strong request"))
        except EtcdUnavailable:
            self._revoke(c, "its watch could not be made")
            return
        with self._lock:
            if c.state == HELD and self._caches.get(c.table) is c:
                c.cancel_watch = cancel
                return
        cancel()

    def _revoke(self, c: _Cache, why: str) -> None:
        with self._lock:
            if self._caches.get(c.table) is c:
                self._revoke_locked(c, why)

    def _revoke_locked(self, c: _Cache, why: str) -> None:
        if c.state != HELD:
            return
        log.info("giving up the cached intention lock on %s (%s)", c.table, why)
        c.state = REVOKING
        self.revoked += 1
        self._settle_locked(c)

    def _settle_locked(self, c: _Cache) -> None:
        """A revoking cache: delete it once riderless, else keep its wait record current."""
        if not c.riders:
            del self._caches[c.table]
            cancel, key, waited = c.cancel_watch, c.key, bool(c.waits_published)
            wkey = resource.wait_key(self.cluster, self.owner())

            def drop() -> None:
                if cancel is not None:
                    cancel()
                self._client.txn([EtcdClient.delete_op(key),
                                  *([EtcdClient.delete_op(wkey)] if waited else [])])

            self._later(drop)
            return
        riders = frozenset(c.riders)
        if riders == c.waits_published:
            return
        c.waits_published = riders
        lease, owner, table = self._lease, self.owner(), c.table

        def publish() -> None:
            self._client.put(resource.wait_key(self.cluster, owner), json.dumps({
                "node": self.node_id, "started_at": 0.0, "resource": table, "mode": "IX",
                "waits_for": sorted(riders)}).encode(), lease)

        self._later(publish)

    # -- background etcd calls ------------------------------------------------------------------

    def _later(self, job: Callable[[], None]) -> None:
        """Run ``job`` (etcd calls) on the worker thread: the lock paths never wait for it."""
        with self._jobs_cv:
            self._jobs.append(job)
            self._jobs_cv.notify()

    def _run(self) -> None:
        while True:
            with self._jobs_cv:
                self._jobs_cv.wait_for(lambda: self._jobs or self._stop)
                if not self._jobs:
                    return
                jobs, self._jobs = self._jobs, []
            for job in jobs:
                try:
                    job()
                except (EtcdUnavailable, SessionExpired) as e:
                    # A cache entry left behind goes with the session lease at the latest.
                    log.warning("table cache upkeep failed: %s", e)
                except Exception as e:  # nothing but close() may end this thread: a cache
                    # entry it never deleted would hold up every strong lock on its table
                    log.warning("table cache upkeep failed: %r", e)

    def close(self) -> None:
        """Run what is queued, then stop the worker."""
        with self._jobs_cv:
            self._stop = True
            self._jobs_cv.notify()
        self._worker.join(timeout=2)
        with self._lock:
            caches = list(self._caches.values())
        for c in caches:
            if c.cancel_watch is not None:
                c.cancel_watch()
