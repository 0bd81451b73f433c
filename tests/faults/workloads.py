"""Workloads of the fault-injection suite: clients of the helper that record what they asked and
what came back, for the checkers.

Owns: :class:`Workload` and its three kinds, :class:`Registers`, :class:`Bank` and
:class:`ListAppend`: the table they use, one client loop (``step``), the final reads after every
fault has healed, the check, and which of their ops are writes that took effect (``is_write``:
the runner requires some after the faults have healed, so a write path that never comes back
fails the run even if reads go on). Does not own the cluster or the faults (:mod:`.nemesis`),
nor the checkers themselves.

How outcomes are recorded (the soundness of every check rests on this):

* ``ok``: the call returned; its effect happened between call and return;
* ``fail``: it certainly had no effect: a check in the transaction said no (a transfer refused
  for lack of funds), or ``shardless.certainly_not_applied`` says that no attempt the helper made
  can have changed anything (every one was refused or aborted by a node, or answered
  UNAVAILABLE with reason NOT_APPLIED); reads that fail are ``fail`` too (no effect);
* ``info``: anything else (a transport failure or a deadline in some attempt's commit): the
  write may or may not have been applied, at any time after its call.

A cas whose condition fails (FAILED_PRECONDITION) is an ``ok`` op that returned False.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import grpc

from shardless import Client, Condition, Mutation, Transaction, certainly_not_applied
from tests.faults.bank import BankResult, check_bank
from tests.faults.history import FAIL, INFO, OK, History, Op, Status
from tests.faults.linearizability import LinearizabilityResult, check_registers
from tests.faults.list_append import ListAppendResult, check_list_append


def _outcome(e: grpc.RpcError) -> Status:
    return FAIL if certainly_not_applied(e) else INFO


class Workload:
    """One kind of client load and its check; see the module docstring."""

    name: ClassVar[str] = ""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.history = History()
        self.final: Any = None

    def setup(self, db: Client) -> None:
        """Create the tables and the initial rows."""
        raise NotImplementedError

    def step(self, process: int, db: Client, rng: random.Random) -> None:
        """Run one operation and record it in :attr:`history`."""
        raise NotImplementedError

    def read_final(self, db: Client) -> None:
        """Read the final state once every fault has healed (recorded as ok reads too)."""
        raise NotImplementedError

    def check(self) -> tuple[bool, str]:
        """Return (no violation found, a summary)."""
        raise NotImplementedError

    def is_write(self, op: Op) -> bool:
        """Whether ``op`` certainly changed the database's state (an ``ok`` write that took
        effect), which is what shows that the write path works after the faults."""
        raise NotImplementedError

    def run_client(self, process: int, db: Client, stop: threading.Event,
                   errors: list[str]) -> None:
        """Call :meth:`step` until ``stop``; unexpected exceptions go to ``errors``."""
        rng = random.Random(f"{self.seed}-{process}")
        while not stop.is_set():
            try:
                self.step(process, db, rng)
            except Exception as e:  # a bug in the workload, not a database outcome
                errors.append(f"{self.name} client {process}: {e!r}")
                return

    def counts(self) -> dict[str, int]:
        out = {OK: 0, FAIL: 0, INFO: 0}
        for op in self.history.ops():
            out[op.status] += 1
        return out


class Registers(Workload):
    """Single-key registers: reads, writes and compare-and-set, checked for linearizability.

    Table ``reg(k, v)``, keys 0..``KEYS``-1 starting at 0; written values are unique
    (``process * 10**9 + seq``). A cas is a one-shot transaction: "v equals expected" then set v.
    """

    name = "registers"
    KEYS = 4

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self._seq = [0] * 64
        self._seen: dict[tuple[int, int], int] = {}

    def setup(self, db: Client) -> None:
        db.create_table("reg", {"k": "int64", "v": "int64"}, primary_key="k")
        db.insert("reg", [{"k": k, "v": 0} for k in range(self.KEYS)])

    def step(self, process: int, db: Client, rng: random.Random) -> None:
        key = rng.randrange(self.KEYS)
        roll = rng.random()
        h = self.history
        if roll < 0.5:
            handle = h.invoke(process, "read", key)
            try:
                row = db.get("reg", key)
            except grpc.RpcError:
                h.complete(handle, FAIL)
                return
            value = None if row is None else row["v"]
            if value is not None:
                self._seen[(process, key)] = value
            h.complete(handle, OK, value)
            return
        self._seq[process] += 1
        new = process * 10**9 + self._seq[process]
        if roll < 0.8:
            handle = h.invoke(process, "write", key, new)
            try:
                db.upsert("reg", {"k": key, "v": new})
            except grpc.RpcError as e:
                h.complete(handle, _outcome(e))
                return
            h.complete(handle, OK)
            return
        expected = self._seen.get((process, key), 0)
        handle = h.invoke(process, "cas", key, (expected, new))
        try:
            db.execute(conditions=[Condition.column_equals("reg", key, "v", expected)],
                       writes=[Mutation.update("reg", {"k": key, "v": new})])
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                h.complete(handle, OK, False)
            else:
                h.complete(handle, _outcome(e))
            return
        h.complete(handle, OK, True)

    def read_final(self, db: Client) -> None:
        for key in range(self.KEYS):
            handle = self.history.invoke(-1, "read", key)
            row = db.get("reg", key)
            self.history.complete(handle, OK, None if row is None else row["v"])

    def check(self) -> tuple[bool, str]:
        result: LinearizabilityResult = check_registers(
            self.history.ops(), initial=dict.fromkeys(range(self.KEYS), 0), max_seconds=60)
        summary = f"linearizability: {result.verdict}"
        if not result.ok:
            summary += f"\n{result.explanation}"
        return result.ok, summary

    def is_write(self, op: Op) -> bool:
        """An ok write, or an ok cas that swapped."""
        return op.status == OK and (op.kind == "write" or (op.kind == "cas" and op.output is True))


class Bank(Workload):
    """Transfers between accounts in interactive transactions; the total is invariant.

    Table ``acct(id, bal)``, ``ACCOUNTS`` accounts of ``START`` each. A transfer reads both
    accounts FOR UPDATE and moves 1..5 if the source has enough (else it changes nothing and is
    recorded ``fail``). Reads are snapshot scans of the whole table.
    """

    name = "bank"
    ACCOUNTS = 8
    START = 100

    def setup(self, db: Client) -> None:
        db.create_table("acct", {"id": "int64", "bal": "int64"}, primary_key="id")
        db.insert("acct", [{"id": i, "bal": self.START} for i in range(self.ACCOUNTS)])

    def step(self, process: int, db: Client, rng: random.Random) -> None:
        h = self.history
        if rng.random() < 0.2:
            handle = h.invoke(process, "read")
            try:
                snapshot = {r["id"]: r["bal"] for r in db.scan("acct")}
            except grpc.RpcError:
                h.complete(handle, FAIL)
                return
            h.complete(handle, OK, snapshot)
            return
        src, dst = rng.sample(range(self.ACCOUNTS), 2)
        amount = rng.randint(1, 5)

        def transfer(t: Transaction) -> bool:
            a = t.get("acct", src, for_update=True)
            b = t.get("acct", dst, for_update=True)
            if a["bal"] < amount:
                return False
            t.update("acct", [{"id": src, "bal": a["bal"] - amount},
                              {"id": dst, "bal": b["bal"] + amount}])
            return True

        handle = h.invoke(process, "transfer", None, (src, dst, amount))
        try:
            moved = db.run_transaction(transfer)
        except grpc.RpcError as e:
            h.complete(handle, _outcome(e))
            return
        h.complete(handle, OK if moved else FAIL)

    def read_final(self, db: Client) -> None:
        handle = self.history.invoke(-1, "read")
        self.final = {r["id"]: r["bal"] for r in db.scan("acct")}
        self.history.complete(handle, OK, dict(self.final))

    def check(self) -> tuple[bool, str]:
        result: BankResult = check_bank(dict.fromkeys(range(self.ACCOUNTS), self.START),
                                        self.history.ops(), final=self.final)
        return result.ok, f"bank: {result.summary()}"

    def is_write(self, op: Op) -> bool:
        """A transfer that committed (one refused for lack of funds is ``fail``)."""
        return op.status == OK and op.kind == "transfer"


class ListAppend(Workload):
    """Transactions of 1-``MAX_MOPS`` micro-ops over ``KEYS`` active lists: append a unique
    value, or read. About one in six reads two keys or more and appends to two or more, which
    is where anomalies across keys (write skew, read skew, fractured reads) would show.

    Table ``lists(k, v)`` where ``v`` is the list as comma-separated integers (absent: no row).
    An append reads the row FOR UPDATE and writes it back longer; a read takes the row's shared
    lock, so a transaction's reads are serializable. Keys rotate as in Jepsen: once a key has
    been given ``MAX_APPENDS`` appends, a fresh key takes its place among the active ones, so
    lists stay short however long the run.
    """

    name = "list-append"
    KEYS = 12
    MAX_MOPS = 5
    MAX_APPENDS = 32

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self._seq = [0] * 64
        self._keys_lock = threading.Lock()
        self._active = list(range(self.KEYS))
        self._next_key = self.KEYS
        self._appends: dict[int, int] = {}

    def _key(self, rng: random.Random, append: bool) -> int:
        """An active key; an append counts towards the key's retirement."""
        with self._keys_lock:
            slot = rng.randrange(self.KEYS)
            key = self._active[slot]
            if append:
                self._appends[key] = self._appends.get(key, 0) + 1
                if self._appends[key] >= self.MAX_APPENDS:
                    self._active[slot] = self._next_key
                    self._next_key += 1
            return key

    def setup(self, db: Client) -> None:
        db.create_table("lists", {"k": "int64", "v": "string"}, primary_key="k")

    @staticmethod
    def _list(row: Any) -> list[int] | None:
        if row is None:
            return None
        return [int(x) for x in row["v"].split(",") if x]

    def plan(self, process: int, rng: random.Random) -> list[tuple[str, int, Any]]:
        """The micro-ops of ``process``'s next transaction (unique values, rotating keys)."""
        mops: list[tuple[str, int, Any]] = []
        for _ in range(rng.randint(1, self.MAX_MOPS)):
            append = rng.random() < 0.5
            key = self._key(rng, append)
            if append:
                self._seq[process] += 1
                mops.append(("append", key, process * 10**9 + self._seq[process]))
            else:
                mops.append(("r", key, None))
        return mops

    def step(self, process: int, db: Client, rng: random.Random) -> None:
        mops = self.plan(process, rng)

        def txn(t: Transaction) -> list[tuple[str, int, Any]]:
            out: list[tuple[str, int, Any]] = []
            for f, key, value in mops:
                if f == "r":
                    out.append(("r", key, self._list(t.get("lists", key))))
                else:
                    cur = self._list(t.get("lists", key, for_update=True)) or []
                    t.upsert("lists", {"k": key, "v": ",".join(map(str, [*cur, value]))})
                    out.append((f, key, value))
            return out

        handle = self.history.invoke(process, "txn", None, mops)
        try:
            done = db.run_transaction(txn)
        except grpc.RpcError as e:
            self.history.complete(handle, _outcome(e))
            return
        self.history.complete(handle, OK, done)

    def read_final(self, db: Client) -> None:
        keys = range(self._next_key)  # every key ever active
        mops = [("r", k, None) for k in keys]
        handle = self.history.invoke(-1, "txn", None, mops)
        rows = {r["k"]: self._list(r) for r in db.scan("lists")}
        self.history.complete(handle, OK, [("r", k, rows.get(k)) for k in keys])

    def check(self) -> tuple[bool, str]:
        ops = self.history.ops()
        result: ListAppendResult = check_list_append(ops)
        multi = sum(1 for op in ops if op.kind == "txn" and op.status == OK
                    and len({k for f, k, _ in op.value if f == "r"}) >= 2
                    and len({k for f, k, _ in op.value if f == "append"}) >= 2)
        return result.ok, (f"list-append ({multi} ok txns read 2+ keys and appended to 2+): "
                           f"{result.summary()}")

    def is_write(self, op: Op) -> bool:
        """A committed txn with at least one append."""
        return op.status == OK and op.kind == "txn" and any(f == "append" for f, _, _ in op.value)


WORKLOADS: dict[str, Callable[[int], Workload]] = {
    w.name: w for w in (Registers, Bank, ListAppend)
}

