"""Bad input to the dev cluster commands ends with a clear message naming the cause and the fix,
never a hang, and starts nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def modelplane(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelplane.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env or dict(os.environ), cwd=ROOT)


def test_a_port_in_use_is_named_with_the_fix(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = modelplane("cluster", "--dir", str(tmp_path / "run"), "up", "--port", str(port))
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.stdout
    assert "--port" in result.stdout
    assert not (tmp_path / "run" / "pids").exists() or not any((tmp_path / "run" / "pids").iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--profile", "nope"], "unknown profile 'nope'"),
     (["--pod-ready-delay", "soon"], "not a duration: 'soon'")],
    ids=["unknown-profile", "bad-duration"],
)
def test_bad_options_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    result = modelplane("cluster", "--dir", str(tmp_path / "run"), "up", *args)
    assert result.returncode == 1
    assert message in result.stdout


def test_stopping_twice_is_safe(tmp_path: Path) -> None:
    for _ in range(2):
        result = modelplane("cluster", "--dir", str(tmp_path / "run"), "down")
        assert result.returncode == 0
        assert "nothing was running" in result.stderr


def test_a_missing_go_toolchain_says_how_to_get_one(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no /usr/local/go/bin, no ~/go
    result = subprocess.run(["bash", str(ROOT / "hack" / "devcluster" / "build.sh")],
                            capture_output=True, text=True, timeout=60, env=env)
    if result.returncode == 0:
        pytest.fail("build.sh found a Go toolchain on a PATH without one: " + result.stderr)
    assert result.returncode == 2
    assert "no Go toolchain on PATH" in result.stderr
