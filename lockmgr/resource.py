"""Lockable resources and the etcd key layout of everything the lock manager stores.

Owns: ``Resource`` (a table, a page of a table, or a row of a page; ids are opaque strings given
by the caller, which gets them from storage), the etcd keys of lock entries, wait records,
session markers and session liveness keys, one function per key kind. Pure; no I/O.

Layout under ``/shardless/<cluster>/``:

==============================================  =====================  ==================
key                                             lease                  value
==============================================  =====================  ==================
``locks/<resource>/<txn id>/<seq>``             holder's session       ``MODE[|row=MODE,...]``
``waits/<txn id>``                              waiter's session       JSON wait record
``sessions/<lease hex>``                        none (outlives it)     JSON (node, start)
``live/<lease hex>``                            the session itself     node id
==============================================  =====================  ==================

A resource name never prefixes another's (each ends with ``/`` in the key), so one range read
returns exactly the entries of one resource. A table's entries live under two names: intention
modes (IS, IX) under ``t/<table>``, the others (S, SIX, X) under ``ts/<table>``. Intention modes
never conflict with each other, so an IS or IX request reads only ``ts/<table>`` (almost always
empty) instead of every concurrent transaction's intention entry of the table; a strong request
reads both. The session marker outlives its lease on purpose: a
marker whose ``live`` key is gone names a session that ended without a clean close, which must be
fenced in storage before anyone acts on a lock it may have held (see ``manager.py``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Resource:
    """A table (``page`` and ``row`` None), a page of a table, or a row (with its page)."""

    table: str
    page: str | None = None
    row: str | None = None

    @property
    def name(self) -> str:
        """The resource's name in etcd keys."""
        if self.row is not None:
            return f"r/{self.table}/{self.row}"
        if self.page is not None:
            return f"p/{self.table}/{self.page}"
        return f"t/{self.table}"

    def parents(self) -> list[Resource]:
        """The resources above this one, outermost first (table, then page)."""
        if self.row is not None:
            return [Resource(self.table), Resource(self.table, self.page)]
        if self.page is not None:
            return [Resource(self.table)]
        return []

    @property
    def kind(self) -> str:
        """``table``, ``page`` or ``row``."""
        return "row" if self.row is not None else "page" if self.page is not None else "table"


def _base(cluster: str) -> str:
    return f"/shardless/{cluster}/"


def locks_prefix(cluster: str) -> bytes:
    """Prefix of every lock entry of the cluster."""
    return (_base(cluster) + "locks/").encode()


def resource_prefix(cluster: str, resource: str) -> bytes:
    """Prefix of the lock entries of one resource (by name)."""
    return (_base(cluster) + f"locks/{resource}/").encode()


def entry_key(cluster: str, resource: str, txn_id: str, tag: str) -> bytes:
    """Key of one lock entry: one request of one transaction on one table or page (``tag``
    tells a transaction's entries apart: the manager numbers them)."""
    return (_base(cluster) + f"locks/{resource}/{txn_id}/{tag}").encode()


def parse_entry_key(cluster: str, key: bytes) -> tuple[str, str, str]:
    """(resource name, txn id, tag) of a lock entry key."""
    rest = key.decode()[len(_base(cluster) + "locks/"):]
    resource, txn_id, mode = rest.rsplit("/", 2)
    return resource, txn_id, mode


def waits_prefix(cluster: str) -> bytes:
    """Prefix of every wait record."""
    return (_base(cluster) + "waits/").encode()


def wait_key(cluster: str, txn_id: str) -> bytes:
    """Key of one transaction's wait record."""
    return (_base(cluster) + f"waits/{txn_id}").encode()


def sessions_prefix(cluster: str) -> bytes:
    """Prefix of the session markers."""
    return (_base(cluster) + "sessions/").encode()


def session_key(cluster: str, lease_id: int) -> bytes:
    """Key of one session's marker (no lease)."""
    return (_base(cluster) + f"sessions/{lease_id:x}").encode()


def live_prefix(cluster: str) -> bytes:
    """Prefix of the session liveness keys."""
    return (_base(cluster) + "live/").encode()


def live_key(cluster: str, lease_id: int) -> bytes:
    """Key that exists exactly while the session's lease does."""
    return (_base(cluster) + f"live/{lease_id:x}").encode()


def lease_of_key(key: bytes) -> int:
    """The lease id at the end of a session marker or liveness key."""
    return int(key.rsplit(b"/", 1)[1], 16)


STRONG_TABLE = "ts/"
"""Name prefix of a table's S, SIX and X entries (see the module docstring)."""


def entry_name(name: str, intention: bool) -> str:
    """The name under which an entry of resource ``name`` is stored: a table's strong modes go
    to ``ts/<table>``; everything else to its own name."""
    if name.startswith("t/") and not intention:
        return STRONG_TABLE + name[2:]
    return name


def read_names(name: str, intention: bool) -> list[str]:
    """The names whose entries a request on ``name`` must read to find its conflicts."""
    if name.startswith("t/"):
        strong = STRONG_TABLE + name[2:]
        return [strong] if intention else [name, strong]
    return [name]


def resource_of_entry_name(name: str) -> str:
    """The resource an entry name stands for (``ts/<table>`` is table ``t/<table>``)."""
    if name.startswith(STRONG_TABLE):
        return "t/" + name[len(STRONG_TABLE):]
    return name
