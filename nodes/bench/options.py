"""The options of ``shardless bench`` and their checks.

Owns: :func:`add_arguments` (argparse), :class:`Settings` (the checked options, picklable so
client processes get them as they are) and :func:`settings` (options -> Settings, or
:class:`BadOption` with a message that says what to change). Imports nothing heavy, so that
``shardless --help`` and ``shardless node`` do not pay for the bench's dependencies.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from nodes.bench import keys as keyspace
from nodes.bench import workloads as wl

BASELINES = ("echo", "etcd", "lmdb", "postgres")
DEFAULT_PROCESSES = 4
DEFAULT_THREADS = 4
DEFAULT_NODES = 3
MAX_BATCH = 100_000
"""Shardless takes at most this many rows or keys per call (docs/api.md, Limits)."""
MAX_VALUE_SIZE = 1_000_000
"""A little under Shardless's 1 MiB row limit."""


class BadOption(ValueError):
    """An option is out of range or contradicts another; fix the command line (exit code 2)."""


@dataclass(frozen=True)
class Settings:
    """Checked options of one ``shardless bench`` run."""

    workloads: tuple[wl.Workload, ...]
    distribution: str = "uniform"
    records: int = 10_000
    value_size: int = 100
    batch: int = 100
    seconds: float | None = 5.0
    ops: int | None = None
    rounds: int = 3
    warmup_s: float = 1.0
    processes: int = DEFAULT_PROCESSES
    client_counts: tuple[int, ...] = (DEFAULT_PROCESSES * DEFAULT_THREADS,)
    nodes: int = DEFAULT_NODES
    node_processes: int = 1
    connect: tuple[str, ...] = ()
    baselines: tuple[str, ...] = ()
    json_path: str | None = None
    plot_path: str | None = None
    seed: int = 0
    timeout_s: float = 10.0
    work_dir: str | None = None
    keep: bool = False
    etcd_bin: str | None = None
    pg_bindir: str | None = None
    argv: tuple[str, ...] = field(default=())

    def threads_per_process(self, clients: int) -> list[int]:
        """Spread ``clients`` client threads over the client processes, as evenly as can be.

        Returns:
            One thread count per process that has any (at most ``processes`` entries).
        """
        procs = min(self.processes, clients)
        base, extra = divmod(clients, procs)
        return [base + (1 if i < extra else 0) for i in range(procs)]

    @property
    def uses_accounts(self) -> bool:
        """Whether a workload needs the bank accounts."""
        return any(w.uses_accounts for w in self.workloads)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``p``."""
    g = p.add_argument_group("what to run")
    g.add_argument("--workload", default="all", metavar="NAME[,NAME...]",
                   help="workloads, comma-separated, or 'all'; a+b mixes workloads in one "
                        f"load (known: {', '.join(wl.WORKLOADS)}; default all)")
    g.add_argument("--distribution", default="uniform", choices=keyspace.DISTRIBUTIONS,
                   help="key choice: uniform, or YCSB's scrambled zipfian (constant 0.99); "
                        "default uniform")
    g.add_argument("--records", type=int, default=10_000, metavar="N",
                   help="records (and bank accounts) loaded before the first round "
                        "(default 10000)")
    g.add_argument("--value-size", type=int, default=100, metavar="BYTES",
                   help="bytes of each record's value (default 100)")
    g.add_argument("--batch", type=int, default=100, metavar="N",
                   help="rows per call of multi-write, batch-get and scan (default 100)")
    g.add_argument("--seconds", type=float, default=None, metavar="S",
                   help="length of each round (default 5; not with --ops)")
    g.add_argument("--ops", type=int, default=None, metavar="N",
                   help="operations per round, over all clients (instead of --seconds)")
    g.add_argument("--rounds", type=int, default=3, metavar="R",
                   help="interleaved rounds per target; figures are medians (default 3)")
    g.add_argument("--warmup", type=float, default=1.0, metavar="S",
                   help="unmeasured seconds before the first round of each workload and "
                        "target (default 1)")
    g.add_argument("--seed", type=int, default=None,
                   help="random seed (default: chosen, and printed in the JSON report)")
    c = p.add_argument_group("clients")
    c.add_argument("--processes", type=int, default=DEFAULT_PROCESSES, metavar="P",
                   help=f"client processes (default {DEFAULT_PROCESSES})")
    c.add_argument("--threads", type=int, default=None, metavar="T",
                   help=f"client threads per process (default {DEFAULT_THREADS})")
    c.add_argument("--clients", default=None, metavar="N[,N...]",
                   help="total clients spread over the processes instead of --threads; "
                        "several counts run every workload at each (e.g. 4,64)")
    c.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="deadline of each call (default 10)")
    s = p.add_argument_group("systems")
    s.add_argument("--nodes", type=int, default=None, metavar="N",
                   help=f"nodes of the cluster started here (default {DEFAULT_NODES})")
    s.add_argument("--node-processes", type=int, default=1, metavar="K",
                   help="processes of each node started here (shardless node --processes; "
                        "default 1)")
    s.add_argument("--connect", default=None, metavar="HOST:PORT[,...]",
                   help="measure this running cluster instead of starting one")
    s.add_argument("--baseline", default="", metavar="NAME[,NAME...]",
                   help="baselines measured with the same clients and operations: "
                        f"{', '.join(BASELINES)} (default none)")
    s.add_argument("--etcd-bin", default=None, metavar="PATH",
                   help="etcd binary for the cluster's and the baseline's etcd")
    s.add_argument("--pg-bindir", default=None, metavar="DIR",
                   help="PostgreSQL server binaries (default: the newest "
                        "/usr/lib/postgresql/*/bin)")
    s.add_argument("--work-dir", default=None, metavar="DIR",
                   help="where data and logs go, a new or empty directory, kept at the end "
                        "(default: a new temporary directory, removed at the end)")
    s.add_argument("--keep", action="store_true",
                   help="keep the temporary work directory (and PostgreSQL's) at the end")
    o = p.add_argument_group("output")
    o.add_argument("--json", default=None, metavar="FILE", help="write a JSON report")
    o.add_argument("--plot", default=None, metavar="FILE.png",
                   help="draw throughput over time and latency distributions")


def _positive_int(name: str, value: int, low: int = 1) -> int:
    if value < low:
        raise BadOption(f"{name} must be at least {low}, not {value}")
    return value


def _addresses(spec: str) -> tuple[str, ...]:
    out = []
    for item in spec.split(","):
        item = item.strip()
        host, sep, port = item.rpartition(":")
        if not item or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadOption(f"--connect: {item!r} is not HOST:PORT")
        out.append(item)
    return tuple(out)


def _output(name: str, path: str | None, suffix: str = "") -> str | None:
    if path is None:
        return None
    if suffix and not path.lower().endswith(suffix):
        raise BadOption(f"{name} {path!r} must end with {suffix}")
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise BadOption(f"{name} {path!r}: directory {parent} does not exist")
    return str(Path(path).expanduser().resolve())


def settings(args: argparse.Namespace, argv: tuple[str, ...] = ()) -> Settings:
    """Check the parsed options and build the run's :class:`Settings`.

    Raises:
        BadOption: an option is out of range or contradicts another.
    """
    try:
        workloads = tuple(wl.parse(args.workload))
    except ValueError as e:
        raise BadOption(f"--workload: {e}") from None
    records = _positive_int("--records", args.records)
    if any(w.uses_accounts for w in workloads) and records < 2:
        raise BadOption("--records must be at least 2 for the bank workload")
    value_size = _positive_int("--value-size", args.value_size, 0)
    if value_size > MAX_VALUE_SIZE:
        raise BadOption(f"--value-size must be at most {MAX_VALUE_SIZE}")
    batch = _positive_int("--batch", args.batch)
    if batch > min(MAX_BATCH, records):
        raise BadOption(f"--batch must be at most --records ({records}) and {MAX_BATCH}")
    if args.seconds is not None and args.ops is not None:
        raise BadOption("give --seconds or --ops, not both")
    seconds = args.seconds if args.ops is None else None
    if args.ops is None and seconds is None:
        seconds = 5.0
    if seconds is not None and not seconds > 0:
        raise BadOption(f"--seconds must be positive, not {seconds}")
    ops = _positive_int("--ops", args.ops) if args.ops is not None else None
    rounds = _positive_int("--rounds", args.rounds)
    if not args.warmup >= 0:
        raise BadOption("--warmup must not be negative")
    processes = _positive_int("--processes", args.processes)
    if args.clients is not None:
        if args.threads is not None:
            raise BadOption("give --clients or --threads, not both")
        try:
            counts = tuple(int(c) for c in args.clients.split(","))
        except ValueError:
            raise BadOption(f"--clients {args.clients!r} is not N[,N...]") from None
        for c in counts:
            _positive_int("--clients", c)
        counts = tuple(dict.fromkeys(counts))
    else:
        threads = _positive_int("--threads", args.threads or DEFAULT_THREADS)
        counts = (processes * threads,)
    if ops is not None and ops < max(counts):
        raise BadOption(f"--ops ({ops}) must be at least the number of clients ({max(counts)})")
    connect: tuple[str, ...] = ()
    if args.connect is not None:
        if args.nodes is not None:
            raise BadOption("give --nodes or --connect, not both")
        connect = _addresses(args.connect)
    nodes = _positive_int("--nodes", args.nodes if args.nodes is not None else DEFAULT_NODES)
    baselines = tuple(dict.fromkeys(b.strip() for b in args.baseline.split(",") if b.strip()))
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise BadOption(f"--baseline: unknown {', '.join(unknown)} (choose from "
                        f"{', '.join(BASELINES)})")
    if not args.timeout > 0:
        raise BadOption("--timeout must be positive")
    if args.work_dir is not None:
        wd = Path(args.work_dir).expanduser().resolve()
        if not wd.parent.is_dir():
            raise BadOption(f"--work-dir {args.work_dir!r}: its parent directory does not exist")
        if wd.exists() and (not wd.is_dir() or any(wd.iterdir())):
            raise BadOption(f"--work-dir {args.work_dir!r} exists and is not an empty directory")
    if args.pg_bindir is not None and not os.path.isfile(os.path.join(args.pg_bindir,
                                                                      "postgres")):
        raise BadOption(f"--pg-bindir {args.pg_bindir!r} has no postgres binary")
    if args.node_processes < 1:
        raise BadOption("--node-processes must be at least 1")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    return Settings(
        workloads=workloads, distribution=args.distribution, records=records,
        value_size=value_size, batch=batch, seconds=seconds, ops=ops, rounds=rounds,
        warmup_s=float(args.warmup), processes=processes, client_counts=counts, nodes=nodes,
        node_processes=args.node_processes,
        connect=connect, baselines=baselines, json_path=_output("--json", args.json),
        plot_path=_output("--plot", args.plot, ".png"), seed=seed, timeout_s=args.timeout,
        work_dir=args.work_dir, keep=bool(args.keep), etcd_bin=args.etcd_bin,
        pg_bindir=args.pg_bindir, argv=argv)
