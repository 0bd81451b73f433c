"""Backup and restore against real node processes, real etcd and real LMDB: a full backup taken
under a concurrent write load restores to exactly the state at its position; incremental
backups and a continuous archive restore to a chosen position; verify finds damage; a restored
volume is served by a node of a new cluster; a log gone past a backup gets the documented
message."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from lockmgr import EtcdClient
from nodes.changes import read_holds
from nodes.etcdserver import free_port
from nodes.up import stop_nodes
from shardless import connect
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from storage import backup as fmt
from storage import open_volume
from storage.keycode import decode
from tests.harness.cluster import Cluster, Node, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

KEYS = 60
CLI_TIMEOUT_S = 120


def shardless(*args: str, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run one ``shardless`` command (plaintext, anonymous: the test clusters are insecure)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDLESS_")}
    return subprocess.run([sys.executable, "-m", "nodes", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=env, check=False)


def ok(*args: str) -> str:
    out = shardless(*args)
    assert out.returncode == 0, f"shardless {' '.join(args)}: {out.stdout}\n{out.stderr}"
    return out.stdout


class Load:
    """Writers upserting and deleting rows of table ``kv`` through every node, each write's
    commit position recorded as it is acknowledged."""

    def __init__(self, cluster: Cluster, writers: int = 3) -> None:
        self.history: list[tuple[int, int, str | None]] = []  # position, key, value (None: del)
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(cluster, w), daemon=True)
                         for w in range(writers)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        assert not self.errors, self.errors

    def _run(self, cluster: Cluster, w: int) -> None:
        db = connect(cluster.addresses[w % len(cluster.addresses)], refresh_s=None)
        try:
            i = 0
            while not self._stop.is_set():
                i += 1
                key = (i * 7 + w * 13) % KEYS
                if i % 9 == 0:
                    pos = db.delete("kv", [(key,)])
                    value = None
                else:
                    value = f"w{w}-{i}-" + "x" * 100
                    pos = db.upsert("kv", [{"k": key, "v": value}])
                with self._lock:
                    self.history.append((pos, key, value))
        except BaseException as e:
            self.errors.append(e)
        finally:
            db.close()

    def state_at(self, position: int) -> dict[int, tuple[int, str]]:
        """What the acknowledged writes say table ``kv`` holds at ``position``: key ->
        (version, value)."""
        out: dict[int, tuple[int, str]] = {}
        for pos, key, value in sorted(h for h in self.history if h[0] and h[0] <= position):
            if value is None:
                out.pop(key, None)
            else:
                out[key] = (pos, value)
        return out

    def wait_writes(self, n: int, timeout_s: float = 60) -> None:
        start = len(self.history)
        wait_for(lambda: len(self.history) >= start + n or self.errors, timeout_s,
                 message=f"{n} more writes")
        assert not self.errors, self.errors


def prepare(cluster: Cluster) -> None:
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("kv", {"k": "int64", "v": "string"}, primary_key="k")
    db.create_table("bulk", {"id": "int64", "pad": "bytes"}, primary_key="id")
    for start in range(0, 4000, 500):  # something to copy while the load runs
        db.upsert("bulk", [{"id": i, "pad": os.urandom(300)} for i in range(start, start + 500)])
    db.close()


def restored_rows(volume: Path) -> tuple[int, dict[int, tuple[int, str]]]:
    """The position of a restored volume and its table ``kv``: key -> (version, value)."""
    store = open_volume(str(volume), map_size=1 << 30)
    try:
        with store.read() as view:
            schema = view.require_table("kv")
            return view.commit_position(), {
                decode(enc)[0]: (version, values[1])
                for enc, version, values in view.scan_keyed(schema, None, None)}
    finally:
        store.close()


def position_of(out: str, what: str = "position") -> int:
    m = re.search(rf"{what} (\d+)", out)
    assert m, out
    return int(m.group(1))


def test_a_full_backup_under_load_restores_to_its_position_and_a_node_serves_it(
        cluster: Cluster, tmp_path: Path) -> None:
    """Writers keep going on every node while the backup runs; the restored table equals
    what the acknowledged writes give at the backup's position (versions included), the
    restored volume verifies, and a node of a new cluster serves it and takes writes."""
    prepare(cluster)
    dest = tmp_path / "backup"
    with Load(cluster) as load:
        load.wait_writes(50)
        before = len(load.history)
        out = ok("backup", str(dest), "--connect", ",".join(cluster.addresses), "--no-progress")
        load.wait_writes(50)
    position = position_of(out, "at position")
    assert any(pos > position for pos, _, _ in load.history)
    assert before < len(load.history)
    manifest = fmt.read_manifest(str(dest))
    assert manifest is not None and manifest.copy.position == position
    assert manifest.cluster and manifest.volume_id
    assert "OK" in ok("verify", str(dest))
    # A second full backup into the same directory is refused: it holds one.
    again = shardless("backup", str(dest), "--connect", cluster.addresses[0], "--no-progress")
    assert again.returncode == 1 and "--incremental" in again.stderr

    volume = tmp_path / "restored"
    out = ok("restore", str(dest), "--volume", str(volume))
    assert position_of(out, "to position") == position
    got_position, rows = restored_rows(volume)
    assert got_position == position
    assert rows == load.state_at(position)
    assert "OK" in ok("verify", str(volume))

    node = Node("restored-1", etcd=cluster.etcd_endpoints, volume=volume, port=free_port(),
                log_path=tmp_path / "restored-1.log", ttl_s=3, cluster="restored")
    try:
        node.start()
        node.wait_serving(30)
        db = connect(node.address, refresh_s=None)
        try:
            assert {r["k"]: r["v"] for r in db.scan("kv")} == {
                k: v for k, (_, v) in load.state_at(position).items()}
            assert db.upsert("kv", [{"k": 10_000, "v": "after"}]) == position + 1
            st = db.status()
            assert st.cluster == "restored" and st.primary_volume_id != manifest.volume_id
        finally:
            db.close()
    finally:
        stop_nodes([node])
        if node.is_alive:
            node.kill()


def test_a_local_full_backup_under_load_restores_to_its_position_and_a_node_serves_it(
        cluster: Cluster, tmp_path: Path) -> None:
    """``backup --volume`` (LMDB's own copy, on the volume's host) while writers keep going on
    every node: the restored table equals the acknowledged writes at the copy's position, an
    incremental backup through the nodes continues it, a node of a new cluster serves the
    restored volume, and verify names a flipped byte in the copied data file."""
    prepare(cluster)
    dest = tmp_path / "backup"
    with Load(cluster) as load:
        load.wait_writes(50)
        before = len(load.history)
        out = ok("backup", str(dest), "--volume", str(cluster.volume))
        load.wait_writes(50)
    position = position_of(out, "at position")
    assert any(pos > position for pos, _, _ in load.history)
    assert before < len(load.history)
    manifest = fmt.read_manifest(str(dest))
    assert manifest is not None and manifest.copy.kind == fmt.LMDB_KIND
    assert manifest.copy.position == position and manifest.volume_id
    assert sorted(os.listdir(dest)) == [fmt.LMDB_FILE, fmt.MANIFEST]
    assert "OK" in ok("verify", str(dest))
    both = shardless("backup", str(dest), "--volume", str(cluster.volume), "--connect",
                     cluster.addresses[0])
    assert both.returncode == 2 and "not allowed with" in both.stderr

    volume = tmp_path / "restored"
    out = ok("restore", str(dest), "--volume", str(volume))
    assert position_of(out, "to position") == position
    got_position, rows = restored_rows(volume)
    assert got_position == position
    assert rows == load.state_at(position)
    assert "OK" in ok("verify", str(volume))
    # The log after the copy, through the nodes, restores on top of it.
    ok("backup", str(dest), "--incremental", "--connect", ",".join(cluster.addresses),
       "--no-progress")
    last = max(pos for pos, _, _ in load.history)
    further = tmp_path / "further"
    ok("restore", str(dest), "--volume", str(further), "--to-position", str(last))
    assert restored_rows(further) == (last, load.state_at(last))

    node = Node("restored-1", etcd=cluster.etcd_endpoints, volume=volume, port=free_port(),
                log_path=tmp_path / "restored-1.log", ttl_s=3, cluster="restored")
    try:
        node.start()
        node.wait_serving(30)
        db = connect(node.address, refresh_s=None)
        try:
            assert {r["k"]: r["v"] for r in db.scan("kv")} == {
                k: v for k, (_, v) in load.state_at(position).items()}
            assert db.upsert("kv", [{"k": 10_000, "v": "after"}]) == position + 1
            st = db.status()
            assert st.cluster == "restored" and st.primary_volume_id != manifest.volume_id
        finally:
            db.close()
    finally:
        stop_nodes([node])
        if node.is_alive:
            node.kill()

    copy = dest / fmt.LMDB_FILE
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x40
    copy.write_bytes(bytes(data))
    bad = shardless("verify", str(dest))
    assert bad.returncode == 1 and fmt.LMDB_FILE in bad.stdout and "SHA-256" in bad.stdout
    refused = shardless("restore", str(dest), "--volume", str(tmp_path / "damaged"))
    assert refused.returncode == 1 and "damaged" in refused.stderr


def test_incremental_backups_and_an_archive_restore_to_a_chosen_position(
        cluster: Cluster, tmp_path: Path) -> None:
    """A full backup, then incremental ones and a continuous archive while writers run: a
    restore to a position inside the incremental segments, and one further on with the
    archive, each equal the state at that position; verify names a flipped byte and a lost
    segment, and a restore across the hole is refused naming it."""
    prepare(cluster)
    dest, archive = tmp_path / "backup", tmp_path / "archive"
    addresses = ",".join(cluster.addresses)
    log = open(tmp_path / "archive.log", "ab")  # noqa: SIM115 (closed below)

    def start_archive() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "nodes", "archive", str(archive), "--connect", addresses,
             "--segment-seconds", "0.3"], stdout=log, stderr=log,
            env={k: v for k, v in os.environ.items() if not k.startswith("SHARDLESS_")})

    archiver = start_archive()
    try:
        with Load(cluster) as load:
            load.wait_writes(30)
            full = position_of(ok("backup", str(dest), "--connect", addresses, "--no-progress"),
                               "at position")
            for _ in range(2):
                load.wait_writes(60)
                ok("backup", str(dest), "--incremental", "--connect", addresses,
                   "--no-progress")
            # The archive killed mid-segment resumes from the last whole segment it holds.
            wait_for(lambda: fmt.list_segments(str(archive)), 30, message="a first segment")
            archiver.kill()
            archiver.wait(30)
            archiver = start_archive()
            load.wait_writes(60)
        manifest = fmt.read_manifest(str(dest))
        assert manifest is not None and len(manifest.segments) == 2
        incremental_end = manifest.position
        last = max(pos for pos, _, _ in load.history)
        assert incremental_end < last
        wait_for(lambda: (fmt.list_segments(str(archive)) or [(0, 0, "")])[-1][1] >= last, 30,
                 message=f"the archive reaching position {last}")
    finally:
        archiver.send_signal(signal.SIGTERM)
        archiver.wait(30)
        log.close()
    assert archiver.returncode == 0, (tmp_path / "archive.log").read_text()
    assert "OK" in ok("verify", str(archive))
    assert "OK" in ok("verify", str(dest))

    inside = (full + incremental_end) // 2
    further = (incremental_end + last) // 2
    for target, extra in ((inside, []), (further, ["--archive", str(archive)]),
                          (last, ["--archive", str(archive)])):
        volume = tmp_path / f"restored-{target}"
        ok("restore", str(dest), "--volume", str(volume), "--to-position", str(target), *extra)
        got_position, rows = restored_rows(volume)
        assert got_position == target
        assert rows == load.state_at(target), target
    # Without the archive, the backup does not reach ``further``.
    short = shardless("restore", str(dest), "--volume", str(tmp_path / "short"),
                      "--to-position", str(further))
    assert short.returncode == 1 and f"end at position {incremental_end}" in short.stderr

    # A flipped byte in an incremental segment, then the segment gone.
    seg = dest / fmt.LOG_DIR / manifest.segments[0].name
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x40
    seg.write_bytes(bytes(data))
    bad = shardless("verify", str(dest))
    assert bad.returncode == 1 and seg.name in bad.stdout and "SHA-256" in bad.stdout
    seg.unlink()
    gone = shardless("verify", str(dest))
    s = manifest.segments[0]
    assert gone.returncode == 1 and f"positions {s.first}..{s.last}" in gone.stdout, gone.stdout
    refused = shardless("restore", str(dest), "--volume", str(tmp_path / "holed"),
                        "--to-position", str(incremental_end))
    assert refused.returncode == 1 and f"positions {s.first}..{s.last} are missing" \
        in refused.stderr, refused.stderr


def test_an_incremental_backup_past_the_log_held_says_to_take_a_full_one(
        make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Once the log no longer holds the position after the backup, the incremental backup
    fails (exit 2) naming the oldest position held and asking for a full backup."""
    cluster: Cluster = make_cluster("--log-keep", "1", n=1)
    db = connect(cluster.addresses, refresh_s=None)
    db.create_table("t", {"id": "int64"}, primary_key="id")
    dest = tmp_path / "backup"
    position = position_of(ok("backup", str(dest), "--connect", cluster.addresses[0],
                              "--no-progress"), "at position")
    for i in range(20):
        db.upsert("t", [{"id": i}])
    stub = rpc.ClusterServiceStub(grpc.insecure_channel(cluster.addresses[0]))
    wait_for(lambda: stub.Status(api.StatusRequest(), timeout=10).log_oldest_position
             > position + 1, 20, message="the log trimmed past the backup")
    out = shardless("backup", str(dest), "--incremental", "--connect", cluster.addresses[0],
                    "--no-progress")
    db.close()
    assert out.returncode == 2, out.stderr
    assert "oldest position held is" in out.stderr and "take a new full backup" in out.stderr
    assert "OK" in ok("verify", str(dest))  # left as it was: still whole


def test_a_frozen_archive_keeps_the_log_by_its_hold(make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The archive holds the log from the first position it lacks (a retention hold renewed
    while it runs): frozen past --log-keep while writes go on, it finds its next position still
    there when it wakes, and archives on to the head."""
    cluster: Cluster = make_cluster("--log-keep", "1", n=1)
    archive = tmp_path / "archive"
    with connect(cluster.addresses, refresh_s=None) as db:
        db.create_table("t", {"id": "int64"}, primary_key="id")
        for i in range(5):
            db.upsert("t", {"id": i})
        log = open(tmp_path / "archive.log", "ab")  # noqa: SIM115 (closed below)
        archiver = subprocess.Popen(
            [sys.executable, "-m", "nodes", "archive", str(archive), "--connect",
             cluster.addresses[0], "--segment-seconds", "0.2"], stdout=log, stderr=log,
            env={k: v for k, v in os.environ.items() if not k.startswith("SHARDLESS_")})
        try:
            wait_for(lambda: fmt.list_segments(str(archive)), 30, message="a first segment")
            etcd = EtcdClient(cluster.etcd_endpoints, timeout_s=5)

            def hold_moved_on() -> bool:  # the hold follows the segments (once a second)
                holds = dict(read_holds(etcd, "shardless"))
                last = fmt.list_segments(str(archive))[-1][1]
                return len(holds) == 1 and next(iter(holds.values())) == last + 1
            wait_for(hold_moved_on, 30, message="the archive's hold to follow its segments")
            archiver.send_signal(signal.SIGSTOP)
            held = fmt.list_segments(str(archive))[-1][1]
            etcd.close()
            for i in range(5, 40):
                db.upsert("t", {"id": i})
            head = db.status().commit_position
            wait_for(lambda: db.status().log_oldest_position > 1, 20,
                     message="the leader trimming what the archive holds already")
            status = db.status()
            assert status.log_oldest_position <= held + 1 < head, (status, held)
            archiver.send_signal(signal.SIGCONT)
            wait_for(lambda: fmt.list_segments(str(archive))[-1][1] >= head, 30,
                     message=lambda: (tmp_path / "archive.log").read_text())
            archiver.send_signal(signal.SIGTERM)
            assert archiver.wait(30) == 0, (tmp_path / "archive.log").read_text()
        finally:
            if archiver.poll() is None:
                archiver.send_signal(signal.SIGCONT)
                archiver.kill()
                archiver.wait(10)
            log.close()
    assert "OK" in ok("verify", str(archive))
