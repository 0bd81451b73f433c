"""``MemoryEngine``: a ``kv.Engine`` in one process's memory, for unit tests.

Owns: an ordered map of bytes with the contract of ``kv.py`` (one writer at a time, snapshots,
all-or-nothing commits), and an optional size bound so that tests can fill it. Does not own
durability: nothing survives the process, so it is never a volume that nodes share.

Committed state is a pair (sorted key list, dict) that is never changed in place: a snapshot
keeps the pair that was current when it was taken, and a commit builds a new pair from the old
one and the transaction's changes, then swaps it in. Writers take one lock, which gives the
total order; a commit copies the whole map, which is fine at unit-test sizes.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from typing import Any

from storage.errors import MapFull, StorageError

_DELETED = object()


class _State:
    __slots__ = ("data", "keys", "size")

    def __init__(self, keys: list[bytes], data: dict[bytes, bytes]) -> None:
        self.keys = keys
        self.data = data
        self.size = sum(len(k) + len(v) for k, v in data.items())


class MemoryEngine:
    """An in-memory ordered key-value engine (see the module docstring)."""

    max_key_bytes = 511

    def __init__(self, *, max_bytes: int | None = None) -> None:
        """``max_bytes`` bounds the sum of key and value lengths; a commit past it raises
        ``MapFull``."""
        self.max_bytes = max_bytes
        self._state = _State([], {})
        self._commits = 0
        self._writer = threading.Lock()
        self._closed = False

    def read(self) -> _ReadCtx:
        """A snapshot of what is committed now (a context manager)."""
        return _ReadCtx(self)

    def write(self) -> _WriteCtx:
        """A write transaction (a context manager); see ``kv.Engine.write``."""
        return _WriteCtx(self)

    def make_room(self) -> bool:
        """Nothing to adopt: room comes only from a larger ``max_bytes``."""
        return False

    def version(self) -> int:
        """How many write transactions have committed."""
        return self._commits

    def housekeeping(self) -> dict[str, int]:
        """Nothing to do."""
        return {}

    def info(self) -> dict[str, int]:
        """Keys and bytes held."""
        state = self._state
        return {"keys": len(state.keys), "bytes": state.size}

    def close(self) -> None:
        """Refuse transactions from now on."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the engine is closed")


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or not 1 <= len(key) <= MemoryEngine.max_key_bytes:
        raise StorageError(f"a key must be 1..{MemoryEngine.max_key_bytes} bytes")


class _Snapshot:
    """``kv.Snapshot`` over one committed state."""

    def __init__(self, state: _State) -> None:
        self._state = state

    def get(self, key: bytes) -> bytes | None:
        _check_key(key)
        return self._state.data.get(key)

    def scan(self, lo: bytes, hi: bytes | None = None, *, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        keys = self._state.keys
        i = bisect.bisect_left(keys, lo)
        j = len(keys) if hi is None else bisect.bisect_left(keys, hi)
        chosen = keys[i:j]
        if reverse:
            chosen.reverse()
        if limit is not None:
            chosen = chosen[:max(limit, 0)]
        data = self._state.data
        return ((k, data[k]) for k in chosen)


class _Writable(_Snapshot):
    """``kv.WriteTxn``: changes kept aside, read through, applied at commit."""

    def __init__(self, state: _State) -> None:
        super().__init__(state)
        self.changes: dict[bytes, Any] = {}

    def get(self, key: bytes) -> bytes | None:
        _check_key(key)
        got = self.changes.get(key, None)
        if got is _DELETED:
            return None
        return got if got is not None else self._state.data.get(key)

    def scan(self, lo: bytes, hi: bytes | None = None, *, reverse: bool = False,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        merged = dict(super().scan(lo, hi))
        for k, v in self.changes.items():
            if k >= lo and (hi is None or k < hi):
                if v is _DELETED:
                    merged.pop(k, None)
                else:
                    merged[k] = v
        chosen = sorted(merged, reverse=reverse)
        if limit is not None:
            chosen = chosen[:max(limit, 0)]
        return ((k, merged[k]) for k in chosen)

    def put(self, key: bytes, value: bytes) -> None:
        _check_key(key)
        if not isinstance(value, bytes):
            raise StorageError("a value must be bytes")
        self.changes[key] = value

    def delete(self, key: bytes) -> bool:
        existed = self.get(key) is not None
        self.changes[key] = _DELETED
        return existed

    def committed(self, max_bytes: int | None) -> _State:
        """The state after this transaction (the old one is left as it was).

        Raises:
            MapFull: it would hold more than ``max_bytes``.
        """
        data = dict(self._state.data)
        for k, v in self.changes.items():
            if v is _DELETED:
                data.pop(k, None)
            else:
                data[k] = v
        state = _State(sorted(data), data)
        if max_bytes is not None and state.size > max_bytes:
            raise MapFull(f"the memory engine is full ({max_bytes} bytes)")
        return state


class _ReadCtx:
    def __init__(self, engine: MemoryEngine) -> None:
        self._engine = engine

    def __enter__(self) -> _Snapshot:
        self._engine._check_open()
        return _Snapshot(self._engine._state)

    def __exit__(self, *exc: Any) -> None:
        return None


class _WriteCtx:
    def __init__(self, engine: MemoryEngine) -> None:
        self._engine = engine

    def __enter__(self) -> _Writable:
        self._engine._check_open()
        self._engine._writer.acquire()
        self._txn = _Writable(self._engine._state)
        return self._txn

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        engine = self._engine
        try:
            if exc is None:
                engine._state = self._txn.committed(engine.max_bytes)
                engine._commits += 1
        finally:
            engine._writer.release()
