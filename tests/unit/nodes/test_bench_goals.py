"""Unit tests of nodes.bench.goals: ratios and the project's targets, met or not."""

from __future__ import annotations

from nodes.bench.goals import SHARDLESS, evaluate, format_ratio, ratio


def _fig(ops: float, rows: float | None = None) -> dict[str, float]:
    return {"ops_per_s": ops, "rows_per_s": rows if rows is not None else ops}


def test_ratio_and_its_format() -> None:
    """A ratio is value / baseline; no baseline gives none; it prints as 0.42x."""
    assert ratio(42.0, 100.0) == 0.42
    assert ratio(1.0, 0.0) is None
    assert format_ratio(0.4199) == "0.42x"
    assert format_ratio(None) == "-"
    assert format_ratio(12.34) == "12.3x"


def test_write_goals_are_checked_at_64_clients_only() -> None:
    """Upserts from 64 clients: 0.6x postgres meets >= 0.5x, 0.9x etcd misses >= 1.0x."""
    figures = {
        ("write", 64, SHARDLESS): _fig(600), ("write", 64, "postgres"): _fig(1000),
        ("write", 64, "etcd"): _fig(667), ("write", 16, SHARDLESS): _fig(1),
        ("write", 16, "postgres"): _fig(1000),
    }
    out = {o.label: o for o in evaluate(figures, {"postgres", "etcd"}, 100)
           if o.label.startswith("write from 64")}
    pg = out["write from 64 clients (ops/s) >= 0.5x postgres"]
    etcd = out["write from 64 clients (ops/s) >= 1x etcd"]
    assert (pg.clients, pg.met) == (64, True) and pg.ratio == 0.6
    assert etcd.met is False


def test_batched_goals_compare_rows_and_need_a_batch_of_100() -> None:
    """multi-write compares rows/s; with --batch 10 it is not measured, and says why."""
    figures = {("multi-write", 16, SHARDLESS): _fig(10, 1000),
               ("multi-write", 16, "postgres"): _fig(50, 900)}
    [met] = [o for o in evaluate(figures, {"postgres"}, 100) if "multi-write" in o.label]
    assert met.met is True and met.ratio == 1000 / 900
    [unmeasured] = [o for o in evaluate(figures, {"postgres"}, 10) if "multi-write" in o.label]
    assert unmeasured.met is None and "--batch 100" in unmeasured.note


def test_goals_of_unmeasured_baselines_are_left_out_and_missing_workloads_named() -> None:
    """Without postgres no postgres goal shows; with it, a workload not run is named."""
    figures = {("get", 16, SHARDLESS): _fig(950), ("get", 16, "echo"): _fig(1000)}
    labels = {o.label: o for o in evaluate(figures, {"echo"}, 100)}
    assert set(labels) == {"get (ops/s) >= 0.9x echo"}
    assert labels["get (ops/s) >= 0.9x echo"].met is True
    with_pg = {o.label: o for o in evaluate(figures, {"echo", "postgres"}, 100)}
    assert with_pg["rmw (ops/s) >= 0.5x postgres"].note == "needs --workload rmw"


def test_goals_apply_at_every_client_count_run() -> None:
    """A goal without a client count is checked at each count the run used."""
    figures = {("rmw", 4, SHARDLESS): _fig(40), ("rmw", 4, "postgres"): _fig(100),
               ("rmw", 64, SHARDLESS): _fig(60), ("rmw", 64, "postgres"): _fig(100)}
    out = [(o.clients, o.met) for o in evaluate(figures, {"postgres"}, 100) if "rmw" in o.label]
    assert out == [(4, False), (64, True)]


def test_write_scaling_from_4_to_64_clients() -> None:
    """Upserts from 64 clients must be >= 3x those from 4; one count alone says what is
    missing."""
    both = {("write", 4, SHARDLESS): _fig(100), ("write", 64, SHARDLESS): _fig(350)}
    [scaling] = [o for o in evaluate(both, set(), 100) if "from 4 clients" in o.label]
    assert scaling.ratio == 3.5 and scaling.met is True
    one = {("write", 64, SHARDLESS): _fig(350)}
    [missing] = [o for o in evaluate(one, set(), 100) if "from 4 clients" in o.label]
    assert missing.met is None and "--clients 4,64" in missing.note
