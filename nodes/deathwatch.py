"""Fast death detection on one host, through OS file locks on the shared volume.

Owns: this process's lock file ``<volume>/nodes/<node id>.<pid>.lock``, held with an exclusive
``flock`` for the process's whole life and listing the session leases it has used; and one
watcher thread per peer file, blocked in ``flock`` on it. The kernel releases a dead process's
locks the moment it dies (kill -9 included), so a watcher wakes at once, reads the dead peer's
leases and revokes them in etcd: the peer's lock entries, wait records and member key go at
once, instead of when its lease TTL runs out. The session marker stays, so the next acquirer
still fences the dead session before acting (``lockmgr.manager``). Across hosts, the lease TTL
still bounds detection.

A frozen process (SIGSTOP, or anything that keeps it from renewing) keeps its file lock, and may
hold LMDB's one writer lock of the host: then every write on every node waits for it, and so
does the fence record that would let the others take over its locks. So peers fence it as
clusters do (STONITH): once etcd says the peer's latest session lease is gone, and the peer has
recorded no newer one, a watcher kills the process (SIGKILL), which frees both locks at once
(LMDB's writer mutex is robust: the next writer recovers it). Whom it kills is verified first:
the pid and process start time written in the file, and that very process holding the file open
(so a reused pid, or a process of another pid namespace, is never hit). A stopped process is
killed ``FROZEN_GRACE_S`` after its lease is seen gone; any other after ``LOST_GRACE_S`` more (a
live node whose session was lost starts and records a new one well within that). Safe: a process
whose session ended may not act on anything (``lockmgr/session.py``), and it would only fence
itself on waking.

A clean stop revokes its own lease, then releases and removes its file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

SCAN_INTERVAL_S = 0.2
FROZEN_CHECK_S = 1.0  # how often the peers' latest leases are looked up in etcd
FROZEN_GRACE_S = 1.0  # a stopped peer whose lease is gone is killed after this
LOST_GRACE_S = 10.0  # any other peer whose lease is gone, with no newer one, after this


def process_start(pid: int) -> str:
    """The start time of process ``pid`` (clock ticks since boot, from /proc; "" if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_state(pid: int) -> str:
    """The state letter of process ``pid`` (``T``: stopped; "" if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def holds_open(pid: int, path: str) -> bool:
    """Whether process ``pid`` has the file at ``path`` open."""
    try:
        want = os.stat(path)
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
            return True
    return False


def parse_lock_file(data: str) -> tuple[int, str, list[int]]:
    """``(pid, start time, leases)`` of a lock file's text (pid 0 when it names none)."""
    pid, start, leases = 0, "", []
    for line in data.splitlines():
        line = line.strip()
        if line.startswith("#"):
            parts = line[1:].split()
            if len(parts) == 4 and parts[0] == "pid" and parts[2] == "start":
                pid, start = int(parts[1]), parts[3]
        elif line:
            leases.append(int(line, 16))
    return pid, start, leases


class DeathWatch:
    """Hold our own lock file; watch every peer's."""

    def __init__(self, volume: str, node_id: str, revoke: Callable[[int], None],
                 lease_ttl: Callable[[int], int] | None = None) -> None:
        self.dir = os.path.join(volume, "nodes")
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, f"{node_id}.{os.getpid()}.lock")
        self._revoke = revoke
        self._lease_ttl = lease_ttl  # etcd's TTL left of a lease (-1: gone); None: no kills
        self._header = f"# pid {os.getpid()} start {process_start(os.getpid())}\n"
        self._gone_since: dict[tuple[str, int], float] = {}
        self._checked_at = 0.0
        self.killed: list[tuple[str, int]] = []
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._leases: list[int] = []
        self._write()
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
        self._write()

    def _write(self) -> None:
        data = (self._header + "".join(f"{lease:x}\n" for lease in self._leases)).encode()
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
                self._watching.add(path)  # before the watch starts: it may discard it
                try:
                    threading.Thread(target=self._watch, args=(path,), name=f"watch-{name}",
                                     daemon=True).start()
                except RuntimeError as e:  # no thread to be had now: try again next scan
                    self._watching.discard(path)
                    log.warning("cannot watch %s yet: %s", path, e)
            if self._lease_ttl is not None and \
                    time.monotonic() - self._checked_at >= FROZEN_CHECK_S:
                self._checked_at = time.monotonic()
                try:
                    self.check_frozen()
                except Exception:  # the loop must survive anything
                    log.exception("checking for frozen peers failed")

    def check_frozen(self) -> None:
        """Kill each peer whose latest session lease etcd says is gone, once its grace has
        passed (see the module docstring)."""
        assert self._lease_ttl is not None
        now = time.monotonic()
        seen: set[tuple[str, int]] = set()
        for path in sorted(self._watching):
            try:
                with open(path) as f:
                    pid, start, leases = parse_lock_file(f.read())
            except (OSError, ValueError):
                continue
            if not pid or not leases:
                continue
            key = (path, leases[-1])
            try:
                gone = self._lease_ttl(leases[-1]) <= 0
            except Exception as e:  # etcd away: nobody can tell; look again later
                log.info("cannot look up the lease of %s: %s", os.path.basename(path), e)
                continue
            if not gone:
                continue
            seen.add(key)
            since = self._gone_since.setdefault(key, now)
            stopped = process_state(pid) in ("T", "t")
            if now - since < (FROZEN_GRACE_S if stopped else FROZEN_GRACE_S + LOST_GRACE_S):
                continue
            self._kill(path, pid, start, leases[-1], stopped)
        self._gone_since = {k: v for k, v in self._gone_since.items() if k in seen}

    def _kill(self, path: str, pid: int, start: str, lease: int, stopped: bool) -> None:
        if pid == os.getpid() or not start or process_start(pid) != start or \
                not holds_open(pid, path):
            return  # not that process any more (it died, or its pid was reused)
        log.warning("peer %s (pid %d) still holds its locks after its session %x ended%s: "
                    "killing it (SIGKILL) so that its LMDB writer lock and its locks go",
                    os.path.basename(path), pid, lease, " (stopped)" if stopped else "")
        try:
            os.kill(pid, signal.SIGKILL)
            self.killed.append((path, pid))
        except OSError as e:
            log.info("killing %d: %s", pid, e)

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
            _pid, _start, leases = parse_lock_file(os.pread(fd, 1 << 16, 0).decode())
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
