"""Shared pytest fixtures: a real etcd server and a real three-node cluster.

Owns: the ``etcd``, ``cluster`` and ``replicas`` fixtures, the report hook that lets a
fixture know in its teardown whether its test failed, so that it can attach every process's log
to the failure report, and the session's one choice of etcd binary: made at configure time
(``tests.harness.etcd.pin_session_etcd``), named in the report header, and warned about in the
terminal summary when tests killed etcd members on a release with etcd-io/etcd#13766.
Does not own: markers (``pyproject.toml``) or the process helpers themselves (``tests/harness``).

Invariant: every process a fixture started is stopped in its teardown, pass or fail.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Generator, Mapping
from pathlib import Path

import pytest

from nodes.up import ReplicaProcess, stop_nodes
from tests.harness.cluster import Cluster
from tests.harness.etcd import (
    CRASH_BUG,
    ENV_ETCD_BIN,
    MEMBER_KILLS,
    EtcdServer,
    pin_session_etcd,
    session_etcd,
    start_etcd,
)

ENV_REQUIRE_FIXED_ETCD = "SHARDLESS_REQUIRE_FIXED_ETCD"
"""Set to 1 (CI does) to refuse to run the suite on an etcd with etcd-io/etcd#13766."""


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """Choose the session's etcd binary once, before any test starts one; and take SIGTERM (a
    CI timeout, ``kill``) as Ctrl-C, so that the fixtures' teardowns stop their processes and
    pytest reports what ran, instead of the process vanishing mid-test."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    chosen = pin_session_etcd()
    if (chosen is not None and chosen.chosen.has_crash_bug
            and os.environ.get(ENV_REQUIRE_FIXED_ETCD) == "1"):
        raise pytest.UsageError(
            f"{ENV_REQUIRE_FIXED_ETCD}=1 but the session's etcd is {chosen.chosen.describe()}: "
            f"install Debian's etcd-server (3.4.23) or an etcd >= 3.5.3, or set {ENV_ETCD_BIN}")


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Name the etcd binary every test of this session runs, and why."""
    chosen = session_etcd()
    if chosen is None:
        return ["etcd: none found (integration tests will fail to start one)"]
    lines = [f"etcd: {chosen.chosen.describe()}; {chosen.why}; the whole session runs it "
             f"({ENV_ETCD_BIN})"]
    lines += [f"etcd not used: {other.describe()}" for other in chosen.others]
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which etcd ran, and warn loudly if tests killed members of one with the crash bug."""
    chosen = session_etcd()
    if chosen is None or not MEMBER_KILLS:
        return
    tr = terminalreporter
    binary = chosen.chosen
    if not binary.has_crash_bug:
        tr.write_sep("-", f"tests that killed etcd members ran on {binary.describe()}")
        return
    failed = {r.nodeid for r in tr.stats.get("failed", [])}
    tr.write_sep("!", f"etcd fault tests ran on an etcd with {CRASH_BUG}", red=True, bold=True)
    tr.write_line(
        f"{binary.describe()}: after a member is killed and restarts, a transaction it had "
        f"committed can be missing from it (fixed in etcd 3.5.3). These tests killed etcd "
        f"members on it, so a failure of theirs may be etcd's, not Shardless's:", red=True)
    for test, kills in sorted(MEMBER_KILLS.items()):
        mark = "FAILED" if test in failed else "passed or skipped"
        tr.write_line(f"  {test}: {kills} kill(s), {mark}", red=True)
    tr.write_line(
        f"Run them on an etcd without the bug: apt-get install etcd-server (Debian's 3.4.23; "
        f"preferred automatically when present), or {ENV_ETCD_BIN}=/path/to/etcd-3.5.3+.",
        red=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Store each phase's report on the item as ``rep_setup``, ``rep_call``, ``rep_teardown``."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed_report(request: pytest.FixtureRequest) -> pytest.TestReport | None:
    for when in ("call", "setup"):
        report = getattr(request.node, f"rep_{when}", None)
        if report is not None and report.failed:
            return report
    return None


def _format_logs(logs: Mapping[str, str]) -> str:
    parts = []
    for label, text in logs.items():
        parts.append(f"===== {label} =====\n{text.rstrip()}\n")
    return "\n".join(parts)


def _report_logs(request: pytest.FixtureRequest, title: str, logs: Mapping[str, str]) -> None:
    """If the test failed, attach the logs to its failure report.

    The failure summary is printed at the end of the session from the stored report objects, so
    a section added during teardown is still printed under the failing test (printing here as
    well would show every log twice, once more as "Captured stdout teardown").
    """
    report = _failed_report(request)
    if report is None:
        return
    report.sections.append((f"Captured {title}", _format_logs(logs)))


@pytest.fixture
def etcd(tmp_path: Path, request: pytest.FixtureRequest) -> Generator[EtcdServer, None, None]:
    """A single-member etcd on free loopback ports; its log is shown if the test fails."""
    server = start_etcd(tmp_path / "etcd-fixture")
    try:
        yield server
    finally:
        try:
            _report_logs(
                request,
                "etcd log",
                {f"etcd (pid {server.pid}, {server.log_path})": server.log_tail(10_000)},
            )
        finally:
            server.stop()


def _running(c: Cluster, request: pytest.FixtureRequest, n: int = 3
             ) -> Generator[Cluster, None, None]:
    """Start ``n`` nodes of ``c``, yield it, stop it; its logs go to the report on failure."""
    try:
        c.start(n)
    except Exception as e:  # Cluster.start has already stopped what it started
        e.add_note(f"cluster logs:\n{_format_logs(c.dump_logs())}")
        raise
    try:
        yield c
    finally:
        try:
            _report_logs(request, "cluster logs", c.dump_logs())
        finally:
            c.stop()


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Generator[Cluster, None, None]:
    """Three node processes on one volume with their own etcd; all logs shown on failure."""
    yield from _running(Cluster(tmp_path / "cluster", n=3, start=False), request)


@pytest.fixture
def make_cluster(tmp_path: Path, request: pytest.FixtureRequest
                 ) -> Generator[Callable[..., Cluster], None, None]:
    """A factory of clusters started with extra node flags; all stopped, logs on failure."""
    made: list[Cluster] = []

    def make(*node_args: str, n: int = 3, etcd_members: int = 1, ttl_s: float = 3,
             metrics: bool = False) -> Cluster:
        c = Cluster(tmp_path / f"cluster-{len(made)}", n=n, ttl_s=ttl_s, node_args=node_args,
                    etcd_members=etcd_members, start=False, metrics=metrics)
        made.append(c)
        c.start(n)
        return c

    try:
        yield make
    finally:
        for c in made:
            try:
                _report_logs(request, f"logs of {c.base_dir.name}", c.dump_logs())
            finally:
                c.stop()


@pytest.fixture
def cluster3(tmp_path: Path, request: pytest.FixtureRequest) -> Generator[Cluster, None, None]:
    """Three node processes over a three-member etcd (``cluster3.etcd`` is an ``EtcdCluster``
    with fault verbs); all logs shown on failure. The nodes run the default TTL (5 s): the death
    of etcd's raft leader costs an election of one to two seconds, which a 3 s TTL (2 s before
    self-fencing) does not always cover."""
    yield from _running(
        Cluster(tmp_path / "cluster", n=3, ttl_s=5, etcd_members=3, start=False), request)


@pytest.fixture
def replicas(request: pytest.FixtureRequest) -> Generator[list[ReplicaProcess], None, None]:
    """Replica processes a test starts (``shardless replica``); all stopped, their logs shown
    on failure."""
    made: list[ReplicaProcess] = []
    try:
        yield made
    finally:
        stop_nodes(made)
        _report_logs(request, "logs of the replicas", {r.name: r.log_tail(300) for r in made})
