"""Benchmark: a full backup against ``cp`` of the volume's files, and a restore of the log
against the commit rate that wrote it.

Run from the repository root (not collected by pytest)::

    python tests/benchmarks/bench_backup.py [--rows 200000] [--seconds 8] [--clients 16]

Starts a real etcd and three real node processes on one volume (``tests.harness.cluster``) and
bulk-loads ``--rows`` rows of about 300 bytes. Then, in turn (each ``--rounds`` times, the
median kept):

1. ``cp -r VOLUME/lmdb`` (the volume's files, from the page cache: the data file is read,
   untimed, before each timing; timed without and with the
   ``sync`` that makes the copy durable), and
   ``shardless backup DEST`` (a subprocess: the whole command, a consistent copy through
   ``CopyVolume``, its file fsynced and its manifest written), and the local full backup
   ``shardless backup DEST --volume VOLUME`` (LMDB's own copy, fsynced and checksummed), both
   as the whole command and as its work alone in this process (``fmt.write_lmdb_copy`` and the
   manifest: without the command's start-up). Speed is bytes of the volume's data file per
   second for all; the target of issue 12 is a full backup >= 0.5x cp (the local one is
   the one that meets it, if any).
2. A write load (``shardless bench --workload write``: single-row upserts from ``--clients``
   clients in 4 processes) for ``--seconds``: its commit rate is positions advanced per
   second of load. ``shardless backup --incremental`` then takes those records, and
   ``restore`` (in this process) rebuilds the volume twice: to the full copy's position, and to
   the last position; the difference is the time the log's replay took. The target is a replay
   at least 5x the commit rate.

``--bytecode``: compile the project's modules first (``compileall``, into their
``__pycache__``), as an installed package has them; without it, a start-up under
``PYTHONDONTWRITEBYTECODE`` (set on the project's machines) compiles every module of the
project it imports, each time.

Prints the figures and the machine (cores), and exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nodes.backup import restore
from shardless import connect
from storage import backup as fmt
from storage import open_volume
from tests.harness.cluster import Cluster

FULL_TARGET = 0.5
REPLAY_TARGET = 5.0


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SHARDLESS_")}


def shardless(*args: str, timeout_s: float = 600) -> str:
    out = subprocess.run([sys.executable, "-m", "nodes", *args], capture_output=True, text=True,
                         timeout=timeout_s, env=_env(), check=False)
    if out.returncode:
        raise RuntimeError(f"shardless {' '.join(args)}: {out.stderr}")
    return out.stdout


def load_rows(cluster: Cluster, rows: int) -> None:
    db = connect(cluster.addresses, refresh_s=None)
    try:
        db.create_table("bulk", {"id": "int64", "pad": "bytes"}, primary_key="id")
        for start in range(0, rows, 1000):
            db.upsert("bulk", [{"id": i, "pad": os.urandom(280)}
                               for i in range(start, min(rows, start + 1000))])
    finally:
        db.close()


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def local_in_process(volume: Path, dest: Path) -> None:
    """The local full backup's work without the command's start-up."""
    dest.mkdir()
    store = open_volume(str(volume))
    try:
        info = fmt.write_lmdb_copy(store, str(dest), time.time())
    finally:
        store.close()
    fmt.write_manifest(str(dest), fmt.Manifest("bench", "", time.time(), info))


def warm(path: Path) -> None:
    """Read ``path`` (untimed), so that the timing after it reads it from the page cache.

    NB: the project's machines reclaim cold page cache proactively (DAMON's ``kdamond`` runs;
    24 GB of memory, half a GB of it cache): a file not read for a while may be read from disk
    again, and the first timing after a pause (cp's) would pay for that alone.
    """
    with path.open("rb") as f:
        while f.read(1 << 24):
            pass


def full_backup_round(cluster: Cluster, work: Path, n: int
                      ) -> tuple[float, float, float, int, float, float]:
    """Seconds for ``cp``, for ``cp`` then ``sync``, and for ``shardless backup``, the data
    file's size, and seconds for ``shardless backup --volume`` and for its work in this
    process. Dirty pages are synced before each timing, so that none pays for another's
    writes, and the data file is read just before each, so that each reads it from the page
    cache."""
    src = cluster.volume / "lmdb"
    size = (src / "data.mdb").stat().st_size
    cp_dest = work / f"cp-{n}"
    os.sync()
    warm(src / "data.mdb")
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(cp_dest)], check=True)
    cp_s = time.perf_counter() - t0
    os.sync()
    cp_sync_s = time.perf_counter() - t0
    shutil.rmtree(cp_dest)
    os.sync()
    warm(src / "data.mdb")
    dest = work / f"full-{n}"
    backup_s = timed(lambda: shardless("backup", str(dest), "--connect",
                                       ",".join(cluster.addresses), "--no-progress"))
    if n:
        shutil.rmtree(dest)
    os.sync()
    warm(src / "data.mdb")
    local = work / f"local-{n}"
    local_s = timed(lambda: shardless("backup", str(local), "--volume", str(cluster.volume)))
    shutil.rmtree(local)
    os.sync()
    warm(src / "data.mdb")
    local_ip_s = timed(lambda: local_in_process(cluster.volume, local))
    shutil.rmtree(local)
    return cp_s, cp_sync_s, backup_s, size, local_s, local_ip_s


def write_load(cluster: Cluster, work: Path, seconds: float, clients: int) -> tuple[int, float]:
    """Run the write load; return positions committed and the commit rate (per second)."""
    db = connect(cluster.addresses, refresh_s=None)
    before = db.status().commit_position
    report = work / "load.json"
    cmd = [sys.executable, "-m", "nodes", "bench", "--connect", ",".join(cluster.addresses),
           "--workload", "write", "--clients", str(clients), "--seconds", str(seconds),
           "--rounds", "1", "--warmup", "0", "--json", str(report), "--work-dir",
           str(work / "load-work")]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=seconds * 10 + 180, env=_env())
    after = db.status().commit_position
    db.close()
    ops = json.loads(report.read_text())["results"][0]["median"]["ops_per_s"]
    return after - before, float(ops)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bytecode", action="store_true",
                    help="compile the project's modules first, as an installed package has "
                         "them")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[2]
    if args.bytecode:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        subprocess.run([sys.executable, "-m", "compileall", "-q", "nodes", "storage",
                        "lockmgr", "proto/shardless"], cwd=root, env=env, check=True,
                       stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        work = Path(tmp)
        cluster = Cluster(work / "cluster", n=3, ttl_s=5, start=False)
        try:
            cluster.start(3)
            load_rows(cluster, args.rows)
            rounds = [full_backup_round(cluster, work, n) for n in range(args.rounds)]
            cp_s = statistics.median(r[0] for r in rounds)
            cp_sync_s = statistics.median(r[1] for r in rounds)
            backup_s = statistics.median(r[2] for r in rounds)
            local_s = statistics.median(r[4] for r in rounds)
            local_ip_s = statistics.median(r[5] for r in rounds)
            size = rounds[-1][3]
            payload = (work / "full-0" / fmt.COPY_FILE).stat().st_size
            dest = work / "full-0"
            copy_position = fmt.read_manifest(str(dest)).copy.position  # type: ignore[union-attr]
            committed, ops_per_s = write_load(cluster, work, args.seconds, args.clients)
            commit_rate = committed / args.seconds
            shardless("backup", str(dest), "--incremental", "--connect",
                      ",".join(cluster.addresses), "--no-progress")
        finally:
            cluster.stop()
        last = fmt.read_manifest(str(dest)).position  # type: ignore[union-attr]
        records = last - copy_position
        base_s, all_s = [], []
        for n in range(args.rounds):
            base_s.append(timed(lambda n=n: restore(str(dest), str(work / f"rb-{n}"),
                                                    to_position=copy_position)))
            all_s.append(timed(lambda n=n: restore(str(dest), str(work / f"ra-{n}"))))
            shutil.rmtree(work / f"rb-{n}")
            shutil.rmtree(work / f"ra-{n}")
        replay_s = max(statistics.median(all_s) - statistics.median(base_s), 1e-6)
        replay_rate = records / replay_s
    mib = size / (1 << 20)
    full_ratio = cp_s / min(backup_s, local_s)  # the faster full backup, the whole command
    replay_ratio = replay_rate / commit_rate
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}")
    found = f"as found (PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')})"
    print(f"volume: {args.rows} rows, data file {mib:.1f} MiB; project bytecode "
          f"{'compiled first' if args.bytecode else found}")
    print(f"full backup: cp -r {cp_s:.3f} s ({mib / cp_s:.0f} MiB/s; {cp_sync_s:.3f} s with "
          f"sync); shardless backup {backup_s:.3f} s ({mib / backup_s:.0f} MiB/s of the data "
          f"file, a copy of {payload / (1 << 20):.1f} MiB): {cp_s / backup_s:.2f}x cp, "
          f"{cp_sync_s / backup_s:.2f}x cp+sync (target >= {FULL_TARGET}x cp)")
    for what, sec in (("shardless backup --volume", local_s),
                      ("  its work in-process (no start-up)", local_ip_s)):
        print(f"local full backup: {what} {sec:.3f} s ({mib / sec:.0f} MiB/s): "
              f"{cp_s / sec:.2f}x cp, {cp_sync_s / sec:.2f}x cp+sync")
    print(f"full backup target: the faster whole command at {full_ratio:.2f}x cp (target >= "
          f"{FULL_TARGET}x)")
    print(f"log: {records} records written at {commit_rate:.0f} commits/s "
          f"(bench reported {ops_per_s:.0f} ops/s, {args.clients} clients); replayed in "
          f"{replay_s:.2f} s = {replay_rate:.0f} records/s: {replay_ratio:.1f}x the commit rate "
          f"(target >= {REPLAY_TARGET}x)")
    missed = full_ratio < FULL_TARGET or replay_ratio < REPLAY_TARGET
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
