"""Real multi-process clusters for integration tests.

Owns: :class:`Node` (one ``python -m nodes node`` process with fault verbs: kill -9, SIGSTOP and
SIGCONT, SIGTERM), :class:`Cluster` (one etcd and N nodes on one volume in a tmp dir, on free
loopback ports) and :func:`wait_for`, the one polling helper tests use instead of bare sleeps.

Does not own: how a node is launched (``nodes.up.NodeProcess`` builds the command line and the
environment, so tests start nodes exactly as ``shardless up`` does) or etcd process handling
(``nodes.etcdserver``).

Invariant: :meth:`Cluster.stop` stops every process the cluster started, by pid (SIGTERM, then
SIGKILL), is idempotent, and is safe to call from a ``finally`` or a fixture teardown even after a
half-finished start. Processes passed in (an ``etcd=`` server) are left to their owner.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from nodes.etcdserver import EtcdServer, free_port, port_is_free
from nodes.up import NodeProcess, NodeStartError, stop_nodes

from .etcd import EtcdCluster, start_etcd

T = TypeVar("T")

DEFAULT_READY_TIMEOUT_S = 30.0
DEFAULT_STOP_TIMEOUT_S = 10.0
_LOG_DUMP_BYTES = 256 * 1024


def wait_for(
    pred: Callable[[], T],
    timeout_s: float,
    interval_s: float = 0.05,
    message: str | Callable[[], str] = "condition",
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``pred`` until it returns something truthy, and return that.

    Args:
        pred: The condition; called repeatedly.
        timeout_s: How long to keep trying.
        interval_s: Pause between calls.
        message: What is being waited for (or a callable building it at timeout, e.g. with state).
        retry_on: Exceptions from ``pred`` that count as "not yet" (the last one is reported).

    Returns:
        The first truthy value of ``pred()``.

    Raises:
        TimeoutError: If ``pred`` stays falsy until the deadline.
    """
    deadline = time.monotonic() + timeout_s
    last_exc: BaseException | None = None
    while True:
        try:
            value = pred()
        except retry_on as e:
            last_exc = e
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            detail = f" (last error: {last_exc!r})" if last_exc is not None else ""
            raise TimeoutError(f"timed out after {timeout_s:.1f}s waiting for {text}{detail}")
        time.sleep(interval_s)


def _read_log(path: Path, max_bytes: int = _LOG_DUMP_BYTES) -> str:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            if size > max_bytes:
                f.seek(size - max_bytes)
            data = f.read()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes:
        text = f"<... first {size - max_bytes} bytes omitted ...>\n{text}"
    return text


class Node(NodeProcess):
    """One node process under test, with fault-injection verbs.

    Construct through :class:`Cluster` (``cluster.add_node()``) rather than directly.
    """

    is_paused: bool = False
    """True between :meth:`pause` and :meth:`resume` (or the process's end)."""

    def start(self) -> None:
        """Launch the process (again, after it exited)."""
        super().start()
        self.is_paused = False

    def kill9(self) -> int | None:
        """Kill the node with SIGKILL (no cleanup at all) and reap it.

        Returns:
            The exit code (``-9``), or None if never started.
        """
        rc = self.kill()
        self.is_paused = False
        return rc

    def pause(self) -> None:
        """Freeze the node with SIGSTOP: it keeps its sockets and file locks but does nothing."""
        if self.send_signal(signal.SIGSTOP):
            self.is_paused = True

    def resume(self) -> None:
        """Thaw the node with SIGCONT."""
        self.send_signal(signal.SIGCONT)
        self.is_paused = False

    def terminate(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> int | None:
        """Stop gracefully: SIGCONT, SIGTERM, wait up to ``timeout_s``, then SIGKILL.

        Returns:
            The exit code, or None if never started.
        """
        rc = super().terminate(timeout_s)
        self.is_paused = False
        return rc

    def restart(self, timeout_s: float = DEFAULT_READY_TIMEOUT_S, wait: bool = True) -> None:
        """Start a new process for this node (same id, port and volume) after it exited.

        Args:
            timeout_s: How long to wait for SERVING.
            wait: Whether to wait for SERVING.
        """
        self.start()
        if wait:
            self.wait_serving(timeout_s)


class Cluster:
    """One etcd server and N node processes sharing one volume under ``tmp_path``.

    Layout: ``tmp_path/etcd`` (etcd data, unless ``etcd`` is given), ``tmp_path/volume`` (the
    shared storage volume) and ``tmp_path/logs`` (``etcd.log``, ``node-1.log``, ...).

    Args:
        tmp_path: The directory for everything this cluster writes.
        n: How many nodes to start.
        ttl_s: Session lease TTL passed to each node (``--ttl``); None for the node default.
        etcd: A running etcd to use (not stopped by :meth:`stop`); None to start one here.
        etcd_members: How many etcd members to start here (1, or 3 for member-loss faults:
            then ``cluster.etcd`` is an :class:`EtcdCluster` with its fault verbs).
        cluster_name: Passed as ``--cluster`` if set.
        node_args: Extra arguments for every node.
        start: Start etcd and the nodes now (and wait until every node is SERVING).
        ready_timeout_s: How long to wait for each node to be SERVING.
        metrics: Give every node a metrics port (``--metrics-listen``; ``node.metrics_url``).

    Raises:
        EtcdServerError | NodeStartError: If starting fails; everything already started is
            stopped before the error propagates, and the logs stay under ``tmp_path/logs``.
    """

    def __init__(
        self,
        tmp_path: str | os.PathLike[str],
        n: int = 3,
        ttl_s: float | None = 3,
        etcd: EtcdServer | EtcdCluster | None = None,
        *,
        etcd_members: int = 1,
        cluster_name: str | None = None,
        node_args: tuple[str, ...] = (),
        start: bool = True,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        metrics: bool = False,
    ) -> None:
        self.metrics = metrics
        self.base_dir = Path(tmp_path).resolve()
        self.volume = self.base_dir / "volume"
        self.logs_dir = self.base_dir / "logs"
        self.ttl_s = ttl_s
        self.cluster_name = cluster_name
        self.node_args = node_args
        self.ready_timeout_s = ready_timeout_s
        self.etcd: EtcdServer | EtcdCluster | None = etcd
        self.etcd_members = etcd_members
        self.owns_etcd = etcd is None
        self.nodes: list[Node] = []
        self._next_index = 1
        if start:
            self.start(n)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, n: int) -> None:
        """Start etcd (if not given) and ``n`` nodes, and wait until every node is SERVING.

        Args:
            n: How many nodes to add.
        """
        try:
            self.volume.mkdir(parents=True, exist_ok=True)
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            if self.etcd is None:
                self.etcd = (start_etcd(self.base_dir, name="etcd") if self.etcd_members == 1
                             else EtcdCluster(self.base_dir, self.etcd_members))
            new = [self._spawn() for _ in range(n)]
            for node in new:
                self._wait_serving_or_repick_port(node)
        except BaseException:
            self.stop()
            raise

    def add_node(self, node_id: str | None = None, wait: bool = True,
                 env: Mapping[str, str] | None = None) -> Node:
        """Start one more node on the same volume and etcd.

        Args:
            node_id: Its id; ``node-<k>`` with the next free k if None.
            wait: Whether to wait until it is SERVING.
            env: More environment variables for it (e.g. ``SHARDLESS_FAULTS``).

        Returns:
            The node (already in :attr:`nodes`).
        """
        node = self._spawn(node_id, env)
        if wait:
            self._wait_serving_or_repick_port(node)
        return node

    def _spawn(self, node_id: str | None = None, env: Mapping[str, str] | None = None
               ) -> Node:
        if self.etcd is None:
            raise RuntimeError("cluster has no etcd; call start() first")
        if node_id is None:
            node_id = f"node-{self._next_index}"
            self._next_index += 1
        node = Node(
            node_id,
            etcd=self.etcd_endpoints,
            volume=self.volume,
            port=free_port(),
            log_path=self.logs_dir / f"{node_id}.log",
            ttl_s=self.ttl_s,
            cluster=self.cluster_name,
            extra_args=self.node_args,
            extra_env=env,
            metrics_port=free_port() if self.metrics else None,
        )
        self.nodes.append(node)
        node.start()
        return node

    def _wait_serving_or_repick_port(self, node: Node, attempts: int = 3) -> None:
        """Wait for SERVING; if the node died because its port was taken meanwhile, retry."""
        for attempt in range(1, attempts + 1):
            try:
                node.wait_serving(self.ready_timeout_s)
                return
            except NodeStartError:
                taken = [node.port] + ([node.metrics_port] if node.metrics_port else [])
                lost_race = not node.is_alive and not all(port_is_free(p) for p in taken)
                if attempt == attempts or not lost_race:
                    raise
                node.port = free_port()
                if node.metrics_port is not None:
                    node.metrics_port = free_port()
                node.start()

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop every process this cluster started: nodes (SIGTERM, then SIGKILL), then etcd.

        Idempotent; never raises for processes that are already gone.

        Args:
            timeout_s: Grace period for the nodes (together) and for etcd before SIGKILL.
        """
        try:
            stop_nodes(self.nodes, timeout_s)
        finally:
            for node in self.nodes:  # belt and braces: nothing may survive a teardown
                if node.is_alive:
                    node.kill()
                node.is_paused = False
            if self.owns_etcd and self.etcd is not None:
                self.etcd.stop(timeout_s)

    def __enter__(self) -> Cluster:
        """Return the (already started) cluster."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop everything."""
        self.stop()

    # -- views ---------------------------------------------------------------------------------

    @property
    def etcd_endpoints(self) -> str:
        """The etcd endpoints as the nodes get them (``host:port[,...]``)."""
        if self.etcd is None:
            raise RuntimeError("cluster has no etcd")
        return getattr(self.etcd, "client_endpoint", self.etcd.endpoint)  # https:// with TLS

    @property
    def addresses(self) -> list[str]:
        """The gRPC addresses of all nodes, in start order (dead ones included)."""
        return [n.address for n in self.nodes]

    @property
    def live_nodes(self) -> list[Node]:
        """The nodes whose process has not exited (paused ones included)."""
        return [n for n in self.nodes if n.is_alive]

    @property
    def grpc_target(self) -> str:
        """A gRPC target over all node addresses, for a round-robin channel."""
        return "ipv4:" + ",".join(self.addresses)

    def node(self, node_id: str) -> Node:
        """Return the node with this id.

        Raises:
            KeyError: If there is none.
        """
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)

    def __getitem__(self, index: int) -> Node:
        """Return the ``index``-th node in start order."""
        return self.nodes[index]

    def __len__(self) -> int:
        """Return the number of nodes ever started."""
        return len(self.nodes)

    # -- faults --------------------------------------------------------------------------------

    def kill9(self, node: Node) -> int | None:
        """Kill ``node`` with SIGKILL; see :meth:`Node.kill9`."""
        return node.kill9()

    def pause(self, node: Node) -> None:
        """SIGSTOP ``node``; see :meth:`Node.pause`."""
        node.pause()

    def resume(self, node: Node) -> None:
        """SIGCONT ``node``; see :meth:`Node.resume`."""
        node.resume()

    # -- waiting and diagnosis -----------------------------------------------------------------

    @staticmethod
    def wait_for(
        pred: Callable[[], T],
        timeout_s: float,
        interval_s: float = 0.05,
        message: str | Callable[[], str] = "condition",
        retry_on: tuple[type[BaseException], ...] = (),
    ) -> T:
        """Poll ``pred`` until truthy; see :func:`wait_for`."""
        return wait_for(pred, timeout_s, interval_s, message, retry_on)

    def dump_logs(self) -> dict[str, str]:
        """Return every process's log text (the tail if large), keyed by a label.

        Returns:
            ``{"etcd (pid ..., log path)": text, "node-1 (pid ..., ...)": text, ...}``.
        """
        logs: dict[str, str] = {}
        if isinstance(self.etcd, EtcdCluster):
            for m in self.etcd.members:
                state = "running" if m.is_alive else f"exit {m.returncode}"
                logs[f"{m.name} (pid {m.pid}, {state}, {m.log_path})"] = _read_log(m.log_path)
        elif self.etcd is not None:
            logs[f"etcd (pid {self.etcd.pid}, {self.etcd.log_path})"] = _read_log(
                self.etcd.log_path
            )
        for n in self.nodes:
            state = "running" if n.is_alive else f"exit {n.returncode}"
            logs[f"{n.name} (pid {n.pid}, {state}, {n.log_path})"] = _read_log(n.log_path)
        return logs

    def __repr__(self) -> str:
        """Describe the cluster's etcd and nodes."""
        return f"Cluster(etcd={self.etcd!r}, nodes={self.nodes!r})"
