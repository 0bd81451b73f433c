"""A change-stream consumer as an application would write one, for the tests that kill it.

Run as ``python -m tests.harness.consumer ADDRESSES TABLE FILE``: it follows ``TABLE`` with the
helper's ``watch`` and appends each change to ``FILE`` as one JSON line
``[position, index, kind, key, row]``, flushed at once (the place is in the line, so what the
file holds and where to resume are one thing). Started again on the same file, it drops a last
line cut short by a kill and resumes after the last whole one: a consumer killed at any moment
neither loses nor repeats a change.
"""

from __future__ import annotations

import json
import os
import sys


def resume_place(path: str) -> tuple[int, int]:
    """The place after the last whole line of ``path`` (a partial last line is cut off)."""
    if not os.path.exists(path):
        return 0, 0
    with open(path, "rb+") as f:
        data = f.read()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            f.truncate(keep)
    lines = data[:keep].splitlines()
    if not lines:
        return 0, 0
    position, index = json.loads(lines[-1])[:2]
    return int(position), int(index) + 1


def main() -> int:
    from shardless import connect

    addresses, table, path = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
    position, index = resume_place(path)
    with connect(addresses, refresh_s=None) as db, open(path, "a", buffering=1) as out, \
            db.watch(table, position=position, index=index, hold="consumer") as changes:
        for c in changes:
            out.write(json.dumps([c.position, c.index, c.kind, list(c.key),
                                  None if c.row is None else dict(c.row)]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
