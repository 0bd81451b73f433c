"""Benchmark: the change stream against the commit rate it follows, in the same run.

Run from the repository root (not collected by pytest)::

    python tests/benchmarks/bench_changes.py [--seconds N] [--writers N] [--rounds N]

Starts a real three-node cluster and, in interleaved rounds of ``--seconds`` each, runs
``--writers`` client threads (each its own connection, spread over the nodes) upserting one row
per call as fast as they are answered (connected before the clock starts; the first
``--warmup`` seconds are not measured, though their commits must be delivered too):

- ``none`` (baseline): no consumer;
- ``watch``: one consumer following the table with the helper's ``watch`` (the next node's
  stream after another), taking every change;
- ``watch+idle``: the same, and ten more streams of the table, from the head, opened and never
  read (slow consumers: they should cost commits little).

For each round: the commit rate (acknowledged upserts per second), the rate the consumer
received changes at over the same window, whether it received every acknowledged commit, and
the commit-to-delivery latency of each change, two ways (one machine, one clock): from its
acknowledgement (the consumer's clock when it got the change minus the writer's when the
upsert returned: the commit was durable and answered; 0 when the change came first), and from
the time the log records (taken in the write transaction, before its sync: this one includes
the commit's own wait for the disk, which the writer sees too).
Figures are medians over the rounds; the ratios are against ``none``. Targets (issue 12): the
stream keeps up (delivered = committed) and p99 commit-to-delivery latency under 50 ms.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc

from shardless import connect
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from tests.harness.cluster import Cluster


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def consume(addresses: list[str], table: str, start: int, conn: Any) -> None:
    """The consumer process: follow ``table`` from ``start`` until the position the parent
    sends has arrived; send back (position, commit ts, received at) of every change."""
    got: list[tuple[int, float, float]] = []
    with connect(addresses, refresh_s=None) as db, db.watch(table, position=start) as w:
        conn.send("ready")
        last = None
        for c in w:
            got.append((c.position, c.ts, time.time()))
            if last is None and conn.poll():
                last = conn.recv()
            if last is not None and c.position >= last:
                break
    conn.send(got)


def round_(cluster: Cluster, table: str, seconds: float, writers: int, mode: str,
           warmup: float) -> dict:
    with connect(cluster.addresses, refresh_s=None) as db:
        db.create_table(table, {"id": "int64", "v": "string"}, primary_key="id")
        idle = []
        if mode == "watch+idle":
            head = db.status().commit_position
            for i in range(10):
                ch = grpc.insecure_channel(cluster.addresses[i % len(cluster.addresses)])
                idle.append((ch, rpc.ChangeServiceStub(ch).Watch(api.WatchRequest(
                    table=table, start_position=head + 1))))
        # The consumer runs in a process of its own, so that its work does not take the
        # writers' interpreter (the GIL) and the figures are the servers'.
        consumer = None
        if mode != "none":
            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe()
            start = db.status().commit_position + 1
            consumer = ctx.Process(target=consume, args=(cluster.addresses, table, start, child),
                                   daemon=True)
            consumer.start()
            assert parent.recv() == "ready"
        acked: list[int] = []
        acked_at: dict[int, float] = {}
        stop = threading.Event()
        clients = [connect([cluster.addresses[k % len(cluster.addresses)]], refresh_s=None)
                   for k in range(writers)]
        for w in clients:  # connected before the clock starts
            w.status()

        def write(k: int) -> None:
            w, i = clients[k], 0
            while not stop.is_set():
                position = w.upsert(table, {"id": k * 10**7 + i, "v": "x" * 100})
                acked_at[position] = time.time()
                acked.append(position)
                i += 1

        threads = [threading.Thread(target=write, args=(k,), daemon=True)
                   for k in range(writers)]
        for t in threads:
            t.start()
        time.sleep(warmup)
        t0 = time.time()  # the measured window: after the warm-up
        time.sleep(seconds)
        t1 = time.time()
        stop.set()
        for t in threads:
            t.join(30)
        for w in clients:
            w.close()
        measured = {p for p, at in acked_at.items() if t0 <= at <= t1}
        out = {"commits_per_s": len(measured) / (t1 - t0)}
        if consumer is not None:
            parent.send(max(acked))
            # A last write after that, so that a consumer already past it hears of it.
            db.upsert(table, {"id": -1, "v": ""})
            got = parent.recv()
            consumer.join(30)
            positions = {p for p, _, _ in got}
            out["complete"] = set(acked) <= positions  # the warm-up's too
            in_window = [g for g in got if g[0] in measured]
            out["delivered_per_s"] = sum(1 for g in got if t0 <= g[2] <= t1) / (t1 - t0)
            lat = [max(0.0, recv - acked_at[p]) * 1000 for p, _, recv in in_window]
            out["p50_ms"], out["p99_ms"] = pct(lat, 0.5), pct(lat, 0.99)
            out["max_ms"] = max(lat) if lat else float("nan")
            lat = [max(0.0, recv - ts) * 1000 for _, ts, recv in in_window]
            out["p50_ts_ms"], out["p99_ts_ms"] = pct(lat, 0.5), pct(lat, 0.99)
        for ch, call in idle:
            call.cancel()
            ch.close()
        db.drop_table(table)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--writers", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=float, default=1.0,
                   help="seconds of writing before the measured window (connections, caches "
                        "and the stream warm up; its commits must be delivered too)")
    args = p.parse_args()
    modes = ["none", "watch", "watch+idle"]
    results: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp) / "c", n=3)
        try:
            n = 0
            for r in range(args.rounds):
                for mode in modes:
                    n += 1
                    res = round_(cluster, f"t{n}", args.seconds, args.writers, mode,
                                 args.warmup)
                    results[mode].append(res)
                    print(f"round {r + 1} {mode}: " + ", ".join(
                        f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in res.items()), flush=True)
        finally:
            cluster.stop()
    base = statistics.median(x["commits_per_s"] for x in results["none"])
    print(f"\n{os.cpu_count()} cores, 3 nodes, {args.writers} writers, {args.seconds:g} s x "
          f"{args.rounds} rounds (medians)")
    print("latency of delivery: from the acknowledgement (p50, p99, max), and from the "
          "record's time (p50 ts, p99 ts)")
    print(f"{'consumers':<12} {'commits/s':>10} {'vs none':>8} {'delivered/s':>12} "
          f"{'complete':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'p50 ts':>7} "
          f"{'p99 ts':>7}")
    for mode in modes:
        rs = results[mode]
        c = statistics.median(x["commits_per_s"] for x in rs)
        if mode == "none":
            print(f"{mode:<12} {c:>10.0f} {1.0:>7.2f}x")
            continue
        d = statistics.median(x["delivered_per_s"] for x in rs)
        print(f"{mode:<12} {c:>10.0f} {c / base:>7.2f}x {d:>12.0f} "
              f"{all(x['complete'] for x in rs)!s:>9} "
              f"{statistics.median(x['p50_ms'] for x in rs):>7.1f} "
              f"{statistics.median(x['p99_ms'] for x in rs):>7.1f} "
              f"{max(x['max_ms'] for x in rs):>7.1f} "
              f"{statistics.median(x['p50_ts_ms'] for x in rs):>7.1f} "
              f"{statistics.median(x['p99_ts_ms'] for x in rs):>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
