"""The systems a bench run measures, one adapter module per system, behind one interface.

Each module (``cluster`` for Shardless, ``echo``, ``etcd``, ``lmdb``, ``postgres``) provides:

- ``load(params, settings)``: in the parent, before the first round: create the tables (or key
  ranges) and load ``--records`` records, and the bank accounts when a workload needs them,
  with batched writes;
- ``bank_total(params)``: the sum of all account balances, read in one snapshot (None if the
  system keeps no data, as the echo server);
- ``open_target(params, settings)``: in each client process, a :class:`Target` whose ``session(i)``
  gives client thread ``i`` its own connection, with one method per operation kind of
  ``nodes.bench.workloads`` (see :class:`Session`);
- ``unload(params)``: remove what ``load`` made, where the system outlives the run.

An adapter is imported only when its system is measured, so its client library (psycopg, the
etcd client...) is loaded only then. A :class:`Spec` names a system and carries the parameters
(addresses, paths) as plain data, so that it travels to spawned client processes.

Conflicts an operation may meet under concurrency (ABORTED, a failed etcd compare, a
PostgreSQL deadlock) raise :class:`Retry`: the client runs the operation again at once and
counts a retry, not an error.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

KV_TABLE = "bench_kv"
ACCOUNTS_TABLE = "bench_accounts"
INITIAL_BALANCE = 1000
LOAD_BATCH = 500
"""Records per call while loading."""

MODULES = {"shardless": "cluster", "echo": "echo", "etcd": "etcd", "lmdb": "lmdb",
           "postgres": "postgres"}


class Retry(Exception):
    """A conflict with a concurrent operation; run the operation again (counted as a retry)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Session(Protocol):
    """One client thread's connection to a system; each method returns the rows it moved."""

    def read(self, key: int) -> int: ...
    def update(self, key: int) -> int: ...
    def insert(self, key: int) -> int: ...
    def short_scan(self, key: int, n: int) -> int: ...
    def scan(self, key: int, n: int) -> int: ...
    def read_modify_write(self, key: int) -> int: ...
    def rmw(self, key: int) -> int: ...
    def batch_get(self, keys: list[int]) -> int: ...
    def multi_write(self, keys: list[int]) -> int: ...
    def bank(self, a: int, b: int, amount: int) -> int: ...
    def close(self) -> None: ...


class Target(Protocol):
    """A system as one client process sees it."""

    def session(self, index: int, rng: random.Random) -> Session:
        """Open (or reuse) client thread ``index``'s connection."""
        ...

    def close(self) -> None:
        """Close every connection."""
        ...


@dataclass(frozen=True)
class Spec:
    """A system to measure: its kind (a key of :data:`MODULES`) and its parameters."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The name used in reports (the kind)."""
        return self.kind


def module(spec: Spec) -> ModuleType:
    """Import the adapter module of ``spec``'s system."""
    return importlib.import_module(f"nodes.bench.targets.{MODULES[spec.kind]}")


def error_name(exc: BaseException) -> str:
    """Name a failure for the error counts: its gRPC status code, else its exception type."""
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            value = code()
            return str(getattr(value, "name", value))
        except Exception:
            pass
    return type(exc).__name__


def error_message(exc: BaseException) -> str:
    """One line about a failure: a gRPC error's details, else the exception's text."""
    details = getattr(exc, "details", None)
    if callable(details):
        try:
            return f"{error_name(exc)}: {details()}"
        except Exception:
            pass
    return f"{type(exc).__name__}: {exc}"


class Composite:
    """Operations built from others, the same in every system (mixed into each session)."""

    def short_scan(self, key: int, n: int) -> int:
        """YCSB-E's scan: the same as a scan of ``n`` rows."""
        return self.scan(key, n)  # type: ignore[attr-defined,no-any-return]

    def read_modify_write(self, key: int) -> int:
        """YCSB-F: read the record, then write it back whole (two calls, not atomic)."""
        self.read(key)  # type: ignore[attr-defined]
        return self.update(key)  # type: ignore[attr-defined,no-any-return]


def key_bytes(prefix: bytes, key: int) -> bytes:
    """An order-preserving byte key for the key-value baselines: prefix + 8 bytes big-endian."""
    return prefix + key.to_bytes(8, "big")
