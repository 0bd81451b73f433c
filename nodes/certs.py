"""Certificates for a cluster: a CA, node certificates, client certificates.

Owns: making them (``shardless cert``, and ``shardless up`` for its local cluster) in the
layout every process reads (CockroachDB's): a certificates directory holding

- ``ca.crt``: the CA certificate, which every process and client trusts;
- ``node.crt``/``node.key``: the certificate nodes, replicas and etcd serve with and present to
  each other and to etcd as clients; common name ``node``, SANs ``shardless-node``
  (:data:`shardless.credentials.DEFAULT_SERVER_NAME`), ``localhost``, ``127.0.0.1``, ``::1``
  and the hosts asked for;
- ``client.<user>.crt``/``.key``: a client certificate of ``<user>`` (common name the user's
  name), for mutual TLS.

The CA's key is written elsewhere (``--ca-key``): whoever holds it can mint certificates, so it
need not sit beside the certificates that every process reads.

Uses PyCA's ``cryptography`` (the maintained Python binding of OpenSSL's primitives, and what
the Python TLS ecosystem builds on): EC P-256 keys, SHA-256 signatures, 5 years for the CA and
2 for the others.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nodes.security import NODE_COMMON_NAME
from shardless.credentials import DEFAULT_SERVER_NAME

CA_DAYS, CERT_DAYS = 5 * 365, 2 * 365


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Shardless"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_ca(certs_dir: str | os.PathLike[str], ca_key: str | os.PathLike[str]) -> None:
    """A new CA: ``ca.crt`` in ``certs_dir``, its key at ``ca_key`` (mode 0600).

    Raises:
        FileExistsError: ``ca_key`` exists (a CA is never overwritten by accident).
    """
    key_path = Path(ca_key)
    if key_path.exists():
        raise FileExistsError(f"a CA key exists at {key_path}")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(_name("Shardless CA")).issuer_name(_name("Shardless CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(key_path, _key_pem(key), secret=True)
    _write(Path(certs_dir) / "ca.crt", cert.public_bytes(serialization.Encoding.PEM),
           secret=False)


def _load_ca(certs_dir: Path, ca_key: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((certs_dir / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key} is not an EC key made by shardless cert")
    return cert, key


def _issue(certs_dir: Path, ca_key: Path, common_name: str, stem: str,
           sans: list[x509.GeneralName], usages: list[x509.ObjectIdentifier]) -> None:
    ca_cert, ca = _load_ca(certs_dir, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1))
               .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca, hashes.SHA256())
    _write(certs_dir / f"{stem}.key", _key_pem(key), secret=True)
    _write(certs_dir / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM),
           secret=False)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def create_node_cert(certs_dir: str | os.PathLike[str], ca_key: str | os.PathLike[str],
                     hosts: Sequence[str] = ()) -> None:
    """``node.crt``/``node.key``: serves nodes, replicas and etcd, and is their client
    certificate towards each other and etcd."""
    names = [DEFAULT_SERVER_NAME, "localhost", "127.0.0.1", "::1", *hosts]
    sans = [_san(h) for h in dict.fromkeys(names)]
    _issue(Path(certs_dir), Path(ca_key), NODE_COMMON_NAME, "node", sans,
           [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


def create_client_cert(certs_dir: str | os.PathLike[str], ca_key: str | os.PathLike[str],
                       user: str) -> None:
    """``client.<user>.crt``/``.key``: authenticates as ``user`` under mutual TLS."""
    if not user or user == NODE_COMMON_NAME or "/" in user:
        raise ValueError(f"not a user name for a client certificate: {user!r}")
    _issue(Path(certs_dir), Path(ca_key), user, f"client.{user}", [],
           [ExtendedKeyUsageOID.CLIENT_AUTH])
