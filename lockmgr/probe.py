"""Whether a transaction with no locks would be granted its needs at once, given the entries in
its way: the check of the lock-free path of one-shot writes.

Owns: :func:`requests` (the entries a fresh transaction would put for its needs, exactly as
``LockManager.acquire`` would plan and group them), :func:`blocked` (whether any of those would
have to wait behind the given entries, by the one grant rule of ``entries.py``), and
:func:`published` (which of its entries a transaction must publish for the check to see them).
Pure: the caller supplies the entries (``nodes`` reads them from storage, where interactive
transactions publish their grants) and decides what a clear answer allows; the argument is in
``lockmgr/DESIGN.md``, "One-shot writes without lock entries".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lockmgr import resource
from lockmgr.entries import Entry, Request, find_conflicts, group, parse_value
from lockmgr.modes import LockMode
from lockmgr.resource import Resource
from lockmgr.table import DEFAULT_ESCALATE_AFTER, TxnLocks, plan

_NOBODY = ""  # the probing transaction owns no entry: every entry seen belongs to another one
_LATER = 1 << 62  # a revision after every entry seen


def requests(needs: Sequence[tuple[Resource, LockMode]],
             escalate_after: int = DEFAULT_ESCALATE_AFTER) -> list[Request]:
    """The entries a transaction holding no lock yet would put for ``needs``: what
    ``group(plan(...))`` gives, computed directly when every need is a row lock (the case of
    one-shot requests, on their hot path)."""
    if any(res.row is None for res, _ in needs):
        out = group(plan(TxnLocks(_NOBODY, 0, 0.0), list(needs), escalate_after))
    else:
        out = _row_requests(needs, escalate_after)
    for r in out:
        r.revision = _LATER
    return out


_STRONG = (LockMode.IX, LockMode.SIX, LockMode.X)


def _row_requests(needs: Sequence[tuple[Resource, LockMode]], escalate_after: int
                  ) -> list[Request]:
    """``group(plan(...))`` for a fresh transaction whose needs are all row locks: per page,
    its rows (or, past ``escalate_after`` rows, the page itself), and the tables' intentions."""
    pages: dict[tuple[str, str], dict[str, LockMode]] = {}
    for res, mode in needs:
        rows = pages.setdefault((res.table, res.page), {})  # type: ignore[arg-type]
        held = rows.get(res.row)  # type: ignore[arg-type]
        rows[res.row] = mode if held is None else held.supremum(mode)  # type: ignore[index]
    tables: dict[str, LockMode] = {}
    page_reqs = []
    for (table, page), rows in pages.items():
        if len(rows) > escalate_after:
            mode = LockMode.X if any(m in _STRONG for m in rows.values()) else LockMode.S
            req = Request(f"p/{table}/{page}", mode)
        else:
            mode = LockMode.IS
            for m in rows.values():
                mode = mode.supremum(m.intention())
            req = Request(f"p/{table}/{page}", mode, rows)
        page_reqs.append(req)
        t = tables.get(table)
        tables[table] = mode.intention() if t is None else t.supremum(mode.intention())
    return [*(Request(f"t/{t}", m) for t, m in sorted(tables.items())),
            *sorted(page_reqs, key=lambda r: r.name)]


def blocked(reqs: Sequence[Request], entries_on: Callable[[str], list[Entry]]) -> bool:
    """Whether any of ``reqs`` conflicts with an entry ``entries_on(resource name)`` gives."""
    return any(find_conflicts(_NOBODY, r, entries_on(r.name)) for r in reqs)


def grant_prefixes(table: str) -> tuple[str, str]:
    """Name prefixes that cover every entry :func:`published` gives for resources of table
    ``table`` (its strong table entries and its page entries), so that a caller finding no
    published entry under them knows :func:`blocked` would say no for any request on the
    table's rows. They may cover other tables' names too (``t/1`` covers ``t/12``): a false
    alarm costs only the full check."""
    return f"t/{table}", f"p/{table}/"


def published(txn_id: str, first: int, entries: Sequence[Request]
              ) -> list[tuple[str, str, bytes]]:
    """``(resource name, tag, value)`` of each entry (asked for or granted) that a lock-free
    request could conflict with: page entries (they carry the row locks) and strong table
    entries. A table's intention entries (IS, IX) are left out: a lock-free request only ever
    asks IX of a table, which they cannot block. Tags are ``<txn id>/p<n>``, ``n`` counting
    from ``first``."""
    out = []
    for r in entries:
        if r.name.startswith("t/") and r.mode.is_intention():
            continue
        out.append((r.name, f"{txn_id}/p{first + len(out)}", r.value()))
    return out


def entry(resource_name: str, tag: str, value: bytes) -> Entry:
    """A published grant as an entry ahead of every request (revision 0)."""
    txn_id = tag.rpartition("/")[0]
    mode, rows = parse_value(value)
    return Entry(resource.resource_of_entry_name(resource_name), txn_id, mode, b"", 0,
                 txn_id.rpartition("@")[2], rows)
