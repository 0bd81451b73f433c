"""Unit tests of tests.faults.cycles: the real-time edges, Tarjan's components, the cycle search
and its classification, on hand-made and generated graphs."""

from __future__ import annotations

import itertools
import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.faults.cycles import (
    G0,
    G0_REALTIME,
    G1C,
    G2,
    G2_REALTIME,
    G_SINGLE,
    G_SINGLE_REALTIME,
    RT,
    RW,
    WR,
    WW,
    DependencyGraph,
    Step,
    classify,
    find_cycles,
    realtime_edges,
    strongly_connected,
)

quick = settings(database=None, deadline=None, max_examples=200)


def graph(n: int, *edges: tuple[int, int, int]) -> DependencyGraph:
    """A graph of ``n`` nodes and the edges ``(a, b, kind)``."""
    g = DependencyGraph(n)
    for a, b, kind in edges:
        g.add(a, b, kind, f"k{a}{b}")
    return g


def reachable(edges: set[tuple[int, int]], n: int) -> set[tuple[int, int]]:
    """The transitive closure of ``edges`` (Floyd-Warshall style, for small ``n``)."""
    reach = set(edges)
    for k in range(n):
        for i in range(n):
            if (i, k) not in reach:
                continue
            for j in range(n):
                if (k, j) in reach:
                    reach.add((i, j))
    return reach


def assert_is_cycle_of(cycle, g: DependencyGraph) -> None:  # type: ignore[no-untyped-def]
    """Each step is an edge of its kind, the steps close up, and the kind fits the steps."""
    steps = cycle.steps
    assert len(steps) >= 2
    for s, nxt in zip(steps, [*steps[1:], steps[0]], strict=True):
        assert s.dst == nxt.src
        assert g.kinds(s.src, s.dst) & s.kind
    assert len(set(cycle.nodes)) == len(steps), "a cycle visits each txn once"
    assert cycle.kind == classify(steps)


def test_classify_names_cycles_by_their_steps():
    """ww only is G0; with a wr G1c; one rw G-single; two rw G2; any rt adds -realtime."""
    def kind_of(*kinds: int) -> str:
        return classify([Step(i, i + 1, k) for i, k in enumerate(kinds)])

    assert kind_of(WW, WW) == G0
    assert kind_of(WW, WR) == G1C
    assert kind_of(WR, WR, RW) == G_SINGLE
    assert kind_of(RW, RW) == G2
    assert kind_of(RW, WR, RW, WW) == G2
    assert kind_of(WW, RT) == G0_REALTIME
    assert kind_of(RW, WR, RT) == G_SINGLE_REALTIME
    assert kind_of(RW, RW, RT) == G2_REALTIME


def test_two_txns_writing_two_keys_in_opposite_orders_are_g0():
    """T0 -ww-> T1 -ww-> T0 is a write cycle; nothing weaker is reported beside it."""
    g = graph(2, (0, 1, WW), (1, 0, WW))
    (cycle,) = find_cycles(g)
    assert cycle.kind == G0
    assert_is_cycle_of(cycle, g)


def test_each_step_counts_as_its_weakest_edge():
    """T0 -ww,rw-> T1 -wr-> T0: the rw is not needed, so the cycle is G1c, not G-single."""
    g = graph(2, (0, 1, WW), (0, 1, RW), (1, 0, WR))
    kinds = {c.kind for c in find_cycles(g)}
    assert kinds == {G1C}


def test_read_skew_is_g_single_and_write_skew_g2():
    """One rw closed by wr edges is G-single; two rw edges alone are G2."""
    single = graph(3, (0, 1, WR), (1, 2, WR), (2, 0, RW))
    (cycle,) = find_cycles(single)
    assert cycle.kind == G_SINGLE and set(cycle.nodes) == {0, 1, 2}
    skew = graph(2, (0, 1, RW), (1, 0, RW))
    (cycle,) = find_cycles(skew)
    assert cycle.kind == G2


def test_the_shortest_cycle_of_a_component_is_reported():
    """A long G2 ring with a chord: the 2-txn cycle through the chord is the one shown."""
    g = graph(6, *((i, (i + 1) % 6, RW) for i in range(6)), (3, 2, RW))
    cycles = find_cycles(g)
    assert [(c.kind, sorted(c.nodes)) for c in cycles] == [(G2, [2, 3])]


def test_a_cycle_through_real_time_is_reported_only_where_dependencies_have_none():
    """T0 -wr-> T1 -rw-> T2, and T2 returned before T0 began: G-single-realtime. A component
    whose cycle needs no rt edge is not reported again as a realtime one."""
    g = graph(3, (0, 1, WR), (1, 2, RW), (2, 0, RT))
    (cycle,) = find_cycles(g)
    assert cycle.kind == G_SINGLE_REALTIME
    assert [s.name for s in cycle.steps].count("rt") == 1
    g2 = graph(2, (0, 1, RW), (1, 0, RW), (0, 1, RT))
    assert [c.kind for c in find_cycles(g2)] == [G2]


def test_components_are_found_as_a_brute_force_closure_finds_them():
    """Random graphs: two nodes share a component iff each reaches the other."""
    rnd = random.Random(3)
    for _ in range(200):
        n = rnd.randint(1, 9)
        edges = {(a, b) for a in range(n) for b in range(n) if a != b and rnd.random() < 0.2}
        g = graph(n, *((a, b, WW) for a, b in edges))
        reach = reachable(edges, n)
        got = {frozenset(c) for c in strongly_connected(g)}
        want = {frozenset({a} | {b for b in range(n) if (a, b) in reach and (b, a) in reach})
                for a in range(n)}
        assert got == {c for c in want if len(c) > 1}


@quick
@given(st.integers(0, 2**32), st.integers(2, 12), st.floats(0.05, 0.5))
def test_random_graphs_have_a_reported_cycle_iff_they_are_cyclic(seed, n, density):
    """Whatever the edge kinds: no cycle reported on a DAG, at least one on a cyclic graph, and
    each reported cycle is a real one whose kind fits its steps."""
    rnd = random.Random(seed)
    kinds = (WW, WR, RW, RT)
    order = list(range(n))
    rnd.shuffle(order)
    acyclic = rnd.random() < 0.5
    g = DependencyGraph(n)
    pairs = set()
    for a, b in itertools.permutations(range(n), 2):
        if rnd.random() < density and (not acyclic or order.index(a) < order.index(b)):
            g.add(a, b, rnd.choice(kinds))
            pairs.add((a, b))
    cyclic = any(a == b for a, b in reachable(pairs, n))
    cycles = find_cycles(g)
    assert bool(cycles) == cyclic
    for cycle in cycles:
        assert_is_cycle_of(cycle, g)


@quick
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 6), st.booleans()), max_size=30))
def test_realtime_edges_have_the_closure_of_the_real_time_order(spans):
    """a reaches b iff a returned strictly before b was invoked (unknown returns: never)."""
    intervals = [(float(c), math.inf if unknown else float(c + d)) for c, d, unknown in spans]
    n = len(intervals)
    edges = realtime_edges(intervals)
    assert all(intervals[a][1] < intervals[b][0] for a, b in edges)
    want = {(a, b) for a in range(n) for b in range(n) if intervals[a][1] < intervals[b][0]}
    assert reachable(set(edges), n) == want


def test_realtime_edges_stay_linear_in_the_history():
    """10,000 ops by 8 processes: a few edges per op, not n**2 / 2."""
    rnd = random.Random(1)
    free = [0.0] * 8
    intervals = []
    for _ in range(10_000):
        p = rnd.randrange(8)
        call = free[p] + rnd.random()
        ret = math.inf if rnd.random() < 0.02 else call + rnd.random() * 3
        free[p] = call + 3 if math.isinf(ret) else ret
        intervals.append((call, ret))
    edges = realtime_edges(intervals)
    assert len(edges) < 20 * len(intervals)


def test_a_cyclic_graph_of_ten_thousand_txns_is_searched_quickly():
    """A ring of 10,000 rw edges with many chords: the search is bounded, one cycle per kind."""
    n = 10_000
    rnd = random.Random(5)
    g = DependencyGraph(n)
    for i in range(n):
        g.add(i, (i + 1) % n, RW)
        g.add(i, rnd.randrange(n), rnd.choice((WR, RW)))
    cycles = find_cycles(g)
    assert cycles and all(c.kind in (G1C, G_SINGLE, G2) for c in cycles)
    for cycle in cycles:
        assert_is_cycle_of(cycle, g)
    assert len(cycles) <= 3
