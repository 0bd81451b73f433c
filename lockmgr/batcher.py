"""Lock requests of concurrent transactions of one process, sent in shared etcd transactions.

Owns: :class:`Batcher`. A transaction's lock request (its entries to put, and the names whose
queues it must read) is handed to the batcher's thread, which sends everything waiting in one
etcd transaction (puts first, then one range per distinct name, then the two session lists),
as the group committer shares one storage sync among commits. Nobody waits for company: the
thread sends as soon as it is free, so requests gather only while an etcd call is in flight.
Does not own: what the entries mean or when they are granted (``manager.py``), nor retries.

Invariants:

* One etcd transaction holds at most ``max_ops`` operations, and requests of one session only
  (a request on a lease that is gone fails its whole etcd transaction).
* Entries put in one etcd transaction share a create revision, so none of them is "earlier"
  than another (``entries.py``). Two requests go in one etcd transaction only if every pair of
  their entries on the same resource is compatible; otherwise the later one waits for the next.
* Every request gets an answer: the revision and what it asked to read, or the error of the
  etcd transaction that carried it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from lockmgr import resource
from lockmgr.entries import Request
from lockmgr.errors import EtcdUnavailable
from lockmgr.etcd import EtcdClient, KeyValue

ANSWER_WAIT_S = 60.0

log = logging.getLogger(__name__)

Reads = dict[str, list[KeyValue]]
"""What an etcd transaction read: every key under each resource name asked for."""


@dataclass(frozen=True)
class Answer:
    """What one request got back: the etcd revision of its puts, the entries of each name it
    asked to read, and the session markers and liveness keys read in the same transaction."""

    revision: int
    reads: Reads
    markers: list[KeyValue]
    live: list[KeyValue]


@dataclass
class _Ask:
    lease_id: int
    requests: Sequence[Request]
    names: list[str]
    future: Future[Answer] = field(default_factory=Future)

    def cost(self, known: set[str]) -> int:
        return len(self.requests) + len([n for n in self.names if n not in known])


class Batcher:
    """Sends lock requests of this process's transactions together; see the module docstring."""

    def __init__(self, client: EtcdClient, cluster: str, *, max_ops: int = 128) -> None:
        self._client = client
        self.cluster = cluster
        self.max_ops = max(max_ops, 8)
        self._cond = threading.Condition()
        self._waiting: list[_Ask] = []
        self._stopped = False
        self.etcd_txns = 0
        self.requests = 0
        self._thread = threading.Thread(target=self._run, name="lock-batcher", daemon=True)
        self._thread.start()

    def put_and_read(self, lease_id: int, requests: Sequence[Request]) -> Answer:
        """Put ``requests``' entries (``key`` and ``value()`` set) on ``lease_id`` and read the
        queues they must look at, in one etcd transaction shared with other requests.

        Raises:
            SessionExpired: the lease is gone.
            EtcdUnavailable: etcd did not answer; the entries may or may not have been put.
        """
        names = list(dict.fromkeys(n for r in requests for n in r.read_names()))
        ask = _Ask(lease_id, requests, names)
        with self._cond:
            if self._stopped:
                raise RuntimeError("the lock batcher is closed")
            self._waiting.append(ask)
            self._cond.notify()
        try:
            return ask.future.result(timeout=ANSWER_WAIT_S)
        except TimeoutError as e:  # the etcd call has its own timeout; this is a safety net
            raise EtcdUnavailable("no answer from the lock batcher") from e

    def close(self) -> None:
        """Answer what is queued, then stop."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiting or self._stopped)
                if not self._waiting:
                    return
                batch, self._waiting = self._take(self._waiting)
            try:
                self._send(batch)
            except Exception as e:  # a bug, a malformed answer: fail the batch, go on
                # Nothing but close() may end this thread: every later lock request of the
                # process would wait on a dead batcher (and fail) for as long as it runs.
                log.warning("lock batcher: a batch failed: %r", e)
                failure = EtcdUnavailable(f"the lock batch failed ({e!r}); its entries may "
                                          f"or may not have been put")
                for ask in batch:
                    if not ask.future.done():
                        ask.future.set_exception(failure)

    def _take(self, waiting: list[_Ask]) -> tuple[list[_Ask], list[_Ask]]:
        """The asks that go together now, and those left for later (in arrival order)."""
        batch: list[_Ask] = []
        later: list[_Ask] = []
        names: set[str] = set()
        by_name: dict[str, list[Request]] = {}
        budget = self.max_ops - 2  # the two session lists
        for ask in waiting:
            fits = not later and (not batch or (
                ask.lease_id == batch[0].lease_id and ask.cost(names) <= budget and all(
                    r.compatible(o) for r in ask.requests for o in by_name.get(r.name, ()))))
            if not fits:
                later.append(ask)
                continue
            budget -= ask.cost(names)
            names.update(ask.names)
            batch.append(ask)
            for r in ask.requests:
                by_name.setdefault(r.name, []).append(r)
        return batch, later

    def _send(self, batch: list[_Ask]) -> None:
        ops: list[Any] = [EtcdClient.put_op(r.key, r.value(), ask.lease_id)
                          for ask in batch for r in ask.requests]
        names = list(dict.fromkeys(n for ask in batch for n in ask.names))
        first_read = len(ops)
        ops.extend(EtcdClient.range_op(resource.resource_prefix(self.cluster, n)) for n in names)
        ops.append(EtcdClient.range_op(resource.sessions_prefix(self.cluster), keys_only=True))
        ops.append(EtcdClient.range_op(resource.live_prefix(self.cluster), keys_only=True))
        try:
            rev, results = self._client.txn(ops)
        except Exception as e:  # every request of the etcd transaction shares its fate
            for ask in batch:
                ask.future.set_exception(e)
            return
        self.etcd_txns += 1
        self.requests += len(batch)
        reads = {n: results[first_read + i] or [] for i, n in enumerate(names)}
        markers, live = results[-2] or [], results[-1] or []
        for ask in batch:
            ask.future.set_result(Answer(rev, {n: reads[n] for n in ask.names}, markers, live))
