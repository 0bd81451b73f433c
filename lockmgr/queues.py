"""The cluster's lock queues as an operator sees them: per resource, who holds and who waits.

Owns: ``LockQueue`` (one resource's holders and waiters, in FIFO order), ``queues`` (the pure
split of lock entries into holders and waiters by the grant rule of ``entries.find_conflicts``)
and ``read_locks`` (every lock entry and wait record of a cluster, read in one etcd transaction
so that both lists come from the same revision). Does not own: the grant rule itself
(``entries.py``), the key layout (``resource.py``), the wait record format (``manager.py``), or
how the lists are printed (``nodes/admin.py``).

Invariant: an entry is a holder exactly when ``find_conflicts`` finds no earlier entry of another
transaction in its way, the rule every lock manager grants by; so what is shown as held is what
the lock managers consider granted at that revision. Entries only ever leave a queue, so a
holder stays a holder until it releases. NB: a waiter that has just been granted may still show
a wait record until its node removes it; the entries, not the wait records, decide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lockmgr import resource
from lockmgr.entries import Entry, Request, find_conflicts, parse_entries
from lockmgr.etcd import EtcdClient
from lockmgr.manager import WaitRecord, parse_waits


@dataclass(frozen=True)
class Waiter:
    """An entry that waits, with the transactions of the earlier entries in its way."""

    entry: Entry
    blocked_by: tuple[str, ...]


@dataclass(frozen=True)
class LockQueue:
    """One resource (a table ``t/<table>`` or a page ``p/<table>/<page>``): its granted entries
    and its waiting ones, each list in queue order (etcd create revision)."""

    resource: str
    holders: list[Entry] = field(default_factory=list)
    waiters: list[Waiter] = field(default_factory=list)


def queues(entries: list[Entry]) -> list[LockQueue]:
    """Split lock entries into holders and waiters per resource, by the grant rule.

    Args:
        entries: Lock entries as ``parse_entries`` returns them (any order).

    Returns:
        One queue per resource that has entries, sorted by resource name.
    """
    by_resource: dict[str, list[Entry]] = {}
    for e in entries:
        by_resource.setdefault(e.resource, []).append(e)
    out = []
    for name in sorted(by_resource):
        queue = sorted(by_resource[name], key=lambda e: (e.create_revision, e.txn_id))
        q = LockQueue(name)
        for e in queue:
            req = Request(name, e.mode, dict(e.rows), revision=e.create_revision)
            conflicts = find_conflicts(e.txn_id, req, queue)
            if conflicts:
                q.waiters.append(Waiter(e, tuple(dict.fromkeys(c.txn_id for c in conflicts))))
            else:
                q.holders.append(e)
        out.append(q)
    return out


def read_locks(client: EtcdClient, cluster: str) -> tuple[int, list[Entry], list[WaitRecord]]:
    """Read every lock entry and wait record of ``cluster`` in one etcd transaction.

    Returns:
        The etcd revision read at, the lock entries, and the wait records.

    Raises:
        EtcdUnavailable: etcd did not answer.
    """
    revision, results = client.txn([EtcdClient.range_op(resource.locks_prefix(cluster)),
                                    EtcdClient.range_op(resource.waits_prefix(cluster))])
    return (revision, parse_entries(cluster, results[0] or []),
            parse_waits(results[1] or []))
