"""The routing table: which ModelDeployment serves each model name, and its ready endpoints (pure).

Built from what the cache watches, with no I/O:

- a ModelDeployment (parsed with the API models) gives its served name (``spec.model.servedName``,
  else ``metadata.name``), its phase, and from status the canary: ``status.canary.fingerprint`` and
  ``status.canary.weight`` (percent of requests the canary should take);
- the EndpointSlices of its Service (label ``kubernetes.io/service-name`` = the ModelDeployment's
  name) give the ready endpoints: an endpoint whose ``conditions.ready`` is false (starting,
  failing its readiness probe, or terminating) is left out; a missing ``ready`` means ready, as
  the EndpointSlice API says;
- each endpoint's pod (``targetRef``) carries the revision-hash label of its workload, and the
  canary's Deployment carries the canary's fingerprint as an annotation: together they say which
  endpoints are the canary's.

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

#: The labels of everything that serves a ModelDeployment: its Service (so its EndpointSlices,
#: which the EndpointSlice controller labels like their Service), pods and Deployments.
SERVER_SELECTOR = ",".join(f"{k}={v}" for k, v in sorted({
    render.LABEL_NAME: render.APP_NAME, render.LABEL_COMPONENT: render.COMPONENT}.items()))
LABEL_SERVICE_NAME = "kubernetes.io/service-name"


@dataclass(frozen=True)
class Endpoint:
    """One ready model server: where to send requests, and which workload it belongs to."""

    address: str  #: ``host:port`` (``[v6]:port`` for IPv6)
    pod: str = ""  #: the pod's name ("" when the EndpointSlice names none)
    revision: str | None = None  #: the pod's revision-hash label (its workload's key); None: unknown

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

    @classmethod
    def from_model(cls, md: ModelDeployment) -> ModelInfo:
        status = md.status
        canary = status.canary if status is not None else None
        return cls(namespace=md.namespace, name=md.name, served_name=md.served_name,
                   phase=status.phase.value if status is not None else "Pending",
                   created=_epoch(md.metadata.get("creationTimestamp")),
                   canary_fingerprint=canary.fingerprint if canary is not None else None,
                   canary_weight=(canary.weight or 0) if canary is not None else 0)

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


def ready_endpoints(slices: Iterable[Obj], pod_revisions: Mapping[str, str]) -> tuple[Endpoint, ...]:
    """The ready endpoints of a Service's EndpointSlices, on the port named ``http`` (else the first).

    ``pod_revisions`` maps a pod's name to its revision-hash label. An address listed twice (a pod
    moving between slices) counts once.
    """
    found: dict[str, Endpoint] = {}
    for piece in slices:
        if piece.get("addressType") not in ("IPv4", "IPv6"):
            continue  # FQDN slices name hosts, not pods
        ports = [p for p in piece.get("ports") or [] if isinstance(p, dict) and p.get("port")]
        named = [p for p in ports if p.get("name") == render.PORT_NAME]
        if not (named or ports):
            continue
        port = (named or ports)[0]
        for ep in piece.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            addresses = ep.get("addresses") or []
            if not addresses:
                continue
            host = str(addresses[0])
            address = f"[{host}]:{port['port']}" if ":" in host else f"{host}:{port['port']}"
            target = ep.get("targetRef") or {}
            pod = str(target.get("name") or "") if target.get("kind", "Pod") == "Pod" else ""
            found[address] = Endpoint(address=address, pod=pod, revision=pod_revisions.get(pod))
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


def build_backend(info: ModelInfo, *, slices: Iterable[Obj], pod_revisions: Mapping[str, str],
                  deployments: Iterable[Obj]) -> Backend:
    """A ModelDeployment with its ready endpoints and, while a canary runs, its split."""
    split = None
    if info.canary_fingerprint:
        revision = canary_revision(deployments, info.canary_fingerprint)
        if revision is not None:
            split = CanarySplit(revision=revision, weight=min(100, max(0, info.canary_weight)))
    return Backend(namespace=info.namespace, name=info.name, served_name=info.served_name,
                   phase=info.phase, endpoints=ready_endpoints(slices, pod_revisions), split=split,
                   created=info.created)


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
