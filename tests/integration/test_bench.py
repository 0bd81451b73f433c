"""``shardless bench`` run as a user runs it: one node, every baseline, JSON and PNG out, the
bank total held, and no process left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nodes.bench.memory import pid_alive
from nodes.up import node_env

pytestmark = pytest.mark.integration

TARGETS = ["shardless", "echo", "etcd", "lmdb", "postgres"]
WORKLOADS = ["get", "rmw", "bank"]


def _processes_mentioning(text: str) -> list[str]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        if text in cmdline:
            out.append(f"{entry.name}: {cmdline}")
    return out


@pytest.mark.timeout(180)
def test_bench_measures_every_baseline_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """A short run against one node and echo, etcd, LMDB and PostgreSQL: every target has
    positive throughput and no errors, bank totals held, the PNG is drawn, and every process
    the tool started (systems and client processes) is gone when it exits."""
    report, png = tmp_path / "report.json", tmp_path / "report.png"
    cmd = [sys.executable, "-m", "nodes", "bench", "--nodes", "1",
           "--workload", ",".join(WORKLOADS), "--seconds", "1", "--rounds", "1",
           "--warmup", "0", "--processes", "2", "--threads", "2", "--records", "2000",
           "--baseline", "echo,etcd,lmdb,postgres", "--json", str(report), "--plot", str(png)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=node_env(),
                          cwd=tmp_path)
    output = f"exit code {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, output
    data = json.loads(report.read_text())
    assert data["targets"] == TARGETS, output  # PostgreSQL must not have been skipped
    assert data["machine"]["cores"] == os.cpu_count()
    seen = set()
    for entry in data["results"]:
        seen.add((entry["workload"], entry["target"]))
        assert entry["median"]["ops_per_s"] > 0, (entry, output)
        assert entry["median"]["errors"] == {}, (entry["median"], output)
        for r in entry["rounds"]:
            assert r["ops"] > 0 and r["errors"] == {}, (r, output)
            assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"]
    assert seen == {(w, t) for w in WORKLOADS for t in TARGETS}
    assert data["errors_total"] == 0
    assert {b["target"] for b in data["bank"]} == set(TARGETS) - {"echo"}
    assert data["bank_ok"] and all(b["ok"] for b in data["bank"]), data["bank"]
    assert {r["baseline"] for r in data["ratios"]} == set(TARGETS) - {"shardless"}
    assert data["memory"]["warm_rss_kb"], data["memory"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    pids = data["processes"]["pids"]
    assert len(pids["clients"]) == 2 and {"etcd", "node-1", "echo", "etcd-baseline",
                                          "postgres"} <= set(pids)
    left = [p for p in [*pids["clients"], *(v for k, v in pids.items() if k != "clients")]
            if pid_alive(p)]
    assert not left, f"processes left behind: {left}"
    work_dir = data["processes"]["work_dir"]
    assert not _processes_mentioning(work_dir)
    assert not Path(work_dir).exists()


@pytest.mark.timeout(120)
def test_a_baseline_that_fails_to_start_stops_everything_and_shows_the_logs(
        tmp_path: Path) -> None:
    """When PostgreSQL's initdb fails after the cluster and etcd are up, the run exits with
    code 1, prints initdb's output and every started process's log, and leaves no process."""
    # Run as root, the binaries run as the postgres user: they must be outside pytest's
    # private (0700) temporary directory.
    bindir = Path(tempfile.mkdtemp(prefix="shardless-fake-pg-"))
    bindir.chmod(0o755)
    try:
        _failing_run(tmp_path, bindir)
    finally:
        shutil.rmtree(bindir, ignore_errors=True)


def _failing_run(tmp_path: Path, bindir: Path) -> None:
    for name in ("initdb", "postgres", "pg_isready"):
        script = bindir / name
        script.write_text("#!/bin/sh\necho 'initdb: simulated failure: disk on fire' >&2\n"
                          "exit 1\n")
        script.chmod(0o755)
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "nodes", "bench", "--nodes", "1", "--workload", "get",
           "--seconds", "1", "--rounds", "1", "--baseline", "echo,postgres",
           "--pg-bindir", str(bindir), "--json", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=100, env=node_env(),
                          cwd=tmp_path)
    output = f"exit code {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 1, output
    assert "simulated failure: disk on fire" in proc.stderr, output
    assert "===== node-1 (pid" in proc.stderr and "===== echo (pid" in proc.stderr, output
    data = json.loads(report.read_text())
    assert data["failure"] and data["results"] == [], data
    pids = [v for k, v in data["processes"]["pids"].items() if k != "clients"]
    assert len(pids) >= 3  # etcd, node-1, echo
    assert not [p for p in pids if pid_alive(p)]
    assert not _processes_mentioning(data["processes"]["work_dir"])
