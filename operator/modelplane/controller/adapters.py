"""The adapter core: ModelAdapters → their base's LoRA settings, what to load where, and status. Pure.

Decisions, each a small function with its own table test (tests/unit/test_adapters.py):

- ``effective_lora`` (``api/adapter.py``, where the defaults live): the base's ``spec.engine.lora``
  once adapters name it.
- ``judge``: whether the operator can load an adapter at all, or the reason it cannot (the
  ``Loadable`` condition): its base does not exist (``UnknownBase``); its rank is above the base's
  ``maxLoraRank`` (``RankAboveMaximum``); the base holds no more (``NoLoRAHeadroom``: adapters in
  creation order beyond ``maxCpuLoras``); its served name is a model's or an older adapter's
  (``ServedNameConflict``); a pvc:// source on another claim than the base's (``ClaimNotMounted``).
- ``plan_actions``: per Ready replica of the base, from what its ``/v1/models`` lists, the loads
  (missing, another path, or another revision: in place) and unloads (adapters no longer wanted)
  to make; a failed load waits for its retry time.
- ``build_status``: the adapter's status from what each replica holds and the last failures;
  ``lastTransitionTime`` kept while a condition's status stands, so an unchanged world renders the
  same status and the loop writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelplane import render
from modelplane.api.adapter import (
    AdapterConditionType,
    AdapterPhase,
    AdapterReason,
    ModelAdapter,
    ModelAdapterStatus,
    ReplicaState,
    effective_lora,
)
from modelplane.api.models import InvalidSpecError, ModelDeployment

Raw = Mapping[str, Any]


def parse_adapters(objs: Iterable[Raw]) -> tuple[list[ModelAdapter], list[tuple[Raw, str]]]:
    """The valid adapters, and the invalid ones with the API models' message."""
    valid: list[ModelAdapter] = []
    invalid: list[tuple[Raw, str]] = []
    for obj in objs:
        try:
            valid.append(ModelAdapter.parse(obj))
        except InvalidSpecError as exc:
            invalid.append((obj, str(exc)))
    return valid, invalid


def sort_key(adapter: ModelAdapter) -> tuple[str, str, str]:
    """Creation order, then namespace and name: who was first keeps a name or a slot."""
    return (adapter.created or "~", adapter.namespace, adapter.name)


@dataclass(frozen=True)
class Verdict:
    """Whether the operator can load an adapter, and the path vLLM gets."""

    loadable: bool
    reason: AdapterReason
    message: str
    path: str = ""


def lora_path(adapter: ModelAdapter, base: ModelDeployment) -> str | None:
    """The ``lora_path`` vLLM loads for the adapter's ``spec.source`` (``source_path``)."""
    return source_path(adapter.spec.source, base)


def source_path(source: str, base: ModelDeployment) -> str | None:
    """The ``lora_path`` vLLM loads: hf:// → the repo id (vLLM fetches it from the Hub), s3:// and gs://
    → the URI, pvc:// on the base's own claim → its path under the claim's mount. None: a pvc:// on
    another claim, which the base's pods do not mount."""
    scheme, _, rest = source.partition("://")
    if scheme == "hf":
        return rest
    if scheme in ("s3", "gs"):
        return source
    claim, _, path = rest.partition("/")
    base_scheme, _, base_rest = base.spec.model.source.partition("://")
    if base_scheme != "pvc" or base_rest.partition("/")[0] != claim:
        return None
    return f"{render.PVC_MOUNT}/{path}".rstrip("/")


def judge(adapter: ModelAdapter, *, base: ModelDeployment | None, siblings: Sequence[ModelAdapter],
          model_names: Mapping[str, tuple[str, str]], adapter_names: Mapping[str, ModelAdapter]) -> Verdict:
    """See the module docstring. ``siblings``: every adapter on the same base (this one included);
    ``model_names``: served name → (namespace, name) of every ModelDeployment; ``adapter_names``:
    served name → the adapter that keeps it (the first by ``sort_key``)."""
    def no(reason: AdapterReason, message: str) -> Verdict:
        return Verdict(False, reason, message)

    if base is None:
        return no(AdapterReason.UNKNOWN_BASE,
                  f"no ModelDeployment {adapter.spec.base!r} in namespace {adapter.namespace!r} (spec.base)")
    served = adapter.served_name
    if served in model_names:
        ns, name = model_names[served]
        return no(AdapterReason.SERVED_NAME_CONFLICT,
                  f"served name {served!r} is ModelDeployment {ns}/{name}'s; set spec.servedName")
    keeper = adapter_names.get(served)
    if keeper is not None and (keeper.namespace, keeper.name) != (adapter.namespace, adapter.name):
        return no(AdapterReason.SERVED_NAME_CONFLICT,
                  f"served name {served!r} is ModelAdapter {keeper.namespace}/{keeper.name}'s (older); "
                  "set spec.servedName")
    lora = effective_lora(base.spec.engine.lora, siblings)
    assert lora is not None and lora.max_lora_rank is not None and lora.max_cpu_loras is not None
    if adapter.spec.rank > lora.max_lora_rank:
        return no(AdapterReason.RANK_ABOVE_MAXIMUM,
                  f"spec.rank {adapter.spec.rank} is above the base's maxLoraRank {lora.max_lora_rank} "
                  f"(ModelDeployment {base.name} spec.engine.lora.maxLoraRank)")
    ordered = sorted(siblings, key=sort_key)
    me = (adapter.namespace, adapter.name)
    position = next(i for i, a in enumerate(ordered) if (a.namespace, a.name) == me)
    if position >= lora.max_cpu_loras:
        return no(AdapterReason.NO_LORA_HEADROOM,
                  f"ModelDeployment {base.name} holds {lora.max_cpu_loras} adapters "
                  f"(spec.engine.lora.maxCpuLoras) and {position} older ones take them")
    path = lora_path(adapter, base)
    if path is None:
        return no(AdapterReason.CLAIM_NOT_MOUNTED,
                  f"{adapter.spec.source} is on another claim than the base's model "
                  f"({base.spec.model.source}); only that claim is mounted in its pods")
    return Verdict(True, AdapterReason.ACCEPTED, f"loads as {path!r} on {base.name}'s replicas", path)


def served_name_keepers(adapters: Iterable[ModelAdapter]) -> dict[str, ModelAdapter]:
    """Served name → the adapter that keeps it (the first by ``sort_key``)."""
    keepers: dict[str, ModelAdapter] = {}
    for adapter in sorted(adapters, key=sort_key):
        keepers.setdefault(adapter.served_name, adapter)
    return keepers


@dataclass(frozen=True)
class Wanted:
    """An adapter that should be loaded: its vLLM name and path, and the revision it was loaded at."""

    name: str
    path: str
    revision: str


@dataclass(frozen=True)
class Action:
    """One call to a replica's admin API."""

    pod: str
    load: bool  #: True: /v1/load_lora_adapter; False: /v1/unload_lora_adapter
    name: str
    path: str = ""
    revision: str = ""
    in_place: bool = False


def plan_actions(wanted: Sequence[Wanted], *, loaded: Mapping[str, Mapping[str, str]],
                 revisions: Mapping[tuple[str, str], str], retry_at: Mapping[tuple[str, str, str], float],
                 now: float, keep: Iterable[str] = ()) -> list[Action]:
    """The loads and unloads that make each replica hold exactly ``wanted``.

    ``loaded``: pod → {adapter name: path} as its ``/v1/models`` lists (pods not in it are not
    acted on: their listing could not be read); ``revisions``: (pod, name) → the revision the
    operator loaded there; ``retry_at``: (pod, name, path) → when a failed load may be tried again;
    ``keep``: names not wanted any more that stay loaded for now (a rolled-out revision draining).
    """
    actions: list[Action] = []
    names = {w.name for w in wanted} | set(keep)
    for pod in sorted(loaded):
        held = loaded[pod]
        for w in wanted:
            current = held.get(w.name)
            stale = current is not None and (current != w.path or revisions.get((pod, w.name), w.revision)
                                              != w.revision)
            if (current is None or stale) and retry_at.get((pod, w.name, w.path), 0.0) <= now:
                actions.append(Action(pod=pod, load=True, name=w.name, path=w.path, revision=w.revision,
                                      in_place=stale))
        for name in sorted(set(held) - names):
            actions.append(Action(pod=pod, load=False, name=name))
    return actions


def _condition(type_: AdapterConditionType, status: bool, reason: AdapterReason, message: str, *,
               old: Mapping[str, Any] | None, now: datetime, generation: int | None) -> dict[str, Any]:
    value = "True" if status else "False"
    since = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    if old is not None and old.get("status") == value and old.get("lastTransitionTime"):
        since = str(old["lastTransitionTime"])
    condition: dict[str, Any] = {"type": type_.value, "status": value, "reason": reason.value,
                                 "message": message, "lastTransitionTime": since}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def build_status(adapter: ModelAdapter, verdict: Verdict, *, ready_pods: Sequence[str],
                 loaded: Mapping[str, Mapping[str, str]], failures: Mapping[str, str],
                 old_status: Mapping[str, Any] | None, now: datetime,
                 path: str | None = None, also: str | None = None) -> dict[str, Any]:
    """The adapter's status. ``ready_pods``: the base's Ready replicas; ``loaded``: what each of
    them lists (missing: unread, kept as the old status said); ``failures``: pod → vLLM's message
    of the last failed load of this adapter's current path; ``path``: the path the served name
    should be at (the serving revision's; default the spec's, ``verdict.path``); ``also``: another
    path it may be at meanwhile (a promoted revision's, while it moves there)."""
    old_status = old_status or {}
    path = path or verdict.path
    old_conditions = {c.get("type"): c for c in old_status.get("conditions") or [] if isinstance(c, Mapping)}
    old_replicas = {r.get("pod"): r for r in old_status.get("replicas") or [] if isinstance(r, Mapping)}
    generation = adapter.generation
    served = adapter.served_name
    replicas: list[dict[str, Any]] = []
    if verdict.loadable:
        for pod in sorted(ready_pods):
            if pod in loaded:
                held = loaded[pod].get(served)
                if held is not None and held in (path, also) and pod not in failures:
                    replicas.append({"pod": pod, "state": ReplicaState.LOADED.value, "path": held})
                elif pod in failures:
                    replicas.append({"pod": pod, "state": ReplicaState.FAILED.value, "path": path,
                                     "message": failures[pod]})
            elif pod in old_replicas:
                replicas.append(dict(old_replicas[pod]))
    loaded_count = sum(r["state"] == ReplicaState.LOADED.value for r in replicas)
    failed = [r for r in replicas if r["state"] == ReplicaState.FAILED.value]

    def cond(type_: AdapterConditionType, status: bool, reason: AdapterReason,
             message: str) -> dict[str, Any]:
        return _condition(type_, status, reason, message, old=old_conditions.get(type_.value), now=now,
                          generation=generation)

    loadable = cond(AdapterConditionType.LOADABLE, verdict.loadable, verdict.reason, verdict.message)
    if not verdict.loadable:
        phase = AdapterPhase.FAILED
        ready = cond(AdapterConditionType.READY, False, verdict.reason, verdict.message)
    elif not ready_pods:
        phase = AdapterPhase.PENDING
        ready = cond(AdapterConditionType.READY, False, AdapterReason.NO_READY_REPLICA,
                     f"no Ready replica of {adapter.spec.base} to load it on")
    elif failed:
        phase = AdapterPhase.FAILED if loaded_count == 0 else AdapterPhase.DEGRADED
        first = failed[0]
        ready = cond(AdapterConditionType.READY, False, AdapterReason.LOAD_FAILED,
                     f"{len(failed)} of {len(ready_pods)} replicas failed to load it; "
                     f"{first['pod']}: {first['message']}")
    elif loaded_count < len(ready_pods):
        phase = AdapterPhase.PENDING
        ready = cond(AdapterConditionType.READY, False, AdapterReason.LOADING,
                     f"loaded on {loaded_count} of {len(ready_pods)} Ready replicas")
    else:
        phase = AdapterPhase.READY
        ready = cond(AdapterConditionType.READY, True, AdapterReason.LOADED,
                     f"loaded on all {loaded_count} Ready replicas")
    status: dict[str, Any] = {"phase": phase.value, "servedName": served, "loadedReplicas": loaded_count,
                              "readyReplicas": len(ready_pods), "replicas": replicas,
                              "conditions": [loadable, ready]}
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def normalise(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """A status as the API server hands it back (its schema defaults filled in, e.g. an empty
    ``message``), so that equal statuses compare equal; {} for one that does not parse."""
    try:
        model = ModelAdapterStatus.model_validate(dict(status or {}))
    except ValueError:
        return {}
    return dict(model.model_dump(mode="json", by_alias=True, exclude_none=True))


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` would change the object's status."""
    return normalise(old) != normalise(new)


#: Reasons that need the user to act: a condition turning to one of them is a Warning Event.
WARNING_REASONS = frozenset({
    AdapterReason.INVALID_SPEC, AdapterReason.UNKNOWN_BASE, AdapterReason.RANK_ABOVE_MAXIMUM,
    AdapterReason.NO_LORA_HEADROOM, AdapterReason.SERVED_NAME_CONFLICT, AdapterReason.CLAIM_NOT_MOUNTED,
    AdapterReason.LOAD_FAILED,
})


def condition_events(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The Events (type, reason, message) a status write tells of, as ``kubectl describe`` shows them:
    a condition that turned to a reason needing action (Warning, with vLLM's or the operator's
    message), and the adapter becoming Ready on every replica (Normal). Nothing for a rewrite that
    keeps each condition's status and reason, so a steady adapter makes no Event; one Event per
    reason (Loadable and Ready often carry the same one)."""
    before = {c.get("type"): c for c in (old or {}).get("conditions") or [] if isinstance(c, Mapping)}
    events: list[tuple[str, str, str]] = []
    for cond in new.get("conditions") or []:
        prev = before.get(cond.get("type"))
        if prev is not None and (prev.get("status"), prev.get("reason")) == (cond.get("status"),
                                                                             cond.get("reason")):
            continue
        reason, message = str(cond.get("reason") or ""), str(cond.get("message") or "")
        if any(reason == told for _, told, _ in events):
            continue
        if reason in WARNING_REASONS:
            events.append(("Warning", reason, f"{cond.get('type')}: {message}"))
        elif cond.get("type") == "Ready" and cond.get("status") == "True":
            events.append(("Normal", reason, f"Ready: {message}"))
    return events
