"""Storage errors: one root, with subclasses that say what the caller should do.

Foreign errors (``lmdb.Error``) are translated in ``lmdb_env.py`` and raised as these, with the
original attached as ``__cause__``. Mapping to gRPC status codes happens only in ``nodes.status``.
"""

from __future__ import annotations


class StorageError(Exception):
    """Root of every storage error; unexpected ones mean a bug or a damaged volume."""


class InvalidInput(StorageError):
    """The request is malformed (type, size, name, key shape): fix it; retrying will not help."""


class NotFound(StorageError):
    """A table or row that the request needs does not exist."""


class AlreadyExists(StorageError):
    """A table or row that the request creates exists already."""


class ConditionFailed(StorageError):
    """A condition or expected version did not hold; nothing was written. Re-read, then decide."""


class MapFull(StorageError):
    """The volume's map (or disk) is full; nothing was written. Free space or grow the map."""


class ReadersFull(StorageError):
    """Every slot of the volume's reader table (shared by all its processes) is taken; nothing
    was done. Retry when other transactions or scans have ended."""


class LogTruncated(StorageError):
    """The commit-log position asked for is gone (the log is kept in bounds): start again from a
    fresh copy, or from ``oldest``, the oldest position still held."""

    def __init__(self, message: str, *, oldest: int) -> None:
        super().__init__(message)
        self.oldest = oldest


class Corrupt(StorageError):
    """Stored bytes could not be decoded: the volume is damaged or from another version."""


class Fenced(StorageError):
    """The writing session is fenced (it ended, and others may hold its locks); nothing was
    written. Abort the transaction; the node starts a new session."""
