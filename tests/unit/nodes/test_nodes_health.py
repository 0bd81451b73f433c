"""Unit test of the node's health loop (nodes.node.Node._health_loop) on a stand-in node:
it outlives a check that fails unexpectedly."""

from __future__ import annotations

import threading
import time

from nodes import node as node_mod
from nodes.node import Node


class _Node:
    """What the health loop uses of a node: a check that fails unexpectedly twice, then
    finds the node well."""

    def __init__(self) -> None:
        self._stopped = threading.Event()
        self.failures = 2
        self.statuses: list[bool] = []

    def cannot_serve(self) -> str:
        if self.failures:
            self.failures -= 1
            raise OSError("the volume's directory went away")
        return ""

    def _set_health(self, serving: bool) -> None:
        self.statuses.append(serving)


def test_the_health_loop_outlives_a_failing_check_and_says_serving_again(monkeypatch) -> None:
    monkeypatch.setattr(node_mod, "HEALTH_CHECK_S", 0.01)
    fake = _Node()
    t = threading.Thread(target=Node._health_loop, args=(fake,), daemon=True)  # type: ignore[arg-type]
    t.start()
    try:
        deadline = time.monotonic() + 5
        while fake.statuses != [False, True] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.statuses == [False, True], "the health thread died"
        assert t.is_alive()
    finally:
        fake._stopped.set()
        t.join(5)
