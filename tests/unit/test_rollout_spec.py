"""Which spec changes are gated, the revision fingerprint, and the rollout spec view.

Everything here is built from the parsed API models (``api.models``): the rollout reads their
typed fields and has no defaults of its own. ``_main_*`` below are the dict-reading functions the
rollout used before (commit 70b8ae2), kept as oracles: on every spec the API accepts, the typed path
gives what they gave on the dumped spec, so no running Deployment changes its fingerprint.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import pytest

from modelplane.api import models
from modelplane.api.models import DEFAULT_IMAGE, ModelDeploymentSpec
from modelplane.rollout.analysis import AnalysisThresholds
from modelplane.rollout.spec import (
    RolloutSpec,
    Step,
    gated_fields,
    needs_gated_rollout,
    revision_fingerprint,
    rollout_spec_from_api,
    spec_with_gated,
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


def parse(raw: Mapping[str, Any]) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(dict(raw))


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
    old, new = parse(BASE), parse(changed(path, value))
    assert needs_gated_rollout(old, new) is gated
    assert (revision_fingerprint(old) != revision_fingerprint(new)) is gated


def test_defaults_match_explicit_values() -> None:
    assert not needs_gated_rollout(
        parse({"model": {"source": "hf://x/y"}}),
        parse({"model": {"source": "hf://x/y", "revision": "main"},
               "engine": {"dtype": "auto", "image": DEFAULT_IMAGE}}),
    )
    assert len(revision_fingerprint(parse(BASE))) == 12


# --- the typed path gives what the dict path gave ---------------------------------------------------


def _main_gated_fields(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``rollout.spec.gated_fields`` at commit 70b8ae2, on the camelCase dump of the spec."""
    model: Mapping[str, Any] = spec.get("model") or {}
    engine: Mapping[str, Any] = spec.get("engine") or {}
    env = sorted(
        ({"name": str(e.get("name")), "value": str(e.get("value", ""))} for e in engine.get("env") or []),
        key=lambda e: e["name"],
    )
    return {
        "model": {"source": model.get("source"), "revision": model.get("revision") or "main"},
        "engine": {
            "image": engine.get("image") or DEFAULT_IMAGE,
            "quantization": engine.get("quantization"),
            "dtype": engine.get("dtype") or "auto",
            "maxModelLen": engine.get("maxModelLen"),
            "extraArgs": [str(a) for a in engine.get("extraArgs") or []],
            "env": env,
        },
    }


def _main_fingerprint(spec: Mapping[str, Any]) -> str:
    canonical = json.dumps(_main_gated_fields(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


SPECS = {
    "minimal": {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"}},
    "base": BASE,
    "every-gated-field": {
        "model": {"source": "s3://bucket/ft-7", "revision": "r7"},
        "engine": {"image": "vllm/vllm-openai:v0.11.0", "quantization": "fp8", "dtype": "bfloat16",
                   "maxModelLen": 4096, "extraArgs": ["--chat-template", "x.jinja", "--enforce-eager"],
                   "env": [{"name": "Z", "value": ""},
                           {"name": "VLLM_ATTENTION_BACKEND", "value": "FLASHINFER"}]},
    },
    "env-without-value": {"model": {"source": "pvc://weights/llama"}, "engine": {"env": [{"name": "A"}]}},
    "awq-float16": {"model": {"source": "hf://a/b-AWQ"},
                    "engine": {"quantization": "awq", "dtype": "float16"}},
}


@pytest.mark.parametrize("raw", SPECS.values(), ids=SPECS.keys())
def test_the_typed_gated_fields_are_the_dict_paths(raw: dict[str, Any]) -> None:
    spec = parse(raw)
    dumped = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert gated_fields(spec) == _main_gated_fields(dumped) == _main_gated_fields(raw)
    assert revision_fingerprint(spec) == _main_fingerprint(dumped)


@pytest.mark.parametrize(("raw", "fingerprint"), [
    ({"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"}}, "fe519acaea51"),
    ({"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": "0e9e39f"},
      "engine": {"image": "vllm/vllm-openai:v0.32.0", "quantization": "fp8", "dtype": "bfloat16",
                 "maxModelLen": 16384, "extraArgs": ["--enable-prefix-caching"],
                 "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]}}, "f2fb64e364bf"),
], ids=["minimal", "every-gated-field"])
def test_fingerprints_are_those_running_deployments_carry(raw: dict[str, Any], fingerprint: str) -> None:
    # Computed by the operator before the typed path (70b8ae2): Deployments in clusters carry them,
    # and a different value would start a rollout of every ModelDeployment after an upgrade.
    assert revision_fingerprint(parse(raw)) == fingerprint


def test_a_snapshot_brings_back_the_gated_fields_only() -> None:
    spec_a = parse(BASE)
    spec_b = parse(changed("model.revision", "rev-b") | {"scaling": {"minReplicas": 2, "maxReplicas": 3}})
    spec_b = parse(spec_b.model_dump(by_alias=True, exclude_none=True)
                   | {"engine": {"extraArgs": ["--enforce-eager"]}})
    rendered = spec_with_gated(spec_b, json.loads(json.dumps(gated_fields(spec_a))))
    assert rendered.model.revision == "0e9e39f" and rendered.engine.extra_args == ["--enable-prefix-caching"]
    assert revision_fingerprint(rendered) == revision_fingerprint(spec_a)
    assert rendered.scaling == spec_b.scaling  # direct fields follow the spec


# --- spec.rollout -----------------------------------------------------------------------------------


def _main_rollout_spec(rollout: Mapping[str, Any]) -> RolloutSpec | None:
    """``driver.rollout_spec`` + ``RolloutSpec.from_spec`` at commit 70b8ae2, on the dumped ``rollout``."""
    steps = tuple(Step(int(s["weight"]), models.duration_seconds(s["pause"]) if s.get("pause") else 0.0)
                  for s in rollout.get("steps") or [])
    ev = rollout.get("evaluation") or {}

    def get(key: str, default: float) -> float:
        return float(default if ev.get(key) is None else ev[key])

    parsed = RolloutSpec(steps=steps, evaluation=bool(ev.get("suiteRef") or ev.get("evaluator")),
                         analysis=bool(ev.get("analysis")), min_score=get("minScore", 0.0),
                         max_regression=get("maxRegression", 0.02), confidence=get("confidence", 0.95),
                         max_error_rate=get("maxErrorRate", 0.05))
    return parsed if parsed.steps or parsed.evaluation else None


ROLLOUTS = {
    "none": {},
    "steps-only": {"steps": [{"weight": 10, "pause": "30s"}, {"weight": 50, "pause": "1h30m"}]},
    "default-pause": {"steps": [{"weight": 25}]},
    "gate-defaults": {"evaluation": {"suiteRef": {"configMap": "e"}}},
    "gate-set": {"steps": [{"weight": 10, "pause": "5m"}, {"weight": 50}],
                 "evaluation": {"suiteRef": {"configMap": "evals"}, "minScore": 0.85, "maxRegression": 0.0,
                                "confidence": 0.9, "maxErrorRate": 0.1, "analysis": {"maxErrorRate": 0.01}}},
    "evaluator": {"evaluation": {"evaluator": {"image": "lm-eval:1"},
                                 "analysis": {"maxTTFTSecondsP95": 2.0}}},
    "analysis-without-thresholds": {"steps": [{"weight": 50}],
                                    "evaluation": {"suiteRef": {"configMap": "e"}, "analysis": {}}},
}


@pytest.mark.parametrize("raw", ROLLOUTS.values(), ids=ROLLOUTS.keys())
def test_the_typed_rollout_spec_is_the_dict_paths(raw: dict[str, Any]) -> None:
    rollout = models.RolloutSpec.model_validate(raw)
    dumped = rollout.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert rollout_spec_from_api(rollout) == _main_rollout_spec(dumped)


def test_the_gate_settings_are_read_from_the_spec() -> None:
    spec = rollout_spec_from_api(models.RolloutSpec.model_validate(ROLLOUTS["gate-set"]))
    assert spec == RolloutSpec(steps=(Step(10, 300), Step(50, 300)), evaluation=True, analysis=True,
                               min_score=0.85, max_regression=0.0, confidence=0.9,
                               max_error_rate=0.1)  # the suite's request errors, not analysis.maxErrorRate


API_DEFAULTS = [
    pytest.param(lambda r: r.steps[0].pause_seconds,
                 models.duration_seconds(models.RolloutStep.model_fields["pause"].default), id="step-pause"),
    pytest.param(lambda r: r.max_regression, models.EvaluationSpec.model_fields["max_regression"].default,
                 id="maxRegression"),
    pytest.param(lambda r: r.confidence, models.EvaluationSpec.model_fields["confidence"].default,
                 id="confidence"),
    pytest.param(lambda r: r.max_error_rate, models.EvaluationSpec.model_fields["max_error_rate"].default,
                 id="maxErrorRate"),
]


@pytest.mark.parametrize(("read", "default"), API_DEFAULTS)
def test_an_unset_field_is_the_apis_default(read: Any, default: float) -> None:
    # Before the typed path a step without ``pause`` lasted 0 s in the rollout and 5m in the API.
    for rollout in ({"steps": [{"weight": 10}], "evaluation": {"suiteRef": {"configMap": "e"}}},
                    {"steps": [{"weight": 10}]}):
        parsed = rollout_spec_from_api(models.RolloutSpec.model_validate(rollout))
        assert parsed is not None and read(parsed) == default


def test_without_a_gate_there_is_no_rollout_spec() -> None:
    assert rollout_spec_from_api(models.RolloutSpec()) is None
    assert parse({"model": {"source": "hf://a/b"}}).rollout == models.RolloutSpec()


@pytest.mark.parametrize(("analysis", "error_rate", "ttft"), [
    (None, None, None), ({}, None, None), ({"maxErrorRate": 0.02, "maxTTFTSecondsP95": 1.0}, 0.02, 1.0),
    ({"maxTTFTSecondsP95": 0.5}, None, 0.5)], ids=["none", "empty", "both", "ttft"])
def test_analysis_thresholds_from_the_parsed_spec(analysis: dict[str, Any] | None, error_rate: float | None,
                                                  ttft: float | None) -> None:
    parsed = models.AnalysisSpec.model_validate(analysis) if analysis is not None else None
    limits = AnalysisThresholds.from_api(parsed)
    assert (limits.max_error_rate, limits.max_ttft_p95) == (error_rate, ttft)
    assert limits.min_requests == AnalysisThresholds().min_requests  # the operator's own settings stay


@pytest.mark.parametrize(("parameter", "field"), [
    ("max_regression", "max_regression"), ("confidence", "confidence"), ("max_error_rate", "max_error_rate")])
def test_the_gates_own_defaults_are_the_apis(parameter: str, field: str) -> None:
    # evaluate_gate and the power tables keep defaults for direct callers; they are the API's.
    import inspect

    from modelplane.rollout import power, stats

    default = models.EvaluationSpec.model_fields[field].default
    assert inspect.signature(stats.evaluate_gate).parameters[parameter].default == default
    if parameter == "confidence":
        assert inspect.signature(power.sizing_table).parameters[parameter].default == default
