"""A node that uses more than one core: several processes behind one address.

Owns: :class:`Supervisor`, which ``shardless node --processes K`` runs instead of a node when K
is more than 1. CPython runs one thread of Python at a time per process, so a node of one
process uses one core for its Python work; this one starts K worker processes, each a whole
node process (its own LMDB handle, group committer, etcd client and session, as ``lockmgr``
wants one lease per process), and each serving the node's address through ``SO_REUSEPORT`` (the
kernel spreads connections over them) as well as an address of its own.

What "a node" means with several processes (the supervisor is the node's process to signal):

* **identity**: the workers are members ``<node id>.w<k>`` whose ``group`` is the node id and
  whose ``public_address`` is the node's address. Interactive transactions are bound to the
  worker that began them; ``Begin`` answers that worker's own address, where the client helper
  (and any client that follows ``BeginResponse.address``) sends the transaction's calls. A
  client that discovers members spreads its load over every worker directly.
* **health**: any worker answers on the node's address; all report NOT_SERVING when the node
  leaves.
* **drain**: ``Drain`` for the node (no id, or the node's id) reaches one worker, which asks the
  supervisor to make every worker leave: each takes the usual path (refuse new work, finish or
  abort its open transactions, leave). ``Drain`` naming a worker's own id drains that worker
  only. SIGTERM or SIGINT to the supervisor drains the whole node.
* **failure**: each worker holds its own file lock, so a worker that dies frees its locks at
  once, like a node; the supervisor starts a new one (a new session) after ``RESTART_DELAY_S``,
  and gives up, stopping the node, after ``MAX_RESTARTS`` deaths within ``RESTART_WINDOW_S``.
  Workers die with the supervisor (``PR_SET_PDEATHSIG``), so ``kill -9`` of the node's process
  is the death of the whole node.
* **sessions**: one per worker. ``shardless status`` shows them under their node.
* **metrics** (``--metrics-listen``): each worker serves its own on a loopback port of its own;
  the supervisor serves the node's address, where one scrape reads every worker and the
  supervisor itself, each series labelled ``worker`` (``nodes/metrics.py``).

Measured on the 2-core machine of the development notes (``docs/benchmarks.md``); a node of one
process stays the default.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from nodes.etcdserver import die_with_parent, free_port

log = logging.getLogger(__name__)

RESTART_DELAY_S = 0.5
MAX_RESTARTS = 5
SUPERSEDED_EXIT = 3  # a worker whose volume a promotion superseded (nodes/node.py)
RESTART_WINDOW_S = 30.0
STOP_EXTRA_S = 15.0


def worker_id(node_id: str, k: int) -> str:
    """The member id of worker ``k`` of node ``node_id``."""
    return f"{node_id}.w{k}"


class Supervisor:
    """Runs the worker processes of one node; see the module docstring."""

    def __init__(self, node_argv: Sequence[str], *, node_id: str, listen: str,
                 processes: int, grace_s: float, metrics_listen: str = "") -> None:
        self.node_argv = list(node_argv)
        self.node_id = node_id
        self.listen = listen
        self.processes = processes
        self.grace_s = grace_s
        self.host = listen.rpartition(":")[0]
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.metrics_listen = metrics_listen
        self.metrics_urls: dict[int, str] = {}  # worker -> where its own metrics are
        self._deaths: list[float] = []
        self._stopping = False

    def _argv(self, k: int) -> list[str]:
        own = f"{self.host}:{free_port(self.host or '127.0.0.1')}"
        metrics = []
        if self.metrics_listen:  # scraped by this process only: loopback
            port = free_port("127.0.0.1")
            self.metrics_urls[k] = f"http://127.0.0.1:{port}/metrics"
            metrics = ["--metrics-listen", f"127.0.0.1:{port}"]
        return [sys.executable, "-m", "nodes", "node", *self.node_argv,
                "--processes", "1", "--node-id", worker_id(self.node_id, k),
                "--listen", own, "--public-listen", self.listen, "--group", self.node_id,
                *metrics]

    def _worker_metrics(self) -> list[tuple[str, str]]:
        """(worker id, its metrics URL) of every worker, as they are now."""
        return [(worker_id(self.node_id, k), url) for k, url in sorted(self.metrics_urls.items())]

    def _start(self, k: int) -> None:
        proc = subprocess.Popen(self._argv(k), preexec_fn=die_with_parent)
        self.workers[k] = proc
        log.info("node %s: worker %d started (pid %d)", self.node_id, k, proc.pid)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if not self._stopping:
            log.info("node %s: %s, stopping its %d workers", self.node_id,
                     signal.Signals(signum).name, len(self.workers))
        self._stopping = True

    def run(self) -> int:
        """Start the workers, keep them running until asked to stop, then stop them; return
        the exit code (0: stopped when asked; 1: workers kept dying)."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        code = 0
        metrics = None
        try:
            if self.metrics_listen:
                from nodes.metrics import serve_workers

                try:
                    metrics = serve_workers(self.metrics_listen, self._worker_metrics)
                except RuntimeError as e:
                    log.error("node %s: %s", self.node_id, e)
                    return 1
                log.info("node %s: metrics of its %d workers at %s", self.node_id,
                         self.processes, metrics.url)
            for k in range(self.processes):
                self._start(k)
            while not self._stopping:
                time.sleep(0.1)
                for k, proc in list(self.workers.items()):
                    if proc.poll() is None or self._stopping:
                        continue
                    if proc.returncode == SUPERSEDED_EXIT:  # the volume is not the primary
                        log.error("node %s: worker %d left because its volume was superseded "
                                  "by a promotion; stopping the node", self.node_id, k)
                        self._stopping, code = True, SUPERSEDED_EXIT
                        break
                    now = time.monotonic()
                    self._deaths = [t for t in self._deaths if now - t < RESTART_WINDOW_S]
                    self._deaths.append(now)
                    if len(self._deaths) > MAX_RESTARTS:
                        log.error("node %s: workers died %d times in %.0f s; stopping the node",
                                  self.node_id, len(self._deaths), RESTART_WINDOW_S)
                        self._stopping, code = True, 1
                        break
                    log.warning("node %s: worker %d (pid %d) exited with %s; starting it again",
                                self.node_id, k, proc.pid, proc.returncode)
                    time.sleep(RESTART_DELAY_S)
                    self._start(k)
        finally:
            self._stop_all()
            if metrics is not None:
                metrics.close()
            for s, h in previous.items():
                signal.signal(s, h)
        return code

    def _stop_all(self) -> None:
        """SIGTERM every worker (each drains), then SIGKILL whatever is left after the grace
        period and a margin."""
        for proc in self.workers.values():
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self.grace_s + STOP_EXTRA_S
        for proc in self.workers.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("node %s: worker pid %d did not stop; killing it", self.node_id,
                            proc.pid)
                proc.kill()
                proc.wait(timeout=5)


def strip_listen_and_id(argv: Sequence[str]) -> list[str]:
    """``shardless node`` arguments without the ones each worker gets its own value of."""
    out: list[str] = []
    skip = False
    own = {"--listen", "--node-id", "--processes", "--public-listen", "--group",
           "--metrics-listen"}
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in own:
            skip = "=" not in a
            continue
        out.append(a)
    return out

