"""The renderer: every spec field's effect on the manifests, the fixed parts, names, and determinism."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from modelplane import render
from modelplane.api import crdgen
from modelplane.api.models import ModelDeployment
from modelplane.gpus import GPU_TYPES
from modelplane.render import Manifest, Role, WorkloadPlan

BASE_SOURCE = "hf://meta-llama/Llama-3.1-8B-Instruct"


def _md(spec: dict[str, Any] | None = None, name: str = "llama") -> ModelDeployment:
    body = {"model": {"source": BASE_SOURCE}, **(spec or {})}
    return ModelDeployment.parse(
        {"metadata": {"name": name, "namespace": "team-a", "uid": "uid-1"}, "spec": body}
    )


def _plan(md: ModelDeployment, **overrides: Any) -> WorkloadPlan:
    plan = WorkloadPlan(
        role=Role.STABLE,
        source=md.spec.model.source,
        revision=md.spec.model.revision,
        replicas=2,
        gpu_type=None,
        gpus_per_replica=1,
        tensor_parallel_size=1,
    )
    return replace(plan, **overrides)


def _deployment(spec: dict[str, Any] | None = None, **overrides: Any) -> Manifest:
    md = _md(spec)
    return render.build_deployment(md, md.spec, _plan(md, **overrides))


def _container(d: Manifest) -> dict[str, Any]:
    container: dict[str, Any] = d["spec"]["template"]["spec"]["containers"][0]
    return container


def _args(d: Manifest) -> list[str]:
    return list(_container(d)["args"])


def _flag(d: Manifest, flag: str) -> str | None:
    args = _args(d)
    return args[args.index(flag) + 1] if flag in args else None


def _env(d: Manifest) -> dict[str, Any]:
    return {e["name"]: e for e in _container(d)["env"]}


def _volume(d: Manifest, name: str) -> dict[str, Any] | None:
    return next((v for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] == name), None)


def _mount(d: Manifest, name: str) -> dict[str, Any] | None:
    return next((m for m in _container(d)["volumeMounts"] if m["name"] == name), None)


def _affinity(d: Manifest) -> list[str]:
    terms = d["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    values: list[str] = terms[0]["matchExpressions"][0]["values"]
    return values


Check = Callable[[Manifest], bool]

# (spec field path, spec patch, check). Each check must hold for the patched spec and NOT for the
# base spec, which proves the field changes the rendered output.
SPEC_EFFECTS: list[tuple[str, dict[str, Any], Check]] = [
    ("model.source", {"model": {"source": "hf://Qwen/Qwen3-8B"}}, lambda d: _args(d)[0] == "Qwen/Qwen3-8B"),
    (
        "model.source",
        {"model": {"source": "pvc://ckpt/support/step-4"}},
        lambda d: (
            _args(d)[0] == "/models/support/step-4"
            and _volume(d, "model-source")
            == {"name": "model-source", "persistentVolumeClaim": {"claimName": "ckpt", "readOnly": True}}
            and _mount(d, "model-source")
            == {"name": "model-source", "mountPath": "/models", "readOnly": True}
        ),
    ),
    ("model.source", {"model": {"source": "pvc://ckpt"}}, lambda d: _args(d)[0] == "/models"),
    (
        "model.source",
        {"model": {"source": "s3://models-bucket/llama"}},
        lambda d: (
            _args(d)[0] == "s3://models-bucket/llama"
            and _flag(d, "--load-format") == "runai_streamer"
            and _flag(d, "--revision") is None
        ),
    ),
    (
        "model.source",
        {"model": {"source": "gs://models-bucket/llama"}},
        lambda d: _args(d)[0] == "gs://models-bucket/llama" and _flag(d, "--load-format") == "runai_streamer",
    ),
    (
        "model.source",
        {"model": {"source": "oci://registry.example.com/models/qwen:v1"}},
        lambda d: (
            _args(d)[0] == "/model-image/models"
            and _volume(d, "model-source")
            == {
                "name": "model-source",
                "image": {"reference": "registry.example.com/models/qwen:v1", "pullPolicy": "IfNotPresent"},
            }
        ),
    ),
    (
        "model.revision",
        {"model": {"source": BASE_SOURCE, "revision": "0e9e39f"}},
        lambda d: (
            _flag(d, "--revision") == "0e9e39f"
            and d["metadata"]["annotations"]["modelplane.dev/revision"] == "0e9e39f"
        ),
    ),
    (
        "model.servedName",
        {"model": {"source": BASE_SOURCE, "servedName": "chat"}},
        lambda d: _flag(d, "--served-model-name") == "chat",
    ),
    (
        "model.credentialsSecret",
        {"model": {"source": BASE_SOURCE, "credentialsSecret": "hf-token"}},
        lambda d: (
            _env(d).get("HF_TOKEN")
            == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}}
        ),
    ),
    (
        "model.credentialsSecret",
        {"model": {"source": "s3://models-bucket/x", "credentialsSecret": "s3-creds"}},
        lambda d: (
            _container(d).get("envFrom") == [{"secretRef": {"name": "s3-creds"}}]
            and "HF_TOKEN" not in _env(d)
        ),
    ),
    (
        "model.credentialsSecret",
        {"model": {"source": "oci://r.io/m/q:v1", "credentialsSecret": "pull"}},
        lambda d: d["spec"]["template"]["spec"].get("imagePullSecrets") == [{"name": "pull"}],
    ),
    (
        "engine.image",
        {"engine": {"image": "vllm/vllm-openai:v0.10.2"}},
        lambda d: _container(d)["image"] == "vllm/vllm-openai:v0.10.2",
    ),
    (
        "engine.maxModelLen",
        {"engine": {"maxModelLen": 16384}},
        lambda d: _flag(d, "--max-model-len") == "16384",
    ),
    (
        "engine.quantization",
        {"engine": {"quantization": "fp8"}},
        lambda d: _flag(d, "--quantization") == "fp8",
    ),
    (
        "engine.quantization",
        {"engine": {"quantization": "awq"}},
        lambda d: _flag(d, "--quantization") == "awq",
    ),
    ("engine.dtype", {"engine": {"dtype": "float16"}}, lambda d: _flag(d, "--dtype") == "float16"),
    (
        "engine.gpuMemoryUtilization",
        {"engine": {"gpuMemoryUtilization": 0.85}},
        lambda d: _flag(d, "--gpu-memory-utilization") == "0.85",
    ),
    ("engine.maxNumSeqs", {"engine": {"maxNumSeqs": 64}}, lambda d: _flag(d, "--max-num-seqs") == "64"),
    # LoRA (docs/adapters.md): each field its flag, and the runtime load/unload endpoints switched on.
    ("engine.lora.maxLoras", {"engine": {"lora": {"maxLoras": 8}}},
     lambda d: _flag(d, "--max-loras") == "8" and "--enable-lora" in _args(d)
     and _env(d)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"),
    ("engine.lora.maxLoraRank", {"engine": {"lora": {"maxLoraRank": 64}}},
     lambda d: _flag(d, "--max-lora-rank") == "64"),
    ("engine.lora.maxCpuLoras", {"engine": {"lora": {"maxCpuLoras": 32}}},
     lambda d: _flag(d, "--max-cpu-loras") == "32"),
    (
        "engine.extraArgs",
        {"engine": {"extraArgs": ["--enable-prefix-caching", "--seed=1"]}},
        lambda d: _args(d)[-2:] == ["--enable-prefix-caching", "--seed=1"],
    ),
    (
        "engine.env[].name",
        {"engine": {"env": [{"name": "VLLM_SKIP_P2P_CHECK", "value": "1"}]}},
        lambda d: _env(d).get("VLLM_SKIP_P2P_CHECK") == {"name": "VLLM_SKIP_P2P_CHECK", "value": "1"},
    ),
    (
        "engine.env[].value",
        {"engine": {"env": [{"name": "HF_HOME", "value": "/tmp/hf"}]}},
        lambda d: (
            _env(d)["HF_HOME"]["value"] == "/tmp/hf"
            and [e["name"] for e in _container(d)["env"]].count("HF_HOME") == 1
        ),
    ),
    (
        "resources.gpu.types",
        {"resources": {"gpu": {"types": ["nvidia-l4", "nvidia-l40s"]}}},
        lambda d: _affinity(d) == ["NVIDIA-L40S", "NVIDIA-L4"],
    ),
    (
        "resources.cpu",
        {"resources": {"cpu": 8}},
        lambda d: (
            _container(d)["resources"]["requests"].get("cpu") == 8
            and "cpu" not in _container(d)["resources"]["limits"]
        ),
    ),
    (
        "resources.memory",
        {"resources": {"memory": "64Gi"}},
        lambda d: (
            _container(d)["resources"]["requests"].get("memory") == "64Gi"
            and _container(d)["resources"]["limits"].get("memory") == "64Gi"
        ),
    ),
    (
        "resources.modelCache.pvc",
        {"resources": {"modelCache": {"pvc": "vllm-cache"}}},
        lambda d: (
            _volume(d, "model-cache")
            == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "vllm-cache"}}
        ),
    ),
    (
        "resources.modelCache.sizeLimit",
        {"resources": {"modelCache": {"sizeLimit": "100Gi"}}},
        lambda d: _volume(d, "model-cache") == {"name": "model-cache", "emptyDir": {"sizeLimit": "100Gi"}},
    ),
]


@pytest.mark.parametrize(
    ("field", "patch", "check"), SPEC_EFFECTS, ids=[f"{f}:{json.dumps(p)[:40]}" for f, p, _ in SPEC_EFFECTS]
)
def test_spec_field_effect(field: str, patch: dict[str, Any], check: Check) -> None:
    assert not check(_deployment()), "the check must fail on the base spec"
    assert check(_deployment(patch))


# Spec fields render does not read, and the component that does (their defaults: test_api_models).
NOT_RENDERED: dict[str, str] = {
    "model.hints": "planner: model shape when config.json is unreadable",
    "resources.gpu.count": "planner: becomes WorkloadPlan.gpus_per_replica and tensor_parallel_size",
    "resources.gpu.maxNodes": "planner: becomes WorkloadPlan.nodes, a LeaderWorkerSet (test_multinode_*.py)",
    "replicas": "handler: External mode copies it into WorkloadPlan.replicas",
    "scaling": "autoscaler: decides WorkloadPlan.replicas",
    "rollout": "rollout: decides which WorkloadPlans exist and their replica split",
    "inferencePool": "render.build_inference_children, not the Deployment (test_inference_pool.py)",
}


def _leaves(node: dict[str, Any], path: str) -> Iterator[str]:
    if "properties" in node:
        for name, child in node["properties"].items():
            yield from _leaves(child, f"{path}.{name}" if path else name)
    elif "properties" in node.get("items", {}):
        yield from _leaves(node["items"], f"{path}[]")
    else:
        yield path


def test_every_spec_field_has_an_asserted_effect() -> None:
    spec_schema = crdgen.openapi_schema()["properties"]["spec"]
    covered = {field for field, _, _ in SPEC_EFFECTS}
    missing = [
        leaf
        for leaf in _leaves(spec_schema, "")
        if leaf not in covered and not any(leaf == p or leaf.startswith(p + ".") for p in NOT_RENDERED)
    ]
    assert missing == []


WORKLOAD_EFFECTS: list[tuple[str, dict[str, Any], Check]] = [
    ("replicas", {"replicas": 5}, lambda d: d["spec"]["replicas"] == 5),
    ("gpu_type", {"gpu_type": "nvidia-h100-80gb"}, lambda d: _affinity(d) == ["NVIDIA-H100-80GB-HBM3"]),
    (
        "gpus_per_replica",
        {"gpus_per_replica": 4, "tensor_parallel_size": 4},
        lambda d: (
            _container(d)["resources"]["limits"]["nvidia.com/gpu"] == "4"
            and _container(d)["resources"]["requests"]["nvidia.com/gpu"] == "4"
            and _flag(d, "--tensor-parallel-size") == "4"
        ),
    ),
    (
        "startup_budget_seconds",
        {"startup_budget_seconds": 3600},
        lambda d: (
            _container(d)["startupProbe"]["failureThreshold"] == 3600
            and d["spec"]["progressDeadlineSeconds"] == 3900
        ),
    ),
    ("role", {"role": Role.CANARY}, lambda d: d["metadata"]["labels"]["modelplane.dev/role"] == "canary"),
    (
        "revision",
        {"revision": "rev-b"},
        lambda d: (
            d["metadata"]["name"] == render.deployment_name("llama", BASE_SOURCE, "rev-b")
            and _flag(d, "--revision") == "rev-b"
        ),
    ),
]


@pytest.mark.parametrize(
    ("field", "overrides", "check"), WORKLOAD_EFFECTS, ids=[w[0] for w in WORKLOAD_EFFECTS]
)
def test_workload_field_effect(field: str, overrides: dict[str, Any], check: Check) -> None:
    assert not check(_deployment())
    assert check(_deployment(**overrides))


def test_fixed_pod_settings() -> None:
    d = _deployment()
    pod = d["spec"]["template"]["spec"]
    c = _container(d)
    assert pod["enableServiceLinks"] is False
    assert pod["terminationGracePeriodSeconds"] == 130
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert _volume(d, "dshm") == {"name": "dshm", "emptyDir": {"medium": "Memory"}}
    assert _mount(d, "dshm") == {"name": "dshm", "mountPath": "/dev/shm"}
    assert _volume(d, "model-cache") == {"name": "model-cache", "emptyDir": {}}
    assert c["command"] == ["vllm", "serve"]
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "30"]}}}
    assert _affinity(d) == [g.product for g in GPU_TYPES.values()]  # no types, no plan: any known GPU
    for probe, threshold in (("startupProbe", 1200), ("readinessProbe", 1), ("livenessProbe", 5)):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
        assert (c[probe]["periodSeconds"], c[probe]["failureThreshold"]) == (1, threshold)
    assert d["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }


def test_base_vllm_arguments() -> None:
    assert _args(_deployment()) == [
        "meta-llama/Llama-3.1-8B-Instruct",
        "--port",
        "8000",
        "--served-model-name",
        "llama",
        "--tensor-parallel-size",
        "1",
        "--gpu-memory-utilization",
        "0.9",
        "--download-dir",
        "/models-cache",
        "--revision",
        "main",
    ]


def test_labels_and_owner() -> None:
    d = _deployment()
    labels = d["metadata"]["labels"]
    rev = render.revision_hash(BASE_SOURCE, "main")
    assert labels == {
        "app.kubernetes.io/name": "modelplane-server",
        "app.kubernetes.io/instance": "llama",
        "app.kubernetes.io/component": "server",
        "app.kubernetes.io/managed-by": "modelplane",
        "modelplane.dev/model-deployment": "llama",
        "modelplane.dev/revision-hash": rev,
        "modelplane.dev/role": "stable",
        "modelplane.dev/spec-hash": labels["modelplane.dev/spec-hash"],
    }
    pod_labels = d["spec"]["template"]["metadata"]["labels"]
    # Promotion relabels the Deployment; the role must not be in the template or pods would restart.
    assert "modelplane.dev/role" not in pod_labels
    assert d["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert d["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "modelplane.dev/v1alpha1",
            "kind": "ModelDeployment",
            "name": "llama",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert d["metadata"]["name"] == f"llama-{rev}" and d["metadata"]["namespace"] == "team-a"


HASH_CASES = [
    ("replicas-keep-hash", {"replicas": 7}, True),
    ("role-keeps-hash", {"role": Role.CANARY}, True),
    ("tp-changes-hash", {"gpus_per_replica": 2, "tensor_parallel_size": 2}, False),
    ("gpu-type-changes-hash", {"gpu_type": "nvidia-l4"}, False),
]


@pytest.mark.parametrize(("case", "overrides", "same"), HASH_CASES, ids=[c[0] for c in HASH_CASES])
def test_spec_hash(case: str, overrides: dict[str, Any], same: bool) -> None:
    def spec_hash(d: Manifest) -> str:
        return d["metadata"]["labels"]["modelplane.dev/spec-hash"]

    base, other = _deployment(), _deployment(**overrides)
    assert (spec_hash(base) == spec_hash(other)) is same
    assert spec_hash(other) == other["spec"]["template"]["metadata"]["labels"]["modelplane.dev/spec-hash"]


NAMES = [("short", "llama"), ("max-length", "a" * 63), ("dash-at-cut", "a" * 53 + "-" + "b" * 9)]


@pytest.mark.parametrize(("case", "name"), NAMES, ids=[n[0] for n in NAMES])
def test_deployment_name_is_a_dns_label(case: str, name: str) -> None:
    result = render.deployment_name(name, BASE_SOURCE, "main")
    assert len(result) <= 63
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", result)
    assert result.endswith("-" + render.revision_hash(BASE_SOURCE, "main"))


def test_revision_hash_distinguishes_source_and_revision() -> None:
    hashes = {
        render.revision_hash(s, r) for s, r in [(BASE_SOURCE, "a"), (BASE_SOURCE, "b"), ("hf://x/y", "a")]
    }
    assert len(hashes) == 3 and all(re.fullmatch(r"[0-9a-f]{8}", h) for h in hashes)


def test_service_pdb_selector_endpoint() -> None:
    md = _md()
    service, pdb = render.build_service(md), render.build_pdb(md)
    selector = {
        "app.kubernetes.io/name": "modelplane-server",
        "app.kubernetes.io/instance": "llama",
        "app.kubernetes.io/component": "server",
    }
    assert (service["apiVersion"], service["kind"], service["metadata"]["name"]) == ("v1", "Service", "llama")
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["selector"] == selector
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}
    ]
    assert (pdb["apiVersion"], pdb["kind"], pdb["metadata"]["name"]) == (
        "policy/v1",
        "PodDisruptionBudget",
        "llama",
    )
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
    assert service["metadata"]["ownerReferences"] == pdb["metadata"]["ownerReferences"]
    assert render.selector_string(md) == (
        "app.kubernetes.io/component=server,app.kubernetes.io/instance=llama,"
        "app.kubernetes.io/name=modelplane-server"
    )
    assert render.endpoint(md) == "http://llama.team-a.svc:8000/v1"
    # The PDB and the scale subresource's selector count the pods of every revision.
    for role, revision in ((Role.STABLE, "a"), (Role.CANARY, "b")):
        d = render.build_deployment(md, md.spec, _plan(md, role=role, revision=revision))
        assert selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()


def test_the_service_selects_one_workload_and_the_scale_selector_every_server_pod() -> None:
    md = _md()
    stable = render.build_deployment(md, md.spec, _plan(md, role=Role.STABLE, revision="a"))
    canary = render.build_deployment(md, md.spec, _plan(md, role=Role.CANARY, revision="b"))
    stable_key = stable["metadata"]["labels"]["modelplane.dev/revision-hash"]
    service = render.build_service(md, key=stable_key)
    selector = service["spec"]["selector"]

    def selects(dep: render.Manifest, sel: dict[str, str]) -> bool:
        return bool(sel.items() <= dep["spec"]["template"]["metadata"]["labels"].items())

    assert selects(stable, selector) and not selects(canary, selector)
    scale = dict(pair.split("=") for pair in render.selector_string(md).split(","))
    assert selects(stable, scale) and selects(canary, scale)
    # The role is on the Deployment, not in the pod template: promoting relabels no pod.
    assert "modelplane.dev/role" not in canary["spec"]["template"]["metadata"]["labels"]
    children = render.build_children(md, md.spec, [_plan(md, role=Role.STABLE, revision="a"),
                                                   _plan(md, role=Role.CANARY, revision="b")],
                                     service_key=stable_key)
    assert next(c for c in children if c["kind"] == "Service")["spec"]["selector"] == selector


def test_build_children() -> None:
    md = _md()
    canary = _plan(md, role=Role.CANARY, revision="b", replicas=1)
    children = render.build_children(md, md.spec, [canary, _plan(md)])
    assert [c["kind"] for c in children] == ["Deployment", "Deployment", "Service", "PodDisruptionBudget"]
    assert [c["metadata"]["labels"].get("modelplane.dev/role") for c in children[:2]] == ["stable", "canary"]
    with pytest.raises(ValueError, match="same Deployment"):
        render.build_children(md, md.spec, [_plan(md), _plan(md, role=Role.CANARY)])


def test_render_is_deterministic() -> None:
    """Fresh objects, same input: byte-identical output (the handler's zero-write resync relies on it)."""

    def once() -> str:
        md = _md(
            {
                "engine": {"env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]},
                "resources": {"gpu": {"types": ["nvidia-l4", "nvidia-h100-80gb"]}},
            }
        )
        return json.dumps(render.build_children(md, md.spec, [_plan(md)]))

    assert once() == once()


def test_secret_value_is_never_rendered() -> None:
    d = _deployment({"model": {"source": BASE_SOURCE, "credentialsSecret": "hf-token"}})
    assert "value" not in _env(d)["HF_TOKEN"]


WORKLOAD_ERRORS = [
    ("role", {"role": "shadow"}, "role"),
    ("replicas", {"replicas": -1}, "replicas"),
    ("gpus", {"gpus_per_replica": 0}, "gpus_per_replica"),
    ("tp-over-gpus", {"tensor_parallel_size": 2}, "tensor_parallel_size"),
    ("gpu-type", {"gpu_type": "nvidia-t4"}, "unknown GPU type"),
    ("budget", {"startup_budget_seconds": 0}, "startup_budget_seconds"),
]


@pytest.mark.parametrize(("case", "overrides", "match"), WORKLOAD_ERRORS, ids=[w[0] for w in WORKLOAD_ERRORS])
def test_workload_plan_validation(case: str, overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _plan(_md(), **overrides)


def test_workload_plan_accepts_role_strings() -> None:
    assert _plan(_md(), role="canary").role is Role.CANARY


BUDGETS = [(0.0, 600), (15.0, 600), (140.0, 2040), (690.0, 7200)]


@pytest.mark.parametrize(("weights_gib", "seconds"), BUDGETS, ids=[str(b[0]) for b in BUDGETS])
def test_startup_budget_for(weights_gib: float, seconds: int) -> None:
    assert render.startup_budget_for(weights_gib) == seconds
