"""A copy's own identity: which volume this is, and whether it is a primary or a replica.

Owns: the one record ``keys.VOLUME_IDENTITY`` (outside the replicated key space, so a copy never
inherits another volume's identity). Does not own which volume is *the* primary of a cluster:
that is the epoch record in etcd (``nodes/epoch.py``), which names a volume by this id.

A volume gets its identity the first time a node or a replica writes it: a node on a volume
without one (a new volume, or one made before identities existed) makes it a primary; a replica
marks its copy ``replica`` before the copy is put in place. Promotion turns a replica's identity
into a primary's (with the epoch that made it one); nothing ever turns a primary back into a
replica: a superseded primary is copied again from scratch.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, replace

import msgpack

from storage import keys
from storage.errors import Corrupt
from storage.kv import Snapshot, WriteTxn

PRIMARY = "primary"
REPLICA = "replica"
ROLES = (PRIMARY, REPLICA)


@dataclass(frozen=True)
class Identity:
    """Which volume this is (``volume_id``, random, never reused), its role, and for a
    promoted replica the epoch that made it the primary."""

    volume_id: str
    role: str
    created_at: float
    epoch: int = 0

    @staticmethod
    def new(role: str) -> Identity:
        """A fresh identity for a new copy."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        return Identity(uuid.uuid4().hex[:16], role, time.time())

    def promoted(self, epoch: int) -> Identity:
        """This volume as the primary of ``epoch``."""
        return replace(self, role=PRIMARY, epoch=epoch)


def read(txn: Snapshot) -> Identity | None:
    """The volume's identity, or None if it has none yet.

    Raises:
        Corrupt: the record does not decode.
    """
    raw = txn.get(keys.VOLUME_IDENTITY)
    if raw is None:
        return None
    try:
        d = msgpack.unpackb(raw, raw=False)
        out = Identity(str(d["volume_id"]), str(d["role"]), float(d["created_at"]),
                       int(d.get("epoch", 0)))
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
        raise Corrupt(f"the volume identity does not decode: {e}") from e
    if out.role not in ROLES:
        raise Corrupt(f"the volume identity has an unknown role {out.role!r}")
    return out


def write(txn: WriteTxn, identity: Identity) -> None:
    """Store ``identity`` as the volume's (in write transaction ``txn``)."""
    txn.put(keys.VOLUME_IDENTITY, msgpack.packb(asdict(identity)))
