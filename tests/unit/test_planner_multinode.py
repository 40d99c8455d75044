"""The planner's multi-node shapes: tensor parallel within a node x pipeline parallel across nodes,
the fewest nodes of the cheapest type, status fields, `modelplane plan`, and the refusals that remain."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from modelplane import gpus
from modelplane.api.models import InvalidSpecError, ModelDeployment, ModelDeploymentSpec
from modelplane.planner import Plan, PlanReason, build_plan, plan_request_from_spec
from modelplane.planner import cli as plan_cli
from modelplane.planner.plan import MAX_SUGGESTED_NODES

H100, H200, A100, L40S, L4 = ("nvidia-h100-80gb", "nvidia-h200-141gb", "nvidia-a100-80gb", "nvidia-l40s",
                              "nvidia-l4")
R1 = "hf://deepseek-ai/DeepSeek-R1"
L405B = "hf://meta-llama/Llama-3.1-405B-Instruct"
MAVERICK = "hf://meta-llama/Llama-4-Maverick-17B-128E-Instruct"
#: A model no allowed type holds even across 16 nodes: 6T parameters in BF16 (12 TB of weights).
HUGE_HINTS = {"parametersBillions": 6000, "numLayers": 160, "hiddenSize": 32768, "numAttentionHeads": 256}


def spec(source: str, *, types: list[str] | None = None, max_nodes: int | None = None,
         hints: dict[str, Any] | None = None, **engine: Any) -> ModelDeploymentSpec:
    gpu: dict[str, Any] = {}
    if types is not None:
        gpu["types"] = types
    if max_nodes is not None:
        gpu["maxNodes"] = max_nodes
    model: dict[str, Any] = {"source": source}
    if hints is not None:
        model["hints"] = hints
    return ModelDeploymentSpec.model_validate({"model": model, "engine": engine, "resources": {"gpu": gpu}})


def plan_of(s: ModelDeploymentSpec) -> Plan:
    return build_plan(plan_request_from_spec(s), gpus.GPU_TYPES)


@pytest.mark.parametrize(("s", "gpu_type", "nodes", "tp"), [
    # The case: ~680 GiB with a 64k context, 16 H100 across two 8-GPU nodes.
    (spec(R1, types=[H100], max_nodes=2, maxModelLen=65536), H100, 2, 8),
    (spec(R1, types=[H100], max_nodes=4), H100, 2, 8),  # fewest nodes, not the most allowed
    (spec(L405B, types=[H100], max_nodes=2), H100, 2, 8),  # ~810 GB of BF16 weights
    (spec(L405B, types=[A100, H100], max_nodes=2), A100, 2, 8),  # same memory, A100 is cheaper
    (spec(MAVERICK, types=[H100], max_nodes=2), H100, 2, 8),  # BF16, ~800 GB
    (spec(L405B, types=[L4], max_nodes=16), L4, 6, 8),  # small GPUs: more stages
    # When one node of an allowed type holds it, no group: 8x H200 for R1 even with maxNodes 4.
    (spec(R1, types=[H100, H200], max_nodes=4), H200, 1, 8),
    # ... and a small model stays on one GPU whatever maxNodes says.
    (spec("hf://meta-llama/Llama-3.1-8B-Instruct", max_nodes=4, maxModelLen=8192), L4, 1, 1),
], ids=["r1-h100-64k", "r1-h100-fewest-nodes", "405b-h100", "405b-cheapest-type", "maverick-bf16",
        "405b-l4-six-nodes", "one-node-type-wins", "small-model-single-gpu"])
def test_multi_node_shapes(s: ModelDeploymentSpec, gpu_type: str, nodes: int, tp: int) -> None:
    plan = plan_of(s)
    assert plan.fits, plan.reason
    assert (plan.gpu_type, plan.nodes, plan.tensor_parallel_size) == (gpu_type, nodes, tp)
    assert plan.pipeline_parallel_size == nodes and plan.gpus_per_replica == nodes * tp
    assert plan.usd_per_hour_per_replica == pytest.approx(nodes * tp * gpus.GPU_TYPES[gpu_type].usd_per_hour)
    assert plan.memory is not None and plan.memory.per_gpu_required_gib <= plan.memory.per_gpu_available_gib
    if nodes > 1:
        # One fewer node of the same type would not hold it: the fewest nodes.
        assert f"a group of {nodes} nodes" in plan.reason and "pipeline parallel" in plan.reason


def test_r1_64k_needs_about_680_gib_on_16_h100() -> None:
    plan = plan_of(spec(R1, types=[H100], max_nodes=2, maxModelLen=65536))
    assert plan.memory is not None
    assert 650 <= plan.memory.required_gib <= 720  # the issue: "about 680 GiB with a 64k context"
    assert plan.usd_per_hour_per_replica == pytest.approx(16 * 2.69)
    assert plan.shape == "16x nvidia-h100-80gb across 2 nodes"


def test_group_startup_budget_is_longer_than_one_node() -> None:
    one = plan_of(spec(R1, types=[H200]))
    group = plan_of(spec(R1, types=[H100], max_nodes=2))
    assert one.nodes == 1 and group.nodes == 2
    assert group.startup_budget_seconds > one.startup_budget_seconds


@pytest.mark.parametrize(("s", "code", "in_reason", "smallest"), [
    # maxNodes 1 (the default): refused, naming the group that would fit and the field to set.
    (spec(R1, types=[H100]), PlanReason.NO_SINGLE_NODE_FITS,
     "set spec.resources.gpu.maxNodes to 2", "16x nvidia-h100-80gb across 2 nodes"),
    # Allowed too few nodes for the small GPUs.
    (spec(L405B, types=[L4], max_nodes=2), PlanReason.NO_GROUP_FITS,
     "nor does a group of up to 2 nodes (spec.resources.gpu.maxNodes); the smallest group that would is "
     "48x nvidia-l4 across 6 nodes", "48x nvidia-l4 across 6 nodes"),
    # Nothing fits even across the largest group the API allows.
    (spec("hf://acme/huge", types=[H100, L40S], max_nodes=16, hints=HUGE_HINTS, maxModelLen=8192),
     PlanReason.NO_GROUP_FITS, "nor does a group of up to 16 nodes", None),
    (spec("hf://acme/huge", types=[H100], max_nodes=3, hints=HUGE_HINTS, maxModelLen=8192),
     PlanReason.NO_GROUP_FITS, f"not even a group of {MAX_SUGGESTED_NODES} nodes of an allowed type would",
     None),
], ids=["single-node-only", "too-few-nodes", "nothing-fits-at-16", "nothing-fits-anywhere"])
def test_refusals(s: ModelDeploymentSpec, code: PlanReason, in_reason: str, smallest: str | None) -> None:
    plan = plan_of(s)
    assert not plan.fits and plan.reason_code is code
    assert in_reason in plan.reason, plan.reason
    assert plan.smallest_shape == smallest
    assert plan.nodes == 1 and plan.startup_budget_seconds == 0


def test_status_of_a_group() -> None:
    status = plan_of(spec(R1, types=[H100], max_nodes=2, maxModelLen=65536)).to_status()
    assert (status["nodes"], status["gpusPerNode"], status["pipelineParallelSize"]) == (2, 8, 2)
    assert (status["gpusPerReplica"], status["tensorParallelSize"]) == (16, 8)
    assert status["hourlyUSDPerReplica"] == pytest.approx(43.04)
    memory = status["memory"]
    assert memory["perGPURequiredGiB"] <= memory["perGPUAvailableGiB"] == pytest.approx(71.7, abs=0.1)
    # The API accepts what the planner writes (status.plan is typed).
    body = {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "r1", "namespace": "default", "uid": "u"},
            "spec": {"model": {"source": R1}, "resources": {"gpu": {"maxNodes": 2}}},
            "status": {"plan": status}}
    md = ModelDeployment.parse(body)
    assert md.spec.resources.gpu.max_nodes == 2
    # A single-node plan carries no group fields.
    assert "nodes" not in plan_of(spec(R1, types=[H200])).to_status()


@pytest.mark.parametrize("value", [0, 17, "2"], ids=["zero", "above-16", "string"])
def test_max_nodes_out_of_range_is_refused_by_name(value: Any) -> None:
    with pytest.raises(InvalidSpecError, match="maxNodes"):
        ModelDeployment.parse({"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
                               "metadata": {"name": "r1", "namespace": "default"},
                               "spec": {"model": {"source": R1}, "resources": {"gpu": {"maxNodes": value}}}})


def test_plan_command_shows_the_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r1.yaml"
    path.write_text("""
apiVersion: modelplane.dev/v1alpha1
kind: ModelDeployment
metadata: {name: r1, namespace: team-b}
spec:
  model: {source: hf://deepseek-ai/DeepSeek-R1}
  engine: {maxModelLen: 65536}
  resources: {gpu: {types: [nvidia-h100-80gb], maxNodes: 2}}
  scaling: {minReplicas: 1, maxReplicas: 2}
""")
    parser = argparse.ArgumentParser()
    plan_cli.register(parser.add_subparsers())
    args = parser.parse_args(["plan", "-f", str(path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert ("16x nvidia-h100-80gb across 2 nodes, tensor parallel 8 x pipeline parallel 2 (2 nodes), "
            "$43.04/h per replica (a group of 2 nodes)") in out
    assert "per GPU" in out and "fleet:   $43.04-$86.08/h (1-2 replicas)" in out
