"""Session: one etcd lease per process, kept alive by our own thread.

Owns: granting the lease, refreshing it every ``ttl_s / 6``, knowing until when this process may
still act as the lease's holder (``valid_until``), signalling loss (``done``), and revoking it on
close. Does not own: what is attached to the lease (member keys, locks) — callers attach those.

Deadline rule (self-fencing). A keepalive sent at local time ``t`` that etcd answers extends the
lease to at least ``t + ttl`` on etcd's clock as measured from our clock (the request left at
``t``, so etcd renewed it no earlier). We treat the session as valid only until
``t + ttl - margin``, with ``margin = ttl / 3`` by default, and the config requires
``refresh interval + 2 * etcd timeout <= ttl - margin`` (Patroni's ``loop_wait + 2*retry_timeout
<= ttl``), so a healthy process always renews before its own deadline. A process frozen past the
deadline sees it passed when it wakes, and stops acting on the session before etcd can have given
its locks to anyone else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from lockmgr.errors import EtcdUnavailable, SessionExpired

log = logging.getLogger(__name__)


RETRY_S = 0.1
"""How soon a failed keepalive is tried again (instead of the refresh interval)."""


class LeaseBackend(Protocol):
    """What a session needs from etcd (``lockmgr.etcd.EtcdClient`` provides it)."""

    def grant(self, ttl_s: int) -> tuple[int, int]: ...
    def keepalive(self, lease_id: int) -> int: ...
    def revoke(self, lease_id: int) -> None: ...


def check_timing(ttl_s: float, refresh_s: float, etcd_timeout_s: float, margin_s: float) -> None:
    """Refuse timings under which a healthy process could miss its own deadline.

    Raises:
        ValueError: ``refresh_s + 2 * etcd_timeout_s > ttl_s - margin_s``, or a non-positive value.
    """
    if min(ttl_s, refresh_s, etcd_timeout_s) <= 0 or margin_s < 0:
        raise ValueError("session timings must be positive")
    if ttl_s < 2:
        raise ValueError("etcd grants leases of at least 2 s; ttl must be >= 2")
    if refresh_s + 2 * etcd_timeout_s > ttl_s - margin_s:
        raise ValueError(
            f"unsafe session timing: refresh {refresh_s:g} s + 2 x etcd timeout "
            f"{etcd_timeout_s:g} s must be <= ttl {ttl_s:g} s - safety margin {margin_s:g} s")


class Session:
    """One lease per process; see the module docstring for the deadline rule."""

    def __init__(self, backend: LeaseBackend, ttl_s: int, *, margin_s: float | None = None,
                 etcd_timeout_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.margin_s = ttl_s / 3 if margin_s is None else margin_s
        self.refresh_s = ttl_s / 6
        check_timing(ttl_s, self.refresh_s, etcd_timeout_s, self.margin_s)
        self._backend = backend
        self._clock = clock
        self.done = threading.Event()
        self._stop = threading.Event()
        self._revoked = False
        sent = clock()
        self.lease_id, granted = backend.grant(ttl_s)
        self.granted_ttl_s = max(granted, 1)
        self._valid_until = sent + min(self.granted_ttl_s, ttl_s) - self.margin_s
        self._thread = threading.Thread(target=self._run, name=f"session-{self.lease_id:x}",
                                        daemon=True)
        self._thread.start()

    @property
    def valid_until(self) -> float:
        """Local monotonic time after which this process must not act on the session."""
        return self._valid_until

    def is_valid(self) -> bool:
        """Whether the session may still be acted on now."""
        return not self.done.is_set() and self._clock() < self._valid_until

    def check(self) -> None:
        """Raise unless the session may still be acted on.

        Raises:
            SessionExpired: the lease is lost or its safe deadline has passed.
        """
        if not self.is_valid():
            raise SessionExpired(f"session {self.lease_id:x} has expired")

    def keepalive_once(self) -> None:
        """Refresh the lease once and move the deadline (the keepalive thread calls this)."""
        sent = self._clock()
        ttl = self._backend.keepalive(self.lease_id)
        if ttl <= 0:
            log.warning("session %x: lease is gone", self.lease_id)
            self.done.set()
            return
        self._valid_until = max(self._valid_until, sent + min(ttl, self.ttl_s) - self.margin_s)

    def _run(self) -> None:
        wait_s = self.refresh_s
        while not self._stop.wait(wait_s):
            wait_s = self.refresh_s
            if self._clock() >= self._valid_until:
                log.warning("session %x: deadline passed before renewal; session lost",
                            self.lease_id)
                self.done.set()
                return
            try:
                self.keepalive_once()
            except EtcdUnavailable as e:
                # Try again soon: the client has moved to another etcd member (or will once
                # its failed ones may be retried), and the deadline does not wait.
                wait_s = RETRY_S
                log.warning("session %x: keepalive failed: %s", self.lease_id, e)
            except Exception:  # the loop must survive anything
                log.exception("session %x: keepalive crashed", self.lease_id)
            if self.done.is_set():
                return

    def expire(self) -> None:
        """Treat the session as lost from now on (e.g. it was found fenced)."""
        self._valid_until = float("-inf")
        self.done.set()

    def close(self) -> None:
        """Stop refreshing and revoke the lease (its keys go with it); idempotent."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.done.set()
        if self._revoked:
            return
        self._revoked = True
        try:
            self._backend.revoke(self.lease_id)
        except EtcdUnavailable as e:
            log.warning("session %x: revoke failed (the lease will expire): %s",
                        self.lease_id, e)
