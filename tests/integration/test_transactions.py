"""Interactive transactions with real etcd, real node processes and real gRPC.

What these tests pin down (ARCHITECTURE.md, "Transactions" and "Locks"):

* Serializable read-write transactions under concurrency from several nodes: bank transfers keep
  the total, lose no acknowledged transfer and keep no aborted one; read-only transactions see
  a consistent snapshot all along; read-modify-write increments lose no update, with
  ``for_update`` and with S-then-X upgrades (which deadlock, and must be survived).
* No phantoms: a range scan locks its pages until the transaction ends, and only those pages.
* Deadlocks across two nodes are broken quickly by aborting the youngest (reason DEADLOCK); a
  lock wait ends at the lock timeout (reason LOCK_TIMEOUT).
* A transaction is bound to its node (FAILED_PRECONDITION elsewhere), unknown or ended ids are
  NOT_FOUND, a restart of its node aborts it (NODE_RESTARTED), an idle one is rolled back and its
  locks freed (IDLE_TIMEOUT); read-only transactions cannot write and keep their snapshot;
  rollback discards; a transaction reads its own writes.
* Cluster status shows lock entries (granted and waiting), waits-for edges and open
  transactions of every node.

Clusters: the ``cluster`` fixture (three nodes, TTL 3 s, default lock timeout 10 s), or
``make_cluster`` for nodes started with other flags. Every thread a test starts is stopped in a
``finally``; every wait is bounded.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from shardless import abort_reason, connect
from shardless.client import Client, Transaction, to_key
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as api_grpc
from tests.harness.calls import in_thread as _in_thread
from tests.harness.calls import join as _join
from tests.harness.cluster import Cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CALL_TIMEOUT_S = 20.0  # above the default lock timeout (10 s): a lock wait ends on the node
JOIN_TIMEOUT_S = 60.0
ABORTED = grpc.StatusCode.ABORTED


# -- helpers -----------------------------------------------------------------------------------


def _pinned(cluster: Cluster, timeout_s: float = CALL_TIMEOUT_S) -> list[Client]:
    """One client per node, each pinned to that node."""
    return [connect([a], timeout_s=timeout_s) for a in cluster.addresses]


def _close(clients: list[Client]) -> None:
    for c in clients:
        c.close()


def _end(t: Transaction) -> None:
    """Roll ``t`` back unless it is over; ignore errors (it may have been aborted)."""
    if not t.done:
        try:
            t.rollback()
        except grpc.RpcError:
            pass


def _code_and_reason(fn: Callable[[], Any]) -> tuple[grpc.StatusCode, str | None, str]:
    """Run ``fn`` and return the status code, abort reason and details of the error it raises."""
    try:
        fn()
    except grpc.RpcError as e:
        return e.code(), abort_reason(e), e.details() or ""
    return grpc.StatusCode.OK, None, ""


def _retry_unavailable(fn: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Call ``fn`` until it does not fail with UNAVAILABLE (a channel reconnecting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def _join_all(threads: list[threading.Thread], timeout_s: float = JOIN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads still running after {timeout_s:.0f}s: {stuck}"


# -- 1. bank transfers -------------------------------------------------------------------------

ACCOUNTS = 50
START_BALANCE = 100
TOTAL = ACCOUNTS * START_BALANCE
BANK_RUN_S = 8.0
MAX_ATTEMPTS = 25
HOT = range(8)  # half the transfers stay among these, so that lock cycles really happen
HOT_SHARE = 0.5


@dataclass
class BankLog:
    """What the clients saw; shared by the threads under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    aborted: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)
    ambiguous: dict[str, str] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)
    gave_up: int = 0
    snapshot_sums: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _transfer_once(db: Client, tid: str, src: int, dst: int, amount: int, ordered: bool) -> str:
    """One attempt: lock both rows (in key order or src-first), move ``amount``, log ``tid``.

    Returns "acked", "skipped" (not enough money; rolled back) or "aborted:<reason>".
    """
    t = db.begin()
    try:
        order = sorted((src, dst)) if ordered else [src, dst]
        rows = {k: t.get("acct", k, for_update=True) for k in order}
        if rows[src] is None or rows[dst] is None:
            raise AssertionError(f"{tid}: account row missing inside a transaction: {rows}")
        if rows[src]["bal"] < amount:
            t.rollback()
            return "skipped"
        t.update("acct", [{"id": src, "bal": rows[src]["bal"] - amount},
                          {"id": dst, "bal": rows[dst]["bal"] + amount}])
        t.insert("transfers", {"id": tid, "src": src, "dst": dst, "amount": amount})
        t.commit()
        return "acked"
    except grpc.RpcError as e:
        _end(t)
        if e.code() == ABORTED:
            return f"aborted:{abort_reason(e)}"
        raise


@pytest.mark.slow
def test_bank_transfers_keep_the_total_and_every_acknowledged_transfer(
        cluster: Cluster) -> None:
    """Nine clients on three nodes move money for ~8 s, some locking in key order and some not
    (so deadlocks happen and are survived; half the transfers stay among a few hot accounts).
    The total is 5000 in every read-only snapshot taken meanwhile and at the end; no balance is
    negative; the ``transfers`` rows are exactly the acknowledged transfers (aborted attempts
    left nothing); the balances are what the acknowledged transfers make of the opening
    balances."""
    clients = _pinned(cluster)
    clients[0].create_table("acct", {"id": "int64", "bal": "int64"}, primary_key="id")
    clients[0].create_table("transfers", {"id": "string", "src": "int64", "dst": "int64",
                                          "amount": "int64"}, primary_key="id")
    clients[0].insert("acct", [{"id": i, "bal": START_BALANCE} for i in range(ACCOUNTS)])
    log = BankLog()
    stop = threading.Event()
    deadline = time.monotonic() + BANK_RUN_S

    def transferer(w: int) -> None:
        db = clients[w % 3]
        rng = random.Random(1000 + w)
        ordered = w % 2 == 0
        i = 0
        try:
            while time.monotonic() < deadline and not stop.is_set():
                i += 1
                src, dst = rng.sample(HOT if rng.random() < HOT_SHARE else range(ACCOUNTS), 2)
                amount = rng.randint(1, 40)
                for attempt in range(MAX_ATTEMPTS):
                    tid = f"w{w}-{i}-a{attempt}"
                    try:
                        outcome = _transfer_once(db, tid, src, dst, amount, ordered)
                    except grpc.RpcError as e:
                        with log.lock:
                            log.ambiguous[tid] = f"{e.code().name}: {e.details()}"
                        break
                    with log.lock:
                        if outcome == "acked":
                            log.acked[tid] = (src, dst, amount)
                        elif outcome == "skipped":
                            log.skipped.add(tid)
                        else:
                            log.aborted.add(tid)
                            log.reasons[outcome] += 1
                    if not outcome.startswith("aborted"):
                        break
                    time.sleep(rng.uniform(0.0, 0.05))
                else:
                    with log.lock:
                        log.gave_up += 1
        except BaseException as e:  # reported by the test
            with log.lock:
                log.problems.append(f"transferer {w}: {e!r}")

    def auditor() -> None:
        k = 0
        try:
            while not stop.is_set():
                k += 1
                db = clients[k % 3]
                t = db.begin(read_only=True)
                try:
                    rows = t.scan("acct")
                    some = random.sample(range(ACCOUNTS), 5)
                    again = t.batch_get("acct", some)
                    t.commit()
                finally:
                    _end(t)
                total = sum(r["bal"] for r in rows)
                by_id = {r["id"]: r["bal"] for r in rows}
                with log.lock:
                    log.snapshot_sums.append(total)
                    if len(rows) != ACCOUNTS or total != TOTAL:
                        log.problems.append(f"snapshot {k} on node {k % 3}: {len(rows)} "
                                            f"accounts, total {total}")
                    for key, r in zip(some, again, strict=True):
                        if r is None or r["bal"] != by_id.get(key):
                            log.problems.append(f"snapshot {k}: account {key} read "
                                                f"{r and r['bal']} after the scan read "
                                                f"{by_id.get(key)} in one read-only txn")
                time.sleep(0.05)
        except BaseException as e:  # reported by the test
            with log.lock:
                log.problems.append(f"auditor: {e!r}")

    threads = [threading.Thread(target=transferer, args=(w,), name=f"transfer-{w}", daemon=True)
               for w in range(9)]
    threads.append(threading.Thread(target=auditor, name="auditor", daemon=True))
    try:
        for t in threads:
            t.start()
        time.sleep(BANK_RUN_S)
    finally:
        stop.set()
        _join_all(threads)

    assert not log.problems, log.problems[:10]
    assert not log.ambiguous, f"calls failed with other codes than ABORTED: " \
                              f"{list(log.ambiguous.items())[:5]}"
    assert len(log.acked) >= 50, f"only {len(log.acked)} transfers acknowledged in " \
                                 f"{BANK_RUN_S:.0f}s; aborts {dict(log.reasons)}"
    assert len(log.snapshot_sums) >= 5, "the auditor took too few snapshots"
    # Every abort is a deadlock victim: no wait runs into the 10 s lock timeout, nothing else.
    assert set(log.reasons) <= {"aborted:DEADLOCK"}, dict(log.reasons)
    assert log.reasons["aborted:DEADLOCK"] >= 1, "no deadlock happened: the test lost its point"

    reader = clients[1]
    accounts = {r["id"]: r["bal"] for r in reader.scan("acct")}
    assert len(accounts) == ACCOUNTS
    assert sum(accounts.values()) == TOTAL
    assert min(accounts.values()) >= 0, {k: v for k, v in accounts.items() if v < 0}
    logged = {r["id"]: (r["src"], r["dst"], r["amount"]) for r in reader.scan("transfers")}
    missing = set(log.acked) - set(logged)
    assert not missing, f"acknowledged transfers missing: {sorted(missing)[:10]}"
    stray_aborted = log.aborted & set(logged)
    assert not stray_aborted, f"aborted transfers applied: {sorted(stray_aborted)[:10]}"
    stray_skipped = log.skipped & set(logged)
    assert not stray_skipped, f"rolled-back transfers applied: {sorted(stray_skipped)[:10]}"
    assert set(logged) == set(log.acked)
    assert all(logged[tid] == log.acked[tid] for tid in logged)
    expected = dict.fromkeys(range(ACCOUNTS), START_BALANCE)
    for src, dst, amount in log.acked.values():
        expected[src] -= amount
        expected[dst] += amount
    assert accounts == expected, "balances differ from the acknowledged transfers"
    _close(clients)


# -- 2. lost updates ---------------------------------------------------------------------------

COUNTER_RUN_S = 4.0


@pytest.mark.slow
@pytest.mark.parametrize("for_update", [True, False], ids=["for-update", "s-then-x-upgrade"])
def test_read_modify_write_increments_lose_no_update(cluster: Cluster, for_update: bool) -> None:
    """Six clients on three nodes increment one counter in interactive transactions (read,
    then write +1), retrying on ABORTED. The final value is the number of acknowledged
    increments, and the values the acknowledged increments read are exactly 0..n-1 (each saw
    the previous one). With plain reads (S, then an upgrade to X) concurrent upgrades deadlock:
    some increments are aborted as DEADLOCK victims, and only for that reason."""
    clients = _pinned(cluster)
    clients[0].create_table("ctr", {"id": "int64", "n": "int64"}, primary_key="id")
    clients[0].insert("ctr", {"id": 1, "n": 0})
    lock = threading.Lock()
    seen: list[int] = []
    reasons: Counter[str] = Counter()
    problems: list[str] = []
    deadline = time.monotonic() + COUNTER_RUN_S

    def incrementer(w: int) -> None:
        db = clients[w % 3]
        rng = random.Random(w)
        try:
            while time.monotonic() < deadline:
                for _ in range(40):
                    t = db.begin()
                    try:
                        n = t.get("ctr", 1, for_update=for_update)["n"]
                        t.update("ctr", {"id": 1, "n": n + 1})
                        t.commit()
                    except grpc.RpcError as e:
                        _end(t)
                        if e.code() != ABORTED:
                            raise
                        with lock:
                            reasons[str(abort_reason(e))] += 1
                        time.sleep(rng.uniform(0.0, 0.03))
                        continue
                    with lock:
                        seen.append(n)
                    break
                else:
                    with lock:
                        problems.append(f"incrementer {w}: 40 attempts aborted in a row")
        except BaseException as e:  # reported by the test
            with lock:
                problems.append(f"incrementer {w}: {e!r}")

    threads = [threading.Thread(target=incrementer, args=(w,), name=f"inc-{w}", daemon=True)
               for w in range(6)]
    try:
        for t in threads:
            t.start()
    finally:
        _join_all(threads)

    assert not problems, problems[:5]
    final = clients[2].get("ctr", 1)["n"]
    assert final == len(seen), f"final {final} != {len(seen)} acknowledged increments " \
                               f"(aborts {dict(reasons)})"
    assert sorted(seen) == list(range(len(seen))), "two acknowledged increments read the " \
                                                   "same value: a lost update"
    assert len(seen) >= 5, f"only {len(seen)} increments in {COUNTER_RUN_S:.0f}s"
    if for_update:
        # One row locked X from the first read: nothing can deadlock, nothing waits for long.
        assert not reasons, f"exclusive readers of one row were aborted: {dict(reasons)}"
    else:
        assert reasons["DEADLOCK"] >= 1, f"no upgrade deadlock in {len(seen)} increments"
        assert set(reasons) == {"DEADLOCK"}, dict(reasons)
    _close(clients)


# -- 3. phantoms -------------------------------------------------------------------------------


def _items(cluster: Cluster) -> list[Client]:
    clients = _pinned(cluster)
    clients[0].create_table("items", {"id": "int64", "v": "string"}, primary_key="id")
    clients[0].insert("items", [{"id": i, "v": "seed"} for i in range(100, 200, 2)])
    clients[0].insert("items", [{"id": i, "v": "seed"} for i in (5, 1000, 100_000)])
    return clients


def test_a_range_scan_sees_no_phantom_until_it_ends(cluster: Cluster) -> None:
    """Txn A scans ids 100..199; inserters on every node keep trying to insert odd ids there,
    and a deleter to delete id 100 (one-shot, 0.3 s deadline). A's scan ~1 s later returns the
    same rows; no insert or delete succeeds before A commits; after it they all land."""
    clients = _items(cluster)
    # one attempt per call: the test counts the failed ones itself
    fast = [connect([a], timeout_s=0.3, attempts=1) for a in cluster.addresses]
    a = clients[0].begin()
    first = [r["id"] for r in a.scan("items", 100, 199)]
    assert first == list(range(100, 200, 2))
    targets = [list(range(101 + 2 * w, 200, 6))[:3] for w in range(3)]
    stop = threading.Event()
    lock = threading.Lock()
    landed: dict[int, float] = {}
    failed_attempts: Counter[str] = Counter()
    problems: list[str] = []

    def inserter(w: int) -> None:
        db = fast[w]
        try:
            for key in targets[w]:
                while not stop.is_set():
                    try:
                        db.insert("items", {"id": key, "v": f"ins-{w}"})
                    except grpc.RpcError as e:
                        if e.code() == grpc.StatusCode.ALREADY_EXISTS:  # an earlier attempt
                            pass
                        elif e.code() in (ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED):
                            with lock:
                                failed_attempts[f"{e.code().name}:{abort_reason(e)}"] += 1
                            continue
                        else:
                            raise
                    with lock:
                        landed[key] = time.monotonic()
                    break
        except BaseException as e:  # reported by the test
            with lock:
                problems.append(f"inserter {w}: {e!r}")

    def deleter() -> None:
        db = fast[1]
        try:
            while not stop.is_set():
                try:
                    db.delete("items", [100])
                except grpc.RpcError as e:
                    if e.code() in (ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED):
                        with lock:
                            failed_attempts[f"delete {e.code().name}:{abort_reason(e)}"] += 1
                        continue
                    raise
                with lock:
                    landed[100] = time.monotonic()
                return
        except BaseException as e:  # reported by the test
            with lock:
                problems.append(f"deleter: {e!r}")

    threads = [threading.Thread(target=inserter, args=(w,), name=f"ins-{w}", daemon=True)
               for w in range(3)]
    threads.append(threading.Thread(target=deleter, name="deleter", daemon=True))
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        second = [r["id"] for r in a.scan("items", 100, 199)]
        outside = [r["id"] for r in clients[1].scan("items", 100, 199)]
        with lock:
            early = dict(landed)
            tries = sum(failed_attempts.values())
        commit_at = time.monotonic()
        a.commit()
        wait_for(lambda: len(landed) == 10 or problems, 15,
                 message=lambda: f"the writes to land after A committed (landed {landed})")
    finally:
        stop.set()
        _end(a)
        _join_all(threads, 20)

    assert not problems, problems
    assert second == first, "a phantom appeared inside the scanning transaction"
    assert outside == first, "an insert into the scanned range committed while A was open"
    assert not early, f"writes into the scanned range succeeded while A held it: {early}"
    assert tries >= 4, f"the writers hardly tried while A was open: {dict(failed_attempts)}"
    assert all(at > commit_at for at in landed.values())
    final = [r["id"] for r in clients[2].scan("items", 100, 199)]
    assert final == sorted(first[1:] + [k for ks in targets for k in ks])
    _close(clients + fast)


def test_a_scan_blocks_only_inserts_into_the_pages_it_covers(cluster: Cluster) -> None:
    """Txn B scans ids 100000..100050: inserts into 100..199 and at 300 go through at once
    while B is open; an insert at 100010 (inside B's range) waits until B ends."""
    clients = _items(cluster)
    fast = connect([cluster[2].address], timeout_s=0.5)
    b = clients[1].begin()
    try:
        assert [r["id"] for r in b.scan("items", 100_000, 100_050)] == [100_000]
        for key in (151, 300):
            start = time.monotonic()
            clients[2].insert("items", {"id": key, "v": "free"})
            took = time.monotonic() - start
            assert took < 1.0, f"insert {key} outside B's pages took {took:.2f}s"
        code, reason, details = _code_and_reason(
            lambda: fast.insert("items", {"id": 100_010, "v": "blocked"}))
        assert code in (ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED), (code, reason, details)
        assert b.scan("items", 100_000, 100_050)[0]["id"] == 100_000
        assert len(b.scan("items", 100_000, 100_050)) == 1
        b.commit()
    finally:
        _end(b)
    wait_for(lambda: _code_and_reason(
        lambda: clients[0].insert("items", {"id": 100_010, "v": "later"}))[0]
        in (grpc.StatusCode.OK, grpc.StatusCode.ALREADY_EXISTS), 10,
        message="the insert into B's range to go through after B ended")
    assert clients[0].get("items", 100_010) is not None
    assert clients[0].get("items", 151)["v"] == "free"
    _close([*clients, fast])


# -- 4. deadlock across two nodes --------------------------------------------------------------


def test_a_deadlock_across_two_nodes_aborts_the_youngest_quickly(cluster: Cluster) -> None:
    """t1 (node 0) locks row 1, t2 (node 1, begun later) locks row 2; then each asks for the
    other's row. Exactly one, t2 (the youngest), gets ABORTED with reason DEADLOCK in well
    under the 10 s lock timeout; t1 gets its row and commits."""
    c0, c1, c2 = _pinned(cluster)
    c0.create_table("acct", {"id": "int64", "bal": "int64"}, primary_key="id")
    c0.insert("acct", [{"id": 1, "bal": 10}, {"id": 2, "bal": 20}])
    t1 = c0.begin()
    time.sleep(0.05)  # t2 is strictly younger
    t2 = c1.begin()
    try:
        assert t1.node_id != t2.node_id
        t1.get("acct", 1, for_update=True)
        t2.get("acct", 2, for_update=True)
        barrier = threading.Barrier(2)
        th1, call1 = _in_thread(lambda: t1.get("acct", 2, for_update=True), barrier=barrier)
        th2, call2 = _in_thread(lambda: t2.get("acct", 1, for_update=True), barrier=barrier)
        _join(th2, call2, 15, "t2's request for row 1")
        _join(th1, call1, 15, "t1's request for row 2")
        assert call2.code == ABORTED and call2.reason == "DEADLOCK", call2.describe()
        assert call2.elapsed < 3.0, f"deadlock broken only after {call2.elapsed:.2f}s"
        assert call1.error is None, f"t1 should have won: {call1.describe()}"
        assert call1.result["bal"] == 20
        assert call1.elapsed < 3.5, call1.describe()
        # The victim is over: its id now names an aborted transaction.
        code, reason, _ = _code_and_reason(lambda: t2.get("acct", 2))
        assert (code, reason) == (ABORTED, "DEADLOCK")
        t1.update("acct", [{"id": 1, "bal": 0}, {"id": 2, "bal": 30}])
        t1.commit()
    finally:
        _end(t1)
        _end(t2)
    assert [r["bal"] for r in c2.scan("acct")] == [0, 30]
    _close([c0, c1, c2])


# -- 5. lock wait timeout ----------------------------------------------------------------------


def test_a_lock_wait_ends_with_lock_timeout(make_cluster: Callable[..., Cluster]) -> None:
    """With --lock-timeout 1: a transaction waiting for a row that another open transaction
    holds gets ABORTED LOCK_TIMEOUT after about 1 s; so does a one-shot write; the holder
    goes on and commits."""
    cluster = make_cluster("--lock-timeout", "1")
    c0, c1, c2 = _pinned(cluster)
    c2.attempts = 1  # the helper would retry the ABORTED one-shot write; time one attempt
    c0.create_table("acct", {"id": "int64", "bal": "int64"}, primary_key="id")
    c0.insert("acct", {"id": 1, "bal": 10})
    holder = c0.begin()
    waiter = c1.begin()
    try:
        holder.get("acct", 1, for_update=True)
        start = time.monotonic()
        code, reason, details = _code_and_reason(lambda: waiter.get("acct", 1, for_update=True))
        took = time.monotonic() - start
        assert (code, reason) == (ABORTED, "LOCK_TIMEOUT"), details
        assert 0.8 <= took < 3.0, f"lock wait ended after {took:.2f}s"
        start = time.monotonic()
        code, reason, details = _code_and_reason(lambda: c2.update("acct", {"id": 1, "bal": 0}))
        took = time.monotonic() - start
        assert (code, reason) == (ABORTED, "LOCK_TIMEOUT"), details
        assert 0.8 <= took < 3.0, f"one-shot lock wait ended after {took:.2f}s"
        holder.update("acct", {"id": 1, "bal": 11})
        holder.commit()
    finally:
        _end(holder)
        _end(waiter)
    assert c2.get("acct", 1)["bal"] == 11
    _close([c0, c1, c2])


# -- 6. binding, errors and visibility ---------------------------------------------------------


def _get_in(client: Client, txn_id: str, table: str, key: Any) -> api.GetResponse:
    """A Get carrying ``txn_id``, sent through ``client``'s channel (whatever its node)."""
    stub = api_grpc.RowServiceStub(client.channel)
    return stub.Get(api.GetRequest(table=table, key=to_key(key), transaction_id=txn_id),
                    timeout=5)


def test_transaction_ids_are_bound_to_their_node_and_checked(cluster: Cluster) -> None:
    """A call for node 0's transaction sent to node 1 is FAILED_PRECONDITION naming node 0;
    an unknown id and an ended id are NOT_FOUND; a malformed one INVALID_ARGUMENT."""
    c0, c1, _ = _pinned(cluster)
    c0.create_table("acct", {"id": "int64", "bal": "int64"}, primary_key="id")
    c0.insert("acct", {"id": 1, "bal": 10})
    t = c0.begin()
    try:
        assert t.node_id == cluster[0].node_id and t.address == cluster[0].address
        t.get("acct", 1)
        code, reason, details = _code_and_reason(lambda: _get_in(c1, t.id, "acct", 1))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, details
        assert reason == "WRONG_NODE", reason  # not a failed condition
        assert t.node_id in details, details
        txns_elsewhere = api_grpc.TransactionServiceStub(c1.channel)
        rows_elsewhere = api_grpc.RowServiceStub(c1.channel)
        for call in (
                lambda: txns_elsewhere.Commit(api.CommitRequest(transaction_id=t.id), timeout=5),
                lambda: txns_elsewhere.Rollback(api.RollbackRequest(transaction_id=t.id),
                                                timeout=5),
                lambda: list(rows_elsewhere.Scan(api.ScanRequest(table="acct",
                                                                 transaction_id=t.id),
                                                 timeout=5))):
            code, _, details = _code_and_reason(call)
            assert code == grpc.StatusCode.FAILED_PRECONDITION and t.node_id in details, details
        # The misdirected calls did not end it.
        assert t.get("acct", 1)["bal"] == 10
        head, _, node = t.id.rpartition("@")
        unknown = f"{head.split('.', 1)[0]}.999999@{node}"
        code, _, details = _code_and_reason(lambda: _get_in(c0, unknown, "acct", 1))
        assert code == grpc.StatusCode.NOT_FOUND, details
        # An id of the right form that this node never issued (made up, not of an earlier
        # life of the node): NOT_FOUND, not NODE_RESTARTED.
        for made_up in (f"0123abcd.7@{node}", f"18c0a1b2c3d-ab12-abcdef.7@{node}"):
            code, _, details = _code_and_reason(lambda m=made_up: _get_in(c0, m, "acct", 1))
            assert code == grpc.StatusCode.NOT_FOUND, details
            assert "never begun" in details, details
        code, _, details = _code_and_reason(lambda: _get_in(c0, "not-a-transaction", "acct", 1))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        t.commit()
    finally:
        _end(t)
    code, _, details = _code_and_reason(lambda: _get_in(c0, t.id, "acct", 1))
    assert code == grpc.StatusCode.NOT_FOUND, details
    r = c0.begin()
    r.rollback()
    for call in (lambda: _get_in(c0, r.id, "acct", 1), r.commit, r.rollback):
        code, _, details = _code_and_reason(call)
        assert code == grpc.StatusCode.NOT_FOUND, details
    _close([c0, c1])


def test_a_restart_of_its_node_aborts_a_transaction_with_node_restarted(
        cluster: Cluster) -> None:
    """A transaction of node 0 holding a row lock; node 0 restarts. The row is free for other
    nodes, the transaction's write never lands, and its id gets ABORTED NODE_RESTARTED."""
    c0, c1, _ = _pinned(cluster)
    c0.create_table("acct", {"id": "int64", "bal": "int64"}, primary_key="id")
    c0.insert("acct", {"id": 1, "bal": 10})
    t = c0.begin()
    t.get("acct", 1, for_update=True)
    t.update("acct", {"id": 1, "bal": 999})
    cluster[0].terminate()
    cluster[0].restart()
    code, reason, details = _code_and_reason(
        lambda: _retry_unavailable(lambda: t.get("acct", 1)))
    assert (code, reason) == (ABORTED, "NODE_RESTARTED"), (code, details)
    code, reason, details = _code_and_reason(lambda: _retry_unavailable(t.commit))
    assert (code, reason) == (ABORTED, "NODE_RESTARTED"), (code, details)
    other = connect([cluster[1].address], timeout_s=3)
    u = other.begin()
    try:
        assert u.get("acct", 1, for_update=True)["bal"] == 10
        u.update("acct", {"id": 1, "bal": 11})
        u.commit()
    finally:
        _end(u)
    assert _retry_unavailable(lambda: c0.get("acct", 1))["bal"] == 11
    _close([c0, c1, other])


def test_an_idle_transaction_is_rolled_back_and_its_locks_freed(
        make_cluster: Callable[..., Cluster]) -> None:
    """With --idle-timeout 1: a transaction that holds a row lock and a buffered write and
    then goes quiet is rolled back: another transaction gets the row within a few seconds, the
    write never lands, and its next call gets ABORTED IDLE_TIMEOUT. A transaction that keeps
    calling is not reaped."""
    cluster = make_cluster("--idle-timeout", "1")
    c0, c1, _ = _pinned(cluster)
    c0.create_table("acct", {"id": "int64", "bal": "int64"}, primary_key="id")
    c0.insert("acct", [{"id": 1, "bal": 10}, {"id": 2, "bal": 20}])
    idle = c0.begin()
    busy = other = None
    try:
        idle.get("acct", 1, for_update=True)
        idle.update("acct", {"id": 1, "bal": 999})
        start = time.monotonic()
        other = c1.begin()
        assert other.get("acct", 1, for_update=True)["bal"] == 10
        took = time.monotonic() - start
        assert took < 4.0, f"the idle transaction's lock was freed only after {took:.2f}s"
        other.update("acct", {"id": 1, "bal": 11})
        other.commit()
        code, reason, details = _code_and_reason(lambda: idle.get("acct", 1))
        assert (code, reason) == (ABORTED, "IDLE_TIMEOUT"), (code, details)
        busy = c0.begin()
        busy.get("acct", 2, for_update=True)
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            busy.get("acct", 2)
            time.sleep(0.3)
        busy.update("acct", {"id": 2, "bal": 21})
        busy.commit()
    finally:
        for t in (idle, busy, other):
            if t is not None:
                _end(t)
    assert [r["bal"] for r in c1.scan("acct")] == [11, 21]
    _close([c0, c1])


def test_a_transaction_past_its_lifetime_is_rolled_back_though_its_client_kept_calling(
        cluster: Cluster) -> None:
    """A transaction begun with a lifetime of 1.5 s (``txn_lifetime_s``; the node's idle
    timeout is 30 s) that keeps calling is rolled back once it is that old: another node's
    transaction then gets its row, its write never lands, and its next call gets ABORTED
    EXPIRED. Its Commit is never sent, as when a Commit is lost on its way."""
    short = connect([cluster[0].address], timeout_s=CALL_TIMEOUT_S, txn_lifetime_s=1.5)
    c1 = connect([cluster[1].address], timeout_s=CALL_TIMEOUT_S)
    short.create_table("acct", {"id": "int64", "bal": "int64"}, primary_key="id")
    short.insert("acct", {"id": 1, "bal": 10})
    t = short.begin()
    other = None
    try:
        begun = time.monotonic()
        t.get("acct", 1, for_update=True)
        t.update("acct", {"id": 1, "bal": 999})
        ended = None
        while time.monotonic() - begun < 5:
            try:
                t.get("acct", 1)  # never idle for long
            except grpc.RpcError as e:
                ended = e
                break
            time.sleep(0.2)
        assert ended is not None, "the transaction outlived its lifetime"
        assert (ended.code(), abort_reason(ended)) == (ABORTED, "EXPIRED"), ended
        took = time.monotonic() - begun
        assert 1.5 <= took < 3.5, f"rolled back {took:.2f} s after it began"
        other = c1.begin()
        assert other.get("acct", 1, for_update=True)["bal"] == 10
        other.commit()
    finally:
        for x in (t, other):
            if x is not None:
                _end(x)
    _close([short, c1])


def test_a_row_read_in_a_read_write_transaction_cannot_change_until_it_ends(
        cluster: Cluster) -> None:
    """A plain read takes a shared lock: another node's transaction may read the row too, but a
    write to it (one-shot or in a transaction) waits until the reader ends, so the reader's
    second read repeats its first; after the reader commits, the write goes through."""
    c0, c1, c2 = _pinned(cluster)
    c0.create_table("acct", {"id": "int64", "bal": "int64"}, primary_key="id")
    c0.insert("acct", {"id": 1, "bal": 10})
    fast = connect([cluster[2].address], timeout_s=0.5)
    reader = c0.begin()
    co_reader = c1.begin()
    try:
        assert reader.get("acct", 1)["bal"] == 10
        start = time.monotonic()
        assert co_reader.get("acct", 1)["bal"] == 10
        assert time.monotonic() - start < 1.0, "two shared locks on one row conflicted"
        co_reader.commit()
        code, reason, details = _code_and_reason(lambda: fast.update("acct", {"id": 1,
                                                                              "bal": 0}))
        assert code in (ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED), (code, reason, details)
        th, call = _in_thread(lambda: c2.update("acct", {"id": 1, "bal": 20}))
        time.sleep(0.5)
        assert not call.done.is_set(), f"a write overtook a shared lock: {call.describe()}"
        assert reader.get("acct", 1)["bal"] == 10
        assert reader.batch_get("acct", [1])[0]["bal"] == 10
        reader.commit()
        _join(th, call, 15, "the write waiting for the reader")
        assert call.error is None, call.describe()
    finally:
        _end(reader)
        _end(co_reader)
    assert c0.get("acct", 1)["bal"] == 20
    _close([c0, c1, c2, fast])


def test_read_only_transactions_cannot_write_and_keep_their_snapshot(cluster: Cluster) -> None:
    """A read-only transaction refuses writes and locking reads (INVALID_ARGUMENT, and stays
    usable); its reads all come from the snapshot of its begin although others commit."""
    c0, c1, c2 = _pinned(cluster)
    c0.create_table("acct", {"id": "int64", "bal": "int64"}, primary_key="id")
    c0.insert("acct", [{"id": 1, "bal": 10}, {"id": 2, "bal": 20}])
    ro = c0.begin(read_only=True)
    try:
        before = [dict(r) for r in ro.scan("acct")]
        for call in (lambda: ro.insert("acct", {"id": 3, "bal": 0}),
                     lambda: ro.update("acct", {"id": 1, "bal": 0}),
                     lambda: ro.delete("acct", [1]),
                     lambda: ro.get("acct", 1, for_update=True),
                     lambda: ro.scan("acct", for_update=True)):
            code, _, details = _code_and_reason(call)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        c1.update("acct", {"id": 1, "bal": 11})
        c2.insert("acct", {"id": 3, "bal": 30})
        with c1.begin() as w:
            w.delete("acct", [2])
        assert ro.get("acct", 1)["bal"] == 10
        assert ro.get("acct", 3) is None
        assert ro.batch_get("acct", [1, 2, 3])[1]["bal"] == 20
        assert [dict(r) for r in ro.scan("acct")] == before
        ro.commit()
    finally:
        _end(ro)
    fresh = c0.begin(read_only=True)
    assert [(r["id"], r["bal"]) for r in fresh.scan("acct")] == [(1, 11), (3, 30)]
    fresh.commit()
    _close([c0, c1, c2])


def test_a_transaction_sees_its_own_writes_others_do_not_and_rollback_discards(
        cluster: Cluster) -> None:
    """Inside a transaction get, batch_get and scan show its insert, update and delete; nobody
    else sees them before commit; rollback discards them all; commit publishes them all."""
    c0, c1, _ = _pinned(cluster)
    c0.create_table("acct", {"id": "int64", "bal": "int64"}, primary_key="id")
    c0.insert("acct", [{"id": 1, "bal": 10}, {"id": 2, "bal": 20}])

    def write_some(t: Transaction) -> None:
        assert t.insert("acct", {"id": 5, "bal": 50}) == 1
        assert t.update("acct", {"id": 1, "bal": 15}) == 1
        assert t.delete("acct", [2]) == 1
        assert t.get("acct", 5)["bal"] == 50
        assert t.get("acct", 1)["bal"] == 15
        assert t.get("acct", 2) is None
        assert [r and r["bal"] for r in t.batch_get("acct", [1, 2, 5])] == [15, None, 50]
        assert [(r["id"], r["bal"]) for r in t.scan("acct")] == [(1, 15), (5, 50)]
        assert [r["id"] for r in t.scan("acct", reverse=True)] == [5, 1]
        assert [(r["id"], r["bal"]) for r in c1.scan("acct")] == [(1, 10), (2, 20)]

    t = c0.begin()
    try:
        write_some(t)
        t.rollback()
    finally:
        _end(t)
    assert [(r["id"], r["bal"]) for r in c1.scan("acct")] == [(1, 10), (2, 20)]
    with c0.begin() as t:
        write_some(t)
    assert [(r["id"], r["bal"]) for r in c1.scan("acct")] == [(1, 15), (5, 50)]
    _close([c0, c1])


# -- 7. status ---------------------------------------------------------------------------------


def test_status_shows_locks_waits_and_transactions_of_every_node(cluster: Cluster) -> None:
    """t1 (node 0) holds row 1, t2 (node 1) waits for it: the status any node gives lists t1's
    granted X entry and t2's waiting one, a wait record of t2 naming t1, and both transactions
    with their nodes; once both end, none of it remains."""
    c0, c1, c2 = _pinned(cluster)
    c0.create_table("acct", {"id": "int64", "bal": "int64"}, primary_key="id")
    c0.insert("acct", {"id": 1, "bal": 10})
    t1 = c0.begin()
    t2 = c1.begin()
    th = None
    try:
        t1.get("acct", 1, for_update=True)
        th, call = _in_thread(lambda: t2.get("acct", 1, for_update=True))

        def t2_waits() -> api.StatusResponse | None:
            st = c2.status()
            ok = any(w.transaction_id == t2.id and t1.id in w.waits_for for w in st.waits)
            return st if ok else None

        st = wait_for(t2_waits, 10, interval_s=0.1, message="a wait record of t2 naming t1")
        wait = next(w for w in st.waits if w.transaction_id == t2.id)
        assert wait.node_id == t2.node_id and wait.mode == "X" and wait.resource.startswith("r/")
        mine = [(li.resource, li.mode, li.node_id, li.granted) for li in st.locks
                if li.transaction_id == t1.id]
        theirs = [(li.resource, li.mode, li.node_id, li.granted) for li in st.locks
                  if li.transaction_id == t2.id]
        assert (wait.resource, "X", t1.node_id, True) in mine, mine
        assert (wait.resource, "X", t2.node_id, False) in theirs, theirs
        assert all(li.resource.startswith(("t/", "p/", "r/")) for li in st.locks)
        txns = {ti.transaction_id: ti for ti in st.transactions}
        assert t1.id in txns and t2.id in txns, list(txns)
        assert txns[t1.id].node_id == t1.node_id == cluster[0].node_id
        assert txns[t2.id].node_id == t2.node_id == cluster[1].node_id
        assert txns[t1.id].locks_held >= 1 and not txns[t1.id].read_only
        t1.commit()
        _join(th, call, 15, "t2's lock request")
        assert call.error is None, call.describe()
        t2.commit()
    finally:
        _end(t1)
        _end(t2)

    def all_gone() -> bool:
        st = c0.status()
        ids = {t1.id, t2.id}
        return not ({li.transaction_id for li in st.locks} & ids
                    or {w.transaction_id for w in st.waits} & ids
                    or {ti.transaction_id for ti in st.transactions} & ids)

    wait_for(all_gone, 10, interval_s=0.1, message="the ended transactions to leave the status")
    _close([c0, c1, c2])
