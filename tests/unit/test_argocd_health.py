"""The Argo CD health check (hack/argocd/health.lua), run for real by a Lua 5.1 interpreter.

Argo CD runs health checks in gopher-lua, a Lua 5.1; lupa's ``lua51`` runtime is the same language.
Each case hands the script an object the way Argo does (a global ``obj``) and checks the returned
``{status, message}``. Statuses come from a table of samples and from the operator's own reconcile
core, so a change of phase or condition names that the script misses fails here. docs/gitops.md must
carry the same script.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51
import pytest
import yaml

from modelplane.api.models import Phase
from modelplane.autoscaler.policy import PolicyState
from modelplane.controller import reconcile as core
from modelplane.rollout.machine import Phase as RolloutPhase

REPO = Path(__file__).resolve().parents[2]
SCRIPT = (REPO / "hack" / "argocd" / "health.lua").read_text()


def run_health(obj: dict[str, Any]) -> dict[str, str]:
    """What Argo CD would show for ``obj``: the script's ``hs`` table as a dict."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(SCRIPT)
    return {str(k): str(v) for k, v in hs.items()}


def _cond(kind: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 3}


def _md(status: dict[str, Any] | None, generation: int = 3) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
                           "metadata": {"name": "chat", "namespace": "team-a", "generation": generation},
                           "spec": {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"}}}
    if status is not None:
        obj["status"] = status
    return obj


READY = [_cond("Ready", "True", "AllReplicasReady", "2/2 replicas ready"),
         _cond("Degraded", "False", "Healthy", "no problem seen")]

CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("no-status-yet", _md(None), "Progressing", "Waiting for the modelplane operator"),
    ("status-without-generation", _md({"phase": "Pending"}), "Progressing", "Waiting for the modelplane"),
    ("ready", _md({"observedGeneration": 3, "phase": "Ready", "conditions": READY}),
     "Healthy", "AllReplicasReady: 2/2 replicas ready"),
    ("scaled-to-zero", _md({"observedGeneration": 3, "phase": "ScaledToZero", "conditions": [
        _cond("Ready", "False", "ScaledToZero", "no replicas: scaled to zero until requests arrive")]}),
     "Healthy", "ScaledToZero: no replicas"),
    ("ready-but-stale-generation", _md({"observedGeneration": 2, "phase": "Ready", "conditions": READY}),
     "Progressing", "Waiting for the operator to see generation 3 (status is of generation 2)"),
    ("pending", _md({"observedGeneration": 3, "phase": "Pending"}), "Progressing", "Phase Pending"),
    ("progressing", _md({"observedGeneration": 3, "phase": "Progressing", "conditions": [
        _cond("Ready", "False", "ReplicasStarting", "1/2 replicas ready")]}),
     "Progressing", "ReplicasStarting: 1/2 replicas ready"),
    ("degraded-image-pull", _md({"observedGeneration": 3, "phase": "Degraded", "conditions": [
        _cond("Ready", "False", "ImagePullBackOff", "pod chat-abc: cannot pull vllm/vllm-openai:v9"),
        _cond("Degraded", "True", "ImagePullBackOff", "pod chat-abc: cannot pull vllm/vllm-openai:v9")]}),
     "Degraded", "ImagePullBackOff: pod chat-abc: cannot pull vllm/vllm-openai:v9"),
    ("failed-no-degraded-condition", _md({"observedGeneration": 3, "phase": "Failed", "conditions": [
        _cond("Ready", "False", "InvalidSpec", "spec.scaling.maxReplicas: must be >= minReplicas")]}),
     "Degraded", "InvalidSpec: spec.scaling.maxReplicas"),
    ("failed-no-conditions", _md({"observedGeneration": 3, "phase": "Failed"}), "Degraded", "Failed"),
    ("rollout-paused", _md({"observedGeneration": 3, "phase": "Ready", "conditions": READY, "canary": {
        "phase": "Paused", "revision": "rev-b", "weight": 10, "message": "analysis inconclusive 3 times"}}),
     "Suspended", "Rollout of rev-b paused at 10% of replicas: analysis inconclusive 3 times"),
    ("rollout-paused-while-degraded", _md({"observedGeneration": 3, "phase": "Degraded", "canary": {
        "phase": "Paused", "revision": "rev-b", "weight": 50}}), "Suspended", "paused at 50%"),
    ("rollout-evaluating", _md({"observedGeneration": 3, "phase": "Ready", "conditions": READY, "canary": {
        "phase": "Evaluating", "revision": "rev-b", "weight": 0}}),
     "Progressing", "Rollout of rev-b: Evaluating at 0% of replicas"),
    ("rollout-stepping", _md({"observedGeneration": 3, "phase": "Progressing", "canary": {
        "phase": "Stepping", "revision": "rev-b", "weight": 50}}), "Progressing", "Stepping at 50%"),
    ("rollout-promoted-is-history", _md({"observedGeneration": 3, "phase": "Ready", "conditions": READY,
                                         "canary": {"phase": "Promoted", "revision": "rev-b",
                                                    "weight": 100}}),
     "Healthy", "AllReplicasReady"),
    ("rolled-back-serving-stable", _md({"observedGeneration": 3, "phase": "Ready", "conditions": READY,
                                        "canary": {"phase": "RolledBack", "revision": "rev-b", "weight": 0}}),
     "Healthy", "AllReplicasReady"),
]


@pytest.mark.parametrize(("obj", "status", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_health_of_sample_statuses(obj: dict[str, Any], status: str, message: str) -> None:
    hs = run_health(obj)
    assert hs["status"] == status
    assert message in hs["message"]


def _reconciled(example: str) -> dict[str, Any]:
    """An example as the reconcile core leaves it on a cluster with no pods yet."""
    body = yaml.safe_load((REPO / "examples" / example).read_text())
    body["metadata"].update(namespace="default", generation=1, uid="uid-1")
    observed = core.Observed(body=body, now=datetime(2026, 1, 1, tzinfo=UTC), monotonic=100.0)
    prepared = core.prepare(observed, prices={})
    result = core.finish(prepared, observed, metrics=(), policy_state=PolicyState())
    body["status"] = result.effective_status
    reconciled: dict[str, Any] = body
    return reconciled


@pytest.mark.parametrize(("example", "status", "message"), [
    ("deepseek-r1-on-h100.yaml", "Degraded", "NoSingleNodeFits: DeepSeek-R1 FP8 needs"),
    ("llama-3.1-8b.yaml", "Progressing", "ReplicasStarting: 0/1 replicas ready"),
], ids=["no-node-holds-it", "first-replica-starting"])
def test_health_of_statuses_the_reconcile_core_writes(example: str, status: str, message: str) -> None:
    hs = run_health(_reconciled(example))
    assert hs["status"] == status
    assert hs["message"].startswith(message)


def test_script_knows_every_phase() -> None:
    """Each API phase and rollout phase is named in the script (or deliberately left to the default)."""
    for phase in Phase:
        if phase is not Phase.PENDING:  # Pending falls through to Progressing, the default
            assert f'"{phase.value}"' in SCRIPT, phase
    active = {RolloutPhase.DEPLOYING, RolloutPhase.EVALUATING, RolloutPhase.STEPPING,
              RolloutPhase.ANALYZING, RolloutPhase.PROMOTING, RolloutPhase.ROLLING_BACK}
    for rollout_phase in active:
        assert f"{rollout_phase.value} = true" in SCRIPT, rollout_phase
    assert '"Paused"' in SCRIPT


def test_gitops_doc_carries_the_same_script() -> None:
    doc = (REPO / "docs" / "gitops.md").read_text()
    indented = "".join(f"    {line}\n" if line else "\n" for line in SCRIPT.splitlines())
    assert indented in doc, "docs/gitops.md must embed hack/argocd/health.lua in the argocd-cm snippet"
