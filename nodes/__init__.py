"""Compute nodes: the gRPC server, transactions, the session's life, and the CLI.

See ``nodes/DESIGN.md``.
"""
