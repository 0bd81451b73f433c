"""Unit tests of nodes.bench.workloads: the mixes, parsing --workload, drawing operations."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from nodes.bench.keys import Uniform
from nodes.bench.targets.cluster import RpcSession
from nodes.bench.targets.etcd import EtcdSession
from nodes.bench.targets.lmdb import LmdbSession
from nodes.bench.targets.postgres import PostgresSession
from nodes.bench.workloads import KINDS, RPCS, SHORT_SCAN_MAX, WORKLOADS, Picker, draw, parse


def _shares(name: str, draws: int = 40_000) -> dict[str, float]:
    picker = Picker(parse(name)[0])
    rng = random.Random(1)
    counts = Counter(picker.next(rng) for _ in range(draws))
    return {k: n / draws for k, n in counts.items()}


@pytest.mark.parametrize(("name", "expected"), [
    ("ycsb-a", {"read": 0.5, "update": 0.5}),
    ("ycsb-b", {"read": 0.95, "update": 0.05}),
    ("ycsb-c", {"read": 1.0}),
    ("ycsb-e", {"short_scan": 0.95, "insert": 0.05}),
    ("ycsb-f", {"read": 0.5, "read_modify_write": 0.5}),
    ("rmw", {"rmw": 1.0}),
    ("ycsb-a+rmw", {"read": 0.25, "update": 0.25, "rmw": 0.5}),
])
def test_picker_draws_each_kind_in_its_share(name: str, expected: dict[str, float]) -> None:
    """Over many draws each operation kind comes up in its share of the mix (within 1.5%)."""
    shares = _shares(name)
    assert set(shares) == set(expected)
    for kind, share in expected.items():
        assert abs(shares[kind] - share) < 0.015, (kind, shares[kind])


def test_every_workload_uses_known_kinds_with_weights_adding_up_to_one() -> None:
    """The workload table is well formed."""
    for w in WORKLOADS.values():
        assert set(w.kinds) <= set(KINDS)
        assert sum(weight for _, weight in w.mix) == pytest.approx(1.0)
    assert set(RPCS) == set(KINDS)


def test_parse_all_names_and_mixes() -> None:
    """'all' is every workload in table order; names and a+b mixes parse; repeats collapse."""
    assert [w.name for w in parse("all")] == list(WORKLOADS)
    assert [w.name for w in parse("ycsb-a, rmw,ycsb-a")] == ["ycsb-a", "rmw"]
    mixed = parse("ycsb-a+rmw+write")[0]
    assert mixed.name == "ycsb-a+rmw+write"
    assert dict(mixed.mix) == pytest.approx({"read": 1 / 6, "update": 1 / 6 + 1 / 3,
                                             "rmw": 1 / 3})


@pytest.mark.parametrize("spec", ["nope", "ycsb-a,", "ycsb-a+nope", ""])
def test_parse_refuses_unknown_workloads_naming_the_known_ones(spec: str) -> None:
    """An unknown or empty name is refused with the list of known workloads."""
    with pytest.raises(ValueError, match="choose from ycsb-a"):
        parse(spec)


def test_batched_and_account_workloads_are_marked() -> None:
    """rows/s is reported for the batched workloads; the bank total is checked for bank."""
    assert {w.name for w in WORKLOADS.values() if w.uses_batch} == {
        "multi-write", "batch-get", "scan"}
    assert {w.name for w in WORKLOADS.values() if w.uses_accounts} == {"bank"}


def test_draw_gives_each_kind_its_arguments() -> None:
    """Scans get a length (1-100 for YCSB-E, --batch for scan), batches distinct sorted keys,
    bank two different accounts and an amount, insert a new key."""
    rng = random.Random(2)
    keys = Uniform(1000)
    fresh = iter(range(10**9, 10**9 + 10))
    lengths = {draw("short_scan", rng, keys, 50, lambda: 0)[1] for _ in range(3000)}
    assert min(lengths) == 1 and max(lengths) == SHORT_SCAN_MAX
    assert draw("scan", rng, keys, 50, lambda: 0)[1] == 50
    (batch,) = draw("batch_get", rng, keys, 50, lambda: 0)
    assert len(batch) == 50 and batch == sorted(set(batch))
    for _ in range(200):
        a, b, amount = draw("bank", rng, keys, 50, lambda: 0)
        assert a != b and 1 <= amount <= 10
    assert draw("insert", rng, keys, 50, lambda: next(fresh)) == (10**9,)
    with pytest.raises(ValueError):
        draw("teleport", rng, keys, 50, lambda: 0)


@pytest.mark.parametrize("session", [RpcSession, EtcdSession, LmdbSession, PostgresSession])
def test_every_adapter_implements_every_operation_kind(session: type) -> None:
    """Each system's session has one method per kind, so any workload runs on any target."""
    for kind in KINDS:
        assert callable(getattr(session, kind, None)), kind
