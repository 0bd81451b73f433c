"""The one table that maps domain errors to gRPC status codes, and the guards for servicers.

Every servicer method is wrapped by ``unary`` or ``stream``: a known error becomes its status
code with its message; anything else is logged with its traceback and becomes INTERNAL. A node
never crashes on a request. Each call also passes the node's ``gate``, which refuses new calls
with UNAVAILABLE once the node is leaving (before any work is done), though calls for the
transactions still open on it pass until they end or the grace period is over. NB: servicers raise
domain errors and never call ``context.abort`` themselves (it raises a bare ``Exception`` that
the guard would re-map).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from lockmgr import Aborted, EtcdUnavailable, SessionExpired
from nodes.commit import CommitTimeout, KeyAbandoned, Unavailable
from nodes.epoch import Superseded
from nodes.limits import ResourceExhausted, client_of
from nodes.replication import NotReplicated, PositionNotReached, ReadOnlyReplica
from nodes.txn import TxnAborted, UnknownTransaction, WrongNode
from storage import (
    AlreadyExists,
    ConditionFailed,
    Corrupt,
    Fenced,
    InvalidInput,
    LogTruncated,
    MapFull,
    NotFound,
    ReadersFull,
    StorageError,
)

DOMAIN = "shardless.dev"
NOT_APPLIED = "NOT_APPLIED"
CLOSE_RETRY_S, CLOSE_TRIES = 0.05, 600  # closing an ended stream still in a step: 30 s at most

log = logging.getLogger(__name__)

# Most specific first: the first matching class wins.
CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (TxnAborted, grpc.StatusCode.ABORTED),
    (Aborted, grpc.StatusCode.ABORTED),
    (Fenced, grpc.StatusCode.ABORTED),
    (WrongNode, grpc.StatusCode.FAILED_PRECONDITION),
    (UnknownTransaction, grpc.StatusCode.NOT_FOUND),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (ConditionFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (MapFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ReadersFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Corrupt, grpc.StatusCode.DATA_LOSS),
    (LogTruncated, grpc.StatusCode.OUT_OF_RANGE),
    (StorageError, grpc.StatusCode.INTERNAL),
    (EtcdUnavailable, grpc.StatusCode.UNAVAILABLE),
    (SessionExpired, grpc.StatusCode.UNAVAILABLE),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Superseded, grpc.StatusCode.UNAVAILABLE),
    (NotReplicated, grpc.StatusCode.UNAVAILABLE),
    (PositionNotReached, grpc.StatusCode.UNAVAILABLE),
    (ReadOnlyReplica, grpc.StatusCode.FAILED_PRECONDITION),
    (CommitTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
]


def code_for(e: BaseException) -> grpc.StatusCode | None:
    """Status code for a domain error, or None if it is not one."""
    for cls, code in CODES:
        if isinstance(e, cls):
            return code
    return None


def abort_reason(e: BaseException) -> str | None:
    """The ErrorInfo reason an ABORTED status carries for ``e`` (None if not an abort)."""
    if isinstance(e, TxnAborted):
        return e.reason
    if isinstance(e, Fenced):
        return "FENCED"
    if isinstance(e, Aborted):
        return str(getattr(e, "reason", "aborted")).upper()
    return None


def detail_reason(e: BaseException) -> tuple[str, dict[str, str]] | None:
    """The ErrorInfo reason (and metadata) that a FAILED_PRECONDITION or RESOURCE_EXHAUSTED
    status carries for ``e``, so that a client tells its meanings apart without reading the
    message; None for errors without one."""
    if isinstance(e, KeyAbandoned):
        return "KEY_ABANDONED", {}
    if isinstance(e, ConditionFailed):
        return "CONDITION_FAILED", {}
    if isinstance(e, WrongNode):
        return "WRONG_NODE", {}
    if isinstance(e, ReadOnlyReplica):
        return "READ_ONLY", {}
    if isinstance(e, ResourceExhausted):
        return "LIMIT", {"limit": e.limit}
    if isinstance(e, ReadersFull):
        return "READERS_FULL", {}
    if isinstance(e, MapFull):
        return "VOLUME_FULL", {}
    return None


def _abort_with(context: grpc.ServicerContext, code: int, message: str, reason: str,
                metadata: dict[str, str] | None = None) -> None:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {}))
    context.abort_with_status(rpc_status.to_status(status_pb2.Status(
        code=code, message=message, details=[info])))


def _abort(context: grpc.ServicerContext, e: Exception, method: str) -> None:
    reason = abort_reason(e)
    if reason is not None:
        _abort_with(context, code_pb2.ABORTED, f"{reason}: {e}", reason)
    code = code_for(e)
    if code is None:
        log.exception("%s failed", method)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {e!r}")
    if code == grpc.StatusCode.UNAVAILABLE and not getattr(e, "applied_unknown", False):
        # Every UNAVAILABLE a node raises comes before any effect (refused at the gate, or etcd
        # unreachable while locking); say so, unlike a transport failure, which is ambiguous.
        _abort_with(context, code_pb2.UNAVAILABLE, str(e), NOT_APPLIED)
    detail = detail_reason(e)
    if detail is not None and code in (grpc.StatusCode.FAILED_PRECONDITION,
                                       grpc.StatusCode.RESOURCE_EXHAUSTED):
        _abort_with(context, code.value[0], str(e), *detail)
    context.abort(code, str(e))


F = TypeVar("F", bound=Callable[..., Any])


def _continuing(request: Any) -> bool:
    """Whether a request belongs to an interactive transaction that is already open."""
    return bool(getattr(request, "transaction_id", ""))


def unary(fn: F) -> F:
    """Guard a unary servicer method (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            with self.node.gate.enter(_continuing(request)):
                return fn(self, request, context)
        except Exception as e:
            _abort(context, e, fn.__name__)

    return wrapper  # type: ignore[return-value]


def _streaming(fn: F, budget: str) -> F:
    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        out = guarded(self, request, context)

        def ended(tries: int = 0) -> None:
            # A stream that ends early (cancelled by its client or by the stall watch) is no
            # longer iterated, and gRPC only drops it: close it here, so that its snapshot and
            # budget are given back now rather than whenever the garbage collector gets to it.
            try:
                out.close()
            except ValueError:  # its worker is in it: try again once that step is over
                if tries < CLOSE_TRIES:
                    threading.Timer(CLOSE_RETRY_S, ended, (tries + 1,)).start()

        context.add_callback(ended)
        return out

    def guarded(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            with self.node.gate.enter(_continuing(request)):
                admission = self.node.admission
                peer = context.peer()
                with getattr(admission, budget).holding(client_of(peer)):
                    yield from admission.watch.watch(f"{fn.__name__} stream to {peer}",
                                                     fn(self, request, context),
                                                     context.cancel)
        except Exception as e:
            _abort(context, e, fn.__name__)

    return wrapper  # type: ignore[return-value]


def stream(fn: F) -> F:
    """Guard a server-streaming servicer method (see the module docstring); the stream counts
    in the node's and its client's stream budgets (``nodes/limits.py``) and ends if its reader
    stalls."""
    return _streaming(fn, "streams")


def replication_stream(fn: F) -> F:
    """``stream`` for a replica's streams, which have a budget of their own: client scans
    never keep a replica from following."""
    return _streaming(fn, "replication")


class _Undecodable:
    """What a request that does not decode as its message type is replaced with."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class _LogNowAndThen:
    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last = -every_s
        self.skipped = 0

    def __call__(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            self.skipped += 1
            return
        self._last = now
        log.warning(msg + " (%d more like it not logged)", *args, self.skipped)
        self.skipped = 0


_log_undecodable = _LogNowAndThen(10.0)


def _refuse_undecodable(request: Any, context: grpc.ServicerContext, method: str) -> None:
    if isinstance(request, _Undecodable):
        _log_undecodable("%s: a request that is not a valid message refused: %s", method,
                         request.error)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"the request is not a valid message for {method}: {request.error}")


class DecodeGuard(grpc.ServerInterceptor):
    """Answers INVALID_ARGUMENT to a request that does not decode, instead of gRPC's INTERNAL
    "Exception deserializing request!" and a traceback in the log for each; such requests are
    logged once in a while. Install on every server (``interceptors=[DecodeGuard()]``)."""

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        decode = handler.request_deserializer

        def safe(raw: bytes) -> Any:
            try:
                return decode(raw)
            except Exception as e:
                return _Undecodable(f"{type(e).__name__}: {e}")

        def checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            for r in requests:
                _refuse_undecodable(r, context, method)
                yield r

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            def uu(request: Any, context: grpc.ServicerContext) -> Any:
                _refuse_undecodable(request, context, method)
                return inner_uu(request, context)
            return handler._replace(request_deserializer=safe, unary_unary=uu)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            def us(request: Any, context: grpc.ServicerContext) -> Any:
                _refuse_undecodable(request, context, method)
                return inner_us(request, context)
            return handler._replace(request_deserializer=safe, unary_stream=us)
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary
            return handler._replace(request_deserializer=safe, stream_unary=lambda it, ctx:
                                    inner_su(checked(it, ctx), ctx))
        inner_ss = handler.stream_stream
        return handler._replace(request_deserializer=safe, stream_stream=lambda it, ctx:
                                inner_ss(checked(it, ctx), ctx))
