"""Lock escalation on a real cluster: a transaction writing sequential integer keys ends up
holding page locks, and blocks writers of those pages only.

An int64 page is 64 consecutive keys (``storage/pages.py``) and a transaction escalates on its
33rd row lock of a page (``lockmgr.table.DEFAULT_ESCALATE_AFTER``). What this pins down,
through the locks that ``Status`` reads from etcd:

* an interactive transaction that writes keys 0-99 one call at a time holds X on both pages
  (0-63 and 64-127) and only the 32 row locks per page it took before escalating;
* a one-shot writer of a key in another page commits at once while it is open;
* a writer of a key it never wrote, but in one of its escalated pages, waits for its commit.
"""

from __future__ import annotations

import time

import pytest

from shardless import connect
from tests.harness.calls import in_thread, join
from tests.harness.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

KEYS = 100
ESCALATE_AFTER = 32


def test_a_writer_of_100_sequential_int_keys_holds_page_locks_not_row_locks(
        make_cluster) -> None:  # type: ignore[no-untyped-def]
    """Keys 0-99 written one call at a time: X on pages 0-63 and 64-127 and 32 row locks in
    each; a key of another page commits meanwhile, key 120 (escalated page, never written)
    waits until the commit."""
    c: Cluster = make_cluster(n=1)
    db = connect([c[0].address], refresh_s=None)
    other = connect([c[0].address], refresh_s=None)
    th = None
    try:
        db.create_table("seq", {"id": "int64", "v": "string"}, primary_key="id")
        t = db.begin()
        for k in range(KEYS):
            t.upsert("seq", {"id": k, "v": "loaded"})
        mine = [(li.resource, li.mode, li.granted) for li in db.status().locks
                if li.transaction_id == t.id]
        pages = sorted((res, mode) for res, mode, _ in mine if res.startswith("p/"))
        rows = [res for res, _, _ in mine if res.startswith("r/")]
        x_pages = [res for res, mode in pages if mode == "X"]
        assert len(x_pages) == 2, pages
        assert all(granted for _, _, granted in mine), mine
        assert len(rows) == 2 * ESCALATE_AFTER, (len(rows), rows[:5])

        started = time.monotonic()
        other.upsert("seq", {"id": 1000, "v": "another page"})  # page 960-1023: not blocked
        assert time.monotonic() - started < 5.0

        th, call = in_thread(lambda: other.upsert("seq", {"id": 120, "v": "escalated page"}))
        time.sleep(1.0)
        assert th.is_alive(), f"a write into an escalated page did not wait: {call.describe()}"
        t.commit()
        join(th, call, 20, "the write into the escalated page")
        assert call.error is None, call.describe()
        got = {r["id"] for r in db.scan("seq")}
        assert got == set(range(KEYS)) | {120, 1000}
    finally:
        other.close()
        db.close()
