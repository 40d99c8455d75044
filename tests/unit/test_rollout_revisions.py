"""The plain revision switch (no spec.rollout), case by case: which Deployment serves, what the
fleet is, and when the old revision goes."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane import render
from modelplane.api.models import ModelDeployment
from modelplane.rollout import revisions
from modelplane.rollout.machine import RolloutState


def md(revision: str) -> ModelDeployment:
    return ModelDeployment.parse({
        "apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": revision},
                 "engine": {"maxModelLen": 8192},
                 "resources": {"gpu": {"count": "auto", "types": ["nvidia-l40s"]}}}})


SOURCE = "hf://meta-llama/Llama-3.1-8B-Instruct"


def dep(revision: str, *, replicas: int, ready: int, fingerprint: str | None = None) -> dict[str, Any]:
    name = render.deployment_name("chat", SOURCE, revision)
    annotations = {render.ANNOTATION_REVISION: revision}
    if fingerprint is not None:
        annotations[render.ANNOTATION_FINGERPRINT] = fingerprint
    return {"metadata": {"name": name, "annotations": annotations,
                         "labels": {render.LABEL_REVISION_HASH: render.revision_hash(SOURCE, revision)}},
            "spec": {"replicas": replicas}, "status": {"readyReplicas": ready}}


@pytest.mark.parametrize(("seen", "switching", "current", "deletes"), [
    pytest.param([], False, 0, 0, id="nothing yet"),
    pytest.param([dep("b", replicas=2, ready=2)], False, 2, 0, id="the spec's revision serves"),
    pytest.param([dep("a", replicas=3, ready=3), dep("b", replicas=1, ready=0)], True, 3, 0,
                 id="new revision starting: the old one serves and keeps its fleet"),
    pytest.param([dep("a", replicas=3, ready=3)], True, 3, 0,
                 id="new revision not created yet: the old one serves"),
    pytest.param([dep("a", replicas=3, ready=3), dep("b", replicas=3, ready=1)], False, 3, 1,
                 id="new revision has a Ready replica: the old one goes"),
])
def test_the_plain_switch(seen: list[dict[str, Any]], switching: bool, current: int, deletes: int) -> None:
    revs = revisions.revisions(md("b"), seen)
    assert revs.switching is switching
    assert revisions.current_replicas(revs, RolloutState()) == current
    assert len(revisions.plain_deletes(revs, switching=revs.switching)) == deletes
    serving = revisions.serving(md("b"), revs, _not_driving(), revs.switching)
    assert serving["servingRevision"] == ("a" if switching else "b")
    assert serving["desiredRevisionLive"] is (not switching)


def _not_driving() -> Any:
    class Outcome:
        driving = False

    return Outcome()


@pytest.mark.parametrize(("seen", "selected"), [
    pytest.param([], "b", id="first deploy: the spec's revision"),
    pytest.param([dep("b", replicas=2, ready=0)], "b", id="the spec's revision, not ready yet"),
    pytest.param([dep("a", replicas=3, ready=3), dep("b", replicas=1, ready=0)], "a",
                 id="switching: the old revision serves"),
    pytest.param([dep("a", replicas=3, ready=1), dep("c", replicas=1, ready=0),
                  dep("b", replicas=1, ready=0)], "a", id="switching twice: the old revision that is Ready"),
    pytest.param([dep("c", replicas=1, ready=0), dep("a", replicas=3, ready=1),
                  dep("b", replicas=1, ready=0)], "a", id="switching twice, listed the other way"),
    pytest.param([dep("a", replicas=3, ready=0), dep("b", replicas=1, ready=0)], "b",
                 id="switching, nothing Ready anywhere: the spec's, which serves first"),
    pytest.param([dep("a", replicas=3, ready=3), dep("b", replicas=3, ready=1)], "b",
                 id="the new revision has a Ready replica: it serves"),
])
def test_without_a_rollout_the_service_selects_the_serving_revision(seen: list[dict[str, Any]],
                                                                    selected: str) -> None:
    revs = revisions.revisions(md("b"), seen)
    key = revisions.plain_service_key(md("b"), revs, switching=revs.switching)
    assert key == render.revision_hash(SOURCE, selected)


@pytest.mark.parametrize(("phase", "weight", "current"), [
    pytest.param("Evaluating", 0, 4, id="evaluating: the evaluation's replica is not the fleet"),
    pytest.param("Analyzing", 50, 4, id="a step: the canary's share is not the fleet"),
    pytest.param("Promoting", 100, 4, id="promoting"),
])
def test_during_a_rollout_the_fleet_is_stables(phase: str, weight: int, current: int) -> None:
    # Stable keeps the whole fleet and the canary runs beside it for its share: the autoscaler
    # sizes stable's fleet, so counting the canary would make it shrink stable by the canary's size.
    seen = [dep("a", replicas=4, ready=4, fingerprint="fp-a"),
            dep("b", replicas=2, ready=2, fingerprint="fp-b")]
    prior = RolloutState.from_status({"canary": {"phase": phase, "weight": weight, "fingerprint": "fp-b"},
                                      "stable": {"fingerprint": "fp-a"}})
    assert revisions.current_replicas(revisions.revisions(md("b"), seen), prior) == current
