"""Adapters in the routing table: a ModelAdapter's served name → its base's replicas that hold it (pure).

The operator writes, in each ModelAdapter's status, the replicas of its base that hold the adapter
(``status.replicas[].state: Loaded``); the gateway routes ``model: <adapter's served name>`` to the
base's ready endpoints among those, with the base's canary split. A replica that (re)starts is not
listed until the operator has loaded the adapter on it, so it gets no request for the adapter before
it can answer one. An adapter with no such replica is listed with no endpoint: its requests wait
(or fail) as a ModelDeployment's with no ready replica would.

Names: only an adapter the operator accepted (``Loadable=True``) is routed, so of two adapters with
one name only the one the operator chose (the older) is; and an adapter never takes a name a
ModelDeployment serves (the operator reports the conflict on the adapter, and here the
ModelDeployment keeps the name).

An adapter rollout (``status.canary`` in an active phase or Promoting, ``controller/adapterrollout.py``):
the new revision is loaded beside the serving one on the same replicas under its own name
(``status.canary.servedName``, ``<served>@<fingerprint[:8]>``). The backend then lists each replica
holding the serving revision as a stable endpoint (revision: the served name) and each replica holding
the new one as a canary endpoint (revision: the new name) whose requests go out with ``model``
rewritten to the new name; the split is the rollout's exact ``status.canary.weight``, per request,
as for a ModelDeployment's canary (``gateway/weights.py``). The base's own canary split does not
apply to the adapter's requests meanwhile. The answer's ``model`` is the name the replica served:
the new revision's answers say ``<served>@<fingerprint[:8]>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from modelplane.api.adapter import ModelAdapter
from modelplane.api.models import InvalidSpecError
from modelplane.gateway.table import Backend, CanarySplit, Endpoint, _epoch

Key = tuple[str, str]


#: The rollout phases in which the new revision takes its weight of the requests.
SPLIT_PHASES = frozenset({"Deploying", "Evaluating", "Stepping", "Analyzing", "Paused", "Promoting"})


def loaded_pods(status: Mapping[str, Any] | None) -> frozenset[str]:
    """The pods the adapter's status (or its canary block) lists as Loaded."""
    replicas = (status or {}).get("replicas") or []
    return frozenset(str(r.get("pod")) for r in replicas
                     if isinstance(r, Mapping) and r.get("state") == "Loaded" and r.get("pod"))


def loadable(status: Mapping[str, Any] | None) -> bool:
    """Whether the operator accepted the adapter (its ``Loadable`` condition is True)."""
    return any(isinstance(c, Mapping) and c.get("type") == "Loadable" and c.get("status") == "True"
               for c in (status or {}).get("conditions") or [])


def adapter_backend(obj: Mapping[str, Any], bases: Mapping[Key, Backend]) -> Backend | None:
    """The backend of one ModelAdapter object, or None (invalid, or its base is not routed)."""
    try:
        adapter = ModelAdapter.parse(obj)
    except InvalidSpecError:
        return None
    base = bases.get((adapter.namespace, adapter.spec.base))
    if base is None:
        return None
    status = obj.get("status") if isinstance(obj.get("status"), Mapping) else None
    if not loadable(status):
        return None  # the operator has not accepted it (yet): its name may be another's
    holders = loaded_pods(status)
    endpoints: tuple[Endpoint, ...] = tuple(e for e in base.endpoints if e.pod in holders)
    split = base.split
    canary = (status or {}).get("canary")
    if isinstance(canary, Mapping) and canary.get("phase") in SPLIT_PHASES and canary.get("servedName"):
        name = str(canary["servedName"])
        weight = min(100, max(0, int(canary.get("weight") or 0)))
        canary_holders = loaded_pods(canary)
        endpoints = (tuple(replace(e, revision=adapter.served_name) for e in endpoints)
                     + tuple(replace(e, revision=name, model=name) for e in base.endpoints
                             if e.pod in canary_holders))
        split = CanarySplit(revision=name, weight=weight)
    return Backend(namespace=adapter.namespace, name=adapter.name, served_name=adapter.served_name,
                   phase=str((status or {}).get("phase") or "Pending"), endpoints=endpoints, split=split,
                   created=_epoch(adapter.metadata.get("creationTimestamp")), adapter_of=base.name)


def upstream_body(body: bytes, model: str) -> bytes:
    """The request body with ``model`` replaced (the endpoint serves the revision under that name)."""
    doc = json.loads(body)
    doc["model"] = model
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def with_adapters(bases: Mapping[Key, Backend], adapters: Iterable[Mapping[str, Any]]) -> list[Backend]:
    """The ModelDeployments' backends, then the adapters' that do not take a model's name."""
    taken = {b.served_name for b in bases.values()}
    out = list(bases.values())
    for obj in adapters:
        backend = adapter_backend(obj, bases)
        if backend is not None and backend.served_name not in taken:
            out.append(backend)
    return out
