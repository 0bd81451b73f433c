"""The epoch: which volume is the cluster's primary, and the fencing of a superseded one.

Owns: the epoch record ``<cluster>/epoch`` in etcd (JSON, no lease) and :class:`EpochGuard`,
a node's view of it. Does not own promotion itself (``nodes/promotion.py``) nor the volume's
identity (``storage/volume.py``), which the record names.

The record says which volume (by its identity's ``volume_id``) is the primary in epoch ``N``
and whether it is one yet: ``promoting`` while a replica stops following the old primary and
the old primary is fenced, ``primary`` from then on, with ``start_position``: the last position
the new primary took over (its next commit is ``start_position + 1``). The first node of a
cluster creates the record (epoch 1) naming its volume.

Fencing argument (docs/replication.md, "Promotion"): a node acknowledges a commit only while

1. its session is valid (renewed within the TTL minus the safety margin: the committer refuses
   every batch otherwise, lock-free writes included, and checks again when it answers the
   batch, so that a freeze between its write transaction and its answer withholds the
   acknowledgement: ``Node._confirm``), and
2. the epoch record it knows names its volume: a node reads the record before it writes its
   member key, and writes the key in an etcd transaction that fails if the record changed
   since; it watches the record and stops committing the moment it names another volume.

A promotion first bumps the record (``promoting``), then revokes the session of every member
on the old volume (a member key written later fails its compare). A node that hears of
neither stops committing within the TTL of its last renewal, which came before the revoke: so
once the promoting replica has waited one TTL after the revokes, no node on the old volume
commits or acknowledges again (what is left is the time from the last check to the send, the
window every lease scheme has). A synchronous promotion need not wait: every acknowledgement
there waits for the promoted replica's position, which no longer moves, and the only way to
stop waiting for it, a demotion, is an etcd transaction conditional on the epoch record
(``SyncGate``); the promotion's own delete of the replica's sync entry is acted on only after
the epoch is read again (``SyncGate._let_go``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from lockmgr import EtcdClient, EtcdUnavailable
from nodes.membership import cluster_prefix

log = logging.getLogger(__name__)

PROMOTING = "promoting"
PRIMARY = "primary"


def epoch_key(cluster: str) -> bytes:
    """The etcd key of the epoch record of ``cluster``."""
    return cluster_prefix(cluster) + b"epoch"


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: its number, the primary volume, and how it came to be."""

    epoch: int
    volume_id: str
    state: str  # PROMOTING | PRIMARY
    at: float
    by: str
    replica_id: str = ""  # the promoted replica (empty for epoch 1)
    previous_volume: str = ""
    start_position: int = 0  # the last position the new primary took over
    fence_wait_s: float = 0.0  # promoting: how long the old primary's nodes get to stop
    accept_loss: bool = False  # an asynchronous promotion: the old tail may be lost
    mod_revision: int = 0

    def encode(self) -> bytes:
        """The record as stored in etcd."""
        d = asdict(self)
        d.pop("mod_revision")
        return json.dumps(d).encode()

    @staticmethod
    def decode(raw: bytes, mod_revision: int) -> EpochRecord:
        """A record read from etcd.

        Raises:
            ValueError: it is not one.
        """
        try:
            d = json.loads(raw)
            return EpochRecord(int(d["epoch"]), str(d["volume_id"]), str(d["state"]),
                               float(d["at"]), str(d["by"]), str(d.get("replica_id", "")),
                               str(d.get("previous_volume", "")),
                               int(d.get("start_position", 0)),
                               float(d.get("fence_wait_s", 0.0)),
                               bool(d.get("accept_loss", False)), mod_revision)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed epoch record: {e}") from e

    def describe(self) -> str:
        """One line for messages: the epoch, its primary and where it came from."""
        how = f", promoted from replica {self.replica_id}" if self.replica_id else ""
        return f"epoch {self.epoch} (primary volume {self.volume_id}{how}, {self.state})"


def read_epoch(etcd: EtcdClient, cluster: str) -> EpochRecord | None:
    """The current epoch record, or None before the first node.

    Raises:
        EtcdUnavailable: etcd did not answer.
        ValueError: the record is malformed.
    """
    kv = etcd.get(epoch_key(cluster))
    return None if kv is None else EpochRecord.decode(kv.value, kv.mod_revision)


def claim_first(etcd: EtcdClient, cluster: str, volume_id: str, by: str) -> EpochRecord:
    """Create epoch 1 naming ``volume_id`` unless a record exists; return the record as it is.

    Raises:
        EtcdUnavailable: etcd did not answer.
    """
    rec = EpochRecord(1, volume_id, PRIMARY, time.time(), by)
    key = epoch_key(cluster)
    if etcd.txn_if_unchanged({key: 0}, [EtcdClient.put_op(key, rec.encode())]):
        log.info("cluster %s: epoch 1, primary volume %s", cluster, volume_id)
    got = read_epoch(etcd, cluster)
    if got is None:
        raise EtcdUnavailable("the epoch record vanished after it was created")
    return got


def replace_epoch(etcd: EtcdClient, cluster: str, old: EtcdRevision, new: EpochRecord,
                  *, also_unchanged: dict[bytes, int] | None = None,
                  ops: list[object] | None = None) -> bool:
    """Write ``new`` in place of the record at mod revision ``old`` (and run ``ops``), only if
    it and every key of ``also_unchanged`` are unchanged; return whether it was written.

    Raises:
        EtcdUnavailable: etcd did not answer.
    """
    key = epoch_key(cluster)
    return etcd.txn_if_unchanged({key: old, **(also_unchanged or {})},
                                 [EtcdClient.put_op(key, new.encode()), *(ops or [])])


EtcdRevision = int


class Superseded(Exception):
    """This node's volume is not the primary of the current epoch (a promotion made another
    volume the primary): the node must not commit, and stops."""


class EpochGuard:
    """A node's view of the epoch record, kept by a watch.

    ``check()`` raises ``Superseded`` once the record names another volume; ``compare()`` is
    the etcd compare that a node's member key (and a demotion) is written under.
    """

    def __init__(self, etcd: EtcdClient, cluster: str, volume_id: str, *, node_id: str,
                 on_superseded: Callable[[EpochRecord], None] = lambda r: None) -> None:
        self._etcd = etcd
        self._cluster = cluster
        self.volume_id = volume_id
        self._node_id = node_id
        self._on_superseded = on_superseded
        self._lock = threading.Lock()
        self.record: EpochRecord | None = None
        self.superseded: EpochRecord | None = None
        self._cancel: Callable[[], None] | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="epoch", daemon=True)

    def start(self, wait_s: float, *, may_claim: bool) -> EpochRecord:
        """Read the record (creating epoch 1 if there is none and ``may_claim``), wait while
        this volume is being promoted, and follow the record from then on.

        Raises:
            Superseded: the record names another volume (or none may be claimed).
            EtcdUnavailable: etcd did not answer.
            TimeoutError: a promotion of this volume did not finish within ``wait_s``.
        """
        deadline = time.monotonic() + wait_s
        while True:
            rec = read_epoch(self._etcd, self._cluster)
            if rec is None:
                if not may_claim:
                    raise Superseded(f"cluster {self._cluster} has no primary volume yet and "
                                     f"this volume ({self.volume_id}) is a replica's copy")
                rec = claim_first(self._etcd, self._cluster, self.volume_id, self._node_id)
            if rec.volume_id != self.volume_id:
                raise Superseded(self._message(rec))
            if rec.state == PRIMARY:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"this volume is being promoted ({rec.describe()}) and "
                                   f"the promotion did not finish within {wait_s:g} s")
            log.info("waiting for the promotion of this volume to finish: %s", rec.describe())
            time.sleep(0.1)
        with self._lock:
            self.record = rec
        self._watch(rec.mod_revision)
        self._thread.start()
        return rec

    def _message(self, rec: EpochRecord) -> str:
        return (f"volume {self.volume_id} is not the primary of cluster {self._cluster}: "
                f"{rec.describe()}; this volume was superseded and must not be written "
                f"again (copy it anew as a replica: docs/replication.md)")

    def _watch(self, revision: int) -> None:
        self._cancel = self._etcd.watch_prefix(epoch_key(self._cluster), revision + 1,
                                               self._on_events)

    def _on_events(self, events: list[tuple[bytes, bytes | None]] | None) -> None:
        # On the client's watch thread: no etcd call here. A record naming another volume is
        # acted on at once; the loop reads it again for its mod revision.
        for key, value in events or ():
            if key == epoch_key(self._cluster) and value is not None:
                try:
                    rec = EpochRecord.decode(value, 0)
                except ValueError as e:
                    log.error("%s", e)
                    continue
                if rec.volume_id != self.volume_id:
                    self._adopt(rec)
        self._wake.set()

    def _loop(self) -> None:
        """Read the record when the watch says it changed, and every second anyway (a watch
        can miss while etcd is away)."""
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
            except (EtcdUnavailable, ValueError):
                continue
            except Exception as e:  # nothing but close() may end this thread: a promotion
                # whose watch event was missed would then never stop this node committing
                log.warning("epoch: reading the record failed: %r", e)

    def refresh(self) -> None:
        """Read the record now (after a compare failed).

        Raises:
            EtcdUnavailable: etcd did not answer.
            ValueError: the record is malformed.
        """
        rec = read_epoch(self._etcd, self._cluster)
        if rec is not None:
            self._adopt(rec)

    def _adopt(self, rec: EpochRecord) -> None:
        with self._lock:
            cur = self.record
            if cur is not None and (rec.epoch, bool(rec.mod_revision)) < \
                    (cur.epoch, bool(cur.mod_revision)):
                return
            self.record = rec
            newly = rec.volume_id != self.volume_id and self.superseded is None
            if newly:
                self.superseded = rec
        if newly:
            log.error("%s", self._message(rec))
            self._on_superseded(rec)

    def check(self) -> None:
        """Refuse to go on once this volume is superseded.

        Raises:
            Superseded: it is.
        """
        s = self.superseded
        if s is not None:
            raise Superseded(self._message(s))

    def compare(self) -> dict[bytes, int]:
        """``{epoch key: mod revision}`` of the record this node runs under, for etcd
        transactions that must fail once the epoch changes."""
        self.check()
        with self._lock:
            rec = self.record
        if rec is None or not rec.mod_revision:
            raise Superseded("the epoch record is not known yet")
        return {epoch_key(self._cluster): rec.mod_revision}

    def close(self) -> None:
        """Stop following the record."""
        self._stop.set()
        self._wake.set()
        if self._cancel is not None:
            self._cancel()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
