"""free_port: listening ports come from outside the kernel's ephemeral range, so that a server
restarted on its old port (an etcd member, a node) cannot find it taken by an outgoing
connection's local end."""

from __future__ import annotations

import socket

import pytest

from nodes import etcdserver
from nodes.etcdserver import ephemeral_port_range, free_port, listen_port_candidates


def test_candidates_leave_out_the_ephemeral_range() -> None:
    ranges = listen_port_candidates((32768, 60999))
    assert ranges == [range(10000, 32768), range(61000, 65536)]


def test_candidates_when_the_ephemeral_range_covers_one_side() -> None:
    assert listen_port_candidates((1024, 65535)) == [range(10000, 65536)]  # nothing else left
    assert listen_port_candidates((20000, 65535)) == [range(10000, 20000)]
    assert listen_port_candidates((1024, 49999)) == [range(50000, 65536)]


def test_ports_are_outside_the_ephemeral_range_distinct_and_bindable() -> None:
    low, high = ephemeral_port_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert not [p for p in ports if low <= p <= high]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", ports[-1]))


def test_a_port_in_use_is_passed_over(monkeypatch) -> None:
    monkeypatch.setattr(etcdserver, "_handed_out", type(etcdserver._handed_out)())
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        held.bind(("127.0.0.1", 0))
        held.listen()
        other.bind(("127.0.0.1", 0))
        taken, spare = held.getsockname()[1], other.getsockname()[1]
        monkeypatch.setattr(etcdserver, "listen_port_candidates", lambda: [range(taken, taken + 1)])
        with pytest.raises(OSError, match="no free TCP port"):
            free_port()
        other.close()
        monkeypatch.setattr(etcdserver, "listen_port_candidates",
                            lambda: [range(taken, taken + 1), range(spare, spare + 1)])
        assert free_port() == spare
        with pytest.raises(OSError, match="no free TCP port"):  # not twice in a row
            free_port()
