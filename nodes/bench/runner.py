"""The run: start the systems, load them, drive interleaved rounds, report, stop everything.

Order: for each client count, for each workload, for each round, every target in turn
(Shardless first, then the baselines in ``--baseline`` order), so that a slow minute of the
machine hurts every target alike; figures are medians over rounds. The bank total of each
target is checked after each of its bank rounds.

The client processes (:class:`Pool`) are started once with the multiprocessing *spawn* context
and kept for the whole run; each keeps its connections to each target between rounds. A round
is two steps: every process opens its threads' sessions and says ready, then all get one start
time (so connection set-up is never measured, and all clients start together).

Invariant: whatever happens (an error, Ctrl-C), the ``finally`` of :func:`run` stops the client
processes, then every system process, each by its own pid, and removes the work directory
unless ``--keep``. On a failure the tail of every process's log is printed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from nodes.bench import goals, report, worker
from nodes.bench.memory import Sampler
from nodes.bench.options import Settings
from nodes.bench.stats import Tally
from nodes.bench.systems import StartError, Systems
from nodes.bench.targets import INITIAL_BALANCE, Spec, module
from nodes.bench.workloads import Workload
from nodes.etcdserver import EtcdServerError
from nodes.up import NodeStartError

READY_TIMEOUT_S = 60.0
ROUND_MARGIN_S = 60.0
OPS_ROUND_LIMIT_S = 3600.0


class RoundError(RuntimeError):
    """A round could not be run (a client process failed or hung); the run stops."""


class Pool:
    """The client processes, started with the *spawn* context and kept for the run."""

    def __init__(self, count: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        for i in range(count):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker.main, args=(child, i), name=f"bench-client-{i}",
                            daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)

    def pids(self) -> list[int]:
        """The client processes' pids."""
        return [p.pid for p in self.procs if p.pid is not None]

    def _recv(self, i: int) -> Any:
        try:
            return self.conns[i].recv()
        except (EOFError, OSError):
            p = self.procs[i]
            p.join(1.0)
            raise RoundError(f"client process {i} (pid {p.pid}) died "
                             f"(exit code {p.exitcode})") from None

    def run(self, commands: Sequence[worker.Command | None],
            on_progress: Callable[[int], None], limit_s: float) -> Tally:
        """Run one round: ``commands[i]`` for process ``i`` (None: idle); return the merged
        tally.

        Raises:
            RoundError: a process failed, died or did not finish within ``limit_s``.
        """
        active = [i for i, c in enumerate(commands) if c is not None]
        for i in active:
            self.conns[i].send(("prepare", commands[i]))
        self._gather(active, "ready", READY_TIMEOUT_S, on_progress)
        start_at = time.monotonic() + 0.05
        for i in active:
            self.conns[i].send(("go", start_at))
        results = self._gather(active, "result", limit_s, on_progress)
        total = Tally()
        for i in active:
            total.merge(Tally.from_json(results[i]))
        return total

    def _gather(self, active: list[int], kind: str, limit_s: float,
                on_progress: Callable[[int], None]) -> dict[int, Any]:
        deadline = time.monotonic() + limit_s
        progress = dict.fromkeys(active, 0)
        out: dict[int, Any] = {}
        by_conn = {self.conns[i]: i for i in active}
        while len(out) < len(active):
            waiting = [self.conns[i] for i in active if i not in out]
            for conn in wait(waiting, timeout=0.25):
                i = by_conn[conn]  # type: ignore[index]
                message = self._recv(i)
                if message[0] == "progress":
                    progress[i] = message[1]
                elif message[0] == kind:
                    out[i] = message[1] if len(message) > 1 else None
                elif message[0] == "error":
                    raise RoundError(message[1])
            on_progress(sum(progress.values()))
            if time.monotonic() > deadline:
                raise RoundError(f"client processes did not say {kind!r} within {limit_s:g} s")
        return out

    def close(self) -> None:
        """Stop every client process: ask, then SIGTERM, then SIGKILL, each by its pid."""
        for conn in self.conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop",))
        for p in self.procs:
            p.join(5.0)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(5.0)
            if p.is_alive():
                p.kill()
                p.join()
        for conn in self.conns:
            conn.close()


def _commands(settings: Settings, spec: Spec, workload: Workload, clients: int, round_no: int,
              round_id: int) -> list[worker.Command | None]:
    layout = settings.threads_per_process(clients)
    ops: list[int] | None = None
    if settings.ops is not None:
        base, extra = divmod(settings.ops, clients)
        ops = [base + (1 if i < extra else 0) for i in range(clients)]
    out: list[worker.Command | None] = []
    first = 0
    for threads in layout:
        out.append(worker.Command(
            spec=spec, settings=settings, workload=workload, threads=threads,
            first_index=first, warmup_s=settings.warmup_s if round_no == 1 else 0.0,
            seconds=settings.seconds, ops=ops[first:first + threads] if ops else None,
            round_id=round_id))
        first += threads
    out += [None] * (settings.processes - len(out))
    return out


def _machine(systems: Systems) -> dict[str, Any]:
    import google.protobuf
    import grpc

    out: dict[str, Any] = {"cores": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(), "grpc": grpc.__version__,
                           "protobuf": google.protobuf.__version__, **systems.versions}
    with contextlib.suppress(ImportError):
        import psycopg

        out["psycopg"] = psycopg.__version__
    return out


def _settings_json(s: Settings) -> dict[str, Any]:
    return {"workloads": [w.name for w in s.workloads], "distribution": s.distribution,
            "records": s.records, "value_size": s.value_size, "batch": s.batch,
            "seconds": s.seconds, "ops": s.ops, "rounds": s.rounds, "warmup_s": s.warmup_s,
            "processes": s.processes, "clients": list(s.client_counts), "nodes": s.nodes,
            "connect": list(s.connect), "baselines": list(s.baselines), "seed": s.seed,
            "timeout_s": s.timeout_s}


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(settings: Settings) -> int:
    """Run the benchmark; return the exit code (0; 1 on a failure or a changed bank total;
    130 when interrupted by SIGINT or SIGTERM)."""
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:  # SIGTERM unwinds like Ctrl-C, so the finally below stops everything
        previous_term = signal.signal(signal.SIGTERM, _on_sigterm)
    display = report.Display()
    say = display.say
    started = datetime.datetime.now(datetime.UTC)
    if settings.work_dir:
        work_dir = Path(settings.work_dir).expanduser().resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
    else:
        work_dir = Path(tempfile.mkdtemp(prefix="shardless-bench-"))
    say(f"shardless bench: {os.cpu_count()} cores, work directory {work_dir}")
    systems = Systems(settings, work_dir, say)
    pool: Pool | None = None
    sampler: Sampler | None = None
    records: list[report.RoundRecord] = []
    bank: list[dict[str, Any]] = []
    failure: str | None = None
    exit_code = 0
    specs: list[Spec] = []
    try:
        specs = systems.start()
        for spec in specs:
            t = time.monotonic()
            module(spec).load(spec.params, settings)
            say(f"{spec.name}: loaded {settings.records:,} records"
                f"{' and accounts' if settings.uses_accounts else ''} "
                f"in {time.monotonic() - t:.1f} s")
        sampler = Sampler(systems.node_pids)
        sampler.start()
        pool = Pool(min(settings.processes, max(settings.client_counts)))
        settings = _with_processes(settings, len(pool.procs))
        expected_total = settings.records * INITIAL_BALANCE
        length = (f"{settings.seconds:g} s" if settings.seconds is not None
                  else f"{settings.ops:,} ops")
        # An operation is abandoned --timeout after the end; its last try makes at most four
        # calls of --timeout each.
        limit_s = (settings.warmup_s + settings.seconds + 6 * settings.timeout_s
                   + ROUND_MARGIN_S if settings.seconds is not None else OPS_ROUND_LIMIT_S)
        round_id = 0
        names = [s.name for s in specs]
        for clients in settings.client_counts:
            for w in settings.workloads:
                for round_no in range(1, settings.rounds + 1):
                    for spec in specs:
                        round_id += 1
                        label = (f"{w.name} {clients} clients round {round_no}/"
                                 f"{settings.rounds} {spec.name}")
                        began = time.monotonic()

                        def progress(ops: int, label: str = label, began: float = began) -> None:
                            elapsed = time.monotonic() - began
                            display.progress(f"{label}: {elapsed:5.1f} s, {ops:,} ops")

                        watch = (sampler.active(label) if spec.kind == "shardless"
                                 else contextlib.nullcontext())
                        with watch:
                            tally = pool.run(_commands(settings, spec, w, clients, round_no,
                                                       round_id), progress, limit_s)
                        display.end_progress()
                        records.append(report.RoundRecord(w, clients, round_no, spec.name,
                                                          tally))
                        f = tally.figures()
                        line = (f"{label}: {f['ops_per_s']:,.0f} ops/s"
                                + (f", {f['rows_per_s']:,.0f} rows/s" if w.uses_batch else "")
                                + f", p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms, "
                                f"{tally.error_count} errors")
                        say(line)
                        for name, example in tally.examples.items():
                            say(f"  first {name} error: {example}")
                        if w.uses_accounts:
                            total = module(spec).bank_total(spec.params)
                            if total is not None:
                                ok = total == expected_total
                                bank.append({"workload": w.name, "clients": clients,
                                             "round": round_no, "target": spec.name,
                                             "expected": expected_total, "actual": total,
                                             "ok": ok})
                                if not ok:
                                    display.alarm(f"BANK TOTAL CHANGED on {spec.name} after "
                                                  f"{label}: {total:,} != {expected_total:,}")
                                    exit_code = 1
                figures = report.aggregate(records)
                display.workload_table(w, clients, settings.threads_per_process(clients),
                                       figures, names, settings.rounds, length)
        figures = report.aggregate(records)
        baselines = [n for n in names if n != "shardless"]
        if baselines:
            display.summary_table(figures, settings.workloads, settings.client_counts,
                                  baselines)
        display.goals(goals.evaluate(figures, set(baselines), settings.batch))
        if sampler is not None:
            display.memory(sampler.summary())
        if bank:
            held = all(b["ok"] for b in bank)
            say(f"bank: the total held in all {len(bank)} checks" if held
                else "bank: THE TOTAL CHANGED (see above)")
    except KeyboardInterrupt:
        failure = "interrupted"
        display.end_progress()
        say("shardless bench: interrupted; stopping everything")
        exit_code = 130
    except (StartError, EtcdServerError, NodeStartError, RoundError, OSError) as e:
        failure = f"{type(e).__name__}: {e}"
        display.end_progress()
        print(f"shardless bench: {e}", file=sys.stderr, flush=True)
        for name, text in systems.logs().items():
            print(f"===== {name} =====\n{text}", file=sys.stderr, flush=True)
        exit_code = 1
    finally:
        if main_thread:  # a second Ctrl-C must not cut the clean-up short
            previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        display.end_progress()
        pids = {"clients": pool.pids() if pool else [], **systems.pids()}
        try:
            if pool is not None:
                pool.close()
            if sampler is not None:
                sampler.close()
            if settings.connect and specs and failure is None:
                with contextlib.suppress(Exception):
                    module(specs[0]).unload(specs[0].params)
        finally:
            try:
                systems.stop()
            finally:
                if not settings.keep and not settings.work_dir:
                    shutil.rmtree(work_dir, ignore_errors=True)
                if main_thread:
                    signal.signal(signal.SIGINT, previous_int)
                    signal.signal(signal.SIGTERM, previous_term)
    figures = report.aggregate(records)
    names = [s.name for s in specs]
    outcomes = goals.evaluate(figures, {n for n in names if n != "shardless"}, settings.batch)
    if settings.json_path:
        data = {
            "command": list(settings.argv), "started_at": started.isoformat(),
            "finished_at": datetime.datetime.now(datetime.UTC).isoformat(),
            "machine": _machine(systems), "settings": _settings_json(settings),
            "targets": names, "skipped": systems.skipped,
            "results": report.json_report(records, figures, settings.workloads),
            "ratios": report.ratios(figures, settings.workloads),
            "goals": [{"label": o.label, "clients": o.clients, "ratio": o.ratio,
                       "at_least": o.at_least, "met": o.met, "note": o.note} for o in outcomes],
            "bank": bank, "bank_ok": all(b["ok"] for b in bank),
            "memory": sampler.summary() if sampler is not None else None,
            "errors_total": sum(r.tally.error_count for r in records),
            "processes": {"pids": pids, "work_dir": str(work_dir)},
            "failure": failure, "exit_code": exit_code,
        }
        Path(settings.json_path).write_text(json.dumps(data, indent=1) + "\n")
        say(f"json report: {settings.json_path}")
    if settings.plot_path and records:
        from nodes.bench import plot

        plot.draw(settings.plot_path, records, sampler.summary() if sampler else None)
        say(f"plot: {settings.plot_path}")
    return exit_code


def _with_processes(settings: Settings, processes: int) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, processes=processes)
