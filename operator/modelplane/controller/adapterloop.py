"""The adapter shell: read each base replica's adapters, load and unload, write ModelAdapter status.

Called by the controller (``loop.py``) at the end of every reconcile of a ModelDeployment that has
ModelAdapters or LoRA on, so each Ready replica of the base — and each replica that becomes Ready
later, whose pod event wakes the base — is brought to hold exactly the loadable adapters; and every
``orphan_seconds`` for the adapters whose base does not exist (their status says UnknownBase).
Decisions are ``controller.adapters``'s; this module does the I/O:

- ``GET /v1/models`` on each Ready replica (vLLM lists the loaded adapters, ``root`` their path);
- ``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` (every call with a timeout; a failed
  load keeps vLLM's message for the status and is retried after a bounded, doubling delay);
- a status write (server-side apply on the status subresource) only when the status would change:
  at steady state the loop makes the GETs and no API request.

What the operator loaded at which revision it remembers in memory; after an operator restart it
takes an adapter listed at the right path as current (a revision change at the same path is then
reloaded only when the revision changes again). Which revision the served name serves is in
``status.stable``, and a rollout's state in ``status.canary``: a new revision with
``spec.rollout`` is rolled out beside the serving one (``controller.adapterrollout`` decides;
evaluations run here as asyncio tasks, as the controller runs a ModelDeployment's). The gateway
routes an adapter's requests only to the replicas its status lists as Loaded, so a replica that
restarted gets no adapter request until the adapter is back on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
from prometheus_client import Counter

from modelplane import render
from modelplane.api.adapter import (
    ADAPTER_API_VERSION,
    ADAPTER_KIND,
    AdapterReason,
    ModelAdapter,
    effective_lora,
)
from modelplane.api.models import FIELD_MANAGER, ModelDeployment
from modelplane.controller import adapterrollout as rollouts
from modelplane.controller import adapters as core
from modelplane.controller import health, kube, opmetrics
from modelplane.controller.reconcile import EventSpec
from modelplane.metrics.promtext import MetricSnapshot
from modelplane.rollout import driver
from modelplane.rollout import runtime as rollouts_runtime
from modelplane.rollout.machine import EvalResult

log = logging.getLogger("modelplane.controller.adapters")

Obj = Mapping[str, Any]
ADAPTER_LOAD_FAILURES = Counter("modelplane_adapter_load_failures_total",
                                "Adapter loads a replica refused or that could not be made.",
                                ["namespace", "adapter"], registry=opmetrics.REGISTRY)
LOAD_PATH = "/v1/load_lora_adapter"
UNLOAD_PATH = "/v1/unload_lora_adapter"


def adapter_base_key(obj: Obj) -> list[tuple[str, str]]:
    """The informer index of a ModelAdapter: (namespace, spec.base)."""
    base = (obj.get("spec") or {}).get("base")
    namespace = (obj.get("metadata") or {}).get("namespace")
    return [(str(namespace), str(base))] if isinstance(base, str) and namespace else []


def model_served_names(models: Iterable[Obj]) -> dict[str, tuple[str, str]]:
    """Served name → (namespace, name) of every ModelDeployment, read from the raw objects."""
    names: dict[str, tuple[str, str]] = {}
    for body in models:
        meta = body.get("metadata") or {}
        served = ((body.get("spec") or {}).get("model") or {}).get("servedName") or meta.get("name")
        if served:
            names.setdefault(str(served), (str(meta.get("namespace") or ""), str(meta.get("name") or "")))
    return names


def _error_message(status: int, text: str) -> str:
    try:
        error = json.loads(text).get("error")
        if isinstance(error, dict) and error.get("message"):
            return f"HTTP {status}: {error['message']}"
    except (ValueError, AttributeError):
        pass
    return f"HTTP {status}: {text[:500]}"


class AdapterSync:
    """Loads adapters onto replicas and writes ModelAdapter status; its memory is per process."""

    def __init__(self, client: kube.Kube, *, timeout_seconds: float = 10.0, retry_seconds: float = 2.0,
                 max_retry_seconds: float = 60.0,
                 record_event: Callable[[Obj, EventSpec], None] | None = None,
                 wake: Callable[[str, str], None] | None = None) -> None:
        self.kube = client
        #: Called with (namespace, base) when an evaluation ends, so its verdict is read at once.
        self.wake = wake
        #: (namespace, adapter) → its rollout's memory, and its evaluation task with (fingerprint, attempt).
        self.rollouts: dict[tuple[str, str], rollouts.Memory] = {}
        self.evaluations: dict[tuple[str, str], tuple[asyncio.Task[EvalResult], tuple[str, int]]] = {}
        #: Where the Events of a status write go (the controller's bounded queue); None: none made.
        self.record_event = record_event
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        #: ("namespace/base", pod, adapter name) → the revision loaded there.
        self.revisions: dict[tuple[str, str, str], str] = {}
        #: ("namespace/base", pod, adapter name) → (path, vLLM's message, retry at, failures in a row).
        self.failures: dict[tuple[str, str, str], tuple[str, str, float, int]] = {}
        self.writes = 0  #: status writes made
        #: (namespace, name) → (the resourceVersion a status write replaced, the status written).
        self._written: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}

    # --- one base --------------------------------------------------------------------------

    async def sync_base(self, http: aiohttp.ClientSession | None, *, namespace: str,
                        base: ModelDeployment | None,
                        pods: Sequence[Obj], adapters: Sequence[Obj], every_adapter: Iterable[Obj],
                        models: Iterable[Obj], gateways: Mapping[str, MetricSnapshot] | None = None) -> None:
        """Bring the base's Ready replicas to hold its loadable adapters; write the adapters' status."""
        scope = f"{namespace}/{base.name}" if base is not None else namespace
        valid, invalid = core.parse_adapters(adapters)
        now = datetime.now(UTC)
        for obj, message in invalid:
            await self._write_invalid(obj, message, now)
        everyone, _ = core.parse_adapters(every_adapter)
        keepers = core.served_name_keepers(everyone)
        model_names = model_served_names(models)
        verdicts = {(a.namespace, a.name): core.judge(a, base=base, siblings=valid, model_names=model_names,
                                                      adapter_names=keepers) for a in valid}
        lora_on = base is not None and effective_lora(base.spec.engine.lora, valid) is not None
        ready = {str(p["metadata"]["name"]): str(p["status"]["podIP"]) for p in pods
                 if health.is_ready(p) and (p.get("status") or {}).get("podIP")}
        loaded: dict[str, dict[str, str]] = {}
        ticks: dict[tuple[str, str], rollouts.Tick] = {}
        if lora_on and ready and http is not None:
            listings = await asyncio.gather(*(self._listing(http, ip) for ip in ready.values()))
            loaded = {pod: held for pod, held in zip(ready, listings, strict=True) if held is not None}
        if base is not None and lora_on:
            ticks = self._drive(base, scope, [a for a in valid if verdicts[(a.namespace, a.name)].loadable],
                                raw=adapters, ready=ready, loaded=loaded, now=now, gateways=gateways,
                                http=http)
        if lora_on and ready and http is not None:
            wanted = [w for tick in ticks.values() for w in tick.wanted]
            keep = {name for tick in ticks.values() for name in tick.keep}
            await self._act(http, scope, ready, loaded, wanted, keep)
        for adapter in valid:
            key = (adapter.namespace, adapter.name)
            verdict = verdicts[key]
            tick = ticks.get(key)
            path = verdict.path
            if tick is not None and base is not None:
                path = core.source_path(tick.stable["source"], base) or verdict.path
            failures = {pod: failure[1] for (ns, pod, name), failure in self.failures.items()
                        if ns == scope and name == adapter.served_name and failure[0] == path
                        and pod in ready}
            old = self._old_status(adapters, adapter)
            status = core.build_status(adapter, verdict, ready_pods=sorted(ready), loaded=loaded,
                                       failures=failures, old_status=old, now=now, path=path,
                                       also=tick.moving_to if tick is not None else None)
            if tick is not None and base is not None:
                paths = {s: core.source_path(s, base)
                         for s in (tick.stable["source"], tick.canary_source) if s}
                failed = {pod: failure[1] for (ns, pod, name), failure in self.failures.items()
                          if ns == scope and name == tick.canary_name and pod in ready}
                doc, conditions = rollouts.rollout_status(tick, ready=sorted(ready), loaded=loaded,
                                                          path_of=paths, old_status=old, now=now,
                                                          generation=adapter.generation, failures=failed)
                status.update(doc)
                status["conditions"] = [*status["conditions"], *conditions]
            elif old:
                # Not loadable now: what the rollout knew stays (the serving revision, the history).
                status.update({k: old[k] for k in ("stable", "canary", "rolloutHistory") if k in old})
            written = await self._write(adapter.namespace, adapter.name, old, status,
                                        version=str(adapter.metadata.get("resourceVersion") or ""))
            if tick is not None and tick.events and self.record_event is not None:
                target = written or self._raw(adapters, adapter)
                for event in tick.events:
                    self.record_event(target, EventSpec(event.type, event.reason.value, event.message,
                                                        rollout=True))
        self._forget(scope, set(ready))

    def _drive(self, base: ModelDeployment, scope: str, loadable: Sequence[ModelAdapter], *,
               raw: Sequence[Obj], ready: Mapping[str, str],
               loaded: Mapping[str, Mapping[str, str]], now: datetime,
               gateways: Mapping[str, MetricSnapshot] | None,
               http: aiohttp.ClientSession | None) -> dict[tuple[str, str], rollouts.Tick]:
        """Each adapter's rollout tick; starts and stops their evaluations."""
        revisions = {(pod, name): rev for (ns, pod, name), rev in self.revisions.items() if ns == scope}
        ticks: dict[tuple[str, str], rollouts.Tick] = {}
        for adapter in loadable:
            key = (adapter.namespace, adapter.name)
            status = self._old_status(raw, adapter)
            spec_sources = [adapter.spec.source, *(str((status or {}).get(k, {}).get("source") or "")
                                                   for k in ("stable", "canary"))]
            paths = {s: core.source_path(s, base) for s in spec_sources if s}
            memory = replace(self.rollouts.get(key, rollouts.Memory()), evaluation=self._slot(key))
            tick = rollouts.drive(adapter, status=status, path_of=paths, ready=ready, loaded=loaded,
                                  revisions=revisions, memory=memory, now=now, gateways=gateways)
            self.rollouts[key] = tick.memory
            if tick.cancel or (tick.memory.evaluation is None and tick.order is None):
                self._stop_evaluation(key)
            if tick.order is not None and http is not None:
                self._stop_evaluation(key)
                log.info("evaluating adapter %s/%s revision %s (attempt %d)", *key, tick.order.label,
                         tick.order.attempt)
                task = asyncio.create_task(self._evaluate(http, base, tick.order))
                self.evaluations[key] = (task, (tick.order.revision, tick.order.attempt))
            ticks[key] = tick
        return ticks

    async def _evaluate(self, http: aiohttp.ClientSession, base: ModelDeployment,
                        order: driver.EvaluationOrder) -> EvalResult:
        try:
            return await rollouts_runtime.run_order(self.kube, http, order)
        finally:
            if self.wake is not None:
                self.wake(base.namespace, base.name)

    def _slot(self, key: tuple[str, str]) -> driver.EvalSlot | None:
        """What the pure core needs to know of the adapter's evaluation task."""
        found = self.evaluations.get(key)
        if found is None:
            return None
        task, (fp, attempt) = found
        if not task.done():
            return driver.EvalSlot(fp, attempt, running=True)
        if task.cancelled():
            return driver.EvalSlot(fp, attempt, running=False, error="the evaluation was cancelled")
        exc = task.exception()
        if exc is not None:
            return driver.EvalSlot(fp, attempt, running=False, error=f"{type(exc).__name__}: {exc}")
        return driver.EvalSlot(fp, attempt, running=False, result=task.result())

    def _stop_evaluation(self, key: tuple[str, str]) -> None:
        found = self.evaluations.pop(key, None)
        if found is None:
            return
        task = found[0]
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()  # read, so that an error already reported is not logged again

    @staticmethod
    def _raw(objs: Iterable[Obj], adapter: ModelAdapter) -> Obj:
        for obj in objs:
            meta = obj.get("metadata") or {}
            if (meta.get("namespace"), meta.get("name")) == (adapter.namespace, adapter.name):
                return obj
        return {"apiVersion": ADAPTER_API_VERSION, "kind": ADAPTER_KIND, "metadata": adapter.metadata}

    async def sync_orphans(self, *, adapters: Iterable[Obj], known_bases: set[tuple[str, str]],
                           every_adapter: Sequence[Obj], models: Iterable[Obj]) -> None:
        """Status for the adapters whose base does not exist (UnknownBase) or that are invalid."""
        orphans = [a for a in adapters if not any(k in known_bases for k in adapter_base_key(a))]
        if orphans:
            await self.sync_base(None, namespace="", base=None, pods=(), adapters=orphans,
                                 every_adapter=every_adapter, models=models)

    # --- I/O -------------------------------------------------------------------------------

    async def _listing(self, http: aiohttp.ClientSession, ip: str) -> dict[str, str] | None:
        """The adapters a replica holds (name → path), or None when its /v1/models cannot be read."""
        try:
            async with http.get(f"http://{ip}:{render.PORT}/v1/models", timeout=self.timeout) as response:
                if response.status != 200:
                    return None
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return None
        cards = body.get("data") if isinstance(body, dict) else None
        if not isinstance(cards, list):
            return None
        # vLLM lists the base with parent null and every adapter with its base as parent.
        return {str(c["id"]): str(c.get("root") or "") for c in cards
                if isinstance(c, dict) and c.get("parent") and "id" in c}

    async def _act(self, http: aiohttp.ClientSession, scope: str, ready: Mapping[str, str],
                   loaded: dict[str, dict[str, str]], wanted: Sequence[core.Wanted],
                   keep: Iterable[str] = ()) -> None:
        clock = time.monotonic()
        revisions = {(pod, name): rev for (ns, pod, name), rev in self.revisions.items() if ns == scope}
        retry_at = {(pod, name, f[0]): f[2] for (ns, pod, name), f in self.failures.items() if ns == scope}
        actions = core.plan_actions(wanted, loaded=loaded, revisions=revisions, retry_at=retry_at, now=clock,
                                    keep=keep)
        if not actions:
            return
        outcomes = await asyncio.gather(*(self._call(http, ready[a.pod], a) for a in actions))
        for action, error in zip(actions, outcomes, strict=True):
            key = (scope, action.pod, action.name)
            if error is None:
                if action.load:
                    loaded[action.pod][action.name] = action.path
                    self.revisions[key] = action.revision
                    log.info("%s %s: loaded adapter %s (%s)", scope, action.pod, action.name, action.path)
                else:
                    loaded[action.pod].pop(action.name, None)
                    self.revisions.pop(key, None)
                    log.info("%s %s: unloaded adapter %s", scope, action.pod, action.name)
                self.failures.pop(key, None)
                continue
            if action.load:
                previous = self.failures.get(key)
                count = previous[3] + 1 if previous is not None and previous[0] == action.path else 1
                delay = min(self.max_retry_seconds, self.retry_seconds * 2 ** (count - 1))
                self.failures[key] = (action.path, error, clock + delay, count)
                ADAPTER_LOAD_FAILURES.labels(scope.split("/")[0], action.name).inc()
            log.warning("%s %s: %s adapter %s failed: %s", scope, action.pod,
                        "loading" if action.load else "unloading", action.name, error)

    async def _call(self, http: aiohttp.ClientSession, ip: str, action: core.Action) -> str | None:
        """One admin call; None on success, else the error (vLLM's message when it gave one)."""
        if action.load:
            path = LOAD_PATH
            body: dict[str, Any] = {"lora_name": action.name, "lora_path": action.path}
            if action.in_place:
                body["load_inplace"] = True
        else:
            path, body = UNLOAD_PATH, {"lora_name": action.name}
        try:
            url = f"http://{ip}:{render.PORT}{path}"
            async with http.post(url, json=body, timeout=self.timeout) as response:
                text = await response.text()
                return None if response.status == 200 else _error_message(response.status, text)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def _old_status(self, objs: Iterable[Obj], adapter: ModelAdapter) -> Mapping[str, Any] | None:
        """The adapter's status as it is now: the cached object's, unless the cache has not seen the
        operator's last write yet (it still holds the resourceVersion that write replaced), in which
        case the status written. (Without this, a reconcile right after a write rebuilt the status
        from the one before it — a transition time moved — and wrote again: the 50-adapter e2e.)"""
        for obj in objs:
            meta = obj.get("metadata") or {}
            if (meta.get("namespace"), meta.get("name")) == (adapter.namespace, adapter.name):
                status = obj.get("status")
                written = self._written.get((adapter.namespace, adapter.name))
                if written is not None and written[0] == meta.get("resourceVersion"):
                    return written[1]
                self._written.pop((adapter.namespace, adapter.name), None)  # the cache caught up
                return status if isinstance(status, Mapping) else None
        return None

    async def _write_invalid(self, obj: Obj, message: str, now: datetime) -> None:
        meta = obj.get("metadata") or {}
        old = obj.get("status") if isinstance(obj.get("status"), Mapping) else None
        old_conditions = {c.get("type"): c for c in (old or {}).get("conditions") or []}
        since = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        previous = old_conditions.get("Loadable")
        if previous is not None and previous.get("status") == "False":
            since = str(previous.get("lastTransitionTime") or since)
        condition = {"type": "Loadable", "status": "False", "reason": AdapterReason.INVALID_SPEC.value,
                     "message": message, "lastTransitionTime": since}
        await self._write(str(meta.get("namespace")), str(meta.get("name")), old,
                          {"phase": "Failed", "conditions": [condition]})

    async def _write(self, namespace: str, name: str, old: Mapping[str, Any] | None,
                     status: Mapping[str, Any], *, version: str | None = None) -> Obj | None:
        """Write the status if it changed; the object as written (None: nothing written)."""
        if not core.status_changed(old, status):
            return None
        written = await self.kube.apply({"apiVersion": ADAPTER_API_VERSION, "kind": ADAPTER_KIND,
                                         "metadata": {"name": name, "namespace": namespace},
                                         "status": dict(status)},
                                        subresource="status", field_manager=FIELD_MANAGER)
        if self.record_event is not None:
            for type_, reason, message in core.condition_events(old, status):
                self.record_event(written, EventSpec(type_, reason, message))
        if version is not None:
            self._written[(namespace, name)] = (version, dict(status))
        self.writes += 1
        opmetrics.API_WRITES.labels(ADAPTER_KIND, "status").inc()
        return written

    def _forget(self, scope: str, ready: set[str]) -> None:
        """Drop the memory of the base's replicas that are no longer Ready (a restarted one starts empty)."""
        for table in (self.revisions, self.failures):
            for key in [k for k in table if k[0] == scope and k[1] not in ready]:
                del table[key]
