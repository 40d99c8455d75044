"""The ModelRoutes' status: whether every backend a route names exists, and whether routes loop.

The API server refuses what a ModelRoute's schema can say (field types, weights, unknown fields,
empty rules); what only the cluster can tell is checked here and written to ``status`` (the
operator is the only writer of status; the gateway only reads routes):

- **UnknownBackend**: a ``modelDeployment`` or ``modelRoute`` that is not in the namespace;
- **SecretKeyMissing**: an external backend's ``apiKeySecret`` that does not exist or lacks its
  key (only where the operator may ``get`` Secrets: chart value ``rbac.readModelCredentials``;
  elsewhere the key is not checked and the message says so);
- **RouteLoop**: routes that lead back to themselves through ``modelRoute`` backends.

``RoutesResolved`` is True when none holds, else False with the first problem, named by its field
path. ``build_status`` is pure; ``RouteStatusWriter`` reads the controller's caches (the routes'
and the ModelDeployments' informers), GETs the Secrets named, and applies the status when it
changed: at each route event and every ``RESYNC_SECONDS`` (a ModelDeployment or Secret appearing
is seen within that).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelplane.api.models import API_VERSION, ConditionStatus, InvalidSpecError
from modelplane.api.route import ROUTE_KIND, ModelRoute, RouteConditionType, summary
from modelplane.controller import kube
from modelplane.controller.informer import Informer
from modelplane.metrics.spendtext import Spend, by_model, from_exposition

log = logging.getLogger("modelplane.controller")

RESYNC_SECONDS = 15.0
FORBIDDEN: Any = object()  #: a Secret the operator may not read


@dataclass(frozen=True)
class Problem:
    reason: str
    path: str
    message: str


def loop_through(route: ModelRoute, routes: Mapping[str, ModelRoute]) -> list[str] | None:
    """A cycle of route names starting and ending at ``route``, or None."""
    def visit(name: str, path: list[str]) -> list[str] | None:
        current = routes.get(name)
        if current is None:
            return None
        for rule in current.spec.rules:
            for b in rule.backends:
                if b.model_route is None:
                    continue
                if b.model_route == route.name:
                    return [*path, b.model_route]
                if b.model_route not in path:
                    found = visit(b.model_route, [*path, b.model_route])
                    if found:
                        return found
        return None
    return visit(route.name, [route.name])


def problems(route: ModelRoute, *, models: set[str], routes: Mapping[str, ModelRoute],
             secrets: Mapping[str, Any]) -> list[Problem]:
    """What is wrong with ``route`` in its namespace; ``secrets`` maps a Secret's name to its decoded
    data, None (absent) or FORBIDDEN."""
    found: list[Problem] = []
    for i, rule in enumerate(route.spec.rules):
        for j, b in enumerate(rule.backends):
            path = f"spec.rules[{i}].backends[{j}]"
            if b.model_deployment is not None and b.model_deployment not in models:
                found.append(Problem(
                    "UnknownBackend", f"{path}.modelDeployment",
                    f"no ModelDeployment {b.model_deployment} in namespace {route.namespace}"))
            if b.model_route is not None and b.model_route not in routes:
                found.append(Problem("UnknownBackend", f"{path}.modelRoute",
                                     f"no ModelRoute {b.model_route} in namespace {route.namespace}"))
            ref = b.external.api_key_secret if b.external is not None else None
            if ref is not None:
                data = secrets.get(ref.name)
                if data is FORBIDDEN:
                    continue
                if data is None:
                    found.append(Problem("SecretKeyMissing", f"{path}.external.apiKeySecret.name",
                                         f"no Secret {ref.name} in namespace {route.namespace}"))
                elif ref.key not in data:
                    found.append(Problem("SecretKeyMissing", f"{path}.external.apiKeySecret.key",
                                         f"Secret {ref.name} has no key {ref.key} (it has: "
                                         f"{', '.join(sorted(data)) or 'none'})"))
    cycle = loop_through(route, routes)
    if cycle:
        found.append(Problem("RouteLoop", "spec.rules", f"the routes loop: {' → '.join(cycle)}"))
    return found


def build_status(route: ModelRoute, found: list[Problem], *, now: datetime,
                 secrets_unchecked: bool = False, spend: Spend | None = None) -> dict[str, Any]:
    """The status to write (wire form), keeping lastTransitionTime while the condition's status holds."""
    backends = sum(len(r.backends) for r in route.spec.rules)
    ok = not found
    if ok:
        reason = "Resolved"
        message = f"all {backends} backends exist"
        if secrets_unchecked:
            message += "; API key Secrets not checked (the operator may not read Secrets)"
    else:
        first = found[0]
        reason = first.reason
        message = f"{first.path}: {first.message}"
        if len(found) > 1:
            rest = "; ".join(f"{p.path}: {p.message}" for p in found[1:])
            message += f" (and {len(found) - 1} more: {rest})"
    status_value = ConditionStatus.TRUE if ok else ConditionStatus.FALSE
    previous = next((c for c in (route.status.conditions if route.status else [])
                     if c.type == RouteConditionType.RESOLVED.value), None)
    since = previous.last_transition_time if previous is not None and previous.status == status_value else now
    condition = {"type": RouteConditionType.RESOLVED.value, "status": status_value.value, "reason": reason,
                 "message": message[:32768], "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
                 **({"observedGeneration": route.generation} if route.generation is not None else {})}
    status: dict[str, Any] = {"backends": backends, "summary": summary(route.spec), "conditions": [condition]}
    if route.generation is not None:
        status["observedGeneration"] = route.generation
    if spend is not None:
        status["spend"] = {"promptTokens": round(spend.prompt_tokens),
                           "completionTokens": round(spend.completion_tokens),
                           "selfHostedUSD": round(spend.self_hosted_usd, 6),
                           "externalUSD": round(spend.external_usd, 6),
                           "referenceUSD": round(spend.reference_usd, 6)}
    return status


def current_status(obj: Mapping[str, Any]) -> Any:
    return obj.get("status") or {}


def secret_names(routes: Iterable[ModelRoute]) -> set[str]:
    return {b.external.api_key_secret.name for r in routes for rule in r.spec.rules for b in rule.backends
            if b.external is not None and b.external.api_key_secret is not None}


class RouteStatusWriter:
    """Writes each ModelRoute's status from the controller's caches (see the module's doc)."""

    def __init__(self, client: kube.Kube, *, routes: list[Informer], models: list[Informer],
                 active: Callable[[], Awaitable[bool]],
                 gateway_texts: Callable[[], list[str] | None] = lambda: None) -> None:
        self.kube = client
        #: The gateway replicas' /metrics as last read (None: the operator reads no gateway).
        self.gateway_texts = gateway_texts
        self.routes = routes
        self.models = models
        self.active = active
        self.changed = asyncio.Event()

    def poke(self, *_: Any) -> None:
        self.changed.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.changed.wait(), RESYNC_SECONDS)
            except TimeoutError:
                pass
            self.changed.clear()
            if not all(i.synced.is_set() for i in (*self.routes, *self.models)):
                continue
            try:
                if await self.active():
                    await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 — a failed write is retried at the next resync, never fatal
                log.exception("writing ModelRoute status")

    async def sync_once(self) -> int:
        """Write the status of every route whose status changed; returns how many were written."""
        by_ns: dict[str, list[tuple[ModelRoute, Mapping[str, Any]]]] = {}
        for obj in (o for i in self.routes for o in i.items()):
            try:
                route = ModelRoute.parse(obj)
            except InvalidSpecError as exc:
                meta = obj.get("metadata") or {}
                log.warning("ModelRoute %s/%s does not parse: %s",
                            meta.get("namespace"), meta.get("name"), exc)
                continue
            by_ns.setdefault(route.namespace, []).append((route, obj))
        models: dict[str, set[str]] = {}
        for model in (o for i in self.models for o in i.items()):
            meta = model.get("metadata") or {}
            models.setdefault(str(meta.get("namespace")), set()).add(str(meta.get("name")))
        written = 0
        now = datetime.now(UTC).replace(microsecond=0)
        texts = self.gateway_texts()
        spent = by_model(from_exposition(texts)) if texts is not None else None
        for namespace, entries in by_ns.items():
            routes = {r.name: r for r, _ in entries}
            secrets, unchecked = await self._secrets(namespace, secret_names(routes.values()))
            for route, raw in entries:
                found = problems(route, models=models.get(namespace, set()), routes=routes, secrets=secrets)
                spend = spent.get(route.name, Spend()) if spent is not None else None
                status = build_status(route, found, now=now, secrets_unchecked=unchecked, spend=spend)
                if _same(current_status(raw), status):
                    continue
                await self.kube.apply({"apiVersion": API_VERSION, "kind": ROUTE_KIND,
                                       "metadata": {"name": route.name, "namespace": namespace},
                                       "status": status}, subresource="status")
                written += 1
        return written

    async def _secrets(self, namespace: str, names: set[str]) -> tuple[dict[str, Any], bool]:
        out: dict[str, Any] = {}
        unchecked = False
        secret: Mapping[str, Any] | None
        for name in sorted(names):
            try:
                secret = await self.kube.get(kube.SECRETS, name, namespace=namespace)
            except kube.Forbidden:
                out[name], unchecked = FORBIDDEN, True
                continue
            out[name] = set((secret.get("data") or {}).keys()) if secret is not None else None
        return out, unchecked


def _same(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Equal but for the conditions' transition times (kept by build_status while the status holds)."""
    def strip(status: Mapping[str, Any]) -> Any:
        return {**status, "conditions": [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                                         for c in status.get("conditions") or []]}
    return bool(strip(current) == strip(wanted))
