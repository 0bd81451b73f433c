"""The PostgreSQL baseline, through psycopg 3 (one connection per client thread).

Tables ``bench_kv (id bigint primary key, v bytea)`` and ``bench_accounts (id bigint primary
key, balance bigint)``. Statements are the obvious ones a PostgreSQL user writes, sent with
server-side prepared statements (psycopg prepares a statement after its fifth use):

- get: ``SELECT v FROM bench_kv WHERE id = %s``
- batch get: ``... WHERE id = ANY(%s)``; scan: ``... WHERE id >= %s ORDER BY id LIMIT %s``
- upsert: ``INSERT ... ON CONFLICT (id) DO UPDATE``; multi-row upsert: the same, one statement
  over ``unnest`` of the arrays; insert: plain ``INSERT``
- rmw: ``BEGIN``, ``SELECT ... FOR UPDATE``, ``UPDATE``, ``COMMIT`` (four round trips, as
  Shardless's four calls)
- bank: ``BEGIN``, both rows ``SELECT ... FOR UPDATE`` in one statement, both updated in one
  statement, ``COMMIT``

Autocommit is on, so every single statement is its own durable transaction (the server runs
with ``fsync`` and ``synchronous_commit`` on). A deadlock or serialization failure raises
``Retry``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors

from nodes.bench.targets import (
    ACCOUNTS_TABLE,
    INITIAL_BALANCE,
    KV_TABLE,
    Composite,
    Retry,
)

if TYPE_CHECKING:
    from nodes.bench.options import Settings

GET = f"SELECT v FROM {KV_TABLE} WHERE id = %s"
BATCH_GET = f"SELECT id, v FROM {KV_TABLE} WHERE id = ANY(%s)"
SCAN = f"SELECT id, v FROM {KV_TABLE} WHERE id >= %s ORDER BY id LIMIT %s"
UPSERT = (f"INSERT INTO {KV_TABLE} (id, v) VALUES (%s, %s) "
          "ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v")
MULTI_UPSERT = (f"INSERT INTO {KV_TABLE} (id, v) SELECT * FROM unnest(%s::bigint[], "
                "%s::bytea[]) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v")
INSERT = f"INSERT INTO {KV_TABLE} (id, v) VALUES (%s, %s)"
GET_FOR_UPDATE = f"SELECT v FROM {KV_TABLE} WHERE id = %s FOR UPDATE"
UPDATE = f"UPDATE {KV_TABLE} SET v = %s WHERE id = %s"
ACCOUNTS_FOR_UPDATE = (f"SELECT id, balance FROM {ACCOUNTS_TABLE} WHERE id = ANY(%s) "
                       "ORDER BY id FOR UPDATE")
TRANSFER = (f"UPDATE {ACCOUNTS_TABLE} SET balance = CASE WHEN id = %s THEN %s ELSE %s END "
            "WHERE id = ANY(%s)")
_RETRY = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure,
          pg_errors.LockNotAvailable)


def dsn(params: Mapping[str, Any]) -> str:
    """The connection string of the baseline's server."""
    return (f"host={params['host']} port={params['port']} user={params['user']} "
            f"dbname={params['dbname']} connect_timeout=10")


class PostgresSession(Composite):
    """One client thread's connection."""

    def __init__(self, params: Mapping[str, Any], value: bytes, timeout_s: float) -> None:
        self.conn = psycopg.connect(dsn(params), autocommit=True,
                                    options=f"-c statement_timeout={int(timeout_s * 1000)}")
        self.cur = self.conn.cursor()
        self.value = value

    def read(self, key: int) -> int:
        """One SELECT."""
        self.cur.execute(GET, (key,))
        return len(self.cur.fetchall())

    def update(self, key: int) -> int:
        """One INSERT ... ON CONFLICT DO UPDATE."""
        self.cur.execute(UPSERT, (key, self.value))
        return 1

    def insert(self, key: int) -> int:
        """One INSERT."""
        self.cur.execute(INSERT, (key, self.value))
        return 1

    def scan(self, key: int, n: int) -> int:
        """One SELECT ... ORDER BY id LIMIT n."""
        self.cur.execute(SCAN, (key, n))
        return len(self.cur.fetchall())

    def batch_get(self, keys: list[int]) -> int:
        """One SELECT ... WHERE id = ANY(keys)."""
        self.cur.execute(BATCH_GET, (keys,))
        return len(self.cur.fetchall())

    def multi_write(self, keys: list[int]) -> int:
        """One multi-row INSERT ... ON CONFLICT DO UPDATE."""
        self.cur.execute(MULTI_UPSERT, (keys, [self.value] * len(keys)))
        return len(keys)

    def _transaction(self, body: Any) -> int:
        try:
            self.cur.execute("BEGIN")
            rows = int(body())
            self.cur.execute("COMMIT")
            return rows
        except _RETRY as e:
            self._rollback()
            raise Retry(type(e).__name__) from None
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        try:
            self.cur.execute("ROLLBACK")
        except psycopg.Error:
            pass

    def rmw(self, key: int) -> int:
        """BEGIN, SELECT ... FOR UPDATE, UPDATE, COMMIT."""
        def body() -> int:
            self.cur.execute(GET_FOR_UPDATE, (key,))
            self.cur.fetchall()
            self.cur.execute(UPDATE, (self.value, key))
            return 1
        return self._transaction(body)

    def bank(self, a: int, b: int, amount: int) -> int:
        """BEGIN, both accounts SELECT ... FOR UPDATE, one UPDATE of both, COMMIT."""
        def body() -> int:
            self.cur.execute(ACCOUNTS_FOR_UPDATE, ([a, b],))
            balances = dict(self.cur.fetchall())
            self.cur.execute(TRANSFER, (a, balances[a] - amount, balances[b] + amount, [a, b]))
            return 2
        return self._transaction(body)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


class PostgresTarget:
    """Per client process: one connection per thread."""

    def __init__(self, params: Mapping[str, Any], settings: Settings) -> None:
        self.params = params
        self.settings = settings
        self._sessions: dict[int, PostgresSession] = {}

    def session(self, index: int, rng: random.Random) -> PostgresSession:
        """Client thread ``index``'s connection."""
        if index not in self._sessions:
            self._sessions[index] = PostgresSession(
                self.params, rng.randbytes(self.settings.value_size), self.settings.timeout_s)
        return self._sessions[index]

    def close(self) -> None:
        """Close every connection."""
        for s in self._sessions.values():
            s.close()
        self._sessions.clear()


def open_target(params: Mapping[str, Any], settings: Settings) -> PostgresTarget:
    """The PostgreSQL target of one client process."""
    return PostgresTarget(params, settings)


def load(params: Mapping[str, Any], settings: Settings) -> None:
    """Create the tables afresh and load them with multi-row inserts of 1000 rows."""
    value = random.Random(settings.seed).randbytes(settings.value_size)
    with psycopg.connect(dsn(params), autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {KV_TABLE}, {ACCOUNTS_TABLE}")
        cur.execute(f"CREATE TABLE {KV_TABLE} (id bigint PRIMARY KEY, v bytea NOT NULL)")
        cur.execute(f"CREATE TABLE {ACCOUNTS_TABLE} (id bigint PRIMARY KEY, "
                    "balance bigint NOT NULL)")
        for i in range(0, settings.records, 1000):
            ids = list(range(i, min(i + 1000, settings.records)))
            cur.execute(f"INSERT INTO {KV_TABLE} (id, v) SELECT * FROM "
                        "unnest(%s::bigint[], %s::bytea[])", (ids, [value] * len(ids)))
            if settings.uses_accounts:
                cur.execute(f"INSERT INTO {ACCOUNTS_TABLE} (id, balance) SELECT i, %s "
                            "FROM unnest(%s::bigint[]) AS i", (INITIAL_BALANCE, ids))
        cur.execute(f"VACUUM ANALYZE {KV_TABLE}")
        cur.execute(f"VACUUM ANALYZE {ACCOUNTS_TABLE}")


def bank_total(params: Mapping[str, Any]) -> int:
    """The sum of the balances, by one statement (one snapshot)."""
    with psycopg.connect(dsn(params), autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT coalesce(sum(balance), 0) FROM {ACCOUNTS_TABLE}")
        row = cur.fetchone()
        return int(row[0]) if row else 0


def unload(params: Mapping[str, Any]) -> None:
    """Nothing to remove: the baseline's server is the run's own and goes with it."""
