"""The options by which a client command proves who it is: ``--certs-dir``, ``--user`` and
``--token`` (docs/security.md), and the credentials they give.

Owns: those arguments and reading them (with the environment's defaults). Does not own
opening channels (``shardless.credentials``) or any command. Kept apart from
``nodes/admin.py`` so that a command registering them (``nodes/backup.py``) imports neither
grpc nor etcd3 until it calls a node.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shardless.credentials import Credentials


def add_client_args(p: argparse.ArgumentParser) -> None:
    """How a command that calls nodes proves who it is (docs/security.md)."""
    g = p.add_argument_group("connection (default: from SHARDLESS_CERTS_DIR, SHARDLESS_USER, "
                             "SHARDLESS_TOKEN; none: plaintext, anonymous)")
    g.add_argument("--certs-dir", default=None,
                   help="use TLS, trusting ca.crt of this directory (and presenting "
                        "client.<user>.crt if there)")
    g.add_argument("--user", default=None, help="the client certificate's user (root)")
    g.add_argument("--token", default=None, help="an authentication token")


def client_credentials(args: argparse.Namespace) -> Credentials:
    """The credentials a command's arguments (or the environment) give.

    Raises:
        ValueError: a certificates directory without ca.crt.
    """
    from shardless.credentials import ENV_CERTS_DIR, ENV_TOKEN, ENV_USER, Credentials

    env = dict(os.environ)
    if getattr(args, "certs_dir", None) is not None:
        env[ENV_CERTS_DIR] = args.certs_dir
    if getattr(args, "user", None) is not None:
        env[ENV_USER] = args.user
    if getattr(args, "token", None) is not None:
        env[ENV_TOKEN] = args.token
    return Credentials.from_env(env)
