"""Start and stop the PostgreSQL baseline's server: a throwaway cluster in a temporary directory.

Owns: finding the server binaries (:func:`find_bindir`: ``--pg-bindir``, ``$SHARDLESS_PG_BINDIR``,
or the newest ``/usr/lib/postgresql/*/bin`` of Debian's ``postgresql`` package), ``initdb`` of a
new cluster, running ``postgres`` on a free loopback port with durable settings (``fsync``,
``synchronous_commit`` and ``full_page_writes`` on) and enough ``max_connections`` for the run's
clients, waiting until it accepts connections, and stopping it.

When we are root, the binaries run as the ``postgres`` user (PostgreSQL refuses to run as
root), and the cluster's directory is made theirs; the postmaster itself is our child (no
``runuser`` in between), so it is signalled by its own pid.

Invariant: :meth:`PostgresServer.stop` (fast shutdown by SIGINT, then SIGKILL after a timeout)
is safe to call at any point and leaves no process; :meth:`close` also removes the directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ENV_BINDIR = "SHARDLESS_PG_BINDIR"
USER = "postgres"
_LOG_TAIL_LINES = 40


class PostgresError(RuntimeError):
    """The PostgreSQL baseline could not be started; its log says why."""


def find_bindir(explicit: str | None = None) -> str | None:
    """Return the directory of the PostgreSQL server binaries, or None if none is installed."""
    for candidate in (explicit, os.environ.get(ENV_BINDIR)):
        if candidate:
            return candidate if os.path.isfile(os.path.join(candidate, "postgres")) else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: [int(x) if x.isdigit() else 0
                                  for x in p.split("/")[-3].split(".")])
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One throwaway PostgreSQL cluster and its postmaster."""

    def __init__(self, bindir: str, max_connections: int = 100) -> None:
        self.bindir = bindir
        self.max_connections = max_connections
        self.root = Path(tempfile.mkdtemp(prefix="shardless-bench-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            import pwd

            try:
                pw = pwd.getpwnam(USER)
            except KeyError:
                raise PostgresError(f"running as root, and there is no {USER!r} user to run "
                                    "PostgreSQL as") from None
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, None before it starts."""
        return self._proc.pid if self._proc is not None else None

    @property
    def params(self) -> dict[str, Any]:
        """How clients connect (see ``targets/postgres.py``)."""
        return {"host": "127.0.0.1", "port": self.port, "user": USER, "dbname": "postgres"}

    def _run(self, argv: list[str], timeout_s: float = 120.0) -> None:
        with self.log_path.open("ab") as log:
            rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=self.root, timeout=timeout_s,
                                env={**os.environ, "LC_ALL": "C"}, **self._as).returncode
        if rc != 0:
            raise PostgresError(f"{' '.join(argv)} exited with code {rc}; log "
                                f"{self.log_path}:\n{self.log_tail()}")

    def start(self, timeout_s: float = 60.0) -> None:
        """initdb, start the postmaster and wait until it accepts connections.

        Raises:
            PostgresError: initdb failed, or the server exited or did not answer in time.
        """
        self._run([os.path.join(self.bindir, "initdb"), "-D", str(self.data), "-U", USER,
                   "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"])
        argv = [os.path.join(self.bindir, "postgres"), "-D", str(self.data),
                "-c", f"port={self.port}", "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={self.root}",
                "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "full_page_writes=on",
                "-c", f"max_connections={self.max_connections}",
                "-c", "logging_collector=off"]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, cwd=self.root,
                                          start_new_session=True,
                                          env={**os.environ, "LC_ALL": "C"}, **self._as)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise PostgresError(f"postgres exited with code {self._proc.returncode}; log "
                                    f"{self.log_path}:\n{self.log_tail()}")
            rc = subprocess.run([os.path.join(self.bindir, "pg_isready"), "-h", "127.0.0.1",
                                 "-p", str(self.port), "-U", USER, "-t", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
            if rc == 0:
                return
            if time.monotonic() > deadline:
                raise PostgresError(f"postgres not ready after {timeout_s:g} s; log "
                                    f"{self.log_path}:\n{self.log_tail()}")
            time.sleep(0.1)

    def version(self) -> str:
        """The server's version line (``postgres --version``)."""
        out = subprocess.run([os.path.join(self.bindir, "postgres"), "--version"],
                             capture_output=True, text=True, **self._as)
        return out.stdout.strip()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the server's log."""
        try:
            text = self.log_path.read_bytes()[-64 * 1024:].decode("utf-8", errors="replace")
        except OSError as e:
            return f"<cannot read {self.log_path}: {e}>"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 15.0) -> None:
        """Fast shutdown (SIGINT to the postmaster), SIGKILL after ``timeout_s``."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def close(self, keep: bool = False) -> None:
        """Stop the server and remove its directory (unless ``keep``)."""
        try:
            self.stop()
        finally:
            if not keep:
                shutil.rmtree(self.root, ignore_errors=True)
