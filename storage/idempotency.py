"""Idempotency records: a client's key for a write, stored with the write's result.

The record is written in the same write transaction as the write it describes, so a retry
with the same key (after a lost reply, on any node) finds it and gets the first result back
without applying anything again. The result is an opaque msgpack-able value chosen by the caller
(``nodes`` stores the commit position, rows affected and read results).

Retention: records are kept for ``RETENTION_S`` (24 h) and may be removed after that by
:func:`purge`; a retry after that long is treated as a new write.
"""

from __future__ import annotations

from typing import Any

import msgpack

from storage import keys
from storage.errors import Corrupt, InvalidInput
from storage.kv import Snapshot, WriteTxn

RETENTION_S = 24 * 3600.0
MAX_KEY_BYTES = 256


def _key(key: str) -> bytes:
    raw = key.encode("utf-8", "surrogatepass")
    if not raw or len(raw) > MAX_KEY_BYTES:
        raise InvalidInput(f"idempotency key must be 1..{MAX_KEY_BYTES} bytes of UTF-8")
    return keys.IDEMPOTENCY + raw


def lookup(txn: Snapshot, key: str) -> Any | None:
    """The stored result for ``key``, or None."""
    raw = txn.get(_key(key))
    if raw is None:
        return None
    try:
        return msgpack.unpackb(raw, raw=False)["result"]
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
        raise Corrupt(f"unreadable idempotency record for {key!r}") from e


def record(txn: WriteTxn, key: str, result: Any, *, ts: float) -> None:
    """Store ``result`` for ``key`` in write transaction ``txn``."""
    txn.put(_key(key), msgpack.packb({"ts": ts, "result": result}, use_bin_type=True))


def check_key(key: str) -> None:
    """Refuse a malformed key before any work is done.

    Raises:
        InvalidInput: empty or longer than ``MAX_KEY_BYTES``.
    """
    _key(key)


def purge(txn: WriteTxn, *, now: float, retention_s: float = RETENTION_S,
          limit: int = 10_000) -> int:
    """Delete up to ``limit`` records older than ``retention_s``; return how many went."""
    doomed = []
    for k, v in txn.scan(*keys.kind_range(keys.IDEMPOTENCY)):
        try:
            ts = float(msgpack.unpackb(v, raw=False)["ts"])
        except (ValueError, KeyError, TypeError, msgpack.UnpackException):
            ts = 0.0
        if now - ts > retention_s:
            doomed.append(k)
            if len(doomed) >= limit:
                break
    for k in doomed:
        txn.delete(k)
    return len(doomed)
