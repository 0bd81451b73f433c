"""The operator's commands of ``shardless``: ``status``, ``members``, ``health``, ``locks``,
``get`` and ``put``.

Owns: their arguments, what they print (plain text for people, ``--json`` with stable keys for
programs), the checks of the addresses and etcd endpoints they are given (argparse types, so a
malformed one is a usage error, exit code 2), the messages for a node or etcd that does not
answer (exit code 1, never a traceback), and :func:`_channel`, the one place where these
commands open a gRPC channel (TLS is to be added there, once). The formatting and parsing
helpers are pure functions, unit-tested without a cluster.

Does not own: argument dispatch of the ``shardless`` command (``nodes/cli.py`` calls
:func:`add_commands`), the client helper (``shardless.client``), who holds a lock (the grant
rule, applied by ``lockmgr.queues``), or the status a node reports (``nodes/node.py``).

Exit codes: 0 done; 1 the cluster (or etcd) did not answer, refused, or has no such row, or a
node is not SERVING (``health``); 2 bad arguments (argparse, or a key or row that does not fit
the table's schema).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lockmgr import EtcdUnavailable, LockQueue, WaitRecord, parse_endpoints
from nodes.clientargs import add_client_args, client_credentials
from shardless.client import Client, Record, channel_target
from shardless.credentials import Credentials, open_channel
from shardless.v1 import services_pb2 as api
from shardless.v1 import types_pb2 as pb

DEFAULT_TIMEOUT_S = 5.0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """The command cannot do what was asked; print the message, exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# -- the one channel ----------------------------------------------------------------------------


def _channel(target: str, credentials: Credentials,
             options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """Open a channel to ``target``: every channel of these commands is opened here."""
    return open_channel(target, credentials, list(options))


def _client(addresses: Sequence[str], timeout_s: float, credentials: Credentials,
            attempts: int = 1) -> Client:
    return Client(list(addresses), timeout_s=timeout_s, attempts=attempts, refresh_s=None,
                  credentials=credentials)


# -- parsing arguments (pure) -------------------------------------------------------------------


def parse_addresses(text: str) -> list[str]:
    """Split and check ``HOST:PORT[,HOST:PORT...]``; for argparse's ``type=``.

    Raises:
        argparse.ArgumentTypeError: an address is not HOST:PORT (port 1-65535).
    """
    items = [a.strip() for a in text.split(",") if a.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r} names no address (HOST:PORT)")
    for a in items:
        try:
            channel_target([a])
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{a!r} is not an address: expected HOST:PORT with a port from 1 to 65535"
            ) from None
    return items


def parse_etcd(text: str) -> str:
    """Check etcd endpoints ``HOST:PORT[,HOST:PORT...]``; for argparse's ``type=``.

    Raises:
        argparse.ArgumentTypeError: an endpoint is not HOST:PORT.
    """
    try:
        parse_endpoints(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _flat(groups: Iterable[list[str]]) -> list[str]:
    return list(dict.fromkeys(a for g in groups for a in g))


_TYPE_NAMES = {pb.COLUMN_TYPE_BOOL: "bool", pb.COLUMN_TYPE_INT64: "int64",
               pb.COLUMN_TYPE_DOUBLE: "double", pb.COLUMN_TYPE_STRING: "string",
               pb.COLUMN_TYPE_BYTES: "bytes"}


def parse_cell(text: str, column_type: str) -> Any:
    """Turn a command-line word into a value of ``column_type`` (bytes are given in hex).

    Raises:
        ValueError: the word is not a value of that type.
    """
    if column_type == "int64":
        return int(text)
    if column_type == "double":
        return float(text)
    if column_type == "bool":
        low = text.lower()
        if low not in ("true", "false", "1", "0"):
            raise ValueError(f"{text!r} is not true or false")
        return low in ("true", "1")
    if column_type == "bytes":
        return bytes.fromhex(text)
    return text


def coerce_row(row: Any, types: dict[str, str]) -> dict[str, Any]:
    """Check a row given as JSON against the table's column types: a JSON number may stand for
    a double, a hex string for bytes; NULL is ``null``.

    Raises:
        ValueError: not an object, an unknown column, or a value of the wrong type.
    """
    if not isinstance(row, dict):
        raise ValueError("the row must be a JSON object: {\"column\": value, ...}")
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name not in types:
            raise ValueError(f"no column {name!r} (columns: {', '.join(types)})")
        t = types[name]
        if value is None:
            out[name] = None
        elif t == "bytes" and isinstance(value, str):
            out[name] = bytes.fromhex(value)
        elif t == "double" and isinstance(value, int) and not isinstance(value, bool):
            out[name] = float(value)
        elif (t == "int64" and isinstance(value, int) and not isinstance(value, bool)) or (
                t == "double" and isinstance(value, float)) or (
                t == "bool" and isinstance(value, bool)) or (
                t == "string" and isinstance(value, str)):
            out[name] = value
        else:
            raise ValueError(f"column {name!r} is {t}, not {json.dumps(value)}")
    return out


# -- formatting (pure) --------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """A value made printable as JSON: bytes become hex, tuples lists."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def message_to_dict(msg: Message) -> dict[str, Any]:
    """A proto message as a dict keyed by its field names (the stable names of the API), every
    field present; integers stay integers (protobuf's JSON writes 64-bit ones as strings) and
    enums are their names."""
    out: dict[str, Any] = {}
    for f in msg.DESCRIPTOR.fields:
        value = getattr(msg, f.name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            vf = f.message_type.fields_by_name["value"]
            out[f.name] = {str(k): _field_value(vf, v) for k, v in sorted(value.items())}
        elif f.is_repeated:
            out[f.name] = [_field_value(f, v) for v in value]
        else:
            out[f.name] = _field_value(f, value)
    return out


def _field_value(f: FieldDescriptor, value: Any) -> Any:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return message_to_dict(value)
    if f.type == FieldDescriptor.TYPE_ENUM:
        return f.enum_type.values_by_number[value].name if value in \
            f.enum_type.values_by_number else int(value)
    return plain(value)


def format_status(st: api.StatusResponse) -> str:
    """The text of ``shardless status``."""
    own = [r for r in st.replicas if r.replica_id == st.node_id]
    if own and not st.members:
        return _format_replica_status(st, own[0])
    lines = [f"cluster {st.cluster}  volume {st.volume}  commit position {st.commit_position}"]
    if st.epoch:
        here = "" if st.volume_id == st.primary_volume_id else f" (this node's: {st.volume_id})"
        lines.append(f"epoch {st.epoch}: primary volume {st.primary_volume_id}{here}")
    lines.append(f"commit log: positions {st.log_oldest_position}..{st.commit_position} held, "
                 f"{st.log_bytes / (1 << 20):.1f} MiB")
    for r in st.replicas:
        if not r.registered:
            lines.append(f"replica {r.replica_id}: in the synchronous set ({r.sync_state}) but "
                         f"not running")
            continue
        state = f", {r.sync_state}" if r.sync_state and r.sync_state != r.mode else ""
        if r.mode == "sync" and r.sync_state == "sync":
            state = ", may be promoted"
        lines.append(f"replica {r.replica_id} at {r.address} ({r.mode}{state}"
                     f"{'' if r.caught_up else ', catching up'}): position {r.position}, "
                     f"lag {r.lag_positions} position(s), {r.lag_seconds:.3f} s")
    for rd in st.readers:
        lines.append(f"read-only node {rd.node_id} at {rd.address} (on copy {rd.volume_id}): "
                     f"position {rd.position}, lag {rd.lag_positions} position(s)")
    lines.append(f"leader {st.leader or '(none)'}: {st.leader_activity}")
    lines.append(f"{'node':<24} {'address':<22} {'pid':>7}  session           ttl")
    for m in st.members:
        of = f"  (process of {m.group} at {m.public_address})" if m.group else ""
        lines.append(f"{m.node_id:<24} {m.address:<22} {m.pid:>7}  {m.session:<16} "
                     f"{m.session_ttl_remaining:>4}{of}")
    if st.transactions:
        lines.append(f"{len(st.transactions)} open transaction(s), {len(st.locks)} lock "
                     f"entr(ies), {len(st.waits)} waiting")
    return "\n".join(lines)


def _format_replica_status(st: api.StatusResponse, r: api.ReplicaInfo) -> str:
    """The text of ``shardless status`` answered by a replica process (its own view)."""
    state = [r.mode]
    if r.mode == "sync" and r.sync_state == "sync":
        state.append("may be promoted")
    elif r.sync_state and r.sync_state != r.mode:
        state.append(r.sync_state)
    state.append("caught up" if r.caught_up else "catching up")
    if not r.registered:
        state.append("not registered in etcd")
    lines = [f"replica {r.replica_id} at {r.address} ({', '.join(state)}) of cluster "
             f"{st.cluster}: volume {st.volume}"
             + (f" (copy {st.volume_id})" if st.volume_id else "")]
    if st.epoch:
        lines.append(f"epoch {st.epoch}: follows primary volume {st.primary_volume_id}")
    lines.append(f"holds position {r.position}; the last position a node told it of: "
                 f"{r.primary_last}; lag {r.lag_positions} position(s)"
                 + (f", at most {r.lag_seconds:.3f} s" if r.lag_positions else ""))
    lines.append(f"commit log: positions {st.log_oldest_position}..{st.commit_position} held, "
                 f"{st.log_bytes / (1 << 20):.1f} MiB")
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _when(ts: float) -> str:
    if ts <= 0:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def members_json(st: api.StatusResponse) -> dict[str, Any]:
    """The ``--json`` document of ``shardless members``."""
    members = []
    for m in st.members:
        d = message_to_dict(m)
        d["is_leader"] = bool(st.leader) and m.node_id == st.leader
        members.append(d)
    return {"cluster": st.cluster, "leader": st.leader, "members": members}


def format_members(st: api.StatusResponse) -> str:
    """The text of ``shardless members``: one line per node, the leader marked."""
    rows = [("NODE", "ADDRESS", "PID", "SESSION", "TTL", "STARTED", "ROLE")]
    for m in sorted(st.members, key=lambda m: m.node_id):
        role = "leader" if st.leader and m.node_id == st.leader else ""
        if m.group:
            role = (role + " " if role else "") + f"process of {m.group}"
        rows.append((m.node_id, m.address, str(m.pid), m.session,
                     str(m.session_ttl_remaining), _when(m.started_at), role))
    if len(rows) == 1:
        return f"cluster {st.cluster}: no members"
    return f"cluster {st.cluster}: {len(rows) - 1} member(s)\n" + _table(rows)


def health_json(results: list[tuple[str, str, str]]) -> dict[str, Any]:
    """The ``--json`` document of ``shardless health``."""
    return {"healthy": all(s == "SERVING" for _, s, _ in results),
            "nodes": [{"address": a, "status": s, "error": e} for a, s, e in results]}


def format_health(results: list[tuple[str, str, str]]) -> str:
    """The text of ``shardless health``: each address, its status, and why if unreachable."""
    rows = [("ADDRESS", "STATUS", "")]
    rows += [(a, s, e) for a, s, e in results]
    return _table(rows)


def _cached(txn_id: str) -> bool:
    return txn_id.startswith("cache.")  # a node's cached table lock (lockmgr/affinity.py)


def locks_json(cluster: str, revision: int, qs: list[LockQueue],
               waits: list[WaitRecord]) -> dict[str, Any]:
    """The ``--json`` document of ``shardless locks``."""
    records = {w.txn_id: w for w in waits}

    def entry(e: Any) -> dict[str, Any]:
        return {"txn": e.txn_id, "node": e.node, "mode": e.mode.value,
                "rows": {r: m.value for r, m in sorted(e.rows.items())},
                "revision": e.create_revision, "cached": _cached(e.txn_id)}

    out = []
    for q in qs:
        waiters = []
        for w in q.waiters:
            d = entry(w.entry)
            d["blocked_by"] = list(w.blocked_by)
            rec = records.get(w.entry.txn_id)
            d["waiting_on"] = ({"resource": rec.resource, "mode": rec.mode} if rec else None)
            waiters.append(d)
        out.append({"resource": q.resource, "holders": [entry(e) for e in q.holders],
                    "waiters": waiters})
    return {"cluster": cluster, "revision": revision, "resources": out,
            "waits": [{"txn": w.txn_id, "node": w.node, "resource": w.resource,
                       "mode": w.mode, "waits_for": list(w.waits_for),
                       "started_at": w.started_at} for w in waits]}


def format_locks(cluster: str, qs: list[LockQueue], waits: list[WaitRecord]) -> str:
    """The text of ``shardless locks``: per resource, its holders, then its waiters in the
    order they will be granted."""
    if not qs:
        return f"cluster {cluster}: no locks held or waited for"
    records = {w.txn_id: w for w in waits}
    held = sum(len(q.holders) for q in qs)
    waiting = sum(len(q.waiters) for q in qs)
    lines = [f"cluster {cluster}: {len(qs)} resource(s), {held} held, {waiting} waiting"]
    for q in qs:
        lines.append(q.resource)
        rows: list[tuple[str, ...]] = []
        for e in q.holders:
            note = "(the node's cached table lock)" if _cached(e.txn_id) else ""
            rows.append(("  holds", e.mode.value, e.txn_id, f"node {e.node}",
                         _join(_rows_text(e.rows), note)))
        for i, w in enumerate(q.waiters, start=1):
            rec = records.get(w.entry.txn_id)
            on = f"; on {rec.resource} ({rec.mode})" if rec else ""
            rows.append((f"  waits #{i}", w.entry.mode.value, w.entry.txn_id,
                         f"node {w.entry.node}",
                         _join(_rows_text(w.entry.rows),
                               f"behind {', '.join(w.blocked_by)}{on}")))
        lines.append(_table(rows))
    return "\n".join(lines)


def _join(*parts: str) -> str:
    return "  ".join(p for p in parts if p)


def _rows_text(rows: dict[str, Any]) -> str:
    if not rows:
        return ""
    return "rows " + ",".join(f"{r}={m.value}" for r, m in sorted(rows.items()))


def row_json(table: str, key: Sequence[Any], row: Record | None) -> dict[str, Any]:
    """The ``--json`` document of ``shardless get``."""
    return {"table": table, "key": plain(list(key)), "found": row is not None,
            "version": row.version if row is not None else None,
            "row": plain(dict(row)) if row is not None else None}


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return json.dumps(value)


def ordered(row: Record, columns: Sequence[str]) -> Record:
    """The row with its columns in schema order (those the schema does not name last)."""
    names = [c for c in columns if c in row] + [c for c in row if c not in columns]
    return Record({c: row[c] for c in names}, row.version)


def format_row(row: Record) -> str:
    """The text of ``shardless get``: one ``column  value`` line per column, then the
    version (bytes in hex, NULL as ``null``)."""
    lines = _table([(c, _cell(v)) for c, v in row.items()]) + "\n" if row else ""
    return f"{lines}(version {row.version})"


# -- errors -------------------------------------------------------------------------------------


def describe_rpc_error(e: grpc.RpcError, target: str, timeout_s: float) -> str:
    """A one-line account of a failed call to ``target`` (no traceback)."""
    code = e.code() if hasattr(e, "code") else None
    details = (e.details() if hasattr(e, "details") else "") or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        low = details.lower()
        if "refused" in low:
            why = "connection refused (is a node running there?)"
        elif "dns" in low or "resolv" in low or "domain name" in low:
            why = "the host name does not resolve"
        else:
            why = details or "unavailable"
        return f"no node answered at {target}: {why}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {target} within {timeout_s:g} s"
    name = code.name if code is not None else "error"
    return f"{target}: {name}: {details}"


def describe_etcd_error(e: EtcdUnavailable, endpoints: str) -> str:
    """A one-line account of etcd not answering at ``endpoints``."""
    text = str(e)
    why = "connection refused (is etcd running there?)" if "refused" in text.lower() else text
    return f"etcd did not answer at {endpoints}: {why}"


def _run(prog: str, body: Callable[[], int], etcd: str = "") -> int:
    """Run a command body; turn the expected failures into a message and an exit code."""
    try:
        return body()
    except CommandError as e:
        print(f"shardless {prog}: {e}", file=sys.stderr)
        return e.code
    except EtcdUnavailable as e:
        print(f"shardless {prog}: {describe_etcd_error(e, etcd)}", file=sys.stderr)
        return EXIT_FAILED


def _call(target: Sequence[str], timeout_s: float, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except grpc.RpcError as e:
        raise CommandError(describe_rpc_error(e, ",".join(target), timeout_s)) from None


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=False))


# -- the commands -------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> api.StatusResponse:
    addresses = _flat(args.addresses)
    with _client(addresses, args.timeout, client_credentials(args)) as c:
        st: api.StatusResponse = _call(addresses, args.timeout, c.status)
    return st


def run_status(args: argparse.Namespace) -> int:
    """``shardless status``: the cluster as one node sees it."""
    def body() -> int:
        st = _status(args)
        if args.json:
            _print_json(message_to_dict(st))
        else:
            print(format_status(st))
        return 0
    return _run("status", body)


def run_members(args: argparse.Namespace) -> int:
    """``shardless members``: the nodes that hold a session, and the leader."""
    def body() -> int:
        st = _status(args)
        if args.json:
            _print_json(members_json(st))
        else:
            print(format_members(st))
        return 0
    return _run("members", body)


def check_health(address: str, timeout_s: float, credentials: Credentials | None = None
                 ) -> tuple[str, str, str]:
    """Ask one node's gRPC health service; return (address, status, why unreachable)."""
    with _channel(address, credentials or Credentials()) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                        timeout=timeout_s)
        except grpc.RpcError as e:
            return address, "UNREACHABLE", describe_rpc_error(e, address, timeout_s)
    return (address, health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status), "")


def run_health(args: argparse.Namespace) -> int:
    """``shardless health``: each node's health status; exit 1 unless all are SERVING."""
    creds = client_credentials(args)
    results = [check_health(a, args.timeout, creds) for a in _flat(args.addresses)]
    if args.json:
        _print_json(health_json(results))
    else:
        print(format_health(results))
    return 0 if all(s == "SERVING" for _, s, _ in results) else EXIT_FAILED


def run_locks(args: argparse.Namespace) -> int:
    """``shardless locks``: who holds and who waits, read from etcd."""
    from lockmgr import queues, read_locks

    def body() -> int:
        from nodes.security import Security, wants_etcd_tls

        client = Security(args.certs_dir, etcd_tls=wants_etcd_tls(args.etcd)).validated().etcd(
            args.etcd, timeout_s=args.timeout)
        try:
            revision, entries, waits = read_locks(client, args.cluster)
        finally:
            client.close()
        qs = queues(entries)
        if args.json:
            _print_json(locks_json(args.cluster, revision, qs, waits))
        else:
            print(format_locks(args.cluster, qs, waits))
        return 0
    return _run("locks", body, etcd=args.etcd)


def _schema(c: Client, addresses: Sequence[str], table: str, timeout_s: float
            ) -> tuple[dict[str, str], list[str]]:
    resp = _call(addresses, timeout_s, lambda: c.describe_table(table))
    types = {col.name: _TYPE_NAMES.get(col.type, "string") for col in resp.schema.columns}
    return types, list(resp.schema.primary_key)


def run_get(args: argparse.Namespace) -> int:
    """``shardless get``: one row by its primary key."""
    def body() -> int:
        addresses = args.addresses
        with _client(addresses, args.timeout, client_credentials(args)) as c:
            types, pk = _schema(c, addresses, args.table, args.timeout)
            if len(args.key) != len(pk):
                raise CommandError(f"table {args.table} has a key of {len(pk)} column(s) "
                                   f"({', '.join(pk)}); {len(args.key)} value(s) given",
                                   EXIT_USAGE)
            parts = []
            for text, col in zip(args.key, pk, strict=True):
                try:
                    parts.append(parse_cell(text, types[col]))
                except ValueError:
                    raise CommandError(f"bad key: column {col} is {types[col]}, and {text!r} "
                                       f"is not one", EXIT_USAGE) from None
            key = tuple(parts)
            row = _call(addresses, args.timeout, lambda: c.get(args.table, key))
            if row is not None:
                row = ordered(row, list(types))
        if args.json:
            _print_json(row_json(args.table, key, row))
        elif row is not None:
            print(format_row(row))
        if row is None:
            if not args.json:
                print(f"shardless get: no row with key {', '.join(args.key)} in {args.table}",
                      file=sys.stderr)
            return EXIT_FAILED
        return 0
    return _run("get", body)


def run_put(args: argparse.Namespace) -> int:
    """``shardless put``: write one row (an upsert; an insert with ``--insert``)."""
    def body() -> int:
        addresses = args.addresses
        try:
            raw = json.loads(args.row)
        except ValueError as e:
            raise CommandError(f"the row is not JSON: {e}", EXIT_USAGE) from None
        with _client(addresses, args.timeout, client_credentials(args), attempts=3) as c:
            types, _ = _schema(c, addresses, args.table, args.timeout)
            try:
                row = coerce_row(raw, types)
            except ValueError as e:
                raise CommandError(f"bad row: {e}", EXIT_USAGE) from None
            write = c.insert if args.insert else c.upsert
            position = _call(addresses, args.timeout, lambda: write(args.table, row))
        print(f"{'inserted' if args.insert else 'wrote'} 1 row in {args.table} "
              f"(commit position {position})")
        return 0
    return _run("put", body)


# -- registration -------------------------------------------------------------------------------


def _add_addresses(p: argparse.ArgumentParser) -> None:
    p.add_argument("addresses", nargs="+", type=parse_addresses, metavar="HOST:PORT",
                   help="node addresses (several, or one comma-separated list); the first "
                        "that answers is asked")
    _add_common(p)


def _add_common(p: argparse.ArgumentParser, json_flag: bool = True,
                connection: bool = True) -> None:
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"deadline of each call (default {DEFAULT_TIMEOUT_S:g})")
    if connection:
        add_client_args(p)
    if json_flag:
        p.add_argument("--json", action="store_true",
                       help="print one JSON document instead of text")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``status``, ``members``, ``health``, ``locks``, ``get`` and ``put``."""
    p = sub.add_parser("status", help="print the status of a running cluster",
                       description="Print a running cluster's status as one node sees it: "
                                   "members, leader, commit log, replicas.")
    _add_addresses(p)
    p.set_defaults(func=run_status)

    p = sub.add_parser("members", help="list the nodes of a running cluster",
                       description="List the nodes that hold a session in etcd, with their "
                                   "address, process id, session and its time to live; the "
                                   "leader is marked.")
    _add_addresses(p)
    p.set_defaults(func=run_members)

    p = sub.add_parser("health", help="ask each node whether it serves",
                       description="Ask each node's gRPC health service whether it serves. "
                                   "Exits with 1 unless every node is SERVING.")
    p.add_argument("addresses", nargs="+", type=parse_addresses, metavar="HOST:PORT",
                   help="node addresses (several, or one comma-separated list); each is asked")
    _add_common(p)
    p.set_defaults(func=run_health)

    p = sub.add_parser("locks", help="show who holds each lock and who waits for it",
                       description="Read the lock entries and wait records from etcd and show, "
                                   "per table or page, the transactions that hold it and those "
                                   "that wait, in the order they will be granted.")
    p.add_argument("--etcd", required=True, type=parse_etcd, metavar="HOST:PORT[,...]",
                   help="etcd endpoints")
    p.add_argument("--cluster", default="shardless", help="cluster name (etcd key prefix)")
    p.add_argument("--certs-dir", default="",
                   help="a secure cluster's certificates directory with node.crt and node.key, "
                        "for etcd given as https://")
    _add_common(p, connection=False)
    p.set_defaults(func=run_locks)

    p = sub.add_parser("get", help="read one row by its primary key",
                       description="Read one row by its primary key and print its columns "
                                   "and version. Key values are given one per key column, "
                                   "bytes in hex. Exits with 1 if there is no such row.")
    p.add_argument("addresses", type=parse_addresses, metavar="HOST:PORT[,...]",
                   help="node addresses, comma-separated")
    p.add_argument("table", help="table name")
    p.add_argument("key", nargs="+", help="the primary key's values, in key order")
    _add_common(p)
    p.set_defaults(func=run_get)

    p = sub.add_parser("put", help="write one row",
                       description="Write one row, given as a JSON object of column values "
                                   "(bytes in hex, NULL as null). The row replaces any row "
                                   "with its key unless --insert is given.")
    p.add_argument("addresses", type=parse_addresses, metavar="HOST:PORT[,...]",
                   help="node addresses, comma-separated")
    p.add_argument("table", help="table name")
    p.add_argument("row", help='the row as JSON, for example {"id": 1, "name": "ada"}')
    p.add_argument("--insert", action="store_true",
                   help="fail if a row with this key exists (ALREADY_EXISTS)")
    _add_common(p, json_flag=False)
    p.set_defaults(func=run_put)
