"""Which revision serves: the plain switch, and the hand-off to the canary rollout. Pure.

Every Deployment of a ModelDeployment runs one revision (its fingerprint: the gated fields of the
spec, ``rollout.spec.revision_fingerprint``). Without ``spec.rollout``, a change of revision is a
plain switch: the new revision's Deployment starts beside the old one, the old one serves (and
keeps its replicas) until the new one has a Ready replica, and is then deleted. With
``spec.rollout``, the canary state machine (``rollout.machine``, fed by ``rollout.driver``) decides
instead, behind its gate. Both live here and in the driver, so every decision about which
revision runs has its home in ``rollout/``; the reconcile only calls them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelplane import render
from modelplane.api.models import ModelDeployment
from modelplane.rollout import driver
from modelplane.rollout.machine import RolloutState
from modelplane.rollout.spec import revision_fingerprint

Obj = Mapping[str, Any]


def ready_replicas(deployment: Obj | None) -> int:
    if deployment is None:
        return 0
    return int((deployment.get("status") or {}).get("readyReplicas") or 0)


def spec_replicas(deployment: Obj | None) -> int:
    if deployment is None:
        return 0
    return int((deployment.get("spec") or {}).get("replicas") or 0)


@dataclass(frozen=True)
class Revisions:
    """Which Deployment runs the spec's revision, and which older ones still exist."""

    fingerprint: str
    by_fp: dict[Any, Obj]  #: Deployments by the fingerprint annotation
    deployments: dict[str, Obj]  #: Deployments by name
    desired_dep: str  #: the name of the Deployment that runs (or will run) the spec
    old_deps: list[Obj]  #: every other Deployment, by name
    switching: bool  #: a plain revision switch in progress: the old one serves until the new is Ready


def revisions(md: ModelDeployment, deployments_seen: Sequence[Obj]) -> Revisions:
    source, revision = md.spec.model.source, md.spec.model.revision
    fingerprint = revision_fingerprint(md.spec)
    by_fp = {(d["metadata"].get("annotations") or {}).get(render.ANNOTATION_FINGERPRINT): d
             for d in deployments_seen}
    # The Deployment that runs the spec's gated fields, if one does (after a promotion it may carry
    # a fingerprint key); else the one named by source and revision (updated in place on a direct
    # change of image or args).
    desired_dep = by_fp[fingerprint]["metadata"]["name"] if fingerprint in by_fp else \
        render.deployment_name(md.name, source, revision)
    deployments = {d["metadata"]["name"]: d for d in deployments_seen}
    old_deps = [d for n, d in sorted(deployments.items()) if n != desired_dep]
    switching = bool(old_deps) and ready_replicas(deployments.get(desired_dep)) < 1
    return Revisions(fingerprint, by_fp, deployments, desired_dep, old_deps, switching)


def current_replicas(revs: Revisions, prior: RolloutState) -> int:
    """The fleet the autoscaler starts from: what the serving Deployments are asked to run."""
    current = spec_replicas(revs.deployments.get(revs.desired_dep))
    if revs.switching:
        # While the new revision starts, the old one's replicas are what the fleet is.
        current = max(current, max(spec_replicas(d) for d in revs.old_deps))
    if prior.phase in driver.DRIVING:
        # During a rollout stable keeps the whole fleet; the canary's replicas come on top of it
        # for its share of the requests (``machine.canary_replicas``) and are not the fleet.
        current = spec_replicas(revs.by_fp.get(prior.stable_revision)) or \
            spec_replicas(revs.by_fp.get(prior.canary_revision))
    return current


def serving(md: ModelDeployment, revs: Revisions, rollout: driver.Outcome,
             switching: bool) -> dict[str, Any]:
    """``stable``, ``servingRevision`` and ``desiredRevisionLive`` of the status."""
    source, revision = md.spec.model.source, md.spec.model.revision
    if rollout.driving:
        state = rollout.state
        stable_plan = next((w for w in rollout.workloads if w.role == render.Role.STABLE), None)
        stable_dep = revs.by_fp.get(state.stable_revision)
        return {"stable": {"revision": state.stable_label, "fingerprint": state.stable_revision,
                           "source": stable_plan.source if stable_plan else None,
                           "deployment": render.workload_name(md.name, stable_plan.workload_key)
                           if stable_plan else (stable_dep or {}).get("metadata", {}).get("name")},
                "servingRevision": state.stable_label, "desiredRevisionLive": False}
    serving_dep = revs.old_deps[0] if switching else revs.deployments.get(revs.desired_dep)
    annotations = (serving_dep or {}).get("metadata", {}).get("annotations") or {}
    serving_rev = annotations.get(render.ANNOTATION_REVISION, revision) if switching else revision
    return {"stable": {"revision": serving_rev,
                       "source": annotations.get(render.ANNOTATION_SOURCE, source) if switching else source,
                       "deployment": (serving_dep or {}).get("metadata", {}).get("name", revs.desired_dep),
                       "fingerprint": annotations.get(render.ANNOTATION_FINGERPRINT) if switching
                       else revs.fingerprint},
            "servingRevision": serving_rev,
            "desiredRevisionLive": serving_rev == revision and not switching}


def plain_workload(md: ModelDeployment, revs: Revisions, *, desired: int,
                   shape: driver.Shape) -> render.WorkloadPlan:
    """Without a rollout driving: the one workload of the spec's revision, at ``desired`` replicas
    (a Deployment that already runs it keeps its name, even after the revision's key changed)."""
    return driver.workload(role=render.Role.STABLE, spec=md.spec, fingerprint=revs.fingerprint,
                           key=_desired_key(md, revs), replicas=desired, shape=shape)


def _desired_key(md: ModelDeployment, revs: Revisions) -> str:
    have_dep = revs.deployments.get(revs.desired_dep)
    key = ((have_dep or {}).get("metadata", {}).get("labels") or {}).get(render.LABEL_REVISION_HASH)
    return str(key) if key else render.revision_hash(md.spec.model.source, md.spec.model.revision)


def plain_service_key(md: ModelDeployment, revs: Revisions, *, switching: bool) -> str:
    """Without a rollout driving: the workload the Service selects, the one that serves — while a
    new revision has no Ready replica yet, the old revision with the most Ready replicas (the first
    by name on a tie); else the spec's."""
    if switching:
        best = max(revs.old_deps, key=ready_replicas)  # max keeps the first of equals, by name
        key = ((best.get("metadata") or {}).get("labels") or {}).get(render.LABEL_REVISION_HASH)
        if ready_replicas(best) > 0 and key:
            return str(key)
    return _desired_key(md, revs)


def plain_deletes(revs: Revisions, *, switching: bool) -> list[str]:
    """Without a rollout driving: the older revisions' Deployments to delete — none while the new
    revision has no Ready replica yet (they serve until it has)."""
    if switching:
        return []
    return [dep["metadata"]["name"] for dep in revs.old_deps]
