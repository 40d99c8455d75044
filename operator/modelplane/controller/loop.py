"""The controller: read the world from watch-fed caches, call the pure core, apply, write status.

Informers (``modelplane.controller.informer``) LIST each kind once and then WATCH it: the
ModelDeployments, and the Deployments, Services, PodDisruptionBudgets, Pods, InferencePools and
HTTPRoutes that carry the ``modelplane.dev/model-deployment`` label, FailedScheduling Events and the
nodes. The last two kinds' CRDs may be absent: their informers then say so (``served``) and look
again every ``optional_api_retry_seconds``. A change to any of
them wakes the ModelDeployment it belongs to at once; otherwise each object wakes every
``resync_seconds`` (the autoscaler's beat, which scrapes the pods: no API call). Every object has
its own wake-up time, so a slow one delays nobody else; after an error it retries with bounded
exponential backoff. No exception in one object's reconcile and no I/O error of the loop itself
ends the loop: each is logged, counted and retried. At steady state the operator makes no API
request but the informers' long-lived watches, and no write.

Everything that decides lives in ``modelplane.controller.reconcile`` and the cores it calls; this
module does I/O only: scrape metrics, apply, delete, write status, post Events. Writes are made
only when something changed: a child is applied when its rendered content hash differs from the
hash it carries, and status is written when it differs from what the object has, so a resync of
an unchanged object makes no write at all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import itertools
import logging
import math
import os
import random
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp

from modelplane import lws
from modelplane.api.models import FIELD_MANAGER, GROUP, KIND, VERSION, ModelDeploymentSpec
from modelplane.autoscaler.policy import PolicyState
from modelplane.controller import adapterloop, gateways, kube, opmetrics, peering
from modelplane.controller import reconcile as core
from modelplane.controller.informer import Informer, object_key
from modelplane.controller.kube import MODELDEPLOYMENTS
from modelplane.controller.routes import RouteStatusWriter
from modelplane.metrics import promquery, scrape
from modelplane.metrics.promtext import MetricSnapshot, PromTextError, parse_snapshot
from modelplane.planner.source import HF_BASE_URL, ConfigReadError, read_model_arch
from modelplane.rollout import driver as rollouts
from modelplane.rollout import runtime as rollouts_runtime
from modelplane.rollout.machine import EvalResult
from modelplane.rollout.suite import SuiteError, parse_suite

log = logging.getLogger("modelplane.controller.loop")

Key = tuple[str, str]  # (namespace, name)


@dataclass
class Settings:
    """Operator settings (``modelplane run`` flags and the chart's values)."""

    resync_seconds: float = 2.0
    #: An object with no ready pod has no metrics to read: nothing changes it but a watch event
    #: (which wakes it at once) or the passing of time (a load timeout, a rollout pause, the
    #: scale-to-zero idle time), which minutes-long budgets make coarse. It wakes this often.
    idle_resync_seconds: float = 30.0
    scrape_timeout_seconds: float = 2.0
    prices: Mapping[str, float] = field(default_factory=dict)
    max_concurrent_reconciles: int = 8
    #: The gateway replicas whose held requests wake a ModelDeployment at once (scale from zero):
    #: the pods of ``gateway_selector`` in ``gateway_namespace`` (None: all namespaces), plus fixed
    #: /metrics URLs. Read every ``gateway_scrape_seconds`` (``controller.gateways``).
    gateway_selector: str | None = None
    gateway_namespace: str | None = None
    gateway_metrics_urls: tuple[str, ...] = ()
    gateway_scrape_seconds: float = 0.25
    #: A replica that stops answering keeps its last reading this long (a blip must not look like
    #: every held request released), then counts for nothing (it is gone, with what it held).
    gateway_stale_seconds: float = 10.0
    #: Read the pods' metrics from this Prometheus instead of scraping them; None: scrape the pods.
    prometheus: promquery.PrometheusSource | None = None
    #: HA: (kopf peering object name, this replica's priority, namespaces or () for cluster-wide).
    peering: tuple[str, int, tuple[str, ...]] | None = None
    #: Read each model's config.json (Hugging Face Hub, or a mirror at ``hf_endpoint``) to size it.
    read_model_config: bool = True
    hf_endpoint: str = HF_BASE_URL
    model_config_timeout_seconds: float = 5.0
    #: A config.json that could not be read is tried again after this long; one that was read
    #: is kept for a day (a revision's config does not change; a branch's rarely does).
    model_config_retry_seconds: float = 600.0
    model_config_keep_seconds: float = 86400.0
    #: The evaluation suite's size (for the rollout's power check) is read again after this long,
    #: and only while a rollout can start or runs (``rollouts.suite_to_count``).
    suite_size_keep_seconds: float = 60.0
    #: The namespaces (or glob patterns) served; () for all.
    namespaces: tuple[str, ...] = ()
    #: After a failed reconcile, retry after 1 s, doubling up to this.
    error_backoff_max_seconds: float = 60.0
    #: The server ends each watch after about this long; the informer then watches again.
    watch_seconds: int = 290
    #: While the InferencePool or HTTPRoute CRD is not installed, look for it again this often (one
    #: LIST each, answered 404); the InferencePoolReady condition says what is missing meanwhile.
    optional_api_retry_seconds: float = 30.0


@dataclass
class _Memory:
    """What the controller remembers per object between reconciles (lost on restart, by design:
    the autoscaler then starts from the replicas it finds, the rollout from status)."""

    policy: PolicyState = field(default_factory=PolicyState)
    last_status_hash: str | None = None
    #: The rollout's analysis window (start snapshots); an evaluation in flight and its attempt.
    rollout: rollouts.Memory = field(default_factory=rollouts.Memory)
    evaluation: asyncio.Task[EvalResult] | None = None
    evaluation_of: tuple[str, int] | None = None  #: (fingerprint, attempt) of ``evaluation``
    #: The API server's refusal of a child on the last attempt (see ``Observed.rejected``).
    rejected: str | None = None
    failures: int = 0  #: reconciles failed in a row (the retry backs off with it)
    #: Whether it had ready pods to read at its last reconcile (it then wakes every resync).
    serving: bool = True

    def evaluation_slot(self) -> rollouts.EvalSlot | None:
        """What the pure core needs to know of the evaluation task (running, result or error)."""
        task, of = self.evaluation, self.evaluation_of
        if task is None or of is None:
            return None
        if not task.done():
            return rollouts.EvalSlot(of[0], of[1], running=True)
        if task.cancelled():
            return rollouts.EvalSlot(of[0], of[1], running=False, error="the evaluation was cancelled")
        exc = task.exception()
        if exc is not None:
            return rollouts.EvalSlot(of[0], of[1], running=False, error=f"{type(exc).__name__}: {exc}")
        return rollouts.EvalSlot(of[0], of[1], running=False, result=task.result())

    def stop_evaluation(self) -> None:
        task = self.evaluation
        if task is not None and not task.done():
            task.cancel()
        elif task is not None and not task.cancelled():
            task.exception()  # read, so that an error already reported is not logged again at exit
        self.evaluation, self.evaluation_of = None, None


#: The label every child and pod carries: the name of its ModelDeployment.
OWNER_LABEL = "modelplane.dev/model-deployment"


def _owner_keys(obj: Mapping[str, Any]) -> Iterable[Key]:
    meta = obj.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(OWNER_LABEL)
    if owner:
        yield (str(meta.get("namespace") or ""), str(owner))


def _namespace_key(obj: Mapping[str, Any]) -> Iterable[str]:
    yield str((obj.get("metadata") or {}).get("namespace") or "")


#: A surge of requests at the gateways wakes a ModelDeployment at most this often (seconds).
SURGE_WAKE_SECONDS = 1.0
#: Queue priorities: a wake for a change goes before a periodic resync.
URGENT, PERIODIC = 0, 1
#: Events waiting to be posted, at most; and the tasks that post them.
EVENT_QUEUE_SIZE = 10_000
EVENT_SENDERS = 4
#: How long an Event may wait while objects woken by a change wait for a worker; how often it looks.
EVENT_MAX_DEFER_SECONDS = 30.0
EVENT_DEFER_POLL_SECONDS = 0.05
#: At shutdown, how long the queued Events may take to be sent before they are left.
EVENT_FLUSH_SECONDS = 0.5


class _WorkQueue(asyncio.PriorityQueue[tuple[int, int, Key]]):
    """The due objects, by (priority, order); it can tell whether a change is waiting."""

    def change_waiting(self) -> bool:
        # asyncio.PriorityQueue keeps a heap in ``_queue`` (its documented way to be extended):
        # its first entry is the one a worker takes next.
        return bool(self._queue) and self._queue[0][0] == URGENT  # type: ignore[attr-defined]


def _refused(exc: BaseException) -> bool:
    """Whether the API server refused a child for what it is (422, 403), which it will do again
    until the spec changes; a namespace being deleted is not that."""
    if isinstance(exc, kube.Forbidden) and "is being terminated" in exc.message:
        return False
    return isinstance(exc, (kube.Invalid, kube.Forbidden))


def _status_only_change(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Whether two versions of an object differ in nothing but status (and the server's own
    bookkeeping: resourceVersion, managedFields)."""
    ignored = ("resourceVersion", "managedFields")

    def rest(body: Mapping[str, Any]) -> tuple[Any, ...]:
        meta = {k: v for k, v in (body.get("metadata") or {}).items() if k not in ignored}
        return meta, {k: v for k, v in body.items() if k not in ("metadata", "status")}

    return rest(before) == rest(after)


class Controller:
    def __init__(self, client: kube.Kube, settings: Settings | None = None) -> None:
        self.kube = client
        self.settings = settings or Settings()
        self.known: dict[Key, dict[str, Any]] = {}
        self.memory: dict[Key, _Memory] = {}
        # In-cluster calls (pod IPs, Services) go direct: a proxy cannot reach them, and NO_PROXY cannot
        # list pod CIDRs for aiohttp. Calls that may leave the cluster (Hugging Face, Prometheus) honour
        # HTTPS_PROXY/HTTP_PROXY/NO_PROXY (docs/troubleshooting.md, "Behind a proxy").
        self._http: aiohttp.ClientSession | None = None
        self._outbound: aiohttp.ClientSession | None = None
        self._instance = f"{socket.gethostname()}-{os.getpid()}"
        self.alive_at = time.monotonic()
        self._pending: dict[Key, int] = {}
        #: Requests in flight at the gateways per ModelDeployment: now, at its last reconcile, and
        #: when a surge last woke it.
        self._in_flight: dict[Key, int] = {}
        self._in_flight_at_reconcile: dict[Key, int] = {}
        self._surge_woken: dict[Key, float] = {}
        #: Each gateway replica's held requests as last read, and when (kept a while when a read fails).
        self._held_by_gateway: dict[str, tuple[float, dict[Key, int], dict[Key, int]]] = {}
        #: Each gateway replica's /metrics text as last read, and its parse (made on demand).
        self._gateway_text: dict[str, str] = {}
        self._gateway_parsed: dict[str, tuple[str, MetricSnapshot]] = {}
        #: (namespace, source, revision, secret) → (expires at, outcome); reads in flight.
        self._configs: dict[tuple[str, str, str, str], tuple[float, core.ModelConfig]] = {}
        self._config_reads: dict[tuple[str, str, str, str], asyncio.Task[None]] = {}
        # The schedule: when each object wakes next; which are queued, running, or asked again
        # while running (they go again as soon as they finish).
        self._due: dict[Key, float] = {}
        # Due objects wait here for a worker: those woken by a change (a watch event, a finished
        # evaluation, held requests) before those whose periodic resync came, so an edit is acted
        # on at once even while a thousand idle objects are being resynced.
        self._queue = _WorkQueue()
        self._queued: dict[Key, int] = {}  #: key → the priority it is queued at
        self._urgent: set[Key] = set()  #: woken by a change since it was last queued
        self._seq = itertools.count()
        self._running: set[Key] = set()
        self._again: set[Key] = set()
        self._wake = asyncio.Event()
        self.informers = self._build_informers()
        self.route_status = RouteStatusWriter(
            client, routes=self.informers["modelroutes"], models=self.informers["modeldeployments"],
            active=self._active, gateway_texts=self._gateway_texts)
        #: ModelAdapters: loads them onto their base's replicas, writes their status (adapterloop).
        self.adapter_sync = adapterloop.AdapterSync(client, record_event=self.record_event,
                                                    wake=lambda ns, name: self.poke((ns, name)))
        self._orphans_due = asyncio.Event()
        #: (namespace, ConfigMap, key) → (expires at, cases or None); reads in flight.
        self._suites: dict[tuple[str, str, str], tuple[float, int | None]] = {}
        self._suite_reads: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        #: Events to post, sent by their own tasks as client-go's event recorder does, so a reconcile
        #: (and the next object's) never waits on them; bounded, the overflow counted and dropped.
        self._events: asyncio.Queue[tuple[float, Mapping[str, Any], core.EventSpec]] = asyncio.Queue(
            maxsize=EVENT_QUEUE_SIZE)

    # --- the caches -------------------------------------------------------------------------

    def _scopes(self) -> list[str | None]:
        """Namespaces to watch: each literal one, or all (no namespaces, or a glob pattern)."""
        patterns = self.settings.namespaces
        if patterns and not any(c in ns for ns in patterns for c in "*?["):
            return list(patterns)
        return [None]

    def _serves(self, namespace: str) -> bool:
        patterns = self.settings.namespaces
        return not patterns or any(fnmatch.fnmatchcase(namespace, p) for p in patterns)

    def _build_informers(self) -> dict[str, list[Informer]]:
        def each(resource: kube.Resource, **kwargs: Any) -> list[Informer]:
            return [Informer(self.kube, resource, namespace=ns, watch_seconds=self.settings.watch_seconds,
                             **kwargs) for ns in self._scopes()]

        informers = {
            "modeldeployments": each(MODELDEPLOYMENTS, handler=self._on_model_deployment),
            "deployments": each(kube.DEPLOYMENTS, label_selector=OWNER_LABEL, index=_owner_keys,
                                handler=self._on_child),
            "services": each(kube.SERVICES, label_selector=OWNER_LABEL, index=_owner_keys,
                             handler=self._on_child),
            "pdbs": each(kube.PDBS, label_selector=OWNER_LABEL, index=_owner_keys, handler=self._on_child),
            "pods": each(kube.PODS, label_selector=OWNER_LABEL, index=_owner_keys, handler=self._on_child),
            # Gateway API Inference Extension (spec.inferencePool): their CRDs may be absent.
            "inferencepools": each(kube.INFERENCEPOOLS, label_selector=OWNER_LABEL, index=_owner_keys,
                                   handler=self._on_child, optional=True,
                                   absent_retry_seconds=self.settings.optional_api_retry_seconds,
                                   on_served_change=self._on_inference_api_change),
            "httproutes": each(kube.HTTPROUTES, label_selector=OWNER_LABEL, index=_owner_keys,
                               handler=self._on_child, optional=True,
                               absent_retry_seconds=self.settings.optional_api_retry_seconds,
                               on_served_change=self._on_inference_api_change),
            # ModelAdapters, filed under their base (its CRD may be absent: an older install).
            "modeladapters": each(kube.MODELADAPTERS, index=adapterloop.adapter_base_key,
                                  handler=self._on_adapter, optional=True,
                                  absent_retry_seconds=self.settings.optional_api_retry_seconds),
            # Multi-node replicas (modelplane.lws): the CRD may be absent; then a plan that needs
            # groups says so, and everything else works as before.
            "leaderworkersets": each(kube.LEADERWORKERSETS, label_selector=OWNER_LABEL, index=_owner_keys,
                                     handler=self._on_child, optional=True,
                                     absent_retry_seconds=self.settings.optional_api_retry_seconds,
                                     on_served_change=self._on_group_api_change),
            "groupevents": each(kube.EVENTS, field_selector=f"reason={lws.RECREATE_GROUP_REASON}",
                                index=_namespace_key, handler=self._on_group_event),
            "events": each(kube.EVENTS, field_selector="reason=FailedScheduling", index=_namespace_key,
                           handler=self._on_event),
            "nodes": [Informer(self.kube, kube.NODES, watch_seconds=self.settings.watch_seconds)],
            # ModelRoutes, for their status (controller.routes); their CRD may be absent.
            "modelroutes": each(kube.MODELROUTES, handler=lambda *_: self.route_status.poke(), optional=True,
                                absent_retry_seconds=self.settings.optional_api_retry_seconds),
        }
        if self.settings.gateway_selector:
            # The gateway's replicas, for their held requests (not needed to reconcile).
            informers["gateways"] = [Informer(self.kube, kube.PODS, namespace=self.settings.gateway_namespace,
                                              label_selector=self.settings.gateway_selector,
                                              watch_seconds=self.settings.watch_seconds)]
        if self.settings.peering is not None:
            name, _, namespaces = self.settings.peering
            selector = f"metadata.name={name}"
            informers["peering"] = (
                [Informer(self.kube, peering.PEERINGS, namespace=ns, field_selector=selector,
                          watch_seconds=self.settings.watch_seconds) for ns in namespaces]
                if namespaces else
                [Informer(self.kube, peering.CLUSTER_PEERINGS, field_selector=selector,
                          watch_seconds=self.settings.watch_seconds)])
        return informers

    def _all_informers(self) -> list[Informer]:
        return [i for group in self.informers.values() for i in group]

    def _cached(self, kind: str, key: Key) -> list[dict[str, Any]]:
        return [o for i in self.informers[kind] for o in i.by_index(key)]

    def watch_health(self, now: float | None = None) -> dict[str, float]:
        """Seconds each informer has been without a working watch (only those down).

        Not the optional ones (InferencePools, HTTPRoutes): a role without them (RBAC kept from
        before the feature) must not fail /healthz and restart an operator that serves everything
        else; the InferencePoolReady condition of the models that ask for them says so instead.
        An outage of the API server shows on the other informers anyway.
        """
        return {i.name: round(i.down_for(now), 1) for i in self._all_informers()
                if i.down_since is not None and not i.optional}

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self._all_informers())

    def _ready_to_reconcile(self) -> bool:
        """The objects and their children have been listed once (the core must not take a child it
        has not seen yet for a missing one). Events and nodes only explain; they may lag."""
        # The adapters too: they decide the LoRA flags, and rendering without them would restart pods.
        needed = ("modeldeployments", "deployments", "services", "pdbs", "pods", "modeladapters")
        return all(i.synced.is_set() for kind in needed for i in self.informers[kind])

    # --- feeding ----------------------------------------------------------------------------

    def _on_model_deployment(self, event_type: str, body: dict[str, Any]) -> None:
        if self._serves(object_key(body)[0]):
            self.observe(event_type, body)

    def _on_child(self, _: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        self.poke_owner(meta.get("namespace"), meta.get("labels") or {})

    def _on_adapter(self, _: str, obj: dict[str, Any]) -> None:
        """A ModelAdapter changed: wake its base (flags, loads, status), or the orphan sweep."""
        for key in adapterloop.adapter_base_key(obj):
            if key in self.known:
                self.poke(key)
            else:
                self._orphans_due.set()

    def _on_inference_api_change(self) -> None:
        """An InferencePool or HTTPRoute CRD came or went: wake the objects that ask for them."""
        for key, body in list(self.known.items()):
            if (body.get("spec") or {}).get("inferencePool") is not None:
                self.poke(key)

    def _on_group_api_change(self) -> None:
        """The LeaderWorkerSet CRD came or went: wake every object (any plan may need groups)."""
        for key in list(self.known):
            self.poke(key)

    def _on_group_event(self, _: str, event: dict[str, Any]) -> None:
        """A group was recreated: wake the ModelDeployment of its LeaderWorkerSet."""
        self._wake_owner_of(event, lws.KIND, "leaderworkersets")

    def _served(self, kind: str) -> bool | None:
        """Whether every informer of ``kind`` finds it served (None: one has not listed yet)."""
        states = [i.served for i in self.informers[kind]]
        if any(s is None for s in states):
            return None
        return all(states)

    def _on_event(self, _: str, event: dict[str, Any]) -> None:
        """A FailedScheduling Event: wake the ModelDeployment of the pod it is about."""
        self._wake_owner_of(event, "Pod", "pods")

    def _wake_owner_of(self, event: dict[str, Any], kind: str, informers: str) -> None:
        """Wake the ModelDeployment owning the ``kind`` object an Event is about (from its cache)."""
        involved = event.get("involvedObject") or {}
        if involved.get("kind") != kind:
            return
        namespace, name = str(involved.get("namespace") or ""), str(involved.get("name") or "")
        for informer in self.informers[informers]:
            obj = informer.get(namespace, name)
            if obj is not None:
                self.poke_owner(namespace, (obj.get("metadata") or {}).get("labels") or {})

    def observe(self, event_type: str, body: dict[str, Any]) -> None:
        key = object_key(body)
        if event_type == "DELETED":
            self.known.pop(key, None)
            self._due.pop(key, None)
            self._in_flight_at_reconcile.pop(key, None)
            self._surge_woken.pop(key, None)
            gone = self.memory.pop(key, None)
            if gone is not None:
                gone.stop_evaluation()
            opmetrics.forget(*key)
            self._orphans_due.set()  # its adapters now have no base
            return
        before = self.known.get(key)
        self.known[key] = body
        # A change of status only is (nearly always) the operator's own write coming back: the
        # object goes again, since the state machines read their state from status, but behind
        # the objects a user or a child changed.
        self.poke(key, urgent=before is None or not _status_only_change(before, body))

    def _wrote(self, key: Key, written: Mapping[str, Any]) -> None:
        """Take the object as the status write left it, before its watch event comes back.

        A child's event wakes the object again while that event is still on its way; a reconcile
        of the body read before the write would take the same step twice (a second InitialDeploy
        Event, a rollout step repeated). Any later watch event replaces this body, as it would the
        informer's own (the server's answer is the object at the write's resourceVersion).
        """
        if key in self.known and isinstance(written.get("metadata"), Mapping):
            self.known[key] = dict(written)

    def poke_owner(self, namespace: str | None, labels: Mapping[str, str]) -> None:
        owner = labels.get(OWNER_LABEL)
        if namespace and owner and (namespace, owner) in self.known:
            self.poke((namespace, owner))

    def poke(self, key: Key, at: float | None = None, *, urgent: bool | None = None) -> None:
        """Wake ``key`` at ``at`` (default: now), unless it is due earlier already.

        A wake without ``at`` is for a change, and goes before periodic resyncs (``urgent``
        says so explicitly).
        """
        when = time.monotonic() if at is None else at
        if key in self._running and at is None:
            self._again.add(key)
            return
        if urgent if urgent is not None else at is None:
            self._urgent.add(key)
        if when < self._due.get(key, math.inf):
            self._due[key] = when
            self._wake.set()

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the informers, the scheduler and the workers until cancelled."""
        self._http = aiohttp.ClientSession()
        self._outbound = aiohttp.ClientSession(trust_env=True)
        tasks = [asyncio.create_task(i.run(), name=f"informer-{i.name}") for i in self._all_informers()]
        tasks += [asyncio.create_task(self._worker(), name=f"reconcile-worker-{n}")
                  for n in range(self.settings.max_concurrent_reconciles)]
        tasks.append(asyncio.create_task(self.route_status.run(), name="modelroute-status"))
        senders = [asyncio.create_task(self._send_events(), name=f"event-sender-{n}")
                   for n in range(EVENT_SENDERS)]
        if self.settings.gateway_selector or self.settings.gateway_metrics_urls:
            tasks.append(asyncio.create_task(self._follow_gateways(), name="gateways"))
        tasks.append(asyncio.create_task(self._sweep_orphan_adapters(), name="adapter-orphans"))
        try:
            await self._schedule()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # The Events the last reconciles made: sent if it can be done quickly (shutdown is
            # bounded), else left; an Event is a courtesy, the status already says it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._events.join(), timeout=EVENT_FLUSH_SECONDS)
            for task in senders:
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
            for memory in self.memory.values():
                memory.stop_evaluation()
            await self._http.close()
            await self._outbound.close()

    async def _schedule(self) -> None:
        """Hand each object to the workers when it is due; forever. Never raises but to cancel."""
        while True:
            self.alive_at = time.monotonic()
            try:
                await self._schedule_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop every object's reconcile
                opmetrics.RECONCILE_ERRORS.labels("", "", "scheduler").inc()
                log.exception("the controller's scheduler failed; going on")
                await asyncio.sleep(1.0)

    async def _schedule_once(self) -> None:
        now = time.monotonic()
        opmetrics.WATCHES_DOWN.set(sum(i.down_since is not None for i in self._all_informers()))
        wait = 1.0  # at most: alive_at must move even when nothing is due
        if self._ready_to_reconcile() and await self._active():
            due = [k for k, at in self._due.items() if at <= now]
            for key in due:
                del self._due[key]
                urgent = key in self._urgent
                self._urgent.discard(key)
                if key in self._running:
                    self._again.add(key)
                    continue
                if key not in self.known:
                    continue
                priority = URGENT if urgent else PERIODIC
                if priority < self._queued.get(key, PERIODIC + 1):
                    # Queued anew, or moved ahead: the older entry is skipped when it comes up.
                    self._queued[key] = priority
                    self._queue.put_nowait((priority, next(self._seq), key))
            if self._due:
                wait = min(wait, max(0.0, min(self._due.values()) - time.monotonic()))
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def _worker(self) -> None:
        while True:
            priority, _, key = await self._queue.get()
            if self._queued.get(key) != priority:
                continue  # an entry it was moved ahead of (already reconciled), or gone
            del self._queued[key]
            self._running.add(key)
            ok = False
            try:
                ok = await self.reconcile(key)
            finally:
                self._running.discard(key)
            if key not in self.known:
                continue
            memory = self.memory.setdefault(key, _Memory())
            now = time.monotonic()
            if ok:
                memory.failures = 0
                # The idle resync is spread (±20%) so that objects created together do not come
                # due together for ever after.
                next_at = now + (self.settings.resync_seconds if memory.serving
                                 else self.settings.idle_resync_seconds * random.uniform(0.8, 1.2))
            else:
                memory.failures += 1
                next_at = now + min(self.settings.error_backoff_max_seconds,
                                    2.0 ** (memory.failures - 1))
            again = key in self._again
            if again:
                self._again.discard(key)
                next_at = now if ok else next_at
            self.poke(key, at=next_at, urgent=again)

    async def reconcile(self, key: Key) -> bool:
        """One reconcile of ``key``; True when it succeeded (also when the object is gone)."""
        body = self.known.get(key)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return True
        started = time.monotonic()
        try:
            done = await self._reconcile(key, body)
            opmetrics.RECONCILES.labels(*key, "ok" if done else "rejected").inc()
            return done
        except kube.NotFound:
            # Deleted under us: owner references clean up; the watch reports the deletion.
            opmetrics.RECONCILES.labels(*key, "gone").inc()
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, kube.Forbidden) and "is being terminated" in exc.message:
                # Its namespace is going away; the ModelDeployment goes with it.
                opmetrics.RECONCILES.labels(*key, "gone").inc()
                return True
            # Logged with the object and retried with backoff; never swallowed silently.
            opmetrics.RECONCILES.labels(*key, "error").inc()
            opmetrics.RECONCILE_ERRORS.labels(*key, type(exc).__name__).inc()
            if isinstance(exc, (kube.ApiError, aiohttp.ClientError, TimeoutError, OSError)):
                log.warning("reconcile of %s/%s failed: %s: %s; retrying", key[0], key[1],
                            type(exc).__name__, exc)
            else:
                log.exception("reconcile of %s/%s failed: %s", key[0], key[1], exc)
            return False
        finally:
            opmetrics.RECONCILE_SECONDS.observe(time.monotonic() - started)

    # --- one reconcile --------------------------------------------------------------------

    async def _reconcile(self, key: Key, body: dict[str, Any]) -> bool:
        namespace, name = key
        memory = self.memory.setdefault(key, _Memory())
        self._in_flight_at_reconcile[key] = self._in_flight.get(key, 0)
        observed = core.Observed(
            body=body, deployments=tuple(self._cached("deployments", key)),
            services=tuple(self._cached("services", key)), pdbs=tuple(self._cached("pdbs", key)),
            pods=tuple(self._cached("pods", key)),
            events=tuple(e for i in self.informers["events"] for e in i.by_index(namespace)),
            nodes=tuple(o for i in self.informers["nodes"] for o in i.items()),
            now=datetime.now(UTC), monotonic=time.monotonic(),
            activator_pending=self._pending.get(key, 0),
            model_config=self._model_config(key, body),
            metrics_max_age=(self.settings.prometheus.max_age_seconds
                             if self.settings.prometheus is not None else None),
            rejected=memory.rejected,
            inference_pools=tuple(self._cached("inferencepools", key)),
            http_routes=tuple(self._cached("httproutes", key)),
            inference_pool_api=self._served("inferencepools"),
            http_route_api=self._served("httproutes"),
            adapters=tuple(self._cached("modeladapters", key)),
            leader_worker_sets=tuple(self._cached("leaderworkersets", key)),
            leader_worker_set_api=self._served("leaderworkersets"),
            group_events=tuple(e for i in self.informers["groupevents"] for e in i.by_index(namespace)),
            gateway_metrics=self._gateway_views() if _reads_gateway(body) else None)
        prepared = core.prepare(observed, prices=self.settings.prices)
        if prepared.md is not None:
            # The suite's size is read from the parsed spec (prepare does not need it).
            observed = replace(observed, suite_cases=self._suite_cases(key, prepared.md.spec, body))
        memory.serving = bool(prepared.scrape_targets)
        metrics: tuple[scrape.ScrapeResult, ...] = ()
        if prepared.scrape_targets and self._http is not None:
            if self.settings.prometheus is not None:
                metrics = tuple(await promquery.query_pods(
                    self._outbound or self._http, self.settings.prometheus, namespace=namespace,
                    pods=[t.pod for t in prepared.scrape_targets], served_name=prepared.served_name))
            else:
                metrics = tuple(await scrape.scrape_all(
                    self._http, prepared.scrape_targets, served_name=prepared.served_name,
                    timeout=self.settings.scrape_timeout_seconds))
            for scraped in metrics:
                if scraped.error:
                    opmetrics.SCRAPE_ERRORS.labels(namespace, name).inc()
                    log.debug("scrape %s: %s", scraped.pod, scraped.error)

        rollout_memory = replace(memory.rollout, evaluation=memory.evaluation_slot())
        result = core.finish(prepared, observed, metrics=metrics, policy_state=memory.policy,
                             rollout_memory=rollout_memory)
        memory.policy = result.policy_state
        memory.rollout = result.rollout_memory
        self._evaluations(key, memory, result)

        rejected: str | None = None
        # The children are independent objects: applied together (one round trip, not one each).
        outcomes = await asyncio.gather(*(self.kube.apply(child) for child in result.apply),
                                        return_exceptions=True)
        for child, outcome in zip(result.apply, outcomes, strict=True):
            if not isinstance(outcome, BaseException):
                opmetrics.API_WRITES.labels(child["kind"], "apply").inc()
            elif isinstance(outcome, kube.ApiError) and _refused(outcome):
                # The API server will refuse it again until the spec changes: say so in status
                # and an Event (once), keep serving what runs, and retry with backoff.
                rejected = rejected or f"{child['kind']} {child['metadata']['name']}: {outcome.message}"
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not _refused(outcome):
                raise outcome  # an outage or a terminating namespace: the reconcile's own handling
        if rejected != memory.rejected:
            if rejected is not None:
                log.warning("%s/%s: the API server refused %s", namespace, name, rejected)
            else:
                log.info("%s/%s: the API server accepts its children again", namespace, name)
            memory.rejected = rejected
            # Status and Events said nothing of it yet: reconcile again at once to say it.
            self._again.add(key)
            return rejected is None
        for resource, child_name in result.delete:
            if await self.kube.delete(resource, child_name, namespace=namespace):
                opmetrics.API_WRITES.labels(resource.kind, "delete").inc()
        if result.status is not None:
            written = await self.kube.apply({"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                                             "metadata": {"name": name, "namespace": namespace},
                                             "status": result.status},
                                            subresource="status", field_manager=FIELD_MANAGER)
            opmetrics.API_WRITES.labels(KIND, "status").inc()
            self._wrote(key, written)
        for event in result.events:
            self.record_event(body, event)
        self._export(key, result)
        md = prepared.md
        lora = md is not None and (bool(observed.adapters) or md.spec.engine.lora is not None)
        if md is not None and lora and self._http is not None:
            await self.adapter_sync.sync_base(
                self._http, namespace=namespace, base=md, pods=observed.pods, adapters=observed.adapters,
                every_adapter=self._all_adapters(), models=self.known.values(),
                gateways=self._gateway_views() if any(map(_reads_gateway, observed.adapters)) else None)
        return rejected is None

    def _all_adapters(self) -> list[dict[str, Any]]:
        return [a for i in self.informers["modeladapters"] for a in i.items()]

    async def _sweep_orphan_adapters(self) -> None:
        """Status for adapters whose base does not exist, when one changes and every resync."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._orphans_due.wait(), timeout=self.settings.idle_resync_seconds)
            self._orphans_due.clear()
            if not self._ready_to_reconcile():
                await asyncio.sleep(self.settings.resync_seconds)
                self._orphans_due.set()
                continue
            adapters = self._all_adapters()
            try:
                await self.adapter_sync.sync_orphans(
                    adapters=[a for a in adapters if self._serves(object_key(a)[0])],
                    known_bases=set(self.known), every_adapter=adapters, models=self.known.values())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # logged and retried at the next beat; never ends the loop
                log.warning("adapter status sweep failed: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(self.settings.resync_seconds)
                self._orphans_due.set()

    def _evaluations(self, key: Key, memory: _Memory, result: core.Result) -> None:
        """Start, keep or stop the evaluation task as the rollout core asked."""
        if result.cancel_evaluation or (result.rollout_memory.evaluation is None
                                        and result.start_evaluation is None):
            memory.stop_evaluation()
        order = result.start_evaluation
        if order is None or self._http is None:
            return
        memory.stop_evaluation()
        log.info("evaluating %s/%s canary %s (attempt %d)", key[0], key[1], order.label, order.attempt)
        memory.evaluation = asyncio.create_task(self._evaluate(key, order))
        memory.evaluation_of = (order.revision, order.attempt)

    async def _evaluate(self, key: Key, order: rollouts.EvaluationOrder) -> EvalResult:
        assert self._http is not None
        try:
            return await rollouts_runtime.run_order(self.kube, self._http, order)
        finally:
            # Its verdict is read on the next reconcile; do it now rather than at the next beat.
            self.poke(key)

    def _export(self, key: Key, result: core.Result) -> None:
        status = result.effective_status
        phase = str(status.get("phase") or "Unknown")
        for labels in list(opmetrics.PHASE._metrics):  # noqa: SLF001
            if labels[:2] == key and labels[2] != phase:
                opmetrics.PHASE.remove(*labels)
        opmetrics.PHASE.labels(*key, phase).set(1)
        opmetrics.DESIRED_REPLICAS.labels(*key).set(float(status.get("desiredReplicas") or 0))
        opmetrics.READY_REPLICAS.labels(*key).set(float(status.get("readyReplicas") or 0))
        opmetrics.HOURLY_USD.labels(*key).set(float((status.get("cost") or {}).get("hourlyUSD") or 0))
        if result.queue_depth is not None:
            opmetrics.QUEUE_DEPTH.labels(*key).set(result.queue_depth)
        for event in result.events:
            if event.scaling:
                opmetrics.SCALE_DECISIONS.labels(*key, event.reason).inc()
            if event.rollout:
                opmetrics.ROLLOUT_DECISIONS.labels(*key, event.reason).inc()

    def _model_config(self, key: Key, body: Mapping[str, Any]) -> core.ModelConfig | None:
        """The cached config.json outcome for this model, starting a read when there is none.

        The read runs beside the reconcile (a slow hub must not stall it); when it finishes the
        object is reconciled again and planned with what was learnt.
        """
        if not self.settings.read_model_config:
            return None
        model = (body.get("spec") or {}).get("model") or {}
        source = str(model.get("source") or "")
        if not source:
            return None
        cache_key = (key[0], source, str(model.get("revision") or "main"),
                     str(model.get("credentialsSecret") or ""))
        cached = self._configs.get(cache_key)
        if (cached is None or cached[0] < time.monotonic()) and cache_key not in self._config_reads:
            task = asyncio.create_task(self._read_model_config(key, cache_key))
            self._config_reads[cache_key] = task
            task.add_done_callback(lambda _: self._config_reads.pop(cache_key, None))
        return cached[1] if cached is not None else None

    def _suite_cases(self, key: Key, spec: ModelDeploymentSpec, body: Mapping[str, Any]) -> int | None:
        """The cached size of the rollout's evaluation suite, starting a read when there is none.

        Read beside the reconcile, like the model's config.json; when it finishes the object is
        reconciled again and the rollout checks its gate's power.
        """
        wanted = rollouts.suite_to_count(spec, body.get("status"))
        if wanted is None:
            return None
        cache_key = (key[0], *wanted)
        cached = self._suites.get(cache_key)
        if (cached is None or cached[0] < time.monotonic()) and cache_key not in self._suite_reads:
            task = asyncio.create_task(self._read_suite_size(key, cache_key))
            self._suite_reads[cache_key] = task
            task.add_done_callback(lambda _: self._suite_reads.pop(cache_key, None))
        return cached[1] if cached is not None else None

    async def _read_suite_size(self, key: Key, cache_key: tuple[str, str, str]) -> None:
        namespace, name, data_key = cache_key
        cases: int | None = None
        try:
            found = await self.kube.get(kube.CONFIGMAPS, name, namespace=namespace)
            text = ((found or {}).get("data") or {}).get(data_key)
            cases = len(parse_suite(text).cases) if text else None
        except (kube.ApiError, SuiteError) as exc:
            # The evaluation reads the suite again and reports what is wrong with it.
            log.debug("suite %s/%s key %s not counted: %s", namespace, name, data_key, exc)
        self._suites[cache_key] = (time.monotonic() + self.settings.suite_size_keep_seconds, cases)
        self.poke(key)

    async def _read_model_config(self, key: Key, cache_key: tuple[str, str, str, str]) -> None:
        namespace, source, revision, secret = cache_key
        token: str | None = None
        note = ""
        if secret and source.startswith("hf://"):
            try:
                found = await self.kube.get(kube.SECRETS, secret, namespace=namespace)
                raw = ((found or {}).get("data") or {}).get("HF_TOKEN")
                token = base64.b64decode(raw).decode().strip() if raw else None
                if found is None:
                    note = f"; Secret {secret} not found, read without a token"
            except kube.ApiError as exc:
                # Without `get secrets` the operator still reads public models.
                note = f"; Secret {secret} not readable ({exc.status}), read without a token"
        try:
            arch = await read_model_arch(source=source, revision=revision, token=token,
                                         hf_base_url=self.settings.hf_endpoint,
                                         timeout=self.settings.model_config_timeout_seconds,
                                         session=self._outbound)
            outcome = core.ModelConfig(arch, core.Reason.CONFIG_READ,
                                       f"config.json of {source}@{revision} read{note}")
            keep = self.settings.model_config_keep_seconds
        except ConfigReadError as exc:
            outcome = core.ModelConfig(None, exc.reason.value, f"{exc.message}{note}; planning "
                                       "from the built-in catalog or spec.model.hints instead")
            keep = self.settings.model_config_retry_seconds
        self._configs[cache_key] = (time.monotonic() + keep, outcome)
        self.poke(key)

    async def _active(self) -> bool:
        """Whether this replica may write (always, unless HA peering says another one runs)."""
        if self.settings.peering is None:
            return True
        _, priority, _ = self.settings.peering
        now = datetime.now(UTC)
        informers = self.informers.get("peering", [])
        if any(i.down_since is not None for i in informers):
            return False  # cannot tell who is active: stand by rather than write beside another
        for informer in informers:
            objs = informer.items()
            if not objs or not peering.is_active(objs[0].get("status"), priority, now):
                return False
        return True

    def _gateway_texts(self) -> list[str] | None:
        """Each gateway replica's /metrics as last read; None when the operator reads no gateway."""
        if not (self.settings.gateway_selector or self.settings.gateway_metrics_urls):
            return None
        return list(self._gateway_text.values())

    def gateway_urls(self) -> list[str]:
        """The /metrics URLs of the gateway replicas known now."""
        pods = [p for i in self.informers.get("gateways", []) for p in i.items()]
        return gateways.metrics_urls(pods, self.settings.gateway_metrics_urls)

    async def _follow_gateways(self) -> None:
        """Read the gateways' held requests often; wake the objects whose count changed."""
        while True:
            try:
                pending = await self._gateway_held()
                for key in gateways.changed(self._pending, pending):
                    if key in self.known:
                        self.poke(key)
                self._pending = pending
                now = time.monotonic()
                for key in gateways.surged(self._in_flight_at_reconcile, self._in_flight):
                    last = self._surge_woken.get(key, -math.inf)
                    if key in self.known and now - last >= SURGE_WAKE_SECONDS:
                        self._surge_woken[key] = now
                        self.poke(key)
            except Exception:  # a bug here must not end scale from zero for good
                log.exception("reading the gateways' held requests failed; going on")
            await asyncio.sleep(self.settings.gateway_scrape_seconds)

    def _gateway_views(self) -> dict[str, MetricSnapshot] | None:
        """Each fresh gateway replica's metrics as last read, by URL (None: no gateway is read).

        Parsed on demand, once per reading: only a rollout's live analysis and a latency objective
        (the gateway's TTFT) use them."""
        if not (self.settings.gateway_selector or self.settings.gateway_metrics_urls):
            return None
        now = time.monotonic()
        views: dict[str, MetricSnapshot] = {}
        for url, (at, _, _) in self._held_by_gateway.items():
            text = self._gateway_text.get(url)
            if text is None or now - at > self.settings.gateway_stale_seconds:
                continue
            parsed = self._gateway_parsed.get(url)
            if parsed is None or parsed[0] is not text:
                try:
                    parsed = (text, parse_snapshot(text))
                except PromTextError:
                    continue
                self._gateway_parsed[url] = parsed
            views[url] = parsed[1]
        return views

    async def _gateway_held(self) -> dict[Key, int]:
        """Requests held per ModelDeployment, summed over every gateway replica."""
        urls = self.gateway_urls()
        for gone in set(self._held_by_gateway) - set(urls):
            del self._held_by_gateway[gone]
            self._gateway_text.pop(gone, None)
            self._gateway_parsed.pop(gone, None)
        if not urls or self._http is None:
            return {}
        results = await asyncio.gather(*(self._read_held(u) for u in urls))
        now = time.monotonic()
        for url, reading in zip(urls, results, strict=True):
            if reading is not None:
                self._held_by_gateway[url] = (now, *reading)
        fresh = [(held, in_flight) for at, held, in_flight in self._held_by_gateway.values()
                 if now - at <= self.settings.gateway_stale_seconds]
        self._in_flight = gateways.sum_held(in_flight for _, in_flight in fresh)
        return gateways.sum_held(held for held, _ in fresh)

    async def _read_held(self, url: str) -> tuple[dict[Key, int], dict[Key, int]] | None:
        """One replica's (held, in flight) requests; None when it did not answer (its last reading
        stands).

        Its whole text is kept too, for a rollout's live analysis (``_gateway_views``)."""
        assert self._http is not None
        try:
            async with self._http.get(url, timeout=aiohttp.ClientTimeout(
                    total=self.settings.scrape_timeout_seconds)) as resp:
                resp.raise_for_status()
                text = await resp.text()
                reading = gateways.parse_reading(text)
                self._gateway_text[url] = text
                return reading
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            if url in self._held_by_gateway or url in self.settings.gateway_metrics_urls:
                log.debug("gateway metrics at %s did not answer: %s", url, exc)
            return None

    def record_event(self, body: Mapping[str, Any], event: core.EventSpec) -> None:
        """Queue an Event for the senders; when the queue is full it is counted and dropped."""
        try:
            self._events.put_nowait((time.monotonic(), body, event))
        except asyncio.QueueFull:
            opmetrics.EVENTS_DROPPED.inc()
            log.debug("event queue full: dropped %s on %s/%s", event.reason,
                      body["metadata"].get("namespace"), body["metadata"].get("name"))

    async def _send_events(self) -> None:
        while True:
            queued_at, body, event = await self._events.get()
            try:
                # Objects woken by a change go first (a thousand created at once get their
                # children and status before the Events that tell of them), but no Event waits
                # longer than EVENT_MAX_DEFER_SECONDS for that.
                while (self._queue.change_waiting()
                       and time.monotonic() - queued_at < EVENT_MAX_DEFER_SECONDS):
                    await asyncio.sleep(EVENT_DEFER_POLL_SECONDS)
                await self.post_event(body, event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a sender must outlive any one Event's failure
                log.warning("could not post event %s: %s: %s", event.reason, type(exc).__name__, exc)
            finally:
                self._events.task_done()

    async def post_event(self, body: Mapping[str, Any], event: core.EventSpec) -> None:
        """A core/v1 Event on the ModelDeployment, as `kubectl describe` shows it."""
        meta = body["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            await self.kube.create({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {"apiVersion": body.get("apiVersion") or f"{GROUP}/{VERSION}",
                                   "kind": body.get("kind") or KIND,
                                   "name": meta["name"], "namespace": meta["namespace"],
                                   "uid": meta.get("uid")},
                "type": event.type, "reason": event.reason, "message": event.message[:1024],
                "source": {"component": "modelplane"}, "reportingComponent": "modelplane",
                "reportingInstance": self._instance, "firstTimestamp": now, "lastTimestamp": now,
                "count": 1, "action": event.reason,
            })
            opmetrics.API_WRITES.labels("Event", "create").inc()
        except kube.ApiError as exc:
            # An Event is a courtesy: losing one must not fail the reconcile that made the change.
            log.warning("could not post event %s on %s/%s: %s", event.reason, meta["namespace"],
                        meta["name"], exc)


def _reads_gateway(body: Mapping[str, Any]) -> bool:
    """A rollout's live analysis or a latency objective reads the gateways' metrics."""
    spec = body.get("spec") or {}
    return bool(spec.get("rollout") or (spec.get("scaling") or {}).get("objective"))
