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


def dep(revision: str, *, replicas: int, ready: int) -> dict[str, Any]:
    name = render.deployment_name("chat", "hf://meta-llama/Llama-3.1-8B-Instruct", revision)
    return {"metadata": {"name": name, "annotations": {render.ANNOTATION_REVISION: revision}},
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
