"""Which commit-log records may go: the log kept in bounds.

Owns: the retention rule, a pure decision over the records held (oldest first), in the manner of
PostgreSQL's ``wal_keep_size``, replication slots and ``max_slot_wal_keep_size``. Does not own
who needs which position (``nodes`` gathers that from the replicas and consumers registered in
etcd) nor the removal itself (``WriteView.truncate_log``).

The rule, record by record from the oldest, stopping at the first that must stay:

- a record younger than ``keep_s`` stays (a consumer may start a little behind);
- a record that some consumer still needs (at or after ``needed_from``) stays;
- but a record goes, needed or not, once the log holds more than ``max_bytes`` or the record is
  older than ``max_age_s``: a consumer that lags that far loses its place and must start again
  from a fresh copy (it is told so, with the oldest position still held). A dead replica must
  not fill the volume.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_KEEP_S = 600.0
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Retention:
    """The bounds of the commit log (see the module docstring)."""

    keep_s: float = DEFAULT_KEEP_S
    max_bytes: int = DEFAULT_MAX_BYTES
    max_age_s: float = DEFAULT_MAX_AGE_S

    def validated(self) -> Retention:
        """This policy, checked.

        Raises:
            ValueError: a bound is negative, or ``keep_s`` is above ``max_age_s``.
        """
        if self.keep_s < 0 or self.max_bytes < 0 or self.max_age_s < 0:
            raise ValueError("commit-log retention bounds must not be negative")
        if self.keep_s > self.max_age_s:
            raise ValueError(f"the log cannot keep {self.keep_s} s of records when no record "
                             f"may be older than {self.max_age_s} s")
        return self


@dataclass(frozen=True)
class Cut:
    """What may go now: the records before ``before``."""

    before: int
    records: int
    bytes: int
    forced: bool  # some record went that a consumer still needed


def cut(records: Iterable[tuple[int, float, int]], *, held_bytes: int, now: float,
        needed_from: int | None, policy: Retention) -> Cut:
    """Decide how much of the log may go.

    Args:
        records: ``(position, ts, size)`` of records held, oldest first (a prefix is enough:
            the cut never passes the last one given).
        held_bytes: the size of the whole log held.
        now: the time, in the records' clock (seconds since the epoch).
        needed_from: the oldest position a registered consumer still needs, None if none.
        policy: the bounds.
    """
    before, n, gone, forced = 0, 0, 0, False
    for position, ts, size in records:
        age = now - ts
        over = held_bytes - gone > policy.max_bytes or age > policy.max_age_s
        needed = needed_from is not None and position >= needed_from
        if not over and (age <= policy.keep_s or needed):
            break
        forced = forced or needed
        before, n, gone = position + 1, n + 1, gone + size
    return Cut(before, n, gone, forced)


DEFAULT_RETENTION = Retention()
