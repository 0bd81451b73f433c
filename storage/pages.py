"""Pages: ranges of a table's primary-key space, the unit of range locking.

Owns: which page a key belongs to, and which pages a key range covers. ``lockmgr`` only sees the
page ids as opaque strings (hex). Pure; no I/O.

Scheme. A page is determined by the *first* primary-key column of a key, read from its keycode
encoding (so it works on key prefixes and scan bounds alike):

=================  ====================================================================
first column type  page
=================  ====================================================================
int64              64 consecutive values (``value >> 6``): keys 0..63, 64..127, ...
double             one binary exponent (sign and exponent bits): [1, 2), [2, 4), ...
string, bytes      the first two bytes of the (escaped) value
bool, null         the value
=================  ====================================================================

Pages are ordered like the keys in them, so a key range covers a contiguous run of pages, which
:func:`pages_for_range` lists when there are at most ``MAX_RANGE_PAGES`` of them; a wider or
unbounded range returns None and the caller locks the whole table instead.

Why this shape: writers take only intention locks (IX) on pages, which never conflict with each
other, so a page never makes writers wait for writers; pages matter where a scan (S on its pages)
meets writers of the same key range, and where one transaction escalates many row locks of a
page into one page lock. Sequential integer keys fill pages of :data:`INT_PAGE_KEYS` (64), and
the lock manager escalates past half of that (``lockmgr.table.DEFAULT_ESCALATE_AFTER``, 32, which
must stay below :data:`INT_PAGE_KEYS` or escalation never happens on integer keys): a bulk
loader of keys 1, 2, 3, ... takes row locks for a page's first 32 keys, then the page in X on
its 33rd, and no row locks for the rest of it, page by page, without blocking writers of other
pages.

Limits: string keys with a long common prefix (``user-000123``) share one page, so a scan of a
small range of them blocks writers of the whole prefix, and an escalated writer blocks all of
them; a multi-column key's later columns do not refine the page.
"""

from __future__ import annotations

import struct

from storage.keycode import BOOL_OR_NULL_TAGS, BYTES, DOUBLE, INT, STR

MAX_RANGE_PAGES = 64
_U64 = struct.Struct(">Q")
_WIDTH = {INT: 8, DOUBLE: 8, STR: 2, BYTES: 2}
_SHIFT = {INT: 6, DOUBLE: 52, STR: 0, BYTES: 0}
INT_PAGE_KEYS = 1 << _SHIFT[INT]
"""How many consecutive int64 keys one page holds (64)."""


def _number(encoded: bytes) -> tuple[int, int]:
    """(tag, page number within the tag) of an encoded key or key prefix."""
    if not encoded:
        return 0, 0
    tag = encoded[0]
    width = _WIDTH.get(tag)
    if width is None:
        return tag, 0
    raw = encoded[1:1 + width].ljust(width, b"\x00")
    return tag, int.from_bytes(raw, "big") >> _SHIFT[tag]


def _page_id(tag: int, number: int) -> str:
    width = _WIDTH.get(tag)
    if width is None:
        return f"{tag:02x}"
    digits = (width * 8 - _SHIFT[tag] + 3) // 4
    return f"{tag:02x}{number:0{digits}x}"


def page_of(encoded_pk: bytes) -> str:
    """The page id of an encoded primary key (or key prefix)."""
    return _page_id(*_number(encoded_pk))


def pages_for_range(lo: bytes | None, hi: bytes | None) -> list[str] | None:
    """The pages covering encoded keys ``lo <= k < hi``, or None if unbounded or too many.

    ``lo`` and ``hi`` are the byte bounds a scan uses (possibly ``prefix + 0xFF``).
    """
    if lo is None or hi is None:
        return None
    (t1, n1), (t2, n2) = _number(lo), _number(hi)
    if t1 != t2:
        return None
    if t1 in BOOL_OR_NULL_TAGS or t1 not in _WIDTH:
        return [_page_id(t1, 0)]
    if n2 < n1:
        return []
    if n2 - n1 + 1 > MAX_RANGE_PAGES:
        return None
    return [_page_id(t1, n) for n in range(n1, n2 + 1)]
