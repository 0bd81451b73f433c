"""``shardless replica``: a process that keeps its own copy of the volume by following the log.

Owns: the replica's volume (its own LMDB environment, on its own disk or host), taking the first
copy, following the primary's commit log, its record in etcd, and its small gRPC face (health,
and ``ClusterService.Status`` of itself). Does not own the registry's layout or lag
(``nodes/replication.py``) nor what the log holds (``storage/commitlog.py``).

Life:

1. **Copy.** On a volume directory without a copy, it streams a consistent copy of the primary's
   replicated key space from any node (``CopyVolume``, one snapshot on the node, writes going
   on meanwhile) into ``DIR/.copy``, and moves it to ``DIR/lmdb`` once whole: a copy cut short
   (a crash, a lost node) is started again, never used half-made. The copy ends at position P.
2. **Register.** It opens its own etcd session and writes its record (mode, position P): from
   then on the leader keeps the log from P + 1.
3. **Follow.** It reads the log from its position on with ``ReadLog(follow=true)`` from any node
   of the primary (another one when that one goes), applies each message's records in one write
   transaction (durable, in position order: ``WriteView.apply_stored``) and then tells every node
   its new position (``ReportPosition``, one call in flight per node, coalescing under load) and
   writes it to its record in etcd (at most every ``PUBLISH_S``, and when the stream goes quiet).
   It is ``caught_up`` once it held the primary's last position.
4. **Lost its place.** If the log no longer holds the next position it needs (it lagged past
   the retention bounds), it says so in its log, throws its copy away and starts again at 1.

Invariant: the replica's volume is always a consistent copy at its position: every record is
applied whole in its own write transaction with the positions before it, and the position
published is one that is durable here.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import shutil
import socket
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import msgpack
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lockmgr import (
    EtcdClient,
    EtcdUnavailable,
    Session,
    SessionExpired,
    check_timing,
    parse_endpoints,
)
from nodes import server as server_mod
from nodes.commit import Unavailable
from nodes.membership import read_members
from nodes.node import Gate
from nodes.replication import (
    MODES,
    SYNC,
    ReadOnlyReplica,
    ReplicaRecord,
    replica_key,
    sync_key,
    sync_state,
    sync_value,
    wait_for_position,
)
from nodes.txn import TransactionManager
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from storage import DEFAULT_MAP_SIZE, Store, open_volume

log = logging.getLogger(__name__)

PUBLISH_S = 0.1
SYNC_CHECK_S = 1.0
MEMBERS_S = 1.0
REPORT_TIMEOUT_S = 1.0
APPLY_MESSAGES = 64  # messages applied in one write transaction at most
CLOSE_WAIT_S = 30.0  # for the snapshots in use before the volume is closed
COPY_STALL_S = 30.0  # a copy stream silent this long is given up
STREAM_STALL_S = 3.0  # a log stream silent this long is given up (the node heartbeats at 1 s)
RETRY_S = 0.5
COPY_DIR = ".copy"


@dataclass(frozen=True)
class ReplicaConfig:
    """Everything a replica process needs to start."""

    etcd: str
    volume: str
    listen: str
    mode: str = "async"
    replica_id: str = ""
    cluster: str = "shardless"
    ttl_s: int = 5
    etcd_timeout_s: float = 0.5
    map_size: int = DEFAULT_MAP_SIZE

    def validated(self) -> ReplicaConfig:
        """Check the settings; fill in the replica id from the listen address if empty.

        Raises:
            ValueError: a setting is malformed.
        """
        parse_endpoints(self.etcd)
        _host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"--listen {self.listen!r} is not HOST:PORT")
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}")
        if not self.volume:
            raise ValueError("--volume is required")
        check_timing(self.ttl_s, self.ttl_s / 6, self.etcd_timeout_s, self.ttl_s / 3)
        rid = self.replica_id or f"replica-{socket.gethostname()}-{port}"
        if "/" in rid:
            raise ValueError("--replica-id must not contain '/'")
        return ReplicaConfig(**{**self.__dict__, "replica_id": rid,
                                "volume": os.path.abspath(self.volume)})


class Replica:
    """A running replica; see the module docstring for its life."""

    def __init__(self, cfg: ReplicaConfig) -> None:
        self.cfg = cfg.validated()
        self.store: Store | None = None
        self.etcd: EtcdClient | None = None
        self.session: Session | None = None
        self.position = 0
        self.position_ts = 0.0
        self.primary_last = 0
        self.caught_up = False
        self.copies = 0
        self.started_at = time.time()
        self.stop_requested = threading.Event()
        self._published = (-1, False)
        self._last_publish = 0.0
        self._sync_state = ""
        self._sync_checked = 0.0
        self._addresses: list[str] = []
        self._members_at = 0.0
        self._stubs: dict[str, rpc.ClusterServiceStub] = {}
        self._in_flight: set[str] = set()
        self._applied = threading.Condition()
        self._avoid = ""  # a node whose stream stalled: not the next one picked
        self.readers = _Readers()
        self._face: _ReadFace | None = None
        self._pending: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="follow", daemon=True)
        self.server: grpc.Server | None = None
        self.health = health.HealthServicer()
        self.port = 0

    # life

    def start(self) -> None:
        """Serve health, then copy (if needed), register and follow in the background.

        Raises:
            RuntimeError: the listen address could not be bound.
        """
        cfg = self.cfg
        self.etcd = EtcdClient(cfg.etcd, timeout_s=cfg.etcd_timeout_s)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8,
                                                        thread_name_prefix="rpc"))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        rpc.add_ClusterServiceServicer_to_server(_StatusServicer(self), server)
        face = self._face = _ReadFace(self)
        rpc.add_RowServiceServicer_to_server(server_mod.RowService(face), server)  # type: ignore[arg-type]
        rpc.add_TableServiceServicer_to_server(server_mod.TableService(face), server)  # type: ignore[arg-type]
        rpc.add_TransactionServiceServicer_to_server(server_mod.TransactionService(face),  # type: ignore[arg-type]
                                                     server)
        try:
            self.port = server.add_insecure_port(cfg.listen)
        except RuntimeError as e:
            raise RuntimeError(f"cannot listen on {cfg.listen}: {e}") from e
        if not self.port:
            raise RuntimeError(f"cannot listen on {cfg.listen}")
        server.start()
        self.server = server
        self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        self._thread.start()

    def stop(self) -> None:
        """Stop following, withdraw the record, close everything."""
        self.stop_requested.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self.server is not None:
            self.server.stop(grace=1).wait(2)
        if self.cfg.mode == "sync" and self.etcd is not None:
            try:  # leaving: the nodes stop waiting for it
                self.etcd.delete(sync_key(self.cfg.cluster, self.cfg.replica_id))
            except EtcdUnavailable as e:
                log.warning("replica %s could not leave the synchronous set: %s",
                            self.cfg.replica_id, e)
        if self.session is not None:
            self.session.close()  # its record goes with the lease
        if self.store is not None:
            self._close_store(self.store)
        if self.etcd is not None:
            self.etcd.close()

    def _run(self) -> None:
        while not self.stop_requested.is_set():
            try:
                if self.store is None:
                    self.store = self._open_or_copy()
                self._follow_once()
            except _LostPlace as e:
                log.error("replica %s lost its place: %s; taking a new copy",
                          self.cfg.replica_id, e)
                self._discard_copy()
            except (grpc.RpcError, EtcdUnavailable, SessionExpired, _NoPrimary) as e:
                log.warning("replica %s: %s; retrying", self.cfg.replica_id, _describe(e))
                self.stop_requested.wait(RETRY_S)
            except Exception:  # the loop must survive anything
                log.exception("replica %s: follow loop failed", self.cfg.replica_id)
                self.stop_requested.wait(RETRY_S)

    # the copy

    def _close_store(self, store: Store) -> None:
        if self._face is not None and not self._face.end_reads(CLOSE_WAIT_S):
            log.error("replica %s: %d snapshot(s) still in use after %g s; closing the volume "
                      "anyway", self.cfg.replica_id, self.readers.open, CLOSE_WAIT_S)
        store.close()

    def _open_or_copy(self) -> Store:
        volume = self.cfg.volume
        if os.path.exists(os.path.join(volume, "lmdb", "data.mdb")):
            store = open_volume(volume, map_size=self.cfg.map_size)
            with store.read() as view:
                self.position = view.commit_position()
            log.info("replica %s: volume %s holds position %d; following from there",
                     self.cfg.replica_id, volume, self.position)
            return store
        # Registered at position 0 while copying, the leader keeps the whole log meanwhile
        # (within its bounds), so that the records after the copy are still there after it.
        self.position, self.caught_up = 0, False
        self._ensure_session()
        self._publish(force=True)
        staging = os.path.join(volume, COPY_DIR)
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        store = open_volume(staging, map_size=self.cfg.map_size)
        try:
            position, items = self._copy_into(store)
        finally:
            store.close()
        # What is left at the copy's place (a discarded copy half removed when the process
        # died) holds no data.mdb, so nothing of use: the whole copy takes its place.
        shutil.rmtree(os.path.join(volume, "lmdb"), ignore_errors=True)
        os.replace(os.path.join(staging, "lmdb"), os.path.join(volume, "lmdb"))
        shutil.rmtree(staging, ignore_errors=True)
        self.copies += 1
        log.info("replica %s: copied %d items at position %d into %s", self.cfg.replica_id,
                 items, position, volume)
        store = open_volume(volume, map_size=self.cfg.map_size)
        self.position = position
        return store

    def _copy_into(self, store: Store) -> tuple[int, int]:
        address = self._pick_node()
        with grpc.insecure_channel(address) as channel:
            stream = rpc.ClusterServiceStub(channel).CopyVolume(api.CopyVolumeRequest())
            heard, finished = [time.monotonic()], threading.Event()

            def watchdog() -> None:  # a node frozen mid-copy must not hold the copy forever
                while not finished.wait(1.0):
                    if time.monotonic() - heard[0] > COPY_STALL_S:
                        self._avoid = address
                        stream.cancel()
                        return

            threading.Thread(target=watchdog, name="copy-watchdog", daemon=True).start()
            position, items = -1, 0
            try:
                for msg in stream:
                    heard[0] = time.monotonic()
                    if self.stop_requested.is_set():
                        stream.cancel()
                        raise _NoPrimary("stopping")
                    position = msg.position
                    pairs = msgpack.unpackb(msg.items, raw=False) if msg.items else []
                    with store.write() as view:
                        items += view.load_copy((bytes(k), bytes(v)) for k, v in pairs)
                        if msg.done:
                            view.restart_log_at(position)
                    if msg.done:
                        return position, items
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.CANCELLED:
                    raise _NoPrimary(f"the copy from {address} said nothing for "
                                     f"{COPY_STALL_S:g} s; copying from another node") from e
                raise
            finally:
                finished.set()
        raise _NoPrimary(f"the copy from {address} ended before it was whole")

    def _discard_copy(self) -> None:
        store, self.store = self.store, None  # new reads are refused from here
        if store is not None:
            self._close_store(store)
        shutil.rmtree(os.path.join(self.cfg.volume, "lmdb"), ignore_errors=True)
        self.position, self.caught_up = 0, False

    # following

    def _follow_once(self) -> None:
        assert self.store is not None
        self._ensure_session()
        self._publish(force=True)
        address = self._pick_node()
        log.info("replica %s: following the log from %s at position %d", self.cfg.replica_id,
                 address, self.position + 1)
        with grpc.insecure_channel(address) as channel:
            stream = rpc.ClusterServiceStub(channel).ReadLog(api.ReadLogRequest(
                start_position=self.position + 1, follow=True, batch_records=1000))
            # A receiving thread queues the messages; this one applies everything queued in
            # one write transaction (one sync for many messages when it falls behind).
            inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
            receiver = threading.Thread(target=_receive, args=(stream, inbox), daemon=True,
                                        name="receive")
            receiver.start()
            heard = time.monotonic()
            try:
                while not self.stop_requested.is_set():
                    try:
                        first = inbox.get(timeout=0.5)
                    except queue.Empty:
                        # The node sends a message at least once a second: one that says
                        # nothing for longer is frozen or cut off; read from another.
                        if time.monotonic() - heard > STREAM_STALL_S:
                            self._avoid = address
                            raise _NoPrimary(f"no message from {address} for "
                                             f"{STREAM_STALL_S:g} s; reading elsewhere") from None
                        continue
                    heard = time.monotonic()
                    msgs = [first]
                    while len(msgs) < APPLY_MESSAGES:
                        try:
                            msgs.append(inbox.get_nowait())
                        except queue.Empty:
                            break
                    failure = next((m for m in msgs if isinstance(m, BaseException)), None)
                    msgs = msgs[:msgs.index(failure)] if failure is not None else msgs
                    if msgs:
                        self._apply(msgs)
                        if any(m.records for m in msgs):
                            self._report()  # sync: the nodes waiting for it hear at once
                        self._ensure_session()
                        self._maybe_join_sync_set(msgs[-1].last_position)
                        # Its record in etcd: at once when it has just caught up, else
                        # throttled.
                        self._publish(force=self.caught_up != self._published[1])
                    if failure is not None:
                        raise failure
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.OUT_OF_RANGE:
                    raise _LostPlace(e.details() or "position gone") from e
                if e.code() == grpc.StatusCode.CANCELLED and self.stop_requested.is_set():
                    return
                raise
            finally:
                stream.cancel()
                receiver.join(timeout=5)

    def _apply(self, msgs: list[api.ReadLogResponse]) -> None:
        assert self.store is not None
        last = msgs[-1].last_position
        records = [r for m in msgs for r in m.records]
        if records:
            with self.store.write() as view:
                for r in records:
                    view.apply_stored(r.position, r.data)
            with self._lock:
                self.position = records[-1].position
                self.position_ts = records[-1].ts
            with self._applied:
                self._applied.notify_all()
        self.primary_last = max(self.primary_last, last)
        if not self.caught_up and self.position >= last:
            self.caught_up = True
            self.health.set("", health_pb2.HealthCheckResponse.SERVING)
            log.info("replica %s caught up at position %d", self.cfg.replica_id,
                     self.position)

    # etcd

    def _ensure_session(self) -> None:
        assert self.etcd is not None
        if self.session is not None and self.session.is_valid():
            return
        if self.session is not None:
            self.session.close()
        self.session = Session(self.etcd, self.cfg.ttl_s,
                               etcd_timeout_s=self.cfg.etcd_timeout_s)
        self._published = (-1, False)

    def _publish(self, force: bool = False) -> None:
        assert self.etcd is not None and self.session is not None
        now = time.time()
        state = (self.position, self.caught_up)
        if state == self._published or (not force and now - self._last_publish < PUBLISH_S):
            return
        rec = ReplicaRecord(self.cfg.replica_id, self.cfg.listen, self.cfg.mode,
                            self.position, self.position_ts, self.caught_up, os.getpid(),
                            self.started_at, now)
        self.etcd.put(replica_key(self.cfg.cluster, self.cfg.replica_id), rec.encode(),
                      self.session.lease_id)
        self._published, self._last_publish = state, now

    def _maybe_join_sync_set(self, last: int) -> None:
        """In sync mode, once this replica holds the primary's last position: make sure it is
        in the synchronous set (joining it, or again after a demotion)."""
        if self.cfg.mode != "sync" or self.position < last:
            return
        assert self.etcd is not None
        now = time.monotonic()
        if self._sync_state == SYNC and now - self._sync_checked < SYNC_CHECK_S:
            return
        kv = self.etcd.get(sync_key(self.cfg.cluster, self.cfg.replica_id))
        self._sync_checked = now
        if kv is None or sync_state(kv.value) != SYNC:
            self._publish(force=True)  # the position first: nodes then wait for no stale one
            self.etcd.put(sync_key(self.cfg.cluster, self.cfg.replica_id),
                          sync_value(SYNC, self.cfg.replica_id))
            log.info("replica %s is in the synchronous set from position %d%s",
                     self.cfg.replica_id, self.position,
                     " again (it was demoted)" if kv is not None else "")
        self._sync_state = SYNC

    def _report(self) -> None:
        """Tell every node of the primary the position now held, without waiting: one call in
        flight per node, the latest position sent when it returns (so reports coalesce under
        load). A node that does not answer learns it from the record in etcd."""
        now = time.monotonic()
        if now - self._members_at > MEMBERS_S:
            assert self.etcd is not None
            try:
                self._addresses = sorted({m.address for m in
                                          read_members(self.etcd, self.cfg.cluster)})
                self._members_at = now
            except EtcdUnavailable:
                pass
        for address in self._addresses:
            self._report_to(address, self.position)

    def _report_to(self, address: str, position: int) -> None:
        with self._lock:
            if address in self._in_flight:
                self._pending[address] = max(position, self._pending.get(address, 0))
                return
            self._in_flight.add(address)
            stub = self._stubs.get(address)
            if stub is None:
                stub = self._stubs[address] = rpc.ClusterServiceStub(
                    grpc.insecure_channel(address))
        call = stub.ReportPosition.future(api.ReportPositionRequest(
            replica_id=self.cfg.replica_id, position=position), timeout=REPORT_TIMEOUT_S)
        call.add_done_callback(lambda _f: self._reported(address, position))

    def _reported(self, address: str, sent: int) -> None:
        with self._lock:
            self._in_flight.discard(address)
            nxt = self._pending.pop(address, 0)
        if nxt > sent and not self.stop_requested.is_set():
            self._report_to(address, nxt)

    def _pick_node(self) -> str:
        assert self.etcd is not None
        members = read_members(self.etcd, self.cfg.cluster)
        if not members:
            raise _NoPrimary("no node of the primary is registered in etcd")
        addresses = [m.address for m in members]
        others = [a for a in addresses if a != self._avoid]
        self._avoid = ""
        return random.choice(others or addresses)

    def status(self) -> api.StatusResponse:
        """This replica's own view: its id, volume and position."""
        return api.StatusResponse(node_id=self.cfg.replica_id, volume=self.cfg.volume,
                                  commit_position=self.position, cluster=self.cfg.cluster)


@dataclass(frozen=True)
class _Identity:
    node_id: str
    listen: str


class _ReadFace:
    """What the node's servicers (``nodes/server.py``) need of a node, for a replica: reads
    from its own volume at its position (``min_position`` waits for the position to be
    applied), read-only transactions on a snapshot of it; writes, DDL and read-write
    transactions refused with ``ReadOnlyReplica``."""

    def __init__(self, replica: Replica) -> None:
        self._replica = replica
        self.gate = Gate()
        self.cfg = _Identity(replica.cfg.replica_id, replica.cfg.listen)
        self.committer = _Refuse(replica)
        # Read-only transactions need only snapshots; a read-write one asks the lock manager
        # first, which refuses.
        self.txns = TransactionManager(replica.cfg.replica_id, replica.cfg.listen,
                                       self,  # type: ignore[arg-type]
                                       self.committer,  # type: ignore[arg-type]
                                       _Refuse(replica))  # type: ignore[arg-type]

    def read(self) -> Any:
        """A snapshot of the replica's volume (``Store.read``), for read-only transactions."""
        return self.reads.read()

    @property
    def reads(self) -> _Snapshots:
        store = self._replica.store
        if store is None or not self._replica.caught_up:
            raise Unavailable(f"replica {self._replica.cfg.replica_id} is still taking its copy "
                              f"of the volume; read elsewhere (nothing was done)")
        return _Snapshots(store, self._replica.readers)

    def end_reads(self, timeout_s: float) -> bool:
        """Abort the open transactions and wait for the snapshots in use to end (before the
        volume is closed); return whether they all did."""
        for txn in self.txns.open_transactions():
            self.txns.abort(txn.txn_id, "REPLICA_VOLUME_CLOSING",
                            "the replica's copy of the volume is closing")
        return self._replica.readers.wait_idle(timeout_s)

    def wait_for_position(self, position: int, timeout_s: float | None) -> None:
        def wake(s: float) -> None:
            with self._replica._applied:
                self._replica._applied.wait(s)

        wait_for_position(self.reads, position, timeout_s, wake,
                          f"replica {self._replica.cfg.replica_id}")


class _Readers:
    """Counts the snapshots of the replica's volume in use, so that it is closed only when
    none is (closing an LMDB environment under an open transaction is not allowed)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.open = 0

    def enter(self) -> None:
        with self._cond:
            self.open += 1

    def leave(self) -> None:
        with self._cond:
            self.open -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.open == 0, timeout=timeout_s)


class _Snapshots:
    """``read()`` of a store, counted in ``_Readers``."""

    def __init__(self, store: Store, readers: _Readers) -> None:
        self._store = store
        self._readers = readers

    def read(self) -> _CountedRead:
        return _CountedRead(self._store.read(), self._readers)


class _CountedRead:
    def __init__(self, ctx: Any, readers: _Readers) -> None:
        self._ctx = ctx
        self._readers = readers

    def __enter__(self) -> Any:
        self._readers.enter()
        try:
            return self._ctx.__enter__()
        except BaseException:
            self._readers.leave()
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            self._ctx.__exit__(*exc)
        finally:
            self._readers.leave()


class _Refuse:
    """Every call raises ``ReadOnlyReplica``, naming a primary node."""

    def __init__(self, replica: Replica) -> None:
        self._replica = replica

    def __getattr__(self, name: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            r = self._replica
            primary = ", ".join(r._addresses[:1]) or "see shardless status"
            raise ReadOnlyReplica(
                f"replica {r.cfg.replica_id} serves reads only (its copy of the volume is at "
                f"position {r.position}); send writes, DDL and interactive transactions to a "
                f"primary node ({primary})")
        return refuse


class _StatusServicer(rpc.ClusterServiceServicer):
    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def Status(self, request: api.StatusRequest, context: grpc.ServicerContext
               ) -> api.StatusResponse:
        return self.replica.status()


def _receive(stream: Any, inbox: queue.SimpleQueue[Any]) -> None:
    """Queue every message of ``stream``, then what ended it (a ``_NoPrimary`` when the node
    ended it, or the error)."""
    try:
        for msg in stream:
            inbox.put(msg)
        inbox.put(_NoPrimary("the node ended the log stream (it is leaving)"))
    except grpc.RpcError as e:
        inbox.put(e)


class _LostPlace(Exception):
    """The primary's log no longer holds the next position this replica needs."""


class _NoPrimary(Exception):
    """No node of the primary could give what was asked."""


def _describe(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError):
        return f"{e.code().name}: {e.details()}"  # type: ignore[attr-defined]
    return str(e)
