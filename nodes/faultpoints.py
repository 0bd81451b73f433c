"""Fault points: places where a test may make a node process die at a precise moment.

A node reads ``SHARDLESS_FAULTS`` once at start: a comma-separated list of ``point=value``. At
a point whose value matches (``*`` matches anything), the process kills itself with SIGKILL,
exactly as ``kill -9`` would, so nothing after that point runs. Points:

* ``crash-after-commit=KEY``: after the group commit that recorded idempotency key ``KEY`` is
  durable, before any reply is sent or any lock released (the reply is lost, the commit stands).

Unset (the default, and in production) every point is a dictionary lookup that finds nothing.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

ENV = "SHARDLESS_FAULTS"
CRASH_AFTER_COMMIT = "crash-after-commit"


def parse(spec: str) -> dict[str, str]:
    """``"a=1,b=2"`` -> ``{"a": "1", "b": "2"}``; malformed parts are ignored."""
    out = {}
    for part in spec.split(","):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            out[name] = value
    return out


_POINTS = parse(os.environ.get(ENV, ""))


def crash_if(point: str, value: str) -> None:
    """Kill this process with SIGKILL if ``point`` is armed for ``value``."""
    want = _POINTS.get(point)
    if want is not None and value and want in ("*", value):
        log.error("fault point %s reached for %r: killing this process (SIGKILL)", point, value)
        for h in logging.getLogger().handlers:
            h.flush()
        os.kill(os.getpid(), signal.SIGKILL)
