"""Benchmark: bulk loads, rows per second, against LMDB's own pace in the same run.

Run from the repository root (not collected by pytest)::

    python tests/benchmarks/bench_bulk.py [--rows N] [--rounds N]

Starts a real one-node cluster (its own etcd, LMDB volume and node process over gRPC) and loads
``--rows`` rows of a three-column table (int64 key, a 20-character string, an int64) in one
call, in interleaved rounds, each into a fresh table:

- ``packed``: the Python helper's ``insert`` (from 16 rows it sends them as ``PackedRows``);
- ``rows``: the same call with one ``Row`` message per row (what every client sent before);
- ``lmdb`` (baseline): the same rows encoded as storage encodes them (key and row) and put in
  one synced LMDB write transaction by py-lmdb, in this process: the storage's own pace, with
  none of the database around it.

Times are the client's, from the call to its answer (the helper's, including encoding). Figures
are medians over the rounds; the ratio is each against ``lmdb``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lmdb

from shardless import connect, to_row
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from storage.keycode import encode
from storage.rows import encode as encode_row
from tests.harness.cluster import Cluster


def _rows(n: int, base: int) -> list[dict]:
    return [{"id": base + i, "v": "x" * 20, "n": i} for i in range(n)]


def lmdb_baseline(rows: list[dict], directory: Path) -> float:
    env = lmdb.open(str(directory), map_size=4 << 30, sync=True)
    try:
        t0 = time.perf_counter()
        with env.begin(write=True) as txn:
            for r in rows:
                txn.put(b"r" + encode((r["id"],)), encode_row(1, [r["id"], r["v"], r["n"]]))
        env.sync(True)
        return time.perf_counter() - t0
    finally:
        env.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    times: dict[str, list[float]] = {"packed": [], "rows": [], "lmdb": []}
    with tempfile.TemporaryDirectory() as tmp, Cluster(Path(tmp) / "cluster", n=1) as c, \
            connect(c.addresses, timeout_s=600, refresh_s=None) as db:
        stub = rpc.RowServiceStub(db.channel)
        for k in range(args.rounds):
            for kind in ("packed", "rows", "lmdb"):
                rows = _rows(args.rows, 0)
                table = f"{kind}_{k}"
                if kind == "lmdb":
                    d = Path(tmp) / table
                    d.mkdir()
                    times[kind].append(lmdb_baseline(rows, d))
                    continue
                db.create_table(table, {"id": "int64", "v": "string", "n": "int64"},
                                primary_key="id")
                t0 = time.perf_counter()
                if kind == "packed":
                    db.insert(table, rows)
                else:
                    stub.Insert(api.WriteRowsRequest(table=table, rows=[to_row(r) for r in rows]),
                                timeout=600)
                times[kind].append(time.perf_counter() - t0)
                assert db.describe_table(table).row_count == args.rows
                db.drop_table(table)
    base = statistics.median(times["lmdb"])
    print(f"bulk load of {args.rows:,} rows in one call, {args.rounds} rounds (medians)")
    print(f"{'path':<8} {'seconds':>8} {'rows/s':>10} {'vs lmdb':>8}")
    for kind, ts in times.items():
        t = statistics.median(ts)
        print(f"{kind:<8} {t:>8.2f} {args.rows / t:>10,.0f} {base / t:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
