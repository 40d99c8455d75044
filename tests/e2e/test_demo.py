"""The README's main command, in its CI mode: it ends with its summary, the model became Ready,
every request was answered, and it leaves no process behind (the operator it started is gone; a
dev cluster it found running is left running)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clusterfixtures import ClusterHandle
from tests.hfmirror import NOWHERE

pytestmark = pytest.mark.e2e


def demo_processes() -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "modelplane-demo" in cmdline or " demo --ci" in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_the_demo_runs_in_ci_mode_and_leaves_nothing_behind(cluster: ClusterHandle) -> None:
    assert cluster.dev is not None, "the demo runs on the dev cluster"
    before = cluster.dev.running_pids()
    result = subprocess.run(
        [sys.executable, "-m", "modelplane.cli", "demo", "--ci", "--duration", "25",
         "--schedule", "step:2@0,8@8"],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, MODELPLANE_HF_ENDPOINT=NOWHERE))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert any("phase Ready" in line for line in lines)
    summary = json.loads(lines[-1].removeprefix("summary: "))
    assert summary["modelReadyAfterSeconds"] is not None
    assert summary["load"]["sent"] > 20
    assert summary["load"]["errors"] == 0 and summary["requestsFailedAtProxy"] == 0
    assert summary["load"]["ok"] == summary["load"]["sent"]
    assert demo_processes() == []
    assert cluster.dev.running_pids() == before
