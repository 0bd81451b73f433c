"""Benchmark: a node's memory through a session of bad input, and whether it is given back.

Run from the repository root (not collected by pytest)::

    python tests/benchmarks/bench_bad_input_memory.py [--seconds N] [--threads N]

Issue 11 saw a node grow from 48 MB to about 270 MB over a bad-input session and never give it
back. For each variant of the node's memory settings (``nodes/heap.py``): glibc's defaults (8
malloc arenas per core, nothing trimmed: the node before), two arenas only, and the node's
defaults (two arenas, and freed memory given back with ``malloc_trim`` once the node is quiet),
this starts a real one-node cluster and, from ``--threads`` client threads (each its own
connection) for ``--seconds``, sends what a careless or hostile client sends: garbage bytes to
every method, batches of 2,000 rows with one bad row, 5,000-key BatchGets of missing keys,
scans of a missing table, read-only transactions left open (until the per-client limit answers
RESOURCE_EXHAUSTED) and garbage idempotency keys. It samples the node's private resident memory
(``RssAnon``): once warm (a table made, a few calls served), at its peak, when the load stops,
and after ``--idle`` seconds of quiet (past the 30 s idle timeout, so the open transactions are
gone). Figures per variant, side by side; "kept" is what the node still holds after the idle
wait over its warm figure. The variants run one after another on the same machine.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc
import msgpack

from nodes.bench.memory import rss_kb
from shardless import connect, to_key
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from shardless.v1 import types_pb2 as pb
from tests.harness.cluster import Cluster

METHODS = [f"/{s.full_name}/{m.name}" for s in api.DESCRIPTOR.services_by_name.values()
           for m in s.methods if m.name != "Drain" and not m.server_streaming
           and not m.client_streaming]
VARIANTS = {"glibc default, no trim": ("--malloc-arenas", "0", "--no-trim-memory"),
            "2 arenas, no trim": ("--no-trim-memory",),
            "2 arenas + trim": ()}
"""Node flags per variant; the last is the node's defaults."""


def _bad_session(address: str, stop: threading.Event, seed: int, counts: list[int]) -> None:
    rng = random.Random(seed)
    with grpc.insecure_channel(address) as ch:
        rows, txns = rpc.RowServiceStub(ch), rpc.TransactionServiceStub(ch)
        while not stop.is_set():
            what = rng.randrange(6)
            try:
                if what == 0:
                    ch.unary_unary(rng.choice(METHODS))(rng.randbytes(rng.randrange(1, 4096)),
                                                        timeout=5)
                elif what == 1:
                    batch = [[0, [rng.randrange(1 << 40), "x" * 50, i]] for i in range(2000)]
                    batch[rng.randrange(2000)][1][2] = "not an int"
                    rows.Insert(api.WriteRowsRequest(table="t", packed=pb.PackedRows(
                        columns=["id", "v", "n"], rows=msgpack.packb(batch))), timeout=5)
                elif what == 2:
                    rows.BatchGet(api.BatchGetRequest(table="t", keys=[
                        to_key(-rng.randrange(1 << 40)) for _ in range(5000)]), timeout=5)
                elif what == 3:
                    for _ in rows.Scan(api.ScanRequest(table=f"nope{rng.randrange(1000)}"),
                                       timeout=5):
                        pass
                elif what == 4:
                    txns.Begin(api.BeginRequest(read_only=True), timeout=5)
                else:
                    rows.Upsert(api.WriteRowsRequest(table="t", rows=[], idempotency_key=(
                        "k" * rng.randrange(200, 400))), timeout=5)
            except grpc.RpcError:
                pass
            counts[0] += 1


def run_variant(node_args: tuple[str, ...], seconds: float, threads: int, idle_s: float
                ) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        c = Cluster(Path(tmp) / "cluster", n=0, start=False, node_args=node_args)
        c.start(0)
        try:
            node = c.add_node(env={"MALLOC_ARENA_MAX": ""})  # not inherited from this shell
            with connect([node.address], refresh_s=None) as db:
                db.create_table("t", {"id": "int64", "v": "string", "n": "int64"},
                                primary_key="id")
                for i in range(200):
                    db.upsert("t", {"id": i, "v": "warm", "n": i})
            time.sleep(1)
            pid = node.pid
            assert pid is not None
            warm = rss_kb(pid) or 0
            stop, counts, peak = threading.Event(), [0], warm
            workers = [threading.Thread(target=_bad_session, args=(node.address, stop, k,
                                                                   counts), daemon=True)
                       for k in range(threads)]
            for w in workers:
                w.start()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(0.5)
                peak = max(peak, rss_kb(pid) or 0)
            stop.set()
            for w in workers:
                w.join(30)
            after_load = rss_kb(pid) or 0
            time.sleep(idle_s)
            idle = rss_kb(pid) or 0
            assert node.is_alive, node.log_tail(50)
            return {"calls": counts[0], "warm": warm / 1024, "peak": peak / 1024,
                    "load end": after_load / 1024, "after idle": idle / 1024,
                    "kept": (idle - warm) / 1024}
        finally:
            c.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--idle", type=float, default=40.0)
    args = p.parse_args()
    results = {name: run_variant(flags, args.seconds, args.threads, args.idle)
               for name, flags in VARIANTS.items()}
    print(f"bad-input session: {args.threads} threads, {args.seconds:g} s, then "
          f"{args.idle:g} s idle; node private memory (RssAnon), MiB; {os.cpu_count()} cores")
    print(f"{'variant':<24} {'calls':>7} {'warm':>6} {'peak':>6} {'load end':>9} "
          f"{'after idle':>10} {'kept':>6}")
    for name, r in results.items():
        print(f"{name:<24} {r['calls']:>7.0f} {r['warm']:>6.1f} {r['peak']:>6.1f} "
              f"{r['load end']:>9.1f} {r['after idle']:>10.1f} {r['kept']:>6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
