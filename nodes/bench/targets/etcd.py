"""The etcd baseline: etcd used as the key-value store, through ``lockmgr.etcd.EtcdClient``.

Records are keys ``bench/kv/<8 bytes big-endian id>`` (so key order is id order), accounts
``bench/acct/<id>`` holding the balance in ASCII. get = one range; batch get = one transaction
of gets (cut at etcd's 128-operation limit); scan = one range with a limit; upsert and insert =
put; multi-row upsert = one transaction of puts (cut at 128 operations); rmw = get, then a
transaction that puts only if the key's mod revision is unchanged; bank = both accounts read in
one transaction, then the same compare-and-put on both. A failed compare raises ``Retry``.
Each client thread has its own client (own gRPC channel).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from lockmgr import EtcdClient
from nodes.bench.targets import INITIAL_BALANCE, LOAD_BATCH, Composite, Retry, key_bytes

if TYPE_CHECKING:
    from nodes.bench.options import Settings

KV = b"bench/kv/"
ACCOUNTS = b"bench/acct/"
MAX_TXN_OPS = 128
"""etcd's default ``--max-txn-ops``."""


def _end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _chunks(items: list[Any], size: int = MAX_TXN_OPS) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class EtcdSession(Composite):
    """One client thread's etcd client."""

    def __init__(self, endpoint: str, value: bytes, timeout_s: float) -> None:
        self.c = EtcdClient(endpoint, timeout_s=timeout_s)
        self.value = value

    def read(self, key: int) -> int:
        """One range of one key."""
        return 0 if self.c.get(key_bytes(KV, key)) is None else 1

    def update(self, key: int) -> int:
        """One put."""
        self.c.put(key_bytes(KV, key), self.value)
        return 1

    insert = update

    def scan(self, key: int, n: int) -> int:
        """One range with a limit."""
        return len(self.c.range(key_bytes(KV, key), _end(KV), limit=n))

    def batch_get(self, keys: list[int]) -> int:
        """Transactions of gets, 128 at most each."""
        found = 0
        for chunk in _chunks(keys):
            _rev, results = self.c.txn([self.c.read_op(key_bytes(KV, k)) for k in chunk])
            found += sum(1 for r in results if r)
        return found

    def multi_write(self, keys: list[int]) -> int:
        """Transactions of puts, 128 at most each."""
        for chunk in _chunks(keys):
            self.c.txn([self.c.put_op(key_bytes(KV, k), self.value) for k in chunk])
        return len(keys)

    def rmw(self, key: int) -> int:
        """Get, then put if the key's mod revision is unchanged."""
        k = key_bytes(KV, key)
        kv = self.c.get(k)
        rev = kv.mod_revision if kv is not None else 0
        if not self.c.txn_if_unchanged({k: rev}, [self.c.put_op(k, self.value)]):
            raise Retry("compare failed")
        return 1

    def bank(self, a: int, b: int, amount: int) -> int:
        """Read both accounts in one transaction, then compare-and-put both."""
        ka, kb = key_bytes(ACCOUNTS, a), key_bytes(ACCOUNTS, b)
        _rev, (ra, rb) = self.c.txn([self.c.read_op(ka), self.c.read_op(kb)])
        assert ra and rb, f"accounts {a} and {b} must exist"
        new_a = int(ra[0].value) - amount
        new_b = int(rb[0].value) + amount
        ok = self.c.txn_if_unchanged(
            {ka: ra[0].mod_revision, kb: rb[0].mod_revision},
            [self.c.put_op(ka, str(new_a).encode()), self.c.put_op(kb, str(new_b).encode())])
        if not ok:
            raise Retry("compare failed")
        return 2

    def close(self) -> None:
        """Close the client's channel."""
        self.c.close()


class EtcdTarget:
    """Per client process: one etcd client per thread."""

    def __init__(self, endpoint: str, settings: Settings) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self._sessions: dict[int, EtcdSession] = {}

    def session(self, index: int, rng: random.Random) -> EtcdSession:
        """Client thread ``index``'s client."""
        if index not in self._sessions:
            s = EtcdSession(self.endpoint, rng.randbytes(self.settings.value_size),
                            self.settings.timeout_s)
            s.c.get(b"bench/ping")  # connect now, not in the first measured operation
            self._sessions[index] = s
        return self._sessions[index]

    def close(self) -> None:
        """Close every client."""
        for s in self._sessions.values():
            s.close()
        self._sessions.clear()


def open_target(params: Mapping[str, Any], settings: Settings) -> EtcdTarget:
    """The etcd target of one client process."""
    return EtcdTarget(params["endpoint"], settings)


def load(params: Mapping[str, Any], settings: Settings) -> None:
    """Put the records (and accounts) in transactions of 128 puts."""
    c = EtcdClient(params["endpoint"], timeout_s=30.0)
    try:
        value = random.Random(settings.seed).randbytes(settings.value_size)
        ops = [c.put_op(key_bytes(KV, k), value) for k in range(settings.records)]
        if settings.uses_accounts:
            ops += [c.put_op(key_bytes(ACCOUNTS, k), str(INITIAL_BALANCE).encode())
                    for k in range(settings.records)]
        for chunk in _chunks(ops, min(MAX_TXN_OPS, LOAD_BATCH)):
            c.txn(chunk)
    finally:
        c.close()


def bank_total(params: Mapping[str, Any]) -> int:
    """The sum of the balances, read by one range (one revision)."""
    c = EtcdClient(params["endpoint"], timeout_s=30.0)
    try:
        return sum(int(kv.value) for kv in c.range(ACCOUNTS, _end(ACCOUNTS)))
    finally:
        c.close()


def unload(params: Mapping[str, Any]) -> None:
    """Nothing to remove: the baseline's etcd is the run's own and goes with it."""
