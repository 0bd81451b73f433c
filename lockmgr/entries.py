"""Lock entries as data: what a request puts, what an entry read back says, and who conflicts.

Owns: ``Request`` (one entry to put: a mode on a table or page, plus the page's row locks),
``group`` (turning planned (resource, mode) pairs into one request per table or page), ``Entry``
(an entry read from etcd), ``parse_entries``, and the grant rule ``find_conflicts``. Pure: no
I/O; the manager, the probe and the batcher all decide with these same functions.

The grant rule: a request is granted when every entry of *another* transaction that came earlier
in its resource's queue (a smaller etcd create revision) is compatible with it, on the table or
page itself and on every row both name. Entries put in one etcd transaction share a revision, so
neither is earlier than the other: whoever puts several transactions' requests in one etcd
transaction must make sure they are compatible with each other (``Request.compatible``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lockmgr import resource
from lockmgr.etcd import KeyValue
from lockmgr.modes import LockMode
from lockmgr.resource import Resource


@dataclass(frozen=True)
class Entry:
    """One lock entry as read from etcd."""

    resource: str
    txn_id: str
    mode: LockMode  # on the resource itself (a table or a page)
    key: bytes
    create_revision: int
    node: str  # from the transaction id, ``<...>@<node id>``
    rows: dict[str, LockMode] = field(default_factory=dict)  # row locks carried by a page entry


@dataclass
class Request:
    """One lock entry to put: a mode on a table or page, plus the page's row locks."""

    name: str
    mode: LockMode
    rows: dict[str, LockMode] = field(default_factory=dict)
    grants: list[tuple[Resource, LockMode]] = field(default_factory=list)
    key: bytes = b""
    revision: int = 0
    cache_key: bytes = b""  # the entry is the node's cached table lock (``affinity.py``)
    leave_cache: str = ""  # once granted, its transaction stops riding this table's cache

    def value(self) -> bytes:
        """The entry's value: ``MODE`` or ``MODE|row=MODE,row=MODE``."""
        if not self.rows:
            return self.mode.value.encode()
        return (self.mode.value + "|" + ",".join(f"{r}={m.value}" for r, m in
                                                 sorted(self.rows.items()))).encode()

    def describe(self) -> str:
        """The mode, with the number of rows, for wait records and messages."""
        return self.mode.value + (f" +{len(self.rows)} row(s)" if self.rows else "")

    def read_names(self) -> list[str]:
        """The names whose entries this request must read to find its conflicts."""
        return resource.read_names(self.name, self.mode.is_intention())

    def compatible(self, other: Request) -> bool:
        """Whether this request and ``other`` (on any resource) can be granted together."""
        if other.name != self.name:
            return True
        return self.mode.compatible(other.mode) and all(
            r not in other.rows or other.rows[r].compatible(m) for r, m in self.rows.items())


def parse_value(raw: bytes) -> tuple[LockMode, dict[str, LockMode]]:
    """The mode and row locks of an entry's value (see ``Request.value``)."""
    text = raw.decode()
    mode, _, rows = text.partition("|")
    out: dict[str, LockMode] = {}
    if rows:
        for item in rows.split(","):
            r, _, m = item.partition("=")
            out[r] = LockMode(m)
    return LockMode(mode), out


def parse_entries(cluster: str, kvs: list[KeyValue]) -> list[Entry]:
    """The lock entries among ``kvs`` (keys read from under ``resource.locks_prefix``)."""
    out = []
    for kv in kvs:
        name, txn_id, _ = resource.parse_entry_key(cluster, kv.key)
        res = resource.resource_of_entry_name(name)
        mode, rows = parse_value(kv.value)
        out.append(Entry(res, txn_id, mode, kv.key, kv.create_revision,
                         txn_id.rpartition("@")[2], rows))
    return out


def group(requests: list[tuple[Resource, LockMode]]) -> list[Request]:
    """One entry per table or page: a page's row locks ride in its page's entry, whose own
    mode is then at least the rows' intention (IS or IX)."""
    by_name: dict[str, Request] = {}
    order: list[str] = []
    for res, mode in requests:
        target = Resource(res.table, res.page) if res.kind == "row" else res
        req = by_name.get(target.name)
        if req is None:
            base = mode.intention() if res.kind == "row" else mode
            req = by_name[target.name] = Request(target.name, base)
            order.append(target.name)
        if res.kind == "row":
            assert res.row is not None and "," not in res.row and "=" not in res.row
            req.rows[res.row] = mode
            req.mode = req.mode.supremum(mode.intention())
        else:
            req.mode = req.mode.supremum(mode) if req.grants else mode
        req.grants.append((res, mode))
    for req in by_name.values():
        if req.rows and all(r.kind == "row" for r, _ in req.grants):
            page = next(r for r, _ in req.grants)
            req.grants.append((Resource(page.table, page.page), req.mode))
    return [by_name[n] for n in order]


def blocked_on(req: Request, conflicts: list[Entry]) -> tuple[str, str]:
    """The resource (a row if a row conflicts, else the table or page) and mode waited for."""
    table = req.name.split("/")[1]
    for e in conflicts:
        for r, m in sorted(req.rows.items()):
            if r in e.rows and not e.rows[r].compatible(m):
                return f"r/{table}/{r}", m.value
    return req.name, req.mode.value


def find_conflicts(txn_id: str, req: Request, entries: list[Entry]) -> list[Entry]:
    """Earlier entries of other transactions than ``txn_id`` that ``req`` must wait for: an
    incompatible mode on the table or page itself, or an incompatible lock on one of the same
    rows. "Earlier" is a create revision below ``req.revision``."""
    out = []
    for e in entries:
        if e.create_revision >= req.revision or e.txn_id == txn_id:
            continue
        if not e.mode.compatible(req.mode) or any(
                r in e.rows and not e.rows[r].compatible(m) for r, m in req.rows.items()):
            out.append(e)
    return out
