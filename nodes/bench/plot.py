"""The ``--plot`` PNG: per workload and client count, throughput over time and latency CDFs.

One row per (workload, clients): on the left, operations per second for each target, second by
second through its rounds (laid end to end; log scale); on the right, the latency distribution
(the share of operations at most that slow, over all rounds) per target, on a log scale. When
node memory was sampled, a last row shows each node's private memory over the Shardless
rounds. Drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nodes.bench.report import RoundRecord
from nodes.bench.stats import Histogram


def draw(path: str, records: Sequence[RoundRecord], memory: Mapping[str, Any] | None) -> None:
    """Write the PNG to ``path``."""
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, int], dict[str, list[RoundRecord]]] = {}
    for r in records:
        groups.setdefault((r.workload.name, r.clients), {}).setdefault(r.target, []).append(r)
    samples = (memory or {}).get("samples") or []
    rows = len(groups) + (1 if samples else 0)
    fig, axes = plt.subplots(max(rows, 1), 2, figsize=(13, 3.0 * max(rows, 1)), squeeze=False)
    for row, ((workload, clients), by_target) in enumerate(groups.items()):
        left, right = axes[row]
        for target, rounds in by_target.items():
            series = [n for r in sorted(rounds, key=lambda r: r.round_no)
                      for n in r.tally.per_second]
            left.plot(range(len(series)), series, ".-", label=target, linewidth=1.2,
                      markersize=4)
            hist = Histogram()
            for r in rounds:
                hist.merge(r.tally.hist)
            if hist.total:
                xs, ys = zip(*hist.cdf(), strict=True)
                right.plot([x * 1e3 for x in xs], ys, label=target, linewidth=1.2)
        left.set_title(f"{workload}, {clients} clients: ops/s (rounds end to end)",
                       fontsize=9)
        left.set_xlabel("second")
        left.set_ylabel("ops/s (log)")
        left.set_yscale("log", nonpositive="mask")  # the targets differ by 100x and more
        left.legend(fontsize=7)
        right.set_title(f"{workload}, {clients} clients: latency distribution", fontsize=9)
        right.set_xscale("log")
        right.set_xlabel("latency (ms)")
        right.set_ylabel("share of ops at most this slow")
        right.set_ylim(0, 1.01)
        right.grid(True, which="both", alpha=0.3)
        right.legend(fontsize=7)
    if samples:
        ax, blank = axes[rows - 1]
        names = sorted({n for s in samples for n in s["rss_kb"]})
        for name in names:
            pts = [(s["t"], s["rss_kb"][name] / 1024) for s in samples if name in s["rss_kb"]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ".-", label=name, markersize=3)
        ax.set_title("node private memory (RssAnon) during the Shardless rounds", fontsize=9)
        ax.set_xlabel("seconds since the run began")
        ax.set_ylabel("MiB")
        ax.legend(fontsize=7)
        blank.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
