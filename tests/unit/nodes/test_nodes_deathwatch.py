"""Unit tests of nodes.deathwatch's killing of frozen peers: the lock file's contents, and that
only the very process that holds a peer's lock file is killed, once its lease is gone (real
child processes; etcd's answer is given by a function)."""

from __future__ import annotations

import signal
import subprocess
import sys
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
