"""The security commands: ``shardless cert``, ``shardless auth`` and ``shardless user``.

Owns: their arguments and output. Certificates are made by ``nodes/certs.py``, users kept by
``nodes/security.py``; docs/security.md tells the whole story.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

SubParsers = argparse._SubParsersAction  # type: ignore[type-arg]


def _etcd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--etcd", required=True,
                   help="etcd endpoints, HOST:PORT[,...] (https://HOST:PORT for TLS)")
    p.add_argument("--cluster", default="shardless", help="cluster name (etcd key prefix)")
    p.add_argument("--certs-dir", default="",
                   help="certificates directory with ca.crt, node.crt and node.key, for an "
                        "etcd reached over TLS")


def add_commands(sub: SubParsers) -> None:
    """Register ``cert``, ``auth`` and ``user``."""
    p = sub.add_parser("cert", help="make a CA, node and client certificates",
                       description="Make the certificates of a secure cluster (TLS and mutual "
                                   "TLS); see docs/security.md.")
    csub = p.add_subparsers(dest="cert_command", required=True)
    for name, helptext in (("create-ca", "a new CA: ca.crt in --certs-dir, its key at "
                                         "--ca-key"),
                           ("create-node", "node.crt and node.key, for every node, replica "
                                           "and etcd member"),
                           ("create-client", "client.USER.crt and .key, for mutual TLS")):
        c = csub.add_parser(name, help=helptext)
        c.add_argument("--certs-dir", required=True, help="the certificates directory")
        c.add_argument("--ca-key", required=True,
                       help="the CA's key (keep it apart: it mints certificates)")
        if name == "create-node":
            c.add_argument("hosts", nargs="*",
                           help="more host names or addresses the nodes are reached by")
        if name == "create-client":
            c.add_argument("user", help="the user the certificate authenticates as")
    p.set_defaults(func=_run_cert)

    p = sub.add_parser("auth", help="turn authentication on or off for a cluster")
    p.add_argument("state", choices=("on", "off"))
    _etcd_args(p)
    p.set_defaults(func=_run_auth)

    p = sub.add_parser("user", help="add, change, list and remove users")
    usub = p.add_subparsers(dest="user_command", required=True)
    for name, helptext in (("add", "add a user; prints its token once"),
                           ("set", "change a user's role and tables; its token stays"),
                           ("token", "give a user a new token (the old one stops working); "
                                     "prints it once"),
                           ("remove", "remove a user"), ("list", "list the users")):
        u = usub.add_parser(name, help=helptext)
        if name != "list":
            u.add_argument("name", help="the user's name")
        if name in ("add", "set"):
            u.add_argument("--role", required=True, choices=("reader", "writer", "admin"),
                           help="reader: reads; writer: reads and writes; admin: also "
                                "create and drop tables, drain nodes")
            u.add_argument("--table", action="append", default=[], metavar="TABLE",
                           help="the user may touch only this table (repeat for several; "
                                "none: every table)")
        _etcd_args(u)
    p.set_defaults(func=_run_user)


def _run_cert(args: argparse.Namespace) -> int:
    from nodes import certs

    try:
        if args.cert_command == "create-ca":
            certs.create_ca(args.certs_dir, args.ca_key)
            print(f"CA: {args.certs_dir}/ca.crt (key: {args.ca_key})")
        elif args.cert_command == "create-node":
            certs.create_node_cert(args.certs_dir, args.ca_key, args.hosts)
            print(f"node certificate: {args.certs_dir}/node.crt")
        else:
            certs.create_client_cert(args.certs_dir, args.ca_key, args.user)
            print(f"client certificate of {args.user}: {args.certs_dir}/client.{args.user}.crt")
    except (OSError, ValueError) as e:
        print(f"shardless cert: {e}", file=sys.stderr)
        return 1
    return 0


def _etcd(args: argparse.Namespace, command: str) -> Any:
    from nodes.cli import _admin_etcd

    try:
        return _admin_etcd(args)[0]
    except ValueError as e:
        print(f"shardless {command}: {e}", file=sys.stderr)
        return None


def _run_auth(args: argparse.Namespace) -> int:
    from lockmgr import EtcdUnavailable
    from nodes import security

    etcd = _etcd(args, "auth")
    if etcd is None:
        return 2
    try:
        if args.state == "on":
            state = security.read_auth(etcd, args.cluster)
            if not any(u.role == "admin" for u in state.users.values()):
                print("shardless auth: warning: no admin user yet ('shardless user add NAME "
                      "--role admin')", file=sys.stderr)
            security.enable(etcd, args.cluster)
        else:
            security.disable(etcd, args.cluster)
    except EtcdUnavailable as e:
        print(f"shardless auth: etcd: {e}", file=sys.stderr)
        return 1
    finally:
        etcd.close()
    print(f"authentication {args.state} for cluster {args.cluster} (every node applies it "
          f"within {security.AUTH_REFRESH_S:g} s)")
    return 0


def _run_user(args: argparse.Namespace) -> int:
    from lockmgr import EtcdUnavailable
    from nodes import security

    etcd = _etcd(args, "user")
    if etcd is None:
        return 2
    cmd = args.user_command
    try:
        if cmd == "list":
            state = security.read_auth(etcd, args.cluster)
            print(f"authentication {'on' if state.enabled else 'off'}")
            for u in sorted(state.users.values(), key=lambda u: u.name):
                tables = ", ".join(u.tables) if u.tables else "every table"
                print(f"{u.name:<24} {u.role:<8} {tables}")
            return 0
        if cmd == "remove":
            if not security.remove_user(etcd, args.cluster, args.name):
                print(f"shardless user: no user {args.name!r}", file=sys.stderr)
                return 1
            print(f"removed {args.name}")
            return 0
        if cmd == "token":
            state = security.read_auth(etcd, args.cluster)
            old = state.users.get(args.name)
            if old is None:
                print(f"shardless user: no user {args.name!r}", file=sys.stderr)
                return 1
            token = security.put_user(etcd, args.cluster, args.name, old.role, old.tables)
        else:
            exists = args.name in security.read_auth(etcd, args.cluster).users
            if cmd == "add" and exists:
                print(f"shardless user: {args.name!r} exists (use 'user set' or "
                      f"'user token')", file=sys.stderr)
                return 1
            if cmd == "set" and not exists:
                print(f"shardless user: no user {args.name!r}", file=sys.stderr)
                return 1
            token = security.put_user(etcd, args.cluster, args.name, args.role, args.table,
                                      new_token=cmd == "add")
    except ValueError as e:
        print(f"shardless user: {e}", file=sys.stderr)
        return 2
    except EtcdUnavailable as e:
        print(f"shardless user: etcd: {e}", file=sys.stderr)
        return 1
    finally:
        etcd.close()
    if token:
        print(f"token of {args.name} (shown once; send it as 'authorization: Bearer <token>', "
              f"or export SHARDLESS_TOKEN):\n{token}")
    else:
        print(f"changed {args.name}")
    return 0
