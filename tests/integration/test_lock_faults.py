"""Locks and fencing under process faults: kill -9, and SIGSTOP past the session lease.

What these tests pin down (ARCHITECTURE.md, "Sessions, failure detection and fencing"):

* A node killed with -9 while holding row locks: its locks go with its lease (within the TTL),
  a waiter on another node is granted, and the dead node's uncommitted writes never appear.
* A node frozen (SIGSTOP) past its lease while a transaction of it holds a lock: another node
  fences the lost session (its log says so), takes the lock and commits; when the frozen node
  wakes, its transaction's commit is refused (ABORTED, FENCED or SESSION_LOST) and the node comes
  back on a new session.
* The fencing race: the commit request reaches the node and the node is frozen at some point of
  its commit. Whatever the commit answered, the result is that of a serial order (no lost update).
* The same race made deterministic: the commit is under way (queued behind the storage write
  lock, which another frozen node holds) when its node freezes past its lease; on waking, the
  commit is refused promptly as FENCED and the node starts a new session.
* One-shot writes sent to a node that is then frozen: after the lease is gone, writes made by the
  other nodes are never overwritten by a write the frozen node had in hand.
* A commit that outlives its caller's deadline (stuck behind the storage write lock) keeps its
  locks while it is undecided: another transaction waits for them, and sees a serial history.

Each test checks that the path it is named after ran, not only that its outcome is allowed: a
race that fell the other way (a commit answered before the freeze, a write not in flight) is
set up again, a bounded number of times, and the test fails if the path never ran. The evidence
is what a client or the test can see: when a call was answered (a frozen node answers nothing),
commit positions, the Status RPC (open transactions, lock entries, waits), the nodes' logs.

To hold the storage write lock on purpose, a node is frozen in the middle of a bulky commit
(``_freeze_holding_write_lock``): LMDB has one writer at a time for the whole volume.

Every process belongs to the ``cluster`` fixture (three nodes, lease TTL 3 s; for the deadline
test ``make_cluster`` with a longer TTL), which stops them all, paused ones included, and
attaches their logs to a failure. Its nodes run with ``--no-kill-frozen-peers``: by default a
node frozen past its lease is killed by its peers (``tests/integration/test_frozen_writer.py``),
and these tests show what fencing guarantees without that.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

import grpc
import pytest

from shardless import abort_reason, certainly_not_applied, connect
from shardless.client import Client
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as api_grpc
from tests.harness.calls import Call
from tests.harness.calls import in_thread as _in_thread
from tests.harness.calls import join as _join
from tests.harness.cluster import Cluster, Node, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.fault]


@pytest.fixture
def cluster(make_cluster) -> Cluster:  # type: ignore[no-untyped-def]
    """Three nodes, lease TTL 3 s, that do not kill a frozen peer (nodes/deathwatch.py): these
    tests prove what fencing alone guarantees when the frozen node wakes up."""
    return make_cluster("--no-kill-frozen-peers")  # type: ignore[no-any-return]

CALL_TIMEOUT_S = 12.0  # longer than any freeze below: a call to a frozen node just waits
SLACK_S = 2.0
TABLE = "acct"
REFUSED = {"FENCED", "SESSION_LOST"}
FREEZE_DELAYS_S = (0.0, 0.001, 0.002, 0.003)  # between sending B's commit and freezing B
IN_FLIGHT_ROUNDS = 3  # freezes that must catch B's commit in flight
IN_FLIGHT_ATTEMPTS = 8  # tries per round
FREEZE_WRITER_ATTEMPTS = 20  # tries to freeze a node while it holds the storage write lock
DEADLINE_TEST_TTL_S = 8  # C stays frozen for seconds there: it must keep its lease meanwhile
FILLER = "filler"
FILLER_ROWS = 5000
PROBE = "probe"
_probe_keys = itertools.count(1)  # each probe writes its own row: a stuck one blocks no other


def _pinned(node: Node, timeout_s: float = CALL_TIMEOUT_S, **options: object) -> Client:
    """A client pinned to one node: no member refresh, which would spread its calls (and the
    transactions it begins) over every node after a couple of seconds."""
    return connect([node.address], timeout_s=timeout_s, refresh_s=None, **options)


def _client(node: Node) -> Client:
    """A client pinned to one node, with a deadline longer than any freeze below."""
    return _pinned(node)


def _setup(cluster: Cluster, rows: dict[int, int]) -> list[Client]:
    """One client per node, the table, and its seed rows."""
    clients = [_client(n) for n in cluster.nodes]
    clients[0].create_table(TABLE, {"k": "int64", "v": "int64"}, primary_key="k")
    if rows:
        clients[0].upsert(TABLE, [{"k": k, "v": v} for k, v in rows.items()])
    return clients


def _value(db: Client, key: int) -> int | None:
    row = db.get(TABLE, key)
    return None if row is None else row["v"]


def _session_of(db: Client, node_id: str) -> str | None:
    """The session (lease, hex) of ``node_id``'s member record, None if it has none."""
    for m in db.status().members:
        if m.node_id == node_id:
            return m.session
    return None


def _rw_round_trip(db: Client, key: int, value: int) -> bool:
    """One read-write transaction on ``db``'s node: lock ``key``, write ``value``, commit."""
    t = db.begin()
    try:
        t.get(TABLE, key, for_update=True)
        t.upsert(TABLE, {"k": key, "v": value})
        t.commit()
    except grpc.RpcError:
        if not t.done:
            try:
                t.rollback()
            except grpc.RpcError:
                pass
        raise
    return True


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _wait_node_serves_rw(db: Client, key: int, value: int, timeout_s: float) -> float:
    """Wait until ``db``'s node commits a read-write transaction; return how long it took."""
    start = time.monotonic()
    wait_for(lambda: _rw_round_trip(db, key, value), timeout_s, interval_s=0.1,
             message="the node to serve a read-write transaction again",
             retry_on=(grpc.RpcError,))
    return time.monotonic() - start


def _probe_write(probe: Client) -> int | None:
    """The commit position of a one-shot write through ``probe`` (a client with a short
    deadline), or None if it is stuck: some process holds the volume's single storage write
    lock (a slow answer is told from a stuck one by a second probe)."""
    for _ in range(2):
        try:
            return probe.upsert(PROBE, {"k": next(_probe_keys), "v": 0})
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
    return None


def _freeze_holding_write_lock(node: Node, db: Client, probe: Client) -> tuple[Call, float]:
    """Freeze ``node`` in the middle of a bulky commit, while it holds the storage write lock.

    ``db`` is pinned to ``node``; ``probe`` to another node, with a short deadline. The tables
    FILLER and PROBE must exist. Sends the commit, waits a while, freezes the node and checks
    with probe writes that the lock is held. If not, the commit's position against the probe's
    says whether the freeze came too late (the commit was before the probe) or too early (after
    it: the commit had not taken the lock yet), and the wait is adjusted; up to
    FREEZE_WRITER_ATTEMPTS tries.

    Returns:
        The frozen commit's call (it finishes after the node is resumed) and the freeze time.
    """
    tried = []
    delay = 0.003
    for _ in range(FREEZE_WRITER_ATTEMPTS):
        t = db.begin()
        t.upsert(FILLER, [{"k": i, "v": -1} for i in range(FILLER_ROWS)])
        th, call = _in_thread(t.commit)
        time.sleep(delay)
        node.pause()
        paused = time.monotonic()
        try:
            probed = _probe_write(probe)
        except BaseException:
            node.resume()
            raise
        if probed is None:
            return call, paused
        node.resume()
        _join(th, call, CALL_TIMEOUT_S + 5, "a bulky commit")
        late = call.error is None and call.result < probed
        tried.append(f"{delay * 1000:.1f} ms: {'too late' if late else 'too early'} "
                     f"({call.describe()})")
        delay = max(0.0005, delay * 0.6) if late else min(0.5, delay * 1.5 + 0.001)
    pytest.fail(f"could not freeze {node.name} while it held the storage write lock: {tried}")


def _local_transactions(db: Client) -> dict[str, api.TransactionInfo]:
    """The open transactions of ``db``'s node, from its own Status (no peer is asked)."""
    st = api_grpc.ClusterServiceStub(db.channel).Status(api.StatusRequest(local_only=True),
                                                         timeout=3)
    return {t.transaction_id: t for t in st.transactions}


def _call_under_way(db: Client, txn_id: str, since: float) -> bool:
    """Whether a call of transaction ``txn_id`` has begun on ``db``'s node after ``since`` (a
    ``time.monotonic()`` reading of this host, which the node's clock shares), proved from the
    node's Status: it resets a transaction's idle time when a call of it begins, and its idle
    time was read no earlier than we asked. NB: a call that began less than a Status round trip
    after ``since`` is not seen; leave more time than that before making it."""
    asked = time.monotonic()
    info = _local_transactions(db).get(txn_id)
    return info is not None and asked - info.idle_s > since


def _fenced_by(cluster: Cluster, session: str) -> list[str]:
    """The nodes whose log says they fenced the (ended) session ``session`` (hex)."""
    needle = f"session {session} ended without closing; fencing it"
    return [n.name for n in cluster.nodes
            if needle in n.log_path.read_text(encoding="utf-8", errors="replace")]


# -- 1. kill -9 --------------------------------------------------------------------------------


def test_kill9_of_a_lock_holder_frees_its_locks_within_the_ttl_and_drops_its_writes(
        cluster: Cluster) -> None:
    """Node B holds X(r) with an uncommitted write; node A waits for r; kill -9 B: A is granted
    within TTL + slack, reads the old value, and its own commit is seen from node C."""
    ttl = float(cluster.ttl_s or 3)
    r, old = 7, 100
    db0, db1, db2 = _setup(cluster, {r: old})

    holder = db1.begin()
    assert holder.get(TABLE, r, for_update=True)["v"] == old
    assert holder.update(TABLE, {"k": r, "v": 999}) == 1

    waiter = db0.begin()
    t, got = _in_thread(lambda: waiter.get(TABLE, r, for_update=True))
    wait_for(lambda: any(w.transaction_id == waiter.id for w in db2.status().waits), 10,
             message="the waiter's wait record", retry_on=(grpc.RpcError,))
    assert not got.done.is_set(), f"the waiter was granted while the holder lives: " \
                                  f"{got.describe()}"

    killed = time.monotonic()
    assert cluster[1].kill9() == -9
    _join(t, got, ttl + 10, "the waiter's locking read")
    waited = got.ended - killed
    assert got.error is None, f"the waiter failed: {got.describe()}"
    assert waited < ttl + SLACK_S, f"lock freed {waited:.2f}s after kill -9 (ttl {ttl:g}s)"
    assert got.result["v"] == old, "the killed node's uncommitted write is visible"
    assert _value(db2, r) == old

    waiter.update(TABLE, {"k": r, "v": old + 1})
    assert waiter.commit() > 0
    assert _value(db2, r) == old + 1
    print(f"kill -9: lock granted {waited:.2f}s after the kill (ttl {ttl:g}s)")


# -- 2. SIGSTOP past the lease -----------------------------------------------------------------


def test_a_node_frozen_past_its_lease_is_fenced_and_comes_back_on_a_new_session(
        cluster: Cluster) -> None:
    """B holds X(r) with an uncommitted write and is frozen for TTL + 2 s; A takes r, writes,
    commits meanwhile, and a node's log says it fenced B's lost session. When B wakes its
    commit is ABORTED (FENCED or SESSION_LOST: which of B's threads wakes first), the row holds
    A's value, and B serves again on a new session."""
    ttl = float(cluster.ttl_s or 3)
    frozen = cluster[1]
    r, old, b_value, a_value = 3, 100, 200, 300
    db0, db1, db2 = _setup(cluster, {r: old})
    session_before = _session_of(db0, frozen.node_id)
    assert session_before, "the frozen node has no member record before the pause"

    t1 = db1.begin()
    assert t1.get(TABLE, r, for_update=True)["v"] == old
    t1.update(TABLE, {"k": r, "v": b_value})

    frozen.pause()
    paused = time.monotonic()
    try:
        def take_over() -> int:
            t0 = db0.begin()
            seen = t0.get(TABLE, r, for_update=True)["v"]
            t0.update(TABLE, {"k": r, "v": a_value})
            t0.commit()
            return seen

        t, a = _in_thread(take_over)
        t.join(max(0.0, paused + ttl + SLACK_S - time.monotonic()))
        assert a.done.is_set(), "node A's transaction did not commit while B was frozen past " \
                                "its lease"
        assert a.error is None and a.unexpected is None, f"node A's transaction: {a.describe()}"
        assert a.result == old, "node A read B's uncommitted value"
        # A could only take r once B's session had ended; whoever saw it end fenced it first.
        fencers = wait_for(lambda: _fenced_by(cluster, session_before), 5,
                           message=f"a node's log saying it fenced session {session_before}")
        _sleep_until(paused + ttl + SLACK_S)
    finally:
        frozen.resume()
    resumed = time.monotonic()

    try:
        position = t1.commit()
    except grpc.RpcError as e:
        code, reason, details = e.code(), abort_reason(e), e.details()
    else:
        pytest.fail(f"B's commit was acknowledged (position {position}) after its lease was "
                    f"gone and A had committed")
    assert code == grpc.StatusCode.ABORTED and reason in REFUSED, (
        f"B's commit after waking: {code.name} ({reason}): {details}; B's log:\n"
        f"{frozen.log_tail(20)}")
    assert _value(db2, r) == a_value
    assert _value(db0, r) == a_value

    new_session = wait_for(
        lambda: (s := _session_of(db0, frozen.node_id)) not in (None, session_before) and s,
        ttl + 5, message="the frozen node's member record on a new session",
        retry_on=(grpc.RpcError,))
    took = _wait_node_serves_rw(db1, r, a_value + 1, 10)
    assert time.monotonic() - resumed < 10
    assert _value(db0, r) == a_value + 1
    assert _value(db2, r) == a_value + 1
    print(f"SIGSTOP: session {session_before} (fenced by {', '.join(fencers)}) -> "
          f"{new_session}; B's commit {code.name} ({reason}); node served again "
          f"{time.monotonic() - resumed:.2f}s after SIGCONT (last wait {took:.2f}s)")


# -- 3. the fencing race: freeze during the commit --------------------------------------------


def test_a_commit_frozen_in_flight_and_a_takeover_stay_serializable(cluster: Cluster) -> None:
    """B's commit request is sent and B is frozen (at once, or 1-3 ms later) for TTL + 2 s
    while A increments the same row. If B's commit answered OK, A must have read B's value;
    otherwise B's write must not be there: the final value is that of a serial order.

    B's transaction also rewrites FILLER_ROWS rows of another table, so that its commit (one
    storage write transaction) lasts long enough for the freeze to land inside it at some of the
    delays; the filler rows must then be all B's or all untouched (atomicity). Each of
    IN_FLIGHT_ROUNDS rounds must catch B's commit in flight: answered only after B woke (a
    frozen node answers nothing). A commit answered before the freeze took hold is set up
    again on a fresh row, up to IN_FLIGHT_ATTEMPTS times."""
    ttl = float(cluster.ttl_s or 3)
    frozen = cluster[1]
    old = 100
    db0, db1, db2 = _setup(cluster, {})
    db0.create_table(FILLER, {"k": "int64", "v": "int64"}, primary_key="k")
    db0.upsert(FILLER, [{"k": i, "v": 0} for i in range(FILLER_ROWS)])
    keys = itertools.count(1)
    caught, missed = [], []

    def increment(k: int) -> int:
        t0 = db0.begin()
        seen = t0.get(TABLE, k, for_update=True)["v"]
        t0.update(TABLE, {"k": k, "v": seen + 1})
        t0.commit()
        return seen

    for round_no in range(IN_FLIGHT_ROUNDS):
        for attempt in range(IN_FLIGHT_ATTEMPTS):
            delay = FREEZE_DELAYS_S[(round_no + attempt) % len(FREEZE_DELAYS_S)]
            key = next(keys)
            db0.upsert(TABLE, {"k": key, "v": old})
            b_value = 5000 + key
            fillers_before = {r["v"] for r in db2.scan(FILLER)}
            t1 = db1.begin()
            assert t1.get(TABLE, key, for_update=True)["v"] == old
            t1.update(TABLE, {"k": key, "v": b_value})
            t1.upsert(FILLER, [{"k": i, "v": b_value} for i in range(FILLER_ROWS)])

            tb, b = _in_thread(t1.commit)
            if delay:
                time.sleep(delay)
            frozen.pause()
            paused = time.monotonic()
            if b.done.wait(0.3):  # answered although B is frozen: it was before the freeze
                frozen.resume()
                _join(tb, b, CALL_TIMEOUT_S + 5, f"B's commit (delay {delay})")
                missed.append(f"delay {delay * 1000:g} ms: answered before the freeze: "
                              f"{b.describe()}")
                continue
            try:
                ta, a = _in_thread(increment, key)
                # A may finish while B is frozen, or only after B wakes (if B was frozen while
                # it held the storage write lock, A's fence waits for B's commit to finish).
                _sleep_until(paused + ttl + SLACK_S)
                a_before_wake = a.done.is_set()
            finally:
                frozen.resume()
            resumed = time.monotonic()
            _join(tb, b, CALL_TIMEOUT_S + 5, f"B's commit (delay {delay})")
            _join(ta, a, CALL_TIMEOUT_S + 5, f"A's increment (delay {delay})")
            final = _value(db2, key)
            fillers = {r["v"] for r in db2.scan(FILLER)}
            in_flight = b.ended >= resumed
            outcome = (f"delay {delay * 1000:g} ms: B's commit {b.describe()} (sent "
                       f"{b.started - paused:+.3f}s from the freeze, answered "
                       f"{'after' if in_flight else 'before'} B woke); A {a.describe()}"
                       f"{' before' if a_before_wake else ' after'} B woke; final {final}; "
                       f"filler values {sorted(fillers)}")
            assert a.error is None, outcome
            assert b.code in (grpc.StatusCode.OK, grpc.StatusCode.ABORTED,
                              grpc.StatusCode.UNAVAILABLE), \
                f"{outcome}; B's log:\n{frozen.log_tail(20)}"
            # UNAVAILABLE: B committed but its session had ended by the time it could answer
            # (it froze between the two), so it withheld the acknowledgement: the outcome is
            # unknown to the client, and the state must be one of the two serial orders.
            unknown = b.code == grpc.StatusCode.UNAVAILABLE
            if unknown:
                assert b.error is not None and not certainly_not_applied(b.error), outcome
            if b.code == grpc.StatusCode.OK or (unknown and a.result == b_value):
                assert a.result == b_value, f"lost update: B committed but A read the old " \
                                            f"value; {outcome}"
                assert final == b_value + 1, outcome
                assert fillers == {b_value}, f"B's commit is not whole; {outcome}"
            else:
                assert unknown or b.reason in REFUSED, outcome
                assert a.result == old, f"B's refused write was visible to A; {outcome}"
                assert final == old + 1, f"B's refused write landed; {outcome}"
                assert fillers == fillers_before, f"part of B's refused commit landed; {outcome}"
            assert _value(db0, key) == final

            # B comes back (on a new session) before the next try.
            _wait_node_serves_rw(db1, 1000 + key, key, ttl + 10)
            if in_flight:
                caught.append(outcome)
                break
            missed.append(outcome)
        else:
            pytest.fail(f"round {round_no}: B's commit was never frozen in flight in "
                        f"{IN_FLIGHT_ATTEMPTS} tries: {missed}")
    print("\n".join(["caught in flight:", *caught, "missed:", *missed]))


# -- 3b. the commit has arrived and is under way when its node freezes ------------------------


def test_a_commit_under_way_when_its_node_freezes_is_refused_and_the_node_recovers(
        cluster: Cluster) -> None:
    """B's commit request has arrived and B's committer is working on it (here: waiting for the
    storage write lock, which a frozen node C holds) when B is frozen past its lease. A takes r
    over and increments it. When C and then B wake, B's commit must be answered ABORTED FENCED
    at once (the committer's check refuses it: a fence record of B's session is in storage, or
    B's own deadline has passed), the row holds A's increment, and B serves again on a new
    session. That the commit was under way on B before the freeze is seen in B's Status: the
    transaction's idle time restarted after the commit was sent."""
    ttl = float(cluster.ttl_s or 3)
    node_b, node_c = cluster[1], cluster[2]
    r, old, b_value = 1, 100, 5000
    db0, db1, db2 = _setup(cluster, {r: old})
    for table in (FILLER, PROBE):
        db0.create_table(table, {"k": "int64", "v": "int64"}, primary_key="k")
    db0.upsert(FILLER, [{"k": i, "v": 0} for i in range(FILLER_ROWS)])
    probe = _pinned(node_b, 0.5, attempts=1)
    session_before = _session_of(db0, node_b.node_id)

    t1 = db1.begin()
    assert t1.get(TABLE, r, for_update=True)["v"] == old
    t1.update(TABLE, {"k": r, "v": b_value})
    updated = time.monotonic()  # t1's last call has ended on B

    c_commit, _ = _freeze_holding_write_lock(node_c, db2, probe)
    try:
        _sleep_until(updated + 1.0)  # more than a Status round trip between t1's calls
        tb, b = _in_thread(t1.commit)
        wait_for(lambda: _call_under_way(db1, t1.id, updated), 10, interval_s=0.05,
                 message="B's commit call to be under way on B", retry_on=(grpc.RpcError,))
        time.sleep(0.2)  # from the call's start to the committer's queue: no wait on the way
        assert not b.done.is_set(), f"B's commit was not held up: {b.describe()}"
        node_b.pause()
        b_paused = time.monotonic()
        try:
            def increment() -> int:
                t0 = db0.begin()
                seen = t0.get(TABLE, r, for_update=True)["v"]
                t0.update(TABLE, {"k": r, "v": seen + 1})
                t0.commit()
                return seen

            ta, a = _in_thread(increment)
            _sleep_until(b_paused + ttl + SLACK_S)
            node_c.resume()
            # A fences B (its lease is gone), reads r and commits, normally while B is still
            # frozen (unless the storage lock is handed to B's frozen committer first: then A
            # goes on once B wakes and its commit is refused).
            ta.join(3.0)
            a_done_while_b_frozen = a.done.is_set()
        finally:
            node_b.resume()
    finally:
        node_c.resume()
    resumed = time.monotonic()
    assert c_commit.thread is not None
    _join(c_commit.thread, c_commit, CALL_TIMEOUT_S + 5, "C's bulky commit")
    _join(ta, a, CALL_TIMEOUT_S + 5, "A's increment")
    assert a.error is None and a.result == old, f"A's increment: {a.describe()}"

    tb.join(5.0)
    if tb.is_alive():
        try:
            db1.begin().rollback()
            begin = "a new transaction begins on B"
        except grpc.RpcError as e:
            begin = f"a new transaction on B fails: {e.code().name}: {e.details()}"
        pytest.fail(f"B's commit got no answer {time.monotonic() - resumed:.1f}s after B woke "
                    f"(C's commit {c_commit.describe()}; A {a.describe()}, done while B was "
                    f"frozen: {a_done_while_b_frozen}; {begin}); B's "
                    f"log:\n{node_b.log_tail(30)}")
    assert b.unexpected is None, b.describe()
    assert b.code == grpc.StatusCode.ABORTED and b.reason == "FENCED", \
        f"B's commit was not refused by the committer's fence check: {b.describe()}"
    assert _value(db2, r) == old + 1
    wait_for(lambda: _session_of(db0, node_b.node_id) not in (None, session_before), ttl + 5,
             message="B's member record on a new session", retry_on=(grpc.RpcError,))
    _wait_node_serves_rw(db1, r, 7, 10)
    assert _value(db0, r) == 7
    assert b.error is not None
    how = ("a fence record" if "is fenced" in (b.error.details() or "") else "its own deadline")
    print(f"commit under way at the freeze: B's commit {b.describe()} (refused by {how}); A "
          f"done while B was frozen: {a_done_while_b_frozen}; C's commit {c_commit.describe()}")


# -- 4. one-shot writes to a frozen node -------------------------------------------------------


@dataclass
class WriteRecord:
    """One one-shot write: who, what, when, and how it ended."""

    node: int
    value: int
    started: float
    ended: float
    code: grpc.StatusCode
    reason: str | None = None


def test_one_shot_writes_in_flight_on_a_frozen_node_never_overwrite_later_writes(
        cluster: Cluster) -> None:
    """Writers send one-shot upserts to B, three per row, so that most of them wait for the
    row's lock on B; B is frozen; after the TTL, A and C write the same rows; B wakes. Some of
    B's writes must have been in B's hands through the freeze (sent before it, answered after
    B woke). Each row ends with the last write A/C acknowledged, unless a write B had in hand
    was acknowledged and ordered after it; no row ever ends with a value nobody
    acknowledged."""
    ttl = float(cluster.ttl_s or 3)
    frozen = cluster[1]
    rows = list(range(10, 16))
    dbs = _setup(cluster, {k: 0 for k in rows})
    history: dict[int, list[WriteRecord]] = {k: [] for k in rows}
    lock = threading.Lock()
    stop_b = threading.Event()
    errors: list[BaseException] = []

    def upsert(node: int, key: int, value: int) -> WriteRecord:
        start = time.monotonic()
        try:
            dbs[node].upsert(TABLE, {"k": key, "v": value})
            rec = WriteRecord(node, value, start, time.monotonic(), grpc.StatusCode.OK)
        except grpc.RpcError as e:
            rec = WriteRecord(node, value, start, time.monotonic(), e.code(), abort_reason(e))
        with lock:
            history[key].append(rec)
        return rec

    def b_writer(key: int, j: int) -> None:
        i = 0
        try:
            while not stop_b.is_set():
                i += 1
                upsert(1, key, 10_000_000 + key * 100_000 + j * 10_000 + i)
        except BaseException as e:  # reported below
            errors.append(e)

    def other_writer(key: int) -> None:
        try:
            for j in range(4):
                node = (0, 2)[j % 2]
                upsert(node, key, 2_000_000 + key * 1000 + j)
        except BaseException as e:  # reported below
            errors.append(e)

    b_threads = [threading.Thread(target=b_writer, args=(k, j), daemon=True)
                 for k in rows for j in range(3)]
    for t in b_threads:
        t.start()
    wait_for(lambda: all(sum(r.code == grpc.StatusCode.OK for r in history[k]) >= 3
                         for k in rows), 15, message="a few acknowledged writes per row on B")
    frozen.pause()
    paused = time.monotonic()
    stop_b.set()  # B's writers send nothing more; each may have one call in flight
    others = [threading.Thread(target=other_writer, args=(k,), daemon=True) for k in rows]
    try:
        _sleep_until(paused + ttl + 0.5)
        for t in others:
            t.start()
        # A and C may finish while B is frozen, or wait for B if it was frozen holding the
        # storage write lock; wake B in any case.
        _sleep_until(paused + ttl + SLACK_S)
    finally:
        frozen.resume()
    resumed = time.monotonic()
    for t in [*b_threads, *others]:
        t.join(CALL_TIMEOUT_S + 5)
        assert not t.is_alive(), "a writer did not finish"
    assert not errors, errors
    held = [(k, r.value, r.code.name, r.reason) for k in rows for r in history[k]
            if r.node == 1 and r.started < paused and r.ended >= resumed]
    assert held, "no write of B's was in its hands through the freeze (all were answered " \
                 "before it): the test did not test its case"

    report, bad_answers = [], []
    for k in rows:
        final = _value(dbs[2], k)
        assert _value(dbs[0], k) == final
        recs = sorted(history[k], key=lambda r: r.started)
        late = [r for r in recs if r.node != 1]
        assert late and all(r.code == grpc.StatusCode.OK for r in late), \
            f"row {k}: a write by A/C failed: {late}"
        last_other = max(late, key=lambda r: r.ended)
        in_flight_b = [r for r in recs if r.node == 1 and r.ended > paused]
        b_late_ok = [r for r in in_flight_b if r.code == grpc.StatusCode.OK
                     and r.ended > last_other.started]
        acked = {r.value for r in recs if r.code == grpc.StatusCode.OK}
        line = (f"row {k}: final {final}; last A/C write {last_other.value}; B in flight at "
                f"the freeze: {[(r.value, r.code.name, r.reason) for r in in_flight_b]}")
        report.append(line)
        assert final in acked, f"a value nobody acknowledged: {line}"
        assert final == last_other.value or final in {r.value for r in b_late_ok}, \
            f"a later acknowledged write was overwritten: {line}"
        # B's in-flight writes were not applied unless acknowledged (checked above); each must
        # also have been answered with a code that says so: OK, ABORTED (FENCED or
        # SESSION_LOST), or UNAVAILABLE ("no valid session": nothing done; or its session
        # ended before it could answer: outcome unknown).
        bad_answers += [f"row {k}: {r.value} -> {r.code.name} ({r.reason})" for r in in_flight_b
                        if r.code not in (grpc.StatusCode.OK, grpc.StatusCode.ABORTED,
                                          grpc.StatusCode.UNAVAILABLE)
                        or (r.code == grpc.StatusCode.ABORTED and r.reason not in REFUSED)]
    print("\n".join([*report, f"in B's hands through the freeze: {held}"]))
    assert not bad_answers, f"writes in flight on the frozen node got unexpected answers " \
                            f"(see its log): {bad_answers}"


# -- 5. a commit that outlives its caller's deadline -------------------------------------------


def test_a_commit_that_outlives_its_deadline_keeps_its_locks_until_it_is_decided(
        make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A locks r, writes r and a marker row, and commits with a 1 s deadline while the storage
    write lock is held by a frozen node C, so the commit cannot finish in time: its caller gets
    DEADLINE_EXCEEDED. B then asks for r: while C is frozen (A's commit undecided), the Status
    shows A's transaction still holding X on r and B's waiting for it, and B is not granted.
    After C wakes, the result must be that of a serial order: if A's commit was applied (its
    marker is there), B must have read A's value; if not, B read the old one."""
    cluster = make_cluster("--no-kill-frozen-peers", ttl_s=DEADLINE_TEST_TTL_S)
    node_c = cluster[2]
    r, marker, old, a_value = 1, 2, 100, 110
    db0, db1, db2 = _setup(cluster, {r: old, marker: 0})
    for table in (FILLER, PROBE):
        db0.create_table(table, {"k": "int64", "v": "int64"}, primary_key="k")
    db0.upsert(FILLER, [{"k": i, "v": 0} for i in range(FILLER_ROWS)])
    probe = _pinned(cluster[1], 0.5, attempts=1)
    hasty = _pinned(cluster[0], 1.0)

    ta = hasty.begin()
    assert ta.get(TABLE, r, for_update=True)["v"] == old
    ta.update(TABLE, [{"k": r, "v": a_value}, {"k": marker, "v": 1}])
    b_read_at: list[float] = []

    def increment() -> int:
        tb = db1.begin()
        seen = tb.get(TABLE, r, for_update=True)["v"]
        b_read_at.append(time.monotonic())
        tb.update(TABLE, {"k": r, "v": seen + 1})
        tb.commit()
        return seen

    def b_waits_for_a() -> api.StatusResponse | None:
        st = db0.status()
        return st if any(ta.id in w.waits_for for w in st.waits) else None

    c_commit, c_paused = _freeze_holding_write_lock(node_c, db2, probe)
    try:
        a_commit = Call()
        try:
            a_commit.result = ta.commit()
        except grpc.RpcError as e:
            a_commit.error = e
        tb, b = _in_thread(increment)
        st = wait_for(b_waits_for_a, 5, interval_s=0.1, retry_on=(grpc.RpcError,),
                      message="B's wait for A's lock on r")
        a_holds = [(li.resource, li.mode) for li in st.locks
                   if li.transaction_id == ta.id and li.granted]
        granted_while_undecided = bool(b_read_at)
    finally:
        node_c.resume()
    c_resumed = time.monotonic()
    assert a_commit.code == grpc.StatusCode.DEADLINE_EXCEEDED, \
        f"A's commit did not outlive its deadline: {a_commit.describe()}"
    assert any(res.startswith("r/") and mode == "X" for res, mode in a_holds), \
        f"A's commit was undecided, yet its transaction held no X row lock: {a_holds}"
    assert not granted_while_undecided, "B was granted r while A's commit was undecided"
    assert c_commit.thread is not None
    _join(c_commit.thread, c_commit, CALL_TIMEOUT_S + 5, "C's bulky commit")
    _join(tb, b, CALL_TIMEOUT_S + 5, "B's increment")
    assert b.error is None, f"B's increment: {b.describe()}"
    final, applied = _value(db2, r), _value(db2, marker) == 1
    outcome = (f"A's commit: {a_commit.code.name}; A's locks while undecided: {a_holds}; A's "
               f"commit applied: {applied}; B read {b.result} {b_read_at[0] - c_resumed:+.2f}s "
               f"from C's wake (C frozen {c_resumed - c_paused:.1f}s); final r = {final}")
    if applied:
        assert b.result == a_value and final == a_value + 1, \
            f"lost update: A's commit was applied after B read r; {outcome}"
    else:
        assert b.result == old and final == old + 1, outcome
    print(outcome)
