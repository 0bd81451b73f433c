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
from lockmgr.etcd import EtcdClient, KeyValue, parse_endpoints
from lockmgr.manager import Fencer, LockManager, WaitRecord
from lockmgr.modes import LockMode
from lockmgr.resource import Resource
from lockmgr.session import LeaseBackend, Session, check_timing
from lockmgr.table import DEFAULT_ESCALATE_AFTER, TxnLocks, plan

__all__ = [
    "DEFAULT_ESCALATE_AFTER",
    "Aborted",
    "Deadlock",
    "Election",
    "Entry",
    "EtcdClient",
    "EtcdUnavailable",
    "Fencer",
    "KeyValue",
    "LeaseBackend",
    "LockError",
    "LockManager",
    "LockMode",
    "LockTimeout",
    "Request",
    "Resource",
    "Session",
    "SessionExpired",
    "TxnLocks",
    "WaitRecord",
    "check_timing",
    "parse_endpoints",
    "plan",
    "victims",
]
