"""A client process: runs client threads against one target when the runner says so.

Owns: :func:`main`, the loop of a client process started by the runner with the
multiprocessing *spawn* context (so each process has its own GIL and no inherited sockets or
LMDB handles), and :func:`run_round`, which starts the round's client threads. Each thread
opens its session before the common start time, runs unmeasured for the warm-up, then measures
until the round's end (``--seconds``) or until it has done its share of ``--ops``.

Protocol over the process's pipe: the runner sends ``("prepare", Command)``; the process opens
its threads' sessions and answers ``("ready",)``; the runner sends ``("go", start_at)`` (the
same start time to every process); the process answers ``("progress", ops)`` about twice a
second while the round runs, then ``("result", tally_json)``. Any failure is answered with
``("error", message)``; ``("stop",)`` ends the process. The process ignores SIGINT (the runner
stops it) and exits when the pipe closes.

Invariant: an operation's latency is measured around the whole operation, retries included; a
conflict retried (``Retry``) is counted as a retry, any other exception as an error (by gRPC
code or exception type); a thread never stops on an error. An operation still retrying
``--timeout`` seconds after the round's end is abandoned (counted among the retries), so a
round ends within a bounded time even under heavy conflicts.
"""

from __future__ import annotations

import random
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from nodes.bench import keys as keyspace
from nodes.bench import workloads as wl
from nodes.bench.options import Settings
from nodes.bench.stats import Tally
from nodes.bench.targets import Retry, Spec, Target, error_message, error_name, module

MAX_RETRIES = 50
PROGRESS_S = 0.5
INSERT_BASE = 1 << 50
"""New keys (YCSB-E inserts) start here: far above the loaded records, never scanned into."""


@dataclass(frozen=True)
class Command:
    """One round for this process: which target, workload, threads, and when."""

    spec: Spec
    settings: Settings
    workload: wl.Workload
    threads: int
    first_index: int
    """The global index of this process's first client thread."""
    warmup_s: float
    seconds: float | None
    ops: list[int] | None
    """Operations per thread (``--ops`` mode)."""
    round_id: int
    """Unique per round of the run: new keys of different rounds never collide."""


def new_keys(round_id: int, index: int) -> Any:
    """Return a function giving keys nobody else uses: this round's and this thread's own."""
    counter = iter(range(1 << 24))
    base = INSERT_BASE + (round_id << 38) + (index << 24)
    return lambda: base + next(counter)


def _client(cmd: Command, session: Any, index: int, tally: Tally, ops: int | None,
            start_at: float) -> None:
    s = cmd.settings
    rng = random.Random(f"{s.seed}/{cmd.round_id}/{index}")
    picker = wl.Picker(cmd.workload)
    chooser = keyspace.chooser(s.distribution, s.records)
    new_key = new_keys(cmd.round_id, index)
    mono, perf = time.monotonic, time.perf_counter
    t0 = start_at + cmd.warmup_s
    while mono() < start_at:
        time.sleep(min(0.05, max(0.0, start_at - mono())))
    warm = Tally()
    for measuring in (False, True):
        t = warm if not measuring else tally
        end = t0 + (cmd.seconds or 0.0) if measuring else t0
        done = 0
        while True:
            now = mono()
            if measuring and ops is not None:
                if done >= ops:
                    break
            elif now >= end:
                break
            kind = picker.next(rng)
            args = wl.draw(kind, rng, chooser, s.batch, new_key)
            method = getattr(session, kind)
            start = perf()
            rows = None
            for _attempt in range(MAX_RETRIES + 1):
                try:
                    rows = method(*args)
                    break
                except Retry as r:
                    t.retries[r.reason] += 1
                    if measuring and ops is None and mono() > end + s.timeout_s:
                        t.retries["abandoned after the round's end"] += 1
                        break  # neither an op nor an error: the round is over
                except Exception as e:
                    t.fail(error_name(e), error_message(e))
                    time.sleep(0.001)  # a system that refuses everything is not spun on
                    break
            else:
                t.fail("retries exhausted", f"{MAX_RETRIES} retries of {kind}")
            latency = perf() - start
            if rows is not None:
                t.count(max(0, int(now - t0)), rows, latency)
            done += 1
        if measuring:
            tally.seconds = mono() - t0


def prepare(cmd: Command, targets: dict[str, Target]) -> list[tuple[int, Any]]:
    """Open (or reuse) the sessions of this process's client threads for ``cmd``."""
    target = targets.get(cmd.spec.kind)
    if target is None:
        target = module(cmd.spec).open_target(cmd.spec.params, cmd.settings)
        targets[cmd.spec.kind] = target
    sessions = []
    for i in range(cmd.threads):
        index = cmd.first_index + i
        rng = random.Random(f"{cmd.settings.seed}/session/{index}")
        sessions.append((index, target.session(index, rng)))
    return sessions


def run_round(cmd: Command, sessions: list[tuple[int, Any]], start_at: float,
              send: Any) -> Tally:
    """Run one round on the prepared sessions from ``start_at`` (``time.monotonic()``, which
    is CLOCK_MONOTONIC, the same clock in every process); return the merged tally."""
    if not sessions:
        return Tally()
    tallies = [Tally() for _ in sessions]
    running = [len(sessions)]
    lock = threading.Lock()
    all_done = threading.Event()

    def client(n: int, index: int, session: Any) -> None:
        try:
            _client(cmd, session, index, tallies[n],
                    cmd.ops[n] if cmd.ops is not None else None, start_at)
        finally:
            with lock:
                running[0] -= 1
                if running[0] == 0:
                    all_done.set()

    threads = [threading.Thread(target=client, args=(n, index, session), daemon=True,
                                name=f"client-{index}")
               for n, (index, session) in enumerate(sessions)]
    for th in threads:
        th.start()
    while not all_done.wait(PROGRESS_S):
        send(("progress", sum(t.ops for t in tallies)))
    for th in threads:
        th.join()
    total = Tally()
    for t in tallies:
        total.merge(t)
    return total


def main(conn: Connection, process_index: int) -> None:
    """Serve the runner's commands on ``conn`` until it says stop or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    targets: dict[str, Target] = {}
    lock = threading.Lock()

    def send(message: Any) -> None:
        with lock:
            conn.send(message)

    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if message[0] != "prepare":
                break
            cmd = message[1]
            try:
                sessions = prepare(cmd, targets)
            except Exception as e:
                send(("error", f"client process {process_index} could not connect to "
                               f"{cmd.spec.name}: {error_name(e)}: {e}\n"
                               f"{traceback.format_exc()}"))
                continue
            send(("ready",))
            go = conn.recv()
            if go[0] != "go":
                break
            try:
                tally = run_round(cmd, sessions, go[1], send)
            except Exception as e:
                send(("error", f"client process {process_index}: {error_name(e)}: {e}\n"
                               f"{traceback.format_exc()}"))
            else:
                send(("result", tally.to_json()))
    except (BrokenPipeError, EOFError, OSError):
        pass
    finally:
        for target in targets.values():
            try:
                target.close()
            except Exception:
                pass
