"""Helpers for integration tests that drive real etcd servers and real node processes.

Owns: :mod:`tests.harness.etcd` (etcd servers for tests) and :mod:`tests.harness.cluster`
(``Node``, ``Cluster``, ``wait_for``). Does not own any product code; everything here starts real
processes and must stop every one of them (by pid) even when a test fails. Importing it makes
every etcd server and node process started from the main thread die with the test process
(``nodes.etcdserver.make_children_die_with_parent``), so that even a run killed by SIGKILL
leaves none behind.
"""

from nodes.etcdserver import make_children_die_with_parent

from .cluster import Cluster, Node, wait_for
from .etcd import (
    EtcdServer,
    EtcdServerError,
    available_etcd_binaries,
    find_etcd_binary,
    free_port,
    start_etcd,
    wheel_etcd_binary,
)

make_children_die_with_parent()

__all__ = [
    "Cluster",
    "EtcdServer",
    "EtcdServerError",
    "Node",
    "available_etcd_binaries",
    "find_etcd_binary",
    "free_port",
    "start_etcd",
    "wait_for",
    "wheel_etcd_binary",
]
