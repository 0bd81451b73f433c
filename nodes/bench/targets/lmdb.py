"""The LMDB baseline: LMDB in-process in each client process, through the storage engine seam
(``storage.Engine``, the LMDB engine of a volume opened with ``storage.open_volume``).

One environment in the run's work directory, opened once per client process (LMDB's rule) with
sync on: every write transaction is a durable commit, as a Shardless commit is. Records are
keys ``k<8 bytes big-endian id>``, accounts ``a<id>`` holding the balance in ASCII. Reads are
read transactions (a snapshot each); a scan is one ranged walk; rmw and bank are one write
transaction each (LMDB has one writer at a time, across all processes: no conflicts, no
retries). This is the storage engine alone: no network, no locks, no serving.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nodes.bench.targets import INITIAL_BALANCE, LOAD_BATCH, Composite, key_bytes
from storage import Engine, open_volume

if TYPE_CHECKING:
    from nodes.bench.options import Settings

KV = b"k"
KV_END = b"l"
ACCOUNTS = b"a"
ACCOUNTS_END = b"b"
MAP_SIZE = 4 << 30


class LmdbSession(Composite):
    """One client thread's use of its process's environment."""

    def __init__(self, env: Engine, value: bytes) -> None:
        self.env = env
        self.value = value

    def read(self, key: int) -> int:
        """A read transaction with one get."""
        with self.env.read() as t:
            return 0 if t.get(key_bytes(KV, key)) is None else 1

    def update(self, key: int) -> int:
        """A write transaction with one put."""
        with self.env.write() as t:
            t.put(key_bytes(KV, key), self.value)
        return 1

    insert = update

    def scan(self, key: int, n: int) -> int:
        """A read transaction walking up to ``n`` records."""
        with self.env.read() as t:
            return sum(1 for _ in t.scan(key_bytes(KV, key), KV_END, limit=n))

    def batch_get(self, keys: list[int]) -> int:
        """One read transaction with a get per key."""
        with self.env.read() as t:
            return sum(1 for k in keys if t.get(key_bytes(KV, k)) is not None)

    def multi_write(self, keys: list[int]) -> int:
        """One write transaction with a put per key."""
        with self.env.write() as t:
            for k in keys:
                t.put(key_bytes(KV, k), self.value)
        return len(keys)

    def rmw(self, key: int) -> int:
        """One write transaction: get, put."""
        k = key_bytes(KV, key)
        with self.env.write() as t:
            t.get(k)
            t.put(k, self.value)
        return 1

    def bank(self, a: int, b: int, amount: int) -> int:
        """One write transaction: read both balances, write both."""
        ka, kb = key_bytes(ACCOUNTS, a), key_bytes(ACCOUNTS, b)
        with self.env.write() as t:
            ra, rb = int(t.get(ka)), int(t.get(kb))
            t.put(ka, str(ra - amount).encode())
            t.put(kb, str(rb + amount).encode())
        return 2

    def close(self) -> None:
        """Nothing to close: the target owns the environment."""


class LmdbTarget:
    """Per client process: the one environment, shared by its threads."""

    def __init__(self, path: str, settings: Settings) -> None:
        self.env = _open(path)
        self.settings = settings
        self._sessions: dict[int, LmdbSession] = {}

    def session(self, index: int, rng: random.Random) -> LmdbSession:
        """Client thread ``index``'s session."""
        if index not in self._sessions:
            self._sessions[index] = LmdbSession(self.env,
                                                rng.randbytes(self.settings.value_size))
        return self._sessions[index]

    def close(self) -> None:
        """Close the environment."""
        self._sessions.clear()
        self.env.close()


def _open(path: str) -> Engine:
    return open_volume(path, map_size=MAP_SIZE).engine


def open_target(params: Mapping[str, Any], settings: Settings) -> LmdbTarget:
    """The LMDB target of one client process."""
    return LmdbTarget(params["path"], settings)


def load(params: Mapping[str, Any], settings: Settings) -> None:
    """Put the records (and accounts), in write transactions of a few hundred puts."""
    env = _open(params["path"])
    try:
        value = random.Random(settings.seed).randbytes(settings.value_size)
        items = [(key_bytes(KV, k), value) for k in range(settings.records)]
        if settings.uses_accounts:
            items += [(key_bytes(ACCOUNTS, k), str(INITIAL_BALANCE).encode())
                      for k in range(settings.records)]
        for i in range(0, len(items), LOAD_BATCH):
            with env.write() as t:
                for k, v in items[i:i + LOAD_BATCH]:
                    t.put(k, v)
    finally:
        env.close()


def bank_total(params: Mapping[str, Any]) -> int:
    """The sum of the balances, read in one read transaction."""
    env = _open(params["path"])
    try:
        with env.read() as t:
            return sum(int(v) for _, v in t.scan(ACCOUNTS, ACCOUNTS_END))
    finally:
        env.close()


def unload(params: Mapping[str, Any]) -> None:
    """Nothing to remove: the environment is in the run's work directory."""
