"""The project's performance targets, and the ratio math that checks them.

Owns: :data:`GOALS` (each a ratio of a Shardless figure to a baseline's, measured in the same
run), :data:`SCALING` (single-row writes from 64 clients against 4), :func:`ratio` and
:func:`evaluate`. Pure: it works on the medians the runner computed.

A goal is checked only where its figures were measured: its baseline was run (``--baseline``),
its workload was run, and the run used the client count (``--clients``) and batch size
(``--batch``) the goal names. Goals that cannot be checked are listed as not measured, with the
options that would measure them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SHARDLESS = "shardless"

Figures = Mapping[tuple[str, int, str], Mapping[str, float]]
"""Median figures keyed by (workload, clients, target): ``ops_per_s``, ``rows_per_s``..."""


@dataclass(frozen=True)
class Goal:
    """Shardless's ``metric`` on ``workload`` must be at least ``at_least`` times the
    ``baseline``'s, at ``clients`` clients and ``batch`` rows per call when given."""

    workload: str
    baseline: str
    at_least: float
    metric: str = "ops_per_s"
    clients: int | None = None
    batch: int | None = None

    @property
    def label(self) -> str:
        """The goal in words."""
        unit = "rows/s" if self.metric == "rows_per_s" else "ops/s"
        what = self.workload + (f" of {self.batch}" if self.batch else "")
        who = f" from {self.clients} clients" if self.clients else ""
        return f"{what}{who} ({unit}) >= {self.at_least:g}x {self.baseline}"


GOALS: tuple[Goal, ...] = (
    Goal("write", "postgres", 0.5, clients=64),
    Goal("write", "etcd", 1.0, clients=64),
    Goal("multi-write", "postgres", 1.0, metric="rows_per_s", batch=100),
    Goal("batch-get", "postgres", 0.5, metric="rows_per_s", batch=100),
    Goal("scan", "postgres", 0.3, metric="rows_per_s", batch=100),
    Goal("get", "echo", 0.9),
    Goal("rmw", "postgres", 0.5),
    Goal("ycsb-a", "postgres", 0.5),
)

SCALING = ("write", 4, 64, 3.0)
"""(workload, few clients, many clients, at least): Shardless's ops/s from the many clients
must be at least this times its ops/s from the few."""


@dataclass(frozen=True)
class Outcome:
    """One goal checked at one client count (``ratio`` None: not measured)."""

    label: str
    clients: int | None
    ratio: float | None
    at_least: float
    note: str = ""

    @property
    def met(self) -> bool | None:
        """Whether the goal is met; None when it was not measured."""
        return None if self.ratio is None else self.ratio >= self.at_least


def ratio(value: float, baseline: float) -> float | None:
    """Return ``value / baseline``, or None when the baseline is not positive."""
    return value / baseline if baseline > 0 else None


def format_ratio(r: float | None) -> str:
    """Format a ratio as ``0.42x`` (``-`` for none)."""
    if r is None:
        return "-"
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def evaluate(figures: Figures, baselines: set[str], batch: int) -> list[Outcome]:
    """Check every goal whose baseline was measured, at each client count it applies to.

    Args:
        figures: Median figures per (workload, clients, target).
        baselines: The baselines that were measured (``--baseline``, less those skipped).
        batch: The run's ``--batch``.

    Returns:
        One outcome per goal and client count; goals that could not be measured get one
        outcome with ``ratio`` None and a note saying what would measure them.
    """
    out: list[Outcome] = []
    clients_run = sorted({c for (_, c, _) in figures})
    for goal in GOALS:
        if goal.baseline not in baselines:
            continue
        counts = [goal.clients] if goal.clients else clients_run
        found = False
        for c in counts:
            mine = figures.get((goal.workload, c, SHARDLESS))
            theirs = figures.get((goal.workload, c, goal.baseline))
            if mine is None or theirs is None or (goal.batch and goal.batch != batch):
                continue
            found = True
            out.append(Outcome(goal.label, c, ratio(mine[goal.metric], theirs[goal.metric]),
                               goal.at_least))
        if not found:
            need = [f"--workload {goal.workload}"]
            if goal.clients:
                need.append(f"--clients {goal.clients}")
            if goal.batch and goal.batch != batch:
                need.append(f"--batch {goal.batch}")
            out.append(Outcome(goal.label, goal.clients, None, goal.at_least,
                               "needs " + " ".join(need)))
    workload, few, many, at_least = SCALING
    label = f"{workload} from {many} clients >= {at_least:g}x {workload} from {few} clients"
    low = figures.get((workload, few, SHARDLESS))
    high = figures.get((workload, many, SHARDLESS))
    if low is not None and high is not None:
        out.append(Outcome(label, many, ratio(high["ops_per_s"], low["ops_per_s"]), at_least))
    elif any(w == workload for (w, _, _) in figures):
        out.append(Outcome(label, many, None, at_least,
                           f"needs --workload {workload} --clients {few},{many}"))
    return out
