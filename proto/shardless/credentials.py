"""How a client proves who it is and checks whom it talks to: TLS and a token.

Owns: :class:`Credentials` (a CA to verify the nodes by, an optional client certificate for
mutual TLS, an optional bearer token), where they are found (arguments, a certificates
directory, the environment) and :func:`open_channel`, the one way the helper, the ``shardless``
commands and the nodes' own calls to each other make a channel.

The wire rules, for a client in any language (docs/security.md):
- TLS: verify the node's certificate against the cluster's CA (``ca.crt``). Certificates made
  by ``shardless cert`` or ``shardless up`` name every node ``shardless-node`` (beside its
  addresses), so a client of several nodes checks that one name (gRPC's
  ``grpc.ssl_target_name_override``).
- A token goes in the ``authorization`` metadata as ``Bearer <token>`` on every call.
- With mutual TLS (a node run with ``--tls-client-auth``), a client certificate whose common
  name is a user's name authenticates as that user, with no token.

The environment, read by :meth:`Credentials.from_env` (and so by ``shardless.connect`` when no
credentials are passed): ``SHARDLESS_CERTS_DIR`` (a directory with ``ca.crt``, and
``client.<user>.crt``/``.key`` for mutual TLS), ``SHARDLESS_USER`` (default ``root``),
``SHARDLESS_TOKEN``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

ENV_CERTS_DIR = "SHARDLESS_CERTS_DIR"
ENV_USER = "SHARDLESS_USER"
ENV_TOKEN = "SHARDLESS_TOKEN"
DEFAULT_SERVER_NAME = "shardless-node"
"""The name every node certificate made by ``shardless cert`` carries (a DNS SAN)."""
AUTH_HEADER = "authorization"


@dataclass(frozen=True)
class Credentials:
    """What a client presents and trusts. All empty: plaintext, anonymous.

    ``ca``: PEM of the CA the nodes' certificates are checked against (TLS on when set).
    ``cert``/``key``: a client certificate and its key (mutual TLS). ``token``: a bearer
    token. ``server_name``: the name checked in the nodes' certificates.
    """

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    token: str = ""
    server_name: str = DEFAULT_SERVER_NAME

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        if self.cert is not None and self.ca is None:
            raise ValueError("a client certificate needs the CA (mutual TLS is TLS)")
        if any(c in self.token for c in "\r\n"):
            raise ValueError("the token must be one line")

    @property
    def tls(self) -> bool:
        return self.ca is not None

    def __repr__(self) -> str:  # never print a token or a key
        return (f"Credentials(tls={self.tls}, client_cert={self.cert is not None}, "
                f"token={'yes' if self.token else 'no'}, server_name={self.server_name!r})")

    def with_token(self, token: str) -> Credentials:
        return Credentials(self.ca, self.cert, self.key, token, self.server_name)

    @classmethod
    def from_certs_dir(cls, certs_dir: str | os.PathLike[str], *, user: str = "root",
                       token: str = "") -> Credentials:
        """``ca.crt`` from ``certs_dir``, and ``client.<user>.crt``/``.key`` when both exist.

        Raises:
            ValueError: the directory has no ``ca.crt``.
        """
        d = Path(certs_dir)
        ca = d / "ca.crt"
        if not ca.is_file():
            raise ValueError(f"no CA certificate at {ca}")
        cert, key = d / f"client.{user}.crt", d / f"client.{user}.key"
        have = cert.is_file() and key.is_file()
        return cls(ca=ca.read_bytes(), cert=cert.read_bytes() if have else None,
                   key=key.read_bytes() if have else None, token=token)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Credentials:
        """From ``SHARDLESS_CERTS_DIR``, ``SHARDLESS_USER`` and ``SHARDLESS_TOKEN``; empty
        (plaintext, anonymous) when none is set."""
        env = os.environ if environ is None else environ
        token = env.get(ENV_TOKEN, "").strip()
        certs = env.get(ENV_CERTS_DIR, "")
        if certs:
            return cls.from_certs_dir(certs, user=env.get(ENV_USER, "") or "root", token=token)
        return cls(token=token)


NO_CREDENTIALS = Credentials()


def open_channel(target: str, credentials: Credentials | None = None,
                 options: Sequence[tuple[str, Any]] = (),
                 token_source: Callable[[], str] | None = None) -> grpc.Channel:
    """A channel to ``target`` with these credentials (None: :meth:`Credentials.from_env`):
    TLS when they have a CA, the token on every call when they have one. ``token_source``,
    if given, is asked for the token at each call instead (the nodes' own token, which may be
    made after the channel)."""
    creds = Credentials.from_env() if credentials is None else credentials
    opts = list(options)
    if creds.tls:
        opts.append(("grpc.ssl_target_name_override", creds.server_name))
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(
            root_certificates=creds.ca, private_key=creds.key, certificate_chain=creds.cert),
            options=opts)
    else:
        channel = grpc.insecure_channel(target, options=opts)
    if token_source is not None:
        channel = grpc.intercept_channel(channel, _TokenInterceptor(token_source))
    elif creds.token:
        token = creds.token
        channel = grpc.intercept_channel(channel, _TokenInterceptor(lambda: token))
    return channel


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, metadata: list[tuple[str, str]]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call."""

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        token = self._token()
        if not token:
            return details
        metadata = [m for m in (details.metadata or ()) if m[0] != AUTH_HEADER]
        return _CallDetails(details, [*metadata, (AUTH_HEADER, f"Bearer {token}")])

    def _call(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails,
              request: Any) -> Any:
        return continuation(self._details(details), request)

    intercept_unary_unary = _call
    intercept_unary_stream = _call
    intercept_stream_unary = _call
    intercept_stream_stream = _call
