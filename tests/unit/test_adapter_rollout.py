"""Adapter rollouts (controller/adapterrollout.py, gateway/adapters.py): the pure core over a simulated
world of replicas, no cluster.

Each tick: ``drive`` decides, ``plan_actions`` turns what it wants into loads and unloads, which the
test applies to the replicas' holdings, and the status is rendered and read back at the next tick
(as the operator writes it and reads it from its cache).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane.api.adapter import ModelAdapter, ModelAdapterStatus
from modelplane.controller import adapterrollout as ro
from modelplane.controller import adapters as core
from modelplane.gateway.adapters import adapter_backend, upstream_body
from modelplane.gateway.table import Backend, CanarySplit, Endpoint
from modelplane.gateway.weights import Group, group_endpoints
from modelplane.rollout.driver import EvalSlot
from modelplane.rollout.machine import EvalResult, Phase
from modelplane.rollout.spec import rollout_spec_from_api

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
PODS = {"base-a": "10.0.0.1", "base-b": "10.0.0.2"}
PATHS = {"hf://org/sql-v1": "org/sql-v1", "hf://org/sql-v2": "org/sql-v2", "hf://org/sql-v3": "org/sql-v3"}
GATE = {"evaluation": {"suiteRef": {"configMap": "sql-suite"}, "maxRegression": 0.05}}


def adapter(source: str, revision: str, rollout: dict[str, Any] | None = None,
            annotations: dict[str, str] | None = None) -> ModelAdapter:
    meta = {"name": "sql", "namespace": "team", "generation": 1, "annotations": annotations or {}}
    spec: dict[str, Any] = {"base": "llama", "source": source, "revision": revision, "servedName": "sql"}
    if rollout is not None:
        spec["rollout"] = rollout
    return ModelAdapter.parse({"metadata": meta, "spec": spec})


@dataclass
class World:
    """Two replicas, what they hold, the status the operator wrote, and the operator's memory."""

    loaded: dict[str, dict[str, str]] = field(default_factory=lambda: {p: {} for p in PODS})
    revisions: dict[tuple[str, str], str] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    memory: ro.Memory = field(default_factory=ro.Memory)
    now: datetime = T0
    events: list[str] = field(default_factory=list)
    orders: list[Any] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)  #: paths whose loads fail (vLLM: not found)
    unloads: list[str] = field(default_factory=list)  #: every name unloaded, in order

    def tick(self, ad: ModelAdapter, seconds: float = 2.0) -> ro.Tick:
        self.now += timedelta(seconds=seconds)
        tick = ro.drive(ad, status=self.status, path_of=PATHS, ready=PODS, loaded=self.loaded,
                        revisions=self.revisions, memory=self.memory, now=self.now)
        self.memory = tick.memory
        self.events += [e.reason.value for e in tick.events]
        if tick.order is not None:
            self.orders.append(tick.order)
        failures: dict[str, str] = {}
        for action in core.plan_actions(tick.wanted, loaded=self.loaded, revisions=self.revisions,
                                        retry_at={}, now=0.0, keep=tick.keep):
            if action.load and action.path in self.failing:
                failures[action.pod] = f"HTTP 404: No adapter found for {action.path}"
            elif action.load:
                self.loaded[action.pod][action.name] = action.path
                self.revisions[(action.pod, action.name)] = action.revision
            else:
                self.loaded[action.pod].pop(action.name, None)
                self.revisions.pop((action.pod, action.name), None)
                self.unloads.append(action.name)
        doc, conditions = ro.rollout_status(tick, ready=sorted(PODS), loaded=self.loaded, path_of=PATHS,
                                            old_status=self.status, now=self.now, generation=1,
                                            failures=failures)
        status = {**doc, "conditions": conditions}
        # What the API server stores and the cache hands back: JSON, valid against the status schema.
        ModelAdapterStatus.model_validate(status)
        self.status = json.loads(json.dumps(status))
        return tick

    def finish_evaluation(self, passed: bool, canary: float, stable: float) -> None:
        slot = self.memory.evaluation
        assert slot is not None and slot.running
        result = EvalResult(passed=passed, reason="gate", canary_score=canary, stable_score=stable,
                            lower_bound=canary - stable - 0.03, cases=200)
        self.memory = replace(self.memory, evaluation=EvalSlot(slot.revision, slot.attempt, running=False,
                                                               result=result))

    def until(self, ad: ModelAdapter, phase: Phase, ticks: int = 20) -> None:
        for _ in range(ticks):
            if self.status.get("canary", {}).get("phase") == phase.value:
                return
            self.tick(ad)
        raise AssertionError(f"not {phase.value} after {ticks} ticks: {self.status.get('canary')}")


def serving(world: World) -> World:
    """A world where v1 is deployed and loaded under the served name on both replicas."""
    first = adapter("hf://org/sql-v1", "v1", GATE)
    world.tick(first)
    world.tick(first)
    assert world.status["stable"] == {"source": "hf://org/sql-v1", "revision": "v1",
                                      "fingerprint": ro.fingerprint("hf://org/sql-v1", "v1")}
    assert all(held == {"sql": "org/sql-v1"} for held in world.loaded.values())
    assert "InitialDeploy" in world.events
    return world


def test_fingerprint_and_revision_name() -> None:
    fp = ro.fingerprint("hf://org/sql-v2", "v2")
    assert len(fp) == 12
    assert fp != ro.fingerprint("hf://org/sql-v2", "v3") != ro.fingerprint("hf://org/x", "v2")
    assert ro.revision_name("sql", fp) == f"sql@{fp[:8]}"


def test_a_good_revision_is_promoted_and_the_old_one_unloaded() -> None:
    world = serving(World())
    new = adapter("hf://org/sql-v2", "v2", {**GATE, "steps": [{"weight": 50, "pause": "10s"}]})
    name = ro.revision_name("sql", ro.fingerprint("hf://org/sql-v2", "v2"))
    world.tick(new)
    # Loaded beside the old one on every replica, no traffic yet.
    assert all(held == {"sql": "org/sql-v1", name: "org/sql-v2"} for held in world.loaded.values())
    world.until(new, Phase.EVALUATING)
    order = world.orders[-1]
    assert (order.served_name, order.canary_served_name, order.owner_kind) == ("sql", name, "ModelAdapter")
    assert order.canary_url == order.stable_url == "http://10.0.0.1:8000"
    assert world.status["canary"]["weight"] == 0
    world.finish_evaluation(True, 0.93, 0.90)
    world.tick(new)
    assert world.status["canary"]["phase"] in ("Stepping", "Analyzing")
    assert world.status["canary"]["weight"] == 50
    assert (world.status["canary"]["evalScore"], world.status["canary"]["baselineScore"]) == (0.93, 0.90)
    world.until(new, Phase.PROMOTING)
    world.until(new, Phase.PROMOTED)
    # The served name moved to v2 in place; v2's own name goes after the drain.
    assert all(held["sql"] == "org/sql-v2" for held in world.loaded.values())
    for _ in range(5):
        world.tick(new)
    assert all(held == {"sql": "org/sql-v2"} for held in world.loaded.values())
    assert world.status["stable"]["source"] == "hf://org/sql-v2"
    assert world.status["rolloutHistory"][-1]["decision"] == "Promoted"
    assert "Promoted" in world.events


def test_the_served_name_moves_only_after_the_gateways_had_100_percent_for_the_drain() -> None:
    world = serving(World())
    new = adapter("hf://org/sql-v2", "v2", {"steps": [{"weight": 100, "pause": "1s"}]})
    world.until(new, Phase.PROMOTING)
    told = world.now
    while world.status["canary"]["phase"] == "Promoting":
        if any(held["sql"] == "org/sql-v2" for held in world.loaded.values()):
            assert world.status["canary"]["weight"] == 100
            assert (world.now - told).total_seconds() >= ro.DRAIN_SECONDS
        world.tick(new, seconds=1.0)
    assert world.status["canary"]["phase"] == "Promoted"


def test_a_worse_revision_is_rolled_back_with_both_scores_and_not_retried() -> None:
    world = serving(World())
    bad = adapter("hf://org/sql-v3", "v3", GATE)
    name = ro.revision_name("sql", ro.fingerprint("hf://org/sql-v3", "v3"))
    world.until(bad, Phase.EVALUATING)
    world.finish_evaluation(False, 0.41, 0.90)
    world.tick(bad)
    assert world.status["canary"]["phase"] == "RollingBack"
    assert world.status["canary"]["weight"] == 0
    # Draining: the rejected revision stays loaded for the drain, the served name is never touched.
    assert all(name in held for held in world.loaded.values())
    world.until(bad, Phase.ROLLED_BACK)
    assert all(held == {"sql": "org/sql-v1"} for held in world.loaded.values())
    canary = world.status["canary"]
    assert (canary["evalScore"], canary["baselineScore"]) == (0.41, 0.90)
    assert canary["rejectedRevision"] == "v3"
    assert world.status["stable"]["revision"] == "v1"
    assert world.status["rolloutHistory"][-1]["decision"] == "RolledBack"
    progressing = next(c for c in world.status["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "EvaluationFailed")
    evaluating = next(c for c in world.status["conditions"] if c["type"] == "Evaluating")
    assert "0.410 vs stable 0.900" in evaluating["message"]
    assert "EvaluationFailed" in world.events and "RolledBack" in world.events
    # The spec still names v3: not tried again.
    before = len(world.orders)
    for _ in range(5):
        world.tick(bad)
    assert len(world.orders) == before and world.status["canary"]["phase"] == "RolledBack"
    assert all(held == {"sql": "org/sql-v1"} for held in world.loaded.values())


def test_a_superseded_revision_keeps_its_name_for_the_drain_then_goes() -> None:
    world = serving(World())
    first = adapter("hf://org/sql-v2", "v2", GATE)
    name = ro.revision_name("sql", ro.fingerprint("hf://org/sql-v2", "v2"))
    world.until(first, Phase.EVALUATING)
    second = adapter("hf://org/sql-v3", "v3", GATE)
    world.tick(second, seconds=1.0)
    assert world.status["rolloutHistory"][-1]["decision"] == "Superseded"
    superseded_at = world.now
    while name in world.loaded["base-a"]:
        world.tick(second, seconds=1.0)
    assert (world.now - superseded_at).total_seconds() >= ro.DRAIN_SECONDS
    assert world.unloads.count(name) == 2  # once per replica, after the drain


def test_a_revision_that_does_not_load_is_reported_and_rolled_back_after_the_deploy_timeout() -> None:
    world = serving(World())
    world.failing.add("org/sql-v3")
    missing = adapter("hf://org/sql-v3", "v3", GATE)
    world.tick(missing)
    replicas = world.status["canary"]["replicas"]
    assert {r["state"] for r in replicas} == {"Failed"}
    assert "No adapter found for org/sql-v3" in replicas[0]["message"]
    world.tick(missing, seconds=ro.SETTINGS.deploy_timeout.total_seconds())
    world.until(missing, Phase.ROLLED_BACK)
    assert world.status["canary"]["reason"] == "CanaryNotReady"
    assert all(held == {"sql": "org/sql-v1"} for held in world.loaded.values())


def test_a_resume_control_retries_the_rejected_revision() -> None:
    world = serving(World())
    bad = adapter("hf://org/sql-v3", "v3", GATE)
    world.until(bad, Phase.EVALUATING)
    world.finish_evaluation(False, 0.41, 0.90)
    world.until(bad, Phase.ROLLED_BACK)
    retried = adapter("hf://org/sql-v3", "v3", GATE,
                      annotations={"modelplane.dev/rollout-control": "resume@1"})
    world.tick(retried)
    assert world.status["canary"]["phase"] == "Deploying"
    assert "RolloutRetried" in world.events


def test_without_a_rollout_block_a_new_revision_replaces_the_old_in_place() -> None:
    world = serving(World())
    direct = adapter("hf://org/sql-v2", "v2")
    world.tick(direct)
    assert all(held == {"sql": "org/sql-v2"} for held in world.loaded.values())
    assert world.status["stable"]["revision"] == "v2"
    assert world.status["rolloutHistory"][-1]["decision"] == "Direct"


def test_a_revision_only_change_at_the_same_path_is_loaded_beside_and_then_in_place() -> None:
    world = serving(World())
    relabel = adapter("hf://org/sql-v1", "v1-fixed", {"steps": [{"weight": 100, "pause": "1s"}]})
    world.until(relabel, Phase.PROMOTED, ticks=30)
    assert all(world.revisions[(p, "sql")] == "v1-fixed" for p in PODS)
    assert world.status["stable"]["revision"] == "v1-fixed"


def test_the_rollout_resumes_from_status_after_an_operator_restart() -> None:
    world = serving(World())
    bad = adapter("hf://org/sql-v3", "v3", GATE)
    world.until(bad, Phase.EVALUATING)
    # A restart: the operator's memory is gone (the evaluation too); the status and the replicas stay.
    world.memory, world.revisions = ro.Memory(), {}
    world.tick(bad)
    assert world.status["canary"]["phase"] == "Evaluating"
    assert world.status["canary"]["evaluationAttempts"] == 2  # the lost run counts as an attempt
    assert world.status["stable"]["source"] == "hf://org/sql-v1"
    assert all(held["sql"] == "org/sql-v1" for held in world.loaded.values())


# --- the gateway ----------------------------------------------------------------------------------


def base_backend() -> Backend:
    return Backend(namespace="team", name="llama", served_name="llama", phase="Ready",
                   endpoints=(Endpoint("10.0.0.1:8000", pod="base-a", revision="k1"),
                              Endpoint("10.0.0.2:8000", pod="base-b", revision="k1")),
                   split=CanarySplit("k2", 30))


def adapter_obj(canary: dict[str, Any] | None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Ready", "conditions": [{"type": "Loadable", "status": "True"}],
                              "replicas": [{"pod": p, "state": "Loaded", "path": "org/sql-v1"} for p in PODS]}
    if canary is not None:
        status["canary"] = canary
    return {"metadata": {"name": "sql", "namespace": "team"},
            "spec": {"base": "llama", "source": "hf://org/sql-v2", "servedName": "sql"}, "status": status}


@pytest.mark.parametrize(("canary", "split", "canary_pods"), [
    (None, CanarySplit("k2", 30), ()),
    ({"phase": "Stepping", "weight": 25, "servedName": "sql@abc",
      "replicas": [{"pod": "base-b", "state": "Loaded", "path": "org/sql-v2"}]},
     CanarySplit("sql@abc", 25), ("base-b",)),
    ({"phase": "Evaluating", "weight": 0, "servedName": "sql@abc",
      "replicas": [{"pod": p, "state": "Loaded", "path": "org/sql-v2"} for p in PODS]},
     CanarySplit("sql@abc", 0), ("base-a", "base-b")),
    ({"phase": "RolledBack", "weight": 0, "servedName": "sql@abc"}, CanarySplit("k2", 30), ()),
], ids=["no-rollout-base-split", "stepping", "evaluating-weight-0", "settled"])
def test_adapter_backend_during_a_rollout(canary: dict[str, Any] | None, split: CanarySplit,
                                          canary_pods: tuple[str, ...]) -> None:
    backend = adapter_backend(adapter_obj(canary), {("team", "llama"): base_backend()})
    assert backend is not None and backend.split == split
    rewritten = [e for e in backend.endpoints if e.model is not None]
    assert tuple(e.pod for e in rewritten) == canary_pods
    assert all(e.model == e.revision == "sql@abc" for e in rewritten)
    if canary is not None and canary["phase"] != "RolledBack":
        stable, group = group_endpoints(backend, Group.STABLE)
        assert group is Group.STABLE and {e.pod for e in stable} == set(PODS)
        assert all(e.model is None and e.revision == "sql" for e in stable)


def test_upstream_body_rewrites_only_the_model() -> None:
    messages = [{"role": "user", "content": "é"}]
    body = json.dumps({"model": "sql", "messages": messages, "stream": True}).encode()
    doc = json.loads(upstream_body(body, "sql@abc"))
    assert doc == {"model": "sql@abc", "messages": messages, "stream": True}


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "adapters"


def test_the_rollout_example_updates_the_sql_adapter_of_the_adapters_example_behind_a_gate() -> None:
    [doc] = [d for d in yaml.safe_load_all((EXAMPLES / "adapter-rollout.yaml").read_text()) if d]
    new = ModelAdapter.parse({**doc, "metadata": {**doc["metadata"], "namespace": "team"}})
    docs = [d for d in yaml.safe_load_all((EXAMPLES / "llama-3.1-8b-with-adapters.yaml").read_text()) if d]
    [old] = [d for d in docs if d["kind"] == "ModelAdapter" and d["metadata"]["name"] == new.name]
    [base] = [d for d in docs if d["kind"] == "ModelDeployment"]
    assert new.spec.base == base["metadata"]["name"] and new.served_name == old["spec"]["servedName"]
    assert (new.spec.source, new.spec.revision) != (old["spec"]["source"], old["spec"]["revision"])
    gate = rollout_spec_from_api(new.spec.rollout)
    assert gate is not None and gate.evaluation and gate.analysis
    assert [s.weight for s in gate.steps] == [10, 50]
