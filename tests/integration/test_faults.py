"""The short form of the fault-injection suite: every workload under every fault kind.

Each test runs one workload (registers with a linearizability check, bank, list-append) with six
clients of the helper over three nodes and a three-member etcd, while the nemesis applies every
fault kind in turn (kill -9, SIGSTOP and restart of a node; kill of an etcd member; loss of etcd
quorum; a full volume) at random moments, the first freeze of a node lasting past its session
lease. A run passes if the checker finds no violation and an ok write gets through after the
last heal. The seed is printed; set ``SHARDLESS_FAULT_SEED`` to replay a run's schedule. The
long form: ``python -m tests.faults.run --minutes 60`` (docs/development.md).
"""

from __future__ import annotations

import os
import random

import pytest

from tests.faults.nemesis import FAULTS
from tests.faults.run import NODE_ARGS, run_workload
from tests.faults.workloads import WORKLOADS

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(300)]

SECONDS = float(os.environ.get("SHARDLESS_FAULT_SECONDS", "25"))


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_workload_under_every_fault_kind(workload: str, make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Every fault kind ran, a freeze outlasted the lease, no violation, writes came back."""
    seed = int(os.environ.get("SHARDLESS_FAULT_SEED", random.randrange(1 << 31)))
    print(f"{workload}: seed {seed} (SHARDLESS_FAULT_SEED={seed} replays the schedule)")
    cluster = make_cluster(*NODE_ARGS, etcd_members=3)
    report = run_workload(workload, cluster, seconds=SECONDS, seed=seed, faults=list(FAULTS))
    print(report.text())
    assert set(report.faults) == set(FAULTS), f"not every fault kind ran: {report.faults}"
    assert any(f.outlasted_lease for f in report.freezes), \
        f"no freeze outlasted the session lease: {report.text()}"
    assert report.ok, report.text()
