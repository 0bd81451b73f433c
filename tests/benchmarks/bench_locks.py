"""Benchmark: row-lock acquisitions per second, LockManager against one etcd txn per row.

Run from the repository root (not collected by pytest)::

    python tests/benchmarks/bench_locks.py [--seconds N] [--threads N] [--etcd-bin PATH]

Starts a real single-member etcd in a temporary directory (``tests.harness.etcd.start_etcd``),
then, for transactions that lock 1, 10 and 100 rows in X mode on one table, measures from
``--threads`` threads at once:

- ``lockmgr``: ``LockManager.acquire`` then ``release`` per transaction, a fresh txn id each time,
  on a real ``Session``. The manager also takes the intention locks (IX on the table and on every
  page touched) and reads the session markers in the same etcd transaction: that is part of its
  real cost. Releases are asynchronous and batched; a run's clock stops only once every release
  has reached etcd.
- ``naive``: per row, one etcd transaction with the same per-row work (put the entry on the
  lease, read the resource's prefix), then one delete call per row to release.

Rows are spread over pages as real keys are: a row of int key ``k`` is
``Resource(table, page_of(encode((k,))), encode((k,)).hex())`` (``nodes.txn.row_resource``).
Two key layouts: ``spread`` (random keys, so every row is in its own page: the most intention
locks) and ``clustered`` (consecutive keys: 1 to 3 pages per transaction). Threads use disjoint
key ranges, so no transaction ever waits for another: this measures the cost of granting, not of
contention. "row locks/s" counts row locks only (not the table and page intention locks).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lockmgr import EtcdClient, LockManager, LockMode, Resource, Session
from lockmgr import resource as rk
from storage.keycode import encode
from storage.pages import page_of
from tests.harness.etcd import EtcdServer, find_etcd_binary, start_etcd

CLUSTER = "bench"
TABLE = "1"
SIZES = (1, 10, 100)
LAYOUTS = ("spread", "clustered")
TARGET_RATIO = 5.0
TARGET_SIZES = (10, 100)
KEY_SPACE = 10**12


class NoFence:
    """A Fencer that does nothing: no session dies during the benchmark."""

    def fence(self, lease_id: int) -> None:
        """Nothing to fence."""


class CountingClient(EtcdClient):
    """An EtcdClient that counts its round trips (txn and delete calls)."""

    def __init__(self, endpoints: str) -> None:
        super().__init__(endpoints)
        self._count_lock = threading.Lock()
        self.calls = 0

    def _count(self) -> None:
        with self._count_lock:
            self.calls += 1

    def txn(self, ops: list[Any]) -> tuple[int, list[Any]]:
        """Count, then run the etcd transaction."""
        self._count()
        return super().txn(ops)

    def delete(self, key: bytes) -> bool:
        """Count, then delete."""
        self._count()
        return super().delete(key)


def row_resource(k: int) -> Resource:
    """The lock resource of the row of int key ``k`` (as ``nodes.txn.row_resource``)."""
    enc = encode((k,))
    return Resource(TABLE, page_of(enc), enc.hex())


class Keys:
    """Key generator of one thread: its own key range, so threads never conflict."""

    def __init__(self, thread: int, layout: str, seed: int) -> None:
        self.base = (thread + 1) * 10 * KEY_SPACE
        self.layout = layout
        self.rng = random.Random(seed)
        self.next = self.base

    def take(self, n: int) -> list[int]:
        """``n`` distinct keys for one transaction."""
        if self.layout == "clustered":
            out = list(range(self.next, self.next + n))
            self.next += n
            return out
        keys: set[int] = set()
        while len(keys) < n:
            keys.add(self.base + self.rng.randrange(KEY_SPACE))
        return sorted(keys)


@dataclass
class Result:
    """One measurement."""

    txns: int = 0
    rows: int = 0
    elapsed_s: float = 0.0
    calls: int = 0
    latencies_s: list[float] = field(default_factory=list)
    pages_per_txn: list[int] = field(default_factory=list)
    client_cpu_s: float = 0.0
    etcd_cpu_s: float = 0.0

    @property
    def rows_per_s(self) -> float:
        """Row locks granted per second of wall time (acquire and release included)."""
        return self.rows / self.elapsed_s if self.elapsed_s else 0.0

    def cpu(self) -> str:
        """CPU used by this process and by etcd, in percent of one CPU over the run."""
        if not self.elapsed_s:
            return "-"
        return (f"{100 * self.client_cpu_s / self.elapsed_s:.0f}%+"
                f"{100 * self.etcd_cpu_s / self.elapsed_s:.0f}%")

    def pct_ms(self, p: float) -> float:
        """The p-th percentile of the per-transaction acquire latency, in ms."""
        if not self.latencies_s:
            return math.nan
        xs = sorted(self.latencies_s)
        return 1000 * xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]


_txn_ids = itertools.count()


def next_txn_id(prefix: str) -> str:
    """A fresh, cluster-unique transaction id."""
    return f"{prefix}-{next(_txn_ids)}"


def run_threads(n_threads: int, work: Callable[[int, Result], None]) -> list[Result]:
    """Run ``work(thread index, result)`` in ``n_threads`` threads; re-raise the first error."""
    results = [Result() for _ in range(n_threads)]
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            work(i, results[i])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,), name=f"bench-{i}")
               for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


class CpuMeter:
    """CPU seconds used by this process (every thread) and by the etcd process."""

    def __init__(self, etcd_pid: int | None) -> None:
        self.etcd_pid = etcd_pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def etcd_cpu_s(self) -> float:
        """utime + stime of etcd (0 if it cannot be read)."""
        try:
            stat = Path(f"/proc/{self.etcd_pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick

    def sample(self) -> tuple[float, float]:
        """(client CPU s, etcd CPU s) so far."""
        return time.process_time(), self.etcd_cpu_s()


CPU = CpuMeter(None)


def merge(parts: list[Result], elapsed_s: float, calls: int,
          cpu0: tuple[float, float]) -> Result:
    """One result from the per-thread results."""
    cpu1 = CPU.sample()
    out = Result(elapsed_s=elapsed_s, calls=calls, client_cpu_s=cpu1[0] - cpu0[0],
                 etcd_cpu_s=cpu1[1] - cpu0[1])
    for r in parts:
        out.txns += r.txns
        out.rows += r.rows
        out.latencies_s += r.latencies_s
        out.pages_per_txn += r.pages_per_txn
    return out


def bench_lockmgr(lm: LockManager, client: CountingClient, rows: int, layout: str,
                  seconds: float, n_threads: int) -> Result:
    """LockManager.acquire + release per transaction, from ``n_threads`` threads."""
    stop_at = time.perf_counter() + seconds

    def work(i: int, res: Result) -> None:
        keys = Keys(i, layout, seed=1000 + i)
        while time.perf_counter() < stop_at:
            needs = [(row_resource(k), LockMode.X) for k in keys.take(rows)]
            txn = lm.begin(next_txn_id(f"lm{i}"))
            t0 = time.perf_counter()
            lm.acquire(txn, needs)
            res.latencies_s.append(time.perf_counter() - t0)
            held_rows = sum(1 for r in txn.held if r.kind == "row")
            if held_rows != rows:  # escalation would lock fewer rows: keep the count honest
                raise AssertionError(f"expected {rows} row locks, hold {held_rows}")
            res.pages_per_txn.append(sum(1 for r in txn.held if r.kind == "page"))
            lm.release(txn)
            res.txns += 1
            res.rows += rows

    calls0, cpu0 = client.calls, CPU.sample()
    t0 = time.perf_counter()
    parts = run_threads(n_threads, work)
    if not lm.flush_releases(timeout_s=60):
        raise AssertionError("releases did not reach etcd within 60 s")
    elapsed = time.perf_counter() - t0
    return merge(parts, elapsed, client.calls - calls0, cpu0)


def bench_naive(client: CountingClient, lease_id: int, rows: int, layout: str,
                seconds: float, n_threads: int) -> Result:
    """One etcd txn (put entry on the lease + range of the resource) per row, then one delete
    per row."""
    stop_at = time.perf_counter() + seconds

    def work(i: int, res: Result) -> None:
        keys = Keys(i, layout, seed=1000 + i)
        while time.perf_counter() < stop_at:
            resources = [row_resource(k) for k in keys.take(rows)]
            txn_id = next_txn_id(f"nv{i}")
            value = json.dumps({"node": "bench", "started_at": time.time()}).encode()
            held: list[bytes] = []
            t0 = time.perf_counter()
            for r in resources:
                key = rk.entry_key(CLUSTER, r.name, txn_id, LockMode.X.value)
                _, out = client.txn([
                    EtcdClient.put_op(key, value, lease_id),
                    EtcdClient.range_op(rk.resource_prefix(CLUSTER, r.name)),
                ])
                entries = out[1] or []
                mine = next(kv.create_revision for kv in entries if kv.key == key)
                if any(kv.create_revision < mine for kv in entries):  # never, keys are disjoint
                    raise AssertionError(f"unexpected conflict on {r.name}")
                held.append(key)
            res.latencies_s.append(time.perf_counter() - t0)
            res.pages_per_txn.append(len({r.page for r in resources}))
            for key in held:
                client.delete(key)
            res.txns += 1
            res.rows += rows

    calls0, cpu0 = client.calls, CPU.sample()
    t0 = time.perf_counter()
    parts = run_threads(n_threads, work)
    elapsed = time.perf_counter() - t0
    return merge(parts, elapsed, client.calls - calls0, cpu0)


def etcd_version(server: EtcdServer) -> str:
    """The server's ``/version`` answer, e.g. ``3.5.16 (cluster 3.5.0)``."""
    try:
        with urllib.request.urlopen(f"{server.client_url}/version", timeout=5) as resp:
            v = json.loads(resp.read().decode())
        return f"{v.get('etcdserver', '?')} (cluster {v.get('etcdcluster', '?')})"
    except (OSError, ValueError) as e:
        return f"unknown ({e})"


def assert_no_lock_entries(client: EtcdClient) -> None:
    """Every lock entry of the run is gone (both sides really released)."""
    left = client.get_prefix(rk.locks_prefix(CLUSTER))
    if left:
        raise AssertionError(f"{len(left)} lock entries left, e.g. {left[0].key!r}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; return 1 if the 5x target is missed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.5,
                    help="seconds per measurement; 3 sizes x (2 layouts + naive) are run "
                         "(default 3.5, about 40 s in all)")
    ap.add_argument("--threads", type=int, default=4, help="client threads (default 4)")
    ap.add_argument("--etcd-bin", default=None,
                    help="etcd binary (default: tests.harness.etcd.find_etcd_binary())")
    args = ap.parse_args(argv)

    binary = str(Path(find_etcd_binary(args.etcd_bin)).resolve())
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-locks-") as tmp:
        server = start_etcd(tmp, binary=binary)
        client: CountingClient | None = None
        session: Session | None = None
        lm: LockManager | None = None
        try:
            version = etcd_version(server)
            CPU.etcd_pid = server.pid
            client = CountingClient(server.endpoint)
            session = Session(client, 10)
            lm = LockManager(client, CLUSTER, "bench", NoFence())
            lm.attach(session)

            # Warm up both paths (connections, etcd's first compactions); not reported.
            bench_lockmgr(lm, client, 10, "spread", 0.5, args.threads)
            bench_naive(client, session.lease_id, 10, "spread", 0.5, args.threads)
            assert_no_lock_entries(client)

            rows_out: list[tuple[int, str, Result, Result]] = []
            for n in SIZES:
                naive = bench_naive(client, session.lease_id, n, "spread", args.seconds,
                                    args.threads)
                assert_no_lock_entries(client)
                for layout in LAYOUTS:
                    res = bench_lockmgr(lm, client, n, layout, args.seconds, args.threads)
                    assert_no_lock_entries(client)
                    rows_out.append((n, layout, res, naive))
            lm.detach(session)
        finally:
            if lm is not None:
                lm.close()
            if session is not None:
                session.close()
            if client is not None:
                client.close()
            server.stop()

    report(rows_out, binary, version, args, time.perf_counter() - began)
    missed = [(n, layout) for n, layout, res, naive in rows_out
              if n in TARGET_SIZES and res.rows_per_s < TARGET_RATIO * naive.rows_per_s]
    return 1 if missed else 0


def report(rows_out: list[tuple[int, str, Result, Result]], binary: str, version: str,
           args: argparse.Namespace, total_s: float) -> None:
    """Print the results table."""
    print(f"etcd binary: {binary}")
    print(f"etcd version: {version}")
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {args.threads} threads, "
          f"{args.seconds:g} s per measurement, total run {total_s:.0f} s")
    print("row locks/s: X row locks granted per second of wall time, acquire and release "
          "included;\n  intention locks (IX on table and pages) are extra work of lockmgr and "
          "are NOT counted.")
    print("naive: per row one etcd txn (put entry on lease + range of the resource prefix), "
          "then one delete per row;\n  its key layout does not matter (same cost per row), so "
          "it is measured once per size (spread keys).")
    print("latency: acquire of one whole transaction (all its rows), ms.")
    print()
    head = (f"{'rows/txn':>8}  {'layout':<9}  {'lockmgr locks/s':>15}  {'naive locks/s':>13}  "
            f"{'ratio':>6}  {'lockmgr p50/p99 ms':>18}  {'naive p50/p99 ms':>16}  "
            f"{'pages/txn':>9}  {'etcd calls/txn':>14}  {'CPU lockmgr':>11}  "
            f"{'CPU naive':>9}  target")
    print(head)
    print("-" * len(head))
    for n, layout, res, naive in rows_out:
        ratio = res.rows_per_s / naive.rows_per_s if naive.rows_per_s else math.inf
        target = ("-" if n not in TARGET_SIZES
                  else "ok (>=5x)" if ratio >= TARGET_RATIO else "MISSED (<5x)")
        pages = statistics.fmean(res.pages_per_txn) if res.pages_per_txn else 0.0
        calls = f"{res.calls / max(res.txns, 1):.1f} vs {naive.calls / max(naive.txns, 1):.0f}"
        print(f"{n:>8}  {layout:<9}  {res.rows_per_s:>15,.0f}  {naive.rows_per_s:>13,.0f}  "
              f"{ratio:>5.1f}x  {res.pct_ms(50):>8.2f}/{res.pct_ms(99):<9.2f}  "
              f"{naive.pct_ms(50):>7.2f}/{naive.pct_ms(99):<8.2f}  {pages:>9.1f}  "
              f"{calls:>14}  {res.cpu():>11}  {naive.cpu():>9}  {target}")
    print()
    print("etcd calls/txn: lockmgr (acquire txns + its share of the batched release txns) vs "
          "naive (2 per row).")
    print("CPU: this process + etcd, in % of one CPU over the measurement (client and etcd "
          "share this machine's CPUs).")


if __name__ == "__main__":
    sys.exit(main())
