"""The rollout inside the reconcile (``modelplane.rollout.driver``), the evaluation runtime's pure pieces
(``modelplane.rollout.runtime``) and the manual controls' patch (``modelplane.rollout.controls``)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelplane import render
from modelplane.api.models import EvaluatorSpec, ModelDeploymentSpec
from modelplane.controller import reconcile
from modelplane.controller.reconcile import Observed
from modelplane.rollout import controls
from modelplane.rollout import driver as rollouts
from modelplane.rollout import runtime as rollouts_runtime
from modelplane.rollout.machine import CONTROL_ANNOTATION, Command, EvalResult
from modelplane.rollout.spec import gated_fields, revision_fingerprint, spec_with_gated

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SOURCE = "hf://meta-llama/Llama-3.1-8B-Instruct"
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
    """The API server's view after applying each result: children with every replica ready, or at
    most ``ready_cap[key]`` of the workload ``key`` (GPUs short, pods still loading)."""

    def __init__(self) -> None:
        self.deployments: dict[str, dict[str, Any]] = {}
        self.services: dict[str, dict[str, Any]] = {}
        self.pdbs: dict[str, dict[str, Any]] = {}
        self.status: dict[str, Any] | None = None
        self.memory: rollouts.Memory | None = None  #: the controller's, as run_rollout left it
        self.ready_cap: dict[str, int] = {}

    def tick(self, body: dict[str, Any], now: datetime,
             memory: rollouts.Memory | None = None, suite_cases: int | None = None) -> reconcile.Result:
        body = copy.deepcopy(body)
        if self.status is not None:
            body["status"] = self.status
        for dep in self.deployments.values():
            replicas = dep["spec"]["replicas"]
            cap = self.ready_cap.get(dep["metadata"]["labels"][render.LABEL_REVISION_HASH], replicas)
            dep["status"] = {"readyReplicas": min(replicas, cap)}
        deps = tuple(self.deployments.values())
        obs = Observed(body=body, deployments=deps, services=tuple(self.services.values()),
                       pdbs=tuple(self.pdbs.values()), pods=pods_for(deps), now=now,
                       monotonic=now.timestamp(), suite_cases=suite_cases)
        result = reconcile.finish(reconcile.prepare(obs, prices={}), obs, rollout_memory=memory)
        for child in result.apply:
            obj = copy.deepcopy(child)
            if obj["kind"] == "Deployment":
                cap = self.ready_cap.get(obj["metadata"]["labels"][render.LABEL_REVISION_HASH],
                                         obj["spec"]["replicas"])
                obj["status"] = {"readyReplicas": min(obj["spec"]["replicas"], cap)}
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
    for _ in range(12):  # rollback: weight 0, drain, delete the canary, settle
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


def spec_of(raw: dict[str, Any]) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(raw)


FP_A = revision_fingerprint(spec_of(md("rev-a")["spec"]))
FP_B = revision_fingerprint(spec_of(md("rev-b")["spec"]))


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
    assert rollouts.suite_to_count(spec_of(spec), status) == wanted


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
    # The Service selects the revision that serves: rev-b's pods, once rev-a's are gone.
    assert world.services["chat"]["spec"]["selector"][render.LABEL_REVISION_HASH] == \
        render.revision_hash(SOURCE, "rev-b")
    assert len(world.deployments) == 1


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
    spec_a = spec_of(md("rev-a")["spec"])
    raw_b = copy.deepcopy(md("rev-b")["spec"])
    raw_b["engine"]["extraArgs"] = ["--enable-prefix-caching"]
    raw_b["scaling"] = {"minReplicas": 1, "maxReplicas": 3}
    spec_b = spec_of(raw_b)
    shape = rollouts.Shape("nvidia-l40s", 1, 1, 600)
    snapshot = json.loads(rollouts.snapshot_annotation(spec_a, shape))
    assert snapshot["gated"] == gated_fields(spec_a)
    rendered = spec_with_gated(spec_b, snapshot["gated"])
    assert rendered.model.revision == "rev-a"
    assert rendered.engine.extra_args == []
    assert revision_fingerprint(rendered) == revision_fingerprint(spec_a)
    assert rendered.scaling == spec_b.scaling  # direct fields follow the spec


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
        evaluator=EvaluatorSpec(image="ghcr.io/acme/lm-eval:1", args=["--tasks", "gsm8k"]), judge=None,
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


# --- the weight is the gateway's; replicas are capacity; the Service selects stable ------------------

PASSED = EvalResult(passed=True, reason="ok", canary_score=0.9, stable_score=0.88, lower_bound=-0.01,
                    cases=60)


def scaled(body: dict[str, Any], replicas: int) -> dict[str, Any]:
    body["spec"]["scaling"] = {"minReplicas": replicas, "maxReplicas": replicas}
    return body


def by_key(world: World) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["labels"][render.LABEL_REVISION_HASH]: d for d in world.deployments.values()}


def service_key(world: World) -> str | None:
    key: str | None = world.services["chat"]["spec"]["selector"].get(render.LABEL_REVISION_HASH)
    return key


def run_rollout(world: World, body: dict[str, Any], start: datetime, *, ticks: int = 60,
                verdict: EvalResult = PASSED, step: timedelta = timedelta(seconds=1),
                until: str | None = None) -> list[dict[str, Any]]:
    """Tick every ``step`` (1 s), passing the gate when asked, until the rollout is over or its phase is
    ``until``; what each tick left: phase, weight, replicas, the Service's key, the message."""
    memory: rollouts.Memory | None = world.memory
    seen: list[dict[str, Any]] = []
    key_a, key_b = render.revision_hash(SOURCE, "rev-a"), render.revision_hash(SOURCE, "rev-b")
    for i in range(ticks):
        result = world.tick(body, start + step * i, memory)
        memory = result.rollout_memory
        if result.start_evaluation is not None:
            order = result.start_evaluation
            slot = rollouts.EvalSlot(order.revision, order.attempt, running=False, result=verdict)
            memory = replace(memory, evaluation=slot)
        assert world.status is not None
        deps = by_key(world)
        canary = world.status.get("canary") or {}
        seen.append({"phase": canary.get("phase"), "weight": canary.get("weight", 0), "t": i,
                     "stable": deps[key_a]["spec"]["replicas"] if key_a in deps else None,
                     "canary": deps[key_b]["spec"]["replicas"] if key_b in deps else None,
                     "service": service_key(world),
                     "canary_template": deps[key_b]["spec"]["template"]["metadata"]["labels"]
                     if key_b in deps else None,
                     "canary_ready": deps[key_b]["status"]["readyReplicas"] if key_b in deps else None,
                     "message": canary.get("message", ""),
                     "progressing": next((c["message"] for c in world.status["conditions"]
                                          if c["type"] == "Progressing"), "")})
        world.memory = memory
        if canary.get("phase") in ("Promoted", "RolledBack") and len(world.deployments) == 1:
            break
        if until is not None and canary.get("phase") == until:
            break
    world.memory = memory
    return seen


# (phase, weight in status, canary replicas) for a fleet of 4 and steps of 10% and 50%; a tick may
# pass through several phases, so only those it ends in are seen.
EXPECTED = {("Deploying", 0, 1), ("Evaluating", 0, 1), ("Stepping", 10, 1), ("Analyzing", 10, 1),
            ("Stepping", 50, 2), ("Analyzing", 50, 2), ("Promoting", 50, 4), ("Promoting", 100, 4)}
SEEN_AT_LEAST = {("Evaluating", 0, 1), ("Analyzing", 10, 1), ("Analyzing", 50, 2), ("Promoting", 50, 4),
                 ("Promoting", 100, 4)}


def test_the_weight_goes_to_status_and_the_canary_runs_its_share_beside_stables_whole_fleet() -> None:
    rollout = {"steps": [{"weight": 10, "pause": "10s"}, {"weight": 50, "pause": "10s"}],
               "evaluation": {"suiteRef": {"configMap": "suite"}}}
    world = World()
    world.tick(scaled(md("rev-a", rollout=rollout), 4), NOW)
    world.tick(scaled(md("rev-a", rollout=rollout), 4), NOW + timedelta(seconds=1))
    seen = run_rollout(world, scaled(md("rev-b", rollout=rollout), 4), NOW + timedelta(seconds=2))
    during = [s for s in seen if s["phase"] not in ("Promoted", None)]
    assert SEEN_AT_LEAST <= {(s["phase"], s["weight"], s["canary"]) for s in during} <= EXPECTED
    # Stable keeps its whole fleet until the promotion is done (a rollback never finds it short): it
    # goes only once the Service has moved to the promoted canary's whole fleet.
    key_b = render.revision_hash(SOURCE, "rev-b")
    assert all(s["stable"] == 4 or (s["phase"] == "Promoting" and s["service"] == key_b and s["canary"] == 4)
               for s in during)
    assert seen[-1]["phase"] == "Promoted" and seen[-1]["stable"] is None and seen[-1]["canary"] == 4


def test_the_service_selects_stable_until_the_promoted_canary_has_its_whole_fleet() -> None:
    rollout = {"steps": [{"weight": 10, "pause": "10s"}, {"weight": 50, "pause": "10s"}],
               "evaluation": {"suiteRef": {"configMap": "suite"}}}
    world = World()
    world.tick(scaled(md("rev-a", rollout=rollout), 4), NOW)
    seen = run_rollout(world, scaled(md("rev-b", rollout=rollout), 4), NOW + timedelta(seconds=1))
    key_a, key_b = render.revision_hash(SOURCE, "rev-a"), render.revision_hash(SOURCE, "rev-b")
    # One change of selector in the whole rollout, never while the canary takes a share.
    changes = [s for prev, s in zip(seen, seen[1:], strict=False) if s["service"] != prev["service"]]
    assert [s["service"] for s in seen[:1] + changes] == [key_a, key_b]
    assert changes[0]["phase"] == "Promoting" and changes[0]["canary"] == 4
    # The gateways had weight 100 from status a tick before the Service moved.
    assert seen[changes[0]["t"] - 1]["weight"] == 100 and seen[changes[0]["t"] - 1]["service"] == key_a
    assert all(s["service"] == key_a for s in seen if s["phase"] in ("Deploying", "Evaluating", "Stepping",
                                                                      "Analyzing"))
    # The old stable leaves the Service before it is deleted.
    gone = next(s for s in seen if s["stable"] is None)
    assert gone["t"] - changes[0]["t"] >= rollouts.DRAIN_SECONDS
    # The canary's pods were never relabelled (that would restart them): the template is as created.
    templates = {json.dumps(s["canary_template"], sort_keys=True) for s in seen if s["canary_template"]}
    assert len(templates) == 1


def test_a_rolled_back_canary_is_deleted_once_the_gateways_have_seen_weight_0() -> None:
    rollout = {"steps": [{"weight": 10, "pause": "10s"}], "evaluation": {"suiteRef": {"configMap": "suite"}}}
    failed = replace(PASSED, passed=False, reason="worse", canary_score=0.5)
    world = World()
    world.tick(md("rev-a", rollout=rollout), NOW)
    seen = run_rollout(world, md("rev-b", rollout=rollout), NOW + timedelta(seconds=1), verdict=failed)
    rolling = [s for s in seen if s["phase"] == "RollingBack"]
    assert rolling and all(s["weight"] == 0 for s in rolling)
    deleted = next(s for s in seen if s["canary"] is None)
    assert deleted["t"] - rolling[0]["t"] >= rollouts.DRAIN_SECONDS
    assert all(s["canary"] == 1 for s in rolling if s["t"] - rolling[0]["t"] < rollouts.DRAIN_SECONDS)
    key_a = render.revision_hash(SOURCE, "rev-a")
    assert {s["service"] for s in seen} == {key_a}  # the canary was never behind the Service
    assert seen[-1]["phase"] == "RolledBack"


def test_a_superseded_canary_goes_at_once_and_the_new_one_starts_at_weight_0() -> None:
    rollout = {"steps": [{"weight": 50, "pause": "10m"}], "evaluation": {"suiteRef": {"configMap": "suite"}}}
    world = World()
    world.tick(scaled(md("rev-a", rollout=rollout), 4), NOW)
    seen = run_rollout(world, scaled(md("rev-b", rollout=rollout), 4), NOW + timedelta(seconds=1), ticks=6)
    assert seen[-1]["phase"] == "Analyzing" and seen[-1]["weight"] == 50 and seen[-1]["canary"] == 2
    result = world.tick(scaled(md("rev-c", rollout=rollout), 4), NOW + timedelta(seconds=10), world.memory)
    assert world.status is not None and world.status["canary"]["phase"] == "Deploying"
    assert world.status["canary"]["weight"] == 0
    # Status names rev-c now: a gateway would take rev-b's pods for stable's, so they go in this tick.
    assert [name for _, name in result.delete] == [f"chat-{render.revision_hash(SOURCE, 'rev-b')}"]
    keys = set(by_key(world))
    assert keys == {render.revision_hash(SOURCE, "rev-a"), render.revision_hash(SOURCE, "rev-c")}
    assert service_key(world) == render.revision_hash(SOURCE, "rev-a")
    assert by_key(world)[render.revision_hash(SOURCE, "rev-a")]["spec"]["replicas"] == 4


# --- a promotion: the last step's weight until the canary's whole fleet is ready, then 100 -----------

TWO_STEPS = {"steps": [{"weight": 10, "pause": "10s"}, {"weight": 50, "pause": "10s"}],
             "evaluation": {"suiteRef": {"configMap": "suite"}}}
KEY_A, KEY_B = render.revision_hash(SOURCE, "rev-a"), render.revision_hash(SOURCE, "rev-b")


def test_a_promotion_keeps_the_last_step_weight_until_the_canary_has_its_whole_fleet_ready() -> None:
    world = World()
    world.tick(scaled(md("rev-a", rollout=TWO_STEPS), 4), NOW)
    body = scaled(md("rev-b", rollout=TWO_STEPS), 4)
    world.ready_cap[KEY_B] = 2  # enough for the steps (1 and 2 replicas), not for the whole fleet
    steps = run_rollout(world, body, NOW + timedelta(seconds=1), until="Promoting")
    t = NOW + timedelta(seconds=1 + len(steps))
    assert steps[-1]["phase"] == "Promoting"
    # Scaled to the whole fleet, 2 of 4 ready: the gateway keeps sending it 50%, stable keeps its fleet
    # and the Service, and the status says what it waits for.
    waiting = run_rollout(world, body, t, ticks=10)
    t += timedelta(seconds=10)
    assert [(s["phase"], s["weight"], s["canary"], s["canary_ready"], s["stable"], s["service"])
            for s in steps[-1:] + waiting] == [("Promoting", 50, 4, 2, 4, KEY_A)] * 11
    wait = "waiting for the canary's whole fleet: 2/4 replicas ready; it takes 50% of the requests"
    assert all(wait in s["message"] and wait in s["progressing"] for s in waiting)
    assert waiting[-1]["message"].startswith("all 2 steps passed; promoting canary")
    world.ready_cap[KEY_B] = 3
    three = run_rollout(world, body, t, ticks=3)
    t += timedelta(seconds=3)
    assert all(s["weight"] == 50 and "3/4 replicas ready" in s["progressing"] for s in three)
    # The whole fleet ready: weight 100 in status, then the Service, then stable's removal.
    del world.ready_cap[KEY_B]
    rest = run_rollout(world, body, t)
    at_100 = next(s for s in rest if s["weight"] == 100)
    moved = next(s for s in rest if s["service"] == KEY_B)
    gone = next(s for s in rest if s["stable"] is None)
    assert at_100["t"] == 0 and at_100["service"] == KEY_A and at_100["stable"] == 4
    assert "the canary's whole fleet is ready (4/4 replicas): it takes 100% of the requests (was 50%)" in \
        at_100["message"]
    assert at_100["t"] < moved["t"] and moved["weight"] == 100
    assert gone["t"] - moved["t"] >= rollouts.DRAIN_SECONDS
    assert all(s["stable"] == 4 for s in rest if s["t"] < gone["t"])
    assert rest[-1]["phase"] == "Promoted" and rest[-1]["canary"] == 4 and rest[-1]["service"] == KEY_B
    history = world.status["rolloutHistory"][-1] if world.status else {}
    assert history["decision"] == "Promoted" and history["reason"] == "StepsComplete"


def test_once_moved_the_service_stays_on_the_promoted_canary_through_a_readiness_blip() -> None:
    world = World()
    world.tick(scaled(md("rev-a", rollout=TWO_STEPS), 4), NOW)
    body = scaled(md("rev-b", rollout=TWO_STEPS), 4)
    seen = run_rollout(world, body, NOW + timedelta(seconds=1))
    moved = next(s for s in seen if s["service"] == KEY_B)
    # Again, but one canary pod goes unready right after the Service moved, before stable is gone.
    world = World()
    world.tick(scaled(md("rev-a", rollout=TWO_STEPS), 4), NOW)
    first = run_rollout(world, body, NOW + timedelta(seconds=1), ticks=moved["t"] + 1)
    assert first[-1]["service"] == KEY_B and first[-1]["stable"] == 4
    world.ready_cap[KEY_B] = 3
    blip = run_rollout(world, body, NOW + timedelta(seconds=2 + moved["t"]), ticks=3)
    assert [(s["phase"], s["weight"], s["service"]) for s in blip] == [("Promoting", 100, KEY_B)] * 3


def test_a_promotion_whose_fleet_never_gets_ready_rolls_back_after_the_deploy_timeout() -> None:
    world = World()
    world.tick(scaled(md("rev-a", rollout=TWO_STEPS), 4), NOW)
    body = scaled(md("rev-b", rollout=TWO_STEPS), 4)
    world.ready_cap[KEY_B] = 2  # no GPU for the other two
    steps = run_rollout(world, body, NOW + timedelta(seconds=1), until="Promoting")
    start = NOW + timedelta(seconds=1 + len(steps))
    seen = run_rollout(world, body, start, step=timedelta(minutes=10), ticks=12)
    promoting = [s for s in seen if s["phase"] == "Promoting"]
    assert len(promoting) == 6  # 0-50 min; at 60 min not yet over the hour (it began a tick earlier)
    assert all(s["weight"] == 50 and "2/4 replicas ready" in s["progressing"] for s in promoting)
    rolling = next(s for s in seen if s["phase"] == "RollingBack")
    assert rolling["weight"] == 0 and "promotion of canary" in rolling["message"]
    assert "2/4 replicas of its whole fleet were ready after 1:00:00" in rolling["message"]
    assert {s["service"] for s in steps + seen} == {KEY_A} and all(s["stable"] == 4 for s in seen)
    assert world.status is not None
    canary = world.status["canary"]
    assert (canary["phase"], canary["reason"], canary["rejectedRevision"]) == (
        "RolledBack", "CanaryNotReady", "rev-b")
    assert set(by_key(world)) == {KEY_A}


def test_a_promotion_without_steps_stays_at_weight_0_until_the_whole_fleet_is_ready() -> None:
    rollout = {"evaluation": {"suiteRef": {"configMap": "suite"}}}
    world = World()
    world.tick(scaled(md("rev-a", rollout=rollout), 4), NOW)
    body = scaled(md("rev-b", rollout=rollout), 4)
    world.ready_cap[KEY_B] = 1
    first = run_rollout(world, body, NOW + timedelta(seconds=1), ticks=8)
    promoting = [s for s in first if s["phase"] == "Promoting"]
    assert promoting and all((s["weight"], s["canary"], s["service"], s["stable"]) == (0, 4, KEY_A, 4)
                             for s in promoting)
    assert "1/4 replicas ready; it takes 0% of the requests" in promoting[-1]["progressing"]
    del world.ready_cap[KEY_B]
    rest = run_rollout(world, body, NOW + timedelta(seconds=9))
    assert rest[0]["weight"] == 100 and rest[0]["service"] == KEY_A
    assert {s["weight"] for s in first} == {0}  # no request reached the canary before its fleet was ready
    assert rest[-1]["phase"] == "Promoted" and rest[-1]["service"] == KEY_B and rest[-1]["stable"] is None
