"""Calls made in a background thread, and what came of them, for tests that need a call to be
in flight while they do something else (freeze its node, take its lock, kill a peer).

Owns: :class:`Call`, :func:`in_thread` and :func:`join`. Does not own any client or cluster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from shardless import abort_reason


@dataclass
class Call:
    """The outcome of a call made in a background thread."""

    started: float = 0.0
    ended: float = 0.0
    result: Any = None
    error: grpc.RpcError | None = None
    unexpected: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK if self.error is None else self.error.code()

    @property
    def reason(self) -> str | None:
        return None if self.error is None else abort_reason(self.error)

    @property
    def elapsed(self) -> float:
        return self.ended - self.started

    def describe(self) -> str:
        if self.unexpected is not None:
            return f"raised {self.unexpected!r}"
        if self.error is not None:
            return (f"{self.code.name} ({self.reason}): {self.error.details()} after "
                    f"{self.elapsed:.2f}s")
        return f"OK {self.result!r} after {self.elapsed:.2f}s"


def in_thread(fn: Callable[..., Any], *args: Any,
              barrier: threading.Barrier | None = None) -> tuple[threading.Thread, Call]:
    """Start ``fn(*args)`` in a daemon thread (after ``barrier``, if given); return the thread
    and the :class:`Call` it fills in."""
    call = Call()

    def run() -> None:
        try:
            if barrier is not None:
                barrier.wait(timeout=10)
            call.started = time.monotonic()
            call.result = fn(*args)
        except grpc.RpcError as e:
            call.error = e
        except BaseException as e:  # reported by the test
            call.unexpected = e
        finally:
            call.ended = time.monotonic()
            call.done.set()

    t = threading.Thread(target=run, daemon=True)
    call.thread = t
    t.start()
    return t, call


def join(t: threading.Thread, call: Call, timeout_s: float, what: str) -> Call:
    """Wait for the call; fail the test if it is still running or raised a non-gRPC error."""
    t.join(timeout_s)
    assert not t.is_alive(), f"{what} did not finish within {timeout_s:.0f}s"
    assert call.unexpected is None, f"{what}: {call.describe()}"
    return call
