"""The read-only face of a copy of the volume: what the node's servicers (``nodes/server.py``)
need of a node, for a process that serves reads from a replica's copy without being a node of
the primary (the replica process itself, ``nodes/replica.py``, and a read-only node on a
replica's volume, ``nodes/reader.py``).

Owns: reads at the copy's position (``min_position`` waits for it), read-only transactions on
a snapshot of it, counting the snapshots in use so that the copy is closed only when none is,
and refusing writes, DDL and read-write transactions with ``ReadOnlyReplica`` naming a primary
node. Does not own the copy (its source keeps it up to date).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol

from nodes.commit import Unavailable
from nodes.limits import Admission, Limits
from nodes.node import Gate
from nodes.replication import ReadOnlyReplica, wait_for_position
from nodes.txn import TransactionManager
from storage import Store


class ReadSource(Protocol):
    """The process that keeps the copy: its store, position, and where the primary is."""

    @property
    def name(self) -> str:
        """How it names itself in messages (``replica r1``, ``read-only node b1``)."""

    @property
    def serving_store(self) -> Store | None:
        """The copy to read, or None while there is none to read yet."""

    @property
    def not_ready(self) -> str:
        """Why there is no copy to read (when ``serving_store`` is None)."""

    @property
    def position(self) -> int:
        """The last position the copy holds."""

    def primary_hint(self) -> str:
        """The address of a primary node, or a hint where to find one."""

    def wait_applied(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the copy to move on."""


@dataclass(frozen=True)
class _Identity:
    node_id: str
    listen: str


class ReadFace:
    """What the servicers need of a node, over a ``ReadSource``: reads from its copy, read-only
    transactions on a snapshot of it; writes, DDL and read-write transactions refused with
    ``ReadOnlyReplica``."""

    def __init__(self, source: ReadSource, node_id: str, listen: str,
                 limits: Limits | None = None) -> None:
        self._source = source
        self.admission = Admission(limits)
        self.admission.start()
        self.readers = Readers()
        self.gate = Gate()
        self.cfg = _Identity(node_id, listen)
        self.committer = Refuse(source)
        # Read-only transactions need only snapshots; a read-write one asks the lock manager
        # first, which refuses.
        self.txns = TransactionManager(node_id, listen,
                                       self,  # type: ignore[arg-type]
                                       self.committer,  # type: ignore[arg-type]
                                       Refuse(source),  # type: ignore[arg-type]
                                       admission=self.admission, id_key=node_id)

    def read(self) -> Any:
        """A snapshot of the copy (``Store.read``), for read-only transactions."""
        return self.reads.read()

    @property
    def reads(self) -> _Snapshots:
        store = self._source.serving_store
        if store is None:
            raise Unavailable(f"{self._source.name} {self._source.not_ready}; read elsewhere "
                              f"(nothing was done)")
        return _Snapshots(store, self.readers, self._source)

    def end_reads(self, timeout_s: float) -> bool:
        """Abort the open transactions and wait for the snapshots in use to end (before the
        copy is closed); return whether they all did."""
        for txn in self.txns.open_transactions():
            self.txns.abort(txn.txn_id, "REPLICA_VOLUME_CLOSING",
                            "the replica's copy of the volume is closing")
        return self.readers.wait_idle(timeout_s)

    def wait_for_position(self, position: int, timeout_s: float | None) -> None:
        wait_for_position(self.reads, position, timeout_s, self._source.wait_applied,
                          self._source.name)


def log_held(face: ReadFace | None) -> tuple[int, int]:
    """The oldest commit-log position a copy holds and the log's size, for its Status (0, 0:
    no copy to read now, being taken or closing)."""
    if face is None:
        return 0, 0
    try:
        with face.reads.read() as view:
            oldest, _last, size = view.log_bounds()
            return int(oldest), int(size)
    except Exception:  # whatever stops a read stops only this figure
        return 0, 0


class Readers:
    """Counts the snapshots of the copy in use, so that it is closed only when none is
    (closing an LMDB environment under an open transaction is not allowed)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.open = 0

    def enter(self) -> None:
        with self._cond:
            self.open += 1

    def leave(self) -> None:
        with self._cond:
            self.open -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.open == 0, timeout=timeout_s)


class _Snapshots:
    """``read()`` of a store, counted in ``Readers``."""

    def __init__(self, store: Store, readers: Readers, source: ReadSource) -> None:
        self._store = store
        self._readers = readers
        self._source = source

    def read(self) -> _CountedRead:
        return _CountedRead(self._store, self._readers, self._source)


class _CountedRead:
    def __init__(self, store: Store, readers: Readers, source: ReadSource) -> None:
        self._store = store
        self._ctx: Any = None
        self._readers = readers
        self._source = source

    def __enter__(self) -> Any:
        self._readers.enter()
        try:
            # Counted first, then checked: a copy being closed is no longer served (its
            # source says so before it waits for the count), so this snapshot is either
            # waited for or not taken.
            if self._source.serving_store is not self._store:
                raise Unavailable(f"{self._source.name} {self._source.not_ready}; read "
                                  f"elsewhere (nothing was done)")
            self._ctx = self._store.read()
            return self._ctx.__enter__()
        except BaseException:
            self._readers.leave()
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            self._ctx.__exit__(*exc)
        finally:
            self._readers.leave()


class Refuse:
    """Every call raises ``ReadOnlyReplica``, naming a primary node."""

    def __init__(self, source: ReadSource) -> None:
        self._source = source

    def __getattr__(self, name: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            s = self._source
            raise ReadOnlyReplica(
                f"{s.name} serves reads only (its copy of the volume is at position "
                f"{s.position}); send writes, DDL and interactive transactions to a primary "
                f"node ({s.primary_hint()})")
        return refuse
