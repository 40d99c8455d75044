"""Which spec changes are gated, the revision fingerprint, durations and the rollout spec view."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from modelplane.rollout.spec import (
    RolloutSpec,
    Step,
    needs_gated_rollout,
    parse_duration,
    revision_fingerprint,
)

BASE: dict[str, Any] = {
    "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": "0e9e39f", "servedName": "chat"},
    "engine": {
        "image": "vllm/vllm-openai:v0.32.0",
        "maxModelLen": 16384,
        "extraArgs": ["--enable-prefix-caching"],
        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
    },
    "resources": {"gpu": {"count": "auto", "types": ["nvidia-l40s"]}},
    "scaling": {"minReplicas": 1, "maxReplicas": 8},
    "rollout": {"steps": [{"weight": 10, "pause": "5m"}]},
}


def changed(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return spec


@pytest.mark.parametrize(
    ("path", "value", "gated"),
    [
        pytest.param("model.revision", "abc123", True, id="model-revision"),
        pytest.param("model.source", "s3://bucket/ft-7", True, id="model-source"),
        pytest.param("engine.image", "vllm/vllm-openai:v0.12.0", True, id="engine-image"),
        pytest.param("engine.quantization", "fp8", True, id="quantization"),
        pytest.param("engine.dtype", "float16", True, id="dtype"),
        pytest.param("engine.maxModelLen", 8192, True, id="max-model-len"),
        pytest.param("engine.extraArgs", ["--chat-template", "x.jinja"], True, id="extra-args"),
        pytest.param(
            "engine.env", [{"name": "VLLM_ATTENTION_BACKEND", "value": "FLASHINFER"}], True, id="env"
        ),
        pytest.param("engine.gpuMemoryUtilization", 0.8, False, id="gpu-memory-utilization"),
        pytest.param("engine.maxNumSeqs", 64, False, id="max-num-seqs"),
        pytest.param("model.servedName", "other", False, id="served-name"),
        pytest.param("model.credentialsSecret", "hf", False, id="credentials"),
        pytest.param("resources.gpu", {"count": 2, "types": ["nvidia-h100-80gb"]}, False, id="resources"),
        pytest.param("scaling.maxReplicas", 2, False, id="scaling"),
        pytest.param("rollout.steps", [], False, id="rollout"),
        pytest.param(
            "engine.env",
            [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}],
            False,
            id="env-reordered",
        ),
        pytest.param("engine.image", None, False, id="image-default-made-implicit"),
    ],
)
def test_needs_gated_rollout(path: str, value: Any, gated: bool) -> None:
    new = changed(path, value)
    assert needs_gated_rollout(BASE, new) is gated
    assert (revision_fingerprint(BASE) != revision_fingerprint(new)) is gated


def test_defaults_match_explicit_values() -> None:
    assert not needs_gated_rollout(
        {"model": {"source": "hf://x"}},
        {"model": {"source": "hf://x", "revision": "main"}, "engine": {"dtype": "auto"}},
    )
    assert len(revision_fingerprint(BASE)) == 12


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("1.5h", 5400), ("90", 90), (45, 45), (None, 0), ("", 0)],
)
def test_parse_duration(text: str | int | None, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "m", "-3", "1d"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_rollout_spec_from_spec() -> None:
    spec = RolloutSpec.from_spec(
        {
            "steps": [{"weight": 10, "pause": "5m"}, {"weight": 50}],
            "evaluation": {
                "suiteRef": {"configMap": "evals"},
                "minScore": 0.85,
                "maxRegression": 0,
                "maxErrorRate": 0.1,
                "analysis": {"maxErrorRate": 0.01},
            },
        }
    )
    assert spec == RolloutSpec(
        steps=(Step(10, 300), Step(50, 0)),
        evaluation=True,
        analysis=True,
        min_score=0.85,
        max_regression=0.0,
        confidence=0.95,
        max_error_rate=0.1,  # the suite's request errors, not analysis.maxErrorRate
    )
    defaults = RolloutSpec.from_spec({"evaluation": {"suiteRef": {"configMap": "e"}}})
    assert defaults is not None and defaults.max_error_rate == 0.05
    assert RolloutSpec.from_spec(None) is None
    assert RolloutSpec.from_spec({}) == RolloutSpec()
    with pytest.raises(ValueError, match="weight"):
        RolloutSpec.from_spec({"steps": [{"weight": 0}]})
