"""Replicas of the volume as the cluster sees them: the registry in etcd, their lag, and the
gate that holds back acknowledgements and reads for the synchronous ones.

Owns: the replica records (``<cluster>/replicas/<replica id>``, JSON, on the replica's own
session lease, so that a dead replica's record goes with its lease), the synchronous set
(``<cluster>/sync/<replica id>``, no lease), reading them, the lag figures that status reports,
and :class:`SyncGate`. Does not own: the replica process (``nodes/replica.py``) nor the log it
reads (``ReadLog``, ``storage/commitlog.py``).

A record says where the replica is: the last position it holds durably (``position``), the
commit time of that record (``position_ts``), its mode (``sync`` or ``async``) and whether it
has caught up with the primary since it started following (``caught_up``). The leader keeps
the log from the oldest position a registered replica still needs (``needed_from``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from lockmgr import EtcdClient, EtcdUnavailable, KeyValue, SessionExpired
from nodes.membership import cluster_prefix
from storage import ReadView, Store, commitlog

log = logging.getLogger(__name__)

MODES = ("sync", "async")


def replicas_prefix(cluster: str) -> bytes:
    """The etcd prefix of the replica records of ``cluster``."""
    return cluster_prefix(cluster) + b"replicas/"


def replica_key(cluster: str, replica_id: str) -> bytes:
    """The etcd key of one replica's record."""
    return replicas_prefix(cluster) + replica_id.encode()


@dataclass(frozen=True)
class ReplicaRecord:
    """One replica, as it registers itself."""

    replica_id: str
    address: str
    mode: str
    position: int
    position_ts: float
    caught_up: bool
    pid: int
    started_at: float
    updated_at: float
    lease_id: int = 0
    volume_id: str = ""  # its copy's identity (``storage/volume.py``)
    primary_last: int = 0  # the highest position the primary's nodes said they hold

    def encode(self) -> bytes:
        """The record as stored in etcd."""
        d = asdict(self)
        d.pop("lease_id")
        return json.dumps(d).encode()

    @staticmethod
    def decode(raw: bytes, lease_id: int) -> ReplicaRecord | None:
        """A record read from etcd, or None if it is not one."""
        try:
            d = json.loads(raw)
            return ReplicaRecord(str(d["replica_id"]), str(d["address"]), str(d["mode"]),
                                 int(d["position"]), float(d["position_ts"]),
                                 bool(d["caught_up"]), int(d["pid"]), float(d["started_at"]),
                                 float(d["updated_at"]), lease_id,
                                 str(d.get("volume_id", "")), int(d.get("primary_last", 0)))
        except (ValueError, KeyError, TypeError):
            return None


def reader_key(cluster: str, node_id: str) -> bytes:
    """The etcd key of one read-only node's record (``nodes/reader.py``)."""
    return cluster_prefix(cluster) + b"readers/" + node_id.encode()


@dataclass(frozen=True)
class ReaderRecord:
    """A read-only node on a replica's copy, as it registers itself (on a lease)."""

    node_id: str
    address: str
    volume_id: str
    position: int
    updated_at: float

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @staticmethod
    def decode(raw: bytes) -> ReaderRecord | None:
        try:
            d = json.loads(raw)
            return ReaderRecord(str(d["node_id"]), str(d["address"]), str(d["volume_id"]),
                                int(d["position"]), float(d["updated_at"]))
        except (ValueError, KeyError, TypeError):
            return None


def read_readers(etcd: EtcdClient, cluster: str) -> list[ReaderRecord]:
    """Every registered read-only node, by id.

    Raises:
        EtcdUnavailable: etcd did not answer.
    """
    return _readers(etcd.get_prefix(cluster_prefix(cluster) + b"readers/"))


def read_replicas(etcd: EtcdClient, cluster: str) -> list[ReplicaRecord]:
    """Every registered replica, by id.

    Raises:
        EtcdUnavailable: etcd did not answer.
    """
    return _replicas(etcd.get_prefix(replicas_prefix(cluster)))


def read_registry(etcd: EtcdClient, cluster: str
                  ) -> tuple[list[ReplicaRecord], list[ReaderRecord]]:
    """Every registered replica and read-only node (as ``read_replicas`` and
    ``read_readers``), read in one etcd transaction: one round trip, one revision.

    Raises:
        EtcdUnavailable: etcd did not answer.
    """
    _, (replicas, readers) = etcd.txn([
        EtcdClient.range_op(replicas_prefix(cluster)),
        EtcdClient.range_op(cluster_prefix(cluster) + b"readers/")])
    return _replicas(replicas or []), _readers(readers or [])


def _replicas(kvs: Iterable[KeyValue]) -> list[ReplicaRecord]:
    got = (ReplicaRecord.decode(kv.value, kv.lease_id) for kv in kvs)
    return sorted((r for r in got if r is not None), key=lambda r: r.replica_id)


def _readers(kvs: Iterable[KeyValue]) -> list[ReaderRecord]:
    got = (ReaderRecord.decode(kv.value) for kv in kvs)
    return sorted((r for r in got if r is not None), key=lambda r: r.node_id)


def needed_from(replicas: Sequence[ReplicaRecord]) -> int | None:
    """The oldest commit-log position some replica still needs (None: no replica)."""
    return min((r.position + 1 for r in replicas), default=None)


@dataclass(frozen=True)
class Lag:
    """How far one replica is behind the volume."""

    positions: int
    seconds: float


def lag(view: ReadView, replica: ReplicaRecord, now: float | None = None) -> Lag:
    """The replica's lag against the volume in ``view``: positions it lacks, and how long ago
    the oldest of them committed (0 when it lacks none)."""
    last = view.commit_position()
    behind = max(0, last - replica.position)
    if not behind:
        return Lag(0, 0.0)
    now = time.time() if now is None else now
    oldest, _, _ = view.log_bounds()
    first_missing = max(replica.position + 1, oldest)
    got = view.log_stored(first_missing, 1)
    ts = commitlog.header(got[0][1])[0] if got else replica.position_ts
    return Lag(behind, max(0.0, now - ts))


# -- synchronous replicas ----------------------------------------------------------------------

SYNC = "sync"
JOINING = "joining"
DEMOTED = "demoted"
WAITED_FOR = (SYNC, JOINING)  # the states whose replicas every acknowledgement waits for
POLICIES = ("strict", "demote")
DEFAULT_SYNC_TIMEOUT_S = 5.0
TICK_S = 0.05
REFRESH_S = 2.0
POSITION_POLL_S = 0.002
MAX_POSITION_WAIT_S = 30.0


def sync_prefix(cluster: str) -> bytes:
    """The etcd prefix of the synchronous set: one key per synchronous replica, without a
    lease (a dead synchronous replica stays in the set until it leaves or is demoted)."""
    return cluster_prefix(cluster) + b"sync/"


def sync_key(cluster: str, replica_id: str) -> bytes:
    """The etcd key of one replica's place in the synchronous set."""
    return sync_prefix(cluster) + replica_id.encode()


def seen_prefix(cluster: str, replica_id: str) -> bytes:
    """The etcd prefix of the nodes' acknowledgements that they wait for a joining replica."""
    return cluster_prefix(cluster) + b"sync-seen/" + replica_id.encode() + b"/"


def seen_key(cluster: str, replica_id: str, node_id: str) -> bytes:
    """One node's acknowledgement (on its session lease) that it waits for ``replica_id``."""
    return seen_prefix(cluster, replica_id) + node_id.encode()


def sync_value(state: str, by: str, join: str = "") -> bytes:
    """The value of a synchronous-set key: ``state`` (``joining``, ``sync`` or ``demoted``),
    who set it, and the join it belongs to (a random id per joining)."""
    return json.dumps({"state": state, "by": by, "at": time.time(), "join": join}).encode()


def sync_state(raw: bytes) -> str:
    """The state in a synchronous-set value (``sync`` when unreadable: the safe side)."""
    return sync_entry(raw)[0]


def sync_entry(raw: bytes) -> tuple[str, str]:
    """(state, join id) of a synchronous-set value (``sync`` when unreadable: the safe
    side)."""
    try:
        d = json.loads(raw)
        return str(d["state"]), str(d.get("join", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return SYNC, ""  # unreadable: keep waiting for it, the safe side


class NotReplicated(Exception):
    """The synchronous replicas did not hold a position within the timeout."""

    applied_unknown = False


class CommitNotReplicated(NotReplicated):
    """A commit is durable on the primary but the synchronous replicas did not hold it within
    the timeout: its outcome is unknown to the client (it becomes visible once they hold it);
    retry with the same idempotency key."""

    applied_unknown = True


class ReadNotReplicated(NotReplicated):
    """A read would have seen commits the synchronous replicas do not hold yet, and they did
    not within the timeout; nothing was done: retry."""


class PositionNotReached(Exception):
    """A read asked for at least a commit position (``min_position``) that this volume did not
    reach within the deadline; nothing was done: retry later, or on a primary node."""


class ReadOnlyReplica(Exception):
    """A write (or an interactive transaction) was sent to a replica, which serves reads only:
    send it to a primary node (the message names one)."""


def wait_for_position(store: Store, position: int, timeout_s: float | None,
                      wake: Callable[[float], object], what: str) -> None:
    """Return once ``store`` holds commit ``position``; ``wake(s)`` waits up to ``s`` seconds
    for a new commit (or just sleeps).

    Raises:
        PositionNotReached: not within ``timeout_s`` (at most ``MAX_POSITION_WAIT_S``).
    """
    deadline = time.monotonic() + (MAX_POSITION_WAIT_S if timeout_s is None
                                   else min(timeout_s, MAX_POSITION_WAIT_S))
    while True:
        with store.read() as view:
            held = view.commit_position()
        if held >= position:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise PositionNotReached(f"{what} holds commit position {held}, not yet {position} "
                                     f"(min_position); retry later or on a primary node")
        wake(min(left, POSITION_POLL_S))


@dataclass
class _Waiter:
    position: int
    since: float
    on_ok: Callable[[], None]
    on_fail: Callable[[Exception], None]
    what: str  # "commit" | "read"


class SyncGate:
    """Which positions every synchronous replica holds, and waiting on it.

    The synchronous set lives in etcd (``sync_key``); each member's position is its replica
    record. ``held()`` is the lowest position among the members in state ``sync`` (infinite
    when there is none). Commits are acknowledged, and reads served, only at positions held
    (``after``, ``wait_held``). A wait longer than ``timeout_s`` follows the policy: ``strict``
    fails it (``NotReplicated``); ``demote`` marks the replicas in the way ``demoted`` in etcd
    (every node stops waiting for them, status says so) and lets the waits go on. A demoted
    replica puts itself back in state ``sync`` once it has caught up again.
    """

    def __init__(self, etcd: EtcdClient, cluster: str, *, node_id: str, policy: str = "demote",
                 timeout_s: float = DEFAULT_SYNC_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic,
                 lease: Callable[[], int] = lambda: 0,
                 epoch_compare: Callable[[], dict[bytes, int]] | None = None,
                 epoch_changed: Callable[[], None] = lambda: None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"--sync-policy must be one of {', '.join(POLICIES)}")
        self._etcd = etcd
        self._cluster = cluster
        self.node_id = node_id
        self.policy = policy
        self.timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Condition()
        self._states: dict[str, str] = {}
        self._joins: dict[str, str] = {}
        self._acked: set[tuple[str, str, int]] = set()
        self._lease = lease
        self._epoch_compare = epoch_compare
        self._epoch_changed = epoch_changed
        self._superseded = ""
        # Replicas whose sync entry went but that are still waited for until the epoch is read
        # again: a promotion deletes its replica's entry in the transaction that changes the
        # epoch, and the two watches may deliver in either order.
        self._leaving: set[str] = set()
        self._positions: dict[str, int] = {}
        self._waiters: list[_Waiter] = []
        self._stale = True
        self._cancels: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._loaded_at = 0.0
        self.demotions = 0
        self._thread = threading.Thread(target=self._loop, name="sync-gate", daemon=True)

    def start(self) -> None:
        """Read the synchronous set and follow it (watches, and a refresh every few seconds).

        Raises:
            EtcdUnavailable: etcd did not answer.
        """
        self.reload()
        self._thread.start()

    def close(self) -> None:
        """Stop following; waiters left fail."""
        self._stop.set()
        self._thread.join(timeout=5)
        for cancel in self._cancels:
            cancel()
        with self._lock:
            left, self._waiters = self._waiters, []
        for w in left:
            cls = CommitNotReplicated if w.what == "commit" else ReadNotReplicated
            w.on_fail(cls("the node is stopping before the synchronous replicas held it"))

    # reading the set

    def reload(self) -> None:
        """Read the synchronous set and the replica records again, and watch them from there.

        Raises:
            EtcdUnavailable: etcd did not answer.
        """
        for cancel in self._cancels:
            cancel()
        self._cancels = []
        rev, results = self._etcd.txn([EtcdClient.range_op(sync_prefix(self._cluster)),
                                       EtcdClient.range_op(replicas_prefix(self._cluster))])
        entries = {kv.key[len(sync_prefix(self._cluster)):].decode(): sync_entry(kv.value)
                   for kv in results[0] or ()}
        states = {rid: e[0] for rid, e in entries.items()}
        joins = {rid: e[1] for rid, e in entries.items()}
        positions = {}
        for kv in results[1] or ():
            rec = ReplicaRecord.decode(kv.value, kv.lease_id)
            if rec is not None:
                positions[rec.replica_id] = rec.position
        with self._lock:
            for rid, pos in positions.items():  # the highest heard (see ``report``)
                positions[rid] = max(pos, self._positions.get(rid, 0))
            self._leaving |= {rid for rid, state in self._states.items()
                              if state in WAITED_FOR and rid not in states}
            self._states, self._positions, self._stale = states, positions, False
            self._joins = joins
        self._loaded_at = self._clock()
        for prefix in (sync_prefix(self._cluster), replicas_prefix(self._cluster)):
            self._cancels.append(self._etcd.watch_prefix(prefix, rev + 1, self._on_events))
        self._release()

    def _on_events(self, events: list[tuple[bytes, bytes | None]] | None) -> None:
        if events is None:
            with self._lock:
                self._stale = True
            return
        sp, rp = sync_prefix(self._cluster), replicas_prefix(self._cluster)
        with self._lock:
            for key, value in events:
                if key.startswith(sp):
                    rid = key[len(sp):].decode()
                    if value is None:
                        if self._states.pop(rid, None) in WAITED_FOR:
                            self._leaving.add(rid)  # until the epoch is read again (_loop)
                        self._joins.pop(rid, None)
                    else:
                        self._states[rid], self._joins[rid] = sync_entry(value)
                elif key.startswith(rp):
                    rid = key[len(rp):].decode()
                    rec = None if value is None else ReplicaRecord.decode(value, 0)
                    if rec is None:  # gone with its lease: it holds nothing we can count on
                        self._positions.pop(rid, None)
                    else:  # the highest heard (see ``report``)
                        self._positions[rid] = max(rec.position, self._positions.get(rid, 0))
        self._release()

    def report(self, replica_id: str, position: int) -> None:
        """A replica says it holds ``position`` durably (``ReportPosition``). Positions are
        kept as the highest heard, from here or etcd: a lower one (a replica that copies
        again) can only concern positions already acknowledged."""
        with self._lock:
            if position <= self._positions.get(replica_id, 0):
                return
            self._positions[replica_id] = position
        self._release()

    def position_of(self, replica_id: str) -> int:
        """The highest position heard from one replica (0: none)."""
        with self._lock:
            return self._positions.get(replica_id, 0)

    def members(self) -> dict[str, str]:
        """The synchronous set: replica id -> ``sync`` or ``demoted``."""
        with self._lock:
            return dict(self._states)

    def held(self) -> float:
        """The highest position every synchronous replica holds (inf: none is synchronous)."""
        with self._lock:
            return self._held()

    def _held(self) -> float:
        if self._superseded:
            return -1.0
        ids = [rid for rid, state in self._states.items() if state in WAITED_FOR]
        ids += [rid for rid in self._leaving if rid not in ids]
        if not ids:
            return float("inf")
        return min(self._positions.get(rid, 0) for rid in ids)

    # waiting

    def after(self, position: int, on_ok: Callable[[], None],
              on_fail: Callable[[Exception], None]) -> None:
        """Call ``on_ok`` once ``position`` is held (at once if it is), or ``on_fail`` when
        the policy gives up on it."""
        with self._lock:
            superseded = self._superseded
            if superseded:
                ready = False
            elif position <= self._held():
                ready = True
            else:
                ready = False
                self._waiters.append(_Waiter(position, self._clock(), on_ok, on_fail,
                                             "commit"))
        if superseded:
            on_fail(CommitNotReplicated(superseded))
        elif ready:
            on_ok()

    def wait_held(self, position: int) -> None:
        """Block until ``position`` is held.

        Raises:
            ReadNotReplicated: the policy gave up on it.
        """
        with self._lock:
            if self._superseded:
                raise ReadNotReplicated(self._superseded)
            if position <= self._held():
                return
            done = threading.Event()
            failed: list[Exception] = []
            self._waiters.append(_Waiter(position, self._clock(), done.set,
                                         lambda e: (failed.append(e), done.set()), "read"))
        done.wait(self.timeout_s * 3 + 1)
        if failed or not done.is_set():
            raise ReadNotReplicated(str(failed[0]) if failed else "the synchronous replicas "
                                    "did not answer")

    def _release(self) -> None:
        with self._lock:
            held = self._held()
            ready = [w for w in self._waiters if w.position <= held]
            if ready:
                self._waiters = [w for w in self._waiters if w.position > held]
        for w in ready:
            w.on_ok()

    # the policy

    def _loop(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                if self._stale or self._clock() - self._loaded_at > REFRESH_S:
                    self.reload()
                self._let_go()
                self.tick()
                self.acknowledge_joins()
            except EtcdUnavailable as e:
                log.warning("synchronous replicas: %s", e)
                with self._lock:
                    self._stale = True
            except Exception:  # the loop must survive anything
                log.exception("synchronous replica gate failed")

    def _let_go(self) -> None:
        """Stop waiting for the replicas whose sync entry went, once the epoch read again
        still names this volume (a replica left, or was demoted away); if it does not (a
        promotion), ``epoch_changed`` raises and the node is superseded instead.

        Raises:
            EtcdUnavailable: etcd did not answer (they stay waited for).
        """
        with self._lock:
            if not self._leaving:
                return
            leaving = set(self._leaving)
        try:
            self._epoch_changed()
        except Exception as e:  # Superseded: its waiters fail through ``supersede``
            if isinstance(e, EtcdUnavailable):
                raise
            log.warning("synchronous replicas %s left with the epoch changed: %s",
                        ", ".join(sorted(leaving)), e)
            return
        with self._lock:
            self._leaving -= leaving
        self._release()

    def acknowledge_joins(self) -> None:
        """Tell each joining (or synchronous) replica, once per join and session, that this
        node waits for it: the put comes after the gate counts the replica in, so every
        acknowledgement decided after it waits for the replica (``nodes/replica.py`` makes
        itself promotable only once every member node has said so).

        Raises:
            EtcdUnavailable: etcd did not answer (tried again next tick).
        """
        lease = self._lease()
        if not lease or self._superseded:
            return
        with self._lock:
            todo = [(rid, self._joins.get(rid, "")) for rid, state in self._states.items()
                    if state in WAITED_FOR and
                    (rid, self._joins.get(rid, ""), lease) not in self._acked]
        for rid, join in todo:
            try:
                self._etcd.put(seen_key(self._cluster, rid, self.node_id),
                               json.dumps({"join": join}).encode(), lease)
            except SessionExpired:
                return  # the session is going: the next one acknowledges again
            with self._lock:
                self._acked.add((rid, join, lease))

    def supersede(self, message: str) -> None:
        """This node's volume is no longer the primary: fail every wait now and every later
        one at once (the commits waiting may be lost with the old volume, or held by the
        promoted replica: their outcome is unknown; reads retry elsewhere)."""
        with self._lock:
            self._superseded = message
            left, self._waiters = self._waiters, []
        for w in left:
            cls = CommitNotReplicated if w.what == "commit" else ReadNotReplicated
            w.on_fail(cls(message))

    def tick(self) -> None:
        """One step of the policy (the gate's thread runs it every ``TICK_S``): fail or demote
        for the waits older than ``timeout_s``."""
        now = self._clock()
        with self._lock:
            late = [w for w in self._waiters if now - w.since > self.timeout_s]
            if not late:
                return
            oldest = min(w.position for w in late)
            laggards = sorted(rid for rid, state in self._states.items()
                              if state in WAITED_FOR and self._positions.get(rid, 0) < oldest)
            if self.policy == "strict":
                self._waiters = [w for w in self._waiters if w not in late]
        if self.policy == "strict":
            for w in late:
                cls = CommitNotReplicated if w.what == "commit" else ReadNotReplicated
                w.on_fail(cls(
                    f"synchronous replica(s) {', '.join(laggards) or '?'} did not hold "
                    f"position {w.position} within {self.timeout_s:g} s (--sync-policy "
                    f"strict)" + ("; the commit is durable here and becomes visible once they "
                                  "hold it: retry with the same idempotency key"
                                  if w.what == "commit" else "; nothing was done")))
            return
        for rid in laggards:
            log.warning("demoting synchronous replica %s to asynchronous: it did not hold "
                        "position %d within %g s (--sync-policy demote)", rid, oldest,
                        self.timeout_s)
            key, value = sync_key(self._cluster, rid), sync_value(DEMOTED, self.node_id)
            if self._epoch_compare is None:
                self._etcd.put(key, value)
            elif not self._etcd.txn_if_unchanged(self._epoch_compare(),
                                                 [EtcdClient.put_op(key, value)]):
                # The epoch changed: a promotion (maybe of this very replica) won the race.
                log.warning("not demoting %s: the epoch changed", rid)
                self._epoch_changed()
                return
            self.demotions += 1
            with self._lock:
                self._states[rid] = DEMOTED
        self._release()


class BarrierStore:
    """The node's store as its clients' reads see it: a snapshot is handed out only once the
    synchronous replicas hold every commit in it, so that no read anywhere shows a commit that
    a promotion could take away. Everything but ``read`` is the store's own."""

    def __init__(self, store: Store, gate: SyncGate) -> None:
        self._store = store
        self._gate = gate

    def read(self) -> _BarrierRead:
        """A snapshot (see ``Store.read``), once held by the synchronous replicas.

        Raises:
            ReadNotReplicated: they did not hold it within the gate's timeout.
        """
        return _BarrierRead(self._store.read(), self._gate)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class _BarrierRead:
    __slots__ = ("_ctx", "_gate")

    def __init__(self, ctx: Any, gate: SyncGate) -> None:
        self._ctx = ctx
        self._gate = gate

    def __enter__(self) -> ReadView:
        view: ReadView = self._ctx.__enter__()
        try:
            position = view.commit_position()
            if position > self._gate.held():
                self._gate.wait_held(position)
        except BaseException as e:
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        return view

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._ctx.__exit__(exc_type, exc, tb)
