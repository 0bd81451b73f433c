"""Unit tests of nodes.admin: argument checks, value parsing and the text and JSON it prints."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import grpc
import pytest

from lockmgr import LockMode, WaitRecord, queues
from lockmgr.entries import Entry
from nodes import admin, cli
from shardless.client import Record
from shardless.v1 import services_pb2 as api

IX, S, X = LockMode.IX, LockMode.S, LockMode.X


@pytest.mark.parametrize("text", ["nonsense", "host:", ":50051", "1.2.3.4:99999",
                                  "1.2.3.4:0", "1.2.3.4:port", ","])
def test_a_malformed_address_is_an_argument_error(text: str) -> None:
    """Anything but HOST:PORT with a port 1-65535 is refused before any call."""
    with pytest.raises(argparse.ArgumentTypeError):
        admin.parse_addresses(text)


def test_addresses_split_on_commas_and_accept_host_names() -> None:
    """One comma-separated list gives its addresses; one host name is fine (DNS)."""
    assert admin.parse_addresses("127.0.0.1:1, 127.0.0.1:2") == ["127.0.0.1:1", "127.0.0.1:2"]
    assert admin.parse_addresses("db.example:50051") == ["db.example:50051"]


def test_a_malformed_etcd_endpoint_is_an_argument_error() -> None:
    """The etcd endpoints are checked as the lock manager parses them."""
    assert admin.parse_etcd("127.0.0.1:2379") == "127.0.0.1:2379"
    with pytest.raises(argparse.ArgumentTypeError):
        admin.parse_etcd("etcd-without-port")


@pytest.mark.parametrize(("text", "kind", "value"), [
    ("42", "int64", 42), ("-1.5", "double", -1.5), ("true", "bool", True),
    ("0", "bool", False), ("00ff", "bytes", b"\x00\xff"), ("ada", "string", "ada"),
    ("42", "string", "42")])
def test_a_key_word_becomes_a_value_of_its_columns_type(text: str, kind: str,
                                                        value: object) -> None:
    """Key values on the command line are read by the key column's type."""
    assert admin.parse_cell(text, kind) == value


def test_a_key_word_of_the_wrong_type_is_refused() -> None:
    """A word that is not a value of the column's type raises ValueError."""
    for text, kind in [("x", "int64"), ("maybe", "bool"), ("zz", "bytes")]:
        with pytest.raises(ValueError):
            admin.parse_cell(text, kind)


def test_a_json_row_is_checked_against_the_column_types() -> None:
    """Integers may stand for doubles, hex strings for bytes; other mismatches are refused."""
    types = {"id": "int64", "score": "double", "blob": "bytes", "name": "string"}
    assert admin.coerce_row({"id": 1, "score": 2, "blob": "0a", "name": None}, types) == {
        "id": 1, "score": 2.0, "blob": b"\n", "name": None}
    for bad in [[1], {"nope": 1}, {"id": "1"}, {"id": True}, {"name": 3}]:
        with pytest.raises(ValueError):
            admin.coerce_row(bad, types)


def test_message_to_dict_keeps_field_names_and_integers() -> None:
    """JSON keys are the proto field names, 64-bit integers stay numbers, maps and lists
    come through, and fields at their default are present."""
    st = api.StatusResponse(cluster="c", commit_position=2**40, leader="n1")
    st.members.add(node_id="n1", address="127.0.0.1:1", pid=7)
    st.counters["commits"] = 3
    d = admin.message_to_dict(st)
    assert d["commit_position"] == 2**40 and d["counters"] == {"commits": 3}
    assert d["members"][0]["pid"] == 7 and d["members"][0]["group"] == ""
    assert d["epoch"] == 0 and d["replicas"] == []
    json.dumps(d)


def test_members_mark_the_leader_in_text_and_json() -> None:
    """The leader is marked; the JSON has one object per member with is_leader."""
    st = api.StatusResponse(cluster="c", leader="n2")
    st.members.add(node_id="n2", address="127.0.0.1:2", pid=2, session="ab")
    st.members.add(node_id="n1", address="127.0.0.1:1", pid=1, session="cd")
    text = admin.format_members(st)
    lines = text.splitlines()
    assert lines[0] == "cluster c: 2 member(s)"
    assert lines[2].startswith("n1") and lines[3].startswith("n2") and "leader" in lines[3]
    doc = admin.members_json(st)
    assert [(m["node_id"], m["is_leader"]) for m in doc["members"]] == [
        ("n2", True), ("n1", False)]


def test_health_is_healthy_only_when_every_node_serves() -> None:
    """One unreachable node makes the document unhealthy and shows why."""
    results = [("a:1", "SERVING", ""), ("b:2", "UNREACHABLE", "connection refused")]
    assert admin.health_json(results)["healthy"] is False
    assert admin.health_json(results[:1])["healthy"] is True
    assert "connection refused" in admin.format_health(results).splitlines()[2]


def _entry(resource: str, txn: str, mode: LockMode, rev: int,
           rows: dict[str, LockMode] | None = None) -> Entry:
    return Entry(resource, txn, mode, b"k", rev, txn.rpartition("@")[2], dict(rows or {}))


def test_locks_show_holders_then_waiters_in_order_with_what_they_wait_for() -> None:
    """Per resource: holders, then numbered waiters naming the transactions ahead and the
    row their wait record names; the JSON has the same with stable keys."""
    entries = [_entry("p/1/a", "t1@n1", IX, 3, {"r1": X}),
               _entry("p/1/a", "t2@n2", IX, 5, {"r1": X}),
               _entry("t/1", "cache.ab@n1", IX, 2)]
    waits = [WaitRecord("t2@n2", "n2", 1.0, "r/1/r1", "X", ("t1@n1",))]
    qs = queues(entries)
    text = admin.format_locks("c", qs, waits)
    lines = text.splitlines()
    assert lines[0] == "cluster c: 2 resource(s), 2 held, 1 waiting"
    assert lines[1] == "p/1/a"
    assert lines[2].split()[:3] == ["holds", "IX", "t1@n1"] and "rows r1=X" in lines[2]
    assert lines[3].split()[:4] == ["waits", "#1", "IX", "t2@n2"]
    assert "behind t1@n1; on r/1/r1 (X)" in lines[3]
    assert "cached table lock" in lines[5]
    doc = admin.locks_json("c", 9, qs, waits)
    (page, table) = doc["resources"]
    assert page["holders"][0] == {"txn": "t1@n1", "node": "n1", "mode": "IX",
                                  "rows": {"r1": "X"}, "revision": 3, "cached": False}
    assert page["waiters"][0]["blocked_by"] == ["t1@n1"]
    assert page["waiters"][0]["waiting_on"] == {"resource": "r/1/r1", "mode": "X"}
    assert table["holders"][0]["cached"] is True
    assert doc["waits"][0]["waits_for"] == ["t1@n1"]


def test_no_locks_says_so() -> None:
    """An empty lock table is one plain sentence."""
    assert admin.format_locks("c", [], []) == "cluster c: no locks held or waited for"


def test_a_row_prints_in_schema_order_with_bytes_in_hex() -> None:
    """get prints column and value lines in schema order, then the version; JSON likewise."""
    row = admin.ordered(Record({"b": b"\x01", "a": 1, "n": None}, version=4), ["a", "b", "n"])
    assert admin.format_row(row).splitlines() == ["a  1", "b  01", "n  null", "(version 4)"]
    assert admin.row_json("t", (1,), row) == {"table": "t", "key": [1], "found": True,
                                              "version": 4,
                                              "row": {"a": 1, "b": "01", "n": None}}
    assert admin.row_json("t", (b"\x02",), None)["found"] is False


class _Err(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_a_dead_address_is_described_in_one_plain_line() -> None:
    """Connection refused, unresolvable names and deadlines each read as a sentence."""
    refused = _Err(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last "
                   "error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: "
                   "Connection refused")
    assert admin.describe_rpc_error(refused, "127.0.0.1:1", 5) == (
        "no node answered at 127.0.0.1:1: connection refused (is a node running there?)")
    dns = _Err(grpc.StatusCode.UNAVAILABLE, "DNS resolution failed for x.invalid:1")
    assert "does not resolve" in admin.describe_rpc_error(dns, "x.invalid:1", 5)
    late = _Err(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert admin.describe_rpc_error(late, "10.0.0.1:1", 2.5) == (
        "no answer from 10.0.0.1:1 within 2.5 s")


def _subcommands() -> list[str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    admin.add_commands(sub)
    return [*sub.choices, "node", "replica", "up", "drain", "promote", "bench"]


@pytest.mark.parametrize("command", ["", *_subcommands()])
def test_help_text_has_no_markup(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every command's --help is plain text: no backticks, rich or markdown markup, and no
    unexpanded % format."""
    argv = [command, "--help"] if command else ["--help"]
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: shardless")
    for mark in ("`", "**", "[bold", "[/", "%(", "%s", "%d", "%%"):
        assert mark not in out, f"{mark!r} in the help of {command or 'shardless'}:\n{out}"


def test_version_prints_the_package_version() -> None:
    """shardless --version prints the installed package's version and exits 0."""
    from importlib.metadata import version

    done = subprocess.run([sys.executable, "-m", "nodes", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"shardless {version('shardless')}"
