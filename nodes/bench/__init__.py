"""``shardless bench``: Shardless measured against baselines, with the same clients and ops.

Modules: ``options`` (flags and their checks), ``keys`` (uniform and YCSB's scrambled zipfian),
``workloads`` (the operation mixes), ``targets/`` (one adapter per system: Shardless, echo,
etcd, LMDB, PostgreSQL), ``worker`` (a client process), ``runner`` (rounds, interleaving,
bank checks), ``systems`` (starting and stopping the cluster and the baselines), ``echo`` and
``pgserver`` (the echo server and the PostgreSQL launcher), ``stats`` (histograms, tallies),
``goals`` (the project's targets), ``memory`` (node RSS), ``report`` and ``plot`` (output).

Only ``options`` is imported when the ``shardless`` command starts; the rest (and ``rich``,
``matplotlib``, ``psycopg``) only when ``shardless bench`` runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from nodes.bench.options import BadOption, Settings, add_arguments, settings

__all__ = ["BadOption", "Settings", "add_arguments", "missing_dependencies", "run", "settings"]

INSTALL_HINT = "pip install 'shardless[bench]'"


def missing_dependencies(s: Settings) -> list[str]:
    """The bench's optional packages this run needs and cannot import."""
    needed = ["rich"]
    if s.plot_path:
        needed.append("matplotlib")
    if "postgres" in s.baselines:
        needed.append("psycopg")
    return [name for name in needed if importlib.util.find_spec(name) is None]


def run(args: argparse.Namespace) -> int:
    """Run ``shardless bench`` with parsed options; return the exit code.

    Returns:
        0; 1 when a system failed or a bank total changed; 2 for bad options or missing
        dependencies; 130 when interrupted.
    """
    try:
        s = settings(args, argv=("shardless", *sys.argv[1:]))
    except BadOption as e:
        print(f"shardless bench: {e}", file=sys.stderr)
        return 2
    missing = missing_dependencies(s)
    if missing:
        print(f"shardless bench needs {', '.join(missing)}, which "
              f"{'is' if len(missing) == 1 else 'are'} not installed: {INSTALL_HINT}",
              file=sys.stderr)
        return 2
    from nodes.bench import runner

    return runner.run(s)
