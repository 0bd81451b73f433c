"""The node process's C heap: few malloc arenas, and freed memory given back to the system.

Owns: :func:`cap_arenas` (glibc's ``mallopt(M_ARENA_MAX)``, called once at process start) and
:class:`Trimmer` (a thread that calls ``malloc_trim(0)`` when the node is quiet, and now and then
when it is not). Does not own what is allocated: the bounds on what clients can make a node hold
are ``nodes/limits.py`` and ``docs/limits.md``.

Why. CPython's objects larger than 512 bytes, protobuf messages and gRPC's buffers come from
glibc's malloc. glibc gives each thread that allocates concurrently an arena of its own, up to 8
per core, and a node has up to 64 gRPC worker threads (``--workers``) plus gRPC's and etcd's
own: a burst of calls spreads its garbage over many arenas, each keeping what it freed as free
chunks inside its heap, so the process's resident memory stays at the burst's peak (issue 11:
48 MB to about 270 MB over a bad-input session, never given back). Two arenas
(:data:`DEFAULT_ARENAS`) bound how many such heaps there are; ``malloc_trim(0)`` returns the free
pages of every arena (not only the top of the main heap) with ``madvise(MADV_DONTNEED)``.

Invariants:

- :func:`cap_arenas` runs before the process starts its threads: glibc fixes its arena limit
  the first time it needs more than 8 arenas, so a cap set later may come too late. A
  ``MALLOC_ARENA_MAX`` in the environment (read by glibc itself at exec) wins over it.
- A trim holds each arena's lock while it walks it (measured: tens of milliseconds on a heap
  just freed, a few when there is little to give back), so the trimmer trims when no call was
  admitted for a check period (:data:`CHECK_S`), at most every :data:`QUIET_TRIM_S` while the
  node stays quiet, and under unbroken load only every :data:`BUSY_TRIM_S`.
- On a platform without glibc both are no-ops; nothing else depends on them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

DEFAULT_ARENAS = 2
M_ARENA_MAX = -8  # glibc's malloc.h
CHECK_S = 1.0
QUIET_TRIM_S = 10.0
BUSY_TRIM_S = 60.0


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None  # not glibc (e.g. musl has no malloc_trim)
    return libc


_LIBC = _libc()


def cap_arenas(arenas: int = DEFAULT_ARENAS) -> str:
    """Cap glibc's malloc arenas at ``arenas`` for this process (call before threads start).

    Args:
        arenas: The cap; 0 leaves glibc's default (8 per core).

    Returns:
        What was done, for the startup log.
    """
    env = os.environ.get("MALLOC_ARENA_MAX", "")
    if env:
        return f"malloc arenas: MALLOC_ARENA_MAX={env} from the environment"
    if arenas <= 0:
        return "malloc arenas: glibc's default (8 per core)"
    if _LIBC is None or _LIBC.mallopt(M_ARENA_MAX, arenas) != 1:
        return "malloc arenas: not glibc, left as they are"
    return f"malloc arenas: at most {arenas}"


def trim() -> bool:
    """Give the free pages of every malloc arena back to the system; return whether any were."""
    return bool(_LIBC is not None and _LIBC.malloc_trim(0))


def private_kb() -> int:
    """This process's private resident memory (``RssAnon``) in KiB, 0 if unreadable."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Trimmer:
    """Calls :func:`trim` when the node is quiet (see the module docstring).

    Args:
        calls: A count of the calls admitted so far (it only grows); no change over a check
            period means the node was quiet.
        clock: Monotonic seconds.
        check_s: How often to look.
        quiet_trim_s: While quiet, trim again after this long (what idle timeouts freed since).
        busy_trim_s: Without a quiet period, trim after this long anyway.
    """

    def __init__(self, calls: Callable[[], int], *, clock: Callable[[], float] = time.monotonic,
                 check_s: float = CHECK_S, quiet_trim_s: float = QUIET_TRIM_S,
                 busy_trim_s: float = BUSY_TRIM_S) -> None:
        self._calls = calls
        self._clock = clock
        self.check_s = check_s
        self.quiet_trim_s = quiet_trim_s
        self.busy_trim_s = busy_trim_s
        self._seen = calls()
        self._trimmed_at = clock()
        self._busy_since_trim = False
        self.trims = 0
        """Trims done."""
        self.released_kb = 0
        """Private memory given back by them (the fall of ``RssAnon`` across each), KiB."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def due(self) -> bool:
        """Look once: whether a trim is due now (called every ``check_s``)."""
        now, calls = self._clock(), self._calls()
        quiet = calls == self._seen
        self._busy_since_trim |= not quiet
        self._seen = calls
        since = now - self._trimmed_at
        if quiet:
            return self._busy_since_trim or since >= self.quiet_trim_s
        return since >= self.busy_trim_s

    def step(self) -> None:
        """Look once and trim if due."""
        if not self.due():
            return
        before = private_kb()
        trim()
        self.released_kb += max(0, before - private_kb())
        self.trims += 1
        self._trimmed_at = self._clock()
        self._busy_since_trim = False

    def start(self) -> None:
        """Start the trimming thread (a no-op without glibc)."""
        if _LIBC is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="heap-trim", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.check_s):
            try:
                self.step()
            except Exception:  # top of a loop: log and go on
                log.exception("heap trim failed")

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
