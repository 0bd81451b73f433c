"""Fault points: places where a test may make a node process die at a precise moment.

A node reads ``SHARDLESS_FAULTS`` once at start: a comma-separated list of ``point=value``. At
a point whose value matches (``*`` matches anything), the process kills itself with SIGKILL,
exactly as ``kill -9`` would, so nothing after that point runs, or stops itself. Points:

* ``crash-after-commit=KEY``: after the group commit that recorded idempotency key ``KEY`` is
  durable, before any reply is sent or any lock released (the reply is lost, the commit stands).
* ``pause-before-answer=KEY``: the same place, but the process stops itself (SIGSTOP, as a
  freeze would) before it checks whether it may still acknowledge; the test sends SIGCONT.
* ``pause-in-commit=KEY``: the process stops itself inside the group commit's write transaction
  once the request carrying ``KEY`` is applied, so it holds LMDB's writer lock while stopped.

Unset (the default, and in production) every point is a dictionary lookup that finds nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import time

log = logging.getLogger(__name__)

ENV = "SHARDLESS_FAULTS"
CRASH_AFTER_COMMIT = "crash-after-commit"
PAUSE_BEFORE_ANSWER = "pause-before-answer"
PAUSE_IN_COMMIT = "pause-in-commit"


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


def pause_if(point: str, value: str) -> None:
    """Stop this process (SIGSTOP) if ``point`` is armed for ``value``; it goes on at SIGCONT."""
    want = _POINTS.get(point)
    if want is not None and value and want in ("*", value):
        log.error("fault point %s reached for %r: stopping this process (SIGSTOP)", point,
                  value)
        for h in logging.getLogger().handlers:
            h.flush()
        os.kill(os.getpid(), signal.SIGSTOP)
        time.sleep(0.2)  # the stop reaches this thread a moment later: not past this point
