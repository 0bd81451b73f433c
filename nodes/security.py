"""Who may reach a node and what they may do: TLS, users and roles, and the guard.

Owns: :class:`Security` (a process's TLS settings: a certificates directory in the layout of
``nodes/certs.py``, mutual TLS optional, TLS towards etcd), the cluster's users in etcd, the
:class:`Authority` (a process's view of them) and :class:`AuthGuard` (the server interceptor
that refuses what a caller may not do). docs/security.md is the user's account.

Users live in etcd, under ``<cluster>/auth/``:

- ``enabled``: present when authentication is on. It is a cluster setting, not a node flag,
  so that one node started without it cannot open the cluster; with it on, every call but
  health and reflection needs a known caller.
- ``internal``: the token the cluster's own processes (nodes, replicas, read-only nodes) give
  each other; readable only by whoever can read etcd (so etcd itself must be closed:
  ``--client-cert-auth``, as ``shardless up`` runs it).
- ``users/<name>``: ``{"role", "tables", "token_sha256"}``; the token itself is shown once,
  when it is made, and only its SHA-256 is kept (tokens are 32 random bytes, so a fast hash
  is enough: there is nothing to guess).

Roles, each with everything of the ones before: ``reader`` (Get, BatchGet, Scan, read-only
transactions, ListTables, DescribeTable, Status, GetOutcome), ``writer`` (row writes, Execute,
read-write transactions, reads ``for_update``, GetOutcome with ``settle``), ``admin`` (CreateTable,
DropTable, Drain, and the log and volume copies backups read: ReadLog, CopyVolume). Position
reports (ReportPosition, StreamPositions) are the cluster's own (``system``): a forged one
could make a node acknowledge a commit no replica holds. A user with ``tables`` may touch
only those tables.

A caller is known by a bearer token (``authorization: Bearer <token>``) or, on a node run with
``--tls-client-auth``, by its verified client certificate (common name: the user's name;
``node``: the cluster's own). Answers: UNAUTHENTICATED (no caller, or an unknown one),
PERMISSION_DENIED (known, not allowed).

Each process reads ``<cluster>/auth/`` when it starts (it does not serve before) and again
every :data:`AUTH_REFRESH_S`; a new, changed or removed user applies within that. While etcd
cannot be read the last view stays (a node without etcd cannot write anyway).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from lockmgr import CallObserver, EtcdClient, EtcdTls, EtcdUnavailable
from shardless.credentials import AUTH_HEADER, Credentials, open_channel

log = logging.getLogger(__name__)

AUTH_REFRESH_S = 1.0
NODE_COMMON_NAME = "node"
"""The common name of the node certificate: a caller presenting it is the cluster itself."""
_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("shardless_caller", default="")


def caller() -> str:
    """The user the current call is made by ("" when authentication is off). Set by
    :class:`AuthGuard` in the worker thread before the servicer runs (a stream's generator runs
    in that thread too, before the thread takes another call)."""
    return _CALLER.get()
READ, WRITE, ADMIN, SYSTEM = 1, 2, 3, 4
ROLES = {"reader": READ, "writer": WRITE, "admin": ADMIN}
_LEVEL_NAMES = {READ: "reader", WRITE: "writer", ADMIN: "admin", SYSTEM: "system"}
_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


# --- TLS ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Security:
    """A process's TLS settings. ``certs_dir`` empty: plaintext (``--insecure``).

    ``client_auth``: require a client certificate signed by the CA (mutual TLS).
    ``etcd_tls``: reach etcd over TLS with the node certificate (etcd endpoints given as
    ``https://``).
    """

    certs_dir: str = ""
    client_auth: bool = False
    etcd_tls: bool = False

    @property
    def tls(self) -> bool:
        return bool(self.certs_dir)

    def validated(self) -> Security:
        """Raises ValueError: a file the settings need is missing."""
        if (self.client_auth or self.etcd_tls) and not self.certs_dir:
            raise ValueError("--tls-client-auth and https:// etcd endpoints need --certs-dir")
        if self.certs_dir:
            d = Path(self.certs_dir)
            for name in ("ca.crt", "node.crt", "node.key"):
                if not (d / name).is_file():
                    raise ValueError(f"--certs-dir {d}: no {name} (make them with "
                                     f"'shardless cert')")
        return self

    def _read(self, name: str) -> bytes:
        return (Path(self.certs_dir) / name).read_bytes()

    def add_port(self, server: grpc.Server, address: str) -> int:
        """Listen on ``address``, with TLS when on; return the port."""
        if not self.tls:
            return server.add_insecure_port(address)
        creds = grpc.ssl_server_credentials(
            [(self._read("node.key"), self._read("node.crt"))],
            root_certificates=self._read("ca.crt"), require_client_auth=self.client_auth)
        return server.add_secure_port(address, creds)

    def etcd(self, endpoints: str, *, timeout_s: float,
             on_call: CallObserver | None = None) -> EtcdClient:
        """An etcd client, over TLS with the node certificate when ``etcd_tls``."""
        tls = EtcdTls(self._read("ca.crt"), self._read("node.crt"),
                      self._read("node.key")) if self.etcd_tls else None
        return EtcdClient(endpoints, timeout_s=timeout_s, tls=tls, on_call=on_call)

    def peer_credentials(self) -> Credentials:
        """What this process presents to other nodes: the CA and its node certificate."""
        if not self.tls:
            return Credentials()
        return Credentials(ca=self._read("ca.crt"), cert=self._read("node.crt"),
                           key=self._read("node.key"))


INSECURE = Security()


def wants_etcd_tls(endpoints: str) -> bool:
    """Whether etcd endpoints are given as ``https://`` (all or none)."""
    items = [e.strip() for e in endpoints.split(",") if e.strip()]
    secure = [e.startswith("https://") for e in items]
    if any(secure) and not all(secure):
        raise ValueError("etcd endpoints must be all https:// or none")
    return bool(secure) and all(secure)


# --- users in etcd ------------------------------------------------------------------------------


def _prefix(cluster: str) -> bytes:
    return f"{cluster}/auth/".encode()


def token_digest(token: str) -> str:
    """What is kept of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class User:
    """A user: a role and, if ``tables``, the only tables it may touch."""

    name: str
    role: str
    tables: tuple[str, ...] = ()
    token_sha256: str = ""

    @property
    def level(self) -> int:
        return SYSTEM if self.role == "system" else ROLES[self.role]

    def to_json(self) -> bytes:
        return json.dumps({"role": self.role, "tables": list(self.tables),
                           "token_sha256": self.token_sha256}).encode()

    @classmethod
    def from_json(cls, name: str, raw: bytes) -> User:
        d = json.loads(raw)
        return cls(name, str(d["role"]), tuple(d.get("tables") or ()),
                   str(d.get("token_sha256", "")))


SYSTEM_USER = User("(cluster)", "system")


@dataclass(frozen=True)
class AuthState:
    """What a process knows of ``<cluster>/auth/``."""

    enabled: bool = False
    internal: str = ""
    users: dict[str, User] = field(default_factory=dict)
    by_token: dict[str, User] = field(default_factory=dict)


def read_auth(etcd: EtcdClient, cluster: str) -> AuthState:
    """Raises EtcdUnavailable."""
    prefix = _prefix(cluster)
    enabled, internal, users = False, "", {}
    for kv in etcd.get_prefix(prefix):
        rest = kv.key[len(prefix):].decode()
        if rest == "enabled":
            enabled = True
        elif rest == "internal":
            internal = kv.value.decode()
        elif rest.startswith("users/"):
            name = rest.removeprefix("users/")
            try:
                users[name] = User.from_json(name, kv.value)
            except (ValueError, KeyError, TypeError) as e:
                log.warning("auth: user record %s is malformed (%s); ignored", name, e)
    by_token = {u.token_sha256: u for u in users.values() if u.token_sha256}
    return AuthState(enabled, internal, users, by_token)


def _check_name(name: str) -> None:
    if not name or "/" in name or name == NODE_COMMON_NAME or not name.isprintable():
        raise ValueError(f"not a user name: {name!r} (printable, no '/', not "
                         f"{NODE_COMMON_NAME!r})")


def enable(etcd: EtcdClient, cluster: str) -> None:
    """Turn authentication on (making the cluster's internal token the first time)."""
    p = _prefix(cluster)
    etcd.create_if_absent(p + b"internal", secrets.token_urlsafe(32).encode(), 0)
    etcd.put(p + b"enabled", b"1")


def disable(etcd: EtcdClient, cluster: str) -> None:
    etcd.delete(_prefix(cluster) + b"enabled")


def put_user(etcd: EtcdClient, cluster: str, name: str, role: str,
             tables: Iterable[str] = (), *, new_token: bool = True) -> str:
    """Add a user, or change one (its role and tables; a new token if ``new_token``, else
    its old one stays). Returns the new token ("" if none was made).

    Raises:
        ValueError: a bad name or role, or no such user to keep the token of.
    """
    _check_name(name)
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    key = _prefix(cluster) + b"users/" + name.encode()
    token, sha = "", ""
    if new_token:
        token = secrets.token_urlsafe(32)
        sha = token_digest(token)
    else:
        old = etcd.get(key)
        if old is None:
            raise ValueError(f"no user {name!r}")
        sha = User.from_json(name, old.value).token_sha256
    etcd.put(key, User(name, role, tuple(tables), sha).to_json())
    return token


def remove_user(etcd: EtcdClient, cluster: str, name: str) -> bool:
    return etcd.delete(_prefix(cluster) + b"users/" + name.encode())


# --- a process's view ---------------------------------------------------------------------------


class Authority:
    """A process's view of the cluster's users, read at start and every ``refresh_s``."""

    def __init__(self, etcd: Callable[[], EtcdClient], cluster: str, *,
                 refresh_s: float = AUTH_REFRESH_S) -> None:
        self._etcd = etcd
        self.cluster = cluster
        self.refresh_s = refresh_s
        self.state = AuthState()
        self._stopped = threading.Event()

    def start(self) -> None:
        """Read the users once (raises EtcdUnavailable), then keep reading them."""
        self.state = read_auth(self._etcd(), self.cluster)
        if self.state.enabled:
            log.info("authentication is on (%d users)", len(self.state.users))
        threading.Thread(target=self._loop, name="auth", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self) -> None:
        # Nothing may end this thread but stop(): the process would go on with the users it
        # knew then (a removed user's token still let in, a new user refused, for ever).
        while not self._stopped.wait(self.refresh_s):
            try:
                new = read_auth(self._etcd(), self.cluster)
            except EtcdUnavailable:
                continue
            except Exception as e:  # e.g. a malformed key or value under the prefix
                log.warning("auth: reading the users failed: %r", e)
                continue
            if new.enabled != self.state.enabled:
                log.warning("authentication turned %s", "on" if new.enabled else "off")
            self.state = new

    def internal_token(self) -> str:
        """The token this process gives other nodes ("" while authentication is off)."""
        return self.state.internal

    def channel(self, security: Security, target: str,
                options: Iterable[tuple[str, Any]] = ()) -> grpc.Channel:
        """A channel to another process of the cluster, as the cluster's own."""
        return open_channel(target, security.peer_credentials(), list(options),
                            token_source=self.internal_token)


# --- the guard ----------------------------------------------------------------------------------

_S = "/shardless.v1."
_NEEDS: dict[str, int] = {
    _S + "TableService/CreateTable": ADMIN, _S + "TableService/DropTable": ADMIN,
    _S + "TableService/ListTables": READ, _S + "TableService/DescribeTable": READ,
    _S + "RowService/Get": READ, _S + "RowService/BatchGet": READ,
    _S + "RowService/Scan": READ,
    _S + "RowService/Insert": WRITE, _S + "RowService/Upsert": WRITE,
    _S + "RowService/Update": WRITE, _S + "RowService/Delete": WRITE,
    _S + "RowService/Write": WRITE,
    _S + "TransactionService/Execute": READ, _S + "TransactionService/Begin": READ,
    _S + "TransactionService/Commit": READ, _S + "TransactionService/Rollback": READ,
    _S + "TransactionService/GetOutcome": READ,
    _S + "ChangeService/Watch": READ, _S + "ChangeService/Hold": READ,
    _S + "ChangeService/Release": READ,
    _S + "ClusterService/Status": READ, _S + "ClusterService/Drain": ADMIN,
    _S + "ClusterService/ReadLog": ADMIN, _S + "ClusterService/CopyVolume": ADMIN,
    _S + "ClusterService/ReportPosition": SYSTEM,
    _S + "ClusterService/StreamPositions": SYSTEM,
}


def needs(method: str, request: Any) -> int:
    """The level a call needs: its method's, raised by what the request asks (a lock, a write,
    a settle). A method not listed needs ``system``."""
    level = _NEEDS.get(method, SYSTEM)
    if level != READ or request is None:
        return level
    if getattr(request, "for_update", False) or getattr(request, "settle", False):
        return WRITE
    if method.endswith("/Begin") and not request.read_only:
        return WRITE
    if method.endswith("/Execute") and len(request.writes):
        return WRITE
    return level


def tables_of(request: Any) -> set[str]:
    """The tables a request names."""
    if request is None:
        return set()
    fields = request.DESCRIPTOR.fields_by_name
    out: set[str] = set()
    if "table" in fields:
        out.add(request.table)
    if "name" in fields and request.DESCRIPTOR.name in ("DropTableRequest",
                                                         "DescribeTableRequest"):
        out.add(request.name)
    if "schema" in fields and request.DESCRIPTOR.name == "CreateTableRequest":
        out.add(request.schema.name)
    for many in ("mutations", "conditions", "reads", "writes"):
        if many in fields:
            out.update(m.table for m in getattr(request, many))
    out.discard("")
    return out


class AuthGuard(grpc.ServerInterceptor):
    """Refuses a call whose caller is unknown (UNAUTHENTICATED) or not allowed
    (PERMISSION_DENIED), while the authority says authentication is on. Health and reflection
    are open. Install after ``DecodeGuard`` (it reads the decoded request)."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        state = self.authority.state
        token = ""
        for k, v in handler_call_details.invocation_metadata or ():
            if k == AUTH_HEADER:
                token = v.removeprefix("Bearer ").strip() if isinstance(v, str) else ""
        check = _Check(state, method, token)
        if handler.unary_unary is not None:
            uu = handler.unary_unary
            return handler._replace(unary_unary=lambda r, c: uu(check(r, c), c))
        if handler.unary_stream is not None:
            us = handler.unary_stream
            return handler._replace(unary_stream=lambda r, c: us(check(r, c), c))
        if handler.stream_unary is not None:
            su = handler.stream_unary

            def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                check(None, context)
                return su(requests, context)
            return handler._replace(stream_unary=stream_unary)
        ss = handler.stream_stream

        def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            check(None, context)
            return ss(requests, context)
        return handler._replace(stream_stream=stream_stream)


class _Check:
    """The check of one call: who calls (token or certificate), and may they."""

    def __init__(self, state: AuthState, method: str, token: str) -> None:
        self.state, self.method, self.token = state, method, token

    def _caller(self, context: grpc.ServicerContext) -> User:
        s = self.state
        if self.token:
            if s.internal and hmac.compare_digest(self.token, s.internal):
                return SYSTEM_USER
            user = s.by_token.get(token_digest(self.token))
            if user is None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown token")
            return user  # type: ignore[return-value]
        names = context.auth_context().get("x509_common_name") or []
        if names:  # only verified certificates get here (the node requires them)
            name = names[0].decode(errors="replace")
            if name == NODE_COMMON_NAME:
                return SYSTEM_USER
            user = s.users.get(name)
            if user is None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED,
                              f"no user {name!r} (the client certificate's name)")
            return user  # type: ignore[return-value]
        context.abort(grpc.StatusCode.UNAUTHENTICATED,
                      "authentication is on: send a token (metadata 'authorization: Bearer "
                      "<token>') or a client certificate")
        raise AssertionError("unreachable")

    def __call__(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not self.state.enabled:
            _CALLER.set("")
            return request
        user = self._caller(context)
        _CALLER.set(user.name)
        need = needs(self.method, request)
        short = self.method.rsplit("/", 1)[-1]
        if user.level < need:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"user {user.name!r} (role {user.role}) may not call {short} "
                          f"(needs {_LEVEL_NAMES[need]})")
        if user.tables and user.level < SYSTEM:
            outside = sorted(tables_of(request) - set(user.tables))
            if outside:
                context.abort(grpc.StatusCode.PERMISSION_DENIED,
                              f"user {user.name!r} has no grant on table {outside[0]!r}")
        return request
