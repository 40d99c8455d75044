"""The ModelDeployment models: defaults, wire names, parsing errors, and the manifests in tests/data."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane import render
from modelplane.api.models import (
    API_VERSION,
    FIELD_MANAGER,
    GROUP,
    KIND,
    OWNED_FLAGS,
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
    OwnedFlag,
    Phase,
    ScalingMode,
    WeightPrecision,
    duration_seconds,
    to_camel,
)
from modelplane.planner import Precision

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
    ("engine.image", "vllm/vllm-openai:v0.32.0"),
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


def _with(section: str, **fields: Any) -> dict[str, Any]:
    if section == "model":
        return _spec(model={"source": "hf://meta-llama/Llama-3.1-8B-Instruct", **fields})
    if section == "hints":
        return _spec(model={"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "hints": fields})
    if section == "gpu":
        return _spec(resources={"gpu": fields})
    return _spec(**{section: fields})


#: What the planner used to refuse on its own (planner.plan's SpecError, issue 14): the API model
#: refuses all of it, naming the same field, so the planner takes the parsed spec and checks nothing.
PLANNER_REFUSALS = [
    ("no-model", {}, "spec.model"),
    ("bad-scheme", _spec(model={"source": "http://example.com/model"}), "spec.model.source"),
    ("model-not-mapping", _spec(model="hf://a/b"), "spec.model"),
    ("len-string", _with("engine", maxModelLen="8k"), "spec.engine.maxModelLen"),
    ("len-zero", _with("engine", maxModelLen=0), "spec.engine.maxModelLen"),
    ("seqs-negative", _with("engine", maxNumSeqs=-1), "spec.engine.maxNumSeqs"),
    ("quantization", _with("engine", quantization="int3"), "spec.engine.quantization"),
    ("dtype", _with("engine", dtype="float32"), "spec.engine.dtype"),
    ("utilization", _with("engine", gpuMemoryUtilization=1.5), "spec.engine.gpuMemoryUtilization"),
    ("extra-args", _with("engine", extraArgs="--foo"), "spec.engine.extraArgs"),
    ("env-not-mappings", _with("engine", env=["X=1"]), "spec.engine.env[0]"),
    ("count-zero", _with("gpu", count=0), "spec.resources.gpu.count"),
    ("count-word", _with("gpu", count="two"), "spec.resources.gpu.count"),
    ("types-string", _with("gpu", types="nvidia-l4"), "spec.resources.gpu.types"),
    ("hint-string", _with("hints", parametersBillions="seven"), "spec.model.hints.parametersBillions"),
    ("hint-float-layers", _with("hints", numLayers=3.5), "spec.model.hints.numLayers"),
    ("hint-unknown", _with("hints", layers=32), "spec.model.hints.layers"),
    ("hint-precision", _with("hints", precision="fp4"), "spec.model.hints.precision"),
    ("hint-kv-above-heads", _with("hints", numAttentionHeads=4, numKeyValueHeads=8), "spec.model.hints"),
]


@pytest.mark.parametrize(("case", "spec", "path"), PLANNER_REFUSALS, ids=[c[0] for c in PLANNER_REFUSALS])
def test_the_api_refuses_what_the_planner_refused(case: str, spec: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        ModelDeployment.parse(_obj(spec))
    assert path in [p for p, _ in info.value.problems]


def _expect(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    match = re.fullmatch(r"# expect: (\S.*)", first)
    assert match, f"{path.name} must start with '# expect: <substring>'"
    return match.group(1).strip()


def _messages(path: Path) -> list[str]:
    """The ``# message: <substring>`` lines: words the refusal must contain, from the API server's CEL
    rule and from the Python validator alike (tests/integration/test_crd_validation.py checks the former)."""
    return [line.removeprefix("# message: ").strip() for line in path.read_text().splitlines()
            if line.startswith("# message: ")]


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
    for message in _messages(path):
        assert message in str(info.value), f"{path.name}: {info.value}"


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


# --- refusals the CRD's CEL rules make too (issue 14); tests/data/invalid has one manifest per kind ---
# Each table is also the list of cases the CEL rule must agree with: the manifests in tests/data/invalid
# run through the real API server in tests/integration/test_crd_validation.py.


def _refusal(spec: dict[str, Any]) -> str:
    with pytest.raises(InvalidSpecError) as info:
        ModelDeployment.parse(_obj(spec))
    return str(info.value)


# (field, value, accepted): int-or-string quantities may not be negative, as an int or as a string.
QUANTITIES: list[tuple[str, int | str, bool]] = [
    ("cpu", "-2", False), ("cpu", "-0.5", False), ("cpu", "-1e3", False), ("cpu", -1, False),
    ("cpu", "2", True), ("cpu", "+2", True), ("cpu", "7500m", True), ("cpu", "1e3", True),
    ("cpu", "1e-3", True), ("cpu", 0, True), ("cpu", 8, True),
    ("memory", "-8Gi", False), ("memory", "-8", False), ("memory", "64Gi", True), ("memory", ".5Gi", True),
    ("sizeLimit", "-10Gi", False), ("sizeLimit", "100Gi", True), ("sizeLimit", 0, True),
]


def _quantity_spec(field: str, value: int | str) -> dict[str, Any]:
    if field == "sizeLimit":
        return _spec(resources={"modelCache": {"sizeLimit": value}})
    return _spec(resources={field: value})


@pytest.mark.parametrize(("field", "value", "accepted"), QUANTITIES,
                         ids=[f"{f}={v!r}" for f, v, _ in QUANTITIES])
def test_quantity_sign(field: str, value: int | str, accepted: bool) -> None:
    spec = _quantity_spec(field, value)
    if accepted:
        ModelDeployment.parse(_obj(spec))
        return
    assert (f"{field}: must be an integer >= 0 or a non-negative quantity such as 7500m or 64Gi, "
            f"got {value!r}") in _refusal(spec)


# (source, accepted): each scheme's rule refuses what its message says the source needs.
SOURCES: list[tuple[str, bool]] = [
    ("hf://meta-llama/Llama-3.1-8B-Instruct", True), ("hf://Qwen/Qwen3-8B", True),
    ("hf://Llama-3.1-8B-Instruct", False), ("hf://org/name/subfolder", False), ("hf://org/", False),
    ("s3://models-bucket/llama", True), ("s3://models-bucket/llama/", True), ("s3://b.example/a/b", True),
    ("s3://models-bucket", False), ("s3://models-bucket/", False), ("s3://models-bucket//llama", False),
    ("gs://models-bucket/llama", True), ("gs://models-bucket", False), ("gs://models-bucket/", False),
    ("pvc://model-cache/llama", True), ("pvc://model-cache", True), ("pvc://model-cache/", True),
    ("pvc:///llama", False), ("pvc://model-cache//llama", False), ("pvc://Model-Cache/llama", False),
    ("oci://ghcr.io/acme/llama:v1", True), ("oci://ghcr.io", False), ("oci://ghcr.io/acme/Llama:v1", False),
]


@pytest.mark.parametrize(("source", "accepted"), SOURCES, ids=[s for s, _ in SOURCES])
def test_source_forms(source: str, accepted: bool) -> None:
    spec = _spec(model={"source": source})
    if accepted:
        assert ModelDeployment.parse(_obj(spec)).spec.model.source == source
        return
    scheme = source.split("://", 1)[0]
    message = _refusal(spec)
    assert f"spec.model.source: malformed {scheme}:// source: expected {scheme}://" in message


# (extraArgs, the flag named in the refusal, or None when accepted). vLLM reads "--a_b" as "--a-b"
# and "--flag=value" as "--flag value", and argparse reads "-qawq" as "-q awq".
EXTRA_ARGS: list[tuple[list[str], str | None]] = [
    (["--max-model-len", "65536"], "--max-model-len"), (["--max-model-len=65536"], "--max-model-len"),
    (["--max_model_len", "65536"], "--max-model-len"), (["--max_model-len=1"], "--max-model-len"),
    (["--revision", "abc"], "--revision"), (["--revision=abc"], "--revision"),
    (["--model", "org/other"], "--model"), (["--model=org/other"], "--model"),
    (["--served-model-name", "x"], "--served-model-name"), (["--served_model_name=x"], "--served-model-name"),
    (["-tp", "2"], "--tensor-parallel-size"), (["-tp=2"], "--tensor-parallel-size"),
    (["--tensor_parallel_size=2"], "--tensor-parallel-size"),
    (["-pp", "2"], "--pipeline-parallel-size"), (["--pipeline-parallel-size=2"], "--pipeline-parallel-size"),
    (["-dp", "2"], "--data-parallel-size"), (["--data_parallel_size", "2"], "--data-parallel-size"),
    (["-dpl", "2"], "--data-parallel-size-local"),
    (["--data-parallel-size-local=2"], "--data-parallel-size-local"),
    (["--max-num-seqs", "512"], "--max-num-seqs"),
    (["--gpu-memory-utilization=0.95"], "--gpu-memory-utilization"),
    (["--quantization", "awq"], "--quantization"), (["-q", "awq"], "--quantization"),
    (["-qawq"], "--quantization"), (["-q=awq"], "--quantization"),
    (["--dtype", "float32"], "--dtype"), (["--port=9000"], "--port"), (["--port", "9000"], "--port"),
    (["--download-dir", "/tmp"], "--download-dir"),
    (["--enable-prefix-caching", "--max-model-len", "8192"], "--max-model-len"),
    # Flags the operator leaves to the user, some of them sharing a prefix with one it owns.
    (["--enable-prefix-caching"], None), (["--max-num-batched-tokens", "8192"], None),
    (["--kv-cache-dtype", "fp8"], None), (["--tokenizer-revision", "v2"], None),
    (["--code-revision=v2"], None), (["--model-impl", "transformers"], None),
    (["--model-loader-extra-config", "{}"], None), (["--enable-expert-parallel"], None),
    (["--data-parallel-backend", "mp"], None), (["-O3"], None), (["--trust-remote-code"], None),
    (["--quantization-param-path", "scales.json"], None), (["--max-model-len-note"], None),
    (["--load-format", "mistral"], None),  # an hf:// source: see LOAD_FORMAT
]


@pytest.mark.parametrize(("args", "flag"), EXTRA_ARGS, ids=[" ".join(a) for a, _ in EXTRA_ARGS])
def test_extra_args_may_not_set_owned_flags(args: list[str], flag: str | None) -> None:
    spec = _spec(engine={"extraArgs": args})
    if flag is None:
        assert ModelDeployment.parse(_obj(spec)).spec.engine.extra_args == args
        return
    message = _refusal(spec)
    assert f"spec.engine.extraArgs: extraArgs must not set {flag}" in message


# (flag, the typed field the refusal must name): a flag with a typed field points at that field.
TYPED_FIELDS = [
    ("--model", "spec.model.source"), ("--revision", "spec.model.revision"),
    ("--served-model-name", "spec.model.servedName"), ("--tensor-parallel-size", "spec.resources.gpu.count"),
    ("--max-model-len", "spec.engine.maxModelLen"), ("--max-num-seqs", "spec.engine.maxNumSeqs"),
    ("--gpu-memory-utilization", "spec.engine.gpuMemoryUtilization"),
    ("--quantization", "spec.engine.quantization"), ("--dtype", "spec.engine.dtype"),
    ("--download-dir", "spec.resources.modelCache"),
]


@pytest.mark.parametrize(("flag", "field"), TYPED_FIELDS, ids=[f for f, _ in TYPED_FIELDS])
def test_extra_args_refusal_names_the_typed_field(flag: str, field: str) -> None:
    message = _refusal(_spec(engine={"extraArgs": [flag, "x"]}))
    assert f"extraArgs must not set {flag}" in message and field in message


def test_every_flag_the_operator_renders_is_owned() -> None:
    """Each flag render.vllm_args writes (with every optional typed field set) is refused in extraArgs."""
    spec = ModelDeploymentSpec.model_validate(_spec(
        model={"source": "hf://a/b", "servedName": "chat"},
        engine={"maxModelLen": 8192, "quantization": "fp8", "dtype": "bfloat16", "maxNumSeqs": 64}))
    s3 = ModelDeploymentSpec.model_validate(_spec(model={"source": "s3://bucket/model"}))
    rendered: set[str] = set()
    for s in (spec, s3):
        workload = render.WorkloadPlan(role=render.Role.STABLE, source=s.model.source, revision="main",
                                       replicas=1, gpu_type=None, gpus_per_replica=2, tensor_parallel_size=2)
        rendered |= {a for a in render.vllm_args("chat", s, workload) if a.startswith("-")}
    assert {"--port", "--revision", "--load-format", "--max-model-len"} <= rendered
    owned = {name for flag in OWNED_FLAGS for name in flag.names}
    assert rendered <= owned, rendered - owned


@pytest.mark.parametrize("flag", OWNED_FLAGS, ids=[f.names[0] for f in OWNED_FLAGS])
def test_owned_flag_pattern_is_anchored(flag: OwnedFlag) -> None:
    assert flag.pattern.startswith("^(")
    assert re.match(flag.pattern, flag.names[0])
    assert not re.match(flag.pattern, "x" + flag.names[0])


# (source, extraArgs, refused): the operator sets --load-format runai_streamer for s3:// and gs:// only;
# other sources may choose their format (a Mistral checkpoint asks for "--load-format mistral").
LOAD_FORMAT: list[tuple[str, list[str], bool]] = [
    ("s3://models-bucket/llama", ["--load-format", "safetensors"], True),
    ("gs://models-bucket/llama", ["--load_format=safetensors"], True),
    ("s3://models-bucket/llama", ["--enable-prefix-caching"], False),
    ("s3://models-bucket/llama", [], False),
    ("hf://mistralai/Mistral-Small-24B-Instruct-2501", ["--load_format", "mistral"], False),
    ("pvc://model-cache/llama", ["--load-format", "safetensors"], False),
]


@pytest.mark.parametrize(("source", "args", "refused"), LOAD_FORMAT,
                         ids=[f"{s.split(':')[0]}-{' '.join(a) or 'none'}" for s, a, _ in LOAD_FORMAT])
def test_load_format_is_the_operators_for_object_storage(source: str, args: list[str], refused: bool) -> None:
    spec = _spec(model={"source": source}, engine={"extraArgs": args})
    if not refused:
        assert ModelDeployment.parse(_obj(spec)).spec.engine.extra_args == args
        return
    assert ("engine.extraArgs: extraArgs must not set --load-format with an s3:// or gs:// source: the "
            "operator sets runai_streamer") in _refusal(spec)


# (env name, accepted): variables that carry credentials may not be plain values.
ENV_NAMES = [
    ("HF_TOKEN", False), ("HUGGING_FACE_HUB_TOKEN", False), ("AWS_SECRET_ACCESS_KEY", False),
    ("AWS_SESSION_TOKEN", False), ("GOOGLE_APPLICATION_CREDENTIALS", True), ("AWS_REGION", True),
    ("AWS_ACCESS_KEY_ID", True), ("VLLM_ATTENTION_BACKEND", True), ("HF_HUB_OFFLINE", True),
]


@pytest.mark.parametrize(("name", "accepted"), ENV_NAMES, ids=[n for n, _ in ENV_NAMES])
def test_env_refuses_plain_credentials(name: str, accepted: bool) -> None:
    spec = _spec(engine={"env": [{"name": "A", "value": "1"}, {"name": name, "value": "x"}]})
    if accepted:
        assert ModelDeployment.parse(_obj(spec)).spec.engine.env[1].name == name
        return
    message = _refusal(spec)
    assert f"spec.engine.env[1].name: {name}: " in message
    assert "put the value in the Secret that spec.model.credentialsSecret names" in message


def test_hint_precision_values_are_the_planners() -> None:
    """spec.model.hints.precision (issue 14) is read by the planner as its own Precision."""
    assert [p.value for p in WeightPrecision] == [p.value for p in Precision]
    model = {"source": "hf://acme/x-FP8", "hints": {"precision": "fp8"}}
    md = ModelDeployment.parse(_obj(_spec(model=model)))
    assert md.spec.model.hints is not None and md.spec.model.hints.precision is WeightPrecision.FP8


def test_unknown_fields_are_named_as_such() -> None:
    with pytest.raises(InvalidSpecError) as info:
        ModelDeployment.parse(_obj(_spec(engine={"maxModelLength": 8192})))
    assert info.value.problems == [("spec.engine.maxModelLength", "unknown field")]
