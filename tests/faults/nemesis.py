"""The nemesis: faults injected into a running cluster at random moments, from a seed.

Owns: the fault kinds (:data:`FAULTS`), each an ``apply`` that returns its ``heal``, and
:class:`Nemesis`, a thread that runs a schedule (a pause, a fault, a hold, its heal, again) for
a bounded time and logs every event with its time, so that a failing run can be replayed with
its seed. Does not own the cluster's processes (``tests.harness``) or the workloads.

Fault kinds:

* ``kill-node``: SIGKILL one node; heal: start it again (same id, port, volume);
* ``pause-node``: SIGSTOP one node; heal: SIGCONT (and start it again if its peers killed it
  meanwhile, as they do once its lease is gone: ``nodes/deathwatch.py``). The first freeze of
  every run outlasts the session TTL by at least :data:`FREEZE_MARGIN_S` (its lease expires,
  its locks go to others, its late commits must be fenced, or it is killed); later ones last
  1 s to TTL + margin, so they fall within the lease, around its end, or past it;
* ``restart-node``: SIGTERM one node (it drains) and start it again;
* ``kill-etcd``: SIGKILL one etcd member of three; heal: restart it;
* ``lose-quorum``: SIGKILL two etcd members of three; heal: restart them;
* ``fill-disk``: fill the volume's LMDB map (nodes started with ``--map-size``) with junk rows
  until writes fail with RESOURCE_EXHAUSTED; heal: restart one node with a map ``FILL_STEP``
  bigger, which the other nodes take up by themselves.

At most one fault is active at a time, so two nodes of three always run (but they may have no
etcd quorum, or no room to write). Every freeze is recorded (:class:`Freeze`: how long the node
was stopped, against the TTL) for the run's report.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc

from nodes.config import DEFAULT_TTL_S
from shardless import connect
from tests.harness.cluster import Cluster
from tests.harness.etcd import EtcdCluster

FILL_STEP = 16 << 20
FILL_TABLE = "nemesis_fill"
FREEZE_MARGIN_S = 2.0
"""How much longer than the session TTL a long freeze lasts at least: etcd expires leases on a
half-second tick, and the other nodes must then see the lease gone and fence it."""

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

    def heal() -> None:
        node.resume()
        # Frozen past its lease, a node is killed by its peers (nodes/deathwatch.py); started
        # again, as its supervisor would.
        if node.wait(0.2) is not None:
            node.restart()

    return f"SIGSTOP {node.name}", heal


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


def _map_size(node) -> int:  # type: ignore[no-untyped-def]
    args = list(node.extra_args)
    if "--map-size" not in args:
        raise RuntimeError("fill-disk needs nodes started with --map-size")
    return int(args[args.index("--map-size") + 1])


def _set_map_size(node, size: int) -> None:  # type: ignore[no-untyped-def]
    args = list(node.extra_args)
    args[args.index("--map-size") + 1] = str(size)
    node.extra_args = tuple(args)


def fill_disk(cluster: Cluster, rng: random.Random) -> tuple[str, Heal]:
    size = max(_map_size(n) for n in cluster.nodes)
    junk = "j" * 2000
    with connect(cluster.addresses, timeout_s=10, attempts=1, refresh_s=None) as db:
        for attempt in range(50):  # a node may be between sessions after an earlier fault
            try:
                db.create_table(FILL_TABLE, {"id": "int64", "v": "string"}, primary_key="id",
                                if_not_exists=True)
                break
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == 49:
                    raise
                time.sleep(0.2)
        base = rng.randrange(1 << 40)
        for batch in range(100_000):
            try:
                db.insert(FILL_TABLE, [{"id": base + batch * 64 + i, "v": junk}
                                       for i in range(64)])
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    break
                if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                    continue  # another fault's aftermath; keep filling
        else:
            raise RuntimeError("the volume never filled up")

    def heal() -> None:
        node = rng.choice([n for n in cluster.nodes if n.is_alive])
        for n in cluster.nodes:  # later restarts of any node keep the bigger map
            _set_map_size(n, size + FILL_STEP)
        node.terminate()
        node.restart()

    return f"fill the volume ({size >> 20} MiB map)", heal


FAULTS: dict[str, Callable[[Cluster, random.Random], tuple[str, Heal]]] = {
    "kill-node": kill_node,
    "pause-node": pause_node,
    "restart-node": restart_node,
    "kill-etcd": kill_etcd,
    "lose-quorum": lose_quorum,
    "fill-disk": fill_disk,
}


@dataclass
class Event:
    at: float
    what: str


@dataclass(frozen=True)
class Freeze:
    """One node freeze: what was stopped, for how long (from SIGSTOP to SIGCONT), and the TTL."""

    what: str
    held_s: float
    ttl_s: float

    @property
    def outlasted_lease(self) -> bool:
        """Whether the node stayed frozen past its session TTL plus :data:`FREEZE_MARGIN_S`."""
        return self.held_s >= self.ttl_s + FREEZE_MARGIN_S

    def describe(self) -> str:
        """``SIGSTOP node-2 for 5.6 s (past the 3 s TTL + 2 s)``, or ``... (within ...)``."""
        where = (f"past the {self.ttl_s:g} s TTL + {FREEZE_MARGIN_S:g} s" if self.outlasted_lease
                 else f"not past the {self.ttl_s:g} s TTL + {FREEZE_MARGIN_S:g} s")
        return f"{self.what} for {self.held_s:.1f} s ({where})"


@dataclass
class Nemesis:
    """Inject ``faults`` into ``cluster`` for ``seconds`` (in turn: at least until each kind ran
    once): each cycle waits 0.3-1.5 s, applies the next fault (in turn when ``rotate``, else at
    random), holds it 1-3 s (a pause: see the module docstring), then heals it. :meth:`wait`
    waits for the end of the schedule; :meth:`stop` heals whatever is active. Every choice comes
    from ``seed``."""

    cluster: Cluster
    faults: Sequence[str]
    seed: int
    seconds: float
    rotate: bool = True
    log: Callable[[str], None] = print
    events: list[Event] = field(default_factory=list)
    applied: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    freezes: list[Freeze] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = set(self.faults) - FAULTS.keys()
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {sorted(FAULTS)}")
        self._rng = random.Random(self.seed)
        self._stop = threading.Event()
        self._heal: Heal | None = None
        self._ttl_s = float(self.cluster.ttl_s or DEFAULT_TTL_S)
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
                if time.monotonic() >= deadline and (not self.rotate or i >= len(self.faults)):
                    break  # in turn, every kind runs at least once however short the time
                kind = (self.faults[i % len(self.faults)] if self.rotate
                        else self._rng.choice(list(self.faults)))
                i += 1
                what, heal = FAULTS[kind](self.cluster, self._rng)
                applied_at = time.monotonic()
                self._heal = heal
                self.applied[kind] = self.applied.get(kind, 0) + 1
                self._event(what)
                hold = self.hold_s(kind, first=self.applied[kind] == 1)
                self._stop.wait(hold)
                held = time.monotonic() - applied_at
                self._heal_now(f"heal after {hold:.1f} s")
                if kind == "pause-node":
                    self.freezes.append(Freeze(what, held, self._ttl_s))
                    self._event(f"freeze: {self.freezes[-1].describe()}")
        except Exception as e:  # reported by the runner: a broken nemesis proves nothing
            self.errors.append(f"nemesis: {e!r}")
            self._event(f"ERROR {e!r}")

    def hold_s(self, kind: str, first: bool) -> float:
        """How long to hold a fault of ``kind`` (``first``: the run's first of that kind)."""
        if kind != "pause-node":
            return self._rng.uniform(1.0, 3.0)
        long_s = self._ttl_s + FREEZE_MARGIN_S
        if first:  # every run has a freeze past the lease
            return self._rng.uniform(long_s, long_s + 1.0)
        return self._rng.uniform(1.0, long_s)

    def wait(self, timeout_s: float) -> None:
        """Wait until the schedule has ended (or ``timeout_s``)."""
        self._thread.join(timeout=timeout_s)

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
