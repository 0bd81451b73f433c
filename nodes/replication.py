"""Replicas of the volume as the cluster sees them: the registry in etcd, and their lag.

Owns: the replica records (``<cluster>/replicas/<replica id>``, JSON, on the replica's own
session lease, so that a dead replica's record goes with its lease), reading them, and the lag
figures that status reports. Does not own: the replica process (``nodes/replica.py``) nor the
log it reads (``ReadLog``, ``storage/commitlog.py``).

A record says where the replica is: the last position it holds durably (``position``), the
commit time of that record (``position_ts``), its mode (``sync`` or ``async``) and whether it
has caught up with the primary since it started following (``caught_up``). The leader keeps
the log from the oldest position a registered replica still needs (``needed_from``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from lockmgr import EtcdClient
from nodes.membership import cluster_prefix
from storage import ReadView

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
                                 float(d["updated_at"]), lease_id)
        except (ValueError, KeyError, TypeError):
            return None


def read_replicas(etcd: EtcdClient, cluster: str) -> list[ReplicaRecord]:
    """Every registered replica, by id.

    Raises:
        EtcdUnavailable: etcd did not answer.
    """
    out = []
    for kv in etcd.get_prefix(replicas_prefix(cluster)):
        rec = ReplicaRecord.decode(kv.value, kv.lease_id)
        if rec is not None:
            out.append(rec)
    return sorted(out, key=lambda r: r.replica_id)


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
    ts = got[0][0].ts if got else replica.position_ts
    return Lag(behind, max(0.0, now - ts))
