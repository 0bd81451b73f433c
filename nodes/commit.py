"""Writes: what each kind of write means, and group commit.

Owns: the domain form of writes, conditions and reads (``Write``, ``Check``, ``Read``); the one
way a write is checked and buffered (``Staging``, used by one-shot requests and interactive
transactions alike) and the one check that the committing session is not fenced
(``SessionCheck``); planning a request against the current state (all checks, no side effect);
and the ``GroupCommitter``, which runs the plans of requests that arrive together in one LMDB
write transaction with one sync, and checks, inside that transaction, whether each one-shot
request that holds no locks may go ahead (``lockmgr/DESIGN.md``, "One-shot
writes without lock entries"). Does not own: taking locks (``txn.py``, ``lockmgr``) or the API's
messages (``convert.py``).

Invariants:

* Plan, then apply. A request's ``plan`` reads and checks everything and raises a ``storage``
  error before it changes anything; only a plan that succeeded is applied. So one bad request in
  a group never leaves a partial write, and the others in its group are unaffected.
* A request is acknowledged only after the write transaction holding it has committed (durably:
  the environment syncs on commit). If that commit fails, every request of the group fails and
  none of them was applied. A request refused by its plan is told so only after the commit too:
  its plan saw the writes of the requests before it in the batch, which a failed commit undoes
  (then it gets the commit's error instead, having seen a state that never existed).
* Each request that writes gets its own commit-log position; it is the new version of every row
  it wrote. Positions follow the order of the write transactions.
* A request that holds no locks (``lock_free`` set) is planned only if the lock-free check,
  run in the write transaction that will commit it, finds no published grant in its way;
  otherwise it fails with ``NeedsLocks`` having changed nothing, and its caller takes the locks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from lockmgr import LockMode, Resource
from nodes import faultpoints
from storage import (
    AlreadyExists,
    Change,
    Column,
    ConditionFailed,
    InvalidInput,
    NotFound,
    ReadView,
    Schema,
    StorageError,
    Store,
    Value,
    WriteView,
)
from storage.catalog import check_value
from storage.pages import page_of
from storage.rows import encode_values

log = logging.getLogger(__name__)

INSERT, UPSERT, UPDATE, DELETE = "insert", "upsert", "update", "delete"
MAX_OPS_PER_REQUEST = 100_000
# How often a follower of the log (a change stream, a replica's ReadLog) looks at the volume's
# version for other nodes' commits (this node's own commits wake it at once: ``wait_new``).
CHANGE_POLL_S = 0.002


class Unavailable(Exception):
    """This node cannot take the request now (shutting down): retry on another node."""


class NoValidSession(Unavailable):
    """This node's session is not valid right now: it commits nothing that does not carry a
    session check of its own (those are refused by that check, ABORTED)."""


class CommitTimeout(Exception):
    """The commit did not finish before the caller's deadline; it may still have been applied."""


class AckWithheld(Unavailable):
    """The commit is durable on this node's volume, but by the time it could be answered the
    node's session had ended (a freeze past the lease, or etcd unreachable) or its volume was
    superseded: it may not acknowledge it (``nodes/epoch.py``), so the outcome is unknown to the
    client. Retry with the same idempotency key (on any node of the primary)."""

    applied_unknown = True


class NeedsLocks(Exception):
    """A request without locks met a lock in its way (or the probe could not tell); nothing
    was applied: take its locks and submit it again."""


class KeyReused(InvalidInput):
    """An idempotency key came back with a different request than the one it was first used
    for (INVALID_ARGUMENT): nothing was applied; a new request needs a new key."""


class KeyAbandoned(ConditionFailed):
    """The idempotency key was settled as abandoned (``GetOutcome`` with ``settle``) before
    this write arrived: it is refused, nothing applied (FAILED_PRECONDITION)."""


# The refusals decided by the data, which an idempotency key remembers (a retry gets the same
# answer back, and GetOutcome reports it): by the status code name each maps to.
REMEMBERED_FAILURES: dict[str, type[StorageError]] = {
    "FAILED_PRECONDITION": ConditionFailed, "ALREADY_EXISTS": AlreadyExists,
    "NOT_FOUND": NotFound}
ABANDONED = "ABANDONED"


def failure_record(e: Exception, fingerprint: str) -> dict[str, Any] | None:
    """What an idempotency record stores of a refusal decided by the data, or None if ``e``
    is not one (or is itself a replayed one)."""
    if getattr(e, "replayed", False):
        return None
    for code, cls in REMEMBERED_FAILURES.items():
        if type(e) is cls:
            return {"failed": code, "msg": str(e), "fp": fingerprint}
    return None


class TableChanged(Exception):
    """The table a request locked was dropped (and maybe re-created) before it committed;
    nothing was applied: retry the whole request."""


Needs = list[tuple[Resource, LockMode]]
"""Lock needs of a request, as ``lockmgr.LockManager.acquire`` takes them."""


@dataclass(frozen=True)
class Write:
    """One row write. ``row`` holds whole rows (insert, upsert), the key plus changed columns
    (update), or the key columns (delete)."""

    table: str
    kind: str
    row: dict[str, Value]
    expected_version: int | None = None
    key: tuple[Value, ...] | None = None  # a delete may name its row by key instead of row
    # An insert or upsert of a packed row (``PackedRows``): the columns (one tuple object
    # shared by the rows of a request) and the values in their order, instead of ``row``.
    packed: tuple[tuple[str, ...], list[Value]] | None = None


@dataclass(frozen=True)
class Check:
    """A condition on one row: ``exists``, ``version`` or ``column_equals``."""

    table: str
    key: tuple[Value, ...]
    kind: str
    exists: bool = False
    version: int = 0
    column: str = ""
    value: Value = None


@dataclass(frozen=True)
class Read:
    """A point read inside a transaction."""

    table: str
    key: tuple[Value, ...]
    columns: list[str] = field(default_factory=list)


ReadResult = tuple[int, dict[str, Value]] | None


@dataclass
class Outcome:
    """What a committed request returns."""

    commit_position: int = 0
    rows_affected: int = 0
    reads: list[ReadResult] = field(default_factory=list)
    value: Any = None
    replayed: bool = False  # an idempotent retry: the first result, nothing applied again
    committed_by: str = ""  # the interactive transaction whose commit this is (or replays)

    def to_record(self, fingerprint: str = "") -> dict[str, Any]:
        """What an idempotency record stores of this outcome (and of the request, its
        ``fingerprint``: a retry must be the same request)."""
        return {"pos": self.commit_position, "rows": self.rows_affected,
                "reads": [None if r is None else [r[0], r[1]] for r in self.reads],
                "txn": self.committed_by, "fp": fingerprint}

    @staticmethod
    def replay(record: dict[str, Any]) -> Outcome:
        """The outcome a retry gets back from an idempotency record."""
        return Outcome(commit_position=int(record["pos"]), rows_affected=int(record["rows"]),
                       reads=[None if r is None else (int(r[0]), dict(r[1]))
                              for r in record["reads"]], replayed=True,
                       committed_by=str(record.get("txn", "")))


Put = tuple[Schema, bytes, bytes | None]
"""A row to write: table, encoded key, and its encoded values (``rows.encode_values``; None:
delete the row). The plan's position is its version."""


@dataclass
class Plan:
    """A checked request, ready to apply: row images to put (None: delete) and log changes."""

    outcome: Outcome
    puts: list[Put] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    ddl: Callable[[WriteView], None] | None = None
    idempotency_key: str = ""  # recorded with the outcome in the same write transaction
    fingerprint: str = ""  # of the request, recorded with the key
    publish: tuple[int, list[tuple[str, str, bytes]]] | None = None  # (lease, grants)
    withdraw: list[tuple[str, str]] = field(default_factory=list)  # grants to remove

    def apply(self, view: WriteView, position: int) -> None:
        """Apply the planned changes in ``view`` at ``position``."""
        if self.ddl is not None:
            self.ddl(view)
        if self.publish is not None:
            view.publish_grants(*self.publish)
        if self.withdraw:
            view.withdraw_grants(self.withdraw)
        for schema, enc, stored in self.puts:
            if stored is None:
                view.delete(schema, enc)
            else:
                view.put_encoded(schema, enc, position, stored)


class Work(Protocol):
    """A request the group committer can run: plan against the state, at a position. Its
    class may name its ``commit_kind`` (``one_shot``, ``interactive``, ``ddl``, ``settle``,
    ``grants``), under which the committer counts it (``commits_by_kind``; "other" if none)."""

    def plan(self, view: WriteView, position: int) -> Plan: ...


class _Tables:
    """Schemas looked up once per request."""

    def __init__(self, view: ReadView) -> None:
        self._view = view
        self._cache: dict[str, Schema] = {}

    def __call__(self, name: str) -> Schema:
        s = self._cache.get(name)
        if s is None:
            s = self._cache[name] = self._view.require_table(name)
        return s

    def ids(self) -> dict[str, int]:
        """The table id of each table looked up."""
        return {name: s.table_id for name, s in self._cache.items()}


def _key_text(key: tuple[Value, ...]) -> str:
    return "(" + ", ".join(repr(v) for v in key) + ")"


def evaluate(view: ReadView, checks: list[Check], reads: list[Read]) -> list[ReadResult]:
    """Check conditions and run reads against ``view``.

    Raises:
        ConditionFailed: naming the first condition that does not hold.
        InvalidInput, NotFound: a malformed condition or read.
    """
    tables = _Tables(view)
    for i, c in enumerate(checks):
        schema = tables(c.table)
        cur = view.get(schema, schema.check_key(c.key))
        where = f"condition {i}: row {_key_text(c.key)} of table {c.table!r}"
        if c.kind == "exists":
            if (cur is not None) != c.exists:
                raise ConditionFailed(f"{where} {'does not exist' if c.exists else 'exists'}")
        elif c.kind == "version":
            have = cur[0] if cur else 0
            if have != c.version:
                raise ConditionFailed(f"{where} has version {have}, expected {c.version}")
        elif c.kind == "column_equals":
            col = schema.by_name.get(c.column)
            if col is None:
                raise InvalidInput(f"table {c.table!r} has no column {c.column!r}")
            check_value(Column(col.name, col.type), c.value)
            if cur is None:
                raise ConditionFailed(f"{where} does not exist")
            have_v = schema.as_dict(cur[1], [c.column])[c.column]
            if have_v != c.value or type(have_v) is not type(c.value):
                raise ConditionFailed(f"{where} has {c.column} = {have_v!r}, expected "
                                      f"{c.value!r}")
        else:
            raise InvalidInput(f"condition {i} has no check")
    out: list[ReadResult] = []
    for r in reads:
        schema = tables(r.table)
        schema.check_projection(r.columns)
        cur = view.get(schema, schema.check_key(r.key))
        out.append(None if cur is None else (cur[0], schema.as_dict(cur[1], r.columns)))
    return out


SKIP: Any = object()  # apply_write: the write changes nothing (a delete of a missing row)


@dataclass(slots=True)
class Prepared:
    """A write checked and encoded as far as it can be without the current row: its table,
    key and encoded key, and for an insert or upsert the whole row and its encoded values.
    Made outside the write transaction (``prepare``), so that what runs under the host's one
    writer lock is only what depends on the state."""

    index: int  # its place in the request, for messages
    write: Write
    schema: Schema
    key: tuple[Value, ...]
    enc: bytes
    values: list[Value] | None = None  # insert, upsert: the whole row, validated
    stored: bytes | None = None  # ... and ``rows.encode_values`` of it

    @property
    def slot(self) -> tuple[int, bytes]:
        """The row it writes: (table id, encoded key)."""
        return self.schema.table_id, self.enc

    def blind(self) -> bool:
        """Whether its result does not depend on the current row (an upsert, unconditional)."""
        return self.write.kind == UPSERT and self.write.expected_version is None


def prepare(tables: Callable[[str], Schema], writes: list[Write]) -> list[Prepared]:
    """Check and encode ``writes`` as far as no current row is needed (see ``Prepared``).

    Raises:
        InvalidInput, NotFound: a table is missing, or a key or row is malformed.
    """
    out = []
    layouts: dict[tuple[int, int], Any] = {}  # (table id, id of the columns tuple) -> layout
    for i, w in enumerate(writes):
        schema = tables(w.table)
        if w.packed is not None:  # the rows of a packed write: no dict, one layout
            if w.kind not in (INSERT, UPSERT):
                raise InvalidInput("packed rows are for Insert and Upsert")
            cols, vals = w.packed
            layout = layouts.get((schema.table_id, id(cols)))
            if layout is None:
                layout = layouts[(schema.table_id, id(cols))] = schema.layout(cols)
            try:
                values = schema.row_from(layout, vals)
            except InvalidInput as e:
                raise InvalidInput(f"row {i}: {e}") from e
            key = schema.key_from(values)
            pw = Prepared(i, w, schema, key, schema.check_key(key), values,
                          encode_values(values))
            out.append(pw)
            continue
        key = w.key if w.key is not None else schema.key_of(w.row)
        pw = Prepared(i, w, schema, key, schema.check_key(key))
        if w.kind in (INSERT, UPSERT):
            pw.values = schema.full_row(w.row)
            pw.stored = encode_values(pw.values)
        elif w.kind == UPDATE:
            schema.check_columns(w.row)
        elif w.kind == DELETE:
            extra = set(w.row) - set(schema.primary_key)
            if extra:
                raise InvalidInput(f"delete takes only primary-key columns; got "
                                   f"{', '.join(sorted(extra))}")
        else:
            raise InvalidInput(f"write {i} has no valid kind")
        out.append(pw)
    return out


def apply_write(pw: Prepared, cur: tuple[int, list[Value]] | None) -> list[Value] | None:
    """The row after the prepared write ``pw`` given the row's current (version, values), or
    None if it deletes the row, or ``SKIP`` if it changes nothing. Checks only; writes nothing.

    Raises:
        ConditionFailed, AlreadyExists, NotFound: the write is refused.
    """
    w = pw.write

    def where() -> str:
        return f"row {_key_text(pw.key)} of table {w.table!r}"

    if w.expected_version is not None:
        have = cur[0] if cur else 0
        if have != w.expected_version:
            raise ConditionFailed(f"write {pw.index}: {where()} has version {have}, expected "
                                  f"{w.expected_version}")
    if w.kind == UPSERT:
        return pw.values
    if w.kind == INSERT:
        if cur is not None:
            raise AlreadyExists(f"{where()} already exists")
        return pw.values
    if w.kind == UPDATE:
        if cur is None:
            raise NotFound(f"{where()} does not exist")
        new = list(cur[1])
        for ci, c in enumerate(pw.schema.columns):
            if c.name in w.row:
                new[ci] = w.row[c.name]
        return new
    return None if cur is not None else SKIP  # DELETE


def row_resource(schema: Schema, enc: bytes) -> Resource:
    """The lock resource of one row (``enc``: its encoded primary key)."""
    return Resource(str(schema.table_id), page_of(enc), enc.hex())


def table_resource(schema: Schema) -> Resource:
    """The lock resource of a whole table."""
    return Resource(str(schema.table_id))


def request_needs(prepared: list[Prepared], tables: Callable[[str], Schema],
                  checks: list[Check], reads: list[Read]) -> Needs:
    """The row locks a one-shot request needs: X to write, S to check or read.

    Raises:
        InvalidInput, NotFound: a table is missing or a key malformed.
    """
    needs: Needs = [(row_resource(pw.schema, pw.enc), LockMode.X) for pw in prepared]
    for c in [*checks, *reads]:
        schema = tables(c.table)
        needs.append((row_resource(schema, schema.check_key(c.key)), LockMode.S))
    return needs


ROW_OVERHEAD_BYTES = 256
"""What a staged write holds beside its encoded key and row (its key tuple, values list and
change record, as Python objects), counted towards a transaction's buffer limit."""


@dataclass
class Staging:
    """Writes checked and buffered in order, each against the row as the earlier ones left it.

    The one place where a write meets the current row: a one-shot request stages into a fresh
    ``Staging`` inside the write transaction; an interactive transaction keeps one for its whole
    life and stages each call into a ``child`` that it merges only when every write of the call
    passed, so a refused call changes nothing. A staged row keeps its encoded values (made by
    ``prepare`` for inserts and upserts), so that the commit only adds the version.
    """

    staged: dict[tuple[int, bytes], tuple[Schema, tuple[Value, ...], list[Value] | None,
                                          bytes | None]] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    rows_affected: int = 0
    staged_bytes: int = 0  # what the buffered writes hold in memory, about (ROW_OVERHEAD_BYTES)
    parent: Staging | None = None

    def child(self) -> Staging:
        """An empty staging that sees this one's rows (for one call's writes)."""
        return Staging(parent=self)

    def merge(self) -> None:
        """Add this child's writes to its parent."""
        assert self.parent is not None
        self.parent.staged.update(self.staged)
        self.parent.changes.extend(self.changes)
        self.parent.rows_affected += self.rows_affected
        self.parent.staged_bytes += self.staged_bytes

    def lookup(self, slot: tuple[int, bytes]) -> tuple[list[Value] | None] | None:
        """``(values or None)`` if a write of this staging (or its parent) made the row, else
        None: the stored row is current."""
        st: Staging | None = self
        while st is not None:
            got = st.staged.get(slot)
            if got is not None:
                return (got[2],)
            st = st.parent
        return None

    def stage(self, prepared: list[Prepared], view: ReadView, staged_version: int = 0) -> int:
        """Check each prepared write against the current row (``view``, under the staged
        ones; not read at all for a blind upsert) and buffer it; return the rows affected. A
        staged row counts as version ``staged_version``.

        Raises:
            ConditionFailed, AlreadyExists, NotFound, InvalidInput: a write is refused; what
                was staged before it in this call stays (use a ``child`` to drop it).
        """
        affected = 0
        for pw in prepared:
            slot = pw.slot
            mine = self.lookup(slot)
            if mine is not None:
                cur = None if mine[0] is None else (staged_version, mine[0])
            elif pw.blind():
                cur = None
            else:
                cur = view.get(pw.schema, pw.enc)
            new = apply_write(pw, cur)
            if new is SKIP:
                continue
            stored = None if new is None else (
                pw.stored if new is pw.values else encode_values(new))
            self.staged[slot] = (pw.schema, pw.key, new, stored)
            self.staged_bytes += len(pw.enc) + len(stored or b"") + ROW_OVERHEAD_BYTES
            self.changes.append(Change(pw.write.table, "put" if new is not None else "del",
                                       pw.key))
            affected += 1
        self.rows_affected += affected
        return affected

    def puts(self) -> list[Put]:
        """The rows to write, one per row: encoded values, or None to delete."""
        return [(schema, slot[1], stored) for slot, (schema, _, _, stored) in self.staged.items()]


@dataclass(frozen=True)
class SessionCheck:
    """The check every commit made under locks runs first, inside its write transaction: its
    session is not fenced (``storage/fence.py``) and not past its own deadline."""

    lease_id: int
    deadline_ok: Callable[[int], None]  # raises Fenced once the session is past its deadline

    def __call__(self, view: WriteView) -> None:
        """Refuse the commit for a fenced or expired session.

        Raises:
            Fenced: it is.
        """
        view.check_not_fenced(self.lease_id)
        self.deadline_ok(self.lease_id)


def replayed(view: ReadView, idempotency_key: str, fingerprint: str = "") -> Plan | None:
    """The plan of a retry whose key is recorded (the first outcome, nothing applied), or
    None.

    Raises:
        KeyReused: the key was first used for another request (fingerprints differ; a request
            without one, an interactive transaction's commit, is not compared).
        ConditionFailed, AlreadyExists, NotFound: the first attempt was refused so; the same
            refusal again (``replayed`` set on it).
        KeyAbandoned: the key was settled as abandoned.
    """
    if not idempotency_key:
        return None
    first = view.idempotent_result(idempotency_key)
    if first is None:
        return None
    stored_fp = first.get("fp", "")
    if fingerprint and stored_fp and stored_fp != fingerprint:
        raise KeyReused(f"idempotency key {idempotency_key!r} was first used for a different "
                        f"request; nothing was applied (give each new request a new key)")
    failed = first.get("failed")
    if failed == ABANDONED:
        e: StorageError = KeyAbandoned(f"idempotency key {idempotency_key!r} was settled as "
                                       f"abandoned before this write arrived; nothing was "
                                       f"applied")
    elif failed is not None:
        e = REMEMBERED_FAILURES.get(str(failed), ConditionFailed)(
            f"{first.get('msg', '')} (the first attempt with idempotency key "
            f"{idempotency_key!r}; nothing was applied)")
    else:
        return Plan(Outcome.replay(first))
    e.replayed = True  # type: ignore[attr-defined]
    raise e


@dataclass
class Transaction:
    """Conditions, reads and writes that commit atomically (a one-shot transaction).

    Either under locks (``session`` set: the session whose locks cover it, checked for a
    fence), or without any (``lock_free``: the committer decides, in the write transaction,
    whether it may go ahead). ``prepare_in`` does outside the write transaction whatever needs
    no current row; ``plan`` does the rest (or all of it, if nothing was prepared).
    """

    commit_kind: ClassVar[str] = "one_shot"

    writes: list[Write]
    checks: list[Check] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    session: SessionCheck | None = None
    idempotency_key: str = ""
    lock_free: bool = False
    fingerprint: str = ""  # of the request (``replayed``)
    table_ids: dict[str, int] | None = None
    prepared: list[Prepared] | None = None
    needs: Needs | None = None

    def prepare_in(self, view: ReadView) -> None:
        """Do on ``view`` (any snapshot) what needs no current row: check and encode the
        writes, name the locks, note the table ids (see ``Prepared``).

        Raises:
            InvalidInput, NotFound: the request is malformed.
        """
        n = len(self.writes) + len(self.checks) + len(self.reads)
        if n > MAX_OPS_PER_REQUEST:
            raise InvalidInput(f"request has {n} operations; the limit is {MAX_OPS_PER_REQUEST}")
        tables = _Tables(view)
        self.prepared = prepare(tables, self.writes)
        for c in [*self.checks, *self.reads]:
            tables(c.table)
        self.needs = None  # named when asked (``lock_needs``): often nobody asks
        self.table_ids = tables.ids()

    def _tables_unchanged(self, view: ReadView) -> bool:
        return self.table_ids is not None and all(
            (s := view.table(name)) is not None and s.table_id == table_id
            for name, table_id in self.table_ids.items())

    def lock_tables(self, view: ReadView) -> list[str]:
        """The lock-resource ids of the tables this request touches as ``view`` sees them
        (prepared again in ``view`` if a table was re-created since)."""
        if self.prepared is None or not self._tables_unchanged(view):
            self.prepare_in(view)
        assert self.table_ids is not None
        return [str(t) for t in self.table_ids.values()]

    def lock_needs(self, view: ReadView) -> Needs:
        """The locks this request needs as ``view`` sees its tables (prepared again in
        ``view`` if a table was re-created since).

        Raises:
            InvalidInput, NotFound: the request is malformed.
        """
        if self.prepared is None or not self._tables_unchanged(view):
            self.prepare_in(view)
        if self.needs is None:
            assert self.prepared is not None
            self.needs = request_needs(self.prepared, _Tables(view), self.checks, self.reads)
        return self.needs

    def plan(self, view: WriteView, position: int) -> Plan:
        """Check everything against ``view``; see the module invariants."""
        if self.session is not None:
            self.session(view)
        first = replayed(view, self.idempotency_key, self.fingerprint)
        if first is not None:
            return first
        if self.prepared is None:
            self.prepare_in(view)
        elif not self._tables_unchanged(view):
            if self.session is not None:  # its locks are on the tables it was prepared for
                raise TableChanged("a table of the request was dropped and re-created while "
                                   "it ran; nothing was applied")
            self.prepare_in(view)
        assert self.prepared is not None
        outcome = Outcome(reads=evaluate(view, self.checks, self.reads))
        staging = Staging()
        outcome.rows_affected = staging.stage(self.prepared, view, position)
        if staging.changes:
            outcome.commit_position = position
        return Plan(outcome, staging.puts(), staging.changes,
                    idempotency_key=self.idempotency_key, fingerprint=self.fingerprint)


@dataclass
class CreateTable:
    """Create a table (or, with ``if_not_exists``, return the existing one)."""

    commit_kind: ClassVar[str] = "ddl"

    schema: Schema
    if_not_exists: bool = False

    def plan(self, view: WriteView, position: int) -> Plan:
        existing = view.table(self.schema.name)
        if existing is not None:
            if self.if_not_exists:
                return Plan(Outcome(value=existing))
            raise AlreadyExists(f"table {self.schema.name!r} already exists")
        outcome = Outcome(commit_position=position)

        def ddl(v: WriteView) -> None:
            outcome.value = v.create_table(self.schema)

        return Plan(outcome, changes=[Change(self.schema.name, "create_table", ())], ddl=ddl)


@dataclass
class SettleKey:
    """``GetOutcome`` with ``settle``: the key's record (``Outcome.value``), or, when there is
    none, a new one that marks it abandoned, so that the write, arriving later, is refused. In
    the commit order, like the writes: an answer after it is final."""

    commit_kind: ClassVar[str] = "settle"

    key: str
    wall_clock: Callable[[], float] = time.time

    def plan(self, view: WriteView, position: int) -> Plan:
        got = view.idempotent_result(self.key)
        if got is not None:
            return Plan(Outcome(value=got))
        mark = {"failed": ABANDONED, "msg": "settled as abandoned by GetOutcome", "fp": ""}

        def record(v: WriteView) -> None:  # logged (replicas hold it too) by the store
            v.record_idempotent(self.key, mark, ts=self.wall_clock())

        return Plan(Outcome(value=mark), ddl=record)


@dataclass
class DropTable:
    """Drop a table and its rows (or, with ``if_exists``, do nothing when it is missing)."""

    commit_kind: ClassVar[str] = "ddl"

    name: str
    if_exists: bool = False
    session: SessionCheck | None = None  # the session whose X lock on the table covers it

    def plan(self, view: WriteView, position: int) -> Plan:
        if self.session is not None:
            self.session(view)
        schema = view.table(self.name)
        if schema is None:
            if self.if_exists:
                return Plan(Outcome(value=False))
            raise NotFound(f"table {self.name!r} does not exist")
        outcome = Outcome(commit_position=position, value=True)

        def ddl(v: WriteView) -> None:
            outcome.rows_affected = v.drop_table(schema)

        # The dropped schema rides in the record, so that a change stream that began before
        # the drop can still decode the table's rows (storage/changes.py).
        return Plan(outcome, changes=[Change(self.name, "drop_table", (schema.encode(),))],
                    ddl=ddl)


@dataclass
class PublishGrants:
    """Publish locks just granted to an interactive transaction, before it reads under them
    (``storage/grants.py``)."""

    commit_kind: ClassVar[str] = "grants"

    session: SessionCheck
    grants: list[tuple[str, str, bytes]]

    def plan(self, view: WriteView, position: int) -> Plan:
        self.session(view)
        return Plan(Outcome(), publish=(self.session.lease_id, self.grants))


@dataclass
class WithdrawGrants:
    """Remove the published grants of a transaction that ended without committing."""

    commit_kind: ClassVar[str] = "grants"

    grants: list[tuple[str, str]]

    def plan(self, view: WriteView, position: int) -> Plan:
        return Plan(Outcome(), withdraw=self.grants)


@dataclass
class _Pending:
    work: Work
    future: Future[Outcome]
    is_active: Callable[[], bool]


LockFreeCheck = Callable[[ReadView, list[str], Callable[[], Needs]], bool]
"""Whether a request on these tables (their lock-resource ids) with these lock needs (named
only if asked) must take its locks, given the state in the write transaction (the published
grants; see ``txn.lock_free_check``)."""


AckGate = Callable[[int, Callable[[], None], Callable[[Exception], None]], None]
"""``after(position, on_ok, on_fail)``: call ``on_ok`` once ``position`` may be acknowledged
(``SyncGate.after``)."""


def wait_new(committer: Any, version: Callable[[], int] | None, seen: int, mark: int,
             timeout_s: float) -> int:
    """Wait until there may be something new in the log: this node's committer committed a
    batch after the ``seen``-th (it wakes the waiter at once), or the volume's version is no
    longer ``mark`` (another node's commit: looked at every CHANGE_POLL_S, a read of LMDB's
    meta page, no snapshot), or ``timeout_s`` passed; return the committer's batch count.
    ``mark`` must be taken *before* the read that found nothing new, so that a commit between
    that read and this wait is not missed."""
    deadline = time.monotonic() + timeout_s
    while True:
        step = CHANGE_POLL_S if version is not None else timeout_s
        now = committer.wait_for_commit(seen, max(0.0, min(step, deadline - time.monotonic())))
        if now != seen or time.monotonic() >= deadline or \
                (version is not None and version() != mark):
            return now


class GroupCommitter:
    """Runs the requests that arrive together in one write transaction and one sync.

    ``admit`` (if given) runs before each batch and raises ``Unavailable`` when this node may
    not commit at all (``nodes/epoch.py``: its session is past its deadline, or its volume was
    superseded); the batch then fails whole, nothing applied. ``confirm`` (if given) runs when
    the batch is answered and raises ``AckWithheld`` if the node may no longer acknowledge
    what it committed (a freeze since ``admit`` past the lease): the applied requests then get
    that instead of their outcome. ``on_group`` (if given) is told the size of each group
    whose write transaction committed (the requests planned in it, applied or refused), on the
    committer's thread."""

    def __init__(self, store: Store, node_id: str, *, max_batch: int = 256,
                 lock_free_check: LockFreeCheck | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 ack_after: AckGate | None = None,
                 admit: Callable[[], None] | None = None,
                 confirm: Callable[[], None] | None = None,
                 on_group: Callable[[int], None] | None = None) -> None:
        self._store = store
        self._on_group = on_group
        self.commits_by_kind: dict[str, int] = {}
        """Requests applied, by ``commit_kind`` (only the committer's thread writes it)."""
        self._admit = admit
        self._confirm = confirm
        self._ack_after = ack_after
        self._node_id = node_id
        self._max_batch = max_batch
        self._lock_free_check = lock_free_check
        self._wall_clock = wall_clock
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self.batches = 0
        self.commits = 0
        self._committed = threading.Condition()
        self.lock_free = 0  # requests without locks that the check let through
        self.needed_locks = 0  # ... and that it sent back to take their locks
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def submit(self, work: Work, *, timeout_s: float | None = None,
               is_active: Callable[[], bool] = lambda: True) -> Outcome:
        """Commit ``work`` (with others that arrive meanwhile) and return its outcome.

        Raises:
            StorageError: the request was refused (nothing of it was written).
            Unavailable: the committer is closed.
            CommitTimeout: no answer within ``timeout_s`` (the outcome is unknown).
        """
        return self.wait(self.enqueue(work, is_active=is_active), timeout_s)

    def enqueue(self, work: Work, *, is_active: Callable[[], bool] = lambda: True
                ) -> Future[Outcome]:
        """Queue ``work`` and return the future of its outcome (it always completes).

        Raises:
            Unavailable: the committer is closed.
        """
        fut: Future[Outcome] = Future()
        with self._lock:
            if self._closed:
                raise Unavailable("node is shutting down")
            self._queue.put(_Pending(work, fut, is_active))
        return fut

    @staticmethod
    def wait(fut: Future[Outcome], timeout_s: float | None) -> Outcome:
        """The outcome of a queued commit.

        Raises:
            StorageError: the request was refused (nothing of it was written).
            CommitTimeout: no answer within ``timeout_s``; the commit may still be applied.
                NB: a caller holding locks for it must keep them until ``fut`` is done.
        """
        try:
            return fut.result(timeout=timeout_s)
        except TimeoutError as e:
            raise CommitTimeout("commit did not finish before the deadline; it may or may not "
                                "have been applied") from e

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            try:
                self._commit(batch)
            except Exception as e:  # a bug, or a hook (admit, confirm, the sync gate) failing
                self._fail_unanswered(batch, e)

    @staticmethod
    def _fail_unanswered(batch: list[_Pending], e: Exception) -> None:
        """A batch's turn failed outside the handling of its write transaction: answer what
        it left unanswered (the outcome unknown: the failure may have come after the commit)
        and go on, since nothing but ``close()`` may end the committer's thread: every later
        commit of the node would wait on a dead one for ever."""
        log.warning("group commit: a batch failed: %r", e)
        failure = CommitTimeout(f"the commit failed in the group committer ({e!r}); it may or "
                                f"may not have been applied")
        for p in batch:
            if not p.future.done():
                try:
                    p.future.set_exception(failure)
                except InvalidStateError:  # answered meanwhile (by the sync gate)
                    pass

    def _may_go_lock_free(self, view: ReadView, p: _Pending) -> bool:
        """For a request without locks: whether it may be planned now (see the module
        invariants); if not, its future gets ``NeedsLocks``.

        Raises:
            StorageError: the request is malformed (its plan would refuse it too).
        """
        work: Transaction = p.work  # type: ignore[assignment]
        if self._lock_free_check is not None and not self._lock_free_check(
                view, work.lock_tables(view), lambda: work.lock_needs(view)):
            self.lock_free += 1
            return True
        self.needed_locks += 1
        p.future.set_exception(NeedsLocks("a lock is in the way; take the locks"))
        return False

    def _apply(self, view: WriteView, batch: list[_Pending]
               ) -> tuple[list[tuple[_Pending, Outcome]], list[tuple[_Pending, Exception]], int]:
        """Plan and apply each request of ``batch`` in one write transaction; return those
        applied with their outcomes, those refused by their plans, and the last position the
        transaction saw (run again from the start if the store retries the transaction)."""
        done: list[tuple[_Pending, Outcome]] = []
        # Refused by its plan: told only once the transaction committed, since the plan may
        # have seen the writes of earlier requests of the batch, which a failed commit undoes.
        refused: list[tuple[_Pending, Exception]] = []
        for p in batch:
            if p.future.done():
                continue
            if not p.is_active():
                p.future.set_exception(CommitTimeout("the caller went away before the "
                                                     "commit; nothing was applied"))
                continue
            position = view.next_position()
            try:
                if getattr(p.work, "lock_free", False) and \
                        not self._may_go_lock_free(view, p):
                    continue
                plan = p.work.plan(view, position)
            except Exception as e:  # a plan changes nothing, so only this request fails
                if not isinstance(e, StorageError):
                    log.exception("planning a request failed")
                key = getattr(p.work, "idempotency_key", "")
                failure = failure_record(e, getattr(p.work, "fingerprint", "")) if key else None
                if failure is not None:  # a retry, or GetOutcome, learns of it
                    view.record_idempotent(key, failure, ts=self._wall_clock())
                refused.append((p, e))
                continue
            plan.apply(view, position)
            faultpoints.pause_if(faultpoints.PAUSE_IN_COMMIT, plan.idempotency_key)
            if plan.idempotency_key:  # before the record, so that its replay op goes with it
                view.record_idempotent(plan.idempotency_key,
                                       plan.outcome.to_record(plan.fingerprint),
                                       ts=self._wall_clock())
            if plan.changes:
                got = view.append_log(ts=self._wall_clock(), node=self._node_id,
                                      changes=plan.changes)
                assert got == position, (got, position)
            done.append((p, plan.outcome))
        return done, refused, view.commit_position()

    def _commit(self, batch: list[_Pending]) -> None:
        if self._admit is not None:
            try:  # this node may commit at all (a valid session, its volume the primary)
                self._admit()
            except NoValidSession as e:
                # Work under a session check of its own is refused by it, in the write
                # transaction (ABORTED: its locks are gone); the rest is refused here.
                for p in batch:
                    if getattr(p.work, "session", None) is None and not p.future.done():
                        p.future.set_exception(e)
                batch = [p for p in batch if not p.future.done()]
                if not batch:
                    return
            except Unavailable as e:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                return
        try:
            done, refused, seen = self._store.transact(lambda view: self._apply(view, batch))
        except Exception as e:  # the whole transaction failed: none of the group was applied
            if not isinstance(e, StorageError):
                log.exception("group commit failed")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        with self._committed:
            self.batches += 1
            self._committed.notify_all()
        self.commits += len(done)
        by_kind = self.commits_by_kind
        for p, _ in done:
            kind = getattr(p.work, "commit_kind", "other")
            by_kind[kind] = by_kind.get(kind, 0) + 1
        if self._on_group is not None:
            self._on_group(len(done) + len(refused))

        def answer(failure: Exception | None = None) -> None:
            """Tell each request its outcome (or, for the applied ones, ``failure``)."""
            for p, err in refused:
                p.future.set_exception(err)
            if done and failure is None:
                for p, _ in done:
                    faultpoints.pause_if(faultpoints.PAUSE_BEFORE_ANSWER,
                                         getattr(p.work, "idempotency_key", ""))
                if self._confirm is not None:
                    try:  # may it still acknowledge? (a freeze since ``admit``)
                        self._confirm()
                    except AckWithheld as e:
                        failure = e
            for p, outcome in done:
                if failure is not None:
                    p.future.set_exception(failure)
                    continue
                faultpoints.crash_if(faultpoints.CRASH_AFTER_COMMIT,
                                     getattr(p.work, "idempotency_key", ""))
                p.future.set_result(outcome)

        if self._ack_after is None:
            answer()
        else:
            # Every answer of the batch, refusals too, waits until the synchronous replicas
            # hold everything the batch saw (nodes/replication.py), without holding up the
            # next batch.
            self._ack_after(seen, answer, answer)

    def wait_for_commit(self, seen: int, timeout_s: float) -> int:
        """Wait until this committer has committed a batch after the ``seen``-th (or for
        ``timeout_s``); return the number of batches committed so far."""
        with self._committed:
            self._committed.wait_for(lambda: self.batches != seen, timeout=timeout_s)
            return self.batches

    def close(self) -> None:
        """Finish what is queued, then stop; later submits raise ``Unavailable``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout=30)
