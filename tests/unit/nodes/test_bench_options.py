"""Unit tests of nodes.bench.options and the bench command's refusals (exit code 2)."""

from __future__ import annotations

import argparse
import importlib.util

import pytest

import nodes.bench
from nodes import cli
from nodes.bench.options import BadOption, add_arguments, settings
from tests.harness.imports import imported_by


def _parse(*argv: str) -> nodes.bench.Settings:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return settings(p.parse_args(list(argv)))


def test_defaults() -> None:
    """By default: every workload, 16 clients in 4 processes, 3 nodes, 3 rounds of 5 s."""
    s = _parse()
    assert len(s.workloads) == 12
    assert (s.client_counts, s.processes, s.nodes, s.rounds, s.seconds) == (
        (16,), 4, 3, 3, 5.0)
    assert (s.records, s.value_size, s.batch, s.distribution) == (10_000, 100, 100, "uniform")
    assert s.baselines == ()


def test_clients_are_spread_over_the_processes() -> None:
    """--clients N spreads N threads over the processes as evenly as can be."""
    s = _parse("--clients", "4,64,6", "--processes", "4")
    assert s.client_counts == (4, 64, 6)
    assert s.threads_per_process(64) == [16, 16, 16, 16]
    assert s.threads_per_process(6) == [2, 2, 1, 1]
    assert s.threads_per_process(2) == [1, 1]
    assert _parse("--processes", "3", "--threads", "5").client_counts == (15,)


@pytest.mark.parametrize(("argv", "message"), [
    (["--workload", "ycsb-z"], "unknown workload"),
    (["--records", "0"], "--records must be at least 1"),
    (["--records", "1", "--workload", "bank", "--batch", "1"], "at least 2 for the bank"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--batch", "20000"], "--batch must be at most --records"),
    (["--value-size", "-1"], "--value-size"),
    (["--value-size", "2000000"], "--value-size must be at most"),
    (["--seconds", "1", "--ops", "10"], "not both"),
    (["--seconds", "0"], "--seconds must be positive"),
    (["--ops", "3", "--clients", "4"], "at least the number of clients"),
    (["--rounds", "0"], "--rounds"),
    (["--processes", "0"], "--processes"),
    (["--clients", "4", "--threads", "2"], "--clients or --threads"),
    (["--clients", "4,x"], "is not N"),
    (["--clients", "0"], "--clients must be at least 1"),
    (["--nodes", "0"], "--nodes"),
    (["--nodes", "2", "--connect", "127.0.0.1:1"], "--nodes or --connect"),
    (["--connect", "localhost"], "is not HOST:PORT"),
    (["--baseline", "echo,mysql"], "unknown mysql"),
    (["--plot", "out.svg"], "must end with .png"),
    (["--json", "/no/such/dir/r.json"], "does not exist"),
    (["--warmup", "-1"], "--warmup"),
    (["--timeout", "0"], "--timeout"),
])
def test_bad_options_are_refused_with_a_message(argv: list[str], message: str) -> None:
    """Each bad option gets a BadOption naming what to change."""
    with pytest.raises(BadOption, match=message):
        _parse(*argv)


def test_bad_option_exits_2_with_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    """shardless bench with a bad option prints the reason and exits with code 2."""
    assert cli.main(["bench", "--records", "0"]) == 2
    assert "shardless bench: --records must be at least 1" in capsys.readouterr().err


def test_malformed_number_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A value argparse cannot read is refused by argparse itself, with exit code 2."""
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--seconds", "soon"])
    assert e.value.code == 2
    assert "--seconds" in capsys.readouterr().err


def test_missing_dependencies_name_the_extra(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Without rich (or matplotlib, psycopg when needed) the command names the bench extra."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("rich", "psycopg") else real(name, *a))
    assert cli.main(["bench", "--baseline", "postgres"]) == 2
    err = capsys.readouterr().err
    assert "rich, psycopg" in err and "pip install 'shardless[bench]'" in err


def test_the_cli_does_not_import_the_heavy_bench_modules() -> None:
    """shardless node/up pay nothing for the bench: its runner, rich, matplotlib and psycopg
    are not imported by building the command's parser."""
    loaded = imported_by(["--help"])
    assert [m for m in ("nodes.bench.runner", "rich", "matplotlib", "psycopg",
                        "nodes.bench.targets.cluster") if m in loaded] == []
