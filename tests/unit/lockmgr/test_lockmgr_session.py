"""Unit tests of lockmgr.session with a fake lease backend and a manual clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from lockmgr import EtcdUnavailable, Session, SessionExpired, check_timing


class Clock:
    """A manual monotonic clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeLeases:
    """A LeaseBackend that records calls; each call can take time on the manual clock."""

    def __init__(self, clock: Clock, *, granted_ttl: int | None = None, latency: float = 0.0,
                 lease_id: int = 0xABC) -> None:
        self.clock = clock
        self.granted_ttl = granted_ttl
        self.latency = latency
        self.lease_id = lease_id
        self.keepalive_ttl = 60
        self.keepalive_error: Exception | None = None
        self.revoke_error: Exception | None = None
        self.grants: list[int] = []
        self.keepalives: list[int] = []
        self.revokes: list[int] = []
        self.called = threading.Event()

    def grant(self, ttl_s: int) -> tuple[int, int]:
        self.grants.append(ttl_s)
        self.clock.now += self.latency
        return self.lease_id, ttl_s if self.granted_ttl is None else self.granted_ttl

    def keepalive(self, lease_id: int) -> int:
        self.keepalives.append(lease_id)
        self.clock.now += self.latency
        self.called.set()
        if self.keepalive_error is not None:
            err, self.keepalive_error = self.keepalive_error, None
            raise err
        return self.keepalive_ttl

    def revoke(self, lease_id: int) -> None:
        self.revokes.append(lease_id)
        if self.revoke_error is not None:
            raise self.revoke_error


@contextmanager
def session(backend: FakeLeases, ttl_s: int = 60, **kw) -> Iterator[Session]:
    """A Session that is always closed (its refresh thread stopped) when the test ends."""
    s = Session(backend, ttl_s, clock=backend.clock, **kw)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def leases(clock: Clock) -> FakeLeases:
    return FakeLeases(clock)


# -- check_timing -------------------------------------------------------------------------------


def test_check_timing_accepts_a_safe_timing():
    """refresh + 2 x etcd timeout <= ttl - margin is accepted, including equality."""
    check_timing(60, 10, 0.5, 20)
    check_timing(10, 2, 1, 5)  # 4 <= 5
    check_timing(9, 2, 1, 5)  # 4 <= 4


def test_check_timing_refuses_a_refresh_that_could_miss_the_deadline():
    """refresh + 2 x etcd timeout > ttl - margin is refused."""
    with pytest.raises(ValueError, match="unsafe"):
        check_timing(9, 2, 1.01, 5)


@pytest.mark.parametrize("ttl", [0, 1, 1.99])
def test_check_timing_refuses_a_ttl_under_two_seconds(ttl: float):
    """etcd grants leases of at least 2 s, so ttl < 2 is refused."""
    with pytest.raises(ValueError):
        check_timing(ttl, 0.01, 0.01, 0)


@pytest.mark.parametrize(("ttl", "refresh", "timeout", "margin"), [
    (60, 0, 1, 1), (60, 1, 0, 1), (60, -1, 1, 1), (-60, 1, 1, 1), (60, 1, 1, -0.1),
])
def test_check_timing_refuses_non_positive_values(ttl, refresh, timeout, margin):
    """ttl, refresh and timeout must be positive, and the margin not negative."""
    with pytest.raises(ValueError):
        check_timing(ttl, refresh, timeout, margin)


def test_a_session_with_unsafe_timing_is_refused_before_a_lease_is_granted(clock, leases):
    """Session checks its timing first, so a bad config grants no lease."""
    with pytest.raises(ValueError):
        Session(leases, 4, etcd_timeout_s=2, clock=clock)
    with pytest.raises(ValueError):
        Session(leases, 1, clock=clock)
    assert leases.grants == []


# -- the deadline -------------------------------------------------------------------------------


def test_the_deadline_is_the_grant_send_time_plus_ttl_minus_margin(clock):
    """valid_until = time the grant was sent + ttl - margin (ttl/3 by default), not reply time."""
    leases = FakeLeases(clock, latency=3.0)
    with session(leases, 60) as s:
        assert s.lease_id == 0xABC
        assert leases.grants == [60]
        assert s.margin_s == 20
        assert s.valid_until == 1000.0 + 60 - 20


def test_an_explicit_margin_sets_the_deadline(clock, leases):
    """margin_s replaces the default ttl/3."""
    with session(leases, 60, margin_s=5) as s:
        assert s.valid_until == 1000.0 + 60 - 5


def test_a_shorter_granted_ttl_shortens_the_deadline(clock):
    """If etcd grants less than asked, the deadline uses the granted ttl."""
    with session(FakeLeases(clock, granted_ttl=30), 60) as s:
        assert s.granted_ttl_s == 30
        assert s.valid_until == 1000.0 + 30 - 20


def test_a_longer_granted_ttl_does_not_lengthen_the_deadline(clock):
    """The deadline never trusts more than the ttl that was asked for."""
    with session(FakeLeases(clock, granted_ttl=600), 60) as s:
        assert s.valid_until == 1000.0 + 60 - 20


def test_keepalive_once_moves_the_deadline_from_the_send_time(clock):
    """A keepalive sent at t moves the deadline to t + ttl - margin, whatever its latency."""
    leases = FakeLeases(clock)
    with session(leases, 60) as s:
        clock.now = 1030.0
        leases.latency = 4.0
        s.keepalive_once()
        assert leases.keepalives == [0xABC]
        assert s.valid_until == 1030.0 + 60 - 20


def test_keepalive_once_never_moves_the_deadline_back(clock, leases):
    """A keepalive answering a short ttl leaves a later deadline where it was."""
    with session(leases, 60) as s:
        before = s.valid_until
        leases.keepalive_ttl = 5
        clock.now += 1
        s.keepalive_once()
        assert s.valid_until == before


def test_keepalive_once_caps_the_renewed_ttl_at_the_asked_ttl(clock, leases):
    """A keepalive answering more than the session's ttl extends only by the session's ttl."""
    with session(leases, 60) as s:
        leases.keepalive_ttl = 3600
        clock.now = 1010.0
        s.keepalive_once()
        assert s.valid_until == 1010.0 + 60 - 20


@pytest.mark.parametrize("ttl", [0, -1])
def test_a_keepalive_returning_no_ttl_marks_the_session_done(clock, leases, ttl: int):
    """ttl <= 0 means the lease is gone: done is set and the session is no longer valid."""
    with session(leases, 60) as s:
        leases.keepalive_ttl = ttl
        s.keepalive_once()
        assert s.done.is_set()
        assert not s.is_valid()
        with pytest.raises(SessionExpired):
            s.check()


def test_a_keepalive_that_raises_etcd_unavailable_propagates_and_keeps_the_deadline(clock,
                                                                                     leases):
    """keepalive_once reports etcd failure to its caller and leaves the deadline alone."""
    with session(leases, 60) as s:
        before = s.valid_until
        leases.keepalive_error = EtcdUnavailable("no quorum")
        with pytest.raises(EtcdUnavailable):
            s.keepalive_once()
        assert s.valid_until == before
        assert not s.done.is_set()


def test_a_session_is_valid_until_just_before_its_deadline(clock, leases):
    """is_valid holds strictly before valid_until and check() does not raise."""
    with session(leases, 60) as s:
        clock.now = s.valid_until - 0.001
        assert s.is_valid()
        s.check()


def test_a_session_is_invalid_from_its_deadline_on(clock, leases):
    """At and after valid_until the session must not be acted on, even if etcd still holds it."""
    with session(leases, 60) as s:
        clock.now = s.valid_until
        assert not s.is_valid()
        clock.now += 100
        assert not s.is_valid()
        with pytest.raises(SessionExpired):
            s.check()


# -- close --------------------------------------------------------------------------------------


def test_close_revokes_the_lease_once_and_is_idempotent(clock, leases):
    """The first close revokes the lease; later closes do nothing more."""
    s = Session(leases, 60, clock=clock)
    s.close()
    assert leases.revokes == [0xABC]
    assert s.done.is_set()
    assert not s.is_valid()
    s.close()
    s.close()
    assert leases.revokes == [0xABC]


def test_close_survives_etcd_being_unavailable_for_the_revoke(clock, leases):
    """A revoke that fails with EtcdUnavailable is logged, not raised; the lease will expire."""
    leases.revoke_error = EtcdUnavailable("down")
    s = Session(leases, 60, clock=clock)
    s.close()
    assert leases.revokes == [0xABC]
    assert s.done.is_set()


def test_close_after_the_session_is_lost_still_revokes_once(clock, leases):
    """A lost session (lease gone, or given up as fenced) is still revoked once on close: a
    lease that etcd still has must not keep its locks until it expires."""
    with session(leases, 60) as s:
        leases.keepalive_ttl = 0
        s.keepalive_once()
        assert s.done.is_set()
        s.close()
    assert leases.revokes == [0xABC]


def test_close_stops_the_refresh_thread(clock, leases):
    """After close the refresh thread has ended."""
    s = Session(leases, 60, clock=clock)
    s.close()
    assert not any(t.name == f"session-{0xABC:x}" and t.is_alive()
                   for t in threading.enumerate())


# -- the refresh thread (ttl 2 s, so it wakes every 1/3 s of real time) --------------------------


def test_the_refresh_thread_marks_the_session_done_once_the_deadline_has_passed(clock, leases):
    """A thread that wakes after the deadline (a frozen process) gives the session up."""
    with session(leases, 2) as s:
        clock.now = s.valid_until + 1
        assert s.done.wait(timeout=5)
        assert leases.keepalives == []


def test_the_refresh_thread_keeps_going_after_etcd_is_unavailable(clock, leases):
    """A keepalive failing with EtcdUnavailable is retried on the next refresh."""
    leases.keepalive_error = EtcdUnavailable("blip")
    with session(leases, 2) as s:
        deadline = time.monotonic() + 5
        while len(leases.keepalives) < 2:
            assert time.monotonic() < deadline, "no retry after EtcdUnavailable"
            time.sleep(0.02)
        assert not s.done.is_set()
