"""Resident memory of the node processes, sampled while Shardless is under load.

Owns: :func:`rss_kb` (a node's private resident memory, ``RssAnon`` in ``/proc/<pid>/status``),
:func:`mapped_kb` (its resident pages of mapped files, ``RssFile``), :func:`local_pids` (which
member pids of a cluster reached by ``--connect`` are processes of this host), and
:class:`Sampler`: a thread that samples every node once a second while :meth:`Sampler.active` is
on (the runner turns it on for the Shardless rounds only), and keeps the warm-up figure (the
first sample after the first Shardless round ended, or after a minute of Shardless load,
whichever comes first) and the last figure, from which :meth:`Sampler.summary` computes the
growth.

The project's target: under 10% growth after warm-up through a 10-minute mixed load
(:data:`TARGET_GROWTH_PCT`, :data:`TARGET_MINUTES`), judged on private memory. ``VmRSS`` also
counts the pages of the LMDB volume a node has touched through its memory map: they grow with
the volume (its commit log has no retention yet), are the page cache that every node of the host
shares, and the kernel takes them back when it needs memory; they are reported beside, apart.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

WARM_AFTER_S = 60.0
TARGET_GROWTH_PCT = 10.0
TARGET_MINUTES = 10.0
LOOPBACK = ("127.", "localhost", "[::1]", "::1")


def _status_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_kb(pid: int) -> int | None:
    """The private resident memory of ``pid`` (``RssAnon``) in KiB, or None if unreadable."""
    return _status_kb(pid, "RssAnon:")


def mapped_kb(pid: int) -> int | None:
    """The resident pages of files ``pid`` maps (``RssFile``; for a node, mostly the LMDB
    volume) in KiB, or None if unreadable."""
    return _status_kb(pid, "RssFile:")


def local_pids(members: Iterable[tuple[str, str, int]]) -> dict[str, int]:
    """Pick the members of this host whose pid is a live node process.

    Args:
        members: (node id, address, pid) from the Status RPC.

    Returns:
        node id -> pid, for members on a loopback address whose ``/proc/<pid>/cmdline``
        runs ``nodes`` (the same pid on another host would be another process).
    """
    out = {}
    for node_id, address, pid in members:
        if not pid or not address.startswith(LOOPBACK):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
        except OSError:
            continue
        if b"nodes" in cmdline and b"node" in cmdline:
            out[node_id] = pid
    return out


class Sampler:
    """Samples the RSS of each node once a second while active (see the module docstring)."""

    def __init__(self, pids: Mapping[str, int], interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pids = dict(pids)
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._active = threading.Event()
        self._stop = threading.Event()
        self.samples: list[dict[str, Any]] = []
        self.warm: dict[str, int] | None = None
        self.last: dict[str, int] | None = None
        self.last_mapped: dict[str, int] = {}
        self.loaded_s = 0.0
        """Seconds of Shardless load sampled so far."""
        self.loaded_after_warm_s = 0.0
        self._since: float | None = None
        self._label = ""
        self._t0 = clock()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rss-sampler")

    def start(self) -> None:
        """Start the sampling thread (it samples only while active)."""
        if self.pids:
            self._thread.start()

    def _read(self) -> dict[str, int]:
        return {name: kb for name, pid in self.pids.items() if (kb := rss_kb(pid)) is not None}

    def _sample(self) -> None:
        now = self._clock()
        figures = self._read()
        mapped = {name: kb for name, pid in self.pids.items()
                  if (kb := mapped_kb(pid)) is not None}
        with self._lock:
            if self._since is not None:
                step = now - self._since
                self.loaded_s += step
                if self.warm is not None:
                    self.loaded_after_warm_s += step
                self._since = now
            self.samples.append({"t": round(now - self._t0, 3), "label": self._label,
                                 "rss_kb": figures, "mapped_kb": mapped})
            self.last_mapped = mapped
            self.last = figures
            if self.warm is None and self.loaded_s >= WARM_AFTER_S:
                self.warm = figures

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._active.wait(0.2) and not self._stop.is_set():
                self._sample()
                self._stop.wait(self.interval_s)

    @contextlib.contextmanager
    def active(self, label: str) -> Any:
        """Sample while the body runs a Shardless round; the round's end ends the warm-up."""
        with self._lock:
            self._label = label
            self._since = self._clock()
        self._active.set()
        try:
            yield
        finally:
            self._active.clear()
            if self.pids:
                self._sample()
            with self._lock:
                self._since = None
                if self.warm is None:
                    self.warm = self.last

    def close(self) -> None:
        """Stop the sampling thread."""
        self._stop.set()
        self._active.set()
        if self._thread.is_alive():
            self._thread.join(2.0)

    def summary(self) -> dict[str, Any]:
        """RSS after warm-up and at the end per node, their growth in percent, the target."""
        warm, last = self.warm or {}, self.last or {}
        growth = {n: round(100.0 * (last[n] - warm[n]) / warm[n], 2)
                  for n in warm if n in last and warm[n] > 0}
        total_warm = sum(warm[n] for n in growth)
        total_last = sum(last[n] for n in growth)
        total = round(100.0 * (total_last - total_warm) / total_warm, 2) if total_warm else None
        long_enough = self.loaded_after_warm_s >= TARGET_MINUTES * 60
        return {
            "pids": self.pids, "warm_rss_kb": warm, "end_rss_kb": last, "growth_pct": growth,
            "end_mapped_kb": self.last_mapped,
            "total_growth_pct": total, "loaded_s": round(self.loaded_s, 1),
            "loaded_after_warm_s": round(self.loaded_after_warm_s, 1),
            "target": f"< {TARGET_GROWTH_PCT:g}% growth after warm-up through a "
                      f"{TARGET_MINUTES:g}-minute mixed load",
            "met": (total is not None and total < TARGET_GROWTH_PCT) if long_enough else None,
            "samples": self.samples,
        }


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
