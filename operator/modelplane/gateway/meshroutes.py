"""Where the gateway's ModelRoutes and provider API keys come from: the cluster, or set by hand.

``Mesh`` is what the request path reads: ``find(model)`` (the route clients name), ``routes``
(every route by namespace and name, for routes of routes) and ``api_key(namespace, ref)``.

- ``ClusterMesh`` watches ModelRoutes (an informer, like the ModelDeployments' in ``cache``) and
  reads a provider's API key with a GET of its Secret, kept ``SECRET_TTL_SECONDS`` (a rotated key
  is picked up within that); it needs ``list``/``watch`` on modelroutes and ``get`` on secrets.
- ``StaticMesh``: routes and keys set by hand (tests).

Two routes of one name in different namespaces: the older keeps the name, as for ModelDeployments.
A route whose spec does not parse (only an old API server that skipped the CRD's rules lets one
in) is logged and not routed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from modelplane.api.models import InvalidSpecError
from modelplane.api.route import ModelRoute, SecretKeyRef
from modelplane.controller import kube
from modelplane.controller.informer import Informer, Obj
from modelplane.gateway.watched import Watched

log = logging.getLogger("modelplane.gateway")

#: How long a provider's API key read from its Secret is used before it is read again.
SECRET_TTL_SECONDS = 30.0

Key = tuple[str, str]


def index_by_name(routes: Iterable[ModelRoute]) -> dict[str, ModelRoute]:
    """Routes by the name clients send; of several with one name, the oldest (then by namespace) wins."""
    out: dict[str, ModelRoute] = {}
    for route in sorted(routes, key=lambda r: (str(r.metadata.get("creationTimestamp") or "~"), r.namespace)):
        out.setdefault(route.name, route)
    return out


class Mesh:
    def __init__(self) -> None:
        self.routes: dict[Key, ModelRoute] = {}
        self._by_name: dict[str, ModelRoute] = {}

    def _set(self, routes: Iterable[ModelRoute]) -> None:
        self.routes = {(r.namespace, r.name): r for r in routes}
        self._by_name = index_by_name(self.routes.values())

    def find(self, model: str) -> ModelRoute | None:
        return self._by_name.get(model)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    @property
    def synced(self) -> bool:
        return True

    def health(self, now: float | None = None) -> dict[str, float]:
        return {}

    async def api_key(self, namespace: str, ref: SecretKeyRef) -> str | None:
        """The key's value, or None when the Secret or its key is missing."""
        raise NotImplementedError

    async def run(self) -> None:
        await asyncio.Event().wait()


class StaticMesh(Mesh):
    def __init__(self, routes: Iterable[ModelRoute] = (),
                 keys: Mapping[tuple[str, str, str], str] | None = None) -> None:
        super().__init__()
        self._set(routes)
        self.keys = dict(keys or {})  #: (namespace, secret, key) → value

    def set(self, routes: Iterable[ModelRoute]) -> None:
        self._set(routes)

    async def api_key(self, namespace: str, ref: SecretKeyRef) -> str | None:
        return self.keys.get((namespace, ref.name, ref.key))


class ClusterMesh(Watched, Mesh):
    def __init__(self, client: kube.Kube, namespaces: Sequence[str] = ()) -> None:
        super().__init__()
        self.client = client
        scopes: list[str | None] = list(namespaces) or [None]
        # Optional: a cluster without the ModelRoute CRD serves ModelDeployments as before.
        self._informers = [Informer(client, kube.MODELROUTES, namespace=ns, handler=self._on_route,
                                   optional=True) for ns in scopes]
        self._secrets: dict[tuple[str, str], tuple[float, dict[str, str] | None]] = {}

    def _on_route(self, event_type: str, obj: Obj) -> None:
        self._set(parse_routes(o for i in self.informers for o in i.items()))

    async def api_key(self, namespace: str, ref: SecretKeyRef) -> str | None:
        now = time.monotonic()
        cached = self._secrets.get((namespace, ref.name))
        if cached is None or now - cached[0] > SECRET_TTL_SECONDS:
            secret = await self.client.get(kube.SECRETS, ref.name, namespace=namespace)
            data = secret_data(secret) if secret is not None else None
            cached = (now, data)
            self._secrets[(namespace, ref.name)] = cached
        data = cached[1]
        return data.get(ref.key) if data is not None else None


def secret_data(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's values, decoded (``stringData`` is never returned by the API server, only ``data``)."""
    out: dict[str, str] = {}
    for key, value in (secret.get("data") or {}).items():
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            out[str(key)] = base64.b64decode(str(value)).decode().strip()
    return out


def parse_routes(objs: Iterable[Obj]) -> list[ModelRoute]:
    routes = []
    for obj in objs:
        try:
            routes.append(ModelRoute.parse(obj))
        except InvalidSpecError as exc:
            meta = obj.get("metadata") or {}
            log.warning("ModelRoute %s/%s is invalid, not routed: %s",
                        meta.get("namespace"), meta.get("name"), exc)
    return routes
