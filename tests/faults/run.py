"""Run a workload against a cluster under the nemesis, and check what the clients saw.

Used by the short CI test (``tests/integration/test_faults.py``) and by hand for long runs::

    python -m tests.faults.run --minutes 60 [--workload all] [--seed N] [--faults all]

The long form starts its own cluster (three etcd members, three nodes) in a temporary
directory, runs each chosen workload in turn for its share of the time with every chosen fault
kind, prints every fault with its time, the operations by outcome and the checker's verdict,
and exits 1 on any violation. The seed (printed; random unless given) replays the same
schedule of faults and the same client choices (the timing of a real cluster does not replay).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from shardless import Client, connect
from tests.faults.history import OK
from tests.faults.nemesis import FAULTS, Freeze, Nemesis
from tests.faults.workloads import WORKLOADS, Workload
from tests.harness.cluster import Cluster, wait_for

NODE_ARGS = ("--map-size", str(32 << 20))
"""Flags of the nodes of a fault run: a small volume, so that ``fill-disk`` fills it fast."""
RECOVERY_TIMEOUT_S = 20.0
"""How long after the last heal the clients have to get an ok write through."""
AFTER_RECOVERY_S = 2.0
"""How long the clients carry on once they have."""


@dataclass
class Report:
    workload: str
    seed: int
    seconds: float
    counts: dict[str, int]
    faults: dict[str, int]
    verdict_ok: bool
    summary: str
    errors: list[str] = field(default_factory=list)
    writes_after_heal: int = 0
    """Ok operations that changed state (``Workload.is_write``) invoked after the last heal."""
    freezes: list[Freeze] = field(default_factory=list)
    """The node freezes (SIGSTOP) of the run: how long each lasted, against the session TTL."""

    @property
    def ok(self) -> bool:
        return (self.verdict_ok and not self.errors and self.counts.get(OK, 0) > 0
                and self.writes_after_heal > 0)

    def text(self) -> str:
        faults = ", ".join(f"{k} x{v}" for k, v in sorted(self.faults.items())) or "none"
        lines = [f"{self.workload}: seed {self.seed}, {self.seconds:.0f} s, ops "
                 + ", ".join(f"{k} {v}" for k, v in self.counts.items())
                 + f"; ok writes after healing {self.writes_after_heal}; faults {faults}",
                 f"  {self.summary}"]
        if self.freezes:
            past = sum(f.outlasted_lease for f in self.freezes)
            lines.insert(1, f"  freezes ({past} past the lease): "
                            + "; ".join(f.describe() for f in self.freezes))
        lines += [f"  ERROR {e}" for e in self.errors]
        lines.append(f"  => {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)


def _wait_serving(cluster: Cluster, timeout_s: float) -> None:
    for node in cluster.nodes:
        node.wait_serving(timeout_s)


def _final_read(workload: Workload, cluster: Cluster, timeout_s: float) -> str:
    """Read the final state once the cluster answers again; return an error or ''."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with connect(cluster.addresses, timeout_s=5, refresh_s=None) as db:
                workload.read_final(db)
            return ""
        except grpc.RpcError as e:
            last = f"{e.code().name}: {e.details()}"
            time.sleep(0.5)
    return f"final read failed for {timeout_s:g} s: {last}"


def run_workload(name: str, cluster: Cluster, *, seconds: float, seed: int,
                 faults: Sequence[str], clients: int = 6,
                 log: Callable[[str], None] = print) -> Report:
    """Run workload ``name`` with ``clients`` clients of the helper for ``seconds`` while the
    nemesis injects ``faults`` (in turn); heal, read the final state, check."""
    workload = WORKLOADS[name](seed)
    with connect(cluster.addresses, timeout_s=10, refresh_s=None) as db:
        workload.setup(db)
    errors: list[str] = []
    stop = threading.Event()
    dbs: list[Client] = [connect(cluster.addresses, timeout_s=3, attempts=4, refresh_s=None)
                         for _ in range(clients)]
    threads = [threading.Thread(target=workload.run_client, args=(i, dbs[i], stop, errors),
                                name=f"{name}-{i}", daemon=True) for i in range(clients)]
    nemesis = Nemesis(cluster, list(faults), seed, seconds, log=log)
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        nemesis.start()
        time.sleep(seconds)
        nemesis.wait(120)
    finally:
        nemesis.stop()
    try:
        _wait_serving(cluster, 30)
    except Exception as e:
        errors.append(f"cluster did not recover: {e!r}")
    healed_at = time.monotonic()

    def writes_after_heal() -> int:
        return sum(1 for op in workload.history.ops()
                   if op.call > healed_at and workload.is_write(op))

    # Clients carry on after the faults until a write gets through (bounded), and a bit more.
    try:
        wait_for(writes_after_heal, RECOVERY_TIMEOUT_S, interval_s=0.2,
                 message="an ok write after the last heal")
    except TimeoutError as e:
        errors.append(f"the write path did not recover: {e}")
    time.sleep(AFTER_RECOVERY_S)
    stop.set()
    for t in threads:
        t.join(timeout=30)
        if t.is_alive():
            errors.append(f"client thread {t.name} did not stop")
    for db in dbs:
        db.close()
    writes_after = writes_after_heal()
    err = _final_read(workload, cluster, 60)
    if err:
        errors.append(err)
    verdict_ok, summary = workload.check() if not err else (False, "no final read")
    errors += nemesis.errors
    return Report(name, seed, time.monotonic() - started, workload.counts(),
                  dict(nemesis.applied), verdict_ok, summary, errors, writes_after,
                  list(nemesis.freezes))


def main(argv: list[str] | None = None) -> int:
    """The long run: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="total time (default 60)")
    ap.add_argument("--workload", default="all",
                    help=f"one of {', '.join(WORKLOADS)}, or all (default; run in turn)")
    ap.add_argument("--faults", default="all",
                    help=f"comma-separated from {', '.join(FAULTS)}, or all (default)")
    ap.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    ap.add_argument("--round-minutes", type=float, default=5.0,
                    help="minutes per workload run before a fresh check (default 5)")
    ap.add_argument("--clients", type=int, default=6)
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    faults = list(FAULTS) if args.faults == "all" else args.faults.split(",")
    print(f"seed {seed}; workloads {', '.join(names)}; faults {', '.join(faults)}", flush=True)
    deadline = time.monotonic() + args.minutes * 60
    reports: list[Report] = []
    k = 0
    while time.monotonic() < deadline:
        name = names[k % len(names)]
        round_seed = seed + k
        seconds = min(args.round_minutes * 60, max(10.0, deadline - time.monotonic()))
        with tempfile.TemporaryDirectory(prefix="shardless-faults-") as tmp:
            cluster = Cluster(Path(tmp) / "cluster", n=3, ttl_s=3, etcd_members=3,
                              node_args=NODE_ARGS)
            report: Report | None = None
            try:
                report = run_workload(name, cluster, seconds=seconds, seed=round_seed,
                                      faults=faults, clients=args.clients,
                                      log=lambda s: print(s, flush=True))
            finally:
                if report is None or not report.ok:
                    for label, text in cluster.dump_logs().items():
                        print(f"===== {label} =====\n{text[-20000:]}")
                cluster.stop()
        print(report.text(), flush=True)
        reports.append(report)
        k += 1
    failed = [r for r in reports if not r.ok]
    print(f"\n{len(reports)} runs, {sum(sum(r.counts.values()) for r in reports)} operations, "
          f"{sum(sum(r.faults.values()) for r in reports)} faults; "
          f"{len(failed)} failed (seeds: {', '.join(str(r.seed) for r in failed) or '-'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
