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
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from lockmgr import Aborted, EtcdUnavailable, SessionExpired
from nodes.commit import CommitTimeout, Unavailable
from nodes.epoch import Superseded
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
    StorageError,
)

DOMAIN = "shardless.dev"
NOT_APPLIED = "NOT_APPLIED"

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


def _abort(context: grpc.ServicerContext, e: Exception, method: str) -> None:
    reason = abort_reason(e)
    if reason is not None:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN))
        context.abort_with_status(rpc_status.to_status(status_pb2.Status(
            code=code_pb2.ABORTED, message=f"{reason}: {e}", details=[info])))
    code = code_for(e)
    if code is None:
        log.exception("%s failed", method)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {e!r}")
    if code == grpc.StatusCode.UNAVAILABLE and not getattr(e, "applied_unknown", False):
        # Every UNAVAILABLE a node raises comes before any effect (refused at the gate, or etcd
        # unreachable while locking); say so, unlike a transport failure, which is ambiguous.
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=NOT_APPLIED, domain=DOMAIN))
        context.abort_with_status(rpc_status.to_status(status_pb2.Status(
            code=code_pb2.UNAVAILABLE, message=str(e), details=[info])))
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


def stream(fn: F) -> F:
    """Guard a server-streaming servicer method (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            with self.node.gate.enter(_continuing(request)):
                yield from fn(self, request, context)
        except Exception as e:
            _abort(context, e, fn.__name__)

    return wrapper  # type: ignore[return-value]
