"""A read-only node on a replica's volume: ``shardless node --volume DIR`` on the directory of
a replica's copy (its identity says ``replica``, ``storage/volume.py``).

Owns: serving reads from the copy that the replica process on the same host keeps up to date
(Get, BatchGet, Scan and read-only transactions at the copy's position; ``min_position`` waits
for it), refusing writes with a status that names a primary node, following the copy when the
replica takes a new one, and handing over to a full node when the copy becomes the primary.
Does not own the copy: it never writes to it (the replica process does).

Life:

1. **Open.** It opens the copy's LMDB environment (several processes of a host may, LMDB's
   readers take no lock), waiting while there is none yet (the replica is taking it: the
   node reports NOT_SERVING meanwhile).
2. **Serve.** Reads run on snapshots of the copy, so each sees one position; the replica's
   commits are seen by the next snapshot. A read that asks for a position the copy does not
   hold yet looks again every ``POLL_S`` until its deadline.
3. **A new copy.** A replica that lost its place throws its copy away and takes another: the
   node sees the file change (``CHECK_S``), refuses new reads (UNAVAILABLE, nothing done),
   waits for the snapshots in use, and opens the new copy.
4. **Promotion.** When the epoch record names this copy's volume as the primary
   (``nodes/epoch.py``), the node stops and its process serves the volume as a full node on
   the same address (``nodes/cli.py``): "nodes on the replica's host start serving writes".

It is not a member of the primary (the primary's nodes neither wait for it nor count it): it
registers only a record under ``<cluster>/readers/<id>`` on a lease of its own, with its address
and position, so that ``shardless status`` lists it; the record goes with its lease.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lockmgr import EtcdClient, EtcdUnavailable, Session, SessionExpired
from nodes import server as server_mod
from nodes.changes import ChangeService, add_change_service
from nodes.commit import Unavailable
from nodes.config import NodeConfig
from nodes.epoch import PRIMARY, read_epoch
from nodes.heap import Trimmer
from nodes.membership import read_members
from nodes.readface import ReadFace, log_held
from nodes.replication import ReaderRecord, reader_key
from nodes.security import AuthGuard, Authority
from nodes.status import DecodeGuard
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from storage import REPLICA, StorageError, Store, open_volume

log = logging.getLogger(__name__)

POLL_S = 0.002  # how often a read waiting for a position looks at the copy again
CHECK_S = 0.25  # how often the node checks the copy is still the one it opened, and the epoch
MEMBERS_S = 1.0  # how often it refreshes the address of a primary node it names
CLOSE_WAIT_S = 30.0  # for the snapshots in use before a replaced copy is closed


def data_file(volume: str) -> str:
    """The LMDB data file of the volume in directory ``volume``."""
    return os.path.join(volume, "lmdb", "data.mdb")


def is_replica_volume(volume: str, map_size: int) -> bool:
    """Whether directory ``volume`` holds a replica's copy, or one being taken (``.copy``):
    a node started there serves reads only. Opens and closes the environment."""
    if os.path.isdir(os.path.join(volume, ".copy")) and not os.path.exists(data_file(volume)):
        return True
    if not os.path.exists(data_file(volume)):
        return False
    try:
        store = open_volume(volume, map_size=map_size)
    except StorageError:
        return False  # the node's own open says why
    try:
        with store.read() as view:
            ident = view.volume_identity()
        return ident is not None and ident.role == REPLICA
    finally:
        store.close()


class ReaderNode:
    """A running read-only node; see the module docstring for its life."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg.validated()
        self.store: Store | None = None
        self.etcd: EtcdClient | None = None
        self.authority = Authority(self._etcd, self.cfg.cluster)
        self.volume_id = ""
        self.stop_requested = threading.Event()
        self.promoted = False  # the copy became the primary: a full node takes over
        self.exit_code = 0
        self.server: grpc.Server | None = None
        self.health = health.HealthServicer()
        self.port = 0
        self.face = ReadFace(self, self.cfg.node_id, self.cfg.listen, self.cfg.limits)
        self._inode = 0
        self._addresses: list[str] = []
        self._members_at = 0.0
        self.session: Session | None = None  # the lease its record in etcd is on
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reader", daemon=True)
        self.trimmer = Trimmer(lambda: self.face.gate.admitted)

    # life

    def start(self) -> None:
        """Open the copy (if there is one yet), follow the epoch and serve.

        Raises:
            RuntimeError: the listen address could not be bound.
            EtcdUnavailable: etcd did not answer.
        """
        cfg = self.cfg
        self.etcd = cfg.security.etcd(cfg.etcd, timeout_s=cfg.etcd_timeout_s)
        self.authority.start()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.max_workers,
                                                        thread_name_prefix="rpc"),
                             maximum_concurrent_rpcs=cfg.limits.queued_calls,
                             interceptors=[DecodeGuard(), AuthGuard(self.authority)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        rpc.add_ClusterServiceServicer_to_server(_StatusServicer(self), server)
        rpc.add_RowServiceServicer_to_server(server_mod.RowService(self.face), server)  # type: ignore[arg-type]
        rpc.add_TableServiceServicer_to_server(server_mod.TableService(self.face), server)  # type: ignore[arg-type]
        rpc.add_TransactionServiceServicer_to_server(  # type: ignore[arg-type]
            server_mod.TransactionService(self.face), server)  # type: ignore[arg-type]
        add_change_service(ChangeService.on_copy(self.face, self), server)
        try:
            self.port = cfg.security.add_port(server, cfg.listen)
        except RuntimeError as e:
            raise RuntimeError(f"cannot listen on {cfg.listen}: {e}") from e
        if not self.port:
            raise RuntimeError(f"cannot listen on {cfg.listen}")
        self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        self._check()
        if self.stop_requested.is_set():  # promoted before it served at all
            return
        server.start()
        self.server = server
        if self.cfg.trim_memory:
            self.trimmer.start()
        log.info("read-only node %s serves the replica's copy in %s on %s", cfg.node_id,
                 cfg.volume, cfg.listen)
        self._thread.start()

    def _etcd(self) -> EtcdClient:
        assert self.etcd is not None
        return self.etcd

    def stop(self) -> None:
        """Stop serving and close the copy."""
        self.stop_requested.set()
        self.authority.stop()
        self.trimmer.close()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self.server is not None:
            grace = 0.1 if self.promoted else self.cfg.grace_s
            self.server.stop(grace=grace).wait(grace + 1)
        self._close()
        if self.session is not None:
            self.session.close()  # its record goes with its lease
        if self.etcd is not None:
            self.etcd.close()

    def _run(self) -> None:
        while not self.stop_requested.is_set():
            self._wake.wait(CHECK_S)
            self._wake.clear()
            if self.stop_requested.is_set():
                return
            try:
                self._check()
            except Exception:  # the loop must survive anything (etcd away: next time)
                log.exception("read-only node %s: check failed", self.cfg.node_id)

    def _check(self) -> None:
        """Open the copy if there is a new one, refresh the primary's address, and hand over
        if the epoch names this copy's volume as the primary."""
        self._follow_copy()
        assert self.etcd is not None
        try:
            if time.monotonic() - self._members_at > MEMBERS_S:
                self._addresses = sorted({m.address for m in read_members(
                    self.etcd, self.cfg.cluster) if m.volume_id != self.volume_id})
                self._members_at = time.monotonic()
                self._register()
            rec = read_epoch(self.etcd, self.cfg.cluster)
        except EtcdUnavailable as e:
            # A new client: the old one may refuse a member it saw fail (python3-etcd3 marks it
            # failed for minutes) while the others answer.
            log.warning("read-only node %s: etcd: %s; reconnecting", self.cfg.node_id, e)
            old, self.etcd = self.etcd, self.cfg.security.etcd(
                self.cfg.etcd, timeout_s=self.cfg.etcd_timeout_s)
            old.close()
            return
        if rec is not None and self.volume_id and rec.volume_id == self.volume_id and \
                rec.state == PRIMARY:
            log.warning("read-only node %s: its copy is the primary's volume now (%s); a node "
                        "takes it over on %s", self.cfg.node_id, rec.describe(),
                        self.cfg.listen)
            self.promoted = True
            self.stop_requested.set()

    def _register(self) -> None:
        """Publish its record (address, copy, position) on its own lease, for status."""
        assert self.etcd is not None
        try:
            if self.session is None or not self.session.is_valid():
                if self.session is not None:
                    self.session.close()
                self.session = Session(self.etcd, self.cfg.ttl_s,
                                       etcd_timeout_s=self.cfg.etcd_timeout_s)
            rec = ReaderRecord(self.cfg.node_id, self.cfg.listen, self.volume_id,
                               self.position, time.time())
            self.etcd.put(reader_key(self.cfg.cluster, self.cfg.node_id), rec.encode(),
                          self.session.lease_id)
        except SessionExpired as e:
            log.info("read-only node %s: could not register: %s", self.cfg.node_id, e)

    # the copy

    def _follow_copy(self) -> None:
        """Open the copy if none is open, or a new one if the replica replaced it."""
        try:
            inode = os.stat(data_file(self.cfg.volume)).st_ino
        except FileNotFoundError:
            inode = 0
        if self.store is not None and inode == self._inode:
            return
        if self.store is not None:
            log.warning("read-only node %s: the replica replaced its copy; reopening",
                        self.cfg.node_id)
            self._close()
        if not inode:
            return  # none yet: NOT_SERVING, reads refused with UNAVAILABLE
        store = open_volume(self.cfg.volume, map_size=self.cfg.map_size)
        with store.read() as view:
            ident = view.volume_identity()
        if ident is None:
            store.close()
            return  # the replica has not given it an identity yet
        self.volume_id, self._inode, self.store = ident.volume_id, inode, store
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    def _close(self) -> None:
        store, self.store = self.store, None  # new reads are refused from here
        self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        if store is None:
            return
        if not self.face.end_reads(CLOSE_WAIT_S):
            log.error("read-only node %s: %d snapshot(s) still in use after %g s; closing "
                      "the copy anyway", self.cfg.node_id, self.face.readers.open,
                      CLOSE_WAIT_S)
        store.close()

    # the read face (``nodes/readface.py``)

    @property
    def name(self) -> str:
        return f"read-only node {self.cfg.node_id}"

    @property
    def serving_store(self) -> Store | None:
        return self.store

    @property
    def not_ready(self) -> str:
        return "has no copy of the volume to read (its replica is taking one)"

    @property
    def position(self) -> int:
        try:
            with self.face.reads.read() as view:
                return int(view.commit_position())
        except Unavailable:
            return 0

    def primary_hint(self) -> str:
        return ", ".join(self._addresses[:1]) or "see shardless status"

    def wait_applied(self, timeout_s: float) -> None:
        time.sleep(min(timeout_s, POLL_S))  # another process applies: look again soon

    def status(self) -> api.StatusResponse:
        """This node's own view: its id, the copy and its position."""
        out = api.StatusResponse(node_id=self.cfg.node_id, volume=self.cfg.volume,
                                 commit_position=self.position, cluster=self.cfg.cluster,
                                 volume_id=self.volume_id)
        out.log_oldest_position, out.log_bytes = log_held(self.face)
        return out


class _StatusServicer(rpc.ClusterServiceServicer):
    def __init__(self, reader: ReaderNode) -> None:
        self.reader = reader

    def Status(self, request: api.StatusRequest, context: grpc.ServicerContext
               ) -> api.StatusResponse:
        return self.reader.status()
