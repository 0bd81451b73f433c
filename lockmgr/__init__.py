"""The lock manager's foundation: the etcd client and the per-process session.

Knows nothing of storage or gRPC APIs. See ``lockmgr/DESIGN.md``.
"""

from lockmgr.errors import EtcdUnavailable, LockError, SessionExpired
from lockmgr.etcd import EtcdClient, KeyValue, parse_endpoints
from lockmgr.session import LeaseBackend, Session, check_timing

__all__ = [
    "EtcdClient",
    "EtcdUnavailable",
    "KeyValue",
    "LeaseBackend",
    "LockError",
    "Session",
    "SessionExpired",
    "check_timing",
    "parse_endpoints",
]
