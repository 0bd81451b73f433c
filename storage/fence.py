"""Fence records: the storage half of the fencing invariant.

Invariant (ARCHITECTURE.md): a node's commit reaches storage only if no fence record for its
session exists in storage when its LMDB write transaction runs. ``check`` is called inside every
committing write transaction; ``fence`` writes a record in its own write transaction, durably,
before the fencing node acts on a lock that the fenced session may have held.

Because LMDB write transactions are totally ordered (one writer at a time across the host),
either the fenced session's commit ran first (and whoever fenced it reads its effects) or it runs
after the fence and is refused::

    old holder:  [write txn: check ok, put, commit] ............. [write txn: check -> Fenced]
    new holder:                                      [fence] [read, ... , commit]

Records are small and kept (a fenced session never comes back; its lease id is never reused).
"""

from __future__ import annotations

import msgpack

from storage import keys
from storage.errors import Fenced
from storage.kv import Snapshot, WriteTxn


def is_fenced(txn: Snapshot, lease_id: int) -> bool:
    """Whether a fence record exists for the session ``lease_id``."""
    return txn.get(keys.fence(lease_id)) is not None


def check(txn: Snapshot, lease_id: int) -> None:
    """Refuse to go on if the session ``lease_id`` is fenced.

    Raises:
        Fenced: a fence record exists.
    """
    if is_fenced(txn, lease_id):
        raise Fenced(f"session {lease_id:x} is fenced; its transaction cannot commit")


def fence(txn: WriteTxn, lease_id: int, *, ts: float, by: str) -> bool:
    """Write the fence record of ``lease_id`` in write transaction ``txn``; return whether it
    is new (an existing record is kept as it was)."""
    key = keys.fence(lease_id)
    if txn.get(key) is not None:
        return False
    txn.put(key, msgpack.packb({"ts": ts, "by": by}))
    return True
