"""Limits on what one client, and all clients together, can hold open on a node process.

Owns: the budgets of open interactive transactions, read-only snapshots and streams (per node
process and per client connection) and of the bytes open transactions buffer (per process),
the refusal when one is spent (``ResourceExhausted``, which names the limit:
RESOURCE_EXHAUSTED), and the watch that cancels a stream whose reader stopped taking messages.
Does not own what the budgets are spent on (``nodes/txn.py``,
``nodes/server.py``).

Why these: every process on the volume shares LMDB's reader table, and a read-only transaction
or a scan holds one of its slots until it ends; a server stream (and a client stream) holds one
of the node's gRPC worker threads for its whole life, and a reader that takes no message keeps
it there. Unbounded, one client could fill the reader table (every read and write on every node
then fails) or take every worker (the node stops answering, health checks included). With the
budgets, a process holds at most ``snapshots + streams + max_workers`` reader slots, which the
volume's reader table is sized for (``storage/lmdb_env.py``, ``DEFAULT_MAX_READERS``), and
streams leave most workers free for unary calls and health checks.

A client is one connection (gRPC's peer address, ``ipv4:HOST:PORT``): a client that opens many
connections gets a budget for each, but never more than the node's. With authentication (issue
11) it becomes the principal. ``docs/limits.md`` lists every limit and its default.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Per node process; ``*_per_client`` per client connection. See ``docs/limits.md``."""

    transactions: int = 1024  # open interactive transactions (read-write and read-only)
    transactions_per_client: int = 256
    snapshots: int = 256  # open read-only transactions (each holds an LMDB reader slot)
    snapshots_per_client: int = 64
    streams: int = 16  # open Scan streams (each holds a worker thread and a snapshot)
    streams_per_client: int = 8
    replication_streams: int = 16  # ReadLog, CopyVolume, StreamPositions (replicas)
    stream_stall_s: float = 30.0  # a stream whose reader takes nothing for this long ends
    queued_calls: int = 1024  # calls running or waiting for a worker; more: RESOURCE_EXHAUSTED
    transaction_bytes: int = 64 << 20  # writes one interactive transaction buffers (memory)
    buffered_bytes: int = 512 << 20  # ... all open transactions of the process together

    def validated(self) -> Limits:
        """Raises ValueError if a limit is not positive or a per-client one exceeds its
        node's."""
        for name, value in self.__dict__.items():
            if value <= 0:
                raise ValueError(f"limit {name} must be positive (got {value})")
        for name in ("transactions", "snapshots", "streams"):
            if getattr(self, f"{name}_per_client") > getattr(self, name):
                raise ValueError(f"limit {name}_per_client exceeds {name}")
        if self.snapshots > self.transactions:
            raise ValueError("limit snapshots exceeds transactions")
        if self.transaction_bytes > self.buffered_bytes:
            raise ValueError("limit transaction_bytes exceeds buffered_bytes")
        return self


DEFAULT_LIMITS = Limits()


class ResourceExhausted(Exception):
    """A limit is spent (RESOURCE_EXHAUSTED): nothing was done; retry when the client (or
    others) hold less. ``limit`` names it."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


def client_of(peer: str) -> str:
    """The client a call comes from: its connection (gRPC's ``context.peer()``)."""
    return peer or "unknown"


class Budget:
    """Counts of one kind of thing held, in all and per client, bounded by two limits."""

    def __init__(self, what: str, flag: str, total: int, per_client: int) -> None:
        self.what = what  # "open transactions"
        self.flag = flag  # "--max-transactions"
        self.total = total
        self.per_client = per_client
        self._mu = threading.Lock()
        self._held = 0
        self._by_client: dict[str, int] = {}

    @property
    def held(self) -> int:
        return self._held

    def take(self, client: str) -> None:
        """Count one more for ``client``.

        Raises:
            ResourceExhausted: the client's or the node's limit is reached.
        """
        with self._mu:
            mine = self._by_client.get(client, 0)
            if mine >= self.per_client:
                raise ResourceExhausted(
                    f"{self.flag}-per-client",
                    f"this client holds {mine} {self.what}, the limit per client "
                    f"({self.flag}-per-client); end some first (nothing was done)")
            if self._held >= self.total:
                raise ResourceExhausted(
                    self.flag,
                    f"the node holds {self._held} {self.what}, its limit ({self.flag}); "
                    f"retry later or on another node (nothing was done)")
            self._held += 1
            self._by_client[client] = mine + 1

    def give(self, client: str) -> None:
        """Count one fewer for ``client`` (one that ``take`` counted)."""
        with self._mu:
            mine = self._by_client.get(client, 0)
            if mine <= 0:
                return
            self._held -= 1
            if mine == 1:
                del self._by_client[client]
            else:
                self._by_client[client] = mine - 1

    @contextlib.contextmanager
    def holding(self, client: str) -> Iterator[None]:
        self.take(client)
        try:
            yield
        finally:
            self.give(client)


class ByteBudget:
    """Bytes held by all clients together (the writes that open transactions buffer), bounded
    by one limit."""

    def __init__(self, what: str, flag: str, total: int) -> None:
        self.what = what
        self.flag = flag
        self.total = total
        self._mu = threading.Lock()
        self._held = 0

    @property
    def held(self) -> int:
        return self._held

    def take(self, n: int) -> None:
        """Count ``n`` more bytes.

        Raises:
            ResourceExhausted: they would pass the limit (nothing is counted).
        """
        with self._mu:
            if self._held + n > self.total:
                raise ResourceExhausted(
                    self.flag,
                    f"the node's open transactions buffer {self._held >> 20} MiB of "
                    f"{self.what}, and this call's {max(1, n >> 20)} MiB would pass its limit "
                    f"({self.flag}, {self.total >> 20} MiB); commit or end transactions, or "
                    f"retry later or on another node (this call's writes were not applied)")
            self._held += n

    def give(self, n: int) -> None:
        """Count ``n`` fewer bytes (ones ``take`` counted)."""
        with self._mu:
            self._held = max(0, self._held - n)


class _Watched:
    __slots__ = ("cancel", "waiting_since", "what")

    def __init__(self, what: str, cancel: Callable[[], object]) -> None:
        self.what = what
        self.cancel = cancel
        self.waiting_since: float | None = None


class StreamWatch:
    """Ends streams whose reader took no message for ``stall_s``: a stream waits for its
    reader (gRPC's flow control) in the worker thread that runs it, so a reader that stops
    reading would keep that worker, and the stream's snapshot, forever."""

    def __init__(self, stall_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s = stall_s
        self._clock = clock
        self._mu = threading.Lock()
        self._streams: set[_Watched] = set()
        self.cancelled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="stream-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def watch(self, what: str, messages: Iterator[object], cancel: Callable[[], object]
              ) -> Iterator[object]:
        """``messages``, passed on, with the time spent waiting for the reader watched."""
        w = _Watched(what, cancel)
        with self._mu:
            self._streams.add(w)
        try:
            for m in messages:
                w.waiting_since = self._clock()
                yield m  # returns when gRPC has sent it and wants the next
                w.waiting_since = None
        finally:
            with self._mu:
                self._streams.discard(w)

    def check(self) -> int:
        """Cancel the stalled streams; return how many."""
        now = self._clock()
        with self._mu:
            stalled = [w for w in self._streams
                       if w.waiting_since is not None and now - w.waiting_since > self.stall_s]
        for w in stalled:
            log.warning("%s: its reader took no message for %.0f s; ending it", w.what,
                        self.stall_s)
            with self._mu:
                self._streams.discard(w)
                self.cancelled += 1
            w.cancel()
        return len(stalled)

    def _loop(self) -> None:
        while not self._stop.wait(min(1.0, self.stall_s / 4)):
            try:
                self.check()
            except Exception:  # the watch must outlive any one stream's failure
                log.exception("stream watch failed")


class Admission:
    """A node process's budgets and stream watch, from its ``Limits``."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = lim = (limits or Limits()).validated()
        self.transactions = Budget("open transactions", "--max-transactions",
                                   lim.transactions, lim.transactions_per_client)
        self.snapshots = Budget("open read-only transactions", "--max-snapshots",
                                lim.snapshots, lim.snapshots_per_client)
        self.streams = Budget("open Scan streams", "--max-streams", lim.streams,
                              lim.streams_per_client)
        self.replication = Budget("replication streams", "--max-replication-streams",
                                  lim.replication_streams, lim.replication_streams)
        self.buffered = ByteBudget("writes", "--max-buffered-mb", lim.buffered_bytes)
        self.watch = StreamWatch(lim.stream_stall_s)

    def start(self) -> None:
        self.watch.start()

    def stop(self) -> None:
        self.watch.stop()

    def in_use(self) -> dict[str, int]:
        """What is held now, by budget (for status and metrics)."""
        return {"transactions": self.transactions.held, "snapshots": self.snapshots.held,
                "streams": self.streams.held, "replication_streams": self.replication.held,
                "buffered_bytes": self.buffered.held}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The limits' flags, for ``shardless node`` (an ``argparse.ArgumentParser``)."""
    d = Limits()
    add = p.add_argument
    add("--max-transactions", type=int, default=d.transactions,
        help="open interactive transactions per node process; beyond: RESOURCE_EXHAUSTED")
    add("--max-transactions-per-client", type=int, default=d.transactions_per_client,
        help="... per client connection")
    add("--max-snapshots", type=int, default=d.snapshots,
        help="open read-only transactions per node process (each holds an LMDB reader slot, "
             "shared by every process on the volume)")
    add("--max-snapshots-per-client", type=int, default=d.snapshots_per_client,
        help="... per client connection")
    add("--max-streams", type=int, default=d.streams,
        help="open Scan streams per node process (each holds a gRPC worker)")
    add("--max-streams-per-client", type=int, default=d.streams_per_client,
        help="... per client connection")
    add("--max-replication-streams", type=int, default=d.replication_streams,
        help="open replication streams (ReadLog, CopyVolume, StreamPositions) per node process")
    add("--stream-stall-timeout", type=float, default=d.stream_stall_s, metavar="SECONDS",
        help="end a stream whose reader took no message for this long")
    add("--max-queued-calls", type=int, default=d.queued_calls,
        help="calls running or waiting for a worker; beyond: RESOURCE_EXHAUSTED")
    add("--max-transaction-mb", type=int, default=d.transaction_bytes >> 20, metavar="MIB",
        help="writes one interactive transaction may buffer before its commit (encoded keys "
             "and rows, plus 256 bytes a row); beyond: RESOURCE_EXHAUSTED for the call")
    add("--max-buffered-mb", type=int, default=d.buffered_bytes >> 20, metavar="MIB",
        help="... all open transactions of the node process together")


def from_arguments(args: argparse.Namespace) -> Limits:
    """The ``Limits`` that ``add_arguments``' flags give."""
    return Limits(transactions=args.max_transactions,
                  transactions_per_client=args.max_transactions_per_client,
                  snapshots=args.max_snapshots,
                  snapshots_per_client=args.max_snapshots_per_client,
                  streams=args.max_streams,
                  streams_per_client=args.max_streams_per_client,
                  replication_streams=args.max_replication_streams,
                  stream_stall_s=args.stream_stall_timeout,
                  queued_calls=args.max_queued_calls,
                  transaction_bytes=args.max_transaction_mb << 20,
                  buffered_bytes=args.max_buffered_mb << 20)
