"""What the ``shardless`` command imports: the modules in ``sys.modules`` after
``nodes.cli.main(argv)`` ran in a fresh interpreter (its exit caught), for the tests that keep
a command's start-up free of modules it does not use."""

from __future__ import annotations

import json
import subprocess
import sys

_CODE = ("import json, sys, nodes.cli as c\n"
         "try:\n    c.main(json.loads(sys.argv[1]))\nexcept SystemExit:\n    pass\n"
         "print(json.dumps(sorted(sys.modules)))")


def imported_by(argv: list[str]) -> set[str]:
    """The modules loaded by running ``shardless ARGV`` in a new interpreter."""
    out = subprocess.run([sys.executable, "-c", _CODE, json.dumps(argv)], capture_output=True,
                         text=True, check=True, timeout=60)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))
