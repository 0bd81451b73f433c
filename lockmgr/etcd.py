"""The only module that talks to the etcd client library (``etcd3``, from python3-etcd3).

Owns: the connection to one or more etcd endpoints, and the few etcd operations the lock
manager needs (put with lease, range by prefix, delete, lease grant / keepalive / revoke / time
to live), each bounded by a timeout. Translates every client failure into ``EtcdUnavailable``.
Does not own: what keys mean (callers build keys) or any retry policy beyond endpoint failover.

NB: python3-etcd3 0.13's watch thread refers to ``six`` without importing it, so when a watch
stream breaks (an etcd member dies) it crashes before telling the watchers, and a lock waiter
would sleep until its lock timeout. We give the module the one function it needs
(``_patch_watch_module``), so that every watcher is called with the error and re-checks.

NB: python3-etcd3 marks an endpoint failed for ``time_retry`` seconds after one error and refuses
it meanwhile; with several endpoints we set ``time_retry`` short (``ENDPOINT_RETRY_S``), so a
member that comes back is used again at once.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import etcd3
import grpc
from etcd3 import etcdrpc
from etcd3 import events as etcd_events
from etcd3 import exceptions as etcd_exceptions

from lockmgr.errors import EtcdUnavailable, SessionExpired

ENDPOINT_RETRY_S = 0.5


def _patch_watch_module() -> None:
    """Supply ``six.itervalues`` to ``etcd3.watch`` if it lacks it (see the module docstring)."""
    import types

    from etcd3 import watch as etcd_watch

    if not hasattr(etcd_watch, "six"):
        etcd_watch.six = types.SimpleNamespace(  # type: ignore[attr-defined]
            itervalues=lambda d: iter(list(d.values())))


_patch_watch_module()
_ERRORS = (etcd_exceptions.Etcd3Exception, grpc.RpcError, ValueError)

CallObserver = Callable[[str, float, bool], None]
"""``on_call(op, seconds, failed)``: told of every etcd round trip as it ends (``op`` names the
client method: ``txn``, ``put``, ``keepalive``...). Called on the calling thread; keep it cheap
(``nodes/metrics.py`` observes a histogram). Watches are streams, not round trips: not told."""

F = TypeVar("F", bound=Callable[..., Any])


def _timed(op: str) -> Callable[[F], F]:
    """Tell the client's ``on_call`` (if any) how long each call of the method took."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def timed(self: EtcdClient, *args: Any, **kwargs: Any) -> Any:
            observe = self.on_call
            if observe is None:
                return fn(self, *args, **kwargs)
            start, failed = time.perf_counter(), True
            try:
                out = fn(self, *args, **kwargs)
                failed = False
                return out
            finally:
                observe(op, time.perf_counter() - start, failed)

        return timed  # type: ignore[return-value]

    return wrap


@dataclass(frozen=True)
class KeyValue:
    """One key read from etcd."""

    key: bytes
    value: bytes
    lease_id: int
    create_revision: int
    mod_revision: int


def parse_endpoints(spec: str | Sequence[str]) -> list[tuple[str, int]]:
    """Parse ``"host:port,host:port"`` (or a list of such) into (host, port) pairs.

    Raises:
        ValueError: an endpoint has no valid port.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        item = item.strip().removeprefix("http://").removeprefix("https://")
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"etcd endpoint {item!r} is not HOST:PORT")
        out.append((host or "127.0.0.1", int(port)))
    if not out:
        raise ValueError("no etcd endpoint given")
    return out


@dataclass(frozen=True)
class EtcdTls:
    """TLS towards etcd: the CA (PEM) its certificate is checked against, and a client
    certificate and key (PEM) for an etcd run with ``--client-cert-auth``."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None


class EtcdClient:
    """A client over one or more etcd endpoints with per-call timeouts; ``on_call`` (a
    :data:`CallObserver`, settable later) hears of every round trip."""

    def __init__(self, endpoints: str | Sequence[str], *, timeout_s: float = 2.0,
                 tls: EtcdTls | None = None, on_call: CallObserver | None = None) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.timeout_s = timeout_s
        self.on_call = on_call
        creds = None if tls is None else grpc.ssl_channel_credentials(
            root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert)
        eps = [etcd3.Endpoint(h, p, secure=creds is not None, creds=creds,
                              time_retry=ENDPOINT_RETRY_S)
               for h, p in self.endpoints]
        self._client = etcd3.MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout_s,
                                                      failover=True)

    @_timed("grant")
    def grant(self, ttl_s: int) -> tuple[int, int]:
        """Grant a lease; return (lease id, granted TTL in seconds)."""
        try:
            lease = self._client.lease(ttl_s)
            return int(lease.id), int(lease.ttl)
        except _ERRORS as e:
            raise EtcdUnavailable(f"etcd lease grant failed: {e!r}") from e

    @_timed("keepalive")
    def keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; return its remaining TTL (<= 0: the lease is gone)."""
        try:
            for resp in self._client.refresh_lease(lease_id):
                return int(resp.TTL)
        except _ERRORS as e:
            raise EtcdUnavailable(f"etcd lease keepalive failed: {e!r}") from e
        raise EtcdUnavailable("etcd lease keepalive got no answer")

    @_timed("time_to_live")
    def time_to_live(self, lease_id: int) -> int:
        """Remaining TTL of a lease as etcd sees it (-1: the lease is gone)."""
        try:
            return int(self._client.get_lease_info(lease_id).TTL)
        except _ERRORS as e:
            raise EtcdUnavailable(f"etcd lease lookup failed: {e!r}") from e

    @_timed("revoke")
    def revoke(self, lease_id: int) -> None:
        """Revoke a lease; every key attached to it is deleted."""
        try:
            self._client.revoke_lease(lease_id)
        except _ERRORS as e:
            raise EtcdUnavailable(f"etcd lease revoke failed: {e!r}") from e

    @_timed("put")
    def put(self, key: bytes, value: bytes, lease_id: int = 0) -> None:
        """Write a key, attached to a lease when ``lease_id`` is set."""
        try:
            self._client.put(key, value, lease=lease_id or None)
        except _ERRORS as e:
            raise EtcdUnavailable(f"etcd put failed: {e!r}") from e

    @_timed("delete")
    def delete(self, key: bytes) -> bool:
        """Delete a key; return whether it existed."""
        try:
            return bool(self._client.delete(key))
        except _ERRORS as e:
            raise EtcdUnavailable(f"etcd delete failed: {e!r}") from e

    @_timed("get_prefix")
    def get_prefix(self, prefix: bytes) -> list[KeyValue]:
        """Every key under ``prefix``, in key order."""
        try:
            out = []
            for value, meta in self._client.get_prefix(prefix, sort_order="ascend"):
                out.append(KeyValue(meta.key, value, int(meta.lease_id),
                                    int(meta.create_revision), int(meta.mod_revision)))
            return out
        except _ERRORS as e:
            raise EtcdUnavailable(f"etcd range failed: {e!r}") from e

    # -- transactions (raw stubs: we need the revision of each transaction) -------------------

    @staticmethod
    def put_op(key: bytes, value: bytes, lease_id: int = 0) -> Any:
        """A put for :meth:`txn`."""
        return etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key, value=value,
                                                                lease=lease_id))

    @staticmethod
    def delete_op(key: bytes) -> Any:
        """A delete of one key for :meth:`txn`."""
        return etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=key))

    @staticmethod
    def get_op(key: bytes) -> Any:
        """A read of exactly ``key`` for :meth:`txn` (values left out)."""
        return etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key, keys_only=True))

    @staticmethod
    def range_op(prefix: bytes, keys_only: bool = False) -> Any:
        """A read of every key under ``prefix`` for :meth:`txn` (values left out if
        ``keys_only``)."""
        return etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(
            key=prefix, range_end=_prefix_end(prefix), keys_only=keys_only))

    @_timed("txn")
    def txn(self, ops: list[Any]) -> tuple[int, list[list[KeyValue] | None]]:
        """Run ``ops`` in one etcd transaction (no compare).

        Returns:
            The transaction's revision, and per op the keys read (range ops) or None.

        Raises:
            SessionExpired: a put named a lease that no longer exists.
            EtcdUnavailable: etcd did not answer.
        """
        req = etcdrpc.TxnRequest(compare=[], success=ops, failure=[])
        try:
            resp = self._client.kvstub.Txn(req, self.timeout_s)
        except grpc.RpcError as e:
            raise self._translate(e) from e
        except _ERRORS as e:  # e.g. no endpoint available right now
            raise EtcdUnavailable(f"etcd transaction failed: {e!r}") from e
        out: list[list[KeyValue] | None] = []
        for r in resp.responses:
            if r.HasField("response_range"):
                out.append([KeyValue(kv.key, kv.value, kv.lease, kv.create_revision,
                                     kv.mod_revision) for kv in r.response_range.kvs])
            else:
                out.append(None)
        return int(resp.header.revision), out

    @_timed("create_if_absent")
    def create_if_absent(self, key: bytes, value: bytes, lease_id: int) -> tuple[bool, KeyValue]:
        """Create ``key`` on ``lease_id`` unless it exists; return (created, the key as it is).

        Raises:
            SessionExpired: the lease no longer exists.
            EtcdUnavailable: etcd did not answer.
        """
        cmp = etcdrpc.Compare(key=key, result=etcdrpc.Compare.EQUAL,
                              target=etcdrpc.Compare.CREATE, create_revision=0)
        get = etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key))
        req = etcdrpc.TxnRequest(compare=[cmp], success=[self.put_op(key, value, lease_id), get],
                                 failure=[get])
        try:
            resp = self._client.kvstub.Txn(req, self.timeout_s)
        except grpc.RpcError as e:
            raise self._translate(e) from e
        except _ERRORS as e:
            raise EtcdUnavailable(f"etcd transaction failed: {e!r}") from e
        kvs = resp.responses[-1].response_range.kvs
        if not kvs:
            raise EtcdUnavailable(f"{key!r} vanished during create")
        kv = kvs[0]
        return bool(resp.succeeded), KeyValue(kv.key, kv.value, kv.lease, kv.create_revision,
                                              kv.mod_revision)

    @_timed("get")
    def get(self, key: bytes) -> KeyValue | None:
        """One key, or None."""
        try:
            resp = self._client.kvstub.Range(etcdrpc.RangeRequest(key=key), self.timeout_s)
        except grpc.RpcError as e:
            raise self._translate(e) from e
        except _ERRORS as e:
            raise EtcdUnavailable(f"etcd range failed: {e!r}") from e
        if not resp.kvs:
            return None
        kv = resp.kvs[0]
        return KeyValue(kv.key, kv.value, kv.lease, kv.create_revision, kv.mod_revision)

    def _translate(self, e: grpc.RpcError) -> Exception:
        details = e.details() if hasattr(e, "details") else ""
        if "lease not found" in (details or ""):
            return SessionExpired(f"etcd: {details}")
        try:  # let the client mark the endpoint failed, so the next call fails over
            self._client._manage_grpc_errors(e)
        except Exception:
            pass
        try:
            # ... and move to another endpoint now: the client moves only when a call comes
            # while the failed mark lasts (``ENDPOINT_RETRY_S``), so a caller that retries
            # more slowly than that would go back to the dead endpoint every time.
            _ = self._client.channel
        except Exception:  # every endpoint is marked failed: the next call tries again
            pass
        return EtcdUnavailable(f"etcd call failed: {e.code() if hasattr(e, 'code') else e}: "
                               f"{details}")

    def watch_delete(self, key: bytes, start_revision: int,
                     callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (on the client's watch thread) once ``key`` is deleted at or after
        ``start_revision``, or if the watch fails; return a function that cancels the watch.

        Raises:
            EtcdUnavailable: the watch could not be created.
        """
        fired = threading.Event()

        def on_event(resp: Any) -> None:
            if fired.is_set():
                return
            # An error, or None when the client closed the stream (it does so whenever it fails
            # over to another member), ends the watch: wake the waiter to look again.
            if resp is None or isinstance(resp, Exception) or any(
                    isinstance(ev, etcd_events.DeleteEvent)
                    for ev in getattr(resp, "events", ())):
                fired.set()
                callback()

        return self._watch(self._client.add_watch_callback, key, on_event, start_revision)

    def _watch(self, add: Callable[..., Any], key: bytes, on_event: Callable[[Any], None],
               start_revision: int) -> Callable[[], None]:
        """Create a watch with ``add`` (the client's key or prefix variant); return its
        cancel function.

        Raises:
            EtcdUnavailable: the watch could not be created.
        """
        try:
            watch_id = add(key, on_event, start_revision=start_revision)
        except _ERRORS as e:
            raise EtcdUnavailable(f"etcd watch failed: {e!r}") from e

        def cancel() -> None:
            try:
                self._client.cancel_watch(watch_id)
            except _ERRORS:
                pass

        return cancel

    # -- plain key-value use (the ``shardless bench`` etcd baseline) ---------------------------

    @staticmethod
    def read_op(key: bytes) -> Any:
        """A read of exactly ``key`` with its value, for :meth:`txn`."""
        return etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key))

    @_timed("range")
    def range(self, start: bytes, end: bytes, limit: int = 0) -> list[KeyValue]:
        """Keys from ``start`` (inclusive) to ``end`` (exclusive) in key order, at most
        ``limit`` of them (0: all), with their values, read at one revision.

        Raises:
            EtcdUnavailable: etcd did not answer.
        """
        req = etcdrpc.RangeRequest(key=start, range_end=end, limit=limit)
        try:
            resp = self._client.kvstub.Range(req, self.timeout_s)
        except grpc.RpcError as e:
            raise self._translate(e) from e
        except _ERRORS as e:
            raise EtcdUnavailable(f"etcd range failed: {e!r}") from e
        return [KeyValue(kv.key, kv.value, kv.lease, kv.create_revision, kv.mod_revision)
                for kv in resp.kvs]

    @_timed("txn_if_unchanged")
    def txn_if_unchanged(self, revisions: Mapping[bytes, int], ops: list[Any]) -> bool:
        """Run ``ops`` in one etcd transaction only if every key in ``revisions`` still has
        that mod revision (0: the key does not exist); return whether they ran.

        Raises:
            SessionExpired: a put named a lease that no longer exists.
            EtcdUnavailable: etcd did not answer.
        """
        compare = [etcdrpc.Compare(key=k, result=etcdrpc.Compare.EQUAL,
                                   target=etcdrpc.Compare.MOD, mod_revision=rev)
                   for k, rev in revisions.items()]
        req = etcdrpc.TxnRequest(compare=compare, success=ops, failure=[])
        try:
            resp = self._client.kvstub.Txn(req, self.timeout_s)
        except grpc.RpcError as e:
            raise self._translate(e) from e
        except _ERRORS as e:
            raise EtcdUnavailable(f"etcd transaction failed: {e!r}") from e
        return bool(resp.succeeded)

    def watch_puts(self, prefix: bytes, start_revision: int,
                   callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (on the client's watch thread) for every put under ``prefix`` at
        or after ``start_revision``, and if the watch fails; return a function that cancels
        the watch.

        Raises:
            EtcdUnavailable: the watch could not be created.
        """
        def on_event(resp: Any) -> None:
            if resp is None or isinstance(resp, Exception) or any(
                    isinstance(ev, etcd_events.PutEvent) for ev in getattr(resp, "events", ())):
                callback()

        return self._watch(self._client.add_watch_prefix_callback, prefix, on_event,
                           start_revision)

    def watch_prefix(self, prefix: bytes, start_revision: int,
                     callback: Callable[[list[tuple[bytes, bytes | None]] | None], None]
                     ) -> Callable[[], None]:
        """Call ``callback`` (on the client's watch thread) with the changes under ``prefix``
        at or after ``start_revision``, ``(key, value)`` each (value None: deleted), or with
        None when the watch failed or ended (read everything again then); return a function
        that cancels the watch.

        Raises:
            EtcdUnavailable: the watch could not be created.
        """
        def on_event(resp: Any) -> None:
            if resp is None or isinstance(resp, Exception):
                callback(None)
                return
            callback([(ev.key, None if isinstance(ev, etcd_events.DeleteEvent) else ev.value)
                      for ev in getattr(resp, "events", ())])

        return self._watch(self._client.add_watch_prefix_callback, prefix, on_event,
                           start_revision)

    def close(self) -> None:
        """Close the channels."""
        self._client.close()


def _prefix_end(prefix: bytes) -> bytes:
    """The etcd range end that covers every key starting with ``prefix``."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\x00"
