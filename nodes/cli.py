"""The ``shardless`` command: ``node`` runs one node, ``replica`` keeps a copy of the volume,
``up`` runs a local cluster, ``drain`` makes one node leave without failing a client call,
``promote`` makes a replica the primary, ``bench`` measures a cluster against baselines; the
operator's commands (``status``, ``members``, ``health``, ``locks``, ``get``, ``put``) live in
``nodes/admin.py``, ``backup``, ``archive``, ``restore`` and ``verify`` in ``nodes/backup.py``,
``cert``, ``auth`` and ``user`` in ``nodes/secadmin.py``. This module registers arguments and
dispatches; ``DESCRIPTION`` is the plain text ``--help`` shows."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nodes.security import Security
    from shardless.credentials import Credentials

log = logging.getLogger("shardless")

# NB: the client commands of nodes/backup.py are dispatched with only their own parser (see
# main), and this module imports nothing heavy at its top: `shardless backup --volume`,
# `verify` and `restore` then start without grpc, etcd3 or the node's modules (each costs
# tenths of a second; docs/benchmarks.md, 'Backup and restore'). Each command's parser and
# runner import what it needs.
BACKUP_COMMANDS = ("backup", "archive", "restore", "verify")


def _add_process_args(p: argparse.ArgumentParser, *, volume: str, listen: str) -> None:
    """The options a node and a replica share."""
    from nodes.config import DEFAULT_ETCD_TIMEOUT_S, DEFAULT_TTL_S
    from storage import DEFAULT_MAP_SIZE

    p.add_argument("--etcd", required=True, help="etcd endpoints, HOST:PORT[,HOST:PORT...]")
    p.add_argument("--volume", required=True, help=volume)
    p.add_argument("--listen", required=True, help=listen)
    p.add_argument("--cluster", default="shardless", help="cluster name (etcd key prefix)")
    p.add_argument("--ttl", type=float, default=DEFAULT_TTL_S,
                   help="session lease TTL, whole seconds (rounded up; at least 2)")
    p.add_argument("--etcd-timeout", type=float, default=DEFAULT_ETCD_TIMEOUT_S,
                   help="timeout of each etcd call, seconds")
    p.add_argument("--map-size", type=int, default=DEFAULT_MAP_SIZE,
                   help="LMDB map size in bytes (the volume's size limit)")
    g = p.add_argument_group("security (docs/security.md); one of --certs-dir and --insecure")
    g.add_argument("--certs-dir", default="",
                   help="serve TLS with node.crt and node.key from this directory, trusting "
                        "its ca.crt ('shardless cert' makes them); etcd endpoints given as "
                        "https://HOST:PORT are reached over TLS with the same certificate")
    g.add_argument("--insecure", action="store_true",
                   help="serve plaintext: anyone who reaches the port can connect, and tokens "
                        "(when authentication is on) travel in the clear")
    g.add_argument("--tls-client-auth", action="store_true",
                   help="require a client certificate signed by the CA (mutual TLS); its "
                        "common name is the caller's user name")


def _security(args: argparse.Namespace) -> Security:
    """The TLS settings of a node or replica from its arguments.

    Raises:
        ValueError: neither or both of --certs-dir and --insecure, or missing files.
    """
    from nodes.security import Security, wants_etcd_tls

    if bool(args.certs_dir) == bool(args.insecure):
        raise ValueError("pass --certs-dir DIR (TLS) or --insecure (plaintext)")
    if args.insecure and args.tls_client_auth:
        raise ValueError("--tls-client-auth needs TLS (--certs-dir)")
    return Security(certs_dir=args.certs_dir, client_auth=args.tls_client_auth,
                    etcd_tls=wants_etcd_tls(args.etcd)).validated()


def _admin_etcd(args: argparse.Namespace) -> tuple[Any, Any]:
    """For a command that works on etcd directly (``--etcd``, ``--cluster``, ``--certs-dir``):
    an etcd client, and a function opening a channel to a node as the cluster's own.

    Raises:
        ValueError: bad endpoints, or TLS settings missing their files.
    """
    from nodes.security import Authority, Security, wants_etcd_tls

    sec = Security(certs_dir=args.certs_dir, etcd_tls=wants_etcd_tls(args.etcd)).validated()
    etcd = sec.etcd(args.etcd, timeout_s=2.0)
    authority = Authority(lambda: etcd, args.cluster)

    def open_node(address: str) -> Any:
        from lockmgr import EtcdUnavailable
        from nodes.security import read_auth

        if not authority.state.internal:
            try:
                authority.state = read_auth(etcd, args.cluster)
            except EtcdUnavailable:
                pass
        return authority.channel(sec, address)
    return etcd, open_node




def _add_log_retention_args(p: argparse.ArgumentParser, whose: str) -> None:
    from storage.retention import DEFAULT_KEEP_S, DEFAULT_MAX_AGE_S, DEFAULT_MAX_BYTES

    p.add_argument("--log-keep", type=float, default=DEFAULT_KEEP_S, metavar="SECONDS",
                   help=f"commit-log records younger than this are always kept ({whose}; "
                        "see docs/operations.md, 'The commit log')")
    p.add_argument("--log-max-mb", type=float, default=DEFAULT_MAX_BYTES / (1 << 20),
                   help="the commit log's size bound: past it the oldest records go even if "
                        "a replica or consumer still needs them")
    p.add_argument("--log-max-age", type=float, default=DEFAULT_MAX_AGE_S, metavar="SECONDS",
                   help="no commit-log record is kept longer than this")


def _retention(args: argparse.Namespace) -> Any:
    from storage import Retention

    return Retention(keep_s=args.log_keep, max_bytes=int(args.log_max_mb * (1 << 20)),
                     max_age_s=args.log_max_age)


def _add_node(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from lockmgr import DEFAULT_ESCALATE_AFTER
    from nodes import heap, limits

    p = sub.add_parser("node", help="run one node")
    _add_process_args(p, volume="the shared volume directory",
                      listen="gRPC address to serve, HOST:PORT")
    p.add_argument("--node-id", default="", help="default: <hostname>-<port>")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds the open transactions get to finish when the node leaves "
                        "(SIGTERM or drain); the rest are aborted with NODE_DRAINING")
    p.add_argument("--workers", type=int, default=64, help="gRPC worker threads")
    p.add_argument("--lock-timeout", type=float, default=10.0,
                   help="seconds a transaction waits for a lock before it is aborted")
    p.add_argument("--idle-timeout", type=float, default=30.0,
                   help="seconds an interactive transaction may stay idle before rollback")
    p.add_argument("--escalate-after", type=int, default=DEFAULT_ESCALATE_AFTER,
                   help="row locks of one page a transaction holds before its next row there "
                        f"locks the page instead (default {DEFAULT_ESCALATE_AFTER}; an int64 "
                        "page holds 64 keys, so keep it below 64 for escalation to happen)")
    _add_log_retention_args(p, "the leader's setting applies")
    p.add_argument("--sync-policy", choices=("demote", "strict"), default="demote",
                   help="when a synchronous replica does not hold a commit within "
                        "--sync-timeout: demote it to asynchronous (status says so) and go "
                        "on, or (strict) fail the commit, and reads, with UNAVAILABLE "
                        "(docs/replication.md)")
    p.add_argument("--sync-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="how long commits and reads wait for the synchronous replicas")
    p.add_argument("--processes", type=int, default=1,
                   help="worker processes of the node, all serving --listen (SO_REUSEPORT), "
                        "so that it uses that many cores (see nodes/workers.py)")
    p.add_argument("--no-kill-frozen-peers", action="store_true",
                   help="do not SIGKILL a node of this host that keeps its locks after its "
                        "session ended (frozen): fencing alone then keeps it harmless, but "
                        "one holding LMDB's writer lock stalls every write until it wakes "
                        "(nodes/deathwatch.py)")
    p.add_argument("--metrics-listen", default="", metavar="HOST:PORT",
                   help="serve Prometheus metrics over HTTP at http://HOST:PORT/metrics "
                        "(default: none; port 0: any free one, logged). With --processes, "
                        "this address serves every process's, labelled worker "
                        "(docs/operations.md, 'Metrics')")
    p.add_argument("--malloc-arenas", type=int, default=heap.DEFAULT_ARENAS, metavar="N",
                   help=f"glibc malloc arenas of the process (default {heap.DEFAULT_ARENAS}; 0: "
                        "glibc's default of 8 per core; MALLOC_ARENA_MAX in the environment "
                        "wins); see docs/limits.md, 'Memory'")
    p.add_argument("--no-trim-memory", action="store_true",
                   help="do not give freed heap memory back to the system when the node is "
                        "quiet (malloc_trim)")
    limits.add_arguments(p)
    p.add_argument("--public-listen", default="", help=argparse.SUPPRESS)
    p.add_argument("--group", default="", help=argparse.SUPPRESS)
    p.set_defaults(func=_run_node)


def _run_node(args: argparse.Namespace) -> int:
    from lockmgr import EtcdUnavailable
    from nodes import heap, limits
    from nodes.config import NodeConfig
    from nodes.epoch import Superseded
    from nodes.node import Node
    from nodes.reader import ReaderNode, is_replica_volume

    log.info("%s", heap.cap_arenas(args.malloc_arenas))  # before any thread of the node starts
    try:
        cfg = NodeConfig(etcd=args.etcd, volume=args.volume, listen=args.listen,
                         node_id=args.node_id, cluster=args.cluster, ttl_s=math.ceil(args.ttl),
                         etcd_timeout_s=args.etcd_timeout, map_size=args.map_size,
                         grace_s=args.grace, max_workers=args.workers,
                         lock_timeout_s=args.lock_timeout, idle_timeout_s=args.idle_timeout,
                         escalate_after=args.escalate_after, public_listen=args.public_listen,
                         group=args.group,
                         sync_policy=args.sync_policy, sync_timeout_s=args.sync_timeout,
                         kill_frozen_peers=not args.no_kill_frozen_peers,
                         trim_memory=not args.no_trim_memory,
                         limits=limits.from_arguments(args), security=_security(args),
                         metrics_listen=args.metrics_listen,
                         log_retention=_retention(args))
        if args.processes < 1:
            raise ValueError("--processes must be at least 1")
        if args.processes > 1:
            from nodes.workers import Supervisor, strip_listen_and_id

            valid = cfg.validated()
            raw = list(args.raw_argv)
            node_argv = strip_listen_and_id(raw[raw.index("node") + 1:])
            return Supervisor(node_argv, node_id=valid.node_id, listen=valid.listen,
                              processes=args.processes, grace_s=valid.grace_s,
                              metrics_listen=valid.metrics_listen).run()
        if is_replica_volume(cfg.volume, cfg.map_size):
            # A replica's copy: a read-only node, until the copy becomes the primary.
            if cfg.metrics_listen:
                log.warning("a read-only node serves no metrics yet; --metrics-listen applies "
                            "once its copy is promoted")
            reader = ReaderNode(cfg)
            code = _serve(reader, "read-only node leaving", (EtcdUnavailable, RuntimeError))
            if not reader.promoted:
                return code
            cfg = reader.cfg  # the same id and address
            log.info("the copy in %s is the primary now; serving it as a node on %s",
                     cfg.volume, cfg.listen)
        node = Node(cfg)
    except ValueError as e:
        print(f"shardless node: {e}", file=sys.stderr)
        return 2
    return _serve(node, "leaving the cluster", (EtcdUnavailable, RuntimeError, Superseded))


def _serve(process: Any, leaving: str, start_errors: tuple[type[Exception], ...]) -> int:
    """Start ``process`` (a node or a replica), run it until SIGTERM or SIGINT (or until it
    asks to stop), then stop it; return the exit code."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: process.stop_requested.set())
    try:
        process.start()
        while not process.stop_requested.wait(1.0):
            pass
        log.info(leaving)
        return int(getattr(process, "exit_code", 0))
    except start_errors as e:
        log.error("cannot start: %s", e)
        return 1
    finally:
        process.stop()


def _add_replica(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("replica", help="keep a copy of the volume on this disk or host, "
                                       "following the commit log (docs/replication.md)")
    _add_process_args(p, volume="the replica's own volume directory (empty: a copy is taken "
                                "first)", listen="gRPC address (health, status), HOST:PORT")
    p.add_argument("--mode", choices=("sync", "async"), default="async",
                   help="sync: commits wait until this replica holds them; async: it follows "
                        "behind, its lag reported")
    p.add_argument("--replica-id", default="", help="default: replica-<hostname>-<port>")
    p.add_argument("--no-auto-promote", action="store_true",
                   help="sync mode: never promote itself (by default a synchronous replica "
                        "that holds every acknowledged commit promotes itself when no node "
                        "of the primary has answered for --promote-after seconds)")
    p.add_argument("--promote-after", type=float, default=1.0, metavar="SECONDS",
                   help="how long no node of the primary answers before a synchronous "
                        "replica promotes itself")
    _add_log_retention_args(p, "of the replica's own copy, which also keeps what the other "
                               "replicas and the retention holds need, as the primary does")
    p.set_defaults(func=_run_replica)


def _run_replica(args: argparse.Namespace) -> int:
    from lockmgr import EtcdUnavailable
    from nodes import heap
    from nodes.config import NodeConfig
    from nodes.epoch import Superseded
    from nodes.node import Node
    from nodes.replica import Replica, ReplicaConfig

    log.info("%s", heap.cap_arenas())  # before any thread of the process starts
    try:
        replica = Replica(ReplicaConfig(
            etcd=args.etcd, volume=args.volume, listen=args.listen, mode=args.mode,
            replica_id=args.replica_id, cluster=args.cluster, ttl_s=math.ceil(args.ttl),
            etcd_timeout_s=args.etcd_timeout, map_size=args.map_size,
            auto_promote=not args.no_auto_promote, promote_after_s=args.promote_after,
            security=_security(args), log_retention=_retention(args)))
    except ValueError as e:
        print(f"shardless replica: {e}", file=sys.stderr)
        return 2
    code = _serve(replica, "replica leaving", (RuntimeError,))
    if replica.promoted is None:
        return code
    # Promoted: its volume is the primary now; this process serves it as a node, on the
    # replica's address, under the replica's id.
    rc = replica.cfg
    log.info("replica %s was promoted; serving its volume as a node on %s", rc.replica_id,
             rc.listen)
    node = Node(NodeConfig(etcd=rc.etcd, volume=rc.volume, listen=rc.listen,
                           node_id=rc.replica_id, cluster=rc.cluster, ttl_s=rc.ttl_s,
                           etcd_timeout_s=rc.etcd_timeout_s, map_size=rc.map_size,
                           security=rc.security, log_retention=rc.log_retention))
    return _serve(node, "leaving the cluster", (EtcdUnavailable, RuntimeError, Superseded))


def _add_promote(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from nodes import admin
    from nodes.config import DEFAULT_TTL_S

    p = sub.add_parser("promote", help="make a replica's volume the primary, fencing the old "
                                       "one (docs/replication.md, 'Promotion')")
    p.add_argument("replica", help="the replica's id (shardless status lists them)")
    p.add_argument("--etcd", required=True, type=admin.parse_etcd,
                   help="etcd endpoints, HOST:PORT[,HOST:PORT...]")
    p.add_argument("--cluster", default="shardless", help="cluster name (etcd key prefix)")
    p.add_argument("--accept-loss", action="store_true",
                   help="promote a replica that may lack acknowledged commits (asynchronous, "
                        "demoted or joining); the positions it lacks are printed")
    p.add_argument("--force", action="store_true",
                   help="take over a promotion under way whose replica is lost for good "
                        "(the epoch stuck at 'promoting'); that replica's volume is then "
                        "never the primary")
    p.add_argument("--ttl", type=float, default=DEFAULT_TTL_S,
                   help="the nodes' session TTL: an asynchronous promotion waits this long "
                        "(plus a margin) for the old primary's nodes to stop")
    p.add_argument("--wait", type=float, default=60.0,
                   help="seconds to wait for the promotion to finish")
    p.add_argument("--certs-dir", default="",
                   help="a secure cluster's certificates directory with node.crt and node.key "
                        "(for etcd given as https:// and for the nodes' TLS)")
    p.set_defaults(func=_run_promote)


def _run_promote(args: argparse.Namespace) -> int:
    import dataclasses
    import socket

    from lockmgr import EtcdUnavailable
    from nodes import promotion
    from nodes.epoch import read_epoch

    try:
        etcd, open_node = _admin_etcd(args)
    except ValueError as e:
        print(f"shardless promote: {e}", file=sys.stderr)
        return 2
    try:
        for attempt in range(10):  # find a live endpoint first (a lost host's is refused)
            try:
                read_epoch(etcd, args.cluster)
                break
            except EtcdUnavailable:
                if attempt == 9:
                    raise
                time.sleep(0.3)
        try:
            started = promotion.begin(etcd, args.cluster, args.replica,
                                      accept_loss=args.accept_loss,
                                      by=f"shardless promote on {socket.gethostname()}",
                                      ttl_s=math.ceil(args.ttl), force=args.force,
                                      open_channel=open_node)
        except promotion.PromotionRefused as e:
            print(f"shardless promote: refused: {e}", file=sys.stderr)
            return 1
        rec = started.record
        print(f"promoting {args.replica} (holds position {started.held}): {rec.describe()}",
              flush=True)
        done = promotion.wait_finished(etcd, args.cluster, rec.epoch, args.wait)
        if done is None:
            print(f"shardless promote: the replica did not finish the promotion within "
                  f"{args.wait:g} s (is its process running? it finishes when it sees the "
                  f"record)", file=sys.stderr)
            return 1
        print(f"promoted: {done.describe()}; the new primary's log continues after position "
              f"{done.start_position}")
        if not started.synchronous:  # what the old primary's nodes committed meanwhile
            again = promotion.known_last_position(etcd, args.cluster, done.previous_volume,
                                                  open_channel=open_node)
            if again[0] > started.known_last:
                started = dataclasses.replace(started, known_last=again[0],
                                              known_from=again[1])
        if started.synchronous:
            print(f"no acknowledged commit is lost: {args.replica} was synchronous and holds "
                  f"every one (up to position {done.start_position})")
        elif started.known_last > done.start_position:
            print(f"LOST: positions {done.start_position + 1}..{started.known_last} "
                  f"({started.known_last - done.start_position} commit(s); the last known "
                  f"position: {started.known_from}); the old primary may have committed "
                  f"more after that report")
        else:
            print(f"no position known to be lost (the highest reported was "
                  f"{started.known_last}: {started.known_from}); the old primary may have "
                  f"committed more after its last report")
        return 0
    except EtcdUnavailable as e:
        print(f"shardless promote: etcd: {e}", file=sys.stderr)
        return 1
    finally:
        etcd.close()


def _add_drain(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from nodes import admin

    p = sub.add_parser("drain", help="make one node leave the cluster without failing a "
                                     "client call")
    p.add_argument("node", help="the node's address HOST:PORT, or its node id (with --via)")
    p.add_argument("--via", default=None, type=admin.parse_addresses,
                   help="addresses of any nodes, HOST:PORT[,...], to find NODE by its id")
    p.add_argument("--wait", type=float, default=120.0,
                   help="seconds to wait until the node is gone (0: do not wait)")
    admin.add_client_args(p)
    p.set_defaults(func=_run_drain)


def _gone(address: str, credentials: Credentials) -> bool:
    """Whether nothing answers at ``address`` any more."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from shardless.credentials import open_channel

    with open_channel(address, credentials) as ch:
        try:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError as e:
            return e.code() == grpc.StatusCode.UNAVAILABLE
    return False


def _run_drain(args: argparse.Namespace) -> int:
    import grpc

    from nodes import admin
    from shardless.client import Client
    from shardless.credentials import open_channel
    from shardless.v1 import services_pb2 as api
    from shardless.v1 import services_pb2_grpc as rpc

    creds = admin.client_credentials(args)
    node_id, address = "", args.node
    if ":" in args.node:
        try:
            admin.parse_addresses(args.node)
        except argparse.ArgumentTypeError as e:
            print(f"shardless drain: {e}", file=sys.stderr)
            return 2
    else:
        if not args.via:
            print("shardless drain: give the node's address, or its id with --via",
                  file=sys.stderr)
            return 2
        try:
            with Client(args.via, refresh_s=None, credentials=creds) as c:
                members = {m.node_id: m.address for m in c.status().members}
        except grpc.RpcError as e:
            print(f"shardless drain: {admin.describe_rpc_error(e, ','.join(args.via), 10)}",
                  file=sys.stderr)
            return 1
        if args.node not in members:
            print(f"shardless drain: no member {args.node!r} (members: "
                  f"{', '.join(sorted(members)) or 'none'})", file=sys.stderr)
            return 1
        node_id, address = args.node, members[args.node]
    start = time.monotonic()
    try:
        with open_channel(address, creds) as ch:
            resp = rpc.ClusterServiceStub(ch).Drain(api.DrainRequest(node_id=node_id),
                                                    timeout=10)
    except grpc.RpcError as e:
        print(f"shardless drain: {address}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print(f"node {resp.node_id} ({address}) is leaving: {resp.open_transactions} open "
          f"transaction(s) get {resp.grace_seconds:g} s to finish", flush=True)
    if args.wait <= 0:
        return 0
    while time.monotonic() - start < args.wait:
        if _gone(address, creds):
            print(f"node {resp.node_id} has left after {time.monotonic() - start:.1f} s")
            return 0
        time.sleep(0.2)
    print(f"shardless drain: node {resp.node_id} still answers after {args.wait:g} s",
          file=sys.stderr)
    return 1


def _add_bench(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from nodes import bench  # light: its heavy parts are imported when it runs

    p = sub.add_parser("bench", help="measure a cluster against baselines (echo, etcd, LMDB, "
                                     "PostgreSQL) with the same clients and operations",
                       description="Measure Shardless under YCSB-style and transactional "
                                   "workloads against baselines run by the same clients; "
                                   "see docs/benchmarks.md.")
    bench.add_arguments(p)
    p.set_defaults(func=bench.run)


DESCRIPTION = ("Shardless: a shared-storage clustered database. Run nodes, a local cluster or "
               "replicas; look at a running cluster (status, members, health, locks, get, "
               "put); drain or promote; measure it.")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shardless")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """``--version``, its package metadata read only when asked (importlib.metadata costs a
    client command's start-up some 15 ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default,
                         help=help or "show program's version number and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"shardless {_version()}")  # on stdout, as argparse's own version action
        parser.exit()


def _command_of(argv: Sequence[str]) -> str:
    """The command ``argv`` names (its first word that is not an option; "" if none)."""
    return next((a for a in argv if not a.startswith("-")), "")


def _add_all(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from nodes import admin, backup, secadmin, up

    _add_node(sub)
    _add_replica(sub)
    p = sub.add_parser("up", help="run a local cluster: an embedded etcd and N nodes")
    up.add_arguments(p)
    p.set_defaults(func=up.run)
    admin.add_commands(sub)
    _add_drain(sub)
    _add_promote(sub)
    _add_bench(sub)
    secadmin.add_commands(sub)
    backup.add_commands(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``shardless`` command."""
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="shardless", description=DESCRIPTION)
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)
    if _command_of(raw_argv) in BACKUP_COMMANDS:
        # Only their parsers (the same as in the whole command): see BACKUP_COMMANDS.
        from nodes import backup

        backup.add_commands(sub)
    else:
        _add_all(sub)
    args = parser.parse_args(raw_argv)
    args.raw_argv = raw_argv
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
    return int(args.func(args))
