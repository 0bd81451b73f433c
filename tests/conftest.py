"""Shared pytest fixtures: a real etcd server and a real three-node cluster.

Owns: the ``etcd``, ``cluster`` and ``replicas`` fixtures, and the report hook that lets a
fixture know in its teardown whether its test failed, so that it can attach every process's log
to the failure report.
Does not own: markers (``pyproject.toml``) or the process helpers themselves (``tests/harness``).

Invariant: every process a fixture started is stopped in its teardown, pass or fail.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from pathlib import Path

import pytest

from nodes.up import ReplicaProcess, stop_nodes
from tests.harness.cluster import Cluster
from tests.harness.etcd import EtcdServer, start_etcd


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
