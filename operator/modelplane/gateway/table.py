"""The routing table: which ModelDeployment serves each model name, and its ready endpoints (pure).

Built from what the cache watches, with no I/O:

- a ModelDeployment (parsed with the API models) gives its served name (``spec.model.servedName``,
  else ``metadata.name``), its phase, and from status the canary: ``status.canary.fingerprint`` and
  ``status.canary.weight`` (percent of requests the canary should take);
- its server pods (labelled as its server, and with its name) give the ready endpoints, read from
  the pods themselves as the Gateway API Inference Extension's endpoint picker does, not from
  EndpointSlices: a pod is an endpoint when it has ``status.podIP``, its ``Ready`` condition is
  ``True`` and it has no ``deletionTimestamp`` (terminating); the port is the container port named
  ``http`` (else the first container port, else the server's known port 8000). (EndpointSlices
  would add nothing the pods do not say, and some clusters cannot have them: the dev cluster's pod
  IPs are loopback addresses, which the EndpointSlice controller refuses.)
- each pod carries the revision-hash label of its workload, and the canary's Deployment carries
  the canary's fingerprint as an annotation: together they say which endpoints are the canary's.

Two ModelDeployments that serve the same name: the older one (then the first by namespace and
name) keeps the name; the other is listed in ``shadowed`` and gets no request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modelplane import render
from modelplane.api.models import ModelDeployment

Obj = dict[str, Any]

#: The labels of everything that serves a ModelDeployment: its pods and Deployments.
SERVER_SELECTOR = ",".join(f"{k}={v}" for k, v in sorted({
    render.LABEL_NAME: render.APP_NAME, render.LABEL_COMPONENT: render.COMPONENT}.items()))


@dataclass(frozen=True)
class Endpoint:
    """One ready model server: where to send requests, and which workload it belongs to."""

    address: str  #: ``host:port`` (``[v6]:port`` for IPv6)
    pod: str = ""  #: the pod's name ("" for a fixed table's endpoint)
    revision: str | None = None  #: the pod's revision-hash label (its workload's key); None: unknown
    #: The ``model`` to send this endpoint instead of the client's: an adapter revision being rolled
    #: out, loaded under its own name beside the served one (``gateway/adapters.py``). None: as sent.
    model: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@dataclass(frozen=True)
class CanarySplit:
    """A canary under way: the endpoints of workload ``revision`` take ``weight`` percent of requests."""

    revision: str  #: the canary workload's revision-hash label
    weight: int  #: 0-100

    def __post_init__(self) -> None:
        if not 0 <= self.weight <= 100:
            raise ValueError(f"canary weight must be 0-100, got {self.weight}")


@dataclass(frozen=True)
class ModelInfo:
    """What the gateway needs of a ModelDeployment, parsed once per resourceVersion."""

    namespace: str
    name: str
    served_name: str
    phase: str
    created: int = 0  #: creation time, seconds since the epoch (``/v1/models``'s ``created``)
    canary_fingerprint: str | None = None  #: status.canary.fingerprint: a rollout is under way
    canary_weight: int = 0  #: status.canary.weight
    usd_per_million_tokens: float | None = None  #: status.cost.usdPerMillionTokens (model mesh spend)

    @classmethod
    def from_model(cls, md: ModelDeployment) -> ModelInfo:
        status = md.status
        canary = status.canary if status is not None else None
        return cls(namespace=md.namespace, name=md.name, served_name=md.served_name,
                   phase=status.phase.value if status is not None else "Pending",
                   created=_epoch(md.metadata.get("creationTimestamp")),
                   canary_fingerprint=canary.fingerprint if canary is not None else None,
                   canary_weight=(canary.weight or 0) if canary is not None else 0,
                   usd_per_million_tokens=(status.cost.usd_per_million_tokens
                                           if status is not None and status.cost is not None else None))

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Backend:
    """A ModelDeployment as the gateway routes to it."""

    namespace: str
    name: str
    served_name: str
    phase: str
    endpoints: tuple[Endpoint, ...] = ()  #: ready endpoints, sorted by address
    split: CanarySplit | None = None  #: None: no canary, every endpoint is equal
    created: int = 0
    usd_per_million_tokens: float | None = None  #: measured by the operator; None: not known
    #: A ModelAdapter's backend: its base ModelDeployment's name (``gateway/adapters.py``).
    adapter_of: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class RouteTable:
    """Served model name → Backend, plus the ModelDeployments that lost a name to another."""

    models: Mapping[str, Backend] = field(default_factory=dict)
    shadowed: tuple[tuple[str, str, str], ...] = ()  #: (served name, namespace, name)

    def get(self, model: str) -> Backend | None:
        return self.models.get(model)


def _epoch(stamp: Any) -> int:
    if not isinstance(stamp, str):
        return 0
    try:
        return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def pod_endpoint(pod: Obj) -> Endpoint | None:
    """The endpoint of one server pod, or None while it cannot take requests.

    Not an endpoint: no ``status.podIP`` yet, a ``Ready`` condition that is not ``True`` (starting,
    loading, failing its readiness probe; a pod with no conditions is not ready), or a
    ``deletionTimestamp`` (terminating: it finishes what it has, takes nothing new).
    """
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return None
    host = status.get("podIP")
    if not host:
        return None
    ready = next((c.get("status") for c in status.get("conditions") or []
                  if isinstance(c, dict) and c.get("type") == "Ready"), None)
    if ready != "True":
        return None
    host = str(host)
    port = _server_port(pod)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    revision = (meta.get("labels") or {}).get(render.LABEL_REVISION_HASH)
    return Endpoint(address=address, pod=str(meta.get("name") or ""),
                    revision=str(revision) if revision else None)


def _server_port(pod: Obj) -> int:
    """The container port named ``http``, else the first container port, else the known 8000."""
    ports = [p for c in (pod.get("spec") or {}).get("containers") or [] for p in c.get("ports") or []
             if isinstance(p, dict) and isinstance(p.get("containerPort"), int)]
    named = [p for p in ports if p.get("name") == render.PORT_NAME]
    return int((named or ports)[0]["containerPort"]) if (named or ports) else render.PORT


def ready_endpoints(pods: Iterable[Obj]) -> tuple[Endpoint, ...]:
    """The ready endpoints of a ModelDeployment's server pods, sorted by address.

    An address listed twice (a pod IP reused while the old pod's deletion is not seen yet) counts
    once: the pod listed last wins.
    """
    found: dict[str, Endpoint] = {}
    for pod in pods:
        endpoint = pod_endpoint(pod)
        if endpoint is not None:
            found[endpoint.address] = endpoint
    return tuple(found[a] for a in sorted(found))


def canary_revision(deployments: Iterable[Obj], fingerprint: str) -> str | None:
    """The revision-hash label of the Deployment that runs ``fingerprint`` (the canary's), if any."""
    for dep in deployments:
        meta = dep.get("metadata") or {}
        if (meta.get("annotations") or {}).get(render.ANNOTATION_FINGERPRINT) == fingerprint:
            key = (meta.get("labels") or {}).get(render.LABEL_REVISION_HASH)
            if key:
                return str(key)
    return None


def build_backend(info: ModelInfo, *, pods: Iterable[Obj], deployments: Iterable[Obj]) -> Backend:
    """A ModelDeployment with its ready endpoints and, while a canary runs, its split."""
    split = None
    if info.canary_fingerprint:
        revision = canary_revision(deployments, info.canary_fingerprint)
        if revision is not None:
            split = CanarySplit(revision=revision, weight=min(100, max(0, info.canary_weight)))
    return Backend(namespace=info.namespace, name=info.name, served_name=info.served_name,
                   phase=info.phase, endpoints=ready_endpoints(pods), split=split,
                   created=info.created, usd_per_million_tokens=info.usd_per_million_tokens)


def build_table(backends: Iterable[Backend]) -> RouteTable:
    """Index backends by served name; of several serving one name, the oldest wins."""
    by_name: dict[str, list[Backend]] = {}
    for b in backends:
        by_name.setdefault(b.served_name, []).append(b)
    models: dict[str, Backend] = {}
    shadowed: list[tuple[str, str, str]] = []
    for name, group in by_name.items():
        group.sort(key=lambda b: (b.created or 2**62, b.namespace, b.name))
        models[name] = group[0]
        shadowed.extend((name, b.namespace, b.name) for b in group[1:])
    return RouteTable(models=models, shadowed=tuple(sorted(shadowed)))
