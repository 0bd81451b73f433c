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
   its new position (one ``StreamPositions`` stream per node, coalescing under load) and
   writes it to its record in etcd (at most every ``PUBLISH_S``, and when the stream goes quiet).
   It is ``caught_up`` once it held the primary's last position.
4. **Lost its place.** If the log no longer holds the next position it needs (it lagged past
   the retention bounds), it says so in its log, throws its copy away and starts again at 1.

Invariant: the replica's volume is always a consistent copy at its position: every record is
applied whole in its own write transaction with the positions before it, and the position
published is one that is durable here.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
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
from nodes import promotion
from nodes import server as server_mod
from nodes.changes import ChangeService, add_change_service, read_holds
from nodes.epoch import PRIMARY, PROMOTING, EpochRecord, epoch_key, read_epoch
from nodes.leader import trim_log
from nodes.limits import Limits
from nodes.membership import MemberInfo, members_prefix, read_members
from nodes.readface import ReadFace, log_held
from nodes.replication import (
    DEMOTED,
    JOINING,
    MODES,
    SYNC,
    ReplicaRecord,
    read_replicas,
    replica_key,
    seen_prefix,
    sync_entry,
    sync_key,
    sync_value,
)
from nodes.security import INSECURE, AuthGuard, Authority, Security
from nodes.status import DecodeGuard
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from storage import (
    DEFAULT_MAP_SIZE,
    REPLICA,
    Identity,
    Retention,
    Store,
    open_volume,
)
from storage import PRIMARY as PRIMARY_ROLE
from storage.retention import DEFAULT_RETENTION

log = logging.getLogger(__name__)

PUBLISH_S = 0.1
SYNC_CHECK_S = 1.0
JOIN_CHECK_S = 0.1
DEFAULT_PROMOTE_AFTER_S = 1.0
MEMBERS_S = 1.0
TRIM_S = 1.0  # how often the replica trims its copy's log (as the leader does the primary's)
UPKEEP_S = 0.05  # how often the upkeep thread looks at the record and the synchronous set
REPORT_TIMEOUT_S = 1.0
APPLY_MESSAGES = 64  # messages applied in one write transaction at most
CLOSE_WAIT_S = 30.0  # for the snapshots in use before the volume is closed
COPY_STALL_S = 30.0  # a copy stream silent this long is given up
REPLICA_WORKERS = 8  # its gRPC workers: health, status and reads of its copy
# Reads of the copy may hold at most a quarter of them in streams (nodes/limits.py).
REPLICA_LIMITS = Limits(transactions=256, transactions_per_client=64, snapshots=64,
                        snapshots_per_client=16, streams=2, streams_per_client=2,
                        replication_streams=1, queued_calls=256)
STREAM_STALL_S = 3.0  # a log stream silent this long is given up (the node heartbeats at 1 s)
RETRY_S = 0.5
START_ETCD_WAIT_S = 30.0  # for etcd at start (to read the cluster's users)
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
    auto_promote: bool = True  # sync mode: promote itself when the primary is lost
    promote_after_s: float = DEFAULT_PROMOTE_AFTER_S
    security: Security = INSECURE  # TLS of its port, its calls and etcd (nodes/security.py)
    log_retention: Retention = DEFAULT_RETENTION  # of its own copy's log (``_trim_log``)

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
        self.security.validated()
        self.log_retention.validated()
        if self.promote_after_s <= 0:
            raise ValueError("--promote-after must be positive")
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
        self.authority = Authority(self._etcd, cfg.cluster)
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
        self._trimmed_at = 0.0
        self.trimmed = 0  # commit-log records this replica removed from its copy (its log)
        self._reporters: dict[str, _Reporter] = {}
        self._applied = threading.Condition()
        self._avoid = ""  # a node whose stream stalled: not the next one picked
        self.volume_id = ""
        self.epoch: EpochRecord | None = None  # the epoch whose primary it follows
        self.promoted: EpochRecord | None = None  # set once this replica became the primary
        self.exit_code = 0
        self._epoch_changed = threading.Event()
        self._epoch_cancel: Any = None
        self._stream: Any = None
        self._join = ""
        self._join_head: int | None = None  # H of this join, once asked (it may be 0)
        self._last_heard = time.monotonic()
        self._face: ReadFace | None = None
        self._upkeep_wake = threading.Event()
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
        self.etcd = cfg.security.etcd(cfg.etcd, timeout_s=cfg.etcd_timeout_s)
        self._start_authority()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=REPLICA_WORKERS,
                                                        thread_name_prefix="rpc"),
                             maximum_concurrent_rpcs=REPLICA_LIMITS.queued_calls,
                             interceptors=[DecodeGuard(), AuthGuard(self.authority)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        rpc.add_ClusterServiceServicer_to_server(_StatusServicer(self), server)
        face = self._face = ReadFace(self, cfg.replica_id, cfg.listen, REPLICA_LIMITS)
        rpc.add_RowServiceServicer_to_server(server_mod.RowService(face), server)  # type: ignore[arg-type]
        rpc.add_TableServiceServicer_to_server(server_mod.TableService(face), server)  # type: ignore[arg-type]
        rpc.add_TransactionServiceServicer_to_server(server_mod.TransactionService(face),  # type: ignore[arg-type]
                                                     server)
        add_change_service(ChangeService.on_copy(face, self), server)
        try:
            self.port = cfg.security.add_port(server, cfg.listen)
        except RuntimeError as e:
            raise RuntimeError(f"cannot listen on {cfg.listen}: {e}") from e
        if not self.port:
            raise RuntimeError(f"cannot listen on {cfg.listen}")
        server.start()
        self.server = server
        self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        self._thread.start()

    def _on_epoch(self, events: Any) -> None:
        """The epoch record changed (on the etcd client's watch thread): end the stream
        being read, so that the follow loop reads the record at once."""
        self._epoch_changed.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()

    def _watch_epoch(self) -> None:
        assert self.etcd is not None
        if self._epoch_cancel is None:
            kv = self.etcd.get(epoch_key(self.cfg.cluster))
            rev = kv.mod_revision if kv is not None else 0
            self._epoch_cancel = self.etcd.watch_prefix(epoch_key(self.cfg.cluster), rev + 1,
                                                        self._on_epoch)

    def _etcd(self) -> EtcdClient:
        assert self.etcd is not None
        return self.etcd

    def _start_authority(self) -> None:
        """Read the cluster's users, waiting for etcd up to its start bound."""
        deadline = time.monotonic() + START_ETCD_WAIT_S
        while True:
            try:
                self.authority.start()
                return
            except EtcdUnavailable:
                if time.monotonic() > deadline:
                    raise RuntimeError("etcd did not answer: cannot read the cluster's "
                                       "users") from None
                time.sleep(0.2)

    def _open(self, address: str) -> grpc.Channel:
        """A channel to a node, as one of the cluster's own processes."""
        return self.authority.channel(self.cfg.security, address)

    def stop(self) -> None:
        """Stop following, withdraw the record, close everything."""
        self.stop_requested.set()
        self.authority.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._close_reporters()
        if self._epoch_cancel is not None:
            self._epoch_cancel()
        if self.server is not None:  # promoted: a node takes the address over at once
            grace = 0.1 if self.promoted is not None else 1.0
            self.server.stop(grace=grace).wait(grace + 1)
        if self.cfg.mode == "sync" and self.etcd is not None and self.promoted is None:
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
        # Nothing but a stop may end this thread: the code in the handlers below (discarding
        # a copy, a promotion) can fail too, and a replica whose thread died would silently
        # stop following and promoting.
        while not self.stop_requested.is_set():
            try:
                self._turn()
            except Exception:
                log.exception("replica %s: follow loop failed", self.cfg.replica_id)
                self.stop_requested.wait(RETRY_S)

    def _turn(self) -> None:
        """One turn of the follow loop: follow the log until something stops it, and deal
        with what did."""
        try:
            self._watch_epoch()
            if self.store is None:
                self.store = self._open_or_copy()
            if self._check_epoch():
                return
            self._follow_once()
        except _LostPlace as e:
            log.error("replica %s lost its place: %s; taking a new copy",
                      self.cfg.replica_id, e)
            self._discard_copy()
        except _Fatal as e:
            log.error("replica %s cannot go on: %s", self.cfg.replica_id, e)
            self.exit_code = 1
            self.stop_requested.set()
        except (grpc.RpcError, EtcdUnavailable, SessionExpired, _NoPrimary) as e:
            self._publish_quietly()
            if not self._epoch_changed.is_set():
                log.warning("replica %s: %s; retrying", self.cfg.replica_id,
                            _describe(e))
                try:
                    self._maybe_promote_self()
                except (EtcdUnavailable, promotion.PromotionRefused) as pe:
                    log.warning("replica %s: no automatic promotion: %s",
                                self.cfg.replica_id, pe)
                if not self._epoch_changed.is_set():  # else: on with the promotion
                    self.stop_requested.wait(RETRY_S)

    # the epoch

    def _check_epoch(self) -> bool:
        """Read the epoch record and act on it: become the primary if it names this volume,
        wait while another replica is being promoted, and throw the copy away if the new
        primary's history parted from it; return whether the loop should start over.

        Raises:
            _LostPlace: this copy holds positions the new primary does not.
            _NoPrimary: a promotion is under way elsewhere, or there is no primary yet.
            EtcdUnavailable: etcd did not answer.
        """
        assert self.etcd is not None and self.store is not None
        self._epoch_changed.clear()
        rec = read_epoch(self.etcd, self.cfg.cluster)
        if rec is None:
            raise _NoPrimary(f"cluster {self.cfg.cluster} has no primary yet")
        if rec.volume_id == self.volume_id:
            self._become_primary(rec)
            return True
        if rec.state == PROMOTING:
            raise _NoPrimary(f"a promotion is under way ({rec.describe()})")
        known = self.epoch
        if known is not None and rec.epoch > known.epoch:
            if self.position > rec.start_position:
                raise _LostPlace(
                    f"{rec.describe()} took over the log at position {rec.start_position}; "
                    f"this copy holds {self.position}, positions the new primary does not "
                    f"have")
            log.warning("replica %s follows the new primary from position %d: %s",
                        self.cfg.replica_id, self.position + 1, rec.describe())
        if known is None or rec.epoch != known.epoch:
            self.epoch = rec
            self._set_identity_epoch(rec.epoch)
        else:
            self.epoch = rec
        return False

    def _set_identity_epoch(self, epoch: int) -> None:
        assert self.store is not None

        def update(view: Any) -> None:
            cur = view.volume_identity()
            if cur is not None and cur.role == REPLICA and cur.epoch != epoch:
                view.set_volume_identity(Identity(cur.volume_id, REPLICA, cur.created_at,
                                                  epoch))

        self.store.transact(update)

    def _become_primary(self, rec: EpochRecord) -> None:
        """This replica's volume is named by the epoch record: finish the promotion (see
        ``nodes/promotion.py``) and stop, so that a node takes the volume over."""
        assert self.etcd is not None and self.store is not None
        if rec.state == PROMOTING:
            log.warning("replica %s is being promoted at position %d: %s", self.cfg.replica_id,
                        self.position, rec.describe())
            fenced = promotion.fence_old_primary(self.etcd, self.cfg.cluster, self.volume_id)
            log.warning("replica %s: revoked %d session(s) of the old primary's nodes; "
                        "waiting %.1f s for any that did not hear of it to stop",
                        self.cfg.replica_id, fenced, rec.fence_wait_s)
            if rec.fence_wait_s and self.stop_requested.wait(rec.fence_wait_s):
                return  # stopped meanwhile: the next start finishes it
            try:
                rec = promotion.finish(self.etcd, self.cfg.cluster, rec, self.position)
            except promotion.PromotionRefused as e:
                # Taken over (``promote --force``) while this one fenced: it stays a replica
                # and, back in the loop, follows (or copies) the volume the record names now.
                log.warning("replica %s was not promoted after all: %s", self.cfg.replica_id,
                            e)
                return
        ident = None

        def promote(view: Any) -> None:
            nonlocal ident
            cur = view.volume_identity()
            ident = cur.promoted(rec.epoch)
            view.set_volume_identity(ident)

        self.store.transact(promote)
        self.promoted = rec
        log.warning("replica %s is now the primary's volume (%s); a node takes it over",
                    self.cfg.replica_id, rec.describe())
        self.stop_requested.set()

    def _maybe_promote_self(self) -> None:
        """A synchronous replica that has heard no node of the primary for
        ``promote_after_s``, and reaches none, promotes itself (``--no-auto-promote`` turns
        this off). Safe whatever the cause: see ``nodes/epoch.py``."""
        cfg = self.cfg
        if cfg.mode != "sync" or not cfg.auto_promote or self._sync_state != SYNC or \
                self.stop_requested.is_set():
            return
        if time.monotonic() - self._last_heard < cfg.promote_after_s or self.epoch is None:
            return
        assert self.etcd is not None
        for m in self._primary_members():
            try:
                with self._open(m.address) as ch:
                    got = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(), timeout=0.3)
                if got.status == health_pb2.HealthCheckResponse.SERVING:
                    return  # it answers: the trouble is elsewhere
            except grpc.RpcError:
                continue
        log.warning("replica %s has heard no node of the primary for %.1f s and reaches "
                    "none: promoting itself", cfg.replica_id,
                    time.monotonic() - self._last_heard)
        promotion.begin(self.etcd, cfg.cluster, cfg.replica_id, accept_loss=False,
                        by=f"replica {cfg.replica_id} (automatic)", ttl_s=cfg.ttl_s)
        self._epoch_changed.set()

    # the copy

    def _close_store(self, store: Store) -> None:
        if self._face is not None and not self._face.end_reads(CLOSE_WAIT_S):
            log.error("replica %s: %d snapshot(s) still in use after %g s; closing the volume "
                      "anyway", self.cfg.replica_id, self._face.readers.open, CLOSE_WAIT_S)
        store.close()

    def _open_or_copy(self) -> Store:
        volume = self.cfg.volume
        if os.path.exists(os.path.join(volume, "lmdb", "data.mdb")):
            store = open_volume(volume, map_size=self.cfg.map_size)
            try:
                self._adopt_identity(store)
            except _Superseded as old:
                store.close()
                self._set_aside(old)  # then copy the primary's, below
            except BaseException:
                store.close()
                raise
            else:
                with store.read() as view:
                    self.position = view.commit_position()
                log.info("replica %s: volume %s holds position %d; following from there",
                         self.cfg.replica_id, volume, self.position)
                return store
        # Registered at position 0 while copying, the leader keeps the whole log meanwhile
        # (within its bounds), so that the records after the copy are still there after it.
        self.position, self.caught_up = 0, False
        assert self.etcd is not None
        self.epoch = read_epoch(self.etcd, self.cfg.cluster)
        if self.epoch is None or self.epoch.state != PRIMARY:
            raise _NoPrimary("no primary to copy from yet" if self.epoch is None else
                             f"a promotion is under way ({self.epoch.describe()})")
        self._ensure_session()
        self._publish(force=True)
        staging = os.path.join(volume, COPY_DIR)
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        store = open_volume(staging, map_size=self.cfg.map_size)
        try:
            position, items = self._copy_into(store)
            identity = Identity.new(REPLICA)
            identity = Identity(identity.volume_id, REPLICA, identity.created_at,
                                self.epoch.epoch)
            store.transact(lambda view: view.set_volume_identity(identity))
        finally:
            store.close()
        # What is left at the copy's place (a discarded copy half removed when the process
        # died) holds no data.mdb, so nothing of use: the whole copy takes its place.
        shutil.rmtree(os.path.join(volume, "lmdb"), ignore_errors=True)
        os.replace(os.path.join(staging, "lmdb"), os.path.join(volume, "lmdb"))
        shutil.rmtree(staging, ignore_errors=True)
        self.copies += 1
        self.volume_id = identity.volume_id
        log.info("replica %s: copied %d items at position %d into %s (volume %s)",
                 self.cfg.replica_id, items, position, volume, self.volume_id)
        store = open_volume(volume, map_size=self.cfg.map_size)
        self.position = position
        return store

    def _set_aside(self, old: _Superseded) -> None:
        """An old primary's volume rejoins as a replica: its data (which may hold commits the
        promotion left out, never acknowledged after it) is moved aside, whole, to
        ``VOLUME/superseded/<volume id>-epoch<N>/``, and a copy of the primary's takes its
        place. Only when no node process still has the volume open (their lock files in
        ``VOLUME/nodes`` are all free): a node still on it is fenced, but its files are its own.

        Raises:
            _Fatal: a process still holds the volume.
        """
        volume = self.cfg.volume
        held = _held_lock_files(os.path.join(volume, "nodes"))
        if held:
            raise _Fatal(f"{volume} is an old primary's volume ({old.identity.volume_id}, "
                         f"superseded by {old.record.volume_id} at epoch {old.record.epoch}) "
                         f"but processes still have it open ({', '.join(held)}): stop them, "
                         f"then start the replica again")
        aside = os.path.join(volume, "superseded",
                             f"{old.identity.volume_id}-epoch{old.record.epoch}")
        n = 1
        while os.path.exists(aside if n == 1 else f"{aside}.{n}"):
            n += 1
        aside = aside if n == 1 else f"{aside}.{n}"
        os.makedirs(aside)
        os.replace(os.path.join(volume, "lmdb"), os.path.join(aside, "lmdb"))
        log.warning("replica %s: %s held the old primary's volume %s (superseded at epoch %d "
                    "by %s); its data is kept in %s (delete it when you no longer need what "
                    "it may hold past the promotion); copying the primary's volume",
                    self.cfg.replica_id, volume, old.identity.volume_id, old.record.epoch,
                    old.record.volume_id, aside)

    def _adopt_identity(self, store: Store) -> None:
        """Take the identity of an existing copy (a copy made before identities gets one).

        Raises:
            _Fatal: the volume is a primary's, not a replica's copy.
        """
        with store.read() as view:
            ident = view.volume_identity()
        if ident is None:
            ident = Identity.new(REPLICA)
            store.transact(lambda view: view.set_volume_identity(ident))
        self.volume_id = ident.volume_id
        if ident.role == PRIMARY_ROLE:
            assert self.etcd is not None
            rec = read_epoch(self.etcd, self.cfg.cluster)
            if rec is not None and rec.volume_id == ident.volume_id and rec.state == PRIMARY:
                self.promoted = rec  # promoted before this process stopped: a node runs it
                self.stop_requested.set()
                raise _NoPrimary("this replica was promoted; a node takes the volume over")
            if rec is not None and rec.state == PRIMARY and rec.volume_id != ident.volume_id:
                raise _Superseded(ident, rec)
            raise _Fatal(f"{self.cfg.volume} holds a primary's volume ({ident.volume_id}), "
                         f"not a replica's copy: start a node on it, or give the replica an "
                         f"empty directory")
        if ident.epoch and self.epoch is None:
            self.epoch = EpochRecord(ident.epoch, "", PRIMARY, 0.0, "", mod_revision=0)

    def _copy_into(self, store: Store) -> tuple[int, int]:
        address = self._pick_node()
        with self._open(address) as channel:
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
        self._refresh_addresses()
        log.info("replica %s: following the log from %s at position %d", self.cfg.replica_id,
                 address, self.position + 1)
        # The etcd work (its record, the members' addresses, joining the synchronous set) runs
        # on a thread of its own: an etcd call slow under load never holds up applying and
        # reporting, which is what the nodes wait for.
        upkeep_done = threading.Event()
        upkeep = threading.Thread(target=self._upkeep, args=(upkeep_done,), daemon=True,
                                  name="upkeep")
        upkeep.start()
        with self._open(address) as channel:
            stream = rpc.ClusterServiceStub(channel).ReadLog(api.ReadLogRequest(
                start_position=self.position + 1, follow=True, batch_records=1000))
            self._stream = stream
            if self._epoch_changed.is_set():  # changed while the stream was opened
                stream.cancel()
            # A receiving thread queues the messages; this one applies everything queued in
            # one write transaction (one sync for many messages when it falls behind).
            inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
            receiver = threading.Thread(target=_receive, args=(stream, inbox), daemon=True,
                                        name="receive")
            receiver.start()
            heard = time.monotonic()
            try:
                while not self.stop_requested.is_set() and not self._epoch_changed.is_set():
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
                    if not isinstance(first, BaseException):
                        self._last_heard = heard
                    msgs = [first]
                    while len(msgs) < APPLY_MESSAGES:
                        try:
                            msgs.append(inbox.get_nowait())
                        except queue.Empty:
                            break
                    failure = next((m for m in msgs if isinstance(m, BaseException)), None)
                    msgs = msgs[:msgs.index(failure)] if failure is not None else msgs
                    if msgs:
                        caught_up = self.caught_up
                        self._apply(msgs)
                        if any(m.records for m in msgs):
                            self._report()  # sync: the nodes waiting for it hear at once
                        if self.caught_up != caught_up:
                            self._upkeep_wake.set()  # its record says so at once
                    if failure is not None:
                        raise failure
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.OUT_OF_RANGE:
                    raise _LostPlace(e.details() or "position gone") from e
                if e.code() == grpc.StatusCode.CANCELLED and self.stop_requested.is_set():
                    return
                raise
            finally:
                self._stream = None
                stream.cancel()
                receiver.join(timeout=5)
                upkeep_done.set()
                self._upkeep_wake.set()
                upkeep.join(timeout=30)
                self._publish_quietly()

    def _upkeep(self, done: threading.Event) -> None:
        """While a stream is followed: keep the session, publish the record (throttled, and at
        once when it has just caught up), refresh the primary's addresses, and join the
        synchronous set. etcd away only delays these."""
        while not done.is_set():
            self._upkeep_wake.wait(UPKEEP_S)
            self._upkeep_wake.clear()
            if done.is_set():
                return
            try:
                self._ensure_session()
                self._maybe_join_sync_set(self.primary_last)
                self._publish(force=self.caught_up != self._published[1])
                if time.monotonic() - self._members_at > MEMBERS_S:
                    self._refresh_addresses()
                if time.monotonic() - self._trimmed_at > TRIM_S:
                    self._trim_log()
            except (EtcdUnavailable, SessionExpired) as e:
                log.warning("replica %s: %s", self.cfg.replica_id, _describe(e))
                done.wait(RETRY_S)
            except Exception:  # the thread must survive anything
                log.exception("replica %s: upkeep failed", self.cfg.replica_id)
                done.wait(RETRY_S)

    def _trim_log(self) -> None:
        """Keep the copy's log in its bounds, as the primary's leader keeps the primary's
        (``nodes/leader.py``): what the other replicas and the retention holds still need
        stays (a promotion makes this log theirs), within ``--log-max-mb`` and
        ``--log-max-age``. Without it a replica's volume would grow by every commit for ever.

        Raises:
            EtcdUnavailable: etcd did not answer (nothing was removed).
        """
        self._trimmed_at = time.monotonic()
        store, cluster = self.store, self.cfg.cluster
        if store is None or self.etcd is None:
            return
        others = [r for r in read_replicas(self.etcd, cluster)
                  if r.replica_id != self.cfg.replica_id]
        self.trimmed += trim_log(store, self.cfg.log_retention, others,
                                 read_holds(self.etcd, cluster),
                                 f"replica {self.cfg.replica_id}'s log")

    def _refresh_addresses(self) -> None:
        """The addresses of the primary's nodes, which ``_report`` tells.

        Raises:
            EtcdUnavailable: etcd did not answer.
        """
        self._addresses = sorted({m.address for m in self._primary_members()})
        self._members_at = time.monotonic()
        self._close_reporters(keep=frozenset(self._addresses))

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
                            self.started_at, now, volume_id=self.volume_id,
                            primary_last=self.primary_last)
        self.etcd.put(replica_key(self.cfg.cluster, self.cfg.replica_id), rec.encode(),
                      self.session.lease_id)
        self._published, self._last_publish = state, now

    def _publish_quietly(self) -> None:
        """Publish what it holds if that changed (while the primary is away, and a promotion
        may come next that reports the positions lost), and say nothing if etcd is away."""
        if self.store is None:
            return
        try:
            self._ensure_session()
            self._publish(force=True)
        except (EtcdUnavailable, SessionExpired) as e:
            log.info("replica %s could not publish its position: %s", self.cfg.replica_id, e)

    def _maybe_join_sync_set(self, last: int) -> None:
        """In sync mode, once this replica holds the primary's last position: join the
        synchronous set (again after a demotion), in two steps.

        1. ``joining``: every node counts it in (its acknowledgements wait for it) and says
           so under ``sync-seen/<replica>/<node>`` on its session lease, for this join.
        2. Once every registered node of the primary has said so, the replica asks a node
           for the volume's last position H; once it holds H it is ``sync``: it holds every
           commit any node acknowledged (acknowledged before a node counted it in means
           committed before its word, so at or before H; after, only once held here), and
           only then may it be promoted.
        """
        if self.cfg.mode != "sync" or self.position < last:
            return
        assert self.etcd is not None
        now = time.monotonic()
        wait_s = SYNC_CHECK_S if self._sync_state == SYNC else JOIN_CHECK_S
        if self._sync_state and now - self._sync_checked < wait_s:
            return
        key = sync_key(self.cfg.cluster, self.cfg.replica_id)
        kv = self.etcd.get(key)
        self._sync_checked = now
        state, join = sync_entry(kv.value) if kv is not None else ("", "")
        if kv is None or state == DEMOTED:
            self._publish(force=True)  # the position first: nodes then wait for no stale one
            self._join, self._join_head = uuid.uuid4().hex[:12], None
            self.etcd.put(key, sync_value(JOINING, self.cfg.replica_id, self._join))
            self._sync_state = JOINING
            log.info("replica %s is joining the synchronous set at position %d%s",
                     self.cfg.replica_id, self.position,
                     " again (it was demoted)" if kv is not None else "")
            return
        if state != JOINING:
            self._sync_state = state
            return
        if join != self._join:  # a join an earlier life of this replica began
            self._join, self._join_head = join, None
        self._sync_state = JOINING
        if self._join_head is None:
            if self._every_node_waits(join):
                self._join_head = self._primary_head()
            return
        if self.position >= self._join_head and self.etcd.txn_if_unchanged(
                {key: kv.mod_revision},
                [EtcdClient.put_op(key, sync_value(SYNC, self.cfg.replica_id, join))]):
            self._sync_state = SYNC
            log.info("replica %s is in the synchronous set from position %d: every node "
                     "waits for it, and it holds every acknowledged commit",
                     self.cfg.replica_id, self._join_head)

    def _every_node_waits(self, join: str) -> bool:
        """Whether every registered node of the primary said it waits for this join."""
        assert self.etcd is not None
        _rev, got = self.etcd.txn([
            EtcdClient.range_op(members_prefix(self.cfg.cluster)),
            EtcdClient.range_op(seen_prefix(self.cfg.cluster, self.cfg.replica_id))])
        seen = {}
        prefix = seen_prefix(self.cfg.cluster, self.cfg.replica_id)
        for kv in got[1] or ():
            try:
                seen[kv.key[len(prefix):].decode()] = (kv.lease_id,
                                                       str(json.loads(kv.value)["join"]))
            except (ValueError, KeyError, TypeError):
                continue
        primary = self.epoch.volume_id if self.epoch is not None else ""
        for m in read_members(self.etcd, self.cfg.cluster):
            if primary and m.volume_id and m.volume_id != primary:
                continue
            if seen.get(m.node_id) != (m.lease_id, join):
                return False
        return True

    def _primary_head(self) -> int | None:
        """The last position of the primary's volume, asked of one of its nodes now (None if
        none answers; 0 for a volume without commits, which an empty copy holds)."""
        for m in self._primary_members():
            try:
                with self._open(m.address) as ch:
                    st = rpc.ClusterServiceStub(ch).Status(api.StatusRequest(local_only=True),
                                                           timeout=REPORT_TIMEOUT_S)
                return int(st.commit_position)
            except grpc.RpcError:
                continue
        return None

    def _report(self) -> None:
        """Tell every node of the primary the position now held, without waiting: one stream
        of positions per node (``_Reporter``), where positions coalesce under load. A node
        that does not hear it learns it from the record in etcd."""
        position = self.position
        for address in self._addresses:
            with self._lock:
                reporter = self._reporters.get(address)
                if reporter is None:
                    reporter = self._reporters[address] = _Reporter(
                        address, self.cfg.replica_id, self._open)
            reporter.offer(position)

    def _close_reporters(self, keep: frozenset[str] = frozenset()) -> None:
        """End the position streams to the nodes not in ``keep``."""
        with self._lock:
            gone = [r for a, r in self._reporters.items() if a not in keep]
            self._reporters = {a: r for a, r in self._reporters.items() if a in keep}
        for r in gone:
            r.close()

    def _primary_members(self) -> list[MemberInfo]:
        """The registered nodes of the primary volume this replica follows."""
        assert self.etcd is not None
        primary = self.epoch.volume_id if self.epoch is not None else ""
        return [m for m in read_members(self.etcd, self.cfg.cluster)
                if not primary or not m.volume_id or m.volume_id == primary]

    def _pick_node(self) -> str:
        members = self._primary_members()
        if not members:
            raise _NoPrimary("no node of the primary is registered in etcd")
        addresses = [m.address for m in members]
        others = [a for a in addresses if a != self._avoid]
        self._avoid = ""
        return random.choice(others or addresses)

    # the read face (``nodes/readface.py``)

    @property
    def name(self) -> str:
        return f"replica {self.cfg.replica_id}"

    @property
    def serving_store(self) -> Store | None:
        return self.store if self.caught_up else None

    @property
    def not_ready(self) -> str:
        return "is still taking its copy of the volume"

    def primary_hint(self) -> str:
        return ", ".join(self._addresses[:1]) or "see shardless status"

    def wait_applied(self, timeout_s: float) -> None:
        with self._applied:
            self._applied.wait(timeout_s)

    def status(self) -> api.StatusResponse:
        """This replica's own view: its id, volume and position, its copy's log held, the
        epoch it follows, and itself as the one entry of ``replicas`` (mode, place in the
        synchronous set, and its lag behind the last position a node told it of)."""
        out = api.StatusResponse(node_id=self.cfg.replica_id, volume=self.cfg.volume,
                                 commit_position=self.position, cluster=self.cfg.cluster,
                                 volume_id=self.volume_id)
        out.log_oldest_position, out.log_bytes = log_held(self._face)
        epoch = self.epoch
        if epoch is not None:
            out.epoch, out.primary_volume_id = epoch.epoch, epoch.volume_id
        position, last = self.position, self.primary_last
        behind = max(0, last - position)
        session = self.session
        out.replicas.add(
            replica_id=self.cfg.replica_id, address=self.cfg.listen, mode=self.cfg.mode,
            position=position, caught_up=self.caught_up, lag_positions=behind,
            # what it lacks committed after the last record it holds: at most this old
            lag_seconds=max(0.0, time.time() - self.position_ts) if behind else 0.0,
            updated_at=time.time(), sync_state=self._sync_state,
            registered=session is not None and session.is_valid(),
            volume_id=self.volume_id, primary_last=last)
        return out


class _StatusServicer(rpc.ClusterServiceServicer):
    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def Status(self, request: api.StatusRequest, context: grpc.ServicerContext
               ) -> api.StatusResponse:
        return self.replica.status()


class _Reporter:
    """One stream of positions to one node (``StreamPositions``): the latest position offered
    goes out as soon as the stream takes it, and positions offered meanwhile coalesce. A
    broken stream is opened again after ``RETRY_S``, starting with the latest position
    (positions only grow, so nothing is missed that matters)."""

    def __init__(self, address: str, replica_id: str,
                 open_channel: Callable[[str], grpc.Channel]) -> None:
        self.address = address
        self._replica_id = replica_id
        self._cond = threading.Condition()
        self._latest = 0
        self._closed = False
        self._channel = open_channel(address)
        self._stub = rpc.ClusterServiceStub(self._channel)
        self._thread = threading.Thread(target=self._run, daemon=True, name="report")
        self._thread.start()

    def offer(self, position: int) -> None:
        with self._cond:
            if position > self._latest:
                self._latest = position
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._channel.close()  # ends the call at once, even to a node that does not answer
        self._thread.join(timeout=5)

    def _requests(self) -> Any:
        sent = 0
        while True:
            with self._cond:
                while not self._closed and self._latest <= sent:
                    self._cond.wait()
                if self._closed:
                    return
                sent = self._latest
            yield api.ReportPositionRequest(replica_id=self._replica_id, position=sent)

    def _run(self) -> None:
        while True:
            try:
                self._stub.StreamPositions(self._requests())
            except grpc.RpcError as e:
                log.debug("position stream to %s ended: %s", self.address, _describe(e))
            with self._cond:
                if self._closed or self._cond.wait_for(lambda: self._closed, RETRY_S):
                    return


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


class _Fatal(Exception):
    """The replica cannot run on this volume at all."""


class _Superseded(Exception):
    """The volume is an old primary's, which a promotion superseded."""

    def __init__(self, identity: Identity, record: EpochRecord) -> None:
        super().__init__(f"volume {identity.volume_id} was superseded by {record.volume_id}")
        self.identity, self.record = identity, record


def _held_lock_files(directory: str) -> list[str]:
    """The node lock files in ``directory`` that a live process holds (``flock``; see
    ``nodes/deathwatch.py``)."""
    import fcntl

    held = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            held.append(name)
        finally:
            os.close(fd)
    return held


def _describe(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError):
        return f"{e.code().name}: {e.details()}"  # type: ignore[attr-defined]
    return str(e)
