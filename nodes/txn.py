"""Transactions with locks: interactive ones (begin ... commit) and the one-shot writes.

Owns: the life of an interactive transaction on this node (begin, locking reads and scans,
buffered writes, commit, rollback, abort with a reason, idle timeout), and the locks that one-shot
writes take. Does not own: the lock protocol (``lockmgr``) or the meaning of a write
(``commit.py``).

Read-write transactions use strict two-phase locking: every read locks its row (S, or X for
update) or its pages (a scan: S on each page it covers, or the table when the range is wide),
every write locks its row X, with intention locks on page and table above; locks are released
only after the commit is durable (or on rollback). After taking a lock the transaction reads from
a fresh storage snapshot, so it sees every commit of earlier holders of that lock. Writes are
buffered and checked when made (under their X lock); the commit applies them in one write
transaction, which first checks that the transaction's session is not fenced.

Read-only transactions keep one storage snapshot from begin to end and take no locks.

Ids are ``<incarnation>.<n>@<node id>``: the incarnation is new per process
(``<start ms>-<random>-<check>``, the check a keyed hash of the rest and the node id), so a call
that names a transaction of an earlier life of this node gets ABORTED (node restarted), one
that names an id no life of this node issued gets NOT_FOUND (never begun), and a call for
another node's transaction gets FAILED_PRECONDITION naming that node.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lockmgr import (
    Aborted,
    EtcdUnavailable,
    LockManager,
    LockMode,
    Resource,
    SessionExpired,
    TxnLocks,
    probe,
)
from nodes import commit, query
from nodes.commit import ReadResult
from nodes.limits import Admission, ResourceExhausted
from nodes.security import caller
from storage import (
    Fenced,
    InvalidInput,
    NotFound,
    ReadView,
    Schema,
    Store,
    Value,
    WriteView,
)
from storage.pages import pages_for_range

log = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT_S = 30.0
MAX_TOMBSTONES = 10_000
REAP_S = 0.25  # how often idle and expired transactions are looked for

DEADLOCK, LOCK_TIMEOUT, FENCED = "DEADLOCK", "LOCK_TIMEOUT", "FENCED"
NODE_RESTARTED, IDLE_TIMEOUT, SESSION_LOST = "NODE_RESTARTED", "IDLE_TIMEOUT", "SESSION_LOST"
NODE_DRAINING, TABLE_CHANGED, EXPIRED = "NODE_DRAINING", "TABLE_CHANGED", "EXPIRED"
REASONS = frozenset({DEADLOCK, LOCK_TIMEOUT, FENCED, NODE_RESTARTED, IDLE_TIMEOUT, SESSION_LOST,
                     NODE_DRAINING, TABLE_CHANGED, EXPIRED})


def _reason(e: Aborted) -> str:
    """The API's abort reason for a lock manager abort (its ``reason``, upper-cased)."""
    r = str(getattr(e, "reason", "")).upper()
    return r if r in REASONS else SESSION_LOST


class TxnAborted(Exception):
    """The transaction was aborted; ``reason`` says why (ABORTED: retry the transaction)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class WrongNode(Exception):
    """The transaction (or the Drain call) is for another node (FAILED_PRECONDITION: send it
    there)."""


class UnknownTransaction(Exception):
    """No such open transaction on this node (NOT_FOUND)."""


row_resource, table_resource = commit.row_resource, commit.table_resource


def lock_free_check(escalate_after: int) -> commit.LockFreeCheck:
    """The group committer's check for a one-shot request without locks: it must take them
    if any lock it needs conflicts with a grant that interactive transactions published in
    storage (``lockmgr.probe``; ``lockmgr/DESIGN.md``, "One-shot writes without lock
    entries")."""

    def must_lock(view: ReadView, tables: list[str], needs: Callable[[], commit.Needs]
                  ) -> bool:
        if not any(view.has_grants_under(prefix)
                   for t in tables for prefix in probe.grant_prefixes(t)):
            return False  # nothing published on these tables: no entry could be in the way
        return probe.blocked(probe.requests(needs(), escalate_after), lambda name: [
            probe.entry(name, tag, value) for tag, _, value in view.grants(name)])

    return must_lock


@dataclass
class Txn:
    """One open interactive transaction."""

    txn_id: str
    read_only: bool
    started_at: float
    last_used: float
    locks: TxnLocks | None = None
    snapshot: Any = None  # read-only: (context manager, ReadView)
    staging: commit.Staging = field(default_factory=commit.Staging)
    published: list[tuple[str, str]] = field(default_factory=list)  # grants in storage
    mutex: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False
    pending_abort: tuple[str, str] | None = None  # asked while a call was running
    client: str = ""  # the connection that began it (its budgets: nodes/limits.py)
    buffered: int = 0  # bytes of its writes counted in the node's buffer budget
    expires_at: float | None = None  # its lifetime's end (BeginRequest.lifetime_ms), if any
    owner: str = ""  # the user that began it, when authentication is on (nodes/security.py)


class TransactionManager:
    """The node's open transactions."""

    def __init__(self, node_id: str, address: str, store: Store,
                 committer: commit.GroupCommitter, locks: LockManager, *,
                 idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
                 session_valid: Callable[[int], bool] = lambda lease: True,
                 on_fenced: Callable[[int], None] = lambda lease: None,
                 lock_free: bool = True,
                 admission: Admission | None = None, id_key: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node_id = node_id
        self.address = address
        self.store = store
        self.committer = committer
        self.locks = locks
        self.idle_timeout_s = idle_timeout_s
        self._session_valid = session_valid
        self._on_fenced = on_fenced
        self.lock_free = lock_free  # one-shot writes try the path without lock entries first
        self.admission = admission or Admission()
        self._clock = clock
        self._id_key = id_key.encode()[:64]
        self.started_ms = int(time.time() * 1000)
        self.incarnation = self._incarnation(self.started_ms, secrets.token_hex(2))
        self._n = 0
        self._mu = threading.Lock()
        self._open: dict[str, Txn] = {}
        self._tombstones: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._stop = threading.Event()
        self.aborts: dict[tuple[str, str], int] = {}
        """Transactions aborted, by (kind, reason): kind ``interactive`` or ``one_shot`` (a
        one-shot write or a drop under locks of its own), reason one of ``REASONS``."""
        self._reaper = threading.Thread(target=self._reap_loop, name="txn-reaper", daemon=True)
        self._reaper.start()

    # -- lifecycle ----------------------------------------------------------------------------

    def begin(self, read_only: bool, client: str = "", lifetime_s: float = 0.0) -> Txn:
        """Open a transaction for ``client`` (a connection), to live at most ``lifetime_s``
        (0: no bound but the idle timeout).

        Raises:
            ResourceExhausted: the client or the node holds as many as its limit allows.
        """
        self.admission.transactions.take(client)
        try:
            if read_only:
                self.admission.snapshots.take(client)
            txn_id = self._next_id()
            now = self._clock()
            txn = Txn(txn_id, read_only, time.time(), now, client=client,
                      expires_at=now + lifetime_s if lifetime_s > 0 else None,
                      owner=caller())
            if read_only:
                try:
                    ctx = self.store.read()
                    txn.snapshot = (ctx, ctx.__enter__())
                except BaseException:
                    self.admission.snapshots.give(client)
                    raise
            else:
                txn.locks = self.locks.begin(txn_id)
        except BaseException:
            self.admission.transactions.give(client)
            raise
        with self._mu:
            self._open[txn_id] = txn
        return txn

    @contextlib.contextmanager
    def use(self, txn_id: str) -> Iterator[Txn]:
        """The open transaction ``txn_id``, for one call at a time.

        Raises:
            WrongNode, UnknownTransaction, TxnAborted: see the module docstring.
        """
        txn = self._lookup(txn_id)
        if txn.owner and txn.owner != caller():  # another user's: as if it did not exist
            raise UnknownTransaction(f"transaction {txn_id} is not open (committed, rolled "
                                     f"back or never begun)")
        with txn.mutex:
            self._apply_pending_abort(txn)
            if txn.done:
                raise self._gone(txn_id)
            txn.last_used = self._clock()
            try:
                yield txn
            except (Aborted, Fenced, SessionExpired, commit.TableChanged) as e:
                aborted = self._as_abort(e, txn.locks.lease_id if txn.locks else None)
                self._abort_locked(txn, aborted.reason, str(e))
                raise aborted from e
            except EtcdUnavailable:
                # Its lock requests may or may not be in etcd: end it rather than leave a
                # request queued that others would wait behind. The caller sees UNAVAILABLE.
                self._abort_locked(txn, SESSION_LOST, "etcd was unreachable during a lock "
                                   "request")
                raise
            finally:
                txn.last_used = self._clock()
                self._apply_pending_abort(txn)

    def _apply_pending_abort(self, txn: Txn) -> None:
        """Carry out an abort asked for while a call held the transaction (its mutex held)."""
        if txn.pending_abort is not None and not txn.done:
            self._abort_locked(txn, *txn.pending_abort)

    def _lookup(self, txn_id: str) -> Txn:
        with self._mu:
            txn = self._open.get(txn_id)
        if txn is not None:
            return txn
        raise self._gone(txn_id)

    def _gone(self, txn_id: str) -> Exception:
        head, sep, node = txn_id.rpartition("@")
        if not sep or "." not in head:
            return InvalidInput(f"{txn_id!r} is not a transaction id")
        if node != self.node_id:
            return WrongNode(f"transaction {txn_id} belongs to node {node}; send its calls "
                             f"there (this is {self.node_id})")
        incarnation = head.split(".", 1)[0]
        if incarnation != self.incarnation:
            if self._earlier_life(incarnation):
                return TxnAborted(NODE_RESTARTED, f"transaction {txn_id} was lost: node "
                                  f"{self.node_id} restarted since it began")
            return UnknownTransaction(f"transaction {txn_id} was never begun (node "
                                      f"{self.node_id} issued no such id)")
        with self._mu:
            tomb = self._tombstones.get(txn_id)
        if tomb is not None and tomb[0] != "ended":
            return TxnAborted(tomb[0], f"transaction {txn_id} was aborted: {tomb[1]}")
        return UnknownTransaction(f"transaction {txn_id} is not open (committed, rolled back "
                                  f"or never begun)")

    def _incarnation(self, started_ms: int, rand: str) -> str:
        check = hashlib.blake2b(f"{self.node_id}|{started_ms:x}-{rand}".encode(),
                                key=self._id_key, digest_size=3).hexdigest()
        return f"{started_ms:x}-{rand}-{check}"

    def _earlier_life(self, incarnation: str) -> bool:
        """Whether ``incarnation`` is that of an earlier process of this node."""
        parts = incarnation.split("-")
        if len(parts) != 3:
            return False
        try:
            started_ms = int(parts[0], 16)
        except ValueError:
            return False
        return (started_ms <= self.started_ms
                and self._incarnation(started_ms, parts[1]) == incarnation)

    def _fenced_async(self, lease_id: int) -> None:
        """Report a fenced session without blocking the caller (it may hold a txn mutex)."""
        threading.Thread(target=self._on_fenced, args=(lease_id,), name="fenced",
                         daemon=True).start()

    def _as_abort(self, e: Exception, lease_id: int | None) -> TxnAborted:
        """The one translation of a failure into an abort of the transaction (ABORTED: retry
        the whole of it); a fenced session is also reported, so the node starts a new one."""
        if isinstance(e, TxnAborted):
            return e
        if isinstance(e, Fenced):
            if lease_id is not None:
                self._fenced_async(lease_id)
            return TxnAborted(FENCED, str(e))
        if isinstance(e, Aborted):
            return TxnAborted(_reason(e), str(e))
        if isinstance(e, commit.TableChanged):
            return TxnAborted(TABLE_CHANGED, str(e))
        return TxnAborted(SESSION_LOST, str(e))

    def _finish(self, txn: Txn, reason: str, detail: str, release: bool = True,
                withdraw: bool = True) -> None:
        """End ``txn`` (its mutex held): forget it, keep a tombstone, free what it holds
        (``withdraw``: remove its published grants; a commit does that itself)."""
        if txn.done:
            return
        txn.done = True
        if withdraw and txn.published:
            self._withdraw(txn.published)
        with self._mu:
            self._open.pop(txn.txn_id, None)
            self._tombstones[txn.txn_id] = (reason, detail)
            while len(self._tombstones) > MAX_TOMBSTONES:
                self._tombstones.popitem(last=False)
        try:
            if txn.snapshot is not None:
                ctx, _ = txn.snapshot
                txn.snapshot = None
                ctx.__exit__(None, None, None)
        finally:
            if txn.read_only:
                self.admission.snapshots.give(txn.client)
            self.admission.transactions.give(txn.client)
            self.admission.buffered.give(txn.buffered)
            txn.buffered = 0
        if txn.locks is not None and release:
            self.locks.release(txn.locks)

    def _withdraw(self, grants: list[tuple[str, str]]) -> None:
        """Remove published grants in the next group commit, without waiting. Left behind (a
        full volume, a crash), a grant only sends one-shot writes to the locking path."""
        try:
            self.committer.enqueue(commit.WithdrawGrants(list(grants)))
        except commit.Unavailable:
            pass  # shutting down: the session's grants go when it is fenced

    def _abort_locked(self, txn: Txn, reason: str, detail: str) -> None:
        if txn.done:
            return
        self._count_abort("interactive", reason)
        log.info("transaction %s aborted: %s (%s)", txn.txn_id, reason, detail)
        self._finish(txn, reason, detail)

    def _count_abort(self, kind: str, reason: str) -> None:
        with self._mu:
            self.aborts[kind, reason] = self.aborts.get((kind, reason), 0) + 1

    def abort(self, txn_id: str, reason: str, detail: str) -> None:
        """Abort an open transaction from outside (idle timeout, session loss, fencing).

        Never blocks: if a call is running in the transaction (even on this thread), the abort
        is left for that call to carry out as it ends.
        """
        with self._mu:
            txn = self._open.get(txn_id)
        if txn is None:
            return
        if txn.pending_abort is None:
            txn.pending_abort = (reason, detail)
        if txn.locks is not None:
            txn.locks.abort(reason.lower(), detail)  # wakes it if it waits for a lock
        if txn.mutex.acquire(blocking=False):
            try:
                self._abort_locked(txn, reason, detail)
            finally:
                txn.mutex.release()

    def abort_session(self, lease_id: int, reason: str, detail: str) -> None:
        """Abort every read-write transaction of the session ``lease_id``."""
        with self._mu:
            victims = [t.txn_id for t in self._open.values()
                       if t.locks is not None and t.locks.lease_id == lease_id]
        for txn_id in victims:
            self.abort(txn_id, reason, detail)

    def commit(self, txn: Txn, timeout_s: float | None,
               idempotency_key: str = "") -> commit.Outcome:
        """Commit (durably) and release; the transaction is over either way."""
        if txn.pending_abort is not None:
            self._abort_locked(txn, *txn.pending_abort)
            raise TxnAborted(*txn.pending_abort)
        fut = None
        try:
            if txn.read_only or (not txn.staging.changes and not idempotency_key):
                return commit.Outcome()
            assert txn.locks is not None
            fut = self.committer.enqueue(_StagedCommit(txn, self._session_check(txn.locks),
                                                       idempotency_key))
            return self.committer.wait(fut, timeout_s)
        finally:
            if fut is not None and not fut.done():
                # The commit may still be applied: keep the locks until it is decided.
                self._finish(txn, "ended", "commit outcome unknown", release=False,
                             withdraw=False)
                locks, grants = txn.locks, list(txn.published)

                def decided(f: Any) -> None:
                    if f.exception() is not None and grants:
                        self._withdraw(grants)
                    self.locks.release(locks)  # type: ignore[arg-type]

                fut.add_done_callback(decided)
            else:
                committed = fut is not None and fut.exception() is None
                self._finish(txn, "ended", "committed", withdraw=not committed)

    def rollback(self, txn: Txn) -> None:
        """Discard the transaction's writes and release its locks."""
        self._finish(txn, "ended", "rolled back")

    def _check_deadline(self, lease_id: int) -> None:
        if not self._session_valid(lease_id):
            raise Fenced(f"session {lease_id:x} is past its deadline (self-fenced)")

    def _session_check(self, locks: TxnLocks) -> commit.SessionCheck:
        return commit.SessionCheck(locks.lease_id, self._check_deadline)

    # -- operations ---------------------------------------------------------------------------

    def _view(self, txn: Txn) -> contextlib.AbstractContextManager[ReadView]:
        if txn.snapshot is not None:
            return contextlib.nullcontext(txn.snapshot[1])
        return self.store.read()

    def _lock(self, txn: Txn, needs: list[tuple[Resource, LockMode]],
              timeout_s: float | None) -> None:
        """Take ``needs`` for ``txn``, and publish the entries in storage before ``txn`` reads
        under them: a one-shot write that went ahead without locks did so before the
        publication, so ``txn`` reads it (``lockmgr/DESIGN.md``, "One-shot writes without lock
        entries"). The publication runs while etcd grants the locks, not after: publishing
        early only sends more one-shot writes to the lock queue, where they wait anyway.

        Raises:
            TxnAborted: the grants could not be published in time (``txn`` must not read).
        """
        if txn.locks is None or not needs:
            return
        planned = self.locks.requests(txn.locks, needs)
        if not planned:
            return
        grants = probe.published(txn.txn_id, len(txn.published), planned)
        fut = None
        if grants:
            txn.published.extend((name, tag) for name, tag, _ in grants)  # withdrawn at the end
            fut = self.committer.enqueue(
                commit.PublishGrants(self._session_check(txn.locks), grants))
        self.locks.acquire(txn.locks, needs, timeout_s, planned=planned)
        if fut is None:
            return
        try:
            self.committer.wait(fut, timeout_s)
        except commit.CommitTimeout as e:
            raise TxnAborted(LOCK_TIMEOUT, "the deadline passed while the locks were being "
                             "published; nothing was read") from e

    def read(self, txn: Txn, reads: list[commit.Read], for_update: bool,
             timeout_s: float | None) -> list[ReadResult]:
        """Point reads (locking, in a read-write transaction)."""
        if txn.read_only and for_update:
            raise InvalidInput("a read-only transaction cannot lock rows for update")
        with self.store.read() as view:
            plan = [(view.require_table(r.table), r) for r in reads]
            encs = []
            for schema, r in plan:
                schema.check_projection(r.columns)
                encs.append(schema.check_key(r.key))
        mode = LockMode.X if for_update else LockMode.S
        self._lock(txn, [(row_resource(s, e), mode) for (s, _), e in zip(plan, encs,
                                                                          strict=True)],
                   timeout_s)
        out: list[ReadResult] = []
        with self._view(txn) as view:  # fresh after the locks
            for (schema, r), enc in zip(plan, encs, strict=True):
                mine = txn.staging.lookup((schema.table_id, enc))
                if mine is not None:
                    vals = mine[0]
                    out.append(None if vals is None else (0, schema.as_dict(vals, r.columns)))
                    continue
                cur = view.get(schema, enc)
                out.append(None if cur is None else (cur[0], schema.as_dict(cur[1], r.columns)))
        return out

    def scan(self, txn: Txn, schema_name: str, bounds: tuple[Any, bool, Any, bool],
             reverse: bool, for_update: bool, timeout_s: float | None
             ) -> tuple[Schema, Iterator[tuple[int, list[Value]]], Callable[[], None]]:
        """Rows of a range, as this transaction sees them; locks the pages first.

        Returns:
            The schema, an iterator of (version, values) and a function closing the snapshot.
        """
        if txn.read_only and for_update:
            raise InvalidInput("a read-only transaction cannot lock rows for update")
        with self.store.read() as view:
            schema = view.require_table(schema_name)
        lo, hi = query.byte_range(schema, *bounds)
        mode = LockMode.X if for_update else LockMode.S
        pages = pages_for_range(lo, hi)
        if txn.locks is not None:
            if pages is None:
                needs = [(table_resource(schema), mode)]
            else:
                needs = [(Resource(str(schema.table_id), p), mode) for p in pages]
            self._lock(txn, needs, timeout_s)
        ctx = self._view(txn)
        view = ctx.__enter__()
        fresh = view.require_table(schema_name)
        if fresh.table_id != schema.table_id:
            ctx.__exit__(None, None, None)
            raise NotFound(f"table {schema_name!r} was dropped")
        rows = _merge(view.scan_keyed(schema, lo, hi, reverse),
                      _staged_in_range(txn, schema, lo, hi, reverse), reverse)
        return schema, rows, lambda: ctx.__exit__(None, None, None)

    def write(self, txn: Txn, writes: list[commit.Write], timeout_s: float | None) -> int:
        """Check and buffer writes (each under an X lock on its row); return rows affected."""
        if txn.read_only:
            raise InvalidInput("a read-only transaction cannot write")
        with self.store.read() as view:
            prepared = commit.prepare(view.require_table, writes)
        self._lock(txn, [(row_resource(pw.schema, pw.enc), LockMode.X) for pw in prepared],
                   timeout_s)
        call = txn.staging.child()
        with self.store.read() as view:
            for pw in prepared:
                current = view.table(pw.write.table)
                if current is None or current.table_id != pw.schema.table_id:
                    raise NotFound(f"table {pw.write.table!r} was dropped")
            affected = call.stage(prepared, view)
        self._buffer(txn, call.staged_bytes)
        call.merge()
        return affected

    def _buffer(self, txn: Txn, size: int) -> None:
        """Count ``size`` more bytes of buffered writes for ``txn`` (given back when it ends).

        Raises:
            ResourceExhausted: past the transaction's or the node's limit; nothing counted.
        """
        limit = self.admission.limits.transaction_bytes
        if txn.staging.staged_bytes + size > limit:
            raise ResourceExhausted(
                "--max-transaction-mb",
                f"this transaction would buffer {(txn.staging.staged_bytes + size) >> 20} MiB "
                f"of writes, more than the limit per transaction (--max-transaction-mb, "
                f"{limit >> 20} MiB); commit it and go on in another (this call's writes were "
                f"not applied; the transaction stays open)")
        self.admission.buffered.take(size)
        txn.buffered += size

    # -- one-shot writes ------------------------------------------------------------------------

    def one_shot(self, work: commit.Transaction, timeout_s: float | None,
                 is_active: Callable[[], bool]) -> commit.Outcome:
        """Run a one-shot transaction: without lock entries when nothing stands in its way
        (the committer's probe decides, inside the write transaction), else under locks of a
        transaction of its own (``lockmgr/DESIGN.md``, "One-shot writes without lock
        entries")."""
        with self.store.read() as view:
            work.prepare_in(view)
        if self.lock_free:
            work.lock_free, work.session = True, None
            try:
                return self.committer.submit(work, timeout_s=timeout_s, is_active=is_active)
            except commit.NeedsLocks:
                pass
        work.lock_free = False
        with self.store.read() as view:
            needs = work.lock_needs(view)

        def locked(locks: TxnLocks) -> commit.Work:
            work.session = self._session_check(locks)
            return work

        return self._commit_under_locks(needs, locked, timeout_s, is_active)

    def drop_table(self, name: str, if_exists: bool, timeout_s: float | None,
                   is_active: Callable[[], bool]) -> commit.Outcome:
        """Drop a table under an X lock on it: waits for every transaction that uses it."""
        with self.store.read() as view:
            schema = view.table(name) if if_exists else view.require_table(name)
        if schema is None:
            return commit.Outcome(value=False)
        return self._commit_under_locks(
            [(table_resource(schema), LockMode.X)],
            lambda locks: commit.DropTable(name, if_exists, self._session_check(locks)),
            timeout_s, is_active)

    def _next_id(self) -> str:
        """A new transaction id, unique in the cluster: ``<incarnation>.<n>@<node id>``."""
        with self._mu:
            self._n += 1
            return f"{self.incarnation}.{self._n}@{self.node_id}"

    def _commit_under_locks(self, needs: list[tuple[Resource, LockMode]],
                            make_work: Callable[[TxnLocks], commit.Work],
                            timeout_s: float | None,
                            is_active: Callable[[], bool]) -> commit.Outcome:
        """Take ``needs`` for a transaction of its own, commit ``make_work(its locks)``, and
        release the locks once the commit is decided: a commit still queued when the caller's
        deadline passes may yet be applied, so its locks stay until it is (strict 2PL)."""
        locks = self.locks.begin(self._next_id())
        fut = None
        try:
            self.locks.acquire(locks, needs, timeout_s)
            fut = self.committer.enqueue(make_work(locks), is_active=is_active)
            return self.committer.wait(fut, timeout_s)
        except (Aborted, Fenced, SessionExpired, commit.TableChanged) as e:
            aborted = self._as_abort(e, locks.lease_id)
            self._count_abort("one_shot", aborted.reason)
            raise aborted from e
        finally:
            if fut is not None and not fut.done():
                fut.add_done_callback(lambda _: self.locks.release(locks))
            else:
                self.locks.release(locks)

    # -- status and upkeep ----------------------------------------------------------------------

    def open_transactions(self) -> list[Txn]:
        """The open transactions of this node."""
        with self._mu:
            return list(self._open.values())

    def _reap_loop(self) -> None:
        # Nothing may end this thread but close(): idle transactions would keep their locks
        # and snapshots (and budgets) for as long as the node runs.
        while not self._stop.wait(min(REAP_S, self.idle_timeout_s / 4)):
            try:
                self._reap_once()
            except Exception as e:  # e.g. a snapshot that fails to close: next turn again
                log.warning("transaction reaper: %r", e)

    def _reap_once(self) -> None:
        """Abort the transactions idle too long or past their lifetime."""
        now = self._clock()
        for txn in self.open_transactions():
            if txn.mutex.locked():
                continue  # a call is running: it ends within its own bounds first
            if now - txn.last_used > self.idle_timeout_s:
                self.abort(txn.txn_id, IDLE_TIMEOUT,
                           f"idle for more than {self.idle_timeout_s:g} s")
            elif txn.expires_at is not None and now > txn.expires_at:
                self.abort(txn.txn_id, EXPIRED, "older than the lifetime it was begun with")

    def close(self, reason: str = SESSION_LOST, detail: str = "node is stopping") -> None:
        """Abort every open transaction and stop the reaper."""
        self._stop.set()
        for txn in self.open_transactions():
            self.abort(txn.txn_id, reason, detail)


def _staged_in_range(txn: Txn, schema: Schema, lo: bytes | None, hi: bytes | None,
                     reverse: bool) -> list[tuple[bytes, list[Value] | None]]:
    out = [(enc, vals) for (tid, enc), (_, _, vals, _) in txn.staging.staged.items()
           if tid == schema.table_id and (lo is None or enc >= lo) and (hi is None or enc < hi)]
    out.sort(key=lambda x: x[0], reverse=reverse)
    return out


def _merge(stored: Iterator[tuple[bytes, int, list[Value]]],
           staged: list[tuple[bytes, list[Value] | None]], reverse: bool
           ) -> Iterator[tuple[int, list[Value]]]:
    """Stored rows overlaid with the transaction's own writes, in key order."""
    i = 0

    def before(a: bytes, b: bytes) -> bool:
        return a > b if reverse else a < b

    for enc, version, values in stored:
        while i < len(staged) and before(staged[i][0], enc):
            if staged[i][1] is not None:
                yield 0, staged[i][1]
            i += 1
        if i < len(staged) and staged[i][0] == enc:
            if staged[i][1] is not None:
                yield 0, staged[i][1]
            i += 1
            continue
        yield version, values
    for _, vals in staged[i:]:
        if vals is not None:
            yield 0, vals


@dataclass
class _StagedCommit:
    """The commit of an interactive transaction: its buffered writes, after the fence check."""

    commit_kind: ClassVar[str] = "interactive"

    txn: Txn
    session: commit.SessionCheck
    idempotency_key: str = ""

    def plan(self, view: WriteView, position: int) -> commit.Plan:
        self.session(view)
        first = commit.replayed(view, self.idempotency_key)
        if first is not None:
            return first
        staging = self.txn.staging
        return commit.Plan(commit.Outcome(commit_position=position if staging.changes else 0,
                                          rows_affected=staging.rows_affected,
                                          committed_by=self.txn.txn_id),
                           staging.puts(), list(staging.changes),
                           idempotency_key=self.idempotency_key,
                           withdraw=list(self.txn.published))
