"""Fast death detection on one host, through OS file locks on the shared volume.

Owns: this process's lock file ``<volume>/nodes/<node id>.<pid>.lock``, held with an exclusive
``flock`` for the process's whole life and listing the session leases it has used; and one
watcher thread per peer file, blocked in ``flock`` on it. The kernel releases a dead process's
locks the moment it dies (kill -9 included), so a watcher wakes at once, reads the dead peer's
leases and revokes them in etcd: the peer's lock entries, wait records and member key go at
once, instead of when its lease TTL runs out. The session marker stays, so the next acquirer
still fences the dead session before acting (``lockmgr.manager``). Across hosts, the lease TTL
still bounds detection.

NB: a paused (SIGSTOP) process keeps its file lock: pauses are caught by the lease and by
fencing, not here. A clean stop revokes its own lease, then releases and removes its file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

SCAN_INTERVAL_S = 0.2


class DeathWatch:
    """Hold our own lock file; watch every peer's."""

    def __init__(self, volume: str, node_id: str, revoke: Callable[[int], None]) -> None:
        self.dir = os.path.join(volume, "nodes")
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, f"{node_id}.{os.getpid()}.lock")
        self._revoke = revoke
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._leases: list[int] = []
        self._watching: set[str] = set()
        self._stop = threading.Event()
        self.detected: list[tuple[str, list[int]]] = []
        self._scanner = threading.Thread(target=self._scan_loop, name="deathwatch", daemon=True)

    def start(self) -> None:
        """Start watching peers."""
        self._scanner.start()

    def add_lease(self, lease_id: int) -> None:
        """Record a session lease of this process in its lock file."""
        self._leases.append(lease_id)
        data = "".join(f"{lease:x}\n" for lease in self._leases).encode()
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

    def _scan_loop(self) -> None:
        while not self._stop.wait(SCAN_INTERVAL_S):
            try:
                names = os.listdir(self.dir)
            except OSError:
                continue
            for name in names:
                path = os.path.join(self.dir, name)
                if not name.endswith(".lock") or path == self.path or path in self._watching:
                    continue
                self._watching.add(path)
                threading.Thread(target=self._watch, args=(path,), name=f"watch-{name}",
                                 daemon=True).start()

    def _watch(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            self._watching.discard(path)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until the owner is gone
            if self._stop.is_set():
                return
            leases = [int(line, 16) for line in os.pread(fd, 1 << 16, 0).decode().split()
                      if line]
            if not os.path.exists(path):
                return  # a clean stop, or another watcher already handled it
            log.warning("peer %s died; revoking its session lease(s) %s", os.path.basename(path),
                        ", ".join(f"{x:x}" for x in leases))
            self.detected.append((path, leases))
            for lease in leases:
                try:
                    self._revoke(lease)
                except Exception as e:  # the lease may be gone already
                    log.info("revoking %x: %s", lease, e)
            try:
                os.unlink(path)
            except OSError:
                pass
        except (OSError, ValueError) as e:
            log.warning("watching %s failed: %s", path, e)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Stop watching; remove and release our own file (call after the session is closed)."""
        self._stop.set()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
