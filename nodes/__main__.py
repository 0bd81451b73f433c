"""``python -m nodes`` runs the ``shardless`` command."""

import sys

from nodes.cli import main

sys.exit(main())
