"""Unit tests of nodes.deathwatch's killing of frozen peers: the lock file's contents, and that
only the very process that holds a peer's lock file is killed, once its lease is gone (real
child processes; etcd's answer is given by a function)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nodes import deathwatch
from nodes.deathwatch import DeathWatch, parse_lock_file, process_start


def test_a_lock_file_names_its_process_and_leases() -> None:
    assert parse_lock_file("# pid 12 start 345\na1\nff\n") == (12, "345", [0xA1, 0xFF])
    assert parse_lock_file("a1\n") == (0, "", [0xA1])  # a file of an older version


def peer(tmp_path: Path, lease: int, hold: bool) -> tuple[subprocess.Popen[bytes], Path]:
    """A child process, stopped, with a peer's lock file naming it (held open if ``hold``)."""
    path = tmp_path / "nodes" / "peer.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    code = (f"import os, signal, time\nf = open({str(path)!r})\n" if hold else
            "import os, signal, time\n") + "os.kill(os.getpid(), signal.SIGSTOP)\ntime.sleep(60)\n"
    child = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 10
    while deathwatch.process_state(child.pid) != "T":
        assert time.monotonic() < deadline, "the child did not stop"
        time.sleep(0.01)
    path.write_text(f"# pid {child.pid} start {process_start(child.pid)}\n{lease:x}\n")
    return child, path


@pytest.mark.parametrize("hold", [True, False])
def test_a_stopped_peer_is_killed_once_its_lease_is_gone_only_if_it_holds_its_file(
        tmp_path: Path, hold: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deathwatch, "FROZEN_GRACE_S", 0.0)
    child, path = peer(tmp_path, 0xA1, hold)
    alive = {0xA1: True}
    dw = DeathWatch(str(tmp_path), "me", revoke=lambda lease: None,
                    lease_ttl=lambda lease: 3 if alive[lease] else -1)
    try:
        dw._watching.add(str(path))
        dw.check_frozen()
        assert child.poll() is None, "killed while its lease lives"
        alive[0xA1] = False
        dw.check_frozen()
        dw.check_frozen()
        if hold:
            assert child.wait(5) == -signal.SIGKILL
            assert dw.killed == [(str(path), child.pid)]
        else:  # the pid in the file is not the process holding it: never killed
            time.sleep(0.2)
            assert child.poll() is None and not dw.killed
    finally:
        dw.close()
        if child.poll() is None:
            child.kill()
            child.wait(5)


def test_a_peer_is_watched_even_if_its_watch_thread_could_not_start_at_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No thread to be had (RuntimeError from start) ended the scanner, and no later peer
    was watched; now that peer is tried again at the next scan."""
    monkeypatch.setattr(deathwatch, "SCAN_INTERVAL_S", 0.01)
    dw = DeathWatch(str(tmp_path), "me", revoke=lambda lease: None)
    real = threading.Thread
    starts: list[str] = []

    class FirstStartFails(real):  # type: ignore[misc, valid-type]
        def start(self) -> None:
            if self.name.startswith("watch-"):  # the peers' watches alone
                starts.append(self.name)
                if len(starts) == 1:
                    raise RuntimeError("can't start new thread")
            super().start()

    monkeypatch.setattr(deathwatch.threading, "Thread", FirstStartFails)
    peer_file = os.path.join(dw.dir, "peer.1.lock")
    open(peer_file, "w").close()
    try:
        dw.start()
        deadline = time.monotonic() + 5
        while len(starts) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert starts[:2] == ["watch-peer.1.lock"] * 2  # the failed start, then a new try
        assert peer_file in dw._watching
    finally:
        dw.close()
