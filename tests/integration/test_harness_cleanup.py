"""The harness leaves no process behind, even when the process that runs it is killed: a test
run or benchmark killed by SIGKILL (or by a timeout's SIGTERM, which skips clean-up code) would
otherwise leave etcd and node processes loading the machine for every later run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A harness user: a cluster of one etcd and two nodes (one started from a thread: a restart of
# the kind the fault tests make), its pids printed; then it waits to be killed.
SCRIPT = textwrap.dedent("""
    import sys, threading, time
    sys.path.insert(0, {root!r})
    from tests.harness.cluster import Cluster
    cluster = Cluster({tmp!r}, n=1)
    t = threading.Thread(target=cluster.add_node)
    t.start(); t.join()
    print(cluster.etcd.pid, *[n.pid for n in cluster.nodes], flush=True)
    time.sleep(600)
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead; only its parent (init, here) has yet to reap it
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def end(proc: subprocess.Popen[str], pids: list[int]) -> None:
    """Whatever the test saw: stop the process it started and every process it was told of."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for p in pids:
        if alive(p):
            os.kill(p, signal.SIGKILL)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_processes_started_from_the_main_thread_die_with_a_killed_harness(
        tmp_path: Path, how: signal.Signals) -> None:
    user = subprocess.Popen([sys.executable, "-c", SCRIPT.format(root=str(ROOT),
                                                               tmp=str(tmp_path / "c"))],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    pids: list[int] = []
    try:
        line = user.stdout.readline() if user.stdout else ""
        assert line, f"the harness user printed nothing (exit {user.poll()})"
        etcd, main_node, thread_node = (int(p) for p in line.split())
        pids = [etcd, main_node, thread_node]
        time.sleep(0.5)
        # The node started from a thread that has ended lives on (a tie to that thread would
        # have killed it when the thread ended).
        assert all(alive(p) for p in pids)
        user.send_signal(how)
        user.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (alive(etcd) or alive(main_node)):
            time.sleep(0.05)
        assert not alive(etcd) and not alive(main_node), "left behind by a killed harness"
    finally:
        end(user, pids)


def test_a_test_run_sent_sigterm_tears_down_and_reports(tmp_path: Path) -> None:
    """SIGTERM to pytest (a CI timeout, ``kill``) is taken as Ctrl-C (tests/conftest.py): the
    fixtures' teardowns stop their processes and pytest says what was interrupted."""
    pids_file = tmp_path / "pids"
    test_file = tmp_path / "test_waits.py"
    test_file.write_text(textwrap.dedent(f"""
        import time
        def test_waits(cluster):
            open({str(pids_file)!r}, "w").write(
                " ".join(str(p) for p in [cluster.etcd.pid, *[n.pid for n in cluster.nodes]]))
            time.sleep(600)
    """))
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q",
                            "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                            str(test_file)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not (pids_file.exists() and pids_file.read_text()) and run.poll() is None:
            assert time.monotonic() < deadline, "the test never got its cluster"
            time.sleep(0.1)
        pids = [int(p) for p in pids_file.read_text().split()]
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=60)
        assert "KeyboardInterrupt" in out and "signal 15" in out, out
        assert not [p for p in pids if alive(p)], out  # stopped by the teardown itself
    finally:
        end(run, pids)
