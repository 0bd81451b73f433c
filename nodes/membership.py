"""This node's place in the cluster: its session, its member key, and the view of the others.

Owns: starting the session (one etcd lease for the process), writing the member key
``/shardless/<cluster>/members/<node id>`` on that lease, starting a new session when the old one
is lost, and reading the member list. Does not own: the lease mechanics (``lockmgr.Session``).

Because the member key lives on the session lease, a node that dies without a word leaves the
member list within one lease TTL; a node that stops cleanly revokes its lease and leaves at once.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lockmgr import EtcdClient, EtcdUnavailable, Session, SessionExpired

log = logging.getLogger(__name__)


def cluster_prefix(cluster: str) -> bytes:
    """Prefix of every etcd key of one cluster."""
    return f"/shardless/{cluster}/".encode()


def members_prefix(cluster: str) -> bytes:
    """Prefix of the member keys of one cluster."""
    return cluster_prefix(cluster) + b"members/"


def member_key(cluster: str, node_id: str) -> bytes:
    """Key of one node's member record."""
    return members_prefix(cluster) + node_id.encode()


@dataclass(frozen=True)
class MemberInfo:
    """One member as its key records it."""

    node_id: str
    address: str
    pid: int
    started_at: float
    lease_id: int
    group: str = ""  # the node this process belongs to, if it is one of a node's processes
    public_address: str = ""  # ... and that node's shared address
    volume_id: str = ""  # the volume it serves (``storage/volume.py``; empty: before epochs)


def read_members(client: EtcdClient, cluster: str) -> list[MemberInfo]:
    """Every member of ``cluster`` whose key is in etcd, by node id.

    Raises:
        EtcdUnavailable: etcd did not answer.
    """
    out = []
    for kv in client.get_prefix(members_prefix(cluster)):
        try:
            d = json.loads(kv.value)
            out.append(MemberInfo(str(d["node_id"]), str(d["address"]), int(d["pid"]),
                                  float(d["started_at"]), kv.lease_id,
                                  str(d.get("group", "")), str(d.get("public", "")),
                                  str(d.get("volume", ""))))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed member key %r", kv.key)
    return out


class Membership:
    """The node's session and member key, renewed for the node's whole life."""

    def __init__(self, client: EtcdClient, *, cluster: str, node_id: str, address: str,
                 ttl_s: int, etcd_timeout_s: float, group: str = "", public_address: str = "",
                 on_started: Callable[[Session], None] = lambda s: None,
                 on_lost: Callable[[Session], None] = lambda s: None,
                 before_close: Callable[[Session], None] = lambda s: None,
                 volume_id: str = "",
                 epoch_compare: Callable[[], dict[bytes, int]] | None = None,
                 epoch_changed: Callable[[], None] = lambda: None) -> None:
        self._client = client
        self.volume_id = volume_id
        self._epoch_compare = epoch_compare
        self._epoch_changed = epoch_changed
        self.cluster = cluster
        self.node_id = node_id
        self.address = address
        self.group = group
        self.public_address = public_address
        self.ttl_s = ttl_s
        self.etcd_timeout_s = etcd_timeout_s
        self.started_at = time.time()
        self.session: Session | None = None
        self.sessions_started = 0
        self._on_started = on_started
        self._on_lost = on_lost
        self._before_close = before_close
        self._closing = threading.Event()
        self._withdrawn = False
        self._thread: threading.Thread | None = None

    def _record(self, lease_id: int) -> bytes:
        return json.dumps({"node_id": self.node_id, "address": self.address,
                           "pid": os.getpid(), "started_at": self.started_at,
                           "lease": lease_id, "group": self.group,
                           "public": self.public_address, "volume": self.volume_id}).encode()

    def _open_session(self) -> Session:
        session = Session(self._client, self.ttl_s, etcd_timeout_s=self.etcd_timeout_s)
        try:
            self._on_started(session)
            if not self._withdrawn:
                self._write_member_key(session)
        except (EtcdUnavailable, SessionExpired):
            session.close()
            raise EtcdUnavailable("could not register the new session") from None
        except BaseException:
            session.close()
            raise
        self.sessions_started += 1
        log.info("session %x started; %s", session.lease_id,
                 "not registered (leaving)" if self._withdrawn else "member key written")
        return session

    def _write_member_key(self, session: Session) -> None:
        """Write the member key on the session, under the epoch this node runs in: the write
        fails if the epoch record changed since the node read it (``nodes/epoch.py``), so a
        promotion that revokes the old primary's members misses none.

        Raises:
            EtcdUnavailable: etcd did not answer, or the epoch changed (read again).
            Superseded: this node's volume is no longer the primary.
        """
        key, value = member_key(self.cluster, self.node_id), self._record(session.lease_id)
        if self._epoch_compare is None:
            self._client.put(key, value, session.lease_id)
            return
        if not self._client.txn_if_unchanged(
                self._epoch_compare(), [self._client.put_op(key, value, session.lease_id)]):
            self._epoch_changed()  # raises Superseded if it names another volume now
            raise EtcdUnavailable("the epoch record changed while the session started")

    def start(self, wait_s: float) -> None:
        """Open the first session, retrying while etcd is unreachable for up to ``wait_s``.

        Raises:
            EtcdUnavailable: etcd stayed unreachable.
        """
        deadline = time.monotonic() + wait_s
        delay = 0.1
        while True:
            try:
                self.session = self._open_session()
                break
            except EtcdUnavailable as e:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("etcd not reachable yet (%s); retrying", e)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        self._thread = threading.Thread(target=self._supervise, name="membership", daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        delay = 0.1
        while not self._closing.is_set():
            session = self.session
            assert session is not None
            session.done.wait(timeout=0.5)
            if self._closing.is_set() or not session.done.is_set():
                continue
            log.warning("session %x lost; starting a new one", session.lease_id)
            if not getattr(session, "_lost_handled", False):
                session._lost_handled = True  # type: ignore[attr-defined]
                try:
                    self._on_lost(session)
                except Exception:
                    log.exception("handling the loss of session %x failed", session.lease_id)
                session.close()  # revoke what may remain of it: its locks go at once
            try:
                self.session = self._open_session()
                delay = 0.1
            except EtcdUnavailable as e:
                log.warning("cannot start a new session yet: %s", e)
                self._closing.wait(delay)
                delay = min(delay * 2, 2.0)
            except Exception as e:  # e.g. the volume was superseded: the node is leaving
                log.warning("no new session: %s", e)
                self._closing.wait(2.0)

    def is_valid(self, lease_id: int) -> bool:
        """Whether ``lease_id`` is the current session and may still be acted on."""
        s = self.session
        return s is not None and s.lease_id == lease_id and s.is_valid()

    def expire(self, lease_id: int) -> None:
        """Give up the session ``lease_id`` (found fenced); a new one is started."""
        s = self.session
        if s is not None and s.lease_id == lease_id:
            s.expire()

    def members(self) -> list[MemberInfo]:
        """Every member whose key is in etcd, by node id.

        Raises:
            EtcdUnavailable: etcd did not answer.
        """
        return read_members(self._client, self.cluster)

    def withdraw(self) -> None:
        """Delete the member key now (clients stop sending here) but keep the session: the
        locks of the transactions still open live on it. No later session writes the key."""
        self._withdrawn = True
        try:
            self._client.delete(member_key(self.cluster, self.node_id))
        except EtcdUnavailable as e:
            log.warning("could not delete the member key (%s); it goes with the session", e)

    def close(self) -> None:
        """Stop renewing and revoke the session: the member key goes at once."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.session is not None:
            try:
                self._before_close(self.session)
            except Exception:
                log.exception("closing session %x cleanly failed", self.session.lease_id)
            self.session.close()
