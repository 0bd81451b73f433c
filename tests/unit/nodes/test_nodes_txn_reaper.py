"""Unit test of nodes.txn's reaper thread: it outlives a failing abort."""

from __future__ import annotations

import time

from nodes.txn import TransactionManager
from storage import Store
from storage.memory import MemoryEngine


def test_the_reaper_outlives_a_failing_abort_and_reaps_every_idle_transaction() -> None:
    now = [0.0]
    store = Store(MemoryEngine())
    tm = TransactionManager("n1", "a", store, None, None,  # type: ignore[arg-type]
                            idle_timeout_s=1.0, clock=lambda: now[0])
    try:
        ids = {tm.begin(read_only=True).txn_id for _ in range(2)}
        real_abort, failures = tm.abort, {"left": 1}

        def abort(txn_id: str, reason: str, detail: str) -> None:
            if failures["left"]:
                failures["left"] -= 1
                raise RuntimeError("a snapshot that would not close")
            real_abort(txn_id, reason, detail)

        tm.abort = abort  # type: ignore[method-assign]
        now[0] = 10.0  # both idle for longer than the timeout
        deadline = time.monotonic() + 5
        while {t.txn_id for t in tm.open_transactions()} & ids and time.monotonic() < deadline:
            time.sleep(0.02)
        assert failures["left"] == 0
        assert not {t.txn_id for t in tm.open_transactions()} & ids, "the reaper died"
    finally:
        tm.close()
        store.close()
