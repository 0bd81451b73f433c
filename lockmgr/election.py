"""Election: one leader key per cluster, held on the leader's session lease.

Owns: ``campaign`` (create ``/shardless/<cluster>/leader`` on our lease if nobody holds it),
``proclaim`` (update the value while we hold it), ``resign`` (delete it if ours), ``observe``
(who holds it) and ``wait_vacant`` (a watch that fires when the key goes). Takes a session's
lease; never grants one (as etcd's ``concurrency.Election``).

The key goes with its lease: when the leader dies, at once if a peer sees the death through its
file lock and revokes the lease, otherwise within one TTL; every other node is waiting for that
deletion and campaigns at once. Leadership is only as good as the lease: a leader whose session
is past its deadline must stop acting as leader.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from lockmgr.etcd import EtcdClient


def leader_key(cluster: str) -> bytes:
    """The leader key of a cluster."""
    return f"/shardless/{cluster}/leader".encode()


class Election:
    """The leader election of one cluster."""

    def __init__(self, client: EtcdClient, cluster: str) -> None:
        self._client = client
        self.key = leader_key(cluster)

    def campaign(self, lease_id: int, info: dict[str, Any]) -> bool:
        """Become leader if the post is vacant; return whether we hold it (now or already)."""
        created, kv = self._client.create_if_absent(self.key, json.dumps(info).encode(),
                                                    lease_id)
        return created or kv.lease_id == lease_id

    def proclaim(self, lease_id: int, info: dict[str, Any]) -> None:
        """Update the leader record (only while we hold the post)."""
        self._client.put(self.key, json.dumps(info).encode(), lease_id)

    def resign(self, lease_id: int) -> None:
        """Give the post up if it is ours."""
        kv = self._client.get(self.key)
        if kv is not None and kv.lease_id == lease_id:
            self._client.delete(self.key)

    def observe(self) -> tuple[int, dict[str, Any]] | None:
        """(lease id, record) of the current leader, or None."""
        kv = self._client.get(self.key)
        if kv is None:
            return None
        try:
            return kv.lease_id, json.loads(kv.value)
        except ValueError:
            return kv.lease_id, {}

    def wait_vacant(self, after_revision: int, wake: threading.Event
                    ) -> Callable[[], None]:
        """Set ``wake`` when the leader key is deleted after ``after_revision``; return a
        function that stops watching."""
        return self._client.watch_delete(self.key, after_revision + 1, wake.set)

    def revision(self) -> int:
        """The mod revision of the leader key (0 if vacant)."""
        kv = self._client.get(self.key)
        return 0 if kv is None else kv.mod_revision
