"""Deadlock detection: a pure function from a waits-for graph to the victims to abort.

Owns: finding cycles in the graph of "transaction A waits for transaction B" edges gathered from
every node, and choosing one victim per cycle: the youngest transaction (latest start; ties
broken by the larger id), so that old transactions make progress. Deterministic: every node that
sees the same graph chooses the same victims, so each node aborts only its own victims and no
transaction is aborted twice for one cycle.
"""

from __future__ import annotations

from collections.abc import Mapping, Set


def victims(edges: Mapping[str, Set[str]], started_at: Mapping[str, float]) -> list[str]:
    """Return the transactions to abort so that no cycle remains, youngest first per cycle.

    Args:
        edges: waiter -> the transactions it waits for.
        started_at: each transaction's start time (missing: treated as oldest).
    """
    graph = {t: set(ws) for t, ws in edges.items()}
    chosen: list[str] = []

    def age_key(t: str) -> tuple[float, str]:
        return (started_at.get(t, float("-inf")), t)

    while True:
        cycle = _find_cycle(graph)
        if cycle is None:
            return chosen
        victim = max(cycle, key=age_key)
        chosen.append(victim)
        graph.pop(victim, None)
        for ws in graph.values():
            ws.discard(victim)


def _find_cycle(graph: Mapping[str, Set[str]]) -> list[str] | None:
    """Some cycle of the graph as a list of its nodes, or None (iterative DFS)."""
    color: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for root in sorted(graph):
        if color.get(root):
            continue
        stack: list[tuple[str, list[str]]] = [(root, sorted(graph.get(root, ())))]
        path = [root]
        color[root] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                color[node] = 2
                continue
            nxt = todo.pop()
            state = color.get(nxt)
            if state == 1:
                return path[path.index(nxt):]
            if state is None:
                color[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph.get(nxt, ()))))
    return None
