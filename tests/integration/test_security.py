"""Security, end to end: TLS and mutual TLS on real nodes, etcd closed to strangers, users and
roles kept in etcd and applied by every node, changes applied while the cluster runs."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path

import grpc
import pytest

from lockmgr import EtcdClient, EtcdTls, EtcdUnavailable
from nodes import certs
from nodes.etcdserver import EtcdServer
from nodes.up import node_env
from shardless import Credentials, connect, open_channel, to_key, to_row
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc
from tests.conftest import _report_logs
from tests.harness.cluster import Cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodes", *args], capture_output=True,
                          text=True, timeout=60, env=node_env())


def _token(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture
def secure(tmp_path: Path, request: pytest.FixtureRequest
           ) -> Generator[tuple[Path, EtcdServer], None, None]:
    """Certificates (a CA, node, client certificates of root and alice) and an etcd that
    serves TLS and takes only clients with a certificate of that CA."""
    d, key = tmp_path / "certs", tmp_path / "ca.key"
    certs.create_ca(d, key)
    certs.create_node_cert(d, key)
    for user in ("root", "alice"):
        certs.create_client_cert(d, key, user)
    etcd = EtcdServer(tmp_path / "etcd", name="etcd", log_path=tmp_path / "etcd.log",
                      certs_dir=d)
    try:
        etcd.start()
        etcd.wait_ready(timeout_s=30)
        yield d, etcd
    finally:
        try:
            _report_logs(request, "etcd log", {"etcd": etcd.log_tail(200)})
        finally:
            etcd.stop()


def _running(request: pytest.FixtureRequest, c: Cluster) -> Cluster:
    request.addfinalizer(c.stop)
    request.addfinalizer(lambda: _report_logs(request, "node logs", c.dump_logs()))
    c.start(2)
    return c


def _code(fn: object) -> grpc.StatusCode:
    try:
        fn()  # type: ignore[operator]
    except grpc.RpcError as e:
        return e.code()
    raise AssertionError("the call was not refused")


def test_etcd_refuses_clients_without_a_certificate(secure: tuple[Path, EtcdServer]) -> None:
    """The etcd a secure cluster runs takes only TLS clients with a certificate of its CA:
    whoever cannot read etcd cannot read the users or the cluster's own token."""
    d, etcd = secure
    endpoint = etcd.client_endpoint
    assert endpoint.startswith("https://")
    node = EtcdClient(endpoint, timeout_s=2, tls=EtcdTls((d / "ca.crt").read_bytes(),
                                                         (d / "node.crt").read_bytes(),
                                                         (d / "node.key").read_bytes()))
    node.put(b"probe", b"1")
    assert node.get(b"probe") is not None
    node.close()
    for tls in (None, EtcdTls((d / "ca.crt").read_bytes())):  # plaintext; TLS, no certificate
        stranger = EtcdClient(endpoint, timeout_s=2, tls=tls)
        with pytest.raises(EtcdUnavailable):
            stranger.get(b"probe")
        stranger.close()


def test_mutual_tls_names_the_user_and_grants_bound_it(
        secure: tuple[Path, EtcdServer], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Nodes run with --tls-client-auth: a client certificate is the caller's identity (no
    token); a client without one, or without TLS, does not get a connection; a user granted one
    table touches only that one."""
    d, etcd = secure
    e = etcd.client_endpoint
    assert _cli("user", "add", "root", "--role", "admin", "--etcd", e,
                "--certs-dir", str(d)).returncode == 0
    assert _cli("user", "add", "alice", "--role", "writer", "--table", "mine", "--etcd", e,
                "--certs-dir", str(d)).returncode == 0
    on = _cli("auth", "on", "--etcd", e, "--certs-dir", str(d))
    assert on.returncode == 0, on.stderr
    c = _running(request, Cluster(tmp_path / "cluster", n=2, etcd=etcd, start=False,
                                  node_args=("--certs-dir", str(d), "--tls-client-auth")))
    with connect(c.addresses, credentials=Credentials.from_certs_dir(d, user="root")) as root:
        for t in ("mine", "theirs"):
            root.create_table(t, {"id": "int64", "v": "string"}, primary_key="id")
    with connect(c.addresses, credentials=Credentials.from_certs_dir(d, user="alice")) as alice:
        alice.upsert("mine", {"id": 1, "v": "a"})
        assert alice.get("mine", 1)["v"] == "a"
        denied = _code(lambda: alice.upsert("theirs", {"id": 1, "v": "a"}))
        assert denied == grpc.StatusCode.PERMISSION_DENIED
        assert _code(lambda: alice.drop_table("mine")) == grpc.StatusCode.PERMISSION_DENIED
    ca_only = Credentials(ca=(d / "ca.crt").read_bytes())
    for creds in (ca_only, Credentials()):  # no client certificate; no TLS at all
        with connect(c.addresses, credentials=creds, attempts=1, timeout_s=3) as stranger:
            assert _code(lambda s=stranger: s.get("mine", 1)) == grpc.StatusCode.UNAVAILABLE
    with connect(c.addresses, credentials=Credentials.from_certs_dir(d, user="root")) as root:
        assert root.get("theirs", 1) is None  # the refused write wrote nothing


def test_roles_tokens_and_changes_apply_on_every_node(
        secure: tuple[Path, EtcdServer], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """TLS without client certificates, tokens: anonymous and unknown callers get
    UNAUTHENTICATED, each role what it may do and PERMISSION_DENIED beyond, replication calls
    are the cluster's own; a removed user, a new token and turning authentication off apply on
    every node within seconds."""
    d, etcd = secure
    e = etcd.client_endpoint
    admin = _token(_cli("user", "add", "root", "--role", "admin", "--etcd", e,
                        "--certs-dir", str(d)))
    writer = _token(_cli("user", "add", "wendy", "--role", "writer", "--etcd", e,
                         "--certs-dir", str(d)))
    reader = _token(_cli("user", "add", "rita", "--role", "reader", "--etcd", e,
                         "--certs-dir", str(d)))
    assert _cli("auth", "on", "--etcd", e, "--certs-dir", str(d)).returncode == 0
    c = _running(request, Cluster(tmp_path / "cluster", n=2, etcd=etcd, start=False,
                                  node_args=("--certs-dir", str(d))))
    ca = (d / "ca.crt").read_bytes()

    def client(token: str) -> object:
        return connect(c.addresses, credentials=Credentials(ca=ca, token=token), attempts=1,
                       refresh_s=None)

    anon, stranger = client(""), client("not-a-token")
    for who in (anon, stranger):
        assert _code(lambda w=who: w.list_tables()) == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    a, w, r = client(admin), client(writer), client(reader)
    a.create_table("t", {"id": "int64", "v": "int64"}, primary_key="id")  # type: ignore[attr-defined]
    assert _code(lambda: w.create_table("u", {"id": "int64"}, primary_key="id")  # type: ignore[attr-defined]
                 ) == grpc.StatusCode.PERMISSION_DENIED
    w.upsert("t", [{"id": i, "v": i} for i in range(5)])  # type: ignore[attr-defined]
    with w.begin() as txn:  # type: ignore[attr-defined]
        txn.update("t", {"id": 0, "v": txn.get("t", 0, for_update=True)["v"] + 10})
    # The reader reads, in every way, and writes in none.
    assert r.get("t", 0)["v"] == 10  # type: ignore[attr-defined]
    assert len(list(r.scan("t"))) == 5  # type: ignore[attr-defined]
    with r.begin(read_only=True) as ro:  # type: ignore[attr-defined]
        assert ro.get("t", 1)["v"] == 1
    for refused in (lambda: r.upsert("t", {"id": 9, "v": 9}),  # type: ignore[attr-defined]
                    lambda: r.begin(),  # type: ignore[attr-defined]
                    lambda: r.drop_table("t")):  # type: ignore[attr-defined]
        assert _code(refused) == grpc.StatusCode.PERMISSION_DENIED
    for token in (reader, writer):  # for_update takes locks: a writer's business
        with open_channel(c.addresses[0], Credentials(ca=ca, token=token)) as ch:
            rows, cluster = rpc.RowServiceStub(ch), rpc.ClusterServiceStub(ch)
            got = _code(lambda rows=rows: rows.Get(api.GetRequest(
                table="t", key=to_key(1), for_update=True), timeout=5))
            assert got == (grpc.StatusCode.PERMISSION_DENIED if token == reader
                           else grpc.StatusCode.INVALID_ARGUMENT)  # (outside a transaction)
            # Replication is the cluster's own: a forged position report could make a node
            # acknowledge a commit no replica holds.
            assert _code(lambda cluster=cluster: cluster.ReportPosition(
                api.ReportPositionRequest(replica_id="x", position=10**9), timeout=5)
            ) == grpc.StatusCode.PERMISSION_DENIED
            assert _code(lambda cluster=cluster: cluster.Drain(
                api.DrainRequest(), timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    assert r.get("t", 9) is None  # type: ignore[attr-defined]
    # A transaction is its user's: another user (here an admin) cannot use or end it, though
    # Status lists its id.
    with open_channel(c.addresses[0], Credentials(ca=ca, token=writer)) as mine, \
            open_channel(c.addresses[0], Credentials(ca=ca, token=admin)) as theirs:
        begun = rpc.TransactionServiceStub(mine).Begin(api.BeginRequest(), timeout=5)
        other = rpc.TransactionServiceStub(theirs)
        assert _code(lambda: other.Rollback(api.RollbackRequest(
            transaction_id=begun.transaction_id), timeout=5)) == grpc.StatusCode.NOT_FOUND
        assert _code(lambda: rpc.RowServiceStub(theirs).Upsert(api.WriteRowsRequest(
            table="t", rows=[to_row({"id": 8, "v": 8})], transaction_id=begun.transaction_id),
            timeout=5)) == grpc.StatusCode.NOT_FOUND
        rpc.RowServiceStub(mine).Upsert(api.WriteRowsRequest(
            table="t", rows=[to_row({"id": 8, "v": 80})], transaction_id=begun.transaction_id),
            timeout=5)
        rpc.TransactionServiceStub(mine).Commit(api.CommitRequest(
            transaction_id=begun.transaction_id), timeout=5)
    assert r.get("t", 8)["v"] == 80  # type: ignore[attr-defined]
    # Health stays open (load balancers and orchestrators ask it without credentials).
    assert all(n.health() == "SERVING" for n in c.nodes)

    # Changes apply on every node within the refresh (1 s), without a restart.
    assert _cli("user", "remove", "rita", "--etcd", e, "--certs-dir", str(d)).returncode == 0
    new = _token(_cli("user", "token", "wendy", "--etcd", e, "--certs-dir", str(d)))
    for address in c.addresses:
        for token, want in ((reader, grpc.StatusCode.UNAUTHENTICATED),
                            (writer, grpc.StatusCode.UNAUTHENTICATED)):
            def refused(token: str = token, want: grpc.StatusCode = want,
                        address: str = address) -> bool:
                with open_channel(address, Credentials(ca=ca, token=token)) as ch:
                    try:
                        rpc.TableServiceStub(ch).ListTables(api.ListTablesRequest(), timeout=5)
                    except grpc.RpcError as err:
                        return err.code() == want
                return False
            wait_for(refused, 10, message=f"{address} to refuse an old token")
    with connect(c.addresses, credentials=Credentials(ca=ca, token=new)) as w2:
        w2.upsert("t", {"id": 7, "v": 7})
    # An admin drains a node (the refusals above were the roles, not the call).
    with open_channel(c.addresses[1], Credentials(ca=ca, token=admin)) as ch:
        resp = rpc.ClusterServiceStub(ch).Drain(api.DrainRequest(), timeout=10)
    assert resp.node_id == c.nodes[1].node_id
    assert _cli("auth", "off", "--etcd", e, "--certs-dir", str(d)).returncode == 0
    deadline = time.monotonic() + 10
    with open_channel(c.addresses[0], Credentials(ca=ca)) as ch:
        while True:
            try:
                rpc.TableServiceStub(ch).ListTables(api.ListTablesRequest(), timeout=5)
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED
                assert time.monotonic() < deadline, "authentication still on after 10 s"
                time.sleep(0.2)
    for cl in (anon, stranger, a, w, r):
        cl.close()  # type: ignore[attr-defined]


def test_the_readme_examples_run_as_written_against_a_secure_cluster(
        secure: tuple[Path, EtcdServer], tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the environment `shardless up` tells the user to export (the CA's directory and a
    token), the README's examples run unchanged on TLS with authentication on."""
    d, etcd = secure
    e = etcd.client_endpoint
    token = _token(_cli("user", "add", "root", "--role", "admin", "--etcd", e,
                        "--certs-dir", str(d)))
    assert _cli("auth", "on", "--etcd", e, "--certs-dir", str(d)).returncode == 0
    c = _running(request, Cluster(tmp_path / "cluster", n=2, etcd=etcd, start=False,
                                  node_args=("--certs-dir", str(d))))
    monkeypatch.setenv("SHARDLESS_CERTS_DIR", str(d))
    monkeypatch.setenv("SHARDLESS_TOKEN", token)
    readme = Path(__file__).resolve().parents[2] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    assert len(blocks) >= 3
    for code in blocks:
        code = re.sub(r'\["127\.0\.0\.1:50051".*?\]', repr(c.addresses), code)
        code = code.replace('"127.0.0.1:50051"', repr(c.addresses[0]))
        exec(compile(code, "README.md", "exec"), {})
    with connect(c.addresses) as db:  # the environment's credentials
        assert db.get("users", 1)["name"] == "Ada" and db.get("users", 3)["name"] == "edsger"
    with connect(c.addresses, credentials=Credentials(ca=(d / "ca.crt").read_bytes()),
                 attempts=1) as anon:
        assert _code(lambda: anon.get("users", 1)) == grpc.StatusCode.UNAUTHENTICATED
    # The operator's commands connect the same way (flags, or the environment).
    for cmd in (["members", c.addresses[0]], ["health", c.addresses[0]],
                ["get", c.addresses[0], "users", "1"]):
        ok = _cli(*cmd, "--certs-dir", str(d), "--token", token)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = _cli("members", c.addresses[0], "--certs-dir", str(d), "--token", "")
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr, refused.stderr
