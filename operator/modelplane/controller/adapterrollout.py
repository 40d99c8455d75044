"""Adapter rollouts: a new revision beside the serving one on the same replicas, behind the gate. Pure.

A ModelAdapter's revision is its ``(source, revision)`` (``fingerprint``). With ``spec.rollout`` a
new one is rolled out by the ModelDeployment's state machine (``rollout/machine.py``, unchanged),
fed from what the replicas hold instead of from Deployments; no pod is made:

- the serving revision (the machine's stable) is loaded under the served name, at the source in
  ``status.stable`` (durable: an operator restart resumes from it, never from memory);
- the new revision (the canary) is loaded on every Ready replica of the base beside it, under
  ``revision_name`` (``<served>@<fingerprint[:8]>``); the machine counts the replicas holding it;
- the gateway sends ``status.canary.weight`` percent of the served name's requests to it, rewriting
  ``model`` (``gateway/adapters.py``);
- the evaluation is the ModelDeployment's (``rollout/runtime.py``), both revisions asked on one pod
  that holds both, by their two names;
- live analysis reads the gateways' view, whose requests are labelled by the adapter's name and the
  revision's name (the served name for the serving one);
- promotion: at weight 100, once the gateways have had that for ``DRAIN_SECONDS``, the served name
  is reloaded in place at the new source on every replica; when all hold it the machine's stable
  is the new revision (``status.stable``), the gateway stops rewriting, and the revision's own name
  is unloaded ``DRAIN_SECONDS`` later;
- rollback: weight 0 at once, the revision's own name unloaded ``DRAIN_SECONDS`` later, the served
  name never touched. ``status.canary.rejectedRevision`` keeps the revision from being retried
  until the spec changes or a ``resume`` control asks (as for a ModelDeployment).

Without ``spec.rollout`` a new revision replaces the serving one in place (the machine's direct
switch), as before rollouts existed. Decisions and their numbers go to the same status fields,
conditions and Events as a ModelDeployment's rollout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from modelplane import render
from modelplane.api.adapter import ADAPTER_KIND, AdapterConditionType, AdapterReason, ModelAdapter
from modelplane.api.models import Condition, ConditionStatus, ConditionType
from modelplane.controller import reconcile
from modelplane.controller.adapters import Wanted
from modelplane.metrics.promtext import MetricSnapshot
from modelplane.rollout import driver, machine
from modelplane.rollout.analysis import AnalysisResult, AnalysisThresholds
from modelplane.rollout.machine import (
    EmitEvent,
    Inputs,
    MachineSettings,
    Phase,
    RolloutState,
    StartEvaluation,
)
from modelplane.rollout.spec import rollout_spec_from_api

#: The rollout phases in which the new revision is loaded and takes its weight of the requests.
SPLIT = machine.ACTIVE | {Phase.PROMOTING}
#: After the gateways were told (status), this long before a revision's name is unloaded or the served
#: name reloaded in place: their watch has it and the requests already sent have finished.
DRAIN_SECONDS = driver.DRAIN_SECONDS
#: A new revision not loaded on a replica (Deploying), or the served name not moved to it on every
#: replica (Promoting), this long: rolled back (``CanaryNotReady``). Loading an adapter takes seconds
#: to a few minutes (a download), not a model's cold start: the ModelDeployment's hour is too long.
SETTINGS = MachineSettings(deploy_timeout=timedelta(minutes=10))


def fingerprint(source: str, revision: str) -> str:
    """12 hex digits of an adapter revision: its source and revision label."""
    return hashlib.sha256(f"{source}\x1f{revision}".encode()).hexdigest()[:12]


def revision_name(served: str, fp: str) -> str:
    """The name a revision being rolled out is loaded under, beside the served name."""
    return f"{served}@{fp[:8]}"


@dataclass(frozen=True)
class Memory:
    """Per adapter, between ticks, in the operator's memory only (lost on restart, by design)."""

    evaluation: driver.EvalSlot | None = None
    window: driver.Window | None = None
    #: (canary fingerprint, since when the status the gateways read says Promoting at 100%).
    full_since: tuple[str, datetime] | None = None


@dataclass(frozen=True)
class Tick:
    """One tick's outcome for one adapter."""

    state: RolloutState
    stable: Mapping[str, str]  #: source, revision, fingerprint of the serving revision
    canary_source: str | None
    canary_name: str | None  #: the name of the revision being (or last) rolled out
    wanted: tuple[Wanted, ...]  #: what its replicas should hold
    keep: frozenset[str]  #: names not wanted any more but not to be unloaded yet (draining)
    memory: Memory = field(default_factory=Memory)
    order: driver.EvaluationOrder | None = None
    cancel: bool = False
    events: tuple[EmitEvent, ...] = ()
    #: While the served name moves to the promoted revision: its path, which a replica may hold
    #: already (it serves the adapter either way).
    moving_to: str | None = None


def _age(now: datetime, since: Any) -> float:
    if not isinstance(since, str) or not since:
        return DRAIN_SECONDS
    try:
        return (now - datetime.fromisoformat(since)).total_seconds()
    except (ValueError, TypeError):
        return DRAIN_SECONDS


def drive(adapter: ModelAdapter, *, status: Mapping[str, Any] | None, path_of: Mapping[str, str | None],
          ready: Mapping[str, str], loaded: Mapping[str, Mapping[str, str]],
          revisions: Mapping[tuple[str, str], str], memory: Memory, now: datetime,
          gateways: Mapping[str, MetricSnapshot] | None = None) -> Tick:
    """Advance the adapter's rollout with what its base's replicas hold.

    ``path_of``: source → the lora_path vLLM loads (None: not loadable on this base); ``ready``: the
    base's Ready pods → IP; ``loaded``: pod → {name: path} as each replica's ``/v1/models`` lists
    (only the pods that could be read); ``revisions``: (pod, name) → the revision label the operator
    loaded there (its memory; missing after a restart: the path alone then says).
    """
    status = status or {}
    spec = adapter.spec
    served = adapter.served_name
    read_stable: Mapping[str, Any] = status.get("stable") or {}
    read_canary: Mapping[str, Any] = status.get("canary") or {}
    desired = fingerprint(spec.source, spec.revision)
    sources = {str(read_canary.get("fingerprint")): str(read_canary.get("source") or ""),
               str(read_stable.get("fingerprint")): str(read_stable.get("source") or ""),
               desired: spec.source}
    rspec = rollout_spec_from_api(spec.rollout)
    annotations = adapter.metadata.get("annotations") or {}
    control = machine.parse_control(annotations.get(machine.CONTROL_ANNOTATION))
    evaluation = spec.rollout.evaluation
    thresholds = AnalysisThresholds.from_api(evaluation.analysis if evaluation is not None else None)
    read_state = RolloutState.from_status(status)
    state = read_state
    slot, window = memory.evaluation, memory.window
    order: driver.EvaluationOrder | None = None
    cancel = False
    events: list[EmitEvent] = []
    pending: AnalysisResult | None = None
    started_now: set[str] = set()

    def held(pod: str, name: str, path: str | None, label: str | None) -> bool:
        return (path is not None and loaded[pod].get(name) == path
                and revisions.get((pod, name), label) == label)

    for _ in range(driver.MAX_TRANSITIONS):
        cfp = state.canary_revision
        cname = revision_name(served, cfp) if cfp else None
        cpath = path_of.get(sources.get(cfp or "", "")) if cfp else None
        spath = path_of.get(sources.get(state.stable_revision or "", ""))
        holding = [p for p in sorted(loaded)
                   if cname is not None and held(p, cname, cpath, state.canary_label)]
        if state.phase is Phase.PROMOTING:
            at_new = [p for p in loaded if held(p, served, cpath, state.canary_label)]
            others = len(at_new) < len(ready)
            present, live = others, (cfp if at_new and not others else state.stable_revision)
        else:
            present = cname is not None and any(cname in loaded[p] for p in loaded)
            live = state.stable_revision if any(loaded[p].get(served) == spath for p in loaded) else None
        current = slot is not None and slot.revision == cfp
        this_attempt = current and slot is not None and slot.attempt == state.evaluation_attempts
        finished = this_attempt and slot is not None and not slot.running
        inputs = Inputs(
            desired_revision=desired, desired_label=spec.revision, total_replicas=len(ready),
            canary_present=present, canary_ready_replicas=len(holding), stable_revision_live=live,
            evaluation=slot.result if finished and slot is not None else None,
            evaluation_error=slot.error if finished and slot is not None else None,
            evaluation_running=(cfp in started_now) or bool(current and slot is not None and slot.running),
            analysis=pending,
            analysis_window_open=window is not None and window.revision == cfp and window.step == state.step,
            control=control)
        pending = None
        new, actions = machine.advance(state, inputs, rspec, now, SETTINGS)
        for action in actions:
            if isinstance(action, StartEvaluation):
                started_now.add(action.revision)
                slot = driver.EvalSlot(action.revision, action.attempt, running=True)
                order = _order(adapter, new, action, ready=ready, loaded=loaded, served=served,
                               canary_path=cpath, stable_path=spath)
                cancel = False
            elif isinstance(action, machine.CancelEvaluation):
                cancel, order, slot = True, None, None
            elif isinstance(action, machine.BeginAnalysisWindow):
                window = driver.Window(new.canary_revision or "", action.step, {},
                                       None if gateways is None else dict(gateways))
            elif isinstance(action, machine.RunAnalysis):
                if window is None:
                    window = driver.Window(new.canary_revision or "", action.step)
                pending = driver.analyse(window, (), {}, canary_key=cname or "", stable_key=served,
                                         thresholds=thresholds, gateways=gateways,
                                         md=(adapter.namespace, adapter.name))
            elif isinstance(action, EmitEvent):
                events.append(action)
        state = new
        if not actions:
            break

    slot, order, window, cancel = driver.after_tick(state.phase, slot, order, window, cancel)
    stable_fp = state.stable_revision or desired
    stable_source = sources.get(stable_fp) or spec.source
    stable = {"source": stable_source, "revision": state.stable_label or spec.revision,
              "fingerprint": stable_fp}
    cfp = state.canary_revision
    canary_source = sources.get(cfp) if cfp else None
    cname = revision_name(served, cfp) if cfp else (str(read_canary.get("servedName") or "") or None)
    spath = path_of.get(stable_source)
    cpath = path_of.get(canary_source or "") if canary_source else None

    # Promotion: the served name moves to the new revision once the gateways have sent it all the
    # requests for DRAIN_SECONDS (or the move had begun before a restart).
    full_since = memory.full_since
    told_full = (read_state.phase is Phase.PROMOTING and read_state.weight >= 100
                 and read_state.canary_revision == cfp and cfp is not None)
    if told_full and cfp is not None and (full_since is None or full_since[0] != cfp):
        full_since = (cfp, now)
    if not told_full:
        full_since = None
    begun = cpath is not None and any(loaded[p].get(served) == cpath for p in loaded)
    drained = full_since is not None and (now - full_since[1]).total_seconds() >= DRAIN_SECONDS
    swap = state.phase is Phase.PROMOTING and cpath is not None and told_full and (begun or drained)
    wanted: list[Wanted] = []
    if swap and cpath is not None:
        wanted.append(Wanted(served, cpath, state.canary_label or ""))
    elif spath is not None:
        wanted.append(Wanted(served, spath, stable["revision"]))
    if state.phase in SPLIT and cname is not None and cpath is not None:
        wanted.append(Wanted(cname, cpath, state.canary_label or ""))
    keep: set[str] = set()
    told_name = read_canary.get("servedName")
    if told_name and (read_state.phase in SPLIT or _age(now, read_canary.get("phaseSince")) < DRAIN_SECONDS):
        keep.add(str(told_name))
    if cname is not None and state.phase is Phase.ROLLING_BACK and state.phase_since is not None \
            and (now - state.phase_since).total_seconds() < DRAIN_SECONDS:
        keep.add(cname)
    # A revision that just left (superseded, promoted, rolled back) keeps its name for the drain too.
    keep.update(revision_name(served, h.revision) for h in state.history
                if (now - h.finished_at).total_seconds() < DRAIN_SECONDS)
    return Tick(state=state, stable=stable, canary_source=canary_source, canary_name=cname,
                wanted=tuple(wanted), keep=frozenset(keep),
                memory=Memory(evaluation=slot, window=window, full_since=full_since),
                order=order, cancel=cancel, events=tuple(events), moving_to=cpath if swap else None)


def _order(adapter: ModelAdapter, state: RolloutState, action: StartEvaluation, *, ready: Mapping[str, str],
           loaded: Mapping[str, Mapping[str, str]], served: str, canary_path: str | None,
           stable_path: str | None) -> driver.EvaluationOrder:
    """The ModelDeployment's evaluation order, both revisions on one pod that holds both."""
    name = revision_name(served, action.revision)
    pod = next((p for p in sorted(loaded) if p in ready and canary_path is not None
                and loaded[p].get(name) == canary_path and loaded[p].get(served) == stable_path), None)
    url = f"http://{ready[pod]}:{render.PORT}" if pod is not None else None
    rspec = rollout_spec_from_api(adapter.spec.rollout)
    order = driver.evaluation_order(md_meta=adapter.metadata, evaluation=adapter.spec.rollout.evaluation,
                                    rspec=rspec, state=state, action=action, pods=(), served_name=served,
                                    canary_key=None, stable_key=None)
    return replace(order, canary_url=url, stable_url=url, canary_served_name=name, owner_kind=ADAPTER_KIND)


def _holders(name: str | None, path: str | None, ready: Sequence[str],
             loaded: Mapping[str, Mapping[str, str]], old: Sequence[Mapping[str, Any]],
             failures: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per Ready pod, whether it holds ``name`` at ``path`` (an unread pod keeps what was said), or
    failed to load it (``failures``: pod → vLLM's message)."""
    before = {r.get("pod"): r for r in old if isinstance(r, Mapping)}
    out: list[dict[str, Any]] = []
    for pod in sorted(ready):
        if pod in loaded:
            if name is not None and path is not None and loaded[pod].get(name) == path:
                out.append({"pod": pod, "state": "Loaded", "path": path})
            elif pod in failures and path is not None:
                out.append({"pod": pod, "state": "Failed", "path": path, "message": failures[pod]})
        elif pod in before:
            out.append(dict(before[pod]))
    return out


def rollout_status(tick: Tick, *, ready: Sequence[str], loaded: Mapping[str, Mapping[str, str]],
                   path_of: Mapping[str, str | None], old_status: Mapping[str, Any] | None,
                   now: datetime, generation: int | None,
                   failures: Mapping[str, str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The status fields of the rollout (stable, canary, rolloutHistory) and its conditions;
    ``failures``: pod → vLLM's message of the last failed load of the new revision there."""
    state = tick.state
    machine = state.to_status()
    canary = {k: v for k, v in machine["canary"].items() if v is not None}
    if tick.canary_source:
        canary["source"] = tick.canary_source
    if tick.canary_name:
        canary["servedName"] = tick.canary_name
    old_canary = (old_status or {}).get("canary") or {}
    if state.phase in driver.DRIVING and tick.canary_name:
        path = path_of.get(tick.canary_source or "")
        canary["replicas"] = _holders(tick.canary_name, path, ready, loaded, old_canary.get("replicas") or [],
                                      failures or {})
        canary["summary"] = f"{state.canary_label} {state.weight}% {state.phase.value}"
    history = [{k: v for k, v in h.items() if v is not None} for h in machine["rolloutHistory"]]
    doc = {"stable": dict(tick.stable), "canary": canary, "rolloutHistory": history}
    old_conditions = {c.get("type"): c for c in (old_status or {}).get("conditions") or []
                      if isinstance(c, Mapping)}

    def cond(type_: ConditionType | AdapterConditionType, value: bool, reason: str,
             message: str) -> Condition:
        since = now.replace(microsecond=0)
        old = old_conditions.get(type_.value)
        same = old is not None and old.get("status") == ("True" if value else "False")
        if old is not None and same and old.get("lastTransitionTime"):
            since = datetime.fromisoformat(str(old["lastTransitionTime"]).replace("Z", "+00:00"))
        return Condition(type=type_.value, status=ConditionStatus.TRUE if value else ConditionStatus.FALSE,
                         reason=reason, message=message, last_transition_time=since,
                         observed_generation=generation)

    conditions: list[Condition] = []
    active = state.phase in driver.DRIVING
    if active or state.decision is not None:
        reason = state.reason.value if state.reason else AdapterReason.NO_ROLLOUT.value
        conditions.append(cond(AdapterConditionType.PROGRESSING, active, reason,
                               f"rollout {state.phase.value}: {state.message}"))
    if state.eval_score is not None or state.phase is Phase.EVALUATING:
        conditions.append(reconcile.evaluating_condition(state, cond))
    return doc, [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions]
