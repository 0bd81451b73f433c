"""Dependency graphs of transactions and the isolation anomalies their cycles reveal, after Adya
and Elle.

Owns: :class:`DependencyGraph` (transactions as integer nodes, edges labelled ``ww``, ``wr``,
``rw`` and ``rt``), :func:`realtime_edges` (a sparse edge set whose transitive closure is the
real-time order of a set of operations) and :func:`find_cycles` (strongly connected components by
Tarjan's algorithm, then a shortest cycle of each kind inside each component by breadth-first
search, classified). Does not own how edges are inferred from a history
(:mod:`tests.faults.list_append` does that for list-append) or any I/O.

Edge kinds (Adya, "Weak Consistency: A Generalized Theory and Optimistic Implementations for
Distributed Transactions"; Kingsbury & Alvaro, "Elle: Inferring Isolation Anomalies from
Experimental Observations"):

* ``ww``: T1 installed a version of a key and T2 the next one (write-write);
* ``wr``: T2 read the version T1 installed (write-read);
* ``rw``: T1 read a version and T2 installed the next one (an anti-dependency);
* ``rt``: T1 returned before T2 was invoked (real time). A serializable store may order T2
  before T1; only strict serializability (which Shardless promises) forbids it.

Cycle kinds. Each step of a cycle counts as the weakest kind of edge between its two
transactions (``ww`` < ``wr`` < ``rw`` < ``rt``), and the cycle is classified by its steps:

* :data:`G0`: ``ww`` steps only (a write cycle);
* :data:`G1C`: ``ww`` and ``wr`` steps, at least one ``wr`` (circular information flow);
* :data:`G_SINGLE`: exactly one ``rw`` step (read skew, fractured read);
* :data:`G2`: two or more ``rw`` steps (write skew);
* the same four with ``-realtime`` (:data:`G0_REALTIME` ...): a cycle that needs at least one
  ``rt`` step, so the history is serializable but not strictly serializable there (a stale read,
  for instance). These are searched only where the dependency edges alone have no cycle through
  the same transactions.

How cycles are searched, per strongly connected component S of the dependency edges (ww, wr,
rw): G0 in each component of S's ``ww`` edges; G1c through a ``wr`` edge in each component of
S's ``ww`` + ``wr`` edges; G-single as an ``rw`` edge closed by a path of ``ww`` and ``wr``
edges; and, when S has no G-single, G2 through an ``rw`` edge. Then, per component of all edges
that joins transactions of different dependency components, a cycle through an ``rt`` edge
between two of them. Each search tries at most :data:`MAX_TRIES` designated edges (fewer once
it has a cycle and has reached :data:`MAX_VISITS` nodes) and keeps the shortest cycle found, so
the work and the report are bounded however broken the history is.

Invariants: a graph with a cycle never passes (every component of more than one node yields at
least one cycle), and every cycle reported is a cycle of the graph whose kind is that of its
steps.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

WW: Final = 1
WR: Final = 2
RW: Final = 4
RT: Final = 8
DEPENDENCY: Final = WW | WR | RW
ALL_EDGES: Final = DEPENDENCY | RT
EDGE_NAMES: Final = {WW: "ww", WR: "wr", RW: "rw", RT: "rt"}
_BY_STRENGTH: Final = (WW, WR, RW, RT)

G0: Final = "G0"
G1C: Final = "G1c"
G_SINGLE: Final = "G-single"
G2: Final = "G2"
REALTIME_SUFFIX: Final = "-realtime"
G0_REALTIME: Final = G0 + REALTIME_SUFFIX
G1C_REALTIME: Final = G1C + REALTIME_SUFFIX
G_SINGLE_REALTIME: Final = G_SINGLE + REALTIME_SUFFIX
G2_REALTIME: Final = G2 + REALTIME_SUFFIX
CYCLE_KINDS: Final = (G0, G1C, G_SINGLE, G2, G0_REALTIME, G1C_REALTIME, G_SINGLE_REALTIME,
                      G2_REALTIME)

MAX_TRIES: Final = 32
"""Designated edges tried per search (the shortest cycle through any of them is kept)."""
MAX_VISITS: Final = 200_000
"""Once a search has a cycle, it stops trying more edges after reaching this many nodes."""


class DependencyGraph:
    """Nodes ``0..n-1`` and labelled edges between distinct nodes (self-loops are dropped).

    Each edge kind between two nodes keeps the first ``why`` given for it (for list-append, the
    key the dependency is on), for reports.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._succ: list[dict[int, int]] = [{} for _ in range(n)]
        self._why: dict[tuple[int, int, int], Hashable] = {}
        self.counts: dict[int, int] = dict.fromkeys(_BY_STRENGTH, 0)

    def add(self, a: int, b: int, kind: int, why: Hashable = None) -> None:
        """Add the edge ``a -kind-> b`` (nothing if ``a == b`` or it is already there)."""
        if a == b:
            return
        have = self._succ[a].get(b, 0)
        if have & kind:
            return
        self._succ[a][b] = have | kind
        self.counts[kind] += 1
        if why is not None:
            self._why[a, b, kind] = why

    def kinds(self, a: int, b: int) -> int:
        """The kinds of edge from ``a`` to ``b``, as a bit mask (0: none)."""
        return self._succ[a].get(b, 0)

    def why(self, a: int, b: int, kind: int) -> Hashable:
        """What the edge ``a -kind-> b`` was inferred from (None if nothing was given)."""
        return self._why.get((a, b, kind))

    def successors(self, a: int, mask: int = ALL_EDGES) -> Iterator[int]:
        """The nodes ``a`` has an edge to of some kind in ``mask``."""
        return (b for b, m in self._succ[a].items() if m & mask)

    def edges(self, kind: int, among: Iterable[int]) -> Iterator[tuple[int, int]]:
        """The edges of ``kind`` between nodes of ``among``, in node order."""
        inside = set(among)
        for a in sorted(inside):
            for b, m in self._succ[a].items():
                if m & kind and b in inside:
                    yield a, b

    @property
    def edge_count(self) -> int:
        """How many labelled edges there are (an edge with two kinds counts twice)."""
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a cycle: ``src -kind-> dst`` (``kind`` one of WW, WR, RW, RT) and why."""

    src: int
    dst: int
    kind: int
    why: Hashable = None

    @property
    def name(self) -> str:
        """The edge kind's name: ``ww``, ``wr``, ``rw`` or ``rt``."""
        return EDGE_NAMES[self.kind]


@dataclass(frozen=True, slots=True)
class Cycle:
    """A cycle of the graph and its kind (one of :data:`CYCLE_KINDS`); ``steps[-1].dst`` is
    ``steps[0].src``."""

    kind: str
    steps: tuple[Step, ...]

    @property
    def nodes(self) -> tuple[int, ...]:
        """The transactions of the cycle, in its order."""
        return tuple(s.src for s in self.steps)


def classify(steps: Sequence[Step]) -> str:
    """The kind of a cycle made of ``steps`` (see the module docstring)."""
    kinds = [s.kind for s in steps]
    rw = kinds.count(RW)
    base = (G1C if WR in kinds else G0) if rw == 0 else (G_SINGLE if rw == 1 else G2)
    return base + REALTIME_SUFFIX if RT in kinds else base


def realtime_edges(intervals: Sequence[tuple[float, float]]) -> list[tuple[int, int]]:
    """Edges ``a -> b`` whose transitive closure is "``a`` returned before ``b`` was invoked".

    ``intervals[i]`` is node ``i``'s ``(call, ret)``; ``ret`` is ``math.inf`` when unknown (the
    node then has no successor). Elle's construction: sweep the calls and returns in time order,
    keeping the *frontier* (returned nodes that no later-returned node follows); each node gets
    an edge from every frontier node at its call, and a node that returns replaces its
    predecessors in the frontier. So the edges are about ``n`` times the frontier (bounded by the
    concurrency), not ``n**2``.

    Proof sketch: an edge is made only from a node that had returned to one being invoked, so
    each edge is in the order. Conversely let ``a.ret < b.call``. At ``b``'s call either ``a`` is
    in the frontier (an edge), or it left it when some ``c`` with an edge ``a -> c`` returned,
    before ``b``'s call; by induction on return order, ``c`` reaches ``b``.
    """
    events: list[tuple[float, int, int]] = []
    for i, (call, ret) in enumerate(intervals):
        events.append((call, 0, i))  # at equal times a call comes first: ret < call is strict
        if not math.isinf(ret):
            events.append((ret, 1, i))
    events.sort()
    frontier: set[int] = set()
    preds: dict[int, tuple[int, ...]] = {}
    out: list[tuple[int, int]] = []
    for _, what, i in events:
        if what == 0:
            preds[i] = tuple(frontier)
            out.extend((p, i) for p in preds[i])
        else:
            frontier.difference_update(preds[i])
            frontier.add(i)
    return out


def strongly_connected(graph: DependencyGraph, mask: int = ALL_EDGES,
                       among: Iterable[int] | None = None) -> list[list[int]]:
    """The strongly connected components of more than one node, by Tarjan's algorithm
    (iterative), of the subgraph of ``mask`` edges between the nodes of ``among`` (all if
    None)."""
    nodes = range(graph.n) if among is None else sorted(among)
    inside = None if among is None else set(nodes)
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    out: list[list[int]] = []

    def succ(v: int) -> Iterator[int]:
        return (w for w in graph.successors(v, mask) if inside is None or w in inside)

    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, succ(root))]
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, succ(w)))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    u = work[-1][0]
                    low[u] = min(low[u], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def _path(graph: DependencyGraph, src: int, dst: int, mask: int,
          inside: set[int]) -> tuple[list[int] | None, int]:
    """A shortest path ``src ... dst`` of ``mask`` edges within ``inside`` (breadth first),
    or None; and how many nodes the search reached."""
    prev: dict[int, int] = {src: src}
    frontier = deque([src])
    while frontier:
        v = frontier.popleft()
        for w in graph.successors(v, mask):
            if w in prev or w not in inside:
                continue
            prev[w] = v
            if w == dst:
                path = [w]
                while path[-1] != src:
                    path.append(prev[path[-1]])
                return path[::-1], len(prev)
            frontier.append(w)
    return None, len(prev)


def _cycle(graph: DependencyGraph, nodes: Sequence[int], mask: int) -> Cycle:
    """The cycle ``nodes[0] -> ... -> nodes[-1] -> nodes[0]``, each step labelled with the
    weakest kind of edge in ``mask`` it has, and classified."""
    steps = []
    for a, b in zip(nodes, [*nodes[1:], nodes[0]], strict=True):
        have = graph.kinds(a, b) & mask
        kind = next(k for k in _BY_STRENGTH if have & k)
        steps.append(Step(a, b, kind, graph.why(a, b, kind)))
    return Cycle(classify(steps), tuple(steps))


def _shortest_through(graph: DependencyGraph, designated: Iterable[tuple[int, int]],
                      path_mask: int, label_mask: int, inside: set[int]) -> Cycle | None:
    """The shortest cycle made of one designated edge ``u -> v`` and a path ``v ... u`` of
    ``path_mask`` edges within ``inside``, over the first :data:`MAX_TRIES` designated edges
    (None if none of them closes a cycle)."""
    best: list[int] | None = None
    visited = 0
    for tries, (u, v) in enumerate(designated, 1):
        path, reached = _path(graph, v, u, path_mask, inside)
        visited += reached
        if path is not None and (best is None or len(path) < len(best)):
            best = path
        if tries >= MAX_TRIES or (best is not None and (len(best) == 2  # none is shorter
                                                        or visited > MAX_VISITS)):
            break
    return None if best is None else _cycle(graph, [best[-1], *best[:-1]], label_mask)


def find_cycles(graph: DependencyGraph) -> list[Cycle]:
    """The cycles of ``graph`` worth reporting, classified (see the module docstring for how
    they are searched). Empty iff the graph has no cycle."""
    found: list[Cycle] = []
    seen: set[tuple[str, frozenset[int]]] = set()

    def report(cycle: Cycle | None) -> bool:
        if cycle is None:
            return False
        sig = (cycle.kind, frozenset(cycle.nodes))
        if sig not in seen:
            seen.add(sig)
            found.append(cycle)
        return True

    component_of: dict[int, int] = {}
    for ci, comp in enumerate(strongly_connected(graph, DEPENDENCY)):
        inside = set(comp)
        component_of.update(dict.fromkeys(comp, ci))
        for sub in strongly_connected(graph, WW, comp):
            report(_shortest_through(graph, graph.edges(WW, sub), WW, WW, set(sub)))
        for sub in strongly_connected(graph, WW | WR, comp):
            report(_shortest_through(graph, graph.edges(WR, sub), WW | WR, WW | WR, set(sub)))
        single = _shortest_through(graph, graph.edges(RW, comp), WW | WR, DEPENDENCY, inside)
        if not report(single):
            report(_shortest_through(graph, graph.edges(RW, comp), DEPENDENCY, DEPENDENCY,
                                     inside))
    for comp in strongly_connected(graph, ALL_EDGES):
        crossing = [(u, v) for u, v in graph.edges(RT, comp)
                    if component_of.get(u, -1 - u) != component_of.get(v, -1 - v)]
        if crossing:
            report(_shortest_through(graph, crossing, ALL_EDGES, ALL_EDGES, set(comp)))
    return found


__all__ = [
    "ALL_EDGES",
    "CYCLE_KINDS",
    "DEPENDENCY",
    "EDGE_NAMES",
    "G0",
    "G0_REALTIME",
    "G1C",
    "G1C_REALTIME",
    "G2",
    "G2_REALTIME",
    "G_SINGLE",
    "G_SINGLE_REALTIME",
    "MAX_TRIES",
    "MAX_VISITS",
    "RT",
    "RW",
    "WR",
    "WW",
    "Cycle",
    "DependencyGraph",
    "Step",
    "classify",
    "find_cycles",
    "realtime_edges",
]
