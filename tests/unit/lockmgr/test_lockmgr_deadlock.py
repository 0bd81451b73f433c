"""Unit tests of lockmgr.deadlock.victims: cycles, the youngest victim, ties and determinism."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from lockmgr import victims

quick = settings(database=None, deadline=None, max_examples=300)

Graph = dict[str, set[str]]


def reaches(graph: Graph, src: str, dst: str) -> bool:
    """Whether a path of at least one edge leads from ``src`` to ``dst``."""
    seen: set[str] = set()
    todo = list(graph.get(src, ()))
    while todo:
        n = todo.pop()
        if n == dst:
            return True
        if n not in seen:
            seen.add(n)
            todo.extend(graph.get(n, ()))
    return False


def on_a_cycle(graph: Graph, node: str) -> bool:
    """Whether ``node`` lies on some cycle of ``graph``."""
    return reaches(graph, node, node)


def is_acyclic(graph: Graph) -> bool:
    """Whether ``graph`` has no cycle (Kahn's algorithm)."""
    nodes = set(graph) | {w for ws in graph.values() for w in ws}
    indegree = dict.fromkeys(nodes, 0)
    for ws in graph.values():
        for w in ws:
            indegree[w] += 1
    ready = [n for n, d in indegree.items() if d == 0]
    removed = 0
    while ready:
        n = ready.pop()
        removed += 1
        for w in graph.get(n, ()):
            indegree[w] -= 1
            if indegree[w] == 0:
                ready.append(w)
    return removed == len(nodes)


def without(graph: Graph, gone: set[str]) -> Graph:
    """``graph`` with the nodes in ``gone`` and their edges removed."""
    return {t: ws - gone for t, ws in graph.items() if t not in gone}


def test_no_edges_means_no_victims():
    """An empty waits-for graph has no deadlock."""
    assert victims({}, {}) == []


def test_a_chain_without_a_cycle_has_no_victims():
    """a -> b -> c is waiting, not a deadlock."""
    assert victims({"a": {"b"}, "b": {"c"}}, {"a": 1, "b": 2, "c": 3}) == []


def test_a_diamond_without_a_cycle_has_no_victims():
    """Two paths to one node are not a cycle."""
    edges = {"a": {"b", "c"}, "b": {"d"}, "c": {"d"}}
    assert victims(edges, {"a": 4, "b": 3, "c": 2, "d": 1}) == []


def test_a_two_cycle_aborts_the_youngest():
    """a <-> b: b started later, so b is the victim."""
    assert victims({"a": {"b"}, "b": {"a"}}, {"a": 1.0, "b": 2.0}) == ["b"]
    assert victims({"a": {"b"}, "b": {"a"}}, {"a": 2.0, "b": 1.0}) == ["a"]


def test_a_three_cycle_aborts_the_youngest():
    """a -> b -> c -> a: the latest start is the victim, whatever its place in the cycle."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert victims(edges, {"a": 10.0, "b": 30.0, "c": 20.0}) == ["b"]
    assert victims(edges, {"a": 30.0, "b": 10.0, "c": 20.0}) == ["a"]
    assert victims(edges, {"a": 10.0, "b": 20.0, "c": 30.0}) == ["c"]


def test_two_disjoint_cycles_get_one_victim_each():
    """a <-> b and c -> d -> e -> c: one victim per cycle, each its cycle's youngest."""
    edges = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}}
    started = {"a": 5.0, "b": 1.0, "c": 2.0, "d": 9.0, "e": 3.0}
    assert sorted(victims(edges, started)) == ["a", "d"]


def test_a_cycle_with_a_tail_aborts_a_member_of_the_cycle():
    """x -> a, a -> b -> c -> a: the youngest, x, is only waiting; the victim is on the cycle."""
    edges = {"x": {"a"}, "y": {"x"}, "a": {"b"}, "b": {"c"}, "c": {"a"}}
    started = {"x": 100.0, "y": 200.0, "a": 1.0, "b": 3.0, "c": 2.0}
    assert victims(edges, started) == ["b"]


def test_a_cycle_reached_from_outside_and_leading_out_aborts_only_a_member():
    """Edges into and out of a cycle do not change its victim."""
    edges = {"x": {"a"}, "a": {"b", "z"}, "b": {"a"}, "z": set()}
    started = {"x": 9.0, "a": 2.0, "b": 1.0, "z": 8.0}
    assert victims(edges, started) == ["a"]


def test_a_tie_in_start_time_aborts_the_larger_id():
    """With equal starts, the larger id is the victim (so every node agrees)."""
    assert victims({"a": {"b"}, "b": {"a"}}, {"a": 1.0, "b": 1.0}) == ["b"]
    edges = {"n1-9": {"n2-1"}, "n2-1": {"n1-10"}, "n1-10": {"n1-9"}}
    started = dict.fromkeys(edges, 5.0)
    assert victims(edges, started) == ["n2-1"]


def test_a_transaction_without_a_start_time_counts_as_the_oldest():
    """A missing start time never makes a transaction the victim when another can be."""
    assert victims({"a": {"b"}, "b": {"a"}}, {"b": 0.0}) == ["b"]
    assert victims({"a": {"b"}, "b": {"a"}}, {"a": -1e9}) == ["a"]


def test_a_cycle_with_no_start_times_aborts_the_largest_id():
    """With no start time known at all, the tie rule picks the larger id."""
    assert victims({"a": {"b"}, "b": {"c"}, "c": {"a"}}, {}) == ["c"]


def test_a_waiter_on_an_unknown_transaction_is_not_a_deadlock():
    """Edges to transactions that wait for nothing (not keys of the graph) end paths."""
    assert victims({"a": {"zz"}, "b": {"a", "zz"}}, {"a": 1, "b": 2}) == []


def test_two_cycles_sharing_a_node_may_need_one_victim_only():
    """a <-> b and b <-> c: b is the youngest and breaks both cycles at once."""
    edges = {"a": {"b"}, "b": {"a", "c"}, "c": {"b"}}
    assert victims(edges, {"a": 1.0, "b": 9.0, "c": 2.0}) == ["b"]


def test_the_input_is_not_modified():
    """victims() works on a copy of the graph."""
    edges = {"a": {"b"}, "b": {"a"}}
    victims(edges, {"a": 1, "b": 2})
    assert edges == {"a": {"b"}, "b": {"a"}}


@st.composite
def graphs(draw: st.DrawFn) -> tuple[Graph, dict[str, float]]:
    """A random waits-for graph over a few ids, with start times that often tie or are
    missing."""
    ids = [f"t{i}" for i in range(draw(st.integers(1, 9)))]
    edges: Graph = {}
    for t in ids:
        if draw(st.booleans()):
            edges[t] = set(draw(st.lists(st.sampled_from(ids), max_size=3)))
    started = {}
    for t in ids:
        if draw(st.integers(0, 4)):
            started[t] = float(draw(st.integers(0, 4)))
    return edges, started


def shuffled(graph: Graph, started: dict[str, float], seed: int
             ) -> tuple[Graph, dict[str, float]]:
    """The same graph with its dicts and sets built in another order."""
    rng = random.Random(seed)
    keys = list(graph)
    rng.shuffle(keys)
    out: Graph = {}
    for k in keys:
        ws = list(graph[k])
        rng.shuffle(ws)
        s: set[str] = set()
        for w in ws:
            s.add(w)
        out[k] = s
    skeys = list(started)
    rng.shuffle(skeys)
    return out, {k: started[k] for k in skeys}


@quick
@given(graphs())
def test_removing_the_victims_leaves_no_cycle(g: tuple[Graph, dict[str, float]]):
    """After aborting every victim, the waits-for graph is acyclic."""
    edges, started = g
    assert is_acyclic(without(edges, set(victims(edges, started))))


@quick
@given(graphs())
def test_every_victim_was_on_a_cycle(g: tuple[Graph, dict[str, float]]):
    """Each victim lies on a cycle of the graph left after the victims chosen before it (so
    on a cycle of the original graph too), and no transaction is chosen twice."""
    edges, started = g
    chosen = victims(edges, started)
    assert len(chosen) == len(set(chosen))
    for i, v in enumerate(chosen):
        assert on_a_cycle(edges, v), (v, edges)
        assert on_a_cycle(without(edges, set(chosen[:i])), v), (v, chosen, edges)


@quick
@given(graphs())
def test_an_acyclic_graph_has_no_victims(g: tuple[Graph, dict[str, float]]):
    """No cycle, no victim."""
    edges, started = g
    if is_acyclic(edges):
        assert victims(edges, started) == []


@quick
@given(graphs(), st.integers(0, 2**32))
def test_the_same_graph_gives_the_same_victims_in_any_order(g: tuple[Graph, dict[str, float]],
                                                             seed: int):
    """Every node that sees the same graph picks the same victims, in the same order, however
    its dicts and sets happen to be ordered."""
    edges, started = g
    e2, s2 = shuffled(edges, started, seed)
    assert victims(e2, s2) == victims(edges, started)


@quick
@given(graphs())
def test_a_victim_is_the_youngest_of_some_cycle_through_it(g: tuple[Graph, dict[str, float]]):
    """Each victim is the youngest (by start, then id) of some cycle through it in the graph
    left when it was chosen: the cycle lies among the transactions no younger than it."""
    edges, started = g
    chosen = victims(edges, started)

    def age(t: str) -> tuple[float, str]:
        return (started.get(t, float("-inf")), t)

    for i, v in enumerate(chosen):
        rest = without(edges, set(chosen[:i]))
        # Nodes no younger than v (v itself included): a cycle through v inside them exists.
        older = {t for t in set(rest) | {w for ws in rest.values() for w in ws}
                 if age(t) <= age(v)}
        sub = {t: ws & older for t, ws in rest.items() if t in older}
        assert on_a_cycle(sub, v), (v, chosen, edges, started)
