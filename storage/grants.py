"""Published grants: the locks that interactive transactions hold, as seen by storage.

Owns: records ``GRANT + resource + 0x00 + tag`` whose value is ``[lease id, entry value]``, one per
granted lock entry of an interactive transaction (a page entry with its row locks, or a strong
table entry), written after the lock manager granted it and before the transaction reads
anything under it; removed in the write transaction that commits the transaction, or soon after
it ends otherwise, and all of a session's at once when the session is fenced. Does not own what
resources, tags or values mean (opaque strings and bytes from ``nodes``, which takes them from
``lockmgr``), nor the locks themselves (etcd holds those).

Why (``lockmgr/DESIGN.md``, "One-shot writes without lock entries"): a one-shot write runs wholly
inside one write transaction, and write transactions are totally ordered. If it finds no
conflicting published grant there, then every transaction that holds a conflicting lock
published it *after* this write committed, and so reads it; the one-shot write needs no lock
entry of its own. A record left behind (a crash, a failed clean-up) only ever sends one-shot
writes to the locking path, which fences the dead session and so removes its records.
"""

from __future__ import annotations

import msgpack

from storage import keys
from storage.errors import Corrupt
from storage.kv import Snapshot, WriteTxn


def publish(txn: WriteTxn, lease_id: int, grants: list[tuple[str, str, bytes]]) -> None:
    """Record ``(resource, tag, value)`` grants of session ``lease_id`` in write txn ``txn``."""
    for res, tag, value in grants:
        txn.put(keys.grant(res, tag), msgpack.packb([lease_id, value], use_bin_type=True))


def withdraw(txn: WriteTxn, grants: list[tuple[str, str]]) -> None:
    """Remove the ``(resource, tag)`` grants (missing ones are fine)."""
    for res, tag in grants:
        txn.delete(keys.grant(res, tag))


def withdraw_session(txn: WriteTxn, lease_id: int) -> int:
    """Remove every grant of session ``lease_id``; return how many went."""
    doomed = [k for k, v in txn.scan(*keys.kind_range(keys.GRANT))
              if _decode(k, v)[0] == lease_id]
    for k in doomed:
        txn.delete(k)
    return len(doomed)


def on(txn: Snapshot, resource: str) -> list[tuple[str, int, bytes]]:
    """The grants published on ``resource``: (tag, lease id, value) each."""
    prefix = keys.grant_prefix(resource)
    out = []
    for k, v in txn.scan(prefix, _end(prefix)):
        lease, value = _decode(k, v)
        out.append((k[len(prefix):].decode("utf-8"), lease, value))
    return out


def any_under(txn: Snapshot, prefix: str) -> bool:
    """Whether any grant's resource name starts with ``prefix`` (one seek)."""
    start = keys.GRANT + prefix.encode("utf-8")
    return next(txn.scan(start, _end(start), limit=1), None) is not None


def _end(prefix: bytes) -> bytes:
    """A bound above every grant key that starts with ``prefix`` (UTF-8 has no 0xFF byte)."""
    return prefix + b"\xff"


def _decode(k: bytes, v: bytes) -> tuple[int, bytes]:
    try:
        lease, value = msgpack.unpackb(v, raw=False)
        return int(lease), bytes(value)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise Corrupt(f"unreadable grant record {k!r}") from e
