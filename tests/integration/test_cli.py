"""The operator's commands run as a user runs them: ``python -m nodes <command>`` subprocesses
against a real cluster, their output and exit codes asserted.

Covers status, members, health, get, put (text and ``--json``), locks showing a lock held by an
open interactive transaction and a waiter queued behind it, dead and malformed addresses (a
clear line, a non-zero exit, no traceback), and ``up`` saying "stopped" and refusing a data
directory another ``up`` holds. Every command runs with a timeout; every process a test starts is
stopped in a ``finally`` (the fixtures stop the clusters and show their logs on failure).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nodes.etcdserver import free_port, port_is_free
from nodes.up import node_env
from shardless import connect
from tests.harness.cluster import Cluster, wait_for

pytestmark = pytest.mark.integration

COMMAND_TIMEOUT_S = 60.0


def shardless(*args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run ``shardless ARGS`` to the end; it must never print a traceback."""
    done = subprocess.run([sys.executable, "-m", "nodes", *args], capture_output=True, text=True,
                          env=node_env(), timeout=timeout_s, stdin=subprocess.DEVNULL)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def ok(*args: str) -> str:
    """Run a command that must succeed; return its standard output."""
    done = shardless(*args)
    assert done.returncode == 0, f"shardless {' '.join(args)}: rc {done.returncode}\n" \
                                 f"{done.stdout}\n{done.stderr}"
    return done.stdout


def dead_address() -> str:
    """A loopback address nothing listens on."""
    return f"127.0.0.1:{free_port()}"


def test_status_members_health_get_and_put_against_a_cluster(
        make_cluster: Callable[..., Cluster]) -> None:
    """Each command answers in text and in JSON with stable keys; status answers while one of
    its addresses is dead; put then get shows the row; health names a dead node among live
    ones and exits 1."""
    cluster = make_cluster(n=2)
    a, b = cluster.addresses
    at = f"{a},{b}"

    text = ok("status", a, b)
    assert text.startswith("cluster shardless  volume ")
    assert "node-1" in text and "node-2" in text
    doc = json.loads(ok("status", a, "--json"))
    assert doc["cluster"] == "shardless"
    assert sorted(m["address"] for m in doc["members"]) == sorted(cluster.addresses)
    assert isinstance(doc["commit_position"], int) and doc["leader"] in ("node-1", "node-2")

    gone = dead_address()
    assert ok("status", gone, a).startswith("cluster shardless")  # one dead address of two

    text = ok("members", at)
    assert text.splitlines()[0] == "cluster shardless: 2 member(s)"
    assert text.splitlines()[1].split()[:3] == ["NODE", "ADDRESS", "PID"]
    members = json.loads(ok("members", a, "--json"))
    assert {m["node_id"] for m in members["members"]} == {"node-1", "node-2"}
    assert sum(m["is_leader"] for m in members["members"]) == 1
    pids = {m["pid"] for m in members["members"]}
    assert pids == {n.pid for n in cluster.nodes}

    health = json.loads(ok("health", a, b, "--json"))
    assert health == {"healthy": True, "nodes": [
        {"address": a, "status": "SERVING", "error": ""},
        {"address": b, "status": "SERVING", "error": ""}]}
    done = shardless("health", a, gone)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[1].split() == [a, "SERVING"]
    assert lines[2].startswith(gone) and "UNREACHABLE" in lines[2]
    assert "connection refused" in lines[2]

    with connect(cluster.addresses) as db:
        db.create_table("users", {"id": "int64", "name": "string", "avatar": "bytes",
                                  "score": "double"}, primary_key="id")
    out = ok("put", at, "users", '{"id": 7, "name": "ada", "avatar": "00ff", "score": 3}')
    assert out.startswith("wrote 1 row in users (commit position ")
    position = int(out.split("commit position ")[1].rstrip(")\n"))
    assert ok("get", at, "users", "7").splitlines() == [
        "id      7", "name    ada", "avatar  00ff", "score   3.0", f"(version {position})"]
    row = json.loads(ok("get", a, "users", "7", "--json"))
    assert row["found"] is True and row["key"] == [7] and isinstance(row["version"], int)
    assert row["row"] == {"id": 7, "name": "ada", "avatar": "00ff", "score": 3.0}

    missing = shardless("get", a, "users", "8")
    assert missing.returncode == 1 and "no row with key 8 in users" in missing.stderr
    missing = shardless("get", a, "users", "8", "--json")
    assert missing.returncode == 1 and json.loads(missing.stdout)["found"] is False
    again = shardless("put", a, "users", '{"id": 7}', "--insert")
    assert again.returncode == 1 and "ALREADY_EXISTS" in again.stderr
    bad = shardless("get", a, "users", "seven")
    assert bad.returncode == 2 and "column id is int64" in bad.stderr
    bad = shardless("put", a, "users", '{"id": "seven"}')
    assert bad.returncode == 2 and "bad row" in bad.stderr
    no_table = shardless("get", a, "nosuch", "1")
    assert no_table.returncode == 1 and "NOT_FOUND" in no_table.stderr


def _locks(etcd: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ok("locks", "--etcd", etcd, "--json"))
    return doc


def _queue_with(doc: dict[str, Any], holder: str, waiter: str) -> dict[str, Any] | None:
    for res in doc["resources"]:
        if any(h["txn"] == holder for h in res["holders"]) and any(
                w["txn"] == waiter for w in res["waiters"]):
            return res
    return None


def test_locks_shows_the_holder_of_an_open_transaction_and_the_waiter_behind_it(
        make_cluster: Callable[..., Cluster]) -> None:
    """An open interactive transaction that updated a row holds its lock; a second one that
    updates the same row is listed behind it, first in line, naming it; once the first rolls
    back, the second gets the lock and both leave the list."""
    cluster = make_cluster("--lock-timeout", "30", n=2)
    etcd = cluster.etcd_endpoints
    assert ok("locks", "--etcd", etcd).strip() == "cluster shardless: no locks held or waited for"
    outcome: list[str] = []
    with connect(cluster.addresses, refresh_s=None, txn_lifetime_s=60) as db:
        db.create_table("acct", {"id": "int64", "balance": "int64"}, primary_key="id")
        db.insert("acct", {"id": 1, "balance": 10})
        holder = db.begin()
        try:
            holder.update("acct", {"id": 1, "balance": 11})
            waiter = db.begin()

            def wait_then_commit() -> None:
                try:
                    waiter.update("acct", {"id": 1, "balance": 12})
                    waiter.commit()
                    outcome.append("committed")
                except Exception as e:  # reported by the assertion below
                    outcome.append(repr(e))

            thread = threading.Thread(target=wait_then_commit, daemon=True)
            thread.start()
            doc = wait_for(lambda: _queue_with(_locks(etcd), holder.id, waiter.id), 25,
                           interval_s=0.2,
                           message=lambda: f"{waiter.id} behind {holder.id} in shardless "
                                           f"locks:\n{ok('locks', '--etcd', etcd)}")
            assert doc["resource"].startswith("p/")
            (held,) = [h for h in doc["holders"] if h["txn"] == holder.id]
            assert held["node"] == holder.node_id and held["mode"] == "IX"
            assert list(held["rows"].values()) == ["X"] and held["cached"] is False
            first = doc["waiters"][0]
            assert first["txn"] == waiter.id and first["node"] == waiter.node_id
            assert first["blocked_by"] == [holder.id]
            assert first["revision"] > held["revision"]

            text = ok("locks", "--etcd", etcd, "--cluster", "shardless")
            lines = text.splitlines()
            at = lines.index(doc["resource"])
            holds = [ln.split() for ln in lines[at + 1:] if ln.startswith("  holds")]
            assert any(ln[:3] == ["holds", "IX", holder.id] for ln in holds)
            waits = next(ln for ln in lines[at + 1:] if ln.startswith("  waits #1"))
            assert waiter.id in waits and f"behind {holder.id}" in waits
        finally:
            holder.rollback()
        thread.join(timeout=40)
        assert outcome == ["committed"]
        wait_for(lambda: not any(
            e["txn"] in (holder.id, waiter.id) for r in _locks(etcd)["resources"]
            for e in r["holders"] + r["waiters"]), 15, interval_s=0.2,
            message="both transactions' lock entries to go")
        assert db.get("acct", 1)["balance"] == 12
    empty_cluster = shardless("locks", "--etcd", etcd, "--cluster", "other")
    assert empty_cluster.stdout.strip() == "cluster other: no locks held or waited for"


@pytest.mark.parametrize("argv", [
    ["status", "{dead}"], ["status", "{dead}", "--json"], ["members", "{dead}"],
    ["get", "{dead}", "t", "1"], ["put", "{dead}", "t", '{"id": 1}'],
    ["drain", "node-1", "--via", "{dead}"]])
def test_a_dead_address_gives_one_clear_line_and_exit_1(argv: list[str]) -> None:
    """Nothing listens there: the command says so in one line, exits 1, within its timeout."""
    dead = dead_address()
    done = shardless(*(a.replace("{dead}", dead) for a in argv), timeout_s=30)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line == f"shardless {argv[0]}: no node answered at {dead}: connection refused " \
                   "(is a node running there?)"


def test_a_dead_etcd_gives_one_clear_line_and_exit_1() -> None:
    """locks against an etcd endpoint nothing listens on says so and exits 1."""
    dead = dead_address()
    done = shardless("locks", "--etcd", dead, "--timeout", "2", timeout_s=30)
    assert done.returncode == 1
    assert done.stderr.strip() == f"shardless locks: etcd did not answer at {dead}: " \
                                  "connection refused (is etcd running there?)"


@pytest.mark.parametrize("argv", [
    ["status", "no-port-here"], ["members", "127.0.0.1:99999"], ["health", "host:"],
    ["get", "127.0.0.1:port", "t", "1"], ["put", ":5", "t", "{}"],
    ["locks", "--etcd", "nonsense"], ["drain", "127.0.0.1:0"],
    ["drain", "node-1", "--via", "x"], ["promote", "r1", "--etcd", "etcd"]])
def test_a_malformed_address_is_a_usage_error_naming_it(argv: list[str]) -> None:
    """A malformed address is refused before anything is called: exit 2, the address named."""
    done = shardless(*argv, timeout_s=30)
    assert done.returncode == 2
    bad = next(a for a in argv[1:] if a not in ("t", "1", "{}", "r1", "node-1") and
               not a.startswith("--"))
    assert repr(bad) in done.stderr or bad in done.stderr, done.stderr


# -- up -------------------------------------------------------------------------------------------


def _ports(n: int) -> int:
    base = free_port()
    while not all(port_is_free(base + i) for i in range(n)):
        base = free_port()
    return base


def _start_up(data_dir: Path) -> tuple[subprocess.Popen[str], list[str]]:
    cmd = [sys.executable, "-m", "nodes", "up", "--nodes", "1", "--base-port", str(_ports(1)),
           "--etcd-port", str(free_port()), "--data-dir", str(data_dir), "--ttl", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=node_env(), start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
                     daemon=True).start()
    return proc, lines


def test_up_refuses_a_data_directory_in_use_and_says_stopped_on_sigterm(tmp_path: Path) -> None:
    """A second up on the same data directory names the first one's pid and exits 2 without
    starting anything; the first, sent SIGTERM, stops its processes and prints "stopped"."""
    data = tmp_path / "data"
    proc, lines = _start_up(data)
    try:
        wait_for(lambda: "ready" in [ln.strip() for ln in lines], 90,
                 message=lambda: "up to print ready; output:\n" + "".join(lines))
        second = subprocess.run(
            [sys.executable, "-m", "nodes", "up", "--nodes", "1", "--base-port",
             str(_ports(1)), "--etcd-port", str(free_port()), "--data-dir", str(data)],
            capture_output=True, text=True, env=node_env(), timeout=COMMAND_TIMEOUT_S)
        assert second.returncode == 2
        assert second.stdout == ""
        assert second.stderr.strip() == (
            f"shardless up: data directory {data.resolve()} is in use by another shardless up "
            f"(pid {proc.pid}); stop that one first (Ctrl-C in its terminal, or kill -TERM "
            f"{proc.pid}), or give this one another --data-dir")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(lines)
        wait_for(lambda: lines and lines[-1].strip() == "stopped", 5,
                 message=lambda: "up to end with 'stopped':\n" + "".join(lines))
        assert "stopping\n" in lines
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    # Free again once the first has gone: a third up may lock it (checked without starting).
    from nodes.up import lock_data_dir
    os.close(lock_data_dir(data))
