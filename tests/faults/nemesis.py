"""The nemesis: faults injected into a running cluster at random moments, from a seed.

Owns: the fault kinds (:data:`FAULTS`), each an ``apply`` that returns its ``heal``, and
:class:`Nemesis`, a thread that runs a schedule (a pause, a fault, a hold, its heal, again) for
a bounded time and logs every event with its time, so that a failing run can be replayed with
its seed. Does not own the cluster's processes (``tests.harness``) or the workloads.

Fault kinds:

* ``kill-node``: SIGKILL one node; heal: start it again (same id, port, volume);
* ``pause-node``: SIGSTOP one node, sometimes past its session TTL (its late commits must be
  fenced); heal: SIGCONT;
* ``restart-node``: SIGTERM one node (it drains) and start it again;
* ``kill-etcd``: SIGKILL one etcd member of three; heal: restart it;
* ``lose-quorum``: SIGKILL two etcd members of three; heal: restart them.

At most one fault is active at a time, so two nodes of three always run (but they may have no
etcd quorum). The disk-full fault has its own test (``test_disk_full.py``): it needs a node
restarted with other flags to heal.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tests.harness.cluster import Cluster
from tests.harness.etcd import EtcdCluster

Heal = Callable[[], None]


def _node(cluster: Cluster, rng: random.Random):  # type: ignore[no-untyped-def]
    return rng.choice([n for n in cluster.nodes if n.is_alive and not n.is_paused])


def _etcd(cluster: Cluster) -> EtcdCluster:
    if not isinstance(cluster.etcd, EtcdCluster):
        raise RuntimeError("etcd faults need a cluster with etcd_members=3")
    return cluster.etcd


def kill_node(cluster: Cluster, rng: random.Random) -> tuple[str, Heal]:
    node = _node(cluster, rng)
    node.kill9()
    return f"kill -9 {node.name}", lambda: node.restart()


def pause_node(cluster: Cluster, rng: random.Random) -> tuple[str, Heal]:
    node = _node(cluster, rng)
    node.pause()
    return f"SIGSTOP {node.name}", node.resume


def restart_node(cluster: Cluster, rng: random.Random) -> tuple[str, Heal]:
    node = _node(cluster, rng)
    node.terminate()
    node.restart()
    return f"restart {node.name} (SIGTERM, start)", lambda: None


def kill_etcd(cluster: Cluster, rng: random.Random) -> tuple[str, Heal]:
    etcd = _etcd(cluster)
    i = rng.randrange(len(etcd.members))
    etcd.kill(i)
    return f"kill -9 etcd member {etcd.members[i].name}", lambda: etcd.restart(i)


def lose_quorum(cluster: Cluster, rng: random.Random) -> tuple[str, Heal]:
    etcd = _etcd(cluster)
    gone = etcd.lose_quorum()
    names = ", ".join(etcd.members[i].name for i in gone)
    return f"lose etcd quorum (kill -9 {names})", lambda: etcd.regain_quorum(gone)


FAULTS: dict[str, Callable[[Cluster, random.Random], tuple[str, Heal]]] = {
    "kill-node": kill_node,
    "pause-node": pause_node,
    "restart-node": restart_node,
    "kill-etcd": kill_etcd,
    "lose-quorum": lose_quorum,
}


@dataclass
class Event:
    at: float
    what: str


@dataclass
class Nemesis:
    """Inject ``faults`` into ``cluster`` for ``seconds``: each cycle waits 0.3-1.5 s, applies
    the next fault (in turn when ``rotate``, else at random), holds it 0.5-3 s (a pause 1-5 s),
    then heals it. :meth:`stop` heals whatever is active."""

    cluster: Cluster
    faults: Sequence[str]
    seed: int
    seconds: float
    rotate: bool = True
    log: Callable[[str], None] = print
    events: list[Event] = field(default_factory=list)
    applied: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = set(self.faults) - FAULTS.keys()
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {sorted(FAULTS)}")
        self._rng = random.Random(self.seed)
        self._stop = threading.Event()
        self._heal: Heal | None = None
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)

    def _event(self, what: str) -> None:
        ev = Event(time.monotonic() - self._t0, what)
        self.events.append(ev)
        self.log(f"[nemesis {ev.at:7.2f}s] {what}")

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._event(f"seed {self.seed}, faults {', '.join(self.faults)}, {self.seconds:g} s")
        self._thread.start()

    def _run(self) -> None:
        deadline = self._t0 + self.seconds
        i = 0
        try:
            while not self._stop.wait(self._rng.uniform(0.3, 1.5)):
                if time.monotonic() >= deadline:
                    break
                kind = (self.faults[i % len(self.faults)] if self.rotate
                        else self._rng.choice(list(self.faults)))
                i += 1
                what, heal = FAULTS[kind](self.cluster, self._rng)
                self._heal = heal
                self.applied[kind] = self.applied.get(kind, 0) + 1
                self._event(what)
                hold = self._rng.uniform(1.0, 5.0 if kind == "pause-node" else 3.0)
                self._stop.wait(hold)
                self._heal_now(f"heal after {hold:.1f} s")
        except Exception as e:  # reported by the runner: a broken nemesis proves nothing
            self.errors.append(f"nemesis: {e!r}")
            self._event(f"ERROR {e!r}")

    def _heal_now(self, why: str) -> None:
        heal, self._heal = self._heal, None
        if heal is not None:
            heal()
            self._event(why)

    def stop(self) -> None:
        """End the schedule and heal the active fault; then make sure every process runs."""
        self._stop.set()
        self._thread.join(timeout=120)
        try:
            self._heal_now("heal at the end")
        except Exception as e:
            self.errors.append(f"final heal: {e!r}")
        etcd = self.cluster.etcd
        if isinstance(etcd, EtcdCluster):
            down = [i for i, m in enumerate(etcd.members) if not m.is_alive]
            if down:
                etcd.regain_quorum(down)
        for node in self.cluster.nodes:
            if node.is_paused:
                node.resume()
            if not node.is_alive:
                node.restart()
