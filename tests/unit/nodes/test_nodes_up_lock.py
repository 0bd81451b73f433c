"""Unit tests of the data-directory lock of ``shardless up`` (nodes/up.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodes.up import LOCK_FILE, DataDirLocked, lock_data_dir


def test_a_second_lock_of_a_data_directory_is_refused_naming_the_holder(tmp_path: Path) -> None:
    """While one holder has the lock, another attempt fails with the holder's pid."""
    fd = lock_data_dir(tmp_path / "data")
    try:
        with pytest.raises(DataDirLocked) as refused:
            lock_data_dir(tmp_path / "data")
        assert refused.value.holder_pid == os.getpid()
        assert "in use by another shardless up" in str(refused.value)
        assert "--data-dir" in str(refused.value)
    finally:
        os.close(fd)


def test_the_lock_is_free_again_once_its_holder_lets_go(tmp_path: Path) -> None:
    """A lock file left behind does not block: only a held lock does."""
    os.close(lock_data_dir(tmp_path))
    assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    os.close(lock_data_dir(tmp_path))


def test_the_lock_is_not_inherited_by_children(tmp_path: Path) -> None:
    """The descriptor is close-on-exec, so nodes and etcd do not keep the directory locked."""
    fd = lock_data_dir(tmp_path)
    try:
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)
