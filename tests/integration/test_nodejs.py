"""A client in another language: Node.js with stock ``@grpc/grpc-js`` and ``@grpc/proto-loader``,
built from the ``.proto`` files under ``proto/`` alone (``tests/nodejs/client.js``), following the
wire rules of docs/clients.md.

Owns: installing the pinned npm packages (``tests/nodejs/package-lock.json``) once into a cache
keyed by the lockfile (``.cache/nodejs/<digest>/``), and two tests: the README's examples, and
bank transfers with a plain retry loop while a node is killed with SIGKILL.

Without ``node`` and ``npm`` the tests skip, saying so; with ``SHARDLESS_REQUIRE_NODEJS=1`` (CI
sets it) they fail instead. Every process started here is ended in a ``finally``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardless import connect
from tests.harness.cluster import Cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CLIENT_DIR = REPO / "tests" / "nodejs"
PROTO_ROOT = REPO / "proto"
CACHE = REPO / ".cache" / "nodejs"
ENV_REQUIRE = "SHARDLESS_REQUIRE_NODEJS"
NPM_TIMEOUT_S = 240
ACCOUNTS, START_BALANCE = 8, 100


def _unavailable(reason: str) -> None:
    """Skip, or fail when the environment requires Node.js (CI)."""
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"{reason} (and {ENV_REQUIRE}=1 requires the Node.js client tests)")
    pytest.skip(f"{reason}; install Node.js and npm (apt-get install nodejs npm) to run it")


def _tools() -> tuple[str, str]:
    node = shutil.which("node") or shutil.which("nodejs")
    npm = shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(n for n, p in (("node", node), ("npm", npm)) if p is None)
        _unavailable(f"{missing} not found on PATH")
    assert node is not None and npm is not None
    return node, npm


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """The pinned packages, installed once per lockfile (``npm ci``) and reused afterwards."""
    _node, npm = _tools()
    lock = (CLIENT_DIR / "package-lock.json").read_bytes()
    digest = hashlib.sha256(lock + (CLIENT_DIR / "package.json").read_bytes()).hexdigest()[:16]
    target = CACHE / digest
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as guard:  # another session may be installing the same
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not (target / "node_modules").is_dir():
            staging = Path(tempfile.mkdtemp(prefix="staging-", dir=CACHE))
            try:
                for name in ("package.json", "package-lock.json"):
                    shutil.copy(CLIENT_DIR / name, staging / name)
                try:
                    subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund",
                                    "--cache", str(CACHE / "npm-cache")],
                                   cwd=staging, check=True, capture_output=True, text=True,
                                   timeout=NPM_TIMEOUT_S)
                except subprocess.CalledProcessError as e:
                    _unavailable(f"npm ci failed (is the npm registry reachable?): "
                                 f"{e.stderr[-2000:]}")
                except subprocess.TimeoutExpired:
                    _unavailable(f"npm ci took more than {NPM_TIMEOUT_S} s")
                if target.exists():
                    shutil.rmtree(target)
                staging.rename(target)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
    return target / "node_modules"


def _command(node_modules: Path, cmd: str, cluster: Cluster, *extra: str) -> tuple[
        list[str], dict[str, str]]:
    node, _npm = _tools()
    argv = [node, str(CLIENT_DIR / "client.js"), cmd, "--proto-root", str(PROTO_ROOT),
            "--addresses", ",".join(cluster.addresses), *extra]
    return argv, {**os.environ, "NODE_PATH": str(node_modules)}


@contextlib.contextmanager
def _running(argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.timeout(300)
def test_readme_examples_from_nodejs(node_modules: Path, cluster: Cluster) -> None:
    """Create table, upsert, get, scan, an interactive transaction, an insert with an
    idempotency key (replayed the second time), int64 past 2^53, and error reasons read from
    the rich status details: all from Node.js with the .proto files only."""
    argv, env = _command(node_modules, "readme", cluster)
    with _running(argv, env) as proc:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"node client failed:\n{out}\n{err}"
    assert out.strip().splitlines()[-1] == "ok"
    with connect(cluster.addresses, refresh_s=None) as db:
        assert db.get("users", 1)["name"] == "Ada"
        assert db.get("users", 4)["name"] == "barbara"
        assert db.get("users", 2**62 + 1)["name"] == "big"


@pytest.mark.fault
@pytest.mark.timeout(300)
def test_nodejs_bank_transfers_ride_through_a_node_kill9(
        node_modules: Path, cluster: Cluster, tmp_path: Path) -> None:
    """Transfers in interactive transactions with the plain retry loop of docs/clients.md keep
    going while a node is killed with SIGKILL; afterwards the total is unchanged and every
    acknowledged transfer applied exactly once (each transfer also inserts its row, keyed by its
    id, in the same transaction; the balances are exactly what the recorded rows explain)."""
    with connect(cluster.addresses, refresh_s=None) as db:
        db.create_table("accounts", {"id": "int64", "balance": "int64"}, primary_key="id")
        db.create_table("transfers", {"id": "string", "src": "int64", "dst": "int64",
                                      "amount": "int64"}, primary_key="id")
        db.upsert("accounts", [{"id": i, "balance": START_BALANCE} for i in range(ACCOUNTS)])
    out_file = tmp_path / "transfers.json"
    argv, env = _command(node_modules, "bank", cluster, "--accounts", str(ACCOUNTS),
                         "--seconds", "12", "--workers", "4", "--out", str(out_file))
    acks: list[float] = []
    with _running(argv, env) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        stderr: list[str] = []
        readers = [threading.Thread(target=lambda: [acks.append(time.time())
                                                    for line in proc.stdout  # type: ignore
                                                    if line.startswith("acked")], daemon=True),
                   threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)]
        for r in readers:
            r.start()
        wait_for(lambda: len(acks) >= 20 or proc.poll() is not None, 40,
                 message="20 acknowledged transfers before the kill")
        assert proc.poll() is None, f"node client ended early:\n{''.join(stderr)}"
        victim = cluster[1]
        killed_at = time.time()
        cluster.kill9(victim)
        rc = proc.wait(timeout=90)
        for r in readers:
            r.join(5)
    assert rc == 0, f"node client failed:\n{''.join(stderr)}"

    transfers = json.loads(out_file.read_text())["transfers"]
    by_outcome: dict[str, list[dict[str, object]]] = {}
    for t in transfers:
        by_outcome.setdefault(str(t.get("outcome")), []).append(t)
    ok = {t["id"] for t in by_outcome.get("ok", [])}
    after_kill = [t for t in by_outcome.get("ok", []) if float(t["start"]) > killed_at]  # type: ignore
    with connect(cluster.live_nodes[0].address, refresh_s=None) as db:
        balances = {r["id"]: r["balance"] for r in db.scan("accounts")}
        applied = {r["id"]: r for r in db.scan("transfers")}
    assert sum(balances.values()) == ACCOUNTS * START_BALANCE
    assert ok <= applied.keys(), f"acknowledged but not applied: {sorted(ok - applied.keys())}"
    refused = {t["id"] for t in transfers if t.get("outcome") in ("skipped", "failed")}
    assert not refused & applied.keys(), f"refused but applied: {sorted(refused & applied.keys())}"
    assert applied.keys() <= {t["id"] for t in transfers}
    expected = {i: START_BALANCE for i in range(ACCOUNTS)}
    for r in applied.values():  # the balances are what the applied transfers explain, once each
        expected[r["src"]] -= r["amount"]
        expected[r["dst"]] += r["amount"]
    assert balances == expected
    assert after_kill, "no transfer begun after the kill was acknowledged"
    gaps = [b - a for a, b in itertools.pairwise(acks) if b > killed_at - 1]
    print(f"{len(transfers)} transfers, {len(ok)} acknowledged ({len(after_kill)} begun after "
          f"the kill), outcomes {({k: len(v) for k, v in by_outcome.items()})}, longest stall "
          f"around the kill {max(gaps, default=0):.2f} s, retried "
          f"{sum(1 for t in transfers if int(t.get('attempts') or 1) > 1)}")
