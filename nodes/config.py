"""A node's settings, and the checks that make unsafe combinations impossible to start with."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from lockmgr import DEFAULT_ESCALATE_AFTER, check_timing, parse_endpoints
from nodes.limits import DEFAULT_LIMITS, Limits
from nodes.security import INSECURE, Security
from storage import DEFAULT_MAP_SIZE, Retention
from storage.retention import DEFAULT_RETENTION

DEFAULT_TTL_S = 5
DEFAULT_ETCD_TIMEOUT_S = 0.5
MAX_MESSAGE_BYTES = 64 << 20


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node process needs to start.

    ``ttl_s`` is the session lease TTL: a node that dies silently (no SIGTERM) leaves the
    cluster's view within it. ``etcd_timeout_s`` bounds every etcd call.
    """

    etcd: str
    volume: str
    listen: str
    node_id: str = ""
    cluster: str = "shardless"
    ttl_s: int = DEFAULT_TTL_S
    etcd_timeout_s: float = DEFAULT_ETCD_TIMEOUT_S
    map_size: int = DEFAULT_MAP_SIZE
    max_workers: int = 64
    grace_s: float = 10.0
    etcd_wait_s: float = 30.0
    lock_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    escalate_after: int = DEFAULT_ESCALATE_AFTER  # row locks of a page before the page lock
    public_listen: str = ""  # a worker process: the node's address, shared (SO_REUSEPORT)
    group: str = ""  # a worker process: the id of the node it is a process of
    log_retention: Retention = DEFAULT_RETENTION  # applied by the leader (storage/retention.py)
    sync_policy: str = "demote"  # a synchronous replica that stops answering: demote | strict
    sync_timeout_s: float = 5.0  # ... after this long (nodes/replication.py, SyncGate)
    kill_frozen_peers: bool = True  # SIGKILL a peer of the host past its lease (deathwatch.py)
    trim_memory: bool = True  # give freed heap back when quiet (nodes/heap.py, docs/limits.md)
    limits: Limits = DEFAULT_LIMITS  # what clients can hold open (nodes/limits.py, docs/limits.md)
    security: Security = INSECURE  # TLS of its port and of etcd (nodes/security.py)
    metrics_listen: str = ""  # HOST:PORT serving /metrics over HTTP ("": none; nodes/metrics.py)

    def validated(self) -> NodeConfig:
        """Check the settings; fill in the node id from the listen address if empty.

        Raises:
            ValueError: a setting is malformed or the session timing is unsafe.
        """
        parse_endpoints(self.etcd)
        _host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"--listen {self.listen!r} is not HOST:PORT")
        if not self.volume:
            raise ValueError("--volume is required")
        if not self.cluster or "/" in self.cluster:
            raise ValueError("--cluster must be a non-empty name without '/'")
        if self.lock_timeout_s <= 0 or self.idle_timeout_s <= 0 or self.escalate_after < 1:
            raise ValueError("--lock-timeout and --idle-timeout must be positive, "
                             "--escalate-after at least 1")
        self.log_retention.validated()
        if self.sync_policy not in ("strict", "demote") or self.sync_timeout_s <= 0:
            raise ValueError("--sync-policy must be strict or demote, --sync-timeout positive")
        self.limits.validated()
        self.security.validated()
        if self.limits.streams + self.limits.replication_streams > self.max_workers - 8:
            raise ValueError(f"--max-streams plus --max-replication-streams must leave at "
                             f"least 8 of the {self.max_workers} --workers to other calls")
        ttl = self.ttl_s
        check_timing(ttl, ttl / 6, self.etcd_timeout_s, ttl / 3)
        node_id = self.node_id or f"{socket.gethostname()}-{port}"
        if "/" in node_id:
            raise ValueError("--node-id must not contain '/'")
        if self.public_listen:
            _h, sep, p = self.public_listen.rpartition(":")
            if not sep or not p.isdigit():
                raise ValueError(f"--public-listen {self.public_listen!r} is not HOST:PORT")
        if self.metrics_listen:
            from nodes.metrics import parse_listen

            parse_listen(self.metrics_listen)
        return NodeConfig(**{**self.__dict__, "node_id": node_id,
                             "volume": os.path.abspath(self.volume)})
