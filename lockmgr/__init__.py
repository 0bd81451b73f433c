"""The lock manager: etcd client, per-process session, lock modes, locks, deadlocks, fencing.

Knows nothing of storage or gRPC APIs. See ``lockmgr/DESIGN.md``.
"""

from lockmgr.deadlock import victims
from lockmgr.election import Election
from lockmgr.entries import Entry, Request
from lockmgr.errors import (
    Aborted,
    Deadlock,
    EtcdUnavailable,
    LockError,
    LockTimeout,
    SessionExpired,
)
from lockmgr.etcd import CallObserver, EtcdClient, EtcdTls, KeyValue, parse_endpoints
from lockmgr.manager import Fencer, LockManager, WaitObserver, WaitRecord
from lockmgr.modes import LockMode
from lockmgr.queues import LockQueue, Waiter, queues, read_locks
from lockmgr.resource import Resource
from lockmgr.session import LeaseBackend, Session, check_timing
from lockmgr.table import DEFAULT_ESCALATE_AFTER, TxnLocks, plan

__all__ = [
    "DEFAULT_ESCALATE_AFTER",
    "Aborted",
    "CallObserver",
    "Deadlock",
    "Election",
    "Entry",
    "EtcdClient",
    "EtcdTls",
    "EtcdUnavailable",
    "Fencer",
    "KeyValue",
    "LeaseBackend",
    "LockError",
    "LockManager",
    "LockMode",
    "LockQueue",
    "LockTimeout",
    "Request",
    "Resource",
    "Session",
    "SessionExpired",
    "TxnLocks",
    "WaitObserver",
    "WaitRecord",
    "Waiter",
    "check_timing",
    "parse_endpoints",
    "plan",
    "queues",
    "read_locks",
    "victims",
]
