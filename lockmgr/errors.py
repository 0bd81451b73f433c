"""Lock-manager errors: one root, with subclasses that say what the caller should do."""

from __future__ import annotations


class LockError(Exception):
    """Root of every lock-manager error."""


class EtcdUnavailable(LockError):
    """etcd did not answer (no quorum, no endpoint, timeout): retry later or on another node."""


class SessionExpired(LockError):
    """This process's session lease is gone: its locks are lost; start a new session, then retry."""


class Aborted(LockError):
    """The transaction was aborted (see ``reason``); roll it back and retry the whole of it."""

    reason = "aborted"


class Deadlock(Aborted):
    """The transaction was chosen as the victim of a deadlock; retry the whole transaction."""

    reason = "deadlock"


class LockTimeout(Aborted):
    """A lock was not granted within the lock-wait timeout; retry the whole transaction."""

    reason = "lock_timeout"
