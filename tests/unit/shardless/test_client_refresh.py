"""The client's member refresh (``Client._refresh_loop``): a member list it cannot use (two host
names, which one gRPC target cannot name) is refused whole, and the thread goes on, so that a
later usable list is still taken up. Before, ``_use`` raised out of the thread, which died,
having changed ``addresses`` without a channel for them."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from shardless import connect


def test_an_unusable_member_list_is_refused_and_the_refresh_goes_on() -> None:
    db = connect(["127.0.0.1:1"], refresh_s=None)  # no server needed: channels are lazy
    lists = [["db1.example:5000", "db2.example:5000"],  # unusable: several host names
             ["127.0.0.1:2", "127.0.0.1:3"]]
    answers = iter([lists[0], lists[0], lists[1]])
    done = threading.Event()
    seen: list[list[str]] = []  # the client's addresses at each refresh

    def status() -> SimpleNamespace:
        seen.append(list(db.addresses))
        try:
            members = next(answers)
        except StopIteration:
            done.set()
            members = lists[1]
        return SimpleNamespace(members=[SimpleNamespace(address=a) for a in members])

    db.status = status  # type: ignore[method-assign]
    before = db.target
    t = threading.Thread(target=db._refresh_loop, args=(0.01,), daemon=True)
    t.start()
    try:
        assert done.wait(5), "the refresh thread stopped"
        deadline = time.monotonic() + 5
        while db.addresses != lists[1] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert db.addresses == lists[1] and db.target != before
        assert seen[:3] == [["127.0.0.1:1"]] * 3  # the unusable list was never taken up
    finally:
        db.close()
        t.join(5)
    assert not t.is_alive()
