"""A node process's Prometheus metrics: its registry, its instruments, the gRPC interceptor that
counts and times calls, and the HTTP endpoint that serves them (``--metrics-listen``).

Owns: :class:`NodeMetrics` (one per node process, with a registry of its own: nothing is
registered at import time, so tests and several nodes in one process never share a series),
:class:`CallMetrics` (the server interceptor), :class:`NodeCollector` (figures read when
scraped), the exposition server, and :func:`merge_scrapes`, which the supervisor of a node of
several processes uses to serve its workers' metrics as one (``nodes/workers.py``). Does not
own: the figures that already live as plain counters where they are kept (the group
committer's commits by kind, the transaction manager's aborts, the lock manager's deadlocks):
those are read at scrape time, so the request path pays nothing for them. ``lockmgr`` knows
nothing of Prometheus: it takes plain callbacks (``WaitObserver``, ``CallObserver``) that
:class:`NodeMetrics` provides. Every metric is listed in docs/operations.md, "Metrics".

The cost on the request path, per gRPC call: two ``perf_counter`` reads, a dict lookup of the
method's instruments (made once per method and code, then cached), one counter increment and
one histogram observation (each takes prometheus_client's per-metric lock briefly). Per group
commit: one histogram observation; per lock wait and per etcd round trip: one. Nothing else.

Several processes per node (``--processes K``): every worker is a whole node process with its
own registry, served on a loopback port of its own; the supervisor serves the node's
``--metrics-listen`` by scraping its workers and itself when it is scraped, and answers every
series once per process, labelled ``worker`` (the worker's member id, or ``supervisor``). Sum
over ``worker`` for the node. prometheus_client's multiprocess mode was the other choice; it
keeps no process collector (no resident memory per process), needs a shared directory cleaned
at each start, and cannot say which worker a figure came from.
"""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

if TYPE_CHECKING:
    from nodes.node import Node

log = logging.getLogger(__name__)

CALL_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                  5.0, 10.0)
LOCK_WAIT_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SCRAPE_TIMEOUT_S = 2.0  # the supervisor's scrape of one worker


def parse_listen(spec: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``--metrics-listen``) into host and port.

    Raises:
        ValueError: it is not HOST:PORT.
    """
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--metrics-listen {spec!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsServer:
    """The HTTP endpoint serving ``/metrics`` of one registry (prometheus_client's own server,
    on a daemon thread)."""

    def __init__(self, registry: Collector, listen: str) -> None:
        host, port = parse_listen(listen)
        try:
            self._httpd, self._thread = start_http_server(port, host, registry=registry)
        except OSError as e:
            raise RuntimeError(f"cannot serve metrics on {listen}: {e}") from e
        self.host = host
        self.port = int(self._httpd.server_port)

    @property
    def url(self) -> str:
        """Where the metrics are, ``http://host:port/metrics``."""
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class NodeMetrics:
    """The metrics of one node process: a registry of its own and the instruments the request
    path feeds (see the module docstring for what each costs)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.calls = Counter("shardless_grpc_calls", "gRPC calls answered, by method and "
                             "status code", ["service", "method", "code"], registry=r)
        self.call_seconds = Histogram("shardless_grpc_call_duration_seconds", "Time from a "
                                      "call's arrival to its answer (streams: to their end)",
                                      ["service", "method"], buckets=CALL_BUCKETS_S, registry=r)
        self.group_size = Histogram("shardless_commit_group_size", "Requests planned in each "
                                    "group commit's write transaction (applied or refused)",
                                    buckets=GROUP_BUCKETS, registry=r)
        self.lock_wait_seconds = Histogram("shardless_lock_wait_seconds", "Waits for a "
                                           "conflicting lock entry, by how they ended",
                                           ["outcome"], buckets=LOCK_WAIT_BUCKETS_S,
                                           registry=r)
        self.etcd_seconds = Histogram("shardless_etcd_request_duration_seconds", "etcd round "
                                      "trips, by client method", ["op"],
                                      buckets=CALL_BUCKETS_S, registry=r)
        self.etcd_failures = Counter("shardless_etcd_request_failures", "etcd round trips that "
                                     "failed (timeout, no endpoint, refused), by client method",
                                     ["op"], registry=r)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU, open fds (Linux)
        self._etcd: dict[str, Any] = {}
        self._server: MetricsServer | None = None

    # -- the observers handed to the parts ---------------------------------------------------

    def observe_group(self, size: int) -> None:
        """``GroupCommitter(on_group=...)``."""
        self.group_size.observe(size)

    def observe_lock_wait(self, seconds: float, outcome: str) -> None:
        """``LockManager(on_wait=...)``."""
        self.lock_wait_seconds.labels(outcome).observe(seconds)

    def observe_etcd_call(self, op: str, seconds: float, failed: bool) -> None:
        """``EtcdClient(on_call=...)``."""
        child = self._etcd.get(op)
        if child is None:
            child = self._etcd[op] = self.etcd_seconds.labels(op)
        child.observe(seconds)
        if failed:
            self.etcd_failures.labels(op).inc()

    def interceptor(self) -> CallMetrics:
        """The server interceptor that counts and times this process's calls."""
        return CallMetrics(self.calls, self.call_seconds)

    def watch(self, node: Node) -> None:
        """Read ``node``'s own figures whenever the metrics are scraped."""
        self.registry.register(NodeCollector(node))

    # -- serving -------------------------------------------------------------------------------

    def serve(self, listen: str) -> str:
        """Serve ``/metrics`` on ``listen`` (HOST:PORT; port 0: any free one); return the URL.

        Raises:
            RuntimeError: the address could not be bound.
        """
        self._server = MetricsServer(self.registry, listen)
        return self._server.url

    def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None:
            self._server.close()
            self._server = None


# -- gRPC calls ---------------------------------------------------------------------------------


class CallMetrics(grpc.ServerInterceptor):
    """Counts every call by service, method and status code, and times it. Install before
    ``DecodeGuard`` (``interceptors=[metrics.interceptor(), DecodeGuard()]``), so that what the
    guard refuses is counted too. A call that raises without a code set is counted UNKNOWN, a
    stream that its client left CANCELLED."""

    def __init__(self, calls: Counter, seconds: Histogram) -> None:
        self._calls = calls
        self._seconds = seconds
        # Per method: (its histogram child, its counter children by code). Filled once per
        # method and code; a race fills one twice with the same children, which is harmless.
        self._by_method: dict[str, tuple[Any, dict[Any, Any]]] = {}

    def _record(self, method: str, code: Any, seconds: float) -> None:
        got = self._by_method.get(method)
        if got is None:
            service, _, name = method.lstrip("/").rpartition("/")
            got = self._by_method[method] = (self._seconds.labels(service, name), {})
        got[0].observe(seconds)
        counter = got[1].get(code)
        if counter is None:
            service, _, name = method.lstrip("/").rpartition("/")
            counter = got[1][code] = self._calls.labels(service, name, code.name)
        counter.inc()

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:  # no such method: gRPC answers UNIMPLEMENTED (not counted)
            return None
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_unary(handler.unary_unary, self._record,
                                                       method))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=_unary(handler.stream_unary, self._record,
                                                        method))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_streaming(handler.unary_stream,
                                                            self._record, method))
        return handler._replace(stream_stream=_streaming(handler.stream_stream, self._record,
                                                         method))


_OK, _UNKNOWN, _CANCELLED = (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN,
                             grpc.StatusCode.CANCELLED)
_Record = Callable[[str, Any, float], None]


def _unary(inner: Callable[[Any, Any], Any], record: _Record, method: str
           ) -> Callable[[Any, Any], Any]:
    """``inner`` (a unary-response handler), recorded when it answers."""
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        start = time.perf_counter()
        try:
            out = inner(request, context)
        except BaseException:
            record(method, context.code() or _UNKNOWN, time.perf_counter() - start)
            raise
        record(method, context.code() or _OK, time.perf_counter() - start)
        return out
    return call


def _streaming(inner: Callable[[Any, Any], Iterator[Any]], record: _Record, method: str
               ) -> Callable[[Any, Any], Iterator[Any]]:
    """``inner`` (a streaming-response handler), recorded when its stream ends."""
    def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        start = time.perf_counter()
        code = None
        try:
            yield from inner(request, context)
        except GeneratorExit:
            code = _CANCELLED
            raise
        except BaseException:
            code = _UNKNOWN
            raise
        finally:
            record(method, context.code() or code or _OK, time.perf_counter() - start)
    return call


# -- figures read when scraped ----------------------------------------------------------------

_VOLUME_BYTES = [
    ("map_used_bytes", "shardless_volume_map_used_bytes",
     "Bytes of the LMDB map in use (pages up to the last one written)"),
    ("map_size", "shardless_volume_map_size_bytes",
     "The LMDB map size: the volume's size limit (--map-size)"),
    ("file_bytes", "shardless_volume_file_bytes", "Length of the volume's data file"),
    ("disk_bytes", "shardless_volume_disk_bytes",
     "Bytes the volume's data file takes on disk (it is sparse)"),
]


class NodeCollector(Collector):
    """The node's figures that are kept elsewhere, read at scrape time: commits by kind,
    aborts, deadlocks, open transactions, lock waiters, the volume's size and reader slots.
    A part not started yet (or gone) is left out."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterable[Metric]:
        node = self._node
        info = GaugeMetricFamily("shardless_node_info", "This node process (always 1)",
                                 labels=["node_id", "version"])
        info.add_metric([node.cfg.node_id, _version()], 1)
        yield info
        yield from self._commits(node)
        yield from self._transactions(node)
        yield from self._locks(node)
        yield from self._volume(node)

    @staticmethod
    def _commits(node: Node) -> Iterator[Metric]:
        c = node.committer
        if c is None:
            return
        commits = CounterMetricFamily("shardless_commits", "Requests applied by group commit, "
                                      "by kind (one_shot, interactive, ddl, settle, grants)",
                                      labels=["kind"])
        for kind, n in sorted(dict(c.commits_by_kind).items()):
            commits.add_metric([kind], n)
        yield commits
        yield CounterMetricFamily("shardless_commit_groups", "Group commits (write "
                                  "transactions) that committed", value=c.batches)

    @staticmethod
    def _transactions(node: Node) -> Iterator[Metric]:
        t = node.txns
        if t is None:
            return
        aborts = CounterMetricFamily("shardless_transaction_aborts", "Transactions aborted, "
                                     "by kind (interactive, one_shot) and reason",
                                     labels=["kind", "reason"])
        for (kind, reason), n in sorted(dict(t.aborts).items()):
            aborts.add_metric([kind, reason], n)
        yield aborts
        open_ = GaugeMetricFamily("shardless_open_transactions", "Interactive transactions "
                                  "open on this process", labels=["mode"])
        txns = t.open_transactions()
        ro = sum(1 for x in txns if x.read_only)
        open_.add_metric(["read_write"], len(txns) - ro)
        open_.add_metric(["read_only"], ro)
        yield open_

    @staticmethod
    def _locks(node: Node) -> Iterator[Metric]:
        lm = node.locks
        if lm is None:
            return
        yield GaugeMetricFamily("shardless_lock_waiting_transactions", "Transactions of this "
                                "process waiting for a lock now", value=len(lm.waiting()))
        yield CounterMetricFamily("shardless_deadlocks_found", "Deadlocks this process's "
                                  "detector broke (it aborts the youngest)",
                                  value=lm.deadlocks_found)
        yield CounterMetricFamily("shardless_lock_requests", "Lock requests sent to etcd",
                                  value=lm.batcher.requests)
        yield CounterMetricFamily("shardless_lock_etcd_txns", "etcd transactions that carried "
                                  "lock requests (batches)", value=lm.batcher.etcd_txns)

    @staticmethod
    def _volume(node: Node) -> Iterator[Metric]:
        store = node.store
        if store is None:
            return
        try:
            info = store.info()
        except Exception as e:  # closed meanwhile, or failing: the scrape goes on without it
            log.debug("metrics: volume info failed: %s", e)
            return
        for key, name, doc in _VOLUME_BYTES:
            if key in info:
                yield GaugeMetricFamily(name, doc, value=info[key])
        if "reader_slots_held" in info:
            slots = GaugeMetricFamily("shardless_lmdb_reader_slots", "LMDB reader slots: held "
                                      "(bound to a process) or reading (in a snapshot now), of "
                                      "the volume (all its processes) or of this process",
                                      labels=["scope", "state"])
            for scope, suffix in (("volume", ""), ("process", "_here")):
                for state in ("held", "reading"):
                    slots.add_metric([scope, state], info[f"reader_slots_{state}{suffix}"])
            yield slots
        if "max_readers" in info:
            yield GaugeMetricFamily("shardless_lmdb_reader_slots_max", "Size of the volume's "
                                    "reader table", value=info["max_readers"])


def _version() -> str:
    from nodes.node import VERSION

    return VERSION


# -- several processes per node ------------------------------------------------------------------


def merge_scrapes(scrapes: Iterable[tuple[str, str | None]]) -> list[Metric]:
    """Merge the expositions of a node's processes into one: each ``(worker, text)`` (text
    None: the worker did not answer) has its samples labelled ``worker``; families of one
    name become one family; ``shardless_worker_up`` says which workers answered. Pure.

    Raises:
        ValueError: a text is not the Prometheus exposition format.
    """
    families: dict[str, Metric] = {}
    up = GaugeMetricFamily("shardless_worker_up", "Whether the node's process answered the "
                           "supervisor's scrape (1) or not (0)", labels=["worker"])
    for worker, text in scrapes:
        up.add_metric([worker], 0 if text is None else 1)
        if text is None:
            continue
        for fam in text_string_to_metric_families(text):
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type,
                                                     fam.unit)
            merged.samples.extend(
                Sample(s.name, {**s.labels, "worker": worker}, s.value, s.timestamp,
                       s.exemplar) for s in fam.samples)
    return [up, *families.values()]


class WorkersCollector(Collector):
    """A supervisor's view of its node (``nodes/workers.py``): its workers' metrics, scraped
    from their own ports when this is scraped, and its own process's, merged by
    :func:`merge_scrapes`."""

    def __init__(self, workers: Callable[[], list[tuple[str, str]]]) -> None:
        self._workers = workers  # (worker id, its metrics URL), as they are now
        self._own = CollectorRegistry()
        ProcessCollector(registry=self._own)

    def collect(self) -> Iterable[Metric]:
        scrapes: list[tuple[str, str | None]] = [
            ("supervisor", generate_latest(self._own).decode())]
        for worker, url in self._workers():
            try:
                with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as resp:
                    scrapes.append((worker, resp.read().decode()))
            except OSError as e:
                log.info("metrics: worker %s did not answer at %s: %s", worker, url, e)
                scrapes.append((worker, None))
        yield from merge_scrapes(scrapes)


def serve_workers(listen: str, workers: Callable[[], list[tuple[str, str]]]) -> MetricsServer:
    """Serve the merged metrics of a node's processes on ``listen`` (see
    :class:`WorkersCollector`).

    Raises:
        RuntimeError: the address could not be bound.
    """
    registry = CollectorRegistry()
    registry.register(WorkersCollector(workers))
    return MetricsServer(registry, listen)

