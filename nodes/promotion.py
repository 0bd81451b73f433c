"""Promotion: a replica's volume becomes the cluster's primary, and the old one is fenced.

Owns: deciding whether a replica may be promoted and starting its promotion (the epoch record
``promoting``, ``begin``, used by ``shardless promote`` and by a synchronous replica that
promotes itself), and what the promoted replica does to finish it (``finish``). Does not own
the epoch record's layout or the nodes' side of fencing (``nodes/epoch.py``).

Steps (docs/replication.md, "Promotion"):

1. ``begin``: in one etcd transaction, conditional on the epoch record and, for a synchronous
   replica, on its place in the synchronous set being unchanged (so a demotion and a promotion
   never both win), write epoch N+1 ``promoting`` naming the replica's volume, and take the
   replica out of the synchronous set.
2. The replica sees it, stops following the old primary (what it holds is final), and runs
   ``finish``: it revokes the session of every node on the old volume, waits ``fence_wait_s``
   (the TTL, for an asynchronous promotion: the old nodes that did not hear of it stop within
   a TTL of their last renewal; 0 for a synchronous one, whose old nodes cannot acknowledge
   anything the replica does not hold), marks its copy the primary of epoch N+1, and writes the
   record ``primary`` with ``start_position`` = the last position it holds.
3. Nodes on the new primary's volume start serving writes (the replica process itself turns
   into one); nodes on the old volume have stopped.

A synchronous replica may be promoted only in state ``sync`` (``nodes/replica.py``: it holds
every commit any node acknowledged). Any other replica only with ``accept_loss``; the caller is
told which positions it lacks that some node or replica reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import grpc

from lockmgr import EtcdClient, EtcdUnavailable
from nodes.epoch import PRIMARY, PROMOTING, EpochRecord, read_epoch, replace_epoch
from nodes.membership import read_members
from nodes.replication import SYNC, read_replicas, sync_entry, sync_key
from shardless.v1 import services_pb2 as api
from shardless.v1 import services_pb2_grpc as rpc

log = logging.getLogger(__name__)

FENCE_MARGIN_S = 1.0


class PromotionRefused(Exception):
    """The replica may not be promoted (the message says why and what to do)."""


@dataclass(frozen=True)
class Started:
    """A promotion begun: the record written, and what is known of the old primary's end."""

    record: EpochRecord
    synchronous: bool
    held: int  # the replica's position when the promotion began
    known_last: int  # the highest position that any node or replica reported to exist
    known_from: str  # who reported it


def known_last_position(etcd: EtcdClient, cluster: str, primary_volume: str,
                        timeout_s: float = 1.0,
                        open_channel: Callable[[str], grpc.Channel] = grpc.insecure_channel
                        ) -> tuple[int, str]:
    """The highest commit position known to exist on the primary volume: from the nodes on
    it that still answer, and from what every replica holds or was told (best effort: a
    primary whose nodes are all gone may have committed more).

    Raises:
        EtcdUnavailable: etcd did not answer.
    """
    best, who = 0, "nobody"
    for r in read_replicas(etcd, cluster):
        for pos, what in ((r.position, f"replica {r.replica_id} holds it"),
                          (r.primary_last, f"a node told replica {r.replica_id}")):
            if pos > best:
                best, who = pos, what
    for m in read_members(etcd, cluster):
        if m.volume_id and m.volume_id != primary_volume:
            continue
        try:
            with open_channel(m.address) as ch:
                st = rpc.ClusterServiceStub(ch).Status(api.StatusRequest(local_only=True),
                                                       timeout=timeout_s)
        except grpc.RpcError:
            continue
        if st.commit_position > best:
            best, who = st.commit_position, f"node {m.node_id} holds it"
    return best, who


def begin(etcd: EtcdClient, cluster: str, replica_id: str, *, accept_loss: bool, by: str,
          ttl_s: float, force: bool = False,
          open_channel: Callable[[str], grpc.Channel] = grpc.insecure_channel) -> Started:
    """Start promoting ``replica_id`` (step 1 of the module docstring).

    ``force`` takes over a promotion under way whose replica is lost for good (the record
    stuck at ``promoting``): the new record replaces it, with the same previous primary, and
    the stuck replica's volume is never the primary (should its process come back, it finds
    the record naming another volume and follows, or copies anew; its own ``finish`` fails its
    compare). Safe because a replica being promoted serves nothing as a primary until its
    ``finish`` is written, and the old primary's nodes stopped at the first record.

    Raises:
        PromotionRefused: it may not be promoted (not registered, not synchronous without
            ``accept_loss``, a promotion under way without ``force``, or a race lost).
        EtcdUnavailable: etcd did not answer.
    """
    cur = read_epoch(etcd, cluster)
    if cur is None:
        raise PromotionRefused(f"cluster {cluster} has no primary yet (no epoch record)")
    if cur.state != PRIMARY and not force:
        raise PromotionRefused(
            f"a promotion is already under way: {cur.describe()}. It finishes once replica "
            f"{cur.replica_id}'s process runs; if that replica is lost for good, promote "
            f"another with --force")
    taking_over = cur.state != PRIMARY
    old_primary = cur.previous_volume if taking_over else cur.volume_id
    rec = next((r for r in read_replicas(etcd, cluster) if r.replica_id == replica_id), None)
    if rec is None:
        raise PromotionRefused(f"replica {replica_id} is not registered (not running, or not "
                               f"of cluster {cluster}); its process must be running to be "
                               f"promoted")
    if not rec.volume_id:
        raise PromotionRefused(f"replica {replica_id} has not said which volume it holds yet "
                               f"(still copying?)")
    if rec.volume_id == cur.volume_id:
        if taking_over:
            raise PromotionRefused(f"replica {replica_id} is the one being promoted; it "
                                   f"finishes once it runs (no --force needed)")
        raise PromotionRefused(f"replica {replica_id}'s volume is the primary already")
    kv = etcd.get(sync_key(cluster, replica_id))
    state = sync_entry(kv.value)[0] if kv is not None else ""
    # A synchronous replica still in state ``sync`` holds every acknowledged commit, even
    # under a stuck promotion: demotions are conditional on the epoch, so none happened since.
    synchronous = state == SYNC
    known, who = known_last_position(etcd, cluster, old_primary, open_channel=open_channel)
    if not synchronous and not accept_loss:
        why = {"": "it is asynchronous" if rec.mode == "async" else
               "it is not in the synchronous set",
               "joining": "it is joining the synchronous set (not every node waits for it "
                          "yet)",
               "demoted": "it was demoted to asynchronous"}.get(state, f"it is {state}")
        lost = (f"positions {rec.position + 1}..{known} ({who})" if known > rec.position
                else "no position known to be missing, but commits the primary made "
                     "since its last report")
        raise PromotionRefused(
            f"replica {replica_id} may lack acknowledged commits: {why}. It holds position "
            f"{rec.position}; it would lose {lost}. Promote it anyway with --accept-loss")
    if taking_over:
        log.warning("taking over the promotion under way (%s): replica %s's volume will "
                    "never be the primary", cur.describe(), cur.replica_id)
    new = EpochRecord(cur.epoch + 1, rec.volume_id, PROMOTING, time.time(), by,
                      replica_id=replica_id, previous_volume=old_primary,
                      fence_wait_s=0.0 if synchronous else float(ttl_s) + FENCE_MARGIN_S,
                      accept_loss=not synchronous)
    also = {sync_key(cluster, replica_id): kv.mod_revision} if kv is not None else {}
    if not replace_epoch(etcd, cluster, cur.mod_revision, new, also_unchanged=also,
                         ops=[EtcdClient.delete_op(sync_key(cluster, replica_id))]):
        raise PromotionRefused("the epoch or the replica's synchronous state changed while "
                               "the promotion began (a demotion or another promotion won); "
                               "look at shardless status and try again")
    log.warning("promoting replica %s (%s, at position %d): %s", replica_id,
                "synchronous" if synchronous else "asynchronous, accepting loss",
                rec.position, new.describe())
    got = read_epoch(etcd, cluster) or new
    return Started(got, synchronous, rec.position, known, who)


def fence_old_primary(etcd: EtcdClient, cluster: str, new_volume: str) -> int:
    """Revoke the session of every member not on ``new_volume``; return how many.

    Raises:
        EtcdUnavailable: etcd did not answer.
    """
    n = 0
    for m in read_members(etcd, cluster):
        if m.volume_id == new_volume:
            continue
        try:
            etcd.revoke(m.lease_id)
            n += 1
        except EtcdUnavailable as e:
            if "not found" not in str(e):
                raise
            log.info("session %x of %s is gone already", m.lease_id, m.node_id)
    return n


def finish(etcd: EtcdClient, cluster: str, record: EpochRecord, position: int) -> EpochRecord:
    """Write the record ``primary`` with ``start_position`` (step 2's end); the caller has
    stopped following, fenced and waited.

    Raises:
        PromotionRefused: the record changed meanwhile.
        EtcdUnavailable: etcd did not answer.
    """
    final = replace(record, state=PRIMARY, start_position=position, at=time.time(),
                    fence_wait_s=0.0)
    if not replace_epoch(etcd, cluster, record.mod_revision, final):
        raise PromotionRefused("the epoch record changed while the promotion finished")
    got = read_epoch(etcd, cluster)
    if got is None:
        raise EtcdUnavailable("the epoch record vanished")
    log.warning("promotion finished: %s; its log continues after position %d",
                got.describe(), position)
    return got


def wait_finished(etcd: EtcdClient, cluster: str, epoch: int, timeout_s: float
                  ) -> EpochRecord | None:
    """Wait until epoch ``epoch`` is ``primary``; return it (None: not within ``timeout_s``,
    or another epoch came)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            rec = read_epoch(etcd, cluster)
        except EtcdUnavailable:
            rec = None
        if rec is not None and rec.epoch == epoch and rec.state == PRIMARY:
            return rec
        if rec is not None and rec.epoch > epoch:
            return None
        time.sleep(0.1)
    return None
