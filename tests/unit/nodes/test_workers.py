"""The argument handling of a node of several processes (``nodes/workers.py``): pure logic."""

from __future__ import annotations

from nodes.workers import strip_listen_and_id, worker_id


def test_each_workers_own_arguments_are_stripped_in_both_spellings() -> None:
    argv = ["--etcd", "127.0.0.1:2379", "--listen", "127.0.0.1:5000", "--node-id=n1",
            "--processes", "2", "--volume", "/v", "--public-listen=x:1", "--group", "g",
            "--ttl", "6"]
    assert strip_listen_and_id(argv) == ["--etcd", "127.0.0.1:2379", "--volume", "/v",
                                         "--ttl", "6"]


def test_values_equal_to_a_stripped_flag_name_are_kept_elsewhere() -> None:
    # The value of a kept flag stays with it; a stripped flag takes its value with it.
    assert strip_listen_and_id(["--volume", "/data", "--listen", "h:1"]) == ["--volume", "/data"]
    assert strip_listen_and_id([]) == []


def test_worker_ids_are_under_the_node() -> None:
    assert worker_id("n1", 0) == "n1.w0"
    assert worker_id("n1", 3) != worker_id("n2", 3)
