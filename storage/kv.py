"""The engine seam: ordered key-value storage over bytes, under the domain store.

Owns: the contract that every storage engine keeps (``Engine``, ``Snapshot``, ``WriteTxn``
below), in the manner of toydb's ``Engine`` trait. Does not own: what keys and values mean
(``keys.py`` and the domain modules) nor any particular engine (``lmdb_env.LmdbEngine`` on the
shared volume, ``memory.MemoryEngine`` for unit tests). ``tests/contract`` runs one suite over
every engine.

What an engine guarantees, and what rests on it:

- **Write transactions are serializable and totally ordered.** At most one write transaction
  runs at a time across every process that opens the same volume, and each one sees every write
  transaction committed before it began. The fencing argument (``fence.py``: either the fenced
  session's commit came first, or it runs after the fence record and is refused), the lock-free
  one-shot writes (``grants.py``) and the commit-log positions (``commitlog.py``: one position per
  commit, no gaps, in commit order) all rest on this order, and on nothing else about the engine.
- **A commit is durable when the ``with`` block of :meth:`Engine.write` exits normally**; a
  write transaction that raises (in its body or at commit) leaves nothing behind.
- **A snapshot is consistent**: it sees every write transaction committed before it was taken and
  nothing of any later one, for as long as it is open.
- Keys are ``1..max_key_bytes`` bytes and sort as bytes; values are any bytes. A key outside
  that size fails the transaction with ``StorageError``.

NB: a transaction is used from one thread at a time (it may move between threads). Changing a
write transaction while one of its scans is being iterated is not allowed: collect, then change.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol

MIN_KEY_BYTES = 511
"""Every engine accepts keys of at least this many bytes (LMDB's limit): ``keys.py`` lays out the
key space within it."""


class Snapshot(Protocol):
    """A consistent, read-only view of the engine (see the module docstring)."""

    def get(self, key: bytes) -> bytes | None:
        """The value stored at ``key``, or None."""
        ...

    def scan(self, lo: bytes, hi: bytes | None = None, *, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """``(key, value)`` of every key with ``lo <= key < hi`` (``hi`` None: no upper
        bound), in byte order, or descending with ``reverse``; at most ``limit`` of them."""
        ...


class WriteTxn(Snapshot, Protocol):
    """A write transaction: reads see its own changes; committed as one (see the module)."""

    def put(self, key: bytes, value: bytes) -> None:
        """Store ``value`` at ``key``, replacing what was there."""
        ...

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; return whether it was there."""
        ...


class Engine(Protocol):
    """A storage engine opened once per process and shared between its threads."""

    max_key_bytes: int
    """The longest key the engine accepts (at least ``MIN_KEY_BYTES``)."""

    def read(self) -> AbstractContextManager[Snapshot]:
        """A snapshot for a ``with`` block, released on exit.

        Raises:
            StorageError: the engine could not open one.
        """
        ...

    def write(self) -> AbstractContextManager[WriteTxn]:
        """A write transaction for a ``with`` block: committed durably on normal exit, undone
        when the block raises.

        Raises:
            MapFull: the volume is full; nothing was written.
            StorageError: any other failure; nothing was written.
        """
        ...

    def make_room(self) -> bool:
        """After a write failed with ``MapFull``: try to get more room without losing anything
        (LMDB: take up a bigger map that another process set); return whether the write may
        now succeed if run again."""
        ...

    def version(self) -> int:
        """A number that changes whenever a write transaction commits, in any process (LMDB:
        the last transaction id), read without taking a snapshot: what a follower of the
        volume polls to learn cheaply that there is something new to read."""
        ...

    def housekeeping(self) -> dict[str, int]:
        """Do the engine's periodic upkeep (LMDB: free reader slots of dead processes); return
        counts of what was done, by name."""
        ...

    def info(self) -> dict[str, int]:
        """Figures about the engine (sizes, readers in use...), by name."""
        ...

    def close(self) -> None:
        """Release the engine; no transaction may be open."""
        ...


def delete_range(txn: WriteTxn, lo: bytes, hi: bytes | None, *, batch: int = 1000) -> int:
    """Remove every key with ``lo <= key < hi`` in write transaction ``txn``; return how many
    went (collected ``batch`` at a time, as the contract asks)."""
    n = 0
    while True:
        doomed = [k for k, _ in txn.scan(lo, hi, limit=batch)]
        for k in doomed:
            txn.delete(k)
        n += len(doomed)
        if len(doomed) < batch:
            return n
        lo = doomed[-1]
