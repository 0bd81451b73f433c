"""Unit tests of nodes.bench.memory: RSS reading, which member pids are local node processes,
and the warm-up/end/growth bookkeeping of the sampler (driven by a manual clock)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from nodes.bench import memory
from nodes.bench.memory import Sampler, local_pids, mapped_kb, rss_kb


def test_rss_of_this_process_and_of_no_process() -> None:
    """Our own RSS is a positive number of KiB; a pid that does not exist gives None."""
    assert (rss_kb(os.getpid()) or 0) > 1000
    assert rss_kb(2**22 + 12345) is None
    assert (mapped_kb(os.getpid()) or 0) > 0  # the interpreter's own mapped files
    assert mapped_kb(2**22 + 12345) is None


def test_local_pids_keep_live_node_processes_on_loopback_only() -> None:
    """A member counts when its address is loopback and its pid runs 'nodes node'."""
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "nodes",
                             "node"])
    try:
        deadline = time.monotonic() + 10
        cmdline = Path(f"/proc/{fake.pid}/cmdline")
        while b"nodes" not in cmdline.read_bytes():  # has the child exec'd yet?
            assert time.monotonic() < deadline
            time.sleep(0.01)
        members = [("n1", "127.0.0.1:5001", fake.pid), ("n2", "10.1.2.3:5001", fake.pid),
                   ("n3", "127.0.0.1:5002", os.getpid()), ("n4", "127.0.0.1:5003", 0)]
        assert local_pids(members) == {"n1": fake.pid}
    finally:
        fake.kill()
        fake.wait()


class Clock:
    """A manual clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_warm_up_ends_with_the_first_round_and_growth_is_measured_from_it(monkeypatch) -> None:
    """The figure at the end of the first Shardless round is the warm-up one; growth runs
    from it to the last sample; a short run is marked indicative (met is None)."""
    clock = Clock()
    rss = iter([100_000, 104_000, 110_000])
    monkeypatch.setattr(memory, "rss_kb", lambda pid: next(rss))
    s = Sampler({"node-1": 1}, interval_s=1000, clock=clock)  # no thread: samples at ends
    for _ in range(3):
        with s.active("round"):
            clock.now += 5
    out = s.summary()
    assert out["warm_rss_kb"] == {"node-1": 100_000}
    assert out["end_rss_kb"] == {"node-1": 110_000}
    assert out["growth_pct"] == {"node-1": 10.0} and out["total_growth_pct"] == 10.0
    assert out["loaded_s"] == 15 and out["loaded_after_warm_s"] == 10
    assert out["met"] is None
    assert [x["rss_kb"]["node-1"] for x in out["samples"]] == [100_000, 104_000, 110_000]


def test_a_long_run_is_judged_against_the_target(monkeypatch) -> None:
    """After ten minutes of load past warm-up, under 10% growth is met and more is not."""
    for last, met in ((109_000, True), (111_000, False)):
        clock = Clock()
        rss = iter([100_000, last])
        monkeypatch.setattr(memory, "rss_kb", lambda pid, rss=rss: next(rss))
        s = Sampler({"node-1": 1}, interval_s=1000, clock=clock)
        with s.active("warm"):
            clock.now += 60
        with s.active("long"):
            clock.now += 601
        assert s.summary()["met"] is met
