"""What ``modelplane get NAME`` (``kubectl modelplane get``) prints: a ModelDeployment at a glance.

A pure function of the object, the autoscaler decisions seen so far and the time: the phase and
replicas, the rollout's steps (done, current, to come) with the canary's weight, the gate's scores
and decision, the autoscaler's last decisions with their inputs, the conditions and the last
finished rollouts — as ``kubectl argo rollouts get rollout`` shows a Rollout. ``get.py`` fetches
and watches; this module only draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from modelplane.api.models import ModelDeploymentStatus, RolloutStep, ScalingDecision

#: Canary phases in which the steps are being walked (a current step is marked).
_ACTIVE = {"Deploying", "Evaluating", "Stepping", "Analyzing", "Paused", "Promoting"}
#: How many autoscaler decisions are listed, newest first.
MAX_DECISIONS = 5


def age(then: datetime | None, now: datetime) -> str:
    """kubectl's short age: 45s, 3m, 2h, 4d."""
    if then is None:
        return "-"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _num(value: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]


def parse_steps(obj: Mapping[str, Any]) -> list[RolloutStep]:
    """spec.rollout.steps as typed values (none when absent or unreadable)."""
    raw = (obj.get("spec") or {}).get("rollout", {}).get("steps") or []
    try:
        return [RolloutStep.model_validate(step) for step in raw]
    except ValidationError:
        return []


def parse_status(obj: Mapping[str, Any]) -> ModelDeploymentStatus | None:
    """The status as typed values; None while the operator has written none."""
    raw = obj.get("status")
    return ModelDeploymentStatus.model_validate(raw) if raw else None


def render(obj: Mapping[str, Any], *, decisions: Sequence[ScalingDecision] = (),
           now: datetime) -> str:
    """The whole view. ``decisions`` are the autoscaler's decisions seen so far, oldest first (a
    watch collects them; status keeps only the last one, which is added when it is new)."""
    meta = obj.get("metadata") or {}
    status = parse_status(obj)
    lines = [f"Name:        {meta.get('name', '?')}", f"Namespace:   {meta.get('namespace', '?')}"]
    if status is None:
        lines.append("Status:      (none yet: the operator has not reconciled it)")
        return "\n".join(lines) + "\n"
    stale = (status.observed_generation is not None and meta.get("generation") is not None
             and status.observed_generation < int(meta["generation"]))
    note = "  (status is from an older generation)" if stale else ""
    lines.append(f"Phase:       {status.phase.value}{note}")
    lines.append(f"Replicas:    desired {status.desired_replicas}  current {status.replicas}  "
                 f"ready {status.ready_replicas}")
    if status.stable and status.stable.revision:
        lines.append(f"Stable:      {status.stable.revision}")
    if status.plan and status.plan.shape:
        hourly = status.plan.hourly_usd_per_replica
        price = f"  ${hourly:.2f}/h per replica" if hourly else ""
        lines.append(f"Plan:        {status.plan.shape}{price}")
    if status.cost and status.cost.hourly_usd is not None:
        per_m = status.cost.usd_per_million_tokens
        lines.append(f"Cost:        ${status.cost.hourly_usd:.2f}/h"
                     + (f"  ${per_m:.3f} per million tokens" if per_m is not None else ""))
    if status.endpoint:
        lines.append(f"Endpoint:    {status.endpoint}")
    lines += _rollout(status, parse_steps(obj), now)
    lines += _autoscaler(status, decisions, now)
    if status.conditions:
        lines += ["", "Conditions:"]
        lines += _table([("TYPE", "STATUS", "REASON", "AGE", "MESSAGE")] + [
            (c.type, c.status.value, c.reason, age(c.last_transition_time, now), c.message)
            for c in status.conditions])
    if status.rollout_history:
        lines += ["", "History:"]
        lines += _table([("REVISION", "DECISION", "CANARY", "STABLE", "FINISHED", "REASON")] + [
            (r.revision or "-", r.decision or "-", _num(r.eval_score), _num(r.baseline_score),
             age(r.finished_at, now), r.reason or "")
            for r in reversed(status.rollout_history[-3:])])
    return "\n".join(lines) + "\n"


def _rollout(status: ModelDeploymentStatus, steps: list[RolloutStep], now: datetime) -> list[str]:
    canary = status.canary
    if canary is None or not canary.phase or canary.phase == "Idle":
        return ["", "Rollout:     none in progress"]
    active = canary.phase in _ACTIVE
    lines = ["", f"Rollout:     {canary.phase}  revision {canary.revision or '-'}  "
                 f"canary weight {canary.weight if canary.weight is not None else 0}%"
                 + (f"  (since {age(canary.phase_since, now)})" if canary.phase_since else "")]
    if steps:
        lines.append("  Steps:")
        for i, step in enumerate(steps):
            if not active:
                mark = "✔" if canary.phase in ("Promoted", "Promoting") else " "
            elif canary.step is None or canary.phase in ("Deploying", "Evaluating"):
                mark = " "
            else:
                mark = "✔" if i < canary.step else ("►" if i == canary.step else " ")
            extra = ""
            if active and mark == "►" and canary.step_started_at:
                extra = f"  (started {age(canary.step_started_at, now)} ago)"
            lines.append(f"    {mark} {i + 1}/{len(steps)}  weight {step.weight}%  pause "
                         f"{step.pause}{extra}")
    if canary.eval_score is not None or canary.baseline_score is not None:
        gate = (f"  Gate:        canary {_num(canary.eval_score)}  stable {_num(canary.baseline_score)}  "
                f"lower bound {_num(canary.lower_bound, '{:+.3f}')}")
        if canary.cases is not None:
            gate += f"  cases {canary.cases}"
        if canary.failing_cases:
            gate += f"  failing {len(canary.failing_cases)}"
        lines.append(gate)
    if canary.canary_errors is not None or canary.stable_errors is not None:
        lines.append(f"  Analysis:    canary errors {canary.canary_errors or 0}  "
                     f"stable errors {canary.stable_errors or 0}")
    if canary.decision:
        lines.append(f"  Decision:    {canary.decision}")
    if canary.reason or canary.message:
        detail = f": {canary.message}" if canary.message else ""
        lines.append(f"  Reason:      {canary.reason or '-'}{detail}")
    return lines


def _autoscaler(status: ModelDeploymentStatus, seen: Sequence[ScalingDecision], now: datetime) -> list[str]:
    decisions = list(seen)
    last = status.autoscaler.last_decision if status.autoscaler else None
    if last is not None and (not decisions or decisions[-1] != last):
        decisions.append(last)
    if not decisions:
        return []
    rows = [("AGE", "DESIRED", "QUEUE", "RUNNING", "KV CACHE", "COLD START", "REASON")]
    for d in reversed(decisions[-MAX_DECISIONS:]):
        rows.append((age(d.time, now), "-" if d.desired_replicas is None else str(d.desired_replicas),
                     _num(d.queue_depth, "{:.1f}"), _num(d.running_requests, "{:.0f}"),
                     _num(d.kv_cache_usage, "{:.0%}"), _num(d.cold_start_seconds, "{:.0f}s"), d.reason or ""))
    return ["", "Autoscaler:", *_table(rows)]
