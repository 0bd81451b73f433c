"""One node process: storage, session, group committer and gRPC server, started and stopped.

Start order: open the volume, join etcd (session + member key), start the committer, start
serving, report SERVING.

Leaving (SIGTERM, SIGINT or the Drain call; ``shardless drain``) loses no client call:

1. report NOT_SERVING and refuse calls that start new work with UNAVAILABLE (nothing done, so
   any client may send them elsewhere); calls for transactions open here still pass;
2. delete the member key (clients that refresh their member list stop sending here) and give up
   the leader's post if held, so another node takes it at once; the session stays, since the
   open transactions' locks live on it;
3. wait up to ``grace_s`` for the open transactions to commit or roll back, then abort the rest
   with reason NODE_DRAINING (ABORTED: the client re-runs it on another node);
4. keep answering for ``DRAIN_S`` (UNAVAILABLE for new work, ABORTED for the transactions just
   aborted) so that clients move on before the transport goes; refuse every call, wait for those
   in flight, stop the gRPC server, drain the committer, revoke
   the session and close the volume.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from lockmgr import Election, Entry, EtcdClient, EtcdUnavailable, LockManager, Session
from nodes import server
from nodes.changes import ChangeService, LogTail, add_change_service, read_holds
from nodes.commit import AckWithheld, GroupCommitter, NoValidSession, Unavailable
from nodes.config import MAX_MESSAGE_BYTES, NodeConfig
from nodes.deathwatch import DeathWatch
from nodes.epoch import EpochGuard, EpochRecord, Superseded
from nodes.heap import Trimmer
from nodes.leader import Leader
from nodes.limits import Admission
from nodes.membership import Membership
from nodes.metrics import NodeMetrics
from nodes.replication import (
    BarrierStore,
    SyncGate,
    lag,
    read_registry,
    read_replicas,
    wait_for_position,
)
from nodes.security import AuthGuard, Authority
from nodes.status import DecodeGuard
from nodes.txn import FENCED, NODE_DRAINING, SESSION_LOST, TransactionManager, lock_free_check
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from storage import PRIMARY, Identity, StorageError, Store, open_volume

log = logging.getLogger(__name__)

VERSION = "0.1.0"
DRAIN_S = 0.5
HEALTH_CHECK_S = 0.5  # how often health is checked; NOT_SERVING after two bad checks in a row
ADMIT_WAIT_S = 1.0  # how long a batch waits for a valid session before it is refused
SERVICE_NAMES = [api.DESCRIPTOR.services_by_name[n].full_name for n in
                 ("TableService", "RowService", "TransactionService", "ClusterService",
                  "ChangeService")]


class Gate:
    """Counts calls in flight and refuses new work with ``Unavailable`` once the node leaves.

    Two steps: :meth:`drain` refuses calls that start new work but still admits calls for
    transactions already open here (so they can finish); :meth:`close` refuses everything and
    waits for the calls in flight. A refused call did nothing, so the client may send it
    anywhere else.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._in_flight = 0
        self._admitted = 0
        self._draining = False
        self._closed = False

    def enter(self, continuing: bool = False) -> _Admitted:
        """Admit one call for its duration (a context manager); ``continuing``: it belongs to
        an open transaction.

        Raises:
            Unavailable: the node is leaving and takes no such call.
        """
        with self._cond:
            if self._closed or (self._draining and not continuing):
                raise Unavailable("node is leaving the cluster; retry on another node "
                                  "(nothing was done)")
            self._in_flight += 1
            self._admitted += 1
        return _Admitted(self)

    def _leave(self) -> None:
        with self._cond:
            self._in_flight -= 1
            if self._closed:
                self._cond.notify_all()

    @property
    def admitted(self) -> int:
        """How many calls were admitted since the node started."""
        return self._admitted

    @property
    def draining(self) -> bool:
        """Whether the node has begun to leave."""
        return self._draining or self._closed

    def drain(self) -> None:
        """Refuse new work; calls for open transactions still pass."""
        with self._cond:
            self._draining = True

    def close(self, timeout_s: float) -> bool:
        """Refuse every call and wait for those in flight; return whether they all finished."""
        with self._cond:
            self._closed = True
            return self._cond.wait_for(lambda: self._in_flight == 0, timeout=timeout_s)


class _Admitted:
    """One call admitted by the gate (see ``Gate.enter``)."""

    __slots__ = ("_gate",)

    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self._gate._leave()


def lock_infos(entries: list[Entry]) -> list[api.LockInfo]:
    """Lock entries for status, in queue order per resource, each marked granted or waiting
    by the grant rule of ``lockmgr.manager``."""
    by_resource: dict[str, list[Entry]] = {}
    for e in entries:
        by_resource.setdefault(e.resource, []).append(e)
    out = []
    for res in sorted(by_resource):
        queue = sorted(by_resource[res], key=lambda e: e.create_revision)
        for i, e in enumerate(queue):
            granted = all(o.txn_id == e.txn_id or (o.mode.compatible(e.mode) and all(
                r not in o.rows or o.rows[r].compatible(m) for r, m in e.rows.items()))
                for o in queue[:i])
            out.append(api.LockInfo(resource=res, mode=e.mode.value, transaction_id=e.txn_id,
                                    node_id=e.node, granted=granted))
            table = res.split("/")[1]
            for row, mode in sorted(e.rows.items()):
                out.append(api.LockInfo(resource=f"r/{table}/{row}", mode=mode.value,
                                        transaction_id=e.txn_id, node_id=e.node,
                                        granted=granted))
    return out


class StorageFencer:
    """The ``lockmgr.Fencer`` over this node's volume: a durable fence record per session."""

    def __init__(self, store: Store, node_id: str) -> None:
        self._store = store
        self._node_id = node_id

    def fence(self, lease_id: int) -> None:
        """Write the fence record of ``lease_id`` (in its own, synced, write transaction)."""
        self._store.transact(lambda view: view.fence(lease_id, ts=time.time(),
                                                     by=self._node_id))


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _serve_reflection(srv: grpc.Server, services: list[str]) -> None:
    """Server reflection under both names tools use: ``grpc.reflection.v1alpha`` (what
    grpcio-reflection serves) and ``grpc.reflection.v1`` (what newer tools ask first, e.g.
    grpcurl and grpc-js's clients). The two protocols are the same messages under another
    package, so one servicer answers both."""
    servicer = reflection.ReflectionServicer([*services, reflection.SERVICE_NAME, REFLECTION_V1])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, srv)
    srv.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(REFLECTION_V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)})])


class Node:
    """A running node; see the module docstring for its life."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg.validated()
        self.store: Store | None = None
        self.etcd: EtcdClient | None = None
        self.authority = Authority(self._etcd, cfg.cluster)
        self.log_tail: LogTail | None = None
        self.membership: Membership | None = None
        self.committer: GroupCommitter | None = None
        self.sync_gate: SyncGate | None = None
        self.reads: BarrierStore | None = None
        self.locks: LockManager | None = None
        self.deathwatch: DeathWatch | None = None
        self.leader: Leader | None = None
        self.txns: TransactionManager | None = None
        self.server: grpc.Server | None = None
        self.shared_server: grpc.Server | None = None
        self.health = health.HealthServicer()
        self.admission = Admission(self.cfg.limits)
        self.metrics = NodeMetrics() if self.cfg.metrics_listen else None
        """The process's metrics (``--metrics-listen``; None: off), served from ``start``."""
        self.metrics_url = ""
        self.port = 0
        self.gate = Gate()
        self.trimmer = Trimmer(lambda: self.gate.admitted)
        self.epoch: EpochGuard | None = None
        self.volume_id = ""
        self.exit_code = 0
        self.stop_requested = threading.Event()
        """Set when the node has been asked to leave; whoever runs the node then calls stop."""
        self._stopped = threading.Event()

    def start(self) -> None:
        """Open the volume, join the cluster and serve.

        Raises:
            EtcdUnavailable: etcd stayed unreachable for ``etcd_wait_s``.
            RuntimeError: the listen address could not be bound.
            Superseded: the volume is not the cluster's primary (``nodes/epoch.py``).
        """
        cfg = self.cfg
        m = self.metrics
        if m is not None:  # first: a node that waits for etcd can be watched doing so
            m.watch(self)
            self.metrics_url = m.serve(cfg.metrics_listen)
            log.info("node %s: metrics at %s", cfg.node_id, self.metrics_url)
        self.store = open_volume(cfg.volume, map_size=cfg.map_size)
        identity = self._identity(self.store)
        self.volume_id = identity.volume_id
        self.etcd = cfg.security.etcd(cfg.etcd, timeout_s=cfg.etcd_timeout_s,
                                      on_call=m.observe_etcd_call if m is not None else None)
        self.epoch = EpochGuard(self.etcd, cfg.cluster, identity.volume_id, node_id=cfg.node_id,
                                on_superseded=self._superseded)
        self._start_epoch(identity)
        self.locks = LockManager(self.etcd, cfg.cluster, cfg.node_id,
                                 StorageFencer(self.store, cfg.node_id),
                                 wait_timeout_s=cfg.lock_timeout_s,
                                 escalate_after=cfg.escalate_after,
                                 on_wait=m.observe_lock_wait if m is not None else None)
        self.sync_gate = SyncGate(self.etcd, cfg.cluster, node_id=cfg.node_id,
                                  policy=cfg.sync_policy, timeout_s=cfg.sync_timeout_s,
                                  lease=self._lease_id, epoch_compare=self.epoch.compare,
                                  epoch_changed=self._epoch_changed)
        self.reads = BarrierStore(self.store, self.sync_gate)
        self.committer = GroupCommitter(self.store, cfg.node_id,
                                        lock_free_check=lock_free_check(cfg.escalate_after),
                                        ack_after=self.sync_gate.after, admit=self._admit,
                                        confirm=self._confirm,
                                        on_group=m.observe_group if m is not None else None)
        self.membership = Membership(self.etcd, cluster=cfg.cluster, node_id=cfg.node_id,
                                     address=cfg.listen, ttl_s=cfg.ttl_s,
                                     etcd_timeout_s=cfg.etcd_timeout_s, group=cfg.group,
                                     public_address=cfg.public_listen,
                                     on_started=self._session_started,
                                     on_lost=self._session_lost,
                                     before_close=self.locks.detach,
                                     volume_id=identity.volume_id,
                                     epoch_compare=self.epoch.compare,
                                     epoch_changed=self._epoch_changed)
        self.txns = TransactionManager(cfg.node_id, cfg.listen, self.reads, self.committer,  # type: ignore[arg-type]
                                       self.locks, idle_timeout_s=cfg.idle_timeout_s,
                                       session_valid=self.membership.is_valid,
                                       on_fenced=self._fenced, admission=self.admission,
                                       id_key=cfg.cluster)
        self.deathwatch = DeathWatch(cfg.volume, cfg.node_id, self.etcd.revoke,
                                     lease_ttl=(self.etcd.time_to_live
                                                if cfg.kill_frozen_peers else None))
        self.membership.start(cfg.etcd_wait_s)
        self.authority.start()  # before serving: never open while authentication is on
        self.sync_gate.start()  # before serving: no commit is acknowledged before it knows the set
        self.deathwatch.start()
        self.leader = Leader(Election(self.etcd, cfg.cluster), self.membership, self.locks,
                             self.store, node_id=cfg.node_id, address=cfg.listen,
                             log_retention=cfg.log_retention,
                             replicas=lambda: read_replicas(self.etcd, cfg.cluster),
                             holds=lambda: read_holds(self._etcd(), cfg.cluster))
        self.leader.start()
        self.log_tail = LogTail(self.reads, self.committer,  # for the change streams
                                version=self.store.version)
        pool = futures.ThreadPoolExecutor(max_workers=cfg.max_workers, thread_name_prefix="rpc")
        srv = self._server(pool, reuse_port=False)
        try:
            self.port = cfg.security.add_port(srv, cfg.listen)
        except RuntimeError as e:
            raise RuntimeError(f"cannot listen on {cfg.listen}: {e}") from e
        srv.start()
        self.server = srv
        if cfg.public_listen:  # one of a node's processes: serve the node's address too
            shared = self._server(pool, reuse_port=True)
            try:
                cfg.security.add_port(shared, cfg.public_listen)
            except RuntimeError as e:
                raise RuntimeError(f"cannot listen on {cfg.public_listen}: {e}") from e
            shared.start()
            self.shared_server = shared
        self.admission.start()
        if cfg.trim_memory:
            self.trimmer.start()
        self._set_health(True)
        threading.Thread(target=self._health_loop, name="health", daemon=True).start()
        log.info("node %s serving on %s (volume %s, etcd %s)", cfg.node_id, cfg.listen,
                 cfg.volume, cfg.etcd)

    def _etcd(self) -> EtcdClient:
        assert self.etcd is not None
        return self.etcd

    def _set_health(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ["", *SERVICE_NAMES]:
            self.health.set(name, status)  # ignored once the node is leaving

    def cannot_serve(self) -> str:
        """Why the node cannot serve now ("" if it can): no valid session (it cannot commit
        or lock), or its volume cannot be read (reader table full, storage failing)."""
        if not self._lease_id():
            return "no valid session in etcd"
        assert self.store is not None
        try:
            with self.store.read():
                pass
        except StorageError as e:
            return f"cannot read its volume: {e}"
        return ""

    def _health_loop(self) -> None:
        """Keep the health status true: NOT_SERVING while the node cannot serve."""
        # Nothing may end this thread but stop(): the status would stay as it was for ever
        # (SERVING while the node cannot serve, or NOT_SERVING once it can again).
        serving, bad = True, 0
        while not self._stopped.wait(HEALTH_CHECK_S):
            try:
                why = self.cannot_serve()
            except Exception as e:  # e.g. the volume failing otherwise than StorageError
                why = f"checking failed: {e!r}"
            bad = bad + 1 if why else 0
            if serving and bad >= 2:
                serving = False
                log.warning("health: NOT_SERVING (%s)", why)
                self._set_health(False)
            elif not serving and not why:
                serving = True
                log.info("health: SERVING again")
                self._set_health(True)

    def _server(self, pool: futures.ThreadPoolExecutor, *, reuse_port: bool) -> grpc.Server:
        """A gRPC server with every service of the node. ``reuse_port``: for the address the
        processes of one node share (the kernel spreads connections over them); otherwise a
        second process on the port is an error, not a silent share."""
        opts = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 1 if reuse_port else 0)]
        # The metrics' interceptor first, so that it counts what DecodeGuard and AuthGuard
        # refuse too.
        interceptors: list[grpc.ServerInterceptor] = [DecodeGuard(), AuthGuard(self.authority)]
        if self.metrics is not None:
            interceptors.insert(0, self.metrics.interceptor())
        srv = grpc.server(pool, options=opts, interceptors=interceptors,
                          maximum_concurrent_rpcs=self.cfg.limits.queued_calls)
        rpc.add_TableServiceServicer_to_server(server.TableService(self), srv)
        rpc.add_RowServiceServicer_to_server(server.RowService(self), srv)
        rpc.add_TransactionServiceServicer_to_server(server.TransactionService(self), srv)
        rpc.add_ClusterServiceServicer_to_server(server.ClusterService(self), srv)
        add_change_service(ChangeService(self), srv)  # Watch's messages are bytes
        health_pb2_grpc.add_HealthServicer_to_server(self.health, srv)
        _serve_reflection(srv, [*SERVICE_NAMES,
                                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
        return srv

    @staticmethod
    def _identity(store: Store) -> Identity:
        """The volume's identity; a volume without one (new, or made before identities) is a
        primary's."""
        with store.read() as view:
            got = view.volume_identity()
        if got is not None:
            return got

        def make(view: Any) -> Identity:
            cur = view.volume_identity()  # another node on the volume may have just made it
            if cur is None:
                cur = Identity.new(PRIMARY)
                view.set_volume_identity(cur)
            return cur

        return store.transact(make)

    def _start_epoch(self, identity: Identity) -> None:
        """Read the epoch record (creating epoch 1 on a primary's volume if there is none)
        and follow it; refuse to start on a volume that is not the primary."""
        assert self.epoch is not None
        deadline = time.monotonic() + self.cfg.etcd_wait_s
        while True:
            try:
                self.epoch.start(max(self.cfg.etcd_wait_s, 60.0),
                                 may_claim=identity.role == PRIMARY)
                return
            except TimeoutError as e:
                raise Superseded(str(e)) from e
            except EtcdUnavailable as e:
                if time.monotonic() > deadline:
                    raise
                log.warning("etcd not reachable yet (%s); retrying", e)
                time.sleep(0.2)

    def _lease_id(self) -> int:
        m = self.membership
        s = m.session if m is not None else None
        return s.lease_id if s is not None and s.is_valid() else 0

    def _epoch_changed(self) -> None:
        """A compare on the epoch failed: read it again; raise if this volume is superseded.

        Raises:
            Superseded: it is.
            EtcdUnavailable: etcd did not answer.
        """
        assert self.epoch is not None
        self.epoch.refresh()
        self.epoch.check()

    def _admit(self) -> None:
        """Whether this node may commit at all (before every batch; ``nodes/epoch.py``).

        Raises:
            NoValidSession: its session is not valid (past its deadline, or being replaced).
            Unavailable: its volume was superseded; nothing of the batch is applied.
        """
        assert self.epoch is not None
        try:
            self.epoch.check()
        except Superseded as e:
            raise Unavailable(f"node {self.cfg.node_id} does not commit: {e}") from None
        deadline = time.monotonic() + ADMIT_WAIT_S
        while not self._lease_id() and time.monotonic() < deadline and \
                not self.stop_requested.is_set():
            time.sleep(0.02)  # a new session is usually there within a few round trips
        if not self._lease_id():
            raise NoValidSession(f"node {self.cfg.node_id} has no valid session right now (etcd "
                              f"unreachable or the session being replaced); retry (nothing "
                              f"was done)")

    def _confirm(self) -> None:
        """Whether this node may still acknowledge what it committed (as a batch is answered).

        ``_admit`` ran before the write transaction; a freeze since then may have outlasted
        the session, and an asynchronous promotion (which revokes this node's session and then
        waits out its TTL, ``nodes/promotion.py``) may have finished meanwhile. A session still
        valid here means no promotion finished: one that revoked it waited past the deadline
        this node keeps, and a session started later was registered under the epoch, which a
        promotion changes first. What is left is the time from here to the send, the window of
        every lease scheme.

        Raises:
            AckWithheld: it may not (the commit stands; its outcome is unknown to the client).
        """
        assert self.epoch is not None
        try:
            self.epoch.check()
        except Superseded as e:
            raise AckWithheld(f"node {self.cfg.node_id} committed this but may not acknowledge "
                              f"it: {e}; retry on the new primary with the same idempotency "
                              f"key") from None
        if not self._lease_id():
            raise AckWithheld(f"node {self.cfg.node_id} committed this but its session ended "
                              f"before it could answer (a freeze or etcd away); the outcome is "
                              f"unknown: retry with the same idempotency key")

    def _superseded(self, record: EpochRecord) -> None:
        """The epoch record names another volume: stop committing at once, fail what waits
        for the synchronous replicas, abort the transactions, and leave."""
        message = (f"volume {self.volume_id} was superseded by {record.describe()}; node "
                   f"{self.cfg.node_id} stops. A commit waiting for its answer may or may not "
                   f"be on the new primary: retry it there with the same idempotency key")
        if self.sync_gate is not None:
            self.sync_gate.supersede(message)
        if self.txns is not None:
            for t in self.txns.open_transactions():
                self.txns.abort(t.txn_id, FENCED, message)
        self.exit_code = 3
        self.request_stop()

    def _session_started(self, session: Session) -> None:
        assert self.deathwatch is not None and self.locks is not None
        self.deathwatch.add_lease(session.lease_id)  # first: peers revoke it if we die now
        self.locks.attach(session)

    def _session_lost(self, session: Session) -> None:
        assert self.txns is not None
        self.txns.abort_session(session.lease_id, SESSION_LOST,
                                f"session {session.lease_id:x} of node {self.cfg.node_id} "
                                f"was lost")

    def _fenced(self, lease_id: int) -> None:
        assert self.membership is not None and self.txns is not None
        log.warning("session %x is fenced; aborting its transactions, starting a new session",
                    lease_id)
        self.txns.abort_session(lease_id, FENCED, f"session {lease_id:x} is fenced")
        self.membership.expire(lease_id)

    def wait_for_position(self, position: int, timeout_s: float | None) -> None:
        """Return once the volume holds commit ``position`` (``min_position`` reads).

        Raises:
            PositionNotReached: not within ``timeout_s``.
        """
        assert self.store is not None and self.committer is not None
        committer = self.committer
        seen = [committer.batches]

        def wake(s: float) -> None:
            seen[0] = committer.wait_for_commit(seen[0], s)

        wait_for_position(self.store, position, timeout_s, wake, f"node {self.cfg.node_id}")

    def status(self, local_only: bool = False) -> api.StatusResponse:
        """The cluster as this node sees it."""
        assert self.store is not None and self.membership is not None and self.etcd is not None
        try:
            replicas, readers = read_registry(self.etcd, self.cfg.cluster)
        except EtcdUnavailable:
            replicas, readers = [], []
        if self.sync_gate is not None:  # its reports reach the nodes before its record
            replicas = [dataclasses.replace(r, position=max(
                r.position, self.sync_gate.position_of(r.replica_id))) for r in replicas]
        with self.store.read() as view:
            oldest, position, log_bytes = view.log_bounds()
            lags = [lag(view, r) for r in replicas]
        out = api.StatusResponse(node_id=self.cfg.node_id, volume=self.cfg.volume,
                                 commit_position=position, cluster=self.cfg.cluster,
                                 version=VERSION, log_oldest_position=oldest,
                                 log_bytes=log_bytes, volume_id=self.volume_id)
        rec = self.epoch.record if self.epoch is not None else None
        if rec is not None:
            out.epoch, out.primary_volume_id = rec.epoch, rec.volume_id
        sync_set = self.sync_gate.members() if self.sync_gate is not None else {}
        out.replicas.extend(
            api.ReplicaInfo(replica_id=r.replica_id, address=r.address, mode=r.mode,
                            position=r.position, caught_up=r.caught_up,
                            lag_positions=lg.positions, lag_seconds=lg.seconds,
                            updated_at=r.updated_at, sync_state=sync_set.get(r.replica_id, ""),
                            registered=True, volume_id=r.volume_id,
                            primary_last=r.primary_last)
            for r, lg in zip(replicas, lags, strict=True))
        out.readers.extend(
            api.ReaderInfo(node_id=r.node_id, address=r.address, volume_id=r.volume_id,
                           position=r.position, lag_positions=max(0, position - r.position),
                           updated_at=r.updated_at)
            for r in readers)
        registered = {r.replica_id for r in replicas}
        out.replicas.extend(
            api.ReplicaInfo(replica_id=rid, mode="sync", sync_state=state, registered=False,
                            lag_positions=position)
            for rid, state in sorted(sync_set.items()) if rid not in registered)
        out.transactions.extend(self._local_transactions())
        out.counters.update(self.counters())
        if local_only:  # cheap enough to poll (a lag monitor, a peer): no etcd call per member
            return out
        for m in self.membership.members():
            try:
                ttl = self.etcd.time_to_live(m.lease_id)
            except EtcdUnavailable:
                ttl = -1
            out.members.append(api.Member(
                node_id=m.node_id, address=m.address, session=f"{m.lease_id:x}",
                pid=m.pid, started_at=m.started_at, session_ttl_remaining=ttl,
                group=m.group, public_address=m.public_address, volume_id=m.volume_id))
        leader = Election(self.etcd, self.cfg.cluster).observe()
        if leader is not None:
            out.leader = str(leader[1].get("node", ""))
            out.leader_activity = str(leader[1].get("last_cycle", ""))
        assert self.locks is not None
        out.locks.extend(lock_infos(self.locks.entries()))
        for w in self.locks.waits():
            out.waits.append(api.WaitInfo(transaction_id=w.txn_id, node_id=w.node,
                                          resource=w.resource, mode=w.mode,
                                          waits_for=list(w.waits_for)))
        for m in out.members:
            if m.node_id == self.cfg.node_id:
                continue
            try:
                with self.authority.channel(self.cfg.security, m.address) as ch:
                    peer = rpc.ClusterServiceStub(ch).Status(
                        api.StatusRequest(local_only=True), timeout=1.0)
                out.transactions.extend(peer.transactions)
            except grpc.RpcError as e:
                log.info("status: node %s did not answer: %s", m.node_id, e.code())
        return out

    def counters(self) -> dict[str, int]:
        """This node's counters since it started (see docs/api.md)."""
        assert self.committer is not None and self.locks is not None
        c, lm = self.committer, self.locks
        return {"commits": c.commits, "commit_batches": c.batches,
                "lock_free_writes": c.lock_free, "lock_free_refused": c.needed_locks,
                "lock_requests": lm.batcher.requests, "lock_etcd_txns": lm.batcher.etcd_txns,
                "table_cache_rides": lm.caches.rides,
                "table_cache_established": lm.caches.established,
                "table_cache_revoked": lm.caches.revoked,
                "deadlocks_found": lm.deadlocks_found, "heap_trims": self.trimmer.trims,
                "heap_released_kb": self.trimmer.released_kb}

    def _local_transactions(self) -> list[api.TransactionInfo]:
        assert self.txns is not None
        now = time.monotonic()
        return [api.TransactionInfo(
                    transaction_id=t.txn_id, node_id=self.cfg.node_id, read_only=t.read_only,
                    started_at=t.started_at, idle_s=max(0.0, now - t.last_used),
                    locks_held=len(t.locks.held) if t.locks is not None else 0)
                for t in self.txns.open_transactions()]

    def request_group_stop(self) -> None:
        """One of a node's processes: ask the node's supervisor to make every process of the
        node leave (it sends each SIGTERM, which takes the path of ``request_stop``)."""
        parent = os.getppid()
        if self.cfg.group and parent > 1:
            os.kill(parent, signal.SIGTERM)

    def request_stop(self) -> int:
        """Ask the node to leave (see the module docstring); return its open transactions."""
        self.gate.drain()
        self.stop_requested.set()
        assert self.txns is not None
        return len(self.txns.open_transactions())

    def _wait_for_transactions(self, deadline: float) -> int:
        """Wait until no transaction is open here or ``deadline``; return how many are left."""
        assert self.txns is not None
        while True:
            left = len(self.txns.open_transactions())
            if left == 0 or time.monotonic() >= deadline:
                return left
            time.sleep(0.02)

    def stop(self) -> None:
        """Leave cleanly (see the module docstring); idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.stop_requested.set()
        deadline = time.monotonic() + self.cfg.grace_s
        self.health.enter_graceful_shutdown()
        self.admission.stop()
        self.authority.stop()
        if self.log_tail is not None:
            self.log_tail.stop()
        self.trimmer.close()
        self.gate.drain()
        if self.membership is not None:
            self.membership.withdraw()
        if self.leader is not None:
            self.leader.stop()
        if self.txns is not None:
            left = self._wait_for_transactions(deadline)
            if left:
                log.warning("%d transaction(s) still open after %.1f s; aborting them",
                            left, self.cfg.grace_s)
            self.txns.close(NODE_DRAINING, f"node {self.cfg.node_id} is leaving the cluster; "
                                           f"run the transaction again on another node")
        # Keep answering for a moment (UNAVAILABLE "nothing done" for new work, ABORTED
        # NODE_DRAINING for the transactions just aborted), so that clients move on before the
        # transport goes away (a call that reaches a stopping server is CANCELLED).
        time.sleep(min(DRAIN_S, self.cfg.grace_s))
        if not self.gate.close(max(0.0, deadline - time.monotonic()) + DRAIN_S):
            log.warning("calls still in flight after %.1f s; stopping anyway", self.cfg.grace_s)
        for srv in (self.shared_server, self.server):
            if srv is not None:
                srv.stop(self.cfg.grace_s).wait()
        if self.committer is not None:
            self.committer.close()
        if self.sync_gate is not None:
            self.sync_gate.close()
        if self.epoch is not None:
            self.epoch.close()
        if self.membership is not None:
            self.membership.close()
        if self.locks is not None:
            self.locks.close()
        if self.deathwatch is not None:
            self.deathwatch.close()
        if self.etcd is not None:
            self.etcd.close()
        if self.store is not None:
            self.store.close()
        if self.metrics is not None:
            self.metrics.close()
        log.info("node %s stopped", self.cfg.node_id)
