"""The rollout inside the reconcile (``modelplane.rollout.driver``), the evaluation runtime's pure pieces
(``modelplane.rollout.runtime``) and the manual controls' patch (``modelplane.rollout.controls``)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelplane import render
from modelplane.controller import reconcile
from modelplane.controller.reconcile import Observed
from modelplane.rollout import controls
from modelplane.rollout import driver as rollouts
from modelplane.rollout import runtime as rollouts_runtime
from modelplane.rollout.machine import CONTROL_ANNOTATION, Command, EvalResult
from modelplane.rollout.spec import revision_fingerprint

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
STEPS = [{"weight": 50, "pause": "10s"}]


def md(revision: str = "rev-a", *, rollout: dict[str, Any] | None = None,
       status: dict[str, Any] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "ns", "uid": "uid-1", "generation": 2,
                     "annotations": annotations or {}},
        "spec": {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": revision},
                 "engine": {"maxModelLen": 8192},
                 "resources": {"gpu": {"count": "auto", "types": ["nvidia-l40s"]}},
                 "scaling": {"minReplicas": 2, "maxReplicas": 2},
                 "rollout": rollout if rollout is not None else {
                     "steps": STEPS, "evaluation": {"suiteRef": {"configMap": "suite"}}}}}
    if status is not None:
        body["status"] = status
    return body


def pods_for(deployments: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
    pods: list[dict[str, Any]] = []
    for dep in deployments:
        key = dep["metadata"]["labels"][render.LABEL_REVISION_HASH]
        for i in range(dep["status"]["readyReplicas"]):
            meta = {"name": f"{dep['metadata']['name']}-{i}", "creationTimestamp": "2026-11-26T11:00:00Z",
                    "labels": {render.LABEL_REVISION_HASH: key}}
            pods.append({"metadata": meta,
                         "spec": {"nodeName": "n", "containers": [{"name": "vllm"}]},
                         "status": {"phase": "Running", "podIP": f"127.64.0.{len(pods) + 1}",
                                    "conditions": [{"type": "Ready", "status": "True"}]}})
    return tuple(pods)


class World:
    """The API server's view after applying each result: children with every replica ready."""

    def __init__(self) -> None:
        self.deployments: dict[str, dict[str, Any]] = {}
        self.services: dict[str, dict[str, Any]] = {}
        self.pdbs: dict[str, dict[str, Any]] = {}
        self.status: dict[str, Any] | None = None

    def tick(self, body: dict[str, Any], now: datetime,
             memory: rollouts.Memory | None = None, suite_cases: int | None = None) -> reconcile.Result:
        body = copy.deepcopy(body)
        if self.status is not None:
            body["status"] = self.status
        deps = tuple(self.deployments.values())
        obs = Observed(body=body, deployments=deps, services=tuple(self.services.values()),
                       pdbs=tuple(self.pdbs.values()), pods=pods_for(deps), now=now,
                       monotonic=now.timestamp(), suite_cases=suite_cases)
        result = reconcile.finish(reconcile.prepare(obs, prices={}), obs, rollout_memory=memory)
        for child in result.apply:
            obj = copy.deepcopy(child)
            if obj["kind"] == "Deployment":
                obj["status"] = {"readyReplicas": obj["spec"]["replicas"]}
                self.deployments[obj["metadata"]["name"]] = obj
            elif obj["kind"] == "Service":
                self.services[obj["metadata"]["name"]] = obj
            else:
                self.pdbs[obj["metadata"]["name"]] = obj
        for _, name in result.delete:
            self.deployments.pop(name, None)
        self.status = result.effective_status
        return result


def test_a_gated_change_starts_a_canary_outside_the_service_and_orders_an_evaluation() -> None:
    world = World()
    world.tick(md("rev-a"), NOW)
    world.tick(md("rev-a"), NOW + timedelta(seconds=1))
    first = world.tick(md("rev-b"), NOW + timedelta(seconds=2))  # Deploying: canary created
    assert world.status is not None and world.status["canary"]["phase"] == "Deploying"
    assert len(world.deployments) == 2
    service = world.services["chat"]
    stable_key = render.revision_hash("hf://meta-llama/Llama-3.1-8B-Instruct", "rev-a")
    assert service["spec"]["selector"][render.LABEL_REVISION_HASH] == stable_key
    assert first.start_evaluation is None
    second = world.tick(md("rev-b"), NOW + timedelta(seconds=3), first.rollout_memory)  # canary ready
    order = second.start_evaluation
    assert order is not None and order.label == "rev-b" and order.attempt == 1
    assert order.canary_url is not None and order.stable_url is not None
    assert order.canary_url != order.stable_url
    assert order.report_name == f"chat-eval-{order.revision[:8]}"
    evaluating = next(c for c in world.status["conditions"] if c["type"] == "Evaluating")
    assert evaluating["status"] == "True"
    assert world.status["phase"] == "Progressing" and world.status["desiredRevisionLive"] is False


@pytest.mark.parametrize(("evaluation", "judge"), [
    ({"suiteRef": {"configMap": "suite"}}, None),
    ({"suiteRef": {"configMap": "suite"}, "judge": {"modelDeployment": "grader"}}, "grader"),
], ids=["no-judge", "judge"])
def test_the_evaluation_order_names_the_judge(evaluation: dict[str, Any], judge: str | None) -> None:
    rollout = {"steps": STEPS, "evaluation": evaluation}
    world = World()
    world.tick(md("rev-a", rollout=rollout), NOW)
    first = world.tick(md("rev-b", rollout=rollout), NOW + timedelta(seconds=1))
    second = world.tick(md("rev-b", rollout=rollout), NOW + timedelta(seconds=2), first.rollout_memory)
    assert second.start_evaluation is not None and second.start_evaluation.judge == judge


def test_a_failed_gate_rolls_back_after_draining_and_the_status_says_why() -> None:
    world = World()
    for i in range(2):
        world.tick(md("rev-a"), NOW + timedelta(seconds=i))
    memory = world.tick(md("rev-b"), NOW + timedelta(seconds=2)).rollout_memory
    memory = world.tick(md("rev-b"), NOW + timedelta(seconds=3), memory).rollout_memory
    assert memory.evaluation is not None
    verdict = EvalResult(passed=False, reason="canary score 0.5 is below the floor", canary_score=0.5,
                         stable_score=0.9, lower_bound=-0.5, cases=40, failing_case_ids=("c1", "c2"))
    memory = rollouts.Memory(evaluation=rollouts.EvalSlot(memory.evaluation.revision, 1, running=False,
                                                          result=verdict))
    t = NOW + timedelta(seconds=4)
    for _ in range(12):  # rollback: narrow the Service, drain, delete the canary, settle
        memory = world.tick(md("rev-b"), t, memory).rollout_memory
        t += timedelta(seconds=1)
    assert world.status is not None
    canary = world.status["canary"]
    assert canary["phase"] == "RolledBack" and canary["reason"] == "EvaluationFailed"
    assert canary["rejectedRevision"] == "rev-b" and canary["failingCases"] == ["c1", "c2"]
    assert world.status["servingRevision"] == "rev-a" and world.status["desiredRevisionLive"] is False
    assert len(world.deployments) == 1
    assert world.status["rolloutHistory"][-1]["decision"] == "RolledBack"
    # Settled: another tick writes nothing.
    again = world.tick(md("rev-b"), t + timedelta(seconds=5), memory)
    assert again.status is None and again.apply == () and again.delete == ()


def test_an_underpowered_suite_is_a_warning_condition_and_one_event() -> None:
    world = World()
    world.tick(md("rev-a"), NOW)
    first = world.tick(md("rev-b"), NOW + timedelta(seconds=1))  # Deploying, the suite not read yet
    assert world.status is not None
    assert "SuiteUnderpowered" not in {c["type"] for c in world.status["conditions"]}
    counted = world.tick(md("rev-b"), NOW + timedelta(seconds=2), first.rollout_memory, suite_cases=200)
    warnings = [e for e in counted.events if e.reason == "SuiteUnderpowered"]
    assert len(warnings) == 1 and warnings[0].type == "Warning" and "1,565 cases" in warnings[0].message
    condition = next(c for c in world.status["conditions"] if c["type"] == "SuiteUnderpowered")
    assert (condition["status"], condition["reason"]) == ("True", "SuiteUnderpowered")
    assert "21.5%" in condition["message"] and "assumed" in condition["message"]
    power = world.status["canary"]["power"]
    assert (power["cases"], power["casesNeeded"], power["underpowered"]) == (200, 1565, True)
    # Not a block: the canary is ready, so its evaluation starts in the same tick; no second warning.
    assert counted.start_evaluation is not None
    later = world.tick(md("rev-b"), NOW + timedelta(seconds=3), counted.rollout_memory, suite_cases=200)
    assert "SuiteUnderpowered" not in {e.reason for e in later.events}
    assert world.status["canary"]["phase"] == "Evaluating"


def test_an_evaluation_without_a_verdict_is_run_again() -> None:
    world = World()
    world.tick(md("rev-a"), NOW)
    memory = world.tick(md("rev-b"), NOW + timedelta(seconds=1)).rollout_memory
    memory = world.tick(md("rev-b"), NOW + timedelta(seconds=2), memory).rollout_memory
    assert memory.evaluation is not None
    errored = EvalResult(passed=False, reason="no verdict: 200 of 200 cases ...", canary_score=0.0,
                         stable_score=0.0, cases=0, errored=True, canary_errors=200, stable_errors=200,
                         suite_cases=200)
    memory = rollouts.Memory(evaluation=rollouts.EvalSlot(memory.evaluation.revision, 1, running=False,
                                                          result=errored))
    again = world.tick(md("rev-b"), NOW + timedelta(seconds=3), memory)
    assert again.start_evaluation is not None and again.start_evaluation.attempt == 2
    assert world.status is not None and world.status["canary"]["phase"] == "Evaluating"
    assert (world.status["canary"]["canaryErrors"], world.status["canary"]["stableErrors"]) == (200, 200)
    assert "EvaluationErrors" in {e.reason for e in again.events}
    for attempt in (2, 3):  # the same errors every time: rolled back after the third, never promoted
        assert memory.evaluation is not None
        memory = rollouts.Memory(evaluation=rollouts.EvalSlot(memory.evaluation.revision, attempt,
                                                              running=False, result=errored))
        memory = world.tick(md("rev-b"), NOW + timedelta(seconds=2 + attempt), memory).rollout_memory
    canary = world.status["canary"]
    assert canary["phase"] == "RollingBack" and canary["reason"] == "EvaluationErrors"
    assert "no evaluation verdict after 3 attempts" in canary["message"]
    evaluating = next(c for c in world.status["conditions"] if c["type"] == "Evaluating")
    assert evaluating["reason"] == "EvaluationErrors" and "canary 200, stable 200" in evaluating["message"]


def status_of(phase: str, stable: str | None, rejected: str | None = None) -> dict[str, Any]:
    return {"stable": {"fingerprint": stable}, "canary": {"phase": phase, "rejectedFingerprint": rejected}}


FP_A, FP_B = revision_fingerprint(md("rev-a")["spec"]), revision_fingerprint(md("rev-b")["spec"])


@pytest.mark.parametrize(
    ("spec", "status", "wanted"),
    [
        pytest.param(md("rev-b")["spec"], status_of("Promoted", FP_A), ("suite", "suite.jsonl"),
                     id="a-new-revision-can-start-a-rollout"),
        pytest.param(md("rev-b")["spec"], status_of("Evaluating", FP_A), ("suite", "suite.jsonl"),
                     id="evaluating"),
        pytest.param(md("rev-b")["spec"], status_of("Promoted", FP_B), None, id="settled-on-the-spec"),
        pytest.param(md("rev-b")["spec"], status_of("RolledBack", FP_A, FP_B), None,
                     id="rejected-not-retried"),
        pytest.param(md("rev-b")["spec"], None, None, id="first-deploy-has-no-gate"),
        pytest.param(md("rev-b", rollout={"steps": STEPS, "evaluation": {
            "suiteRef": {"configMap": "qa", "key": "cases.jsonl"}}})["spec"], status_of("Deploying", FP_A),
            ("qa", "cases.jsonl"), id="own-key"),
        pytest.param(md("rev-b", rollout={"steps": STEPS, "evaluation": {
            "evaluator": {"image": "lm-eval:1"}}})["spec"], status_of("Deploying", FP_A), None,
            id="custom-evaluator-has-no-suite"),
        pytest.param(md("rev-b", rollout={"steps": STEPS})["spec"], status_of("Deploying", FP_A), None,
                     id="no-evaluation"),
    ],
)
def test_suite_to_count(spec: dict[str, Any], status: dict[str, Any] | None,
                        wanted: tuple[str, str] | None) -> None:
    assert rollouts.suite_to_count(spec, status) == wanted


def test_the_report_counts_errors_per_side_and_the_power() -> None:
    from modelplane.rollout.evaluate import Answer, EvaluationRun
    from modelplane.rollout.stats import PairedOutcome, evaluate_gate

    outcomes = tuple(PairedOutcome(f"c{i}", True, True, stable_error=i < 5) for i in range(200))
    answers = tuple(Answer(o.case_id, "yes", True, None, 1, 0.1) for o in outcomes)
    stable = tuple(Answer(o.case_id, None, False, "HTTP 503: busy" if o.stable_error else None, 3, 0.1)
                   for o in outcomes)
    run = EvaluationRun(outcomes=outcomes, canary=answers, stable=stable)
    gate = evaluate_gate(outcomes, min_score=0.0)
    report = json.loads(rollouts_runtime.build_report(order(), gate, run)["data"]["report.json"])
    assert (report["verdict"], report["cases"], report["suiteCases"], report["excludedCases"]) == (
        "Pass", 195, 200, 5)
    assert (report["canaryErrorCount"], report["stableErrorCount"], report["maxErrorRate"]) == (0, 5, 0.05)
    assert report["stableErrors"]["c0"] == "HTTP 503: busy" and report["discordance"] == 0.0
    assert report["equalCanaryPassProbability"] == 1.0


def test_without_a_rollout_spec_a_revision_change_switches_directly() -> None:
    world = World()
    world.tick(md("rev-a", rollout={}), NOW)
    world.tick(md("rev-b", rollout={}), NOW + timedelta(seconds=1))
    world.tick(md("rev-b", rollout={}), NOW + timedelta(seconds=2))
    assert world.status is not None and world.status["stable"]["revision"] == "rev-b"
    assert world.status["rolloutHistory"][-1]["decision"] == "Direct"
    assert "revision-hash" not in json.dumps(world.services["chat"]["spec"]["selector"])


def test_a_control_annotation_is_read_once() -> None:
    world = World()
    for i in range(2):
        world.tick(md("rev-a"), NOW + timedelta(seconds=i))
    world.tick(md("rev-b"), NOW + timedelta(seconds=2))
    value = controls.control_value(Command.ABORT, NOW)
    result = world.tick(md("rev-b", annotations={CONTROL_ANNOTATION: value}), NOW + timedelta(seconds=3))
    assert world.status is not None and world.status["canary"]["handledControl"] == value
    assert world.status["canary"]["phase"] == "RollingBack"
    assert "AbortedByUser" in {e.reason for e in result.events}
    later = world.tick(md("rev-b", annotations={CONTROL_ANNOTATION: value}), NOW + timedelta(seconds=4))
    assert "AbortedByUser" not in {e.reason for e in later.events}


@pytest.mark.parametrize(
    ("taken", "expected"),
    [({}, "default"), ({"DEFAULT": "other-fp"}, "fingerprint"), ({"DEFAULT": "fp-b0123456789"}, "default")],
    ids=["free", "held-by-another-fingerprint", "held-by-itself"],
)
def test_new_key_avoids_another_workloads_selector(taken: dict[str, str], expected: str) -> None:
    default = render.revision_hash("hf://a/b", "r")
    taken = {default if k == "DEFAULT" else k: v for k, v in taken.items()}
    key = rollouts.new_key("hf://a/b", "r", "fp-b0123456789", taken)
    assert key == (default if expected == "default" else "fp-b012345")


def test_stable_is_rendered_from_its_snapshot_after_the_spec_moved_on() -> None:
    spec_a = md("rev-a")["spec"]
    spec_b = copy.deepcopy(md("rev-b")["spec"])
    spec_b["engine"]["extraArgs"] = ["--enable-prefix-caching"]
    shape = rollouts.Shape("nvidia-l40s", 1, 1, 600)
    snapshot = json.loads(rollouts.snapshot_annotation(spec_a, shape))
    rendered = rollouts.spec_with_gated(spec_b, snapshot["gated"])
    assert rendered["model"]["revision"] == "rev-a"
    assert "extraArgs" not in rendered["engine"]
    assert revision_fingerprint(rendered) == revision_fingerprint(spec_a)
    assert rendered["scaling"] == spec_b["scaling"]  # direct fields follow the spec


@pytest.mark.parametrize(
    ("text", "score", "baseline"),
    [("0.91", 0.91, None), ('{"score": 0.8, "baseline": 0.82}', 0.8, 0.82), (' {"score": 1} \n', 1.0, None)],
    ids=["number", "json-with-baseline", "json-score-only"],
)
def test_parse_score(text: str, score: float, baseline: float | None) -> None:
    assert rollouts_runtime.parse_score(text) == (score, baseline)


@pytest.mark.parametrize("text", ["done", '{"accuracy": 0.9}', "true"], ids=["text", "no-score", "bool"])
def test_parse_score_refuses_what_has_no_score(text: str) -> None:
    with pytest.raises(rollouts_runtime.EvaluationError):
        rollouts_runtime.parse_score(text)


def order(**overrides: Any) -> rollouts.EvaluationOrder:
    base: dict[str, Any] = dict(
        namespace="ns", md_name="chat", md_uid="uid-1", revision="abcdef0123456", label="rev-b",
        stable_revision="0123", attempt=1, report_name="chat-eval-abcdef01", job_name="chat-eval-abcdef01-1",
        canary_url="http://127.64.0.2:8000", stable_url="http://127.64.0.1:8000", served_name="chat",
        suite_config_map=None, suite_key="suite.jsonl",
        evaluator={"image": "ghcr.io/acme/lm-eval:1", "args": ["--tasks", "gsm8k"]}, judge=None,
        min_score=0.7, max_regression=0.02, confidence=0.95, max_error_rate=0.05, concurrency=4,
        timeout_seconds=60.0)
    base.update(overrides)
    return rollouts.EvaluationOrder(**base)


@pytest.mark.parametrize(
    ("score", "baseline", "passed"),
    [(0.8, None, True), (0.6, None, False), (0.79, 0.80, True), (0.75, 0.80, False)],
    ids=["floor-ok", "below-floor", "within-margin", "regression"],
)
def test_job_verdict(score: float, baseline: float | None, passed: bool) -> None:
    assert rollouts_runtime.job_verdict(order(), score, baseline).passed is passed


def test_the_evaluator_job_never_restarts_and_gets_the_endpoints() -> None:
    job = rollouts_runtime.build_job(order())
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["CANARY_URL"] == "http://127.64.0.2:8000/v1" and env["MODEL"] == "chat"
    assert env["RESULT_CONFIGMAP"] == "chat-eval-abcdef01-1-result"
    assert pod["containers"][0]["args"] == ["--tasks", "gsm8k"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_a_control_is_a_new_value_each_time() -> None:
    first = controls.build_patch(Command.PROMOTE, NOW)
    second = controls.build_patch(Command.PROMOTE, NOW + timedelta(microseconds=1))
    value = first["metadata"]["annotations"][CONTROL_ANNOTATION]
    assert value.startswith("promote@") and value != second["metadata"]["annotations"][CONTROL_ANNOTATION]
