"""Unit tests of the pure parts of security: what a call needs, the tables a request names,
credentials, certificates, the TLS settings."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from lockmgr.etcd import KeyValue
from nodes import certs
from nodes.security import (
    ADMIN,
    READ,
    SYSTEM,
    WRITE,
    Authority,
    Security,
    User,
    needs,
    tables_of,
    token_digest,
    wants_etcd_tls,
)
from shardless import Credentials, to_key
from shardless.credentials import DEFAULT_SERVER_NAME
from shardless.v1 import services_pb2 as api
from shardless.v1 import types_pb2 as pb

S = "/shardless.v1."


def test_each_method_needs_its_level_and_requests_raise_it() -> None:
    assert needs(S + "RowService/Get", api.GetRequest(table="t")) == READ
    assert needs(S + "RowService/Get", api.GetRequest(table="t", for_update=True)) == WRITE
    assert needs(S + "RowService/Scan", api.ScanRequest(table="t", for_update=True)) == WRITE
    assert needs(S + "RowService/Upsert", api.WriteRowsRequest(table="t")) == WRITE
    assert needs(S + "TransactionService/Begin", api.BeginRequest(read_only=True)) == READ
    assert needs(S + "TransactionService/Begin", api.BeginRequest()) == WRITE
    assert needs(S + "TransactionService/Execute", api.ExecuteRequest()) == READ
    assert needs(S + "TransactionService/Execute",
                 api.ExecuteRequest(writes=[pb.Mutation(table="t")])) == WRITE
    assert needs(S + "TransactionService/GetOutcome",
                 api.GetOutcomeRequest(idempotency_key="k")) == READ
    assert needs(S + "TransactionService/GetOutcome",
                 api.GetOutcomeRequest(idempotency_key="k", settle=True)) == WRITE
    assert needs(S + "TableService/CreateTable", api.CreateTableRequest()) == ADMIN
    assert needs(S + "ClusterService/Drain", api.DrainRequest()) == ADMIN
    for m in ("ReadLog", "CopyVolume"):
        assert needs(S + "ClusterService/" + m, None) == ADMIN
    for m in ("ReportPosition", "StreamPositions"):
        assert needs(S + "ClusterService/" + m, None) == SYSTEM
    assert needs("/shardless.v1.NewService/Something", None) == SYSTEM  # unknown: closed


def test_the_tables_a_request_names() -> None:
    assert tables_of(api.GetRequest(table="a", key=to_key(1))) == {"a"}
    assert tables_of(api.CreateTableRequest(schema=pb.TableSchema(name="n"))) == {"n"}
    assert tables_of(api.DropTableRequest(name="d")) == {"d"}
    assert tables_of(api.WriteRequest(mutations=[pb.Mutation(table="x"),
                                                 pb.Mutation(table="y")])) == {"x", "y"}
    got = tables_of(api.ExecuteRequest(conditions=[pb.Condition(table="c")],
                                       reads=[api.ReadOp(table="r")],
                                       writes=[pb.Mutation(table="w")]))
    assert got == {"c", "r", "w"}
    assert tables_of(api.CommitRequest(transaction_id="t")) == set()
    assert tables_of(None) == set()


def test_users_keep_only_a_digest_of_their_token() -> None:
    u = User("ann", "writer", ("a", "b"), token_digest("secret"))
    raw = u.to_json()
    assert b"secret" not in raw
    assert User.from_json("ann", raw) == u and u.level == WRITE


def test_credentials_check_their_parts_and_never_print_secrets(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Credentials(cert=b"c")  # a certificate without its key
    with pytest.raises(ValueError):
        Credentials(cert=b"c", key=b"k")  # mutual TLS without the CA
    with pytest.raises(ValueError):
        Credentials(token="two\nlines")
    assert "hush" not in repr(Credentials(token="hush"))
    assert not Credentials.from_env({}).tls
    d, key = tmp_path / "certs", tmp_path / "ca.key"
    certs.create_ca(d, key)
    certs.create_client_cert(d, key, "ann")
    env = {"SHARDLESS_CERTS_DIR": str(d), "SHARDLESS_USER": "ann", "SHARDLESS_TOKEN": " t "}
    c = Credentials.from_env(env)
    assert c.tls and c.cert is not None and c.token == "t"
    assert Credentials.from_certs_dir(d, user="bob").cert is None  # none made for bob
    with pytest.raises(ValueError):
        Credentials.from_certs_dir(tmp_path / "nowhere")


def test_certificates_chain_to_the_ca_and_name_what_clients_check(tmp_path: Path) -> None:
    d, key = tmp_path / "certs", tmp_path / "ca.key"
    certs.create_ca(d, key)
    with pytest.raises(FileExistsError):
        certs.create_ca(d, key)  # never overwritten
    certs.create_node_cert(d, key, ["db.example.com", "10.0.0.7"])
    certs.create_client_cert(d, key, "ann")
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    node = x509.load_pem_x509_certificate((d / "node.crt").read_bytes())
    client = x509.load_pem_x509_certificate((d / "client.ann.crt").read_bytes())
    for cert in (node, client):
        cert.verify_directly_issued_by(ca)
    sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {DEFAULT_SERVER_NAME, "localhost", "db.example.com"} <= set(
        sans.get_values_for_type(x509.DNSName))
    assert "10.0.0.7" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    cn = client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "ann"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert oct((d / "client.ann.key").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ValueError):
        certs.create_client_cert(d, key, "node")  # the cluster's own name


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    assert wants_etcd_tls("https://a:1,https://b:2") and not wants_etcd_tls("a:1,b:2")
    with pytest.raises(ValueError):
        wants_etcd_tls("https://a:1,b:2")
    with pytest.raises(ValueError):
        Security(client_auth=True).validated()
    with pytest.raises(ValueError, match=r"no ca\.crt"):
        Security(certs_dir=str(tmp_path)).validated()


# --- the process's view of the users: its refresh thread ---


class _UsersEtcd:
    """``get_prefix`` answers what ``answers`` holds first (raising it if an exception),
    then ``users``."""

    def __init__(self, users: list[KeyValue]) -> None:
        self.users = users
        self.answers: list[Exception] = []

    def get_prefix(self, prefix: bytes) -> list[KeyValue]:
        if self.answers:
            raise self.answers.pop(0)
        return self.users


def test_the_authority_goes_on_reading_the_users_after_a_malformed_record() -> None:
    etcd = _UsersEtcd([])
    authority = Authority(lambda: etcd, "c", refresh_s=0.02)  # type: ignore[arg-type,return-value]
    authority.start()
    try:
        assert not authority.state.enabled
        bad = KeyValue(b"c/auth/\xff", b"", 0, 1, 1)  # not UTF-8: reading the users fails
        etcd.users = [bad]
        time.sleep(0.2)
        etcd.users = [KeyValue(b"c/auth/enabled", b"1", 0, 2, 2)]
        deadline = time.monotonic() + 5
        while not authority.state.enabled and time.monotonic() < deadline:
            time.sleep(0.02)
        assert authority.state.enabled, "the auth thread died"
    finally:
        authority.stop()
