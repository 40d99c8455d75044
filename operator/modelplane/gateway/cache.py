"""Where the routing table comes from: the cluster through watches, or a fixed table.

``Routes`` is the seam the gateway reads: ``table()`` (the current ``RouteTable``),
``wait_changed(timeout)`` (held requests sleep on it) and ``health()``. Two sources:

- ``ClusterRoutes``: informers (LIST once, then WATCH; see ``modelplane.controller.informer``) on
  ModelDeployments, and on the pods and Deployments labelled as a ModelDeployment's server (the
  pods give the endpoints: ``table.pod_endpoint``). Each event marks its ModelDeployment stale;
  ``table()`` rebuilds only the stale entries. The gateway never writes to the cluster: it needs
  ``list`` and ``watch`` on exactly these three resources (the chart's gateway RBAC).
- ``StaticRoutes``: a table set by hand — tests, and ``modelplane gateway --routes FILE`` (a
  ModelDeployment-free setup for benchmarks against simulators).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from modelplane import render
from modelplane.api.models import InvalidSpecError, ModelDeployment
from modelplane.controller import kube
from modelplane.controller.informer import Informer, Obj
from modelplane.gateway import metrics
from modelplane.gateway.adapters import with_adapters
from modelplane.gateway.table import (
    SERVER_SELECTOR,
    Backend,
    CanarySplit,
    Endpoint,
    ModelInfo,
    RouteTable,
    build_backend,
    build_table,
)
from modelplane.gateway.watched import Watched

log = logging.getLogger("modelplane.gateway")

Key = tuple[str, str]  #: (namespace, ModelDeployment name)


class Routes:
    """The gateway's source of routes; subclasses set the table and call ``_changed_now``."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def table(self) -> RouteTable:
        raise NotImplementedError

    @property
    def synced(self) -> bool:
        """Whether the table reflects the cluster yet (before: requests get 503, not 404)."""
        return True

    def health(self, now: float | None = None) -> dict[str, float]:
        """Sources down, with the seconds each has been down (empty: all well)."""
        return {}

    async def wait_changed(self, timeout: float) -> bool:
        """Sleep until the table may have changed (True) or ``timeout`` seconds pass (False)."""
        changed = self._changed
        if timeout <= 0:
            return False
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _changed_now(self) -> None:
        # Swap, then wake: a waiter that arrives later waits for the next change.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def run(self) -> None:
        """Keep the table current until cancelled (nothing to do for a fixed table)."""
        await asyncio.Event().wait()


class StaticRoutes(Routes):
    """A table set by hand."""

    def __init__(self, table: RouteTable | None = None) -> None:
        super().__init__()
        self._table = table or RouteTable()

    def table(self) -> RouteTable:
        return self._table

    def set(self, table: RouteTable) -> None:
        self._table = table
        self._changed_now()

    def set_backends(self, backends: Iterable[Backend]) -> None:
        self.set(build_table(backends))


def load_routes_file(path: Path) -> RouteTable:
    """A fixed table from YAML: ``models: [{name, endpoints: [host:port], canary: {endpoints, weight}}]``.

    Raises ``ValueError`` naming the entry that is wrong.
    """
    doc = yaml.safe_load(path.read_text()) or {}
    entries = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a mapping with a list under 'models'")
    backends = []
    for i, entry in enumerate(entries):
        where = f"{path}: models[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ValueError(f"{where}: needs a 'name' (the model name clients send)")
        stable = _addresses(entry.get("endpoints") or [], f"{where}.endpoints")
        endpoints = [Endpoint(address=a, revision="stable") for a in stable]
        split = None
        canary = entry.get("canary")
        if canary is not None:
            if not isinstance(canary, dict):
                raise ValueError(f"{where}.canary: expected a mapping with 'endpoints' and 'weight'")
            weight = canary.get("weight", 0)
            if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 100:
                raise ValueError(f"{where}.canary.weight: expected an integer 0-100, got {weight!r}")
            endpoints += [Endpoint(address=a, revision="canary")
                          for a in _addresses(canary.get("endpoints") or [], f"{where}.canary.endpoints")]
            split = CanarySplit(revision="canary", weight=weight)
        backends.append(Backend(namespace=str(entry.get("namespace") or "default"), name=entry["name"],
                                served_name=entry["name"], phase="Ready",
                                endpoints=tuple(endpoints), split=split))
    return build_table(backends)


def _addresses(items: Any, where: str) -> list[str]:
    if not isinstance(items, list) or not all(isinstance(a, str) and ":" in a for a in items):
        raise ValueError(f"{where}: expected a list of host:port")
    return list(items)


class ClusterRoutes(Watched, Routes):
    """The table, kept current by watches on the cluster (in ``namespaces``, or all)."""

    def __init__(self, client: kube.Kube, namespaces: Sequence[str] = ()) -> None:
        super().__init__()
        scopes: list[str | None] = list(namespaces) or [None]
        self.models = [Informer(client, kube.MODELDEPLOYMENTS, namespace=ns, handler=self._on_model)
                       for ns in scopes]
        self.pods = [Informer(client, kube.PODS, namespace=ns, label_selector=SERVER_SELECTOR,
                              index=_by_owner, handler=self._on_child(_by_owner)) for ns in scopes]
        self.deployments = [Informer(client, kube.DEPLOYMENTS, namespace=ns, label_selector=SERVER_SELECTOR,
                                     index=_by_owner, handler=self._on_child(_by_owner))
                            for ns in scopes]
        # Multi-node replicas (modelplane.lws): a revision is a LeaderWorkerSet, which carries the
        # canary's fingerprint as a Deployment does; its CRD may be absent.
        self.groups = [Informer(client, kube.LEADERWORKERSETS, namespace=ns, label_selector=SERVER_SELECTOR,
                                index=_by_owner, handler=self._on_child(_by_owner), optional=True)
                       for ns in scopes]
        # ModelAdapters (gateway/adapters.py); optional: an install without their CRD routes models only.
        self.adapters = [Informer(client, kube.MODELADAPTERS, namespace=ns, handler=self._on_adapter,
                                  optional=True) for ns in scopes]
        self._adapters_stale = False
        self._infos: dict[Key, tuple[str, ModelInfo | None]] = {}  #: key → (resourceVersion, parsed)
        self._backends: dict[Key, Backend] = {}
        self._stale: set[Key] = set()
        self._table = RouteTable()
        self._shadowed: tuple[tuple[str, str, str], ...] = ()

    @property
    def informers(self) -> list[Informer]:
        return [*self.models, *self.pods, *self.deployments, *self.groups, *self.adapters]

    # --- events -----------------------------------------------------------------------------

    def _on_model(self, event_type: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if event_type == "DELETED":
            metrics.forget(*key)
        self._stale.add(key)
        self._changed_now()

    def _on_adapter(self, event_type: str, obj: Obj) -> None:
        self._adapters_stale = True
        self._changed_now()

    def _on_child(self, owner: Any) -> Any:
        def handle(event_type: str, obj: Obj) -> None:
            for key in owner(obj):
                self._stale.add(key)
            self._changed_now()
        return handle

    # --- the table --------------------------------------------------------------------------

    def table(self) -> RouteTable:
        if self._stale or self._adapters_stale:
            stale, self._stale, self._adapters_stale = self._stale, set(), False
            for key in stale:
                backend = self._build(key)
                if backend is None:
                    self._backends.pop(key, None)
                else:
                    self._backends[key] = backend
            adapters = [a for inf in self.adapters for a in inf.items()]
            self._table = build_table(with_adapters(self._backends, adapters))
            if self._table.shadowed != self._shadowed:
                for name, ns, md in self._table.shadowed:
                    winner = self._table.models[name]
                    log.warning("%s/%s serves %r, which %s/%s (older) serves already: it gets no request",
                                ns, md, name, winner.namespace, winner.name)
                self._shadowed = self._table.shadowed
        return self._table

    def _info(self, key: Key) -> ModelInfo | None:
        obj = _get(self.models, key)
        if obj is None:
            self._infos.pop(key, None)
            return None
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        known = self._infos.get(key)
        if known is not None and known[0] == rv:
            return known[1]
        info: ModelInfo | None
        try:
            info = ModelInfo.from_model(ModelDeployment.parse(obj))
        except InvalidSpecError as exc:
            log.warning("%s/%s is invalid, not routed: %s", *key, exc)
            info = None
        self._infos[key] = (rv, info)
        return info

    def _build(self, key: Key) -> Backend | None:
        info = self._info(key)
        if info is None:
            return None
        pods = [p for inf in self.pods for p in inf.by_index(key)]
        deployments = [d for inf in (*self.deployments, *self.groups) for d in inf.by_index(key)]
        return build_backend(info, pods=pods, deployments=deployments)


def _get(informers: Iterable[Informer], key: Key) -> Obj | None:
    for informer in informers:
        obj = informer.get(*key)
        if obj is not None:
            return obj
    return None


def _labels(obj: Obj) -> Mapping[str, Any]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _namespace(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "")


def _by_owner(obj: Obj) -> list[Key]:
    """A pod's or Deployment's ModelDeployment, from its label."""
    name = _labels(obj).get(render.LABEL_MODEL_DEPLOYMENT)
    return [(_namespace(obj), str(name))] if name else []
