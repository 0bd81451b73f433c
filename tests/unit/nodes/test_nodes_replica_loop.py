"""The replica's follow loop (``Replica._run``): nothing but a stop ends it, not even a failure
in the code that handles a failure (discarding a copy that lost its place, an automatic
promotion). Pure loop logic: the replica's parts are replaced by stand-ins."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import grpc

from nodes import replica as replica_mod
from nodes.replica import Replica, _LostPlace


class _Unreachable(grpc.RpcError):
    pass


def _stand_in(turns: list[str], raises: list[BaseException]) -> Any:
    r = Replica.__new__(Replica)  # no process, no etcd: only what the loop touches
    r.stop_requested = threading.Event()
    r.cfg = SimpleNamespace(replica_id="r-test")
    r.store = object()
    r._epoch_changed = threading.Event()

    def watch_epoch() -> None:
        turns.append("turn")
        if raises:
            raise raises.pop(0)
        r.stop_requested.set()  # the turn after the failures: stop

    r._watch_epoch = watch_epoch
    r._check_epoch = lambda: True
    r._publish_quietly = lambda: None
    return r


def test_a_failure_while_handling_a_failure_does_not_end_the_loop(monkeypatch) -> None:
    monkeypatch.setattr(replica_mod, "RETRY_S", 0.01)
    turns: list[str] = []
    r = _stand_in(turns, [_LostPlace("parted"), _Unreachable()])

    def discard() -> None:
        raise OSError("the copy could not be removed")

    def promote() -> None:
        raise _Unreachable()  # not among the errors its handler expects

    r._discard_copy = discard
    r._maybe_promote_self = promote
    t = threading.Thread(target=r._run, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "the loop did not stop when asked"
    assert turns == ["turn", "turn", "turn"]  # both failures survived, then the stop
