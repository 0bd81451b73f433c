"""A thin Python client over the generated ``shardless.v1`` stubs.

Owns:
    * one gRPC channel over every node address, balanced round-robin, with a channel-level retry
      policy for UNAVAILABLE on the read-only methods only (:data:`RETRYABLE_METHODS`);
    * conversion between Python values and the API messages (:func:`to_value`,
      :func:`from_value`, :func:`to_row`, :func:`from_row`, :func:`to_key`, :func:`to_filter`);
    * small builders for mutations and conditions (:class:`Mutation`, :class:`Condition`);
    * :class:`Client`, one method per RPC, each call bounded by ``timeout_s``.

Retries:
    * Reads: the channel retries UNAVAILABLE for RowService ``Get``, ``BatchGet`` and ``Scan``,
      TableService ``ListTables`` and ``DescribeTable``, ClusterService ``Status`` and
      TransactionService ``Begin``.
    * Row writes and ``Execute``: each call gets an idempotency key (unless the caller gives
      one, or ``idempotent_writes=False``) and is retried on UNAVAILABLE, ABORTED and
      DEADLINE_EXCEEDED with exponential backoff, on whichever node the channel picks: the key
      makes the retry apply at most once, even if the first attempt committed before its reply
      was lost. ``CreateTable`` and ``DropTable`` are not retried.
    * :meth:`Client.run_transaction` runs a function in an interactive transaction and re-runs
      it on ABORTED or UNAVAILABLE, committing every attempt with one idempotency key.
    * The client refreshes the member list from Status every ``refresh_s`` and rebuilds its
      channel when nodes join or leave.

Does not:
    * wrap errors. Every failure surfaces as the ``grpc.RpcError`` raised by the stub; read
      ``err.code()`` (a ``grpc.StatusCode``) and ``err.details()``. The status codes are listed
      in ``services.proto``. Bad Python input is rejected before any call with ``TypeError`` or
      ``ValueError``.
    * use TLS, or validate against schemas (the node does that).

Addresses:
    ``host:port`` strings (or one comma-separated string). Hosts must be IP literals
    (``127.0.0.1``, ``[::1]``) or ``localhost``, which maps to ``127.0.0.1``; all of one family.
    They become one ``ipv4:`` (or ``ipv6:``) target such as ``ipv4:127.0.0.1:50051,127.0.0.1:50052``
    so that round-robin spreads calls over, and fails over between, every node. A *single*
    address with another host name is passed to the DNS resolver unchanged; several host names
    are rejected with ``ValueError``.

Rows:
    Reads return :class:`Record` objects: plain ``dict`` subclasses (column -> value) that also
    carry the row's ``version`` attribute, the commit-log position that last wrote it.
    ``batch_get`` and ``scan`` ask for packed rows (``PackedRows``: one MessagePack value per
    message, decoded in C) and read plain ``results``/``rows`` from a node that sends those.

Example:
    >>> from shardless import connect
    >>> db = connect(["127.0.0.1:50051", "127.0.0.1:50052", "127.0.0.1:50053"])
    >>> db.create_table("users", {"id": "int64", "name": "string"}, primary_key="id")
    >>> db.insert("users", [{"id": 1, "name": "ada"}])
    >>> print(db.get("users", 1), list(db.scan("users")))
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeAlias

import grpc
import msgpack

from shardless.credentials import Credentials, open_channel
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as api_grpc
from shardless.v1 import types_pb2 as pb
from shardless.v1.services_pb2 import Change as api_pb_change

_log = logging.getLogger("shardless")

Scalar: TypeAlias = bool | int | float | str | bytes | bytearray | memoryview | None
"""A Python value that maps to one ``Value`` (``None`` is SQL NULL)."""

KeyLike: TypeAlias = Scalar | tuple[Scalar, ...] | list[Scalar] | pb.Key
"""A primary key: one scalar, a tuple/list in primary-key order, or a ``Key`` message."""

FilterLike: TypeAlias = tuple[Any, ...] | pb.Filter
"""A scan filter: ``(column, op, value)``, ``(column, "is null")`` or a ``Filter`` message."""

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

RETRYABLE_METHODS: tuple[tuple[str, str], ...] = (
    ("shardless.v1.RowService", "Get"),
    ("shardless.v1.RowService", "BatchGet"),
    ("shardless.v1.RowService", "Scan"),
    ("shardless.v1.TableService", "ListTables"),
    ("shardless.v1.TableService", "DescribeTable"),
    ("shardless.v1.ClusterService", "Status"),
    ("shardless.v1.TransactionService", "Begin"),
)
"""(full service name, method) pairs the channel may re-send on UNAVAILABLE: they change no
data (a Begin whose reply was lost leaves an empty transaction that the idle timeout ends)."""

RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 5,
    "initialBackoff": "0.05s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}

_COLUMN_TYPES = {
    "bool": pb.COLUMN_TYPE_BOOL,
    "int64": pb.COLUMN_TYPE_INT64,
    "int": pb.COLUMN_TYPE_INT64,
    "double": pb.COLUMN_TYPE_DOUBLE,
    "float": pb.COLUMN_TYPE_DOUBLE,
    "string": pb.COLUMN_TYPE_STRING,
    "str": pb.COLUMN_TYPE_STRING,
    "bytes": pb.COLUMN_TYPE_BYTES,
}

_COMPARE_OPS = {
    "=": pb.Filter.EQ, "==": pb.Filter.EQ, "eq": pb.Filter.EQ,
    "!=": pb.Filter.NE, "<>": pb.Filter.NE, "ne": pb.Filter.NE,
    "<": pb.Filter.LT, "lt": pb.Filter.LT,
    "<=": pb.Filter.LE, "le": pb.Filter.LE,
    ">": pb.Filter.GT, "gt": pb.Filter.GT,
    ">=": pb.Filter.GE, "ge": pb.Filter.GE,
}  # fmt: skip
_NULL_OPS = {"is null": pb.Filter.IS_NULL, "is not null": pb.Filter.IS_NOT_NULL}


# --- values -------------------------------------------------------------------------------------


class Record(dict[str, Any]):
    """A row as read: a plain ``dict`` of column -> value, plus ``version``.

    ``version`` is the commit-log position of the commit that last wrote the row. NB: equality is
    the ``dict``'s, so two records with the same columns but different versions compare equal.
    """

    __slots__ = ("version",)

    def __init__(self, columns: Mapping[str, Any] | None = None, version: int = 0) -> None:
        """Build a record from column -> value and a version."""
        super().__init__(columns or {})
        self.version = version

    def __repr__(self) -> str:
        """Show the columns and the version."""
        return f"Record({dict.__repr__(self)}, version={self.version})"


def to_value(x: Scalar | pb.Value) -> pb.Value:
    """Convert a Python value to a ``Value`` message.

    Args:
        x: ``None`` (NULL: no kind set), ``bool``, ``int`` (int64), ``float`` (double), ``str``,
            ``bytes``/``bytearray``/``memoryview`` (bytes), or a ``Value`` (returned as is).

    Returns:
        The ``Value`` message.

    Raises:
        ValueError: an ``int`` outside the int64 range.
        TypeError: any other type.
    """
    if x is None:
        return pb.Value()
    if isinstance(x, pb.Value):
        return x
    if isinstance(x, bool):  # before int: bool is an int subclass
        return pb.Value(bool_value=x)
    if isinstance(x, int):
        if not INT64_MIN <= x <= INT64_MAX:
            raise ValueError(f"integer {x} is outside the int64 range")
        return pb.Value(int_value=int(x))
    if isinstance(x, float):
        return pb.Value(double_value=float(x))
    if isinstance(x, str):
        return pb.Value(string_value=str(x))
    if isinstance(x, bytes | bytearray | memoryview):
        return pb.Value(bytes_value=bytes(x))
    raise TypeError(f"cannot store a {type(x).__name__} value: {x!r}")


def from_value(v: pb.Value) -> Scalar:
    """Convert a ``Value`` message to ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``."""
    kind = v.WhichOneof("kind")
    return None if kind is None else getattr(v, kind)


def to_row(columns: Mapping[str, Scalar] | pb.Row) -> pb.Row:
    """Convert a column -> value mapping to a ``Row`` message (``version`` left 0).

    A ``None`` value is sent as an explicit NULL for that column. A ``Row`` is returned as is.

    Raises:
        TypeError: a column name is not a ``str``, or a value has no matching type.
        ValueError: an ``int`` outside the int64 range.
    """
    if isinstance(columns, pb.Row):
        return columns
    if not isinstance(columns, Mapping):
        raise TypeError(f"a row must be a mapping of column -> value, not {type(columns).__name__}")
    row = pb.Row()
    for name, x in columns.items():
        if not isinstance(name, str):
            raise TypeError(f"column names must be str, not {type(name).__name__}")
        row.columns[name].CopyFrom(to_value(x))
    return row


def from_row(row: pb.Row) -> Record:
    """Convert a ``Row`` message to a :class:`Record` carrying the row's version."""
    return Record({name: from_value(v) for name, v in row.columns.items()}, version=row.version)


def to_key(key: KeyLike) -> pb.Key:
    """Convert a primary key to a ``Key`` message.

    Args:
        key: One scalar for a one-column key, a tuple or list of scalars in primary-key order
            (fewer parts make a prefix, allowed for scan bounds), or a ``Key`` (returned as is).

    Raises:
        ValueError: ``key`` is ``None`` (a key column is never NULL), or an int is out of range.
        TypeError: a part has no matching type.
    """
    if isinstance(key, pb.Key):
        return key
    if key is None:
        raise ValueError("a key cannot be None")
    parts = key if isinstance(key, tuple | list) else (key,)
    return pb.Key(parts=[to_value(p) for p in parts])


def from_key(key: pb.Key) -> tuple[Scalar, ...]:
    """Convert a ``Key`` message to a tuple of Python values."""
    return tuple(from_value(v) for v in key.parts)


def to_filter(spec: FilterLike) -> pb.Filter:
    """Convert a filter tuple to a ``Filter`` message.

    Args:
        spec: ``(column, op, value)`` with op one of ``= == != <> < <= > >=`` or ``eq ne lt le
            gt ge``; or ``(column, "is null")`` / ``(column, "is not null")``; ops are
            case-insensitive. A ``Filter`` is returned as is.

    Raises:
        ValueError: an unknown op, a wrong tuple length, or a comparison with ``None`` (which is
            never true in SQL; use ``"is null"``).
    """
    if isinstance(spec, pb.Filter):
        return spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3) or not isinstance(spec[0], str):
        raise ValueError(f"a filter is (column, op, value) or (column, 'is null'), not {spec!r}")
    column, op_name = spec[0], " ".join(str(spec[1]).lower().split())
    if len(spec) == 2:
        if op_name not in _NULL_OPS:
            raise ValueError(f"filter {spec!r}: a two-part filter needs 'is null' or 'is not null'")
        return pb.Filter(column=column, op=_NULL_OPS[op_name])
    if op_name not in _COMPARE_OPS:
        raise ValueError(f"filter {spec!r}: unknown operator {spec[1]!r}")
    if spec[2] is None:
        raise ValueError(f"filter {spec!r}: comparisons with NULL are never true; use 'is null'")
    return pb.Filter(column=column, op=_COMPARE_OPS[op_name], value=to_value(spec[2]))


def column_type(name: str) -> pb.ColumnType.ValueType:
    """Map a type name (``bool int64 double string bytes``, or ``int float str``) to its enum.

    Raises:
        ValueError: an unknown type name.
    """
    try:
        return _COLUMN_TYPES[name.strip().lower()]
    except (KeyError, AttributeError):
        choices = sorted(_COLUMN_TYPES)
        raise ValueError(f"unknown column type {name!r}; use one of {choices}") from None


# --- builders -----------------------------------------------------------------------------------


def _expected(version: int | None) -> dict[str, int]:
    return {} if version is None else {"expected_version": version}


class Mutation:
    """Builders of ``Mutation`` messages for :meth:`Client.write` and :meth:`Client.execute`.

    ``expected_version`` makes the write conditional: the row's current version must equal it
    (0: the row must not exist), else the whole request fails with FAILED_PRECONDITION.
    """

    @staticmethod
    def insert(table: str, row: Mapping[str, Scalar], expected_version: int | None = None
               ) -> pb.Mutation:
        """Build an insert (the row must not exist)."""
        return pb.Mutation(table=table, kind=pb.Mutation.INSERT, row=to_row(row),
                           **_expected(expected_version))

    @staticmethod
    def upsert(table: str, row: Mapping[str, Scalar], expected_version: int | None = None
               ) -> pb.Mutation:
        """Build an upsert (insert, or replace the whole row)."""
        return pb.Mutation(table=table, kind=pb.Mutation.UPSERT, row=to_row(row),
                           **_expected(expected_version))

    @staticmethod
    def update(table: str, row: Mapping[str, Scalar], expected_version: int | None = None
               ) -> pb.Mutation:
        """Build an update: ``row`` holds the primary-key columns plus the columns to change."""
        return pb.Mutation(table=table, kind=pb.Mutation.UPDATE, row=to_row(row),
                           **_expected(expected_version))

    @staticmethod
    def delete(table: str, key_columns: Mapping[str, Scalar], expected_version: int | None = None
               ) -> pb.Mutation:
        """Build a delete: ``key_columns`` maps each primary-key column to its value."""
        return pb.Mutation(table=table, kind=pb.Mutation.DELETE, row=to_row(key_columns),
                           **_expected(expected_version))


class Condition:
    """Builders of ``Condition`` messages for :meth:`Client.execute`."""

    @staticmethod
    def exists(table: str, key: KeyLike, exists: bool = True) -> pb.Condition:
        """Build "the row exists" (or, with ``exists=False``, "the row does not exist")."""
        return pb.Condition(table=table, key=to_key(key), exists=exists)

    @staticmethod
    def version(table: str, key: KeyLike, version: int) -> pb.Condition:
        """Build "the row's version equals ``version``" (0: the row does not exist)."""
        return pb.Condition(table=table, key=to_key(key), version=version)

    @staticmethod
    def column_equals(table: str, key: KeyLike, column: str, value: Scalar) -> pb.Condition:
        """Build "the row exists and ``column`` equals ``value``" (NULL equals NULL here)."""
        return pb.Condition(table=table, key=to_key(key),
                            column_equals=pb.ColumnValue(column=column, value=to_value(value)))


@dataclass(frozen=True)
class ExecuteResult:
    """The outcome of :meth:`Client.execute`.

    Attributes:
        reads: One entry per read, in request order: a :class:`Record`, or ``None`` if absent.
        commit_position: The commit's log position; 0 when nothing was written.
        rows_affected: Rows inserted, replaced, updated or deleted.
    """

    reads: list[Record | None]
    commit_position: int
    rows_affected: int


def _to_read(op: api.ReadOp | tuple[Any, ...]) -> api.ReadOp:
    if isinstance(op, api.ReadOp):
        return op
    if not isinstance(op, tuple) or len(op) not in (2, 3):
        raise ValueError(f"a read is (table, key) or (table, key, columns), not {op!r}")
    columns = list(op[2]) if len(op) == 3 and op[2] is not None else []
    return api.ReadOp(table=op[0], key=to_key(op[1]), columns=columns)


def _result(r: api.GetResponse) -> Record | None:
    return from_row(r.row) if r.found else None


def from_packed(packed: pb.PackedRows) -> list[Record | None]:
    """The rows of a ``PackedRows`` message, ``None`` for a nil (a BatchGet key with no row).

    Raises:
        ValueError: ``packed.rows`` is not the packed layout.
    """
    names = list(packed.columns)
    try:
        items = msgpack.unpackb(packed.rows, raw=False) if packed.rows else []
        return [None if item is None else Record(dict(zip(names, item[1], strict=True)),
                                                 version=item[0]) for item in items]
    except (ValueError, TypeError, IndexError, msgpack.UnpackException) as e:
        raise ValueError(f"malformed packed rows: {e}") from e


def _batch_results(response: api.BatchGetResponse) -> list[Record | None]:
    if response.HasField("packed"):
        return from_packed(response.packed)
    return [_result(r) for r in response.results]  # a node that does not pack


def _scan_rows(response: api.ScanResponse) -> list[Record | None]:
    if response.HasField("packed"):
        return from_packed(response.packed)
    return [from_row(r) for r in response.rows]  # a node that does not pack


def _rows(rows: Mapping[str, Scalar] | Iterable[Mapping[str, Scalar]]) -> list[pb.Row]:
    if isinstance(rows, Mapping | pb.Row):
        return [to_row(rows)]
    return [to_row(r) for r in rows]


PACK_MIN_ROWS = 16  # from this many rows, insert and upsert send them packed (PackedRows)


def _rows_request(table: str, rows: Mapping[str, Scalar] | Iterable[Mapping[str, Scalar]],
                  **fields: Any) -> api.WriteRowsRequest:
    """The WriteRowsRequest of an insert or upsert: many plain rows go packed (one MessagePack
    value: a tenth of the cost of a map entry per value, on both sides), others as Row
    messages (which also take ``Value`` messages and say what is wrong with a bad value)."""
    if not isinstance(rows, Mapping | pb.Row):
        rows = list(rows)
        if len(rows) >= PACK_MIN_ROWS and all(isinstance(r, dict) for r in rows):
            columns: dict[str, None] = {}
            for r in rows:
                columns.update(dict.fromkeys(r))
            names = list(columns)
            try:
                packed = msgpack.packb([[0, [r.get(c) for c in names]] for r in rows],
                                       use_bin_type=True)
            except (TypeError, ValueError, OverflowError):
                packed = None  # a value msgpack does not take: the Row path says which
            if packed is not None:
                return api.WriteRowsRequest(table=table, packed=pb.PackedRows(
                    columns=names, rows=packed), **fields)
    return api.WriteRowsRequest(table=table, rows=_rows(rows), **fields)


_SINGLE_KEY_TYPES = (str, bytes, bytearray, memoryview, int, float, pb.Key)


def _keys(keys: Iterable[KeyLike]) -> list[pb.Key]:
    if keys is None or isinstance(keys, _SINGLE_KEY_TYPES):
        raise TypeError("keys must be a list of keys; for one key pass [key]")
    return [to_key(k) for k in keys]


# --- channel ------------------------------------------------------------------------------------


def _split_address(address: str) -> tuple[str, str]:
    address = address.strip()
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
    else:
        host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {address!r} is not host:port")
    return host, port


def channel_target(addresses: str | Sequence[str]) -> str:
    """Build the one gRPC target that names every node, e.g. ``ipv4:127.0.0.1:1,127.0.0.1:2``.

    Args:
        addresses: ``host:port`` strings, or one string of them separated by commas. Hosts are
            IPv4 or bracketed IPv6 literals (one family) or ``localhost`` (as ``127.0.0.1``).

    Returns:
        An ``ipv4:``/``ipv6:`` target; or, for one address with a host name, that address as is
        (resolved by DNS).

    Raises:
        ValueError: no address, a malformed one, mixed families, or several host names.
    """
    if isinstance(addresses, str):
        addresses = addresses.split(",")
    items = [a.strip() for a in addresses if a.strip()]
    if not items:
        raise ValueError("no node address given")
    v4: list[str] = []
    v6: list[str] = []
    for address in items:
        host, port = _split_address(address)
        if host.lower() == "localhost":
            host = "127.0.0.1"
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if len(items) == 1:
                return address
            raise ValueError(
                f"address {address!r}: with several addresses every host must be an IP literal "
                "or 'localhost'") from None
        if ip.version == 4:
            v4.append(f"{ip}:{port}")
        else:
            v6.append(f"[{ip}]:{port}")
    if v4 and v6:
        raise ValueError("addresses mix IPv4 and IPv6; use one family")
    return "ipv4:" + ",".join(v4) if v4 else "ipv6:" + ",".join(v6)


def service_config() -> dict[str, Any]:
    """Return the channel's service config: round-robin, and retries for the safe methods only."""
    return {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": s, "method": m} for s, m in RETRYABLE_METHODS],
                "retryPolicy": dict(RETRY_POLICY),
            }
        ],
    }


RECONNECT_BACKOFF_MS = (100, 1000)
# An interactive transaction the helper begins lives at most this long (BeginRequest's
# lifetime_ms): a lost Commit or a dead client holds its locks about twice the default lock
# timeout at worst, instead of the node's idle timeout (30 s) after its last call.
DEFAULT_TXN_LIFETIME_S = 20.0
"""(first, longest) wait before reconnecting to a node that went away. gRPC's default grows to
two minutes, which would keep a restarted node idle long after it serves again."""


def channel_options() -> list[tuple[str, Any]]:
    """Return the channel options: round-robin, retries on, :func:`service_config`, a
    short reconnect backoff (:data:`RECONNECT_BACKOFF_MS`) and connections of its own."""
    first, longest = RECONNECT_BACKOFF_MS
    return [
        ("grpc.lb_policy_name", "round_robin"),
        # Connections of its own: gRPC's process-wide pool would hand a new client a connection
        # to the same address still backing off from an earlier failure (a node that was there
        # before), and its first call would fail at once.
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(service_config())),
        ("grpc.initial_reconnect_backoff_ms", first),
        ("grpc.min_reconnect_backoff_ms", first),
        ("grpc.max_reconnect_backoff_ms", longest),
    ]


# --- client -------------------------------------------------------------------------------------


class Client:
    """A connection to a Shardless cluster: one channel, every service, Python values.

    Every call passes ``timeout=timeout_s`` and raises ``grpc.RpcError`` on failure (not
    wrapped). Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, addresses: str | Sequence[str], *, timeout_s: float = 10.0,
                 attempts: int = 8, idempotent_writes: bool = True,
                 refresh_s: float | None = 2.0,
                 txn_lifetime_s: float | None = DEFAULT_TXN_LIFETIME_S,
                 credentials: Credentials | None = None) -> None:
        """Open the channel (lazily: nothing connects until the first call).

        Args:
            addresses: Node addresses; see :func:`channel_target`.
            timeout_s: Deadline of each call, in seconds (a whole scan for :meth:`scan`).
            attempts: How many times a write or transaction is tried in all.
            idempotent_writes: Give each write an idempotency key, so that it may be retried.
            refresh_s: How often to refresh the member list (None: never; keep ``addresses``).
            txn_lifetime_s: The longest an interactive transaction begun here may live: the
                node rolls it back after that (ABORTED ``EXPIRED``), so that one whose client
                died or whose Commit was lost frees its locks that soon (None: no bound but the
                node's idle timeout).
            credentials: TLS and a token (:class:`shardless.credentials.Credentials`); None:
                from the environment (``SHARDLESS_CERTS_DIR``, ``SHARDLESS_TOKEN``; none set:
                plaintext, anonymous).

        Raises:
            ValueError: bad addresses or a non-positive timeout.
        """
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
        self.timeout_s = timeout_s
        self.txn_lifetime_s = txn_lifetime_s
        self.attempts = max(1, attempts)
        self.idempotent_writes = idempotent_writes
        self.credentials = Credentials.from_env() if credentials is None else credentials
        self._old_channels: list[grpc.Channel] = []
        self._node_channels: dict[str, grpc.Channel] = {}
        self._use(addresses)
        self._closed = threading.Event()
        if refresh_s:
            threading.Thread(target=self._refresh_loop, args=(refresh_s,), daemon=True,
                             name="shardless-members").start()

    def _use(self, addresses: str | Sequence[str]) -> None:
        """Point the client at these addresses (a new channel; calls in flight finish)."""
        chosen = sorted(addresses.split(",") if isinstance(addresses, str) else addresses)
        target = channel_target(chosen)  # first: a refused list changes nothing
        channel = open_channel(target, self.credentials, channel_options())
        self.addresses, self.target = chosen, target
        old = getattr(self, "_channel", None)
        self._channel = channel
        self._tables = api_grpc.TableServiceStub(channel)
        self._rows = api_grpc.RowServiceStub(channel)
        self._txns = api_grpc.TransactionServiceStub(channel)
        self._cluster = api_grpc.ClusterServiceStub(channel)
        self._changes = api_grpc.ChangeServiceStub(channel)
        if old is not None:
            self._old_channels.append(old)

    def _refresh_loop(self, every_s: float) -> None:
        refused: list[str] = []
        while not self._closed.wait(every_s):
            try:
                members = sorted(m.address for m in self.status().members)
            except (grpc.RpcError, ValueError):
                continue
            if members and members != self.addresses and members != refused:
                # Nothing but close() may end this thread (the client would stop learning
                # of new members): a list it cannot use (say, several host names, which one
                # gRPC target cannot name) is logged once and the current one kept.
                try:
                    self._use(members)
                except Exception as e:
                    refused = members
                    _log.warning("shardless client: keeping %s; cannot use the members' "
                                 "addresses %s: %s", self.addresses, members, e)

    # --- retries ---

    _RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED,
                  grpc.StatusCode.DEADLINE_EXCEEDED)

    def _backoff(self, attempt: int) -> None:
        time.sleep(min(1.0, 0.05 * 2 ** attempt) * (0.5 + random.random()))

    def _send(self, stub_method: str, service: str, request: Any) -> Any:
        """Send a write, with an idempotency key and retries (see the module docstring)."""
        if self.idempotent_writes and not request.idempotency_key:
            request.idempotency_key = uuid.uuid4().hex
        tries = self.attempts if request.idempotency_key else 1
        not_applied = True
        for attempt in range(tries):
            stub = getattr(self, service)
            try:
                return getattr(stub, stub_method)(request, timeout=self.timeout_s)
            except grpc.RpcError as e:
                not_applied = not_applied and _node_said_not_applied(e)
                if attempt + 1 >= tries or e.code() not in self._RETRYABLE:
                    raise _mark(e, not_applied) from None
            self._backoff(attempt)
        raise AssertionError("unreachable")

    def run_transaction(self, fn: Callable[[Transaction], Any], *, read_only: bool = False,
                        idempotency_key: str = "") -> Any:
        """Run ``fn(txn)`` in an interactive transaction and commit; re-run it on ABORTED or
        UNAVAILABLE (any node), up to ``attempts`` times, with backoff.

        Every attempt commits with the same idempotency key (``idempotency_key``, or a new
        random one), so if an attempt's commit reply was lost, a later attempt returns without
        applying anything twice. ``fn`` must only talk to the database through ``txn`` (it may
        run several times). Give your own key to make an operation exactly-once across calls
        of this method too (e.g. a request id your caller may send twice).

        Returns:
            What ``fn`` returned in the attempt that committed: when a commit reply was lost and
            a later attempt finds the key committed, the result of the attempt whose commit it
            was, not the later one's.
        """
        key = idempotency_key or uuid.uuid4().hex
        results: dict[str, Any] = {}
        maybe_applied = False  # some attempt's Commit failed without proof it changed nothing
        for attempt in range(self.attempts):
            txn: Transaction | None = None
            committing = False
            try:
                txn = self.begin(read_only=read_only)
                result = results[txn.id] = fn(txn)
                committing = True
                txn.commit(idempotency_key="" if read_only else key)
                return results.get(txn.committed_by, result)
            except grpc.RpcError as e:
                if committing and not read_only and not _node_said_not_applied(e):
                    maybe_applied = True
                if txn is not None and not txn.done:
                    try:
                        txn.rollback()
                    except grpc.RpcError:
                        pass
                if attempt + 1 >= self.attempts or e.code() not in self._RETRYABLE:
                    raise _mark(e, not maybe_applied) from None
            except BaseException:
                if txn is not None and not txn.done:
                    try:
                        txn.rollback()
                    except grpc.RpcError:
                        pass
                raise
            self._backoff(attempt)
        raise AssertionError("unreachable")

    def _node_channel(self, address: str) -> grpc.Channel:
        """A channel to one node (interactive transactions are bound to their node)."""
        ch = self._node_channels.get(address)
        if ch is None:
            first, longest = RECONNECT_BACKOFF_MS
            ch = self._node_channels[address] = open_channel(
                address, self.credentials, [("grpc.use_local_subchannel_pool", 1),
                                            ("grpc.max_receive_message_length", 64 << 20),
                                            ("grpc.max_send_message_length", 64 << 20),
                                            ("grpc.initial_reconnect_backoff_ms", first),
                                            ("grpc.min_reconnect_backoff_ms", first),
                                            ("grpc.max_reconnect_backoff_ms", longest)])
        return ch

    def begin(self, read_only: bool = False) -> Transaction:
        """Begin an interactive transaction on some node; its calls then go to that node.

        Use it as a context manager (commit on a clean exit, rollback on an exception) or call
        :meth:`Transaction.commit` / :meth:`Transaction.rollback`.
        """
        lifetime_ms = round(self.txn_lifetime_s * 1000) if self.txn_lifetime_s else 0
        resp = self._txns.Begin(api.BeginRequest(read_only=read_only, lifetime_ms=lifetime_ms),
                                timeout=self.timeout_s)
        return Transaction(self, resp)

    @property
    def channel(self) -> grpc.Channel:
        """The underlying channel, for calling the generated stubs directly."""
        return self._channel

    def close(self) -> None:
        """Close the channels; calls in flight are cancelled."""
        self._closed.set()
        self._channel.close()
        for ch in [*self._node_channels.values(), *self._old_channels]:
            ch.close()
        self._node_channels.clear()
        self._old_channels.clear()

    def __enter__(self) -> Client:
        """Return self."""
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Close the channel."""
        self.close()

    # --- tables ---

    def create_table(self, name: str,
                     columns: Mapping[str, str] | Sequence[tuple[str, str]],
                     primary_key: Sequence[str] | str, *, not_null: Iterable[str] = (),
                     if_not_exists: bool = False) -> pb.TableSchema:
        """Create a table.

        Args:
            name: Table name.
            columns: Column name -> type name, as a mapping or (name, type) pairs, in column
                order. Types: ``bool``, ``int64``, ``double``, ``string``, ``bytes`` (also
                ``int``, ``float``, ``str``).
            primary_key: The key column, or the key columns in key order.
            not_null: Other columns that reject NULL (key columns always do).
            if_not_exists: Succeed without change when the table exists.

        Returns:
            The table's schema as the node stored it (the existing one with ``if_not_exists``).

        Raises:
            ValueError: an unknown type, or a ``not_null`` name that is not a column.
            grpc.RpcError: e.g. ALREADY_EXISTS, INVALID_ARGUMENT.
        """
        pairs = list(columns.items()) if isinstance(columns, Mapping) else list(columns)
        required = set(not_null)
        unknown = required - {c for c, _ in pairs}
        if unknown:
            raise ValueError(f"not_null names unknown columns: {sorted(unknown)}")
        schema = pb.TableSchema(
            name=name,
            columns=[pb.Column(name=c, type=column_type(t), not_null=c in required)
                     for c, t in pairs],
            primary_key=[primary_key] if isinstance(primary_key, str) else list(primary_key),
        )
        request = api.CreateTableRequest(schema=schema, if_not_exists=if_not_exists)
        return self._tables.CreateTable(request, timeout=self.timeout_s).schema

    def drop_table(self, name: str, if_exists: bool = False) -> bool:
        """Drop a table and its rows; return whether a table was dropped.

        Raises:
            grpc.RpcError: NOT_FOUND when the table is missing and not ``if_exists``.
        """
        request = api.DropTableRequest(name=name, if_exists=if_exists)
        return self._tables.DropTable(request, timeout=self.timeout_s).dropped

    def list_tables(self) -> list[str]:
        """Return the names of all tables."""
        response = self._tables.ListTables(api.ListTablesRequest(), timeout=self.timeout_s)
        return [t.name for t in response.tables]

    def describe_table(self, name: str) -> api.DescribeTableResponse:
        """Return a table's ``schema`` and ``row_count`` (the response message).

        Raises:
            grpc.RpcError: NOT_FOUND when there is no such table.
        """
        request = api.DescribeTableRequest(name=name)
        return self._tables.DescribeTable(request, timeout=self.timeout_s)

    # --- reads ---

    def get(self, table: str, key: KeyLike, columns: Iterable[str] | None = None
            ) -> Record | None:
        """Read one row by primary key.

        Args:
            table: Table name.
            key: The primary key (see :func:`to_key`).
            columns: Only these columns (all when ``None``).

        Returns:
            The row, or ``None`` if there is none.
        """
        request = api.GetRequest(table=table, key=to_key(key), columns=list(columns or ()))
        return _result(self._rows.Get(request, timeout=self.timeout_s))

    def batch_get(self, table: str, keys: Iterable[KeyLike],
                  columns: Iterable[str] | None = None) -> list[Record | None]:
        """Read several rows from one snapshot; one entry per key, ``None`` where absent.

        Raises:
            TypeError: ``keys`` is a single scalar rather than a list of keys.
        """
        request = api.BatchGetRequest(table=table, keys=_keys(keys), columns=list(columns or ()),
                                      packed=True)
        return _batch_results(self._rows.BatchGet(request, timeout=self.timeout_s))

    def scan(self, table: str, start: KeyLike = None, end: KeyLike = None, *,
             start_exclusive: bool = False, end_exclusive: bool = False, limit: int = 0,
             reverse: bool = False, filters: Iterable[FilterLike] = (),
             columns: Iterable[str] | None = None, timeout_s: float | None = None
             ) -> Iterator[Record]:
        """Yield rows in primary-key order (or reverse) between two bounds.

        The call starts on the first ``next()``; leaving the loop early cancels it.

        Args:
            table: Table name.
            start: Lower key or key prefix (``None``: unbounded); inclusive unless
                ``start_exclusive``.
            end: Upper key or key prefix (``None``: unbounded); an inclusive prefix includes
                every key that starts with it.
            start_exclusive: Exclude ``start``.
            end_exclusive: Exclude ``end``.
            limit: At most this many rows after filtering (0: no limit).
            reverse: Descending key order.
            filters: All must hold; see :func:`to_filter`, e.g. ``("age", ">=", 30)``.
            columns: Only these columns (all when ``None``).
            timeout_s: Deadline of the whole scan (default: the client's ``timeout_s``).

        Yields:
            Each row as a :class:`Record`.

        Raises:
            grpc.RpcError: from the stream. NB: the channel retries UNAVAILABLE only until the
                first rows arrive; a stream broken later raises, and the caller may resume from
                the last key with ``start_exclusive=True``.
        """
        request = api.ScanRequest(
            table=table,
            limit=limit,
            reverse=reverse,
            filters=[to_filter(f) for f in filters],
            columns=list(columns or ()),
            packed=True,
        )
        if start is not None:
            request.start.CopyFrom(pb.Bound(key=to_key(start), exclusive=start_exclusive))
        if end is not None:
            request.end.CopyFrom(pb.Bound(key=to_key(end), exclusive=end_exclusive))
        return self._scan(request, self.timeout_s if timeout_s is None else timeout_s)

    def watch(self, table: str, start: KeyLike = None, end: KeyLike = None, *,
              position: int = 0, index: int = 0, from_now: bool = False,
              hold: str = "", hold_ttl_s: float = 60.0, max_changes: int = 0
              ) -> Watch:
        """The committed changes of ``table`` (or of a key range, bounds as :meth:`scan`'s,
        inclusive), in commit order, then new ones as they commit: an iterator that never ends
        by itself (call :meth:`Watch.close`, or leave a ``with`` block).

        It resumes by itself after a node's death or a broken stream, on any node, from the
        place after the last change it gave (``Watch.place``): every change comes once, in
        order. With ``hold``, it keeps the commit log from its place on for ``hold_ttl_s``
        and renews that every third of it (from a thread), so that a consumer that falls behind
        or reconnects finds its changes still there; a consumer that dies stops holding when
        the TTL runs out. Start from ``(position, index)`` (0: the oldest held) or
        ``from_now``.

        Yields:
            :class:`ChangeEvent`.

        Raises:
            grpc.RpcError: OUT_OF_RANGE when the place is older than the log holds (its message
                names the oldest position); NOT_FOUND for an unknown table; what is not worth
                retrying.
        """
        if from_now:  # now, not when the first change is asked for
            now = self._cluster.Status(api.StatusRequest(local_only=True),
                                       timeout=self.timeout_s).commit_position
            position, index = now + 1, 0
        request = api.WatchRequest(table=table, start_position=position, start_index=index,
                                   max_changes=max_changes)
        if start is not None:
            request.start.CopyFrom(pb.Bound(key=to_key(start)))
        if end is not None:
            request.end.CopyFrom(pb.Bound(key=to_key(end)))
        return Watch(self, request, hold=hold, hold_ttl_s=hold_ttl_s)

    def _scan(self, request: api.ScanRequest, timeout_s: float) -> Iterator[Record]:
        call = self._rows.Scan(request, timeout=timeout_s)
        try:
            for response in call:
                yield from _scan_rows(response)  # type: ignore[misc]
        finally:
            call.cancel()  # no-op once the stream has ended

    # --- writes (never retried by the channel; see the module docstring) ---

    def insert(self, table: str,
               rows: Mapping[str, Scalar] | Iterable[Mapping[str, Scalar]], *,
               idempotency_key: str = "") -> int:
        """Insert one row (a dict) or several (a list of dicts) atomically.

        Returns:
            The commit position, which is the new version of every row written.

        Raises:
            grpc.RpcError: ALREADY_EXISTS if any row exists (nothing is written).
        """
        request = _rows_request(table, rows, idempotency_key=idempotency_key)
        return self._send("Insert", "_rows", request).commit_position

    def upsert(self, table: str,
               rows: Mapping[str, Scalar] | Iterable[Mapping[str, Scalar]], *,
               idempotency_key: str = "") -> int:
        """Insert or wholly replace one row or several, atomically; return the commit position."""
        request = _rows_request(table, rows, idempotency_key=idempotency_key)
        return self._send("Upsert", "_rows", request).commit_position

    def update(self, table: str,
               rows: Mapping[str, Scalar] | Iterable[Mapping[str, Scalar]], *,
               idempotency_key: str = "") -> int:
        """Change the given columns of existing rows, atomically; return the commit position.

        Each row holds its primary-key columns plus the columns to change (``None``: set NULL).

        Raises:
            grpc.RpcError: NOT_FOUND if any row is missing (nothing is written).
        """
        request = api.WriteRowsRequest(table=table, rows=_rows(rows),
                                       idempotency_key=idempotency_key)
        return self._send("Update", "_rows", request).commit_position

    def delete(self, table: str, keys: Iterable[KeyLike], *, idempotency_key: str = "") -> int:
        """Delete the rows with these keys (missing ones are skipped); return the commit position.

        Raises:
            TypeError: ``keys`` is a single scalar rather than a list of keys.
        """
        request = api.DeleteRequest(table=table, keys=_keys(keys),
                                    idempotency_key=idempotency_key)
        return self._send("Delete", "_rows", request).commit_position

    def write(self, mutations: Iterable[pb.Mutation], *, idempotency_key: str = "") -> int:
        """Apply mixed, possibly conditional, mutations atomically; return the commit position.

        Args:
            mutations: ``Mutation`` messages, e.g. from :class:`Mutation`.

        Raises:
            grpc.RpcError: FAILED_PRECONDITION if an expected version did not hold.
        """
        request = api.WriteRequest(mutations=list(mutations), idempotency_key=idempotency_key)
        return self._send("Write", "_rows", request).commit_position

    def execute(self, conditions: Iterable[pb.Condition] = (),
                reads: Iterable[api.ReadOp | tuple[Any, ...]] = (),
                writes: Iterable[pb.Mutation] = (), *,
                idempotency_key: str = "") -> ExecuteResult:
        """Run a one-shot transaction: check conditions, read, then write, atomically.

        Args:
            conditions: ``Condition`` messages, e.g. from :class:`Condition`.
            reads: ``(table, key)`` or ``(table, key, columns)`` tuples, or ``ReadOp`` messages;
                they see the state before this transaction's writes.
            writes: ``Mutation`` messages, e.g. from :class:`Mutation`.

        Returns:
            The reads, commit position and rows affected.

        Raises:
            grpc.RpcError: FAILED_PRECONDITION naming the first failed condition.
        """
        request = api.ExecuteRequest(conditions=list(conditions),
                                     reads=[_to_read(r) for r in reads], writes=list(writes),
                                     idempotency_key=idempotency_key)
        response = self._send("Execute", "_txns", request)
        return ExecuteResult(reads=[_result(r) for r in response.reads],
                             commit_position=response.commit_position,
                             rows_affected=response.rows_affected)

    # --- cluster ---

    def status(self) -> api.StatusResponse:
        """Return the answering node's view of the cluster (members, leader, commit position)."""
        return self._cluster.Status(api.StatusRequest(), timeout=self.timeout_s)


_NOT_APPLIED_ATTR = "_shardless_not_applied"
_REFUSED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED)


def _node_said_not_applied(error: grpc.RpcError) -> bool:
    """Whether this one call's error proves it changed nothing: a node refused it (a bad or
    conflicting request, a full volume, an abort) or said UNAVAILABLE with reason NOT_APPLIED.
    A transport failure or a deadline proves nothing (the commit may have happened)."""
    code = error.code()
    if code in _REFUSED:
        return True
    return code == grpc.StatusCode.UNAVAILABLE and abort_reason(error) == "NOT_APPLIED"


def certainly_not_applied(error: grpc.RpcError) -> bool:
    """Whether a write, or a transaction of :meth:`Client.run_transaction`, that raised
    ``error`` certainly changed nothing, counting every attempt the helper made. False means
    unknown: it may have been applied (its reply was lost); retry with the same idempotency key
    to find out without applying it twice."""
    flag = getattr(error, _NOT_APPLIED_ATTR, None)
    return bool(flag) if flag is not None else _node_said_not_applied(error)


def _mark(error: grpc.RpcError, not_applied: bool) -> grpc.RpcError:
    try:
        setattr(error, _NOT_APPLIED_ATTR, not_applied)
    except AttributeError:
        pass
    return error


def abort_reason(error: grpc.RpcError) -> str | None:
    """The reason an error carries in its ErrorInfo detail, or None: for ABORTED, DEADLOCK,
    LOCK_TIMEOUT, FENCED, NODE_RESTARTED, IDLE_TIMEOUT, SESSION_LOST, NODE_DRAINING,
    TABLE_CHANGED; for UNAVAILABLE, NOT_APPLIED; for FAILED_PRECONDITION, CONDITION_FAILED,
    WRONG_NODE, READ_ONLY, KEY_ABANDONED; for RESOURCE_EXHAUSTED, LIMIT, READERS_FULL,
    VOLUME_FULL (docs/api.md, "Errors"). ``error_reason`` is the same function."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return None


error_reason = abort_reason


class Transaction:
    """An interactive transaction, bound to the node that began it.

    Reads and writes see the transaction's own writes; in a read-write transaction every read
    locks what it reads (``for_update`` locks exclusively), so the transaction is serializable.
    Writes return the rows affected; the commit position comes with :meth:`commit`. A call may
    raise ABORTED (see :func:`abort_reason`): the transaction is then over; retry all of it.
    """

    def __init__(self, client: Client, begun: api.BeginResponse) -> None:
        self.id = begun.transaction_id
        self.node_id = begun.node_id
        self.address = begun.address
        self._timeout_s = client.timeout_s
        ch = client._node_channel(begun.address)
        self._rows = api_grpc.RowServiceStub(ch)
        self._txns = api_grpc.TransactionServiceStub(ch)
        self._used = False
        self.done = False
        self.replayed = False
        """Whether :meth:`commit` found its idempotency key already committed."""
        self.committed_by = ""
        """After :meth:`commit`: the id of the transaction whose commit applied the key."""

    def _opts(self) -> dict[str, Any]:
        """Call options: the first call waits for the node's connection (its Begin was just
        answered through the shared channel, so the node is up, but this channel may still be
        in its reconnect backoff from an earlier death of the node); later ones fail fast."""
        first, self._used = not self._used, True
        return {"timeout": self._timeout_s, "wait_for_ready": True if first else None}

    def __enter__(self) -> Transaction:
        """Return self."""
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Commit on a clean exit; roll back (ignoring errors) on an exception."""
        if self.done:
            return
        if exc_type is None:
            self.commit()
        else:
            try:
                self.rollback()
            except grpc.RpcError:
                pass

    def get(self, table: str, key: KeyLike, columns: Iterable[str] | None = None, *,
            for_update: bool = False) -> Record | None:
        """Read one row (locking it: shared, or exclusive with ``for_update``)."""
        request = api.GetRequest(table=table, key=to_key(key), columns=list(columns or ()),
                                 transaction_id=self.id, for_update=for_update)
        return _result(self._rows.Get(request, **self._opts()))

    def batch_get(self, table: str, keys: Iterable[KeyLike],
                  columns: Iterable[str] | None = None, *, for_update: bool = False
                  ) -> list[Record | None]:
        """Read several rows, locking each."""
        request = api.BatchGetRequest(table=table, keys=_keys(keys),
                                      columns=list(columns or ()), transaction_id=self.id,
                                      for_update=for_update, packed=True)
        return _batch_results(self._rows.BatchGet(request, **self._opts()))

    def scan(self, table: str, start: KeyLike = None, end: KeyLike = None, *,
             start_exclusive: bool = False, end_exclusive: bool = False, limit: int = 0,
             reverse: bool = False, filters: Iterable[FilterLike] = (),
             columns: Iterable[str] | None = None, for_update: bool = False) -> list[Record]:
        """Rows of a range, locking the pages it covers (no phantoms); see :meth:`Client.scan`.
        """
        request = api.ScanRequest(table=table, limit=limit, reverse=reverse,
                                  filters=[to_filter(f) for f in filters],
                                  columns=list(columns or ()), transaction_id=self.id,
                                  for_update=for_update, packed=True)
        if start is not None:
            request.start.CopyFrom(pb.Bound(key=to_key(start), exclusive=start_exclusive))
        if end is not None:
            request.end.CopyFrom(pb.Bound(key=to_key(end), exclusive=end_exclusive))
        return [r for resp in self._rows.Scan(request, **self._opts())  # type: ignore[misc]
                for r in _scan_rows(resp)]

    def insert(self, table: str,
               rows: Mapping[str, Scalar] | Iterable[Mapping[str, Scalar]]) -> int:
        """Insert rows (ALREADY_EXISTS if one exists); return the rows affected."""
        request = _rows_request(table, rows, transaction_id=self.id)
        return self._rows.Insert(request, **self._opts()).rows_affected

    def upsert(self, table: str,
               rows: Mapping[str, Scalar] | Iterable[Mapping[str, Scalar]]) -> int:
        """Insert or replace rows; return the rows affected."""
        request = _rows_request(table, rows, transaction_id=self.id)
        return self._rows.Upsert(request, **self._opts()).rows_affected

    def update(self, table: str,
               rows: Mapping[str, Scalar] | Iterable[Mapping[str, Scalar]]) -> int:
        """Change columns of existing rows (NOT_FOUND if one is missing)."""
        request = api.WriteRowsRequest(table=table, rows=_rows(rows), transaction_id=self.id)
        return self._rows.Update(request, **self._opts()).rows_affected

    def delete(self, table: str, keys: Iterable[KeyLike]) -> int:
        """Delete rows by key; return how many existed."""
        request = api.DeleteRequest(table=table, keys=_keys(keys), transaction_id=self.id)
        return self._rows.Delete(request, **self._opts()).rows_affected

    def write(self, mutations: Iterable[pb.Mutation]) -> int:
        """Apply mixed, possibly conditional, mutations; return the rows affected."""
        request = api.WriteRequest(mutations=list(mutations), transaction_id=self.id)
        return self._rows.Write(request, **self._opts()).rows_affected

    def commit(self, idempotency_key: str = "") -> int:
        """Commit durably; return the commit position (0 if nothing was written).

        With ``idempotency_key``, a retry of the whole transaction after a lost reply (on any
        node, same key) commits at most once and returns the first position.
        """
        self.done = True
        resp = self._txns.Commit(api.CommitRequest(transaction_id=self.id,
                                                   idempotency_key=idempotency_key),
                                 **self._opts())
        self.replayed = resp.replayed
        self.committed_by = resp.committed_transaction_id or self.id
        return resp.commit_position

    def rollback(self) -> None:
        """Discard the writes and release the locks."""
        self.done = True
        self._txns.Rollback(api.RollbackRequest(transaction_id=self.id),
                            **self._opts())


_CHANGE_KINDS = {api_pb_change.PUT: "put", api_pb_change.DELETE: "delete",
                 api_pb_change.CREATE_TABLE: "create_table",
                 api_pb_change.DROP_TABLE: "drop_table"}


@dataclass(frozen=True)
class ChangeEvent:
    """One committed change: ``kind`` is ``put`` (``row`` the new row), ``delete``,
    ``create_table`` or ``drop_table``; ``(position, index)`` is its place in the log."""

    position: int
    index: int
    kind: str
    table: str
    key: tuple[Scalar, ...]
    row: Record | None
    ts: float


class Watch:
    """The iterator :meth:`Client.watch` returns; see there. ``place`` is where it would
    resume: the place after the last change it gave, or after the last position a message
    said was complete."""

    RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                 grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
                 grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                 grpc.StatusCode.RESOURCE_EXHAUSTED)

    def __init__(self, client: Client, request: api.WatchRequest, *, hold: str,
                 hold_ttl_s: float) -> None:
        self._client, self._request = client, request
        self.place = (request.start_position, request.start_index)
        self.hold, self._hold_ttl_s = hold, hold_ttl_s
        self.reconnects = 0
        self._call: Any = None
        self._closed = threading.Event()
        self._iter = self._run()
        if hold:
            self._renew()  # before the first message: nothing may go meanwhile
            threading.Thread(target=self._hold_loop, daemon=True, name="shardless-hold").start()

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> ChangeEvent:
        return next(self._iter)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, release: bool = False) -> None:
        """End the stream (and, with ``release``, give up the hold)."""
        self._closed.set()
        if self._call is not None:
            self._call.cancel()
        if release and self.hold:
            self._client._changes.Release(api.ReleaseRequest(name=self.hold),
                                          timeout=self._client.timeout_s)

    def _renew(self) -> None:
        self._client._changes.Hold(api.HoldRequest(name=self.hold, position=self.place[0],
                                                   ttl_seconds=self._hold_ttl_s),
                                   timeout=self._client.timeout_s)

    def _hold_loop(self) -> None:
        while not self._closed.wait(self._hold_ttl_s / 3):
            try:
                self._renew()
            except grpc.RpcError:
                continue  # again soon; the TTL leaves two more tries

    def _run(self) -> Iterator[ChangeEvent]:
        attempt = 0
        while not self._closed.is_set():
            request = api.WatchRequest()
            request.CopyFrom(self._request)
            request.start_position, request.start_index = self.place
            self._call = self._client._changes.Watch(request)
            try:
                for response in self._call:
                    attempt = 0
                    for c in response.changes:
                        self.place = (c.position, c.index + 1)
                        yield ChangeEvent(c.position, c.index, _CHANGE_KINDS.get(c.kind, "?"),
                                          c.table, from_key(c.key),
                                          from_row(c.row) if c.HasField("row") else None, c.ts)
                    if response.position and (response.position + 1, 0) > self.place:
                        self.place = (response.position + 1, 0)
            except grpc.RpcError as e:
                if self._closed.is_set():
                    return
                if e.code() not in self.RETRYABLE or attempt >= 50:
                    raise
                self.reconnects += 1
                attempt += 1
                time.sleep(min(1.0, 0.05 * 2 ** min(attempt, 5)) * (0.5 + random.random()))


def connect(addresses: str | Sequence[str], *, timeout_s: float = 10.0, **options: Any
            ) -> Client:
    """Return a :class:`Client` over these node addresses; see :func:`channel_target` and
    :class:`Client` for the options."""
    return Client(addresses, timeout_s=timeout_s, **options)
