"""``modelplane plan -f FILE``: output formats, fleet cost lines, strict validation, exit codes 0 / 1 / 2."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelplane import cli as main_cli
from modelplane.planner import cli

FITS = """
apiVersion: v1
kind: Secret
metadata: {name: hf-token}
stringData: {HF_TOKEN: not-read}
---
apiVersion: modelplane.dev/v1alpha1
kind: ModelDeployment
metadata: {name: support-chat, namespace: team-a}
spec:
  model: {source: hf://meta-llama/Llama-3.1-8B-Instruct, credentialsSecret: hf-token}
  engine: {maxModelLen: 16384}
  resources: {gpu: {count: auto, types: [nvidia-l40s, nvidia-h100-80gb]}}
  scaling: {minReplicas: 1, maxReplicas: 8, cost: {maxHourlyUSD: 10}}
"""
DOES_NOT_FIT = FITS + """
---
apiVersion: modelplane.dev/v1alpha1
kind: ModelDeployment
metadata: {name: r1, namespace: team-b}
spec:
  model: {source: hf://deepseek-ai/DeepSeek-R1}
  resources: {gpu: {types: [nvidia-h100-80gb]}}
"""
BAD_FIELD = FITS + """
---
apiVersion: modelplane.dev/v1alpha1
kind: ModelDeployment
metadata: {name: broken, namespace: team-c}
spec:
  model: {source: hf://Qwen/Qwen3-8B}
  engine: {maxModelLen: lots}
"""


def run(tmp_path: Path, manifest: str, *extra: str) -> int:
    path = tmp_path / "deploy.yaml"
    path.write_text(manifest)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["plan", "-f", str(path), *extra])
    code: int = args.func(args)
    return code


@pytest.mark.parametrize(("manifest", "code"), [
    (FITS, 0),
    (DOES_NOT_FIT, 1),
    (BAD_FIELD, 2),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", 2),
    ("key: [unclosed\n", 2),
    ("- just\n- a list\n", 2),
], ids=["fits", "does-not-fit", "bad-field", "no-modeldeployment", "not-yaml", "not-an-object"])
def test_exit_codes(tmp_path: Path, manifest: str, code: int) -> None:
    assert run(tmp_path, manifest) == code


def test_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, DOES_NOT_FIT) == 1
    out = capsys.readouterr().out
    assert ("team-a/support-chat  hf://meta-llama/Llama-3.1-8B-Instruct  "
            "(sized from catalog (Llama-3.1-8B))") in out
    assert "plan:    fits (Fits): 1x nvidia-l40s, tensor parallel 1, $1.91/h per replica" in out
    assert "fleet:   $1.91-$15.28/h (1-8 replicas); maxHourlyUSD $10 pays for 5 replicas" in out
    assert "startup: up to 600 s" in out
    assert "team-b/r1" in out and "DOES NOT FIT (NoSingleNodeFits)" in out
    assert "16x nvidia-h100-80gb across 2 nodes" in out


def test_bad_input_names_the_document_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, BAD_FIELD) == 2
    err = capsys.readouterr().err
    assert ("document 3 (ModelDeployment team-c/broken): spec.engine.maxModelLen: "
            "Input should be a valid integer") in err


REFUSED_BY_THE_API_SERVER = [
    ("engine: {maxModelLen: 16384}", "engine: {extraArgs: [--max_model_len=131072]}",
     "spec.engine.extraArgs: extraArgs must not set --max-model-len: use spec.engine.maxModelLen"),
    ("engine: {maxModelLen: 16384}",
     "engine: {maxModelLen: 16384, env: [{name: HUGGING_FACE_HUB_TOKEN, value: x}]}",
     "spec.engine.env[0].name: HUGGING_FACE_HUB_TOKEN: "),
    ("types: [nvidia-l40s, nvidia-h100-80gb]}}", "types: [nvidia-l40s, nvidia-h100-80gb]}, memory: '-8Gi'}",
     "spec.resources.memory: must be an integer >= 0 or a non-negative quantity such as 7500m or 64Gi"),
    ("hf://meta-llama/Llama-3.1-8B-Instruct", "hf://Llama-3.1-8B-Instruct",
     "spec.model.source: malformed hf:// source"),
]


@pytest.mark.parametrize(("old", "new", "message"), REFUSED_BY_THE_API_SERVER,
                         ids=["extra-args", "secret-env", "negative-quantity", "source"])
def test_refuses_what_the_api_server_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             old: str, new: str, message: str) -> None:
    assert old in FITS
    assert run(tmp_path, FITS.replace(old, new)) == 2
    err = capsys.readouterr().err
    assert "document 2 (ModelDeployment team-a/support-chat): " in err and message in err


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_structured_output(tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    assert run(tmp_path, DOES_NOT_FIT, "-o", fmt) == 1
    out = capsys.readouterr().out
    results = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    chat, r1 = results
    assert chat["fits"] is True and chat["reasonCode"] == "Fits"
    assert chat["plan"]["gpuType"] == "nvidia-l40s" and chat["plan"]["gpusPerReplica"] == 1
    assert chat["cost"] == {"hourlyUSDPerReplica": 1.91, "replicas": {"min": 1, "max": 8},
                            "hourlyUSD": {"min": 1.91, "max": 15.28}, "maxHourlyUSD": 10.0,
                            "replicasWithinBudget": 5}
    assert r1["fits"] is False and r1["smallestShape"] == "16x nvidia-h100-80gb across 2 nodes"


def test_prices_file_changes_the_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("nvidia-h100-80gb: 1.50\nnvidia-l40s: 2.25\n")
    assert run(tmp_path, FITS, "--prices", str(prices), "-o", "json") == 0
    (chat,) = json.loads(capsys.readouterr().out)
    assert chat["plan"]["gpuType"] == "nvidia-h100-80gb" and chat["plan"]["hourlyUSDPerReplica"] == 1.5


@pytest.mark.parametrize("prices", ["nvidia-b300: 9\n", "[1, 2]\n", "nvidia-l4: cheap\n", "nvidia-l4: -1\n"],
                         ids=["unknown-type", "not-a-mapping", "not-a-number", "negative"])
def test_bad_prices_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], prices: str) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(prices)
    assert run(tmp_path, FITS, "--prices", str(path)) == 2
    assert "prices.yaml" in capsys.readouterr().err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["plan", "-f", str(tmp_path / "absent.yaml")])
    assert args.func(args) == 2
    assert "absent.yaml" in capsys.readouterr().err


def test_external_scaling_uses_spec_replicas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = FITS.replace("scaling: {minReplicas: 1, maxReplicas: 8, cost: {maxHourlyUSD: 10}}",
                            "replicas: 3\n  scaling: {mode: External}")
    assert run(tmp_path, manifest) == 0
    assert "fleet:   $5.73/h (3 replicas)" in capsys.readouterr().out


def test_registered_in_the_modelplane_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(FITS)
    assert main_cli.main(["plan", "-f", str(path), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "support-chat"


# --- issue 14: plan -f validates as the API does, and more ------------------------------------------

ONE = """
apiVersion: modelplane.dev/v1alpha1
kind: ModelDeployment
metadata: {name: chat}
spec:
  model: {source: hf://meta-llama/Llama-3.1-8B-Instruct}
  engine: {maxModelLen: 8192}
"""


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("maxModelLen: 8192", "maxModelLength: 8192", "spec.engine.maxModelLength: unknown field"),
    ("engine:", "engnie:", "spec.engnie: unknown field"),
    ("kind: ModelDeployment", "kind: ModelDeploymnet", "kind: unknown kind 'ModelDeploymnet'"),
    ("kind: ModelDeployment", "kind: ModelService", "kind: unknown kind 'ModelService'"),
    ("modelplane.dev/v1alpha1", "modelplane.dev/v1", "apiVersion: must be modelplane.dev/v1alpha1"),
    ("metadata: {name: chat}", "metadata: {name: chat, lables: {a: b}}", "metadata.lables: unknown field"),
    ("metadata: {name: chat}", "metadata: {name: chat}\nstatuss: {}", "statuss: unknown field"),
    ("metadata: {name: chat}", "metadata: {namespace: x}", "metadata.name: is required"),
    ("Llama-3.1-8B-Instruct}", "Llama-3.1-8B-Instruct, hints: {numKeyValueHeads: 64, numAttentionHeads: 32}}",
     "spec.model.hints: numKeyValueHeads must be <= numAttentionHeads"),
    ("maxModelLen: 8192", "maxModelLen: 8192, extraArgs: [--tensor-parallel-size=2]",
     "spec.engine.extraArgs: extraArgs must not set --tensor-parallel-size"),
    ("maxModelLen: 8192", "maxModelLen: 8192, extraArgs: [--enable-prefix-caching, --max-model-len=131072]",
     "spec.engine.extraArgs: extraArgs must not set --max-model-len: use spec.engine.maxModelLen"),
    ("maxModelLen: 8192", "maxModelLen: 8192, extraArgs: [--dtype, float16]",
     "spec.engine.extraArgs: extraArgs must not set --dtype: use spec.engine.dtype"),
    ("maxModelLen: 8192", "maxModelLen: 8192, extraArgs: [--pipeline-parallel-size, '2']",
     "extraArgs must not set --pipeline-parallel-size or -pp"),
    ("maxModelLen: 8192", "maxModelLen: 8192, extraArgs: [-q=fp8]", "use spec.engine.quantization"),
    ("maxModelLen: 8192", "maxModelLen: 8192, extraArgs: [--gpu-memory-utilization=0.95]",
     "use spec.engine.gpuMemoryUtilization"),
    ("maxModelLen: 8192", "maxModelLen: 8192, extraArgs: [--max-num-seqs, '512']",
     "use spec.engine.maxNumSeqs"),
], ids=["misspelt-field", "misspelt-section", "misspelt-kind", "unknown-kind", "unknown-version",
        "misspelt-metadata", "unknown-top-level", "no-name", "kv-above-heads", "tensor-parallel-flag",
        "max-model-len-flag", "dtype-flag", "pipeline-parallel-flag", "quantization-flag", "utilization-flag",
        "max-num-seqs-flag"])
def test_strict_validation(tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str,
                           problem: str) -> None:
    """Issue 14: plan -f dropped misspelt fields (a 128k plan for maxModelLength), skipped a misspelt
    kind, and planned what the API server refuses."""
    assert old in ONE
    assert run(tmp_path, ONE.replace(old, new)) == cli.EXIT_BAD_INPUT
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines == [line for line in lines if line.startswith("modelplane plan: ")], "one line per problem"
    assert any(problem in line for line in lines), captured.err
    assert "Traceback" not in captured.err and captured.out.strip() in ("", "[]")


def test_every_problem_of_a_document_gets_its_own_line(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    manifest = ONE.replace("maxModelLen: 8192",
                           "maxModelLength: 8192, maxNumSeqs: many, extraArgs: [--dtype=half]")
    assert run(tmp_path, manifest) == cli.EXIT_BAD_INPUT
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": ", 3)[-1].split(":")[0] for line in lines] == [
        "spec.engine.maxNumSeqs", "spec.engine.extraArgs", "spec.engine.maxModelLength"]


def test_other_kinds_are_still_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: 1}\n---\n"
    assert run(tmp_path, other + ONE) == cli.EXIT_FITS
    assert "default/chat" in capsys.readouterr().out


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """``modelplane plan -f x | head -1``: no BrokenPipeError traceback, the plan's exit code kept."""
    path = tmp_path / "deploy.yaml"
    path.write_text(ONE)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        done = subprocess.run([sys.executable, "-m", "modelplane.cli", "plan", "-f", str(path)],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=False)
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == cli.EXIT_FITS
