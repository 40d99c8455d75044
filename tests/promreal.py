"""A real Prometheus server (built by ``hack/prometheus/build.sh``) for the Prometheus-source e2e test.

It scrapes every second the targets the test gives it, through file service discovery: each
target gets the ``namespace`` and ``pod`` labels, as a PodMonitor of the Prometheus Operator
would set them. Setting ``targets`` rewrites the file (atomically); an empty dict stops the
scrapes, and Prometheus marks the series stale as it would for pods it no longer discovers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]


def prometheus_binary() -> Path:
    """Build or reuse the binary (the Makefile's ``binaries`` target has built it before the tests)."""
    env = dict(os.environ, PATH=f"/usr/local/go/bin:{os.environ.get('PATH', '')}")
    out = subprocess.run(["bash", str(ROOT / "hack" / "prometheus" / "build.sh")], env=env, check=True,
                         capture_output=True, text=True, timeout=1800)
    return Path(out.stdout.strip().splitlines()[-1])


class RealPrometheus:
    def __init__(self, log: Path) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="modelplane-prometheus-"))
        self._sd = self._dir / "targets.json"
        self._log = log
        self._targets: dict[tuple[str, str], str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def targets(self) -> dict[tuple[str, str], str]:
        return dict(self._targets)

    @targets.setter
    def targets(self, value: dict[tuple[str, str], str]) -> None:
        """(namespace, pod) → URL of its /metrics (http://IP:PORT/metrics)."""
        if value == self._targets and self._sd.exists():
            return
        groups = [{"targets": [url.split("//", 1)[1].split("/", 1)[0]],
                   "labels": {"namespace": ns, "pod": pod}} for (ns, pod), url in sorted(value.items())]
        tmp = self._sd.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self._sd)
        self._targets = dict(value)

    def start(self) -> RealPrometheus:
        binary = prometheus_binary()
        self.targets = {}
        config = self._dir / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [{"job_name": "vllm", "metrics_path": "/metrics",
                                "file_sd_configs": [{"files": [str(self._sd)], "refresh_interval": "1s"}]}],
        }))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        out = self._log.open("ab")
        self._proc = subprocess.Popen(
            [str(binary), f"--config.file={config}", f"--storage.tsdb.path={self._dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        proc = self._proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"Prometheus exited with {proc.returncode}; see {self._log}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_until(ready, timeout=60, what=f"Prometheus /-/ready (log: {self._log})")
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        import shutil

        shutil.rmtree(self._dir, ignore_errors=True)
