"""``shardless up``, run as a user runs it: it starts, answers a client, and stops cleanly."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest

from nodes.etcdserver import free_port, port_is_free
from nodes.up import node_env
from shardless import Credentials, connect
from tests.harness.cluster import wait_for

pytestmark = pytest.mark.integration


def _start_up(cmd: list[str]) -> tuple[subprocess.Popen[str], list[str]]:
    """Start ``shardless up``; its output lines are collected, as they come, in the list."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=node_env(), start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    return proc, lines


def _credentials(lines: list[str]) -> Credentials:
    """What a user gets by running the ``export`` line a secure up prints."""
    for ln in lines:
        if ln.strip().startswith("export "):
            env = dict(kv.split("=", 1) for kv in ln.split()[1:])
            assert set(env) == {"SHARDLESS_CERTS_DIR", "SHARDLESS_TOKEN"}, ln
            return Credentials.from_env(env)
    raise AssertionError("up printed no export line:\n" + "".join(lines))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; read its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_shardless_up_starts_answers_a_client_and_stops_leaving_nothing_behind(
        tmp_path: Path) -> None:
    """up starts etcd and nodes, secure by default (TLS, authentication on): a client with
    what up prints writes and reads, one without it is refused; SIGINT stops every process."""
    base = free_port()
    while not all(port_is_free(base + i) for i in range(2)):
        base = free_port()
    etcd_port = free_port()
    cmd = [sys.executable, "-m", "nodes", "up", "--nodes", "2", "--base-port", str(base),
           "--etcd-port", str(etcd_port), "--data-dir", str(tmp_path / "data"), "--ttl", "3"]
    proc, lines = _start_up(cmd)
    child_pids: list[int] = []
    try:
        wait_for(lambda: "ready" in [ln.strip() for ln in lines], 60,
                 message=lambda: "up to print ready; output:\n" + "".join(lines))
        addresses = [f"127.0.0.1:{base + i}" for i in range(2)]
        creds = _credentials(lines)
        assert creds.tls and creds.token
        with connect(addresses, credentials=Credentials(ca=creds.ca), attempts=1) as anon:
            with pytest.raises(grpc.RpcError) as refused:
                anon.get("hello", 1)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with connect(addresses, credentials=creds) as db:
            db.create_table("hello", {"id": "int64", "msg": "string"}, primary_key="id")
            db.insert("hello", {"id": 1, "msg": "world"})
            assert db.get("hello", 1)["msg"] == "world"
            status = db.status()
            assert sorted(m.address for m in status.members) == addresses
            child_pids = [m.pid for m in status.members]
        child_pids.append(_etcd_pid(lines))
        urls = [ln.split(" metrics at ", 1)[1].strip() for ln in lines if " metrics at " in ln]
        assert len(urls) == 2, "".join(lines)
        scraped = []
        for url in urls:  # each node's metrics answer at the URL up printed
            with urllib.request.urlopen(url, timeout=5) as resp:
                scraped.append(resp.read().decode())
        assert all("shardless_node_info{" in text for text in scraped)
        assert any('shardless_commits_total{kind="one_shot"} 1.0' in t for t in scraped)
        assert all(_pid_alive(p) for p in child_pids)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(lines)
        wait_for(lambda: not any(_pid_alive(p) for p in child_pids), 10,
                 message=lambda: f"children {child_pids} to exit")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for pid in child_pids:  # only processes this test's `up` started
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    # Data persists: a second `up` on the same data directory would see the table.
    assert (tmp_path / "data" / "volume" / "lmdb" / "data.mdb").exists()


def _etcd_pid(lines: list[str]) -> int:
    for ln in lines:
        if ln.startswith("etcd: ready at") and "(pid " in ln:
            return int(ln.rsplit("(pid ", 1)[1].rstrip(")\n"))
    raise AssertionError("up did not print the etcd pid:\n" + "".join(lines))


def test_shardless_up_with_a_replica_shows_it_following(tmp_path: Path) -> None:
    """up --replica sync starts a replica beside the nodes: it is in status, holds every
    commit a client makes, and stops with the rest."""
    base = free_port()
    while not all(port_is_free(base + i) for i in range(2)):
        base = free_port()
    cmd = [sys.executable, "-m", "nodes", "up", "--nodes", "1", "--base-port", str(base),
           "--etcd-port", str(free_port()), "--data-dir", str(tmp_path / "data"), "--ttl", "3",
           "--replica", "sync"]
    proc, lines = _start_up(cmd)
    pids: list[int] = []
    try:
        wait_for(lambda: "ready" in [ln.strip() for ln in lines], 90,
                 message=lambda: "up to print ready; output:\n" + "".join(lines))
        assert any(ln.startswith("replica: started replica-1 (sync)") for ln in lines)
        # Secure (the default): the replica follows as one of the cluster's own.
        with connect([f"127.0.0.1:{base}"], credentials=_credentials(lines)) as db:
            db.create_table("t", {"id": "int64"}, primary_key="id")
            wait_for(lambda: any(r.sync_state == "sync" for r in db.status().replicas), 30,
                     message="the replica in the synchronous set")
            position = db.upsert("t", {"id": 1})
            (replica,) = db.status().replicas
            assert replica.replica_id == "replica-1" and replica.address == f"127.0.0.1:{base + 1}"
            assert replica.position >= position and replica.lag_positions == 0
            pids = [m.pid for m in db.status().members]
        # The change stream on the replica, under the same authentication as its reads.
        creds = _credentials(lines)
        with connect([replica.address], credentials=creds, refresh_s=None) as on_replica, \
                on_replica.watch("t", position=position) as w:
            c = next(iter(w))
            assert (c.position, c.kind, c.key) == (position, "put", (1,))
        anonymous = dataclasses.replace(creds, token="")
        with connect([replica.address], credentials=anonymous, refresh_s=None,
                     attempts=1) as nobody, pytest.raises(grpc.RpcError) as refused:
            next(iter(nobody.watch("t", position=position)))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(lines)
        wait_for(lambda: not any(_pid_alive(p) for p in pids), 10, message="nodes to exit")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for pid in pids:
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert (tmp_path / "data" / "replica" / "volume" / "lmdb" / "data.mdb").exists()


def test_shardless_up_killed_with_sigkill_leaves_no_orphans(tmp_path: Path) -> None:
    """up cannot clean up after a SIGKILL, so its etcd and nodes die with it (their parent-
    death signal) instead of living on as orphans that hold the ports and the data directory.
    Run --insecure, the old plaintext behaviour: a client with no credentials is served."""
    base = free_port()
    while not all(port_is_free(base + i) for i in range(2)):
        base = free_port()
    cmd = [sys.executable, "-m", "nodes", "up", "--nodes", "2", "--base-port", str(base),
           "--etcd-port", str(free_port()), "--data-dir", str(tmp_path / "data"), "--ttl", "3",
           "--insecure"]
    proc, lines = _start_up(cmd)
    pids: list[int] = []
    try:
        wait_for(lambda: "ready" in [ln.strip() for ln in lines], 60,
                 message=lambda: "up to print ready; output:\n" + "".join(lines))
        with connect([f"127.0.0.1:{base}"], credentials=Credentials()) as db:
            pids = [m.pid for m in db.status().members]
        pids.append(_etcd_pid(lines))
        assert len(pids) == 3 and all(_pid_alive(p) for p in pids)
        proc.kill()
        proc.wait(timeout=10)
        wait_for(lambda: not any(_pid_alive(p) for p in pids), 10,
                 message=lambda: f"etcd and the nodes {pids} to die with up")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for pid in pids:  # only processes this test's `up` started
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
