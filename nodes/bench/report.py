"""What a bench run prints and stores: progress, tables, ratios, targets, memory, JSON.

Owns: :class:`RoundRecord` (one round of one target), :func:`aggregate` (medians over rounds
per workload, client count and target; latency percentiles from the rounds' merged
histograms), :func:`ratios`, :class:`Display` (a live progress line with ``rich`` when stdout
is a terminal, plain lines otherwise; the tables), and :func:`json_report`.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nodes.bench.goals import SHARDLESS, Outcome, format_ratio, ratio
from nodes.bench.stats import Histogram, Tally, median
from nodes.bench.workloads import Workload

Key = tuple[str, int, str]
"""(workload, clients, target)."""


@dataclass
class RoundRecord:
    """One round of one target: what was run and what it measured."""

    workload: Workload
    clients: int
    round_no: int
    target: str
    tally: Tally


def aggregate(records: Iterable[RoundRecord]) -> dict[Key, dict[str, Any]]:
    """Medians over rounds per (workload, clients, target).

    Returns:
        Per key: ``ops_per_s`` and ``rows_per_s`` (medians of the rounds), ``p50_ms``,
        ``p99_ms``, ``p999_ms`` (of all rounds' operations together), ``errors`` and
        ``retries`` (summed), ``rounds``.
    """
    groups: dict[Key, list[Tally]] = {}
    for r in records:
        groups.setdefault((r.workload.name, r.clients, r.target), []).append(r.tally)
    out: dict[Key, dict[str, Any]] = {}
    for key, tallies in groups.items():
        hist = Histogram()
        errors: Counter[str] = Counter()
        retries: Counter[str] = Counter()
        for t in tallies:
            hist.merge(t.hist)
            errors.update(t.errors)
            retries.update(t.retries)
        out[key] = {
            "ops_per_s": median(t.ops_per_s for t in tallies),
            "rows_per_s": median(t.rows_per_s for t in tallies),
            "p50_ms": hist.percentile(50) * 1e3, "p99_ms": hist.percentile(99) * 1e3,
            "p999_ms": hist.percentile(99.9) * 1e3,
            "errors": dict(errors), "retries": dict(retries), "rounds": len(tallies),
        }
    return out


def metric(workload: Workload) -> str:
    """The figure a workload is compared by: rows/s for the batched ones, else ops/s."""
    return "rows_per_s" if workload.uses_batch else "ops_per_s"


def ratios(figures: Mapping[Key, Mapping[str, Any]], workloads: Sequence[Workload]
           ) -> list[dict[str, Any]]:
    """Shardless's figure divided by each baseline's, per workload and client count."""
    by_name = {w.name: w for w in workloads}
    out = []
    for (w, c, t), fig in figures.items():
        if t == SHARDLESS:
            continue
        mine = figures.get((w, c, SHARDLESS))
        if mine is None:
            continue
        m = metric(by_name[w])
        out.append({"workload": w, "clients": c, "baseline": t, "metric": m,
                    "ratio": ratio(mine[m], fig[m])})
    return out


def _ms(x: float) -> str:
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def _counts(c: Mapping[str, int]) -> str:
    return " ".join(f"{k}:{n}" for k, n in sorted(c.items())) or "0"


class Display:
    """Prints to the terminal with ``rich``: a live line while a round runs (only when stdout
    is a terminal; plain lines otherwise), and the tables."""

    def __init__(self) -> None:
        from rich.console import Console

        self.live_ok = sys.stdout.isatty()
        self.console = Console(highlight=False, soft_wrap=False,
                               width=None if self.live_ok else 160)
        self._live: Any = None

    def say(self, text: str) -> None:
        """Print one line."""
        self.console.print(text, markup=False)

    def alarm(self, text: str) -> None:
        """Print a line that must not be missed."""
        self.console.print(f"!!! {text} !!!", style="bold white on red", markup=False)

    def progress(self, text: str) -> None:
        """Show the live line (no-op when stdout is not a terminal)."""
        if not self.live_ok:
            return
        from rich.live import Live
        from rich.text import Text

        if self._live is None:
            self._live = Live(Text(text), console=self.console, transient=True,
                              refresh_per_second=4)
            self._live.start()
        else:
            self._live.update(Text(text))

    def end_progress(self) -> None:
        """Remove the live line."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def workload_table(self, workload: Workload, clients: int, layout: Sequence[int],
                       figures: Mapping[Key, Mapping[str, Any]], targets: Sequence[str],
                       rounds: int, length: str) -> None:
        """The final table of one workload at one client count."""
        from rich.table import Table

        m = metric(workload)
        table = Table(title=f"{workload.name}: {workload.description} - {clients} clients "
                            f"({len(layout)} processes x {'/'.join(map(str, sorted(set(layout))))} "
                            f"threads), {rounds} round(s) of {length}, medians",
                      title_justify="left")
        table.add_column("target")
        table.add_column("ops/s", justify="right")
        if workload.uses_batch:
            table.add_column("rows/s", justify="right")
        for col in ("p50 ms", "p99 ms", "p999 ms"):
            table.add_column(col, justify="right")
        table.add_column("errors")
        table.add_column("retries")
        table.add_column("shardless / this", justify="right")
        mine = figures.get((workload.name, clients, SHARDLESS))
        for t in targets:
            fig = figures.get((workload.name, clients, t))
            if fig is None:
                continue
            cells = [t, f"{fig['ops_per_s']:,.0f}"]
            if workload.uses_batch:
                cells.append(f"{fig['rows_per_s']:,.0f}")
            cells += [_ms(fig["p50_ms"]), _ms(fig["p99_ms"]), _ms(fig["p999_ms"]),
                      _counts(fig["errors"]), _counts(fig["retries"])]
            cells.append("" if t == SHARDLESS or mine is None
                         else format_ratio(ratio(mine[m], fig[m])))
            table.add_row(*cells, style="bold red" if fig["errors"] else None)
        self.console.print(table)

    def summary_table(self, figures: Mapping[Key, Mapping[str, Any]],
                      workloads: Sequence[Workload], clients: Sequence[int],
                      baselines: Sequence[str]) -> None:
        """Shardless's figure per workload and client count, and its ratio to each baseline."""
        from rich.table import Table

        table = Table(title="Shardless against the baselines (medians; ratio = Shardless / "
                            "baseline, rows/s for multi-write, batch-get and scan, "
                            "else ops/s)", title_justify="left")
        for col in ("workload", "clients", "shardless"):
            table.add_column(col, justify="left" if col == "workload" else "right")
        for b in baselines:
            table.add_column(f"vs {b}", justify="right")
        for c in clients:
            for w in workloads:
                mine = figures.get((w.name, c, SHARDLESS))
                if mine is None:
                    continue
                m = metric(w)
                unit = " rows/s" if m == "rows_per_s" else " ops/s"
                cells = [w.name, str(c), f"{mine[m]:,.0f}{unit}"]
                for b in baselines:
                    fig = figures.get((w.name, c, b))
                    cells.append(f"{format_ratio(ratio(mine[m], fig[m]))} {b}" if fig else "-")
                table.add_row(*cells)
        self.console.print(table)

    def goals(self, outcomes: Sequence[Outcome]) -> None:
        """The project's targets: measured ratio, met or not met."""
        if not outcomes:
            return
        from rich.table import Table

        table = Table(title="Targets", title_justify="left")
        for col in ("target", "clients", "measured", "result"):
            table.add_column(col)
        for o in outcomes:
            if o.met is None:
                result, style = f"not measured ({o.note})", "dim"
            else:
                result, style = ("met", "green") if o.met else ("NOT MET", "bold red")
            table.add_row(o.label, str(o.clients or "-"), format_ratio(o.ratio), result,
                          style=style)
        self.console.print(table)

    def memory(self, summary: Mapping[str, Any]) -> None:
        """RSS per node after warm-up and at the end, and the growth."""
        if not summary.get("warm_rss_kb"):
            return
        from rich.table import Table

        table = Table(title=f"Node private memory (RssAnon) during the Shardless rounds; "
                            f"target: {summary['target']}; mapped volume pages (RssFile, "
                            f"shared page cache) apart", title_justify="left")
        for col in ("node", "pid", "after warm-up", "at the end", "growth", "mapped at end"):
            table.add_column(col, justify="left" if col == "node" else "right")
        warm, end, growth = summary["warm_rss_kb"], summary["end_rss_kb"], summary["growth_pct"]
        mapped = summary.get("end_mapped_kb", {})
        for name in sorted(warm):
            table.add_row(name, str(summary["pids"].get(name, "")), f"{warm[name] / 1024:.1f} MiB",
                          f"{end.get(name, 0) / 1024:.1f} MiB", f"{growth.get(name, 0):+.1f}%",
                          f"{mapped.get(name, 0) / 1024:.1f} MiB")
        self.console.print(table)
        total = summary["total_growth_pct"]
        loaded = summary["loaded_after_warm_s"]
        verdict = {True: "met", False: "NOT MET"}.get(summary["met"],
                                                      f"indicative only: {loaded:.0f} s of "
                                                      "load after warm-up, the target is "
                                                      "judged over 10 minutes")
        self.say(f"memory: private memory grew {total:+.1f}% after warm-up over {loaded:.0f} s "
                 f"of Shardless load: {verdict}" if total is not None else
                 "memory: no samples")


def json_report(records: Sequence[RoundRecord], figures: Mapping[Key, Mapping[str, Any]],
                workloads: Sequence[Workload]) -> list[dict[str, Any]]:
    """Per workload, client count and target: each round's raw figures and the medians."""
    out: dict[Key, dict[str, Any]] = {}
    for r in records:
        key = (r.workload.name, r.clients, r.target)
        entry = out.setdefault(key, {"workload": r.workload.name, "clients": r.clients,
                                     "target": r.target, "rounds": []})
        entry["rounds"].append({"round": r.round_no, **r.tally.figures()})
    for key, entry in out.items():
        entry["median"] = dict(figures[key])
    return list(out.values())
