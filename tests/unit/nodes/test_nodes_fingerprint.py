"""Unit tests of the request digest stored with an idempotency key (nodes.server)."""

from __future__ import annotations

from nodes.server import request_fingerprint
from shardless import to_row
from shardless.v1 import services_pb2 as api


def _req(rows: list[dict], key: str = "k") -> api.WriteRowsRequest:
    return api.WriteRowsRequest(table="t", rows=[to_row(r) for r in rows], idempotency_key=key)


def test_the_same_request_has_the_same_digest_whatever_the_order_of_its_columns():
    a = _req([{"id": 1, "v": "a", "n": 2}])
    b = _req([{"n": 2, "v": "a", "id": 1}])  # map entries built in another order
    assert request_fingerprint("Upsert", a) == request_fingerprint("Upsert", b)


def test_any_difference_in_the_request_or_its_method_changes_the_digest():
    base = request_fingerprint("Upsert", _req([{"id": 1, "v": "a"}]))
    others = [
        request_fingerprint("Insert", _req([{"id": 1, "v": "a"}])),
        request_fingerprint("Upsert", _req([{"id": 1, "v": "b"}])),
        request_fingerprint("Upsert", _req([{"id": 2, "v": "a"}])),
        request_fingerprint("Upsert", _req([{"id": 1.0, "v": "a"}])),
        request_fingerprint("Upsert", _req([{"id": 1, "v": "a"}, {"id": 2, "v": "a"}])),
        request_fingerprint("Upsert", api.WriteRowsRequest(
            table="u", rows=[to_row({"id": 1, "v": "a"})], idempotency_key="k")),
    ]
    assert len({base, *others}) == len(others) + 1
