"""The manifests in examples/: valid ModelDeployments whose comments tell the truth about their plan.

Each example names, in a comment, either the GPU shape the planner gives it (``GPU shape: 2x
nvidia-h100-80gb``) or the condition it ends in (``Condition: NoSingleNodeFits``). Every example is
parsed by the API models and planned (the plan does not depend on the cluster's nodes), must agree
with the comment, and its shape must be schedulable on the dev cluster's default node profile. The
canary example's suite is the simulator's own task family, so the gate can be exercised on the dev
cluster.

Regenerate the suite ConfigMap after changing its size or seed::

    .venv/bin/python -m tests.unit.test_examples --write-suite
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane import gpus
from modelplane.api.models import ModelDeployment
from modelplane.cli import main as cli_main
from modelplane.planner.cli import EXIT_DOES_NOT_FIT, EXIT_FITS
from modelplane.planner.plan import Plan, build_plan, plan_request_from_spec
from modelplane.rollout.graders import grade
from modelplane.rollout.stats import PairedOutcome, evaluate_gate
from modelplane.rollout.suite import parse_suite
from modelplane_dev.sim.quality import SimBehavior, answer, generate_suite, suite_jsonl

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PROFILES = REPO / "devtools" / "modelplane_dev" / "devcluster" / "profiles.yaml"

SUITE_FILE = EXAMPLES / "canary-rollout-suite.yaml"
SUITE_CASES, SUITE_SEED = 500, 7

#: The models users ask for (issue 8), by example file.
EXPECTED_FILES = {
    "llama-3.1-8b.yaml", "llama-3.3-70b.yaml", "llama-4-scout.yaml", "llama-4-maverick-fp8.yaml",
    "mistral-7b.yaml", "mistral-small-24b.yaml", "mixtral-8x7b.yaml", "deepseek-r1-distill-qwen-7b.yaml",
    "deepseek-r1-distill-qwen-32b.yaml", "qwen3-30b-a3b.yaml", "deepseek-r1.yaml", "deepseek-r1-on-h100.yaml",
    "canary-rollout.yaml", "canary-rollout-suite.yaml", "budget-capped.yaml", "scale-to-zero.yaml",
    "llama-3.1-8b-inference-pool.yaml",
    # The model mesh (issue 16): ModelRoutes and the models they route to.
    "model-mesh-by-task.yaml", "model-mesh-overflow.yaml", "model-mesh-cheapest.yaml",
    "mistral-7b-fine-tune.yaml",
    "llama-3.1-8b-awq.yaml",
    # Multi-node replicas (issue 19): DeepSeek-R1 and Llama 3.1 405B BF16 on 2x 8 H100.
    "deepseek-r1-multinode.yaml", "llama-3.1-405b-multinode.yaml",
}

SHAPE_COMMENT = re.compile(r"^# GPU shape: (\d+x [a-z0-9-]+(?: across \d+ nodes)?) per replica", re.MULTILINE)
CONDITION_COMMENT = re.compile(r"^# Condition: ([A-Za-z]+)\.", re.MULTILINE)


def dev_cluster_gpus_per_node() -> dict[str, int]:
    """The most GPUs one node of each type has in the dev cluster's default profile."""
    profile = yaml.safe_load(PROFILES.read_text())["profiles"]["default"]
    most: dict[str, int] = {}
    for group in profile["nodes"]:
        if group.get("gpu"):
            most[group["gpu"]] = max(most.get(group["gpu"], 0), int(group["gpus"]))
    return most


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _model_deployments(path: Path) -> list[dict[str, Any]]:
    return [d for d in _documents(path) if d.get("kind") == "ModelDeployment"]


def _plan(doc: dict[str, Any]) -> Plan:
    """Plan the way the reconcile does: validate, then plan from the parsed spec."""
    md = ModelDeployment.parse(doc)
    return build_plan(plan_request_from_spec(md.spec), gpus.GPU_TYPES)


MD_FILES = sorted(p.name for p in EXAMPLES.glob("*.yaml") if _model_deployments(p))


def test_the_examples_users_ask_for_are_there() -> None:
    assert {p.name for p in EXAMPLES.glob("*.yaml")} == EXPECTED_FILES


def test_example_names_are_unique_so_all_can_be_applied_together() -> None:
    names = [d["metadata"]["name"] for p in sorted(EXAMPLES.glob("*.yaml")) for d in _documents(p)]
    assert len(names) == len(set(names)), names


@pytest.mark.parametrize("name", MD_FILES, ids=MD_FILES)
def test_example_is_a_valid_model_deployment(name: str) -> None:
    docs = _model_deployments(EXAMPLES / name)
    assert len(docs) == 1
    md = ModelDeployment.parse(docs[0])
    assert md.name == docs[0]["metadata"]["name"]
    assert "namespace" not in docs[0]["metadata"]  # applied to the namespace of the user's choice


@pytest.mark.parametrize("name", MD_FILES, ids=MD_FILES)
def test_example_comment_tells_its_plan(name: str) -> None:
    text = (EXAMPLES / name).read_text()
    shapes, conditions = SHAPE_COMMENT.findall(text), CONDITION_COMMENT.findall(text)
    assert len(shapes) + len(conditions) == 1, "one '# GPU shape: …' or '# Condition: ….' comment"
    doc = _model_deployments(EXAMPLES / name)[0]
    plan = _plan(doc)
    if shapes:
        assert plan.fits, plan.reason
        assert plan.shape == shapes[0], plan.reason
        assert plan.gpu_type is not None
        assert dev_cluster_gpus_per_node().get(plan.gpu_type, 0) >= plan.gpus_per_node, \
            f"the dev cluster has no node for {plan.shape}"
    else:
        assert not plan.fits
        assert plan.reason_code.value == conditions[0], plan.reason


@pytest.mark.parametrize("name", MD_FILES, ids=MD_FILES)
def test_modelplane_plan_exit_code(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    fits = bool(SHAPE_COMMENT.search((EXAMPLES / name).read_text()))
    code = cli_main(["plan", "-f", str(EXAMPLES / name)])
    out = capsys.readouterr().out
    assert code == (EXIT_FITS if fits else EXIT_DOES_NOT_FIT), out
    assert ("DOES NOT FIT" in out) is not fits


def test_budget_cap_binds_below_max_replicas() -> None:
    doc = _model_deployments(EXAMPLES / "budget-capped.yaml")[0]
    scaling = doc["spec"]["scaling"]
    per_replica = _plan(doc).usd_per_hour_per_replica
    affordable = int(scaling["cost"]["maxHourlyUSD"] // per_replica)
    assert scaling["minReplicas"] <= affordable < scaling["maxReplicas"]
    assert f"pays for {affordable} replicas" in (EXAMPLES / "budget-capped.yaml").read_text()


def test_scale_to_zero_example_can_reach_zero() -> None:
    doc = _model_deployments(EXAMPLES / "scale-to-zero.yaml")[0]
    md = ModelDeployment.parse(doc)
    assert md.spec.scaling.min_replicas == 0
    assert doc["spec"]["scaling"]["scaleToZeroAfter"] == "15m"


# --- the canary example and its suite --------------------------------------------------------------


def suite_configmap_text() -> str:
    """The suite ConfigMap exactly as committed in examples/canary-rollout-suite.yaml."""
    jsonl = suite_jsonl(generate_suite(SUITE_CASES, seed=SUITE_SEED))
    body = "".join(f"    {line}\n" for line in jsonl.splitlines())
    return (
        "# The evaluation suite of examples/canary-rollout.yaml: 500 cases of the task family the dev\n"
        "# cluster's vLLM simulator solves (arithmetic, comparisons, repetition, JSON, multiple choice,\n"
        "# dates, divisions), so the gate can be exercised without a GPU.\n"
        f"# Generated by modelplane_dev.sim.quality.generate_suite({SUITE_CASES}, seed={SUITE_SEED});\n"
        "# do not edit — regenerate with `.venv/bin/python -m tests.unit.test_examples --write-suite`.\n"
        "# For a real model, write your own cases (format and graders: docs/rollouts.md, \"The evaluation\n"
        "# suite\") in a ConfigMap of the same name and key.\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: support-chat-evals\n"
        "data:\n"
        "  suite.jsonl: |\n"
        f"{body}"
    )


def _suite_text() -> str:
    cm = _documents(SUITE_FILE)[0]
    text: str = cm["data"]["suite.jsonl"]
    return text


def test_suite_configmap_is_a_fresh_generation() -> None:
    assert SUITE_FILE.read_text() == suite_configmap_text()
    assert _suite_text() == suite_jsonl(generate_suite(SUITE_CASES, seed=SUITE_SEED))


def test_canary_example_points_at_the_suite() -> None:
    doc = _model_deployments(EXAMPLES / "canary-rollout.yaml")[0]
    cm = _documents(SUITE_FILE)[0]
    ref = doc["spec"]["rollout"]["evaluation"]["suiteRef"]
    assert ref["configMap"] == cm["metadata"]["name"]
    assert ref["key"] in cm["data"]
    # A ConfigMap holds at most 1 MiB; client-side `kubectl apply` also copies it into an annotation
    # limited to 256 KiB.
    assert len(SUITE_FILE.read_bytes()) < 256 * 1024


def _graded(suite_cases: Any, checkpoint: str, accuracy: float) -> list[bool]:
    behavior = SimBehavior(accuracy=accuracy)
    return [grade(answer(case.chat_messages()[-1]["content"], checkpoint=checkpoint, behavior=behavior).text,
                  case) for case in suite_cases]


def test_simulator_answers_every_suite_case() -> None:
    suite = parse_suite(_suite_text())
    assert len(suite) == SUITE_CASES and not suite.needs_judge
    assert all(_graded(suite.cases, "perfect", 1.0))


def test_canary_gate_passes_an_equal_checkpoint_and_refuses_a_worse_one() -> None:
    """The example's gate settings, on the simulator: checkpoints are drawn independently, so an
    equal canary differs from stable on ~18% of cases; the margin must absorb that, and still refuse
    a checkpoint 30 points worse."""
    evaluation = _model_deployments(EXAMPLES / "canary-rollout.yaml")[0]["spec"]["rollout"]["evaluation"]
    cases = parse_suite(_suite_text()).cases
    passed_equal = refused_worse = 0
    trials = 10
    for trial in range(trials):
        stable = _graded(cases, f"stable-{trial}", 0.9)
        for canary_accuracy in (0.9, 0.6):
            canary = _graded(cases, f"canary-{trial}-{canary_accuracy}", canary_accuracy)
            pairs = zip(canary, stable, strict=True)
            outcomes = [PairedOutcome(str(i), c, s) for i, (c, s) in enumerate(pairs)]
            result = evaluate_gate(outcomes, min_score=evaluation["minScore"],
                                   max_regression=evaluation["maxRegression"],
                                   confidence=evaluation["confidence"])
            if canary_accuracy == 0.9:
                passed_equal += result.passed
            else:
                refused_worse += not result.passed
    assert refused_worse == trials
    assert passed_equal >= trials - 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.unit.test_examples")
    parser.add_argument("--write-suite", action="store_true", help=f"rewrite {SUITE_FILE.relative_to(REPO)}")
    args = parser.parse_args(argv)
    if args.write_suite:
        SUITE_FILE.write_text(suite_configmap_text())
        print(f"wrote {SUITE_FILE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
