"""Hosts for integration tests: network namespaces on one bridge, each with its own address,
its own directory and an etcd member (root only).

Owns: creating and removing the namespaces, the bridge and the veth pairs (named after this
process, so parallel runs do not collide), one etcd cluster with a member per host, and the
network faults: :meth:`Hosts.cut` takes a host's link down (it reaches nobody and nobody
reaches it: a partition), :meth:`Hosts.heal` brings it back. Does not own the processes a test
runs on a host (they are started with ``netns`` set, and stopped by the test before
:meth:`Hosts.close`).

The test process itself sits on the bridge (``.254``), like a client on the same network.
The only path between hosts is the network: each host's processes get only that host's
directory (``Hosts.dir``).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

from nodes.etcdserver import EtcdServer, find_etcd_binary

ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380


def available() -> str | None:
    """Why hosts cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Hosts:
    """Namespaces ``names`` as hosts; see the module docstring. Use as a context manager."""

    def __init__(self, base_dir: str | os.PathLike[str], names: tuple[str, ...] = ("a", "b", "c"),
                 *, etcd_binary: str | None = None) -> None:
        self.base = Path(base_dir)
        self.names = names
        tag = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
        self.bridge = f"shb{tag}"
        self._ns = {n: f"shl{tag}{n}" for n in names}
        self._veth = {n: f"shv{tag}{n}" for n in names}
        self.subnet = f"10.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
        self._addr = {n: f"{self.subnet}.{i + 1}" for i, n in enumerate(names)}
        self.client_address = f"{self.subnet}.254"
        self.etcd: dict[str, EtcdServer] = {}
        self._etcd_binary = find_etcd_binary(etcd_binary)  # once, for every member
        self._made: list[tuple[str, str]] = []

    def netns(self, name: str) -> str:
        """The namespace of host ``name`` (for ``NodeProcess.netns``)."""
        return self._ns[name]

    def address(self, name: str) -> str:
        """The IP address of host ``name``."""
        return self._addr[name]

    def dir(self, name: str) -> Path:
        """Host ``name``'s own directory (its disk)."""
        d = self.base / f"host-{name}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def etcd_endpoints(self) -> str:
        """Every host's etcd member, ``ip:port,...``."""
        return ",".join(f"{self._addr[n]}:{ETCD_CLIENT_PORT}" for n in self.names)

    def start(self, timeout_s: float = 30.0) -> None:
        """Make the bridge, the namespaces and their links, and start the etcd cluster.

        Raises:
            subprocess.CalledProcessError: a network step failed (what was made is removed).
            EtcdServerError: etcd did not become healthy.
        """
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", self.bridge))
            _ip("addr", "add", f"{self.client_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for n in self.names:
                ns, veth = self._ns[n], self._veth[n]
                _ip("netns", "add", ns)
                self._made.append(("netns", ns))
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                self._made.append(("link", veth))
                _ip("link", "set", veth, "master", self.bridge, "up")
                _ip("-n", ns, "addr", "add", f"{self._addr[n]}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
            spec = ",".join(f"etcd-{n}=http://{self._addr[n]}:{ETCD_PEER_PORT}"
                            for n in self.names)
            for n in self.names:
                d = self.dir(n)
                m = EtcdServer(d / "etcd", ETCD_CLIENT_PORT, ETCD_PEER_PORT, name=f"etcd-{n}",
                               binary=self._etcd_binary, log_path=d / "etcd.log",
                               host=self._addr[n], initial_cluster=spec,
                               initial_cluster_token=f"shardless-hosts-{self.bridge}",
                               initial_cluster_state="new")
                m.netns = self._ns[n]
                self.etcd[n] = m
            for m in self.etcd.values():
                m.start()
            for m in self.etcd.values():
                m.wait_ready(timeout_s)
            for m in self.etcd.values():
                m.initial_cluster_state = "existing"
        except BaseException:
            self.close()
            raise

    def cut(self, name: str) -> None:
        """Take host ``name``'s link down: a partition of it from every other host and the
        test process."""
        _ip("link", "set", self._veth[name], "down")

    def heal(self, name: str) -> None:
        """Bring host ``name``'s link back."""
        _ip("link", "set", self._veth[name], "up")

    def close(self) -> None:
        """Stop the etcd members and remove the namespaces, links and bridge (the test stops
        its own processes on the hosts first)."""
        for m in self.etcd.values():
            try:
                m.stop()
            except Exception:  # keep removing the rest
                pass
        for kind, name in reversed(self._made):
            try:
                if kind == "netns":
                    _ip("netns", "del", name)
                else:
                    _ip("link", "del", name)
            except subprocess.CalledProcessError:
                pass  # a veth goes with its namespace
        self._made.clear()

    def __enter__(self) -> Hosts:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
