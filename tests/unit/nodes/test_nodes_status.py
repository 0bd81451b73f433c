"""Unit tests of nodes.status: the one table from domain errors to gRPC status codes."""

from __future__ import annotations

import grpc
import pytest

from lockmgr import Aborted, EtcdUnavailable, LockError, SessionExpired
from nodes.commit import CommitTimeout, Unavailable
from nodes.epoch import Superseded
from nodes.limits import ResourceExhausted
from nodes.replication import NotReplicated, PositionNotReached, ReadOnlyReplica
from nodes.status import CODES, code_for
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

# The error table of docs/api.md ("Errors"), class by class.

DOCUMENTED: dict[type[BaseException], grpc.StatusCode] = {
    TxnAborted: grpc.StatusCode.ABORTED,
    Aborted: grpc.StatusCode.ABORTED,
    Fenced: grpc.StatusCode.ABORTED,
    WrongNode: grpc.StatusCode.FAILED_PRECONDITION,
    UnknownTransaction: grpc.StatusCode.NOT_FOUND,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    ConditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    MapFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ReadersFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Corrupt: grpc.StatusCode.DATA_LOSS,
    LogTruncated: grpc.StatusCode.OUT_OF_RANGE,
    NotReplicated: grpc.StatusCode.UNAVAILABLE,
    PositionNotReached: grpc.StatusCode.UNAVAILABLE,
    ReadOnlyReplica: grpc.StatusCode.FAILED_PRECONDITION,
    StorageError: grpc.StatusCode.INTERNAL,
    EtcdUnavailable: grpc.StatusCode.UNAVAILABLE,
    SessionExpired: grpc.StatusCode.UNAVAILABLE,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Superseded: grpc.StatusCode.UNAVAILABLE,
    CommitTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
}


@pytest.mark.parametrize(("cls", "code"), list(DOCUMENTED.items()),
                         ids=[c.__name__ for c in DOCUMENTED])
def test_each_domain_error_maps_to_its_documented_code(cls: type[Exception],
                                                       code: grpc.StatusCode):
    """An instance of each domain error class gets the code docs/api.md gives it."""
    if cls is TxnAborted:
        err = cls("REASON", "message")
    elif cls is LogTruncated:
        err = cls("message", oldest=1)
    elif cls is ResourceExhausted:
        err = cls("--max-streams", "message")
    else:
        err = cls("message")
    assert code_for(err) == code


def test_the_table_covers_exactly_the_documented_errors():
    """Every class in CODES is documented here, and every documented class is in CODES."""
    assert {cls for cls, _ in CODES} == set(DOCUMENTED)
    assert {cls: code for cls, code in CODES} == DOCUMENTED


def test_a_subclass_of_a_domain_error_maps_like_its_parent():
    """A more specific error that nobody listed still gets its parent's code."""

    class RowTooWide(InvalidInput):
        pass

    class Frozen(Unavailable):
        pass

    assert code_for(RowTooWide("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_for(Frozen("x")) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("error", [ValueError("x"), KeyError("k"), RuntimeError("bug"),
                                   TimeoutError(), Exception("plain"), LockError("root"),
                                   KeyboardInterrupt()])
def test_an_unknown_exception_maps_to_none(error: BaseException):
    """Anything that is not a listed domain error has no code (the guard makes it INTERNAL)."""
    assert code_for(error) is None


def test_failed_precondition_and_resource_exhausted_tell_their_meanings_apart():
    """Each FAILED_PRECONDITION and RESOURCE_EXHAUSTED error carries a reason of its own."""
    from nodes.commit import KeyAbandoned
    from nodes.status import detail_reason

    cases = {
        ConditionFailed("x"): "CONDITION_FAILED",
        KeyAbandoned("x"): "KEY_ABANDONED",
        WrongNode("x"): "WRONG_NODE",
        ReadOnlyReplica("x"): "READ_ONLY",
        ResourceExhausted("--max-streams", "x"): "LIMIT",
        ReadersFull("x"): "READERS_FULL",
        MapFull("x"): "VOLUME_FULL",
    }
    for err, reason in cases.items():
        got = detail_reason(err)
        assert got is not None and got[0] == reason, (err, got)
        assert code_for(err) in (grpc.StatusCode.FAILED_PRECONDITION,
                                 grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert detail_reason(ResourceExhausted("--max-streams", "x"))[1] == {  # type: ignore[index]
        "limit": "--max-streams"}
    assert detail_reason(InvalidInput("x")) is None
