"""Start and stop every system a bench run measures; hand out their :class:`Spec` s.

Owns: the cluster (an embedded etcd and ``--nodes`` node processes on one volume in the work
directory, through ``nodes.up.NodeProcess`` and ``nodes.etcdserver.EtcdServer``, as ``shardless
up`` starts them) or the addresses of one reached with ``--connect``; the echo server process;
the baseline's own etcd (so that its data never mixes with the cluster's lock entries); the
PostgreSQL server (``pgserver.py``), skipped with a printed line when its binaries are not
installed; the LMDB baseline's directory.

Invariant: :meth:`Systems.stop` stops every process this object started, each by its own pid,
whatever failed before; it is called from the runner's ``finally``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from nodes.bench import pgserver
from nodes.bench.echo import UNARY, header
from nodes.bench.memory import local_pids
from nodes.bench.options import Settings
from nodes.bench.targets import Spec
from nodes.etcdserver import EtcdServer, find_etcd_binary, free_port
from nodes.up import NodeProcess, node_env, stop_nodes
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc

READY_TIMEOUT_S = 60.0


class StartError(RuntimeError):
    """A system could not be started; the message carries its log."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_bytes()[-64 * 1024:].decode("utf-8", errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(text.splitlines()[-lines:])


class EchoProcess:
    """The echo server (``python -m nodes.bench.echo``) in its own process group."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The server's pid."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start the server and wait until an echo call is answered."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "nodes.bench.echo", "--listen", self.address],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=node_env(), start_new_session=True)
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as ch:
            call = ch.unary_unary(UNARY)
            while True:
                if self._proc.poll() is not None:
                    raise StartError(f"echo server exited with code {self._proc.returncode}; "
                                     f"log {self.log_path}:\n{_tail(self.log_path)}")
                try:
                    call(header(1), timeout=1.0, wait_for_ready=True)
                    return
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise StartError(f"echo server not answering after {timeout_s:g} s; "
                                         f"log {self.log_path}:\n{_tail(self.log_path)}"
                                         ) from None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Systems:
    """The cluster and the baselines of one run (see the module docstring).

    Args:
        settings: The run's settings.
        work_dir: Where data and logs go.
        say: Prints one line for the user.
    """

    def __init__(self, settings: Settings, work_dir: Path,
                 say: Callable[[str], None]) -> None:
        self.settings = settings
        self.work_dir = work_dir
        self.say = say
        self.etcd: EtcdServer | None = None
        self.nodes: list[NodeProcess] = []
        self.echo: EchoProcess | None = None
        self.baseline_etcd: EtcdServer | None = None
        self.postgres: pgserver.PostgresServer | None = None
        self.specs: list[Spec] = []
        self.skipped: dict[str, str] = {}
        self.versions: dict[str, str] = {}
        self.node_pids: dict[str, int] = {}

    # -- start -------------------------------------------------------------------------------

    def _etcd(self, name: str) -> EtcdServer:
        server = EtcdServer(self.work_dir / name, name=name,
                            binary=find_etcd_binary(self.settings.etcd_bin),
                            log_path=self.work_dir / "logs" / f"{name}.log")
        server.start()
        server.wait_ready(timeout_s=READY_TIMEOUT_S)
        if "etcd" not in self.versions:
            out = subprocess.run([find_etcd_binary(self.settings.etcd_bin), "--version"],
                                 capture_output=True, text=True)
            self.versions["etcd"] = (out.stdout.splitlines() or ["?"])[0]
        return server

    def start(self) -> list[Spec]:
        """Start (or reach) everything; return the targets in round order, Shardless first.

        Raises:
            StartError: a system did not start (the message carries its log).
            nodes.etcdserver.EtcdServerError, nodes.up.NodeStartError: likewise.
        """
        s = self.settings
        if s.connect:
            addresses = list(s.connect)
            self.say(f"shardless: using the running cluster at {','.join(addresses)}")
            self.node_pids = self._connected_pids(addresses)
        else:
            self.etcd = self._etcd("etcd")
            self.say(f"etcd: ready at {self.etcd.endpoint} (pid {self.etcd.pid})")
            for i in range(1, s.nodes + 1):
                node = NodeProcess(f"node-{i}", etcd=self.etcd.endpoint,
                                   volume=self.work_dir / "volume", port=free_port(),
                                   log_path=self.work_dir / "logs" / f"node-{i}.log",
                                   cluster="bench",
                                   extra_args=("--processes", str(s.node_processes)))
                self.nodes.append(node)
                node.start()
            for node in self.nodes:
                node.wait_serving(timeout_s=READY_TIMEOUT_S)
            addresses = [n.address for n in self.nodes]
            self.node_pids = {n.name: n.pid for n in self.nodes if n.pid is not None}
            if s.node_processes > 1:  # sample the workers, not their supervisors
                deadline = time.monotonic() + READY_TIMEOUT_S
                while True:
                    self.node_pids = self._connected_pids(addresses)
                    if len(self.node_pids) >= s.nodes * s.node_processes or \
                            time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
            self.say(f"shardless: {len(self.nodes)} node(s) at {','.join(addresses)} "
                     f"(pids {' '.join(str(p) for p in self.node_pids.values())})")
        self.specs.append(Spec("shardless", {"addresses": addresses}))
        for name in s.baselines:
            spec = getattr(self, f"_start_{name}")()
            if spec is not None:
                self.specs.append(spec)
        return self.specs

    def _connected_pids(self, addresses: list[str]) -> dict[str, int]:
        with grpc.insecure_channel(addresses[0]) as ch:
            try:
                st = rpc.ClusterServiceStub(ch).Status(api.StatusRequest(), timeout=10)
            except grpc.RpcError as e:
                raise StartError(f"--connect {addresses[0]}: Status failed: "
                                 f"{e.code().name}: {e.details()}") from None
        pids = local_pids((m.node_id, m.address, m.pid) for m in st.members)
        if not pids:
            self.say("memory: the cluster's nodes are not processes of this host; "
                     "their memory is not sampled")
        return pids

    def _start_echo(self) -> Spec:
        self.echo = EchoProcess(self.work_dir / "logs" / "echo.log")
        self.echo.start()
        self.say(f"echo: ready at {self.echo.address} (pid {self.echo.pid})")
        return Spec("echo", {"address": self.echo.address})

    def _start_etcd(self) -> Spec:
        self.baseline_etcd = self._etcd("etcd-baseline")
        self.say(f"etcd baseline: ready at {self.baseline_etcd.endpoint} "
                 f"(pid {self.baseline_etcd.pid})")
        return Spec("etcd", {"endpoint": self.baseline_etcd.endpoint})

    def _start_lmdb(self) -> Spec:
        path = self.work_dir / "lmdb-baseline"
        self.say(f"lmdb baseline: {path} (in-process in each client process, sync on)")
        return Spec("lmdb", {"path": str(path)})

    def _start_postgres(self) -> Spec | None:
        bindir = pgserver.find_bindir(self.settings.pg_bindir)
        if bindir is None:
            reason = ("PostgreSQL server binaries not found (install Debian's postgresql "
                      "package, or give --pg-bindir)")
            self.skipped["postgres"] = reason
            self.say(f"postgres baseline: SKIPPED: {reason}")
            return None
        try:
            import psycopg  # noqa: F401
        except ImportError:
            reason = "psycopg is not installed (pip install 'shardless[bench]')"
            self.skipped["postgres"] = reason
            self.say(f"postgres baseline: SKIPPED: {reason}")
            return None
        self.postgres = pgserver.PostgresServer(
            bindir, max_connections=max(self.settings.client_counts) + 20)
        try:
            self.postgres.start()
        except (pgserver.PostgresError, OSError, subprocess.SubprocessError) as e:
            raise StartError(f"postgres baseline: {e}") from e
        self.versions["postgres"] = self.postgres.version()
        self.say(f"postgres baseline: ready at 127.0.0.1:{self.postgres.port} "
                 f"(pid {self.postgres.pid}, {self.versions['postgres']}, fsync on, "
                 f"synchronous_commit on)")
        return Spec("postgres", self.postgres.params)

    # -- stop --------------------------------------------------------------------------------

    def pids(self) -> dict[str, int]:
        """Every process started here, by name (for the report and the tests)."""
        out: dict[str, int] = {}
        for name, proc in (("etcd", self.etcd), ("echo", self.echo),
                           ("etcd-baseline", self.baseline_etcd), ("postgres", self.postgres)):
            if proc is not None and proc.pid is not None:
                out[name] = proc.pid
        for n in self.nodes:
            if n.pid is not None:
                out[n.name] = n.pid
        return out

    def logs(self) -> dict[str, str]:
        """The tail of every started process's log, for a failure report."""
        out = {}
        for n in self.nodes:
            out[f"{n.name} (pid {n.pid}, {n.log_path})"] = n.log_tail()
        for name, server in (("etcd", self.etcd), ("etcd-baseline", self.baseline_etcd)):
            if server is not None:
                out[f"{name} (pid {server.pid}, {server.log_path})"] = server.log_tail()
        if self.echo is not None:
            out[f"echo (pid {self.echo.pid}, {self.echo.log_path})"] = _tail(self.echo.log_path)
        if self.postgres is not None:
            out[f"postgres (pid {self.postgres.pid}, {self.postgres.log_path})"] = (
                self.postgres.log_tail())
        return out

    def stop(self) -> None:
        """Stop everything started here (nodes first, then etcd and the baselines)."""
        steps: list[Callable[[], Any]] = [lambda: stop_nodes(self.nodes)]
        if self.etcd is not None:
            steps.append(self.etcd.stop)
        if self.echo is not None:
            steps.append(self.echo.stop)
        if self.baseline_etcd is not None:
            steps.append(self.baseline_etcd.stop)
        if self.postgres is not None:
            pg = self.postgres
            steps.append(lambda: pg.close(keep=self.settings.keep))
        errors = []
        for step in steps:
            try:
                step()
            except Exception as e:  # stop the others whatever one did
                errors.append(e)
        if errors:
            raise errors[0]
