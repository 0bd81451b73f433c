"""Benchmark: what a replica costs the writers, and how far an asynchronous one lags.

Run from the repository root (not collected by pytest)::

    python tests/benchmarks/bench_replication.py [--rounds 3] [--seconds 6] [--clients 16]

Starts a real etcd and three real node processes on one volume (``tests.harness.cluster``). In
each round, three configurations in turn, interleaved so that the machine's drift hits them
alike: no replica; one asynchronous replica; one synchronous replica (each a real
``shardless replica`` process on its own volume directory, started and caught up before the
load, stopped after). The load is ``shardless bench --connect`` (single-row upserts from
``--clients`` clients in 4 processes), so throughput and p50/p99 commit latency are measured
by the same harness as every other figure. During the asynchronous runs a sampler asks a node's
Status every 20 ms for the replica's lag (seconds, positions). Prints medians over the rounds,
each as a ratio to no replica, and checks the targets of issue 10: an asynchronous replica costs
under 10% of throughput with lag p99 under 100 ms; a synchronous one keeps at least 0.8x.
Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc

from nodes.etcdserver import free_port
from nodes.up import ReplicaProcess, stop_nodes
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from tests.harness.cluster import Cluster, wait_for

CONFIGS = ("none", "async", "sync")


def run_load(cluster: Cluster, work: Path, name: str, seconds: float, clients: int) -> dict:  # type: ignore[type-arg]
    """One ``shardless bench --connect`` run of single-row upserts; its median figures."""
    report = work / f"{name}.json"
    cmd = [sys.executable, "-m", "nodes", "bench", "--connect", ",".join(cluster.addresses),
           "--workload", "write", "--clients", str(clients), "--seconds", str(seconds),
           "--rounds", "1", "--warmup", "1", "--json", str(report), "--work-dir",
           str(work / f"{name}-work")]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=seconds * 10 + 120)
    res = json.loads(report.read_text())["results"][0]["median"]
    return {"ops_per_s": res["ops_per_s"], "p50_ms": res["p50_ms"], "p99_ms": res["p99_ms"]}


class LagSampler:
    """Status of one node every 20 ms: the replica's lag in seconds and positions."""

    def __init__(self, address: str, replica_id: str) -> None:
        self.address, self.replica_id = address, replica_id
        self.seconds: list[float] = []
        self.positions: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with grpc.insecure_channel(self.address) as ch:
            stub = rpc.ClusterServiceStub(ch)
            while not self._stop.wait(0.02):
                try:
                    st = stub.Status(api.StatusRequest(local_only=True), timeout=2)
                except grpc.RpcError:
                    continue
                for r in st.replicas:
                    if r.replica_id == self.replica_id and r.registered:
                        self.seconds.append(r.lag_seconds)
                        self.positions.append(r.lag_positions)

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--clients", type=int, default=16)
    args = ap.parse_args()
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    figures: dict[str, list[dict]] = {c: [] for c in CONFIGS}  # type: ignore[type-arg]
    lag_s: list[float] = []
    lag_pos: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-repl-") as d:
        work = Path(d)
        with Cluster(work / "cluster", n=3) as cluster:
            for rnd in range(1, args.rounds + 1):
                for config in CONFIGS:
                    replica = None
                    if config != "none":
                        replica = ReplicaProcess(
                            f"{config}-{rnd}", mode=config, etcd=cluster.etcd_endpoints,
                            volume=work / f"{config}-{rnd}" / "volume", port=free_port(),
                            log_path=work / f"{config}-{rnd}" / "replica.log", ttl_s=5)
                        replica.start()
                        replica.wait_serving(120)
                        if config == "sync":
                            wait_for(lambda r=replica: _in_sync_set(cluster, r.name), 30,
                                     message="in the synchronous set")
                    try:
                        name = f"{config}-{rnd}"
                        if config == "async":
                            with LagSampler(cluster.addresses[0], name) as lag:
                                got = run_load(cluster, work, name, args.seconds, args.clients)
                            lag_s.extend(lag.seconds)
                            lag_pos.extend(lag.positions)
                        else:
                            got = run_load(cluster, work, name, args.seconds, args.clients)
                    finally:
                        if replica is not None:
                            stop_nodes([replica])
                    figures[config].append(got)
                    print(f"round {rnd} {config:>5}: {got['ops_per_s']:,.0f} upserts/s, "
                          f"p50 {got['p50_ms']:.1f} ms, p99 {got['p99_ms']:.1f} ms", flush=True)
    med = {c: {k: statistics.median(f[k] for f in figures[c]) for k in figures[c][0]}
           for c in CONFIGS}
    base = med["none"]["ops_per_s"]
    print(f"\nsingle-row upserts, {args.clients} clients, 3 nodes, {args.rounds} rounds of "
          f"{args.seconds:g} s, medians (ratio to no replica, same run):")
    print(f"{'replicas':<10} {'upserts/s':>10} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7}")
    for c in CONFIGS:
        m = med[c]
        print(f"{c:<10} {m['ops_per_s']:>10,.0f} {m['ops_per_s'] / base:>5.2f}x "
              f"{m['p50_ms']:>7.1f} {m['p99_ms']:>7.1f}")
    print(f"async lag under load: p50 {pct(lag_s, 0.5) * 1000:.1f} ms, p99 "
          f"{pct(lag_s, 0.99) * 1000:.1f} ms, max {max(lag_s, default=0) * 1000:.1f} ms; "
          f"positions p50 {pct(lag_pos, 0.5):.0f}, p99 {pct(lag_pos, 0.99):.0f} "
          f"({len(lag_s)} samples)")
    ok = True
    checks = [("async costs under 10% of throughput", med["async"]["ops_per_s"] / base >= 0.9),
              ("async lag p99 under 100 ms", pct(lag_s, 0.99) < 0.1),
              ("sync keeps at least 0.8x", med["sync"]["ops_per_s"] / base >= 0.8)]
    for what, met in checks:
        print(f"target: {what}: {'met' if met else 'NOT met'}")
        ok = ok and met
    return 0 if ok else 1


def _in_sync_set(cluster: Cluster, name: str) -> bool:
    with grpc.insecure_channel(cluster.addresses[0]) as ch:
        st = rpc.ClusterServiceStub(ch).Status(api.StatusRequest(), timeout=10)
    return any(r.replica_id == name and r.sync_state == "sync" for r in st.replicas)


if __name__ == "__main__":
    sys.exit(main())
