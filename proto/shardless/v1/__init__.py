"""Generated stubs of the Shardless API, version 1 (``python proto/gen.py`` regenerates them)."""
