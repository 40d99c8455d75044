"""The ModelDeployment models: defaults, wire names, parsing errors, and the manifests in tests/data."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane.api.models import (
    API_VERSION,
    FIELD_MANAGER,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    VERSION,
    Condition,
    ConditionStatus,
    DType,
    InvalidSpecError,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Phase,
    ScalingMode,
    duration_seconds,
    to_camel,
)

ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((ROOT / "tests" / "data" / "invalid").glob("*.yaml"))
VALID = sorted((ROOT / "tests" / "data" / "valid").glob("*.yaml")) + sorted(
    # Examples that are ModelDeployments (an example's evaluation suite is a ConfigMap).
    p for p in (ROOT / "examples").glob("*.yaml") if "kind: ModelDeployment" in p.read_text()
)


def _spec(**extra: Any) -> dict[str, Any]:
    return {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"}, **extra}


def _obj(spec: dict[str, Any], name: str = "llama") -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": "ns", "uid": "u"},
        "spec": spec,
    }


def test_constants() -> None:
    assert (GROUP, VERSION, API_VERSION, KIND, PLURAL, SHORT_NAME, FIELD_MANAGER) == (
        "modelplane.dev",
        "v1alpha1",
        "modelplane.dev/v1alpha1",
        "ModelDeployment",
        "modeldeployments",
        "md",
        "modelplane",
    )


# (python attribute path, default) for every defaulted spec field.
DEFAULTS: list[tuple[str, Any]] = [
    ("model.revision", "main"),
    ("model.served_name", None),
    ("model.credentials_secret", None),
    ("model.hints", None),
    ("engine.image", "vllm/vllm-openai:v0.11.0"),
    ("engine.max_model_len", None),
    ("engine.quantization", None),
    ("engine.dtype", DType.AUTO),
    ("engine.gpu_memory_utilization", 0.9),
    ("engine.max_num_seqs", None),
    ("engine.extra_args", []),
    ("engine.env", []),
    ("resources.gpu.count", "auto"),
    ("resources.gpu.types", None),
    ("resources.cpu", None),
    ("resources.memory", None),
    ("resources.model_cache", None),
    ("replicas", None),
    ("scaling.mode", ScalingMode.BUILTIN),
    ("scaling.min_replicas", 1),
    ("scaling.max_replicas", 4),
    ("scaling.target_queue_depth", 4.0),
    ("scaling.scale_to_zero_after", None),
    ("scaling.scale_down_delay", "5m"),
    ("scaling.cost", None),
    ("rollout.steps", []),
    ("rollout.evaluation", None),
]


@pytest.mark.parametrize(("path", "expected"), DEFAULTS, ids=[p for p, _ in DEFAULTS])
def test_spec_defaults(path: str, expected: Any) -> None:
    value: Any = ModelDeploymentSpec.model_validate(_spec())
    for attr in path.split("."):
        value = getattr(value, attr)
    assert value == expected


NESTED_DEFAULTS: list[tuple[str, dict[str, Any], str, Any]] = [
    (
        "suite-key",
        {"rollout": {"evaluation": {"suiteRef": {"configMap": "evals"}}}},
        "rollout.evaluation.suite_ref.key",
        "suite.jsonl",
    ),
    (
        "max-regression",
        {"rollout": {"evaluation": {"suiteRef": {"configMap": "evals"}}}},
        "rollout.evaluation.max_regression",
        0.02,
    ),
    (
        "confidence",
        {"rollout": {"evaluation": {"suiteRef": {"configMap": "evals"}}}},
        "rollout.evaluation.confidence",
        0.95,
    ),
    (
        "max-error-rate",
        {"rollout": {"evaluation": {"suiteRef": {"configMap": "evals"}}}},
        "rollout.evaluation.max_error_rate",
        0.05,
    ),
    (
        "concurrency",
        {"rollout": {"evaluation": {"suiteRef": {"configMap": "evals"}}}},
        "rollout.evaluation.concurrency",
        4,
    ),
    (
        "timeout",
        {"rollout": {"evaluation": {"suiteRef": {"configMap": "evals"}}}},
        "rollout.evaluation.timeout_seconds",
        60,
    ),
    (
        "min-score",
        {"rollout": {"evaluation": {"suiteRef": {"configMap": "evals"}}}},
        "rollout.evaluation.min_score",
        None,
    ),
    ("step-pause", {"rollout": {"steps": [{"weight": 10}]}}, "rollout.steps.0.pause", "5m"),
    ("env-value", {"engine": {"env": [{"name": "A"}]}}, "engine.env.0.value", ""),
    (
        "cost-ceiling",
        {"scaling": {"cost": {"targetUSDPerMillionTokens": 0.5}}},
        "scaling.cost.max_hourly_usd",
        None,
    ),
    ("cache-pvc", {"resources": {"modelCache": {"sizeLimit": "10Gi"}}}, "resources.model_cache.pvc", None),
    (
        "evaluator-args",
        {"rollout": {"evaluation": {"evaluator": {"image": "e:1"}}}},
        "rollout.evaluation.evaluator.args",
        [],
    ),
]


@pytest.mark.parametrize(
    ("case", "extra", "path", "expected"), NESTED_DEFAULTS, ids=[c[0] for c in NESTED_DEFAULTS]
)
def test_nested_defaults(case: str, extra: dict[str, Any], path: str, expected: Any) -> None:
    value: Any = ModelDeploymentSpec.model_validate(_spec(**extra))
    for attr in path.split("."):
        value = value[int(attr)] if attr.isdigit() else getattr(value, attr)
    assert value == expected


CAMEL = [
    ("max_hourly_usd", "maxHourlyUSD"),
    ("target_usd_per_million_tokens", "targetUSDPerMillionTokens"),
    ("max_ttft_seconds_p95", "maxTTFTSecondsP95"),
    ("weights_gib", "weightsGiB"),
    ("hourly_usd_per_replica", "hourlyUSDPerReplica"),
    ("gpus_per_replica", "gpusPerReplica"),
    ("source", "source"),
]


@pytest.mark.parametrize(("snake", "camel"), CAMEL, ids=[c for _, c in CAMEL])
def test_wire_names(snake: str, camel: str) -> None:
    assert to_camel(snake) == camel


def test_round_trip_by_alias_and_by_name() -> None:
    spec = ModelDeploymentSpec.model_validate(_spec(scaling={"cost": {"maxHourlyUSD": 40}}))
    dumped = spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert dumped["scaling"]["cost"] == {"maxHourlyUSD": 40.0}
    assert dumped["engine"]["gpuMemoryUtilization"] == 0.9
    assert ModelDeploymentSpec.model_validate(dumped) == spec
    by_name = ModelDeploymentSpec.model_validate(
        {"model": {"source": "hf://a/b"}, "scaling": {"min_replicas": 0, "max_replicas": 2}}
    )
    assert (by_name.scaling.min_replicas, by_name.scaling.max_replicas) == (0, 2)


def test_spec_is_frozen() -> None:
    spec = ModelDeploymentSpec.model_validate(_spec())
    with pytest.raises(ValueError, match="frozen"):
        spec.replicas = 3


def test_object_accessors() -> None:
    md = ModelDeployment.parse(_obj(_spec()))
    assert (md.name, md.namespace, md.uid, md.served_name) == ("llama", "ns", "u", "llama")
    assert md.status is None
    named = ModelDeployment.parse(_obj(_spec(model={"source": "hf://a/b", "servedName": "chat"})))
    assert named.served_name == "chat"


ERRORS = [
    ("type", _spec(scaling={"minReplicas": "2"}), "spec.scaling.minReplicas"),
    ("bool-is-not-int", _spec(scaling={"maxReplicas": True}), "spec.scaling.maxReplicas"),
    (
        "string-is-not-float",
        _spec(engine={"gpuMemoryUtilization": "0.5"}),
        "spec.engine.gpuMemoryUtilization",
    ),
    ("list-index", _spec(rollout={"steps": [{"weight": 10}, {"weight": 0}]}), "spec.rollout.steps[1].weight"),
    ("union-count", _spec(resources={"gpu": {"count": 9}}), "spec.resources.gpu.count:"),
    ("unknown-field", _spec(engine={"imag": "x"}), "spec.engine.imag"),
    ("missing", {}, "spec.model"),
]


@pytest.mark.parametrize(("case", "spec", "path"), ERRORS, ids=[c[0] for c in ERRORS])
def test_parse_error_names_field_path(case: str, spec: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        ModelDeployment.parse(_obj(spec))
    assert path in str(info.value)
    assert info.value.problems


def _expect(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    match = re.fullmatch(r"# expect: (\S.*)", first)
    assert match, f"{path.name} must start with '# expect: <substring>'"
    return match.group(1).strip()


def test_enough_invalid_manifests() -> None:
    assert len(INVALID) >= 18


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_manifest_refused(path: Path) -> None:
    expect = _expect(path)
    with pytest.raises(InvalidSpecError) as info:
        ModelDeployment.parse(yaml.safe_load(path.read_text()))
    # The API server names the full path; the Python error names at least the field itself.
    leaf = re.sub(r"\[\d+\]", "", expect).rsplit(".", 1)[-1]
    assert leaf in str(info.value), f"{path.name}: {info.value}"


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_manifest_accepted(path: Path) -> None:
    md = ModelDeployment.parse(yaml.safe_load(path.read_text()))
    assert md.spec.model.source
    assert md.kind == KIND


DURATIONS = [("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("500ms", 0.5), ("1.5h", 5400.0)]


@pytest.mark.parametrize(("text", "seconds"), DURATIONS, ids=[d for d, _ in DURATIONS])
def test_duration_seconds(text: str, seconds: float) -> None:
    assert duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "5", "5 m", "-1s", "1d"], ids=["empty", "bare", "space", "negative", "days"]
)
def test_duration_seconds_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        duration_seconds(text)


def test_status_round_trip() -> None:
    status = ModelDeploymentStatus.model_validate(
        {
            "observedGeneration": 7,
            "phase": "Ready",
            "replicas": 3,
            "readyReplicas": 3,
            "desiredReplicas": 3,
            "selector": "a=b",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "AllReplicasReady",
                    "message": "3/3",
                    "lastTransitionTime": "2026-11-26T12:00:00Z",
                    "observedGeneration": 7,
                }
            ],
            "stable": {"revision": "a", "source": "hf://a/b", "deployment": "x-1"},
            "canary": {"revision": "b", "weight": 10, "step": 0, "summary": "b 10%", "failingCases": ["c1"]},
            "plan": {
                "gpuType": "nvidia-l4",
                "gpusPerReplica": 1,
                "tensorParallelSize": 1,
                "hourlyUSDPerReplica": 0.8,
                "shape": "1x nvidia-l4",
                "memory": {"weightsGiB": 15.0, "requiredGiB": 20.0},
            },
            "cost": {"hourlyUSD": 2.4, "desiredHourlyUSD": 2.4, "usdPerMillionTokens": 0.3},
            "autoscaler": {
                "lastDecision": {"time": "2026-11-26T12:00:00Z", "desiredReplicas": 3, "queueDepth": 4.5}
            },
            "rolloutHistory": [
                {"revision": "a", "decision": "Promoted", "startedAt": "2026-11-26T11:00:00Z"}
            ],
            "endpoint": "http://x.ns.svc:8000/v1",
            "servingRevision": "a",
            "desiredRevisionLive": False,
        }
    )
    assert status.phase is Phase.READY
    assert status.conditions[0].status is ConditionStatus.TRUE
    dumped = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert dumped["conditions"][0]["lastTransitionTime"] == "2026-11-26T12:00:00Z"
    assert dumped["plan"]["memory"] == {"weightsGiB": 15.0, "requiredGiB": 20.0}
    assert ModelDeploymentStatus.model_validate(dumped) == status


def test_condition_reason_must_be_camel_case() -> None:
    with pytest.raises(ValueError, match="reason"):
        Condition.model_validate(
            {
                "type": "Ready",
                "status": "False",
                "reason": "not enough GPUs",
                "lastTransitionTime": "2026-11-26T12:00:00Z",
            }
        )
