"""The reconcile loop's shell: read the world, call the pure core, apply the result, write status.

kopf's event handlers feed this controller the ModelDeployments they see (``observe``) and poke it
when a child changes (``poke_owner``). ``run`` reconciles a poked object at once and every object
every ``resync_seconds`` (the autoscaler's beat). A per-object lock keeps two reconciles of one
object from interleaving. Everything that decides lives in ``modelplane.reconcile`` and the cores
it calls; this module does I/O only: list children, scrape metrics, apply, delete, post Events.

Writes are made only when something changed: a child is applied when its rendered content hash
differs from the hash it carries, and status is written when it differs from what the object has,
so a resync of an unchanged object makes no write at all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp

from modelplane import kube, opmetrics, peering, promquery, rollouts, rollouts_runtime, scrape
from modelplane import reconcile as core
from modelplane.api.models import FIELD_MANAGER, GROUP, KIND, VERSION
from modelplane.autoscaler.policy import PolicyState
from modelplane.kube import MODELDEPLOYMENTS
from modelplane.planner.source import HF_BASE_URL, ConfigReadError, read_model_arch
from modelplane.rollout.machine import EvalResult
from modelplane.rollout.suite import SuiteError, parse_suite

log = logging.getLogger("modelplane.controller")

Key = tuple[str, str]  # (namespace, name)


@dataclass
class Settings:
    """Operator settings (``modelplane run`` flags and the chart's values)."""

    resync_seconds: float = 2.0
    scrape_timeout_seconds: float = 2.0
    #: Nodes change rarely; reading them on every reconcile would be wasted load.
    nodes_cache_seconds: float = 30.0
    prices: Mapping[str, float] = field(default_factory=dict)
    max_concurrent_reconciles: int = 8
    #: Where the activator reports the requests it holds (Prometheus text, the metric
    #: ``modelplane_activator_pending{namespace,service}``); None: no activator.
    activator_url: str | None = None
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
    #: kopf's watch is the fast path; a periodic list is the safety net for objects it has not
    #: reported yet (a namespace that just appeared) or deletions it missed.
    relist_seconds: float = 10.0
    #: The namespaces (or glob patterns) served; () for all.
    namespaces: tuple[str, ...] = ()


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


class Controller:
    def __init__(self, client: kube.Kube, settings: Settings | None = None) -> None:
        self.kube = client
        self.settings = settings or Settings()
        self.known: dict[Key, dict[str, Any]] = {}
        self.memory: dict[Key, _Memory] = {}
        self._locks: dict[Key, asyncio.Lock] = {}
        self._dirty: set[Key] = set()
        self._wake = asyncio.Event()
        self._nodes: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self._http: aiohttp.ClientSession | None = None
        self._instance = f"{socket.gethostname()}-{os.getpid()}"
        self.alive_at = time.monotonic()
        self._pending: dict[Key, int] = {}
        #: (namespace, source, revision, secret) → (expires at, outcome); reads in flight.
        self._configs: dict[tuple[str, str, str, str], tuple[float, core.ModelConfig]] = {}
        self._config_reads: dict[tuple[str, str, str, str], asyncio.Task[None]] = {}
        #: (namespace, ConfigMap, key) → (expires at, cases or None); reads in flight.
        self._suites: dict[tuple[str, str, str], tuple[float, int | None]] = {}
        self._suite_reads: dict[tuple[str, str, str], asyncio.Task[None]] = {}

    # --- feeding --------------------------------------------------------------------------

    def observe(self, event_type: str, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if event_type == "DELETED":
            self.known.pop(key, None)
            gone = self.memory.pop(key, None)
            if gone is not None:
                gone.stop_evaluation()
            opmetrics.forget(*key)
            return
        self.known[key] = body
        self._dirty.add(key)
        self._wake.set()

    def poke_owner(self, namespace: str | None, labels: Mapping[str, str]) -> None:
        owner = labels.get("modelplane.dev/model-deployment")
        if namespace and owner and (namespace, owner) in self.known:
            self._dirty.add((namespace, owner))
            self._wake.set()

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile poked objects at once and all of them every ``resync_seconds``; forever."""
        self._http = aiohttp.ClientSession()
        semaphore = asyncio.Semaphore(self.settings.max_concurrent_reconciles)
        next_resync = time.monotonic()
        next_relist = time.monotonic() + self.settings.relist_seconds
        try:
            while True:
                self.alive_at = time.monotonic()
                timeout = max(0.0, next_resync - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=timeout)
                self._wake.clear()
                if time.monotonic() >= next_resync:
                    keys = set(self.known)
                    next_resync = time.monotonic() + self.settings.resync_seconds
                else:
                    keys = set(self._dirty)
                self._dirty.clear()

                async def one(key: Key) -> None:
                    async with semaphore:
                        await self.reconcile(key)

                if not await self._active():
                    continue  # a standby replica: kopf paused us, so do we
                if time.monotonic() >= next_relist:
                    next_relist = time.monotonic() + self.settings.relist_seconds
                    keys |= await self._relist()
                self._pending = await self._activator_pending()
                await asyncio.gather(*(one(k) for k in sorted(keys)))
        finally:
            await self._http.close()

    async def reconcile(self, key: Key) -> None:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            body = self.known.get(key)
            if body is None or body.get("metadata", {}).get("deletionTimestamp"):
                return
            started = time.monotonic()
            try:
                await self._reconcile(key, body)
                opmetrics.RECONCILES.labels(*key, "ok").inc()
            except kube.NotFound:
                # Deleted under us: owner references clean up. If the object itself is gone (its
                # DELETED event can be missed, e.g. while kopf paused this replica), forget it.
                opmetrics.RECONCILES.labels(*key, "gone").inc()
                if await self.kube.get(MODELDEPLOYMENTS, key[1], namespace=key[0]) is None:
                    self.observe("DELETED", body)
            except Exception as exc:
                if isinstance(exc, kube.Forbidden) and "is being terminated" in exc.message:
                    # Its namespace is going away; the ModelDeployment goes with it.
                    opmetrics.RECONCILES.labels(*key, "gone").inc()
                    return
                # Logged with the object and retried on the next beat; never swallowed silently.
                opmetrics.RECONCILES.labels(*key, "error").inc()
                opmetrics.RECONCILE_ERRORS.labels(*key, type(exc).__name__).inc()
                log.exception("reconcile of %s/%s failed: %s", key[0], key[1], exc)
            finally:
                opmetrics.RECONCILE_SECONDS.observe(time.monotonic() - started)

    # --- one reconcile --------------------------------------------------------------------

    async def _reconcile(self, key: Key, body: dict[str, Any]) -> None:
        namespace, name = key
        selector = f"modelplane.dev/model-deployment={name}"
        deployments, services, pdbs, pods, events, nodes = await asyncio.gather(
            self.kube.list(kube.DEPLOYMENTS, namespace=namespace, label_selector=selector),
            self.kube.list(kube.SERVICES, namespace=namespace, label_selector=selector),
            self.kube.list(kube.PDBS, namespace=namespace, label_selector=selector),
            self.kube.list(kube.PODS, namespace=namespace, label_selector=selector),
            self.kube.list(kube.EVENTS, namespace=namespace,
                           field_selector="reason=FailedScheduling"),
            self._cached_nodes(),
        )
        observed = core.Observed(
            body=body, deployments=tuple(deployments), services=tuple(services),
            pdbs=tuple(pdbs), pods=tuple(pods), events=tuple(events), nodes=tuple(nodes),
            now=datetime.now(UTC), monotonic=time.monotonic(),
            activator_pending=self._pending.get(key, 0),
            model_config=self._model_config(key, body),
            suite_cases=self._suite_cases(key, body),
            metrics_max_age=(self.settings.prometheus.max_age_seconds
                             if self.settings.prometheus is not None else None))
        memory = self.memory.setdefault(key, _Memory())
        prepared = core.prepare(observed, prices=self.settings.prices)

        metrics: tuple[scrape.ScrapeResult, ...] = ()
        if prepared.scrape_targets and self._http is not None:
            if self.settings.prometheus is not None:
                metrics = tuple(await promquery.query_pods(
                    self._http, self.settings.prometheus, namespace=namespace,
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

        for child in result.apply:
            await self.kube.apply(child)
            opmetrics.API_WRITES.labels(child["kind"], "apply").inc()
        for resource, child_name in result.delete:
            if await self.kube.delete(resource, child_name, namespace=namespace):
                opmetrics.API_WRITES.labels(resource.kind, "delete").inc()
        if result.status is not None:
            await self.kube.apply({"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                                   "metadata": {"name": name, "namespace": namespace},
                                   "status": result.status},
                                  subresource="status", field_manager=FIELD_MANAGER)
            opmetrics.API_WRITES.labels(KIND, "status").inc()
        for event in result.events:
            await self.post_event(body, event)
        self._export(key, result)

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
            self._dirty.add(key)
            self._wake.set()

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

    def _suite_cases(self, key: Key, body: Mapping[str, Any]) -> int | None:
        """The cached size of the rollout's evaluation suite, starting a read when there is none.

        Read beside the reconcile, like the model's config.json; when it finishes the object is
        reconciled again and the rollout checks its gate's power.
        """
        wanted = rollouts.suite_to_count(body.get("spec") or {}, body.get("status"))
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
        self._dirty.add(key)
        self._wake.set()

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
                                         session=self._http)
            outcome = core.ModelConfig(arch, core.Reason.CONFIG_READ,
                                       f"config.json of {source}@{revision} read{note}")
            keep = self.settings.model_config_keep_seconds
        except ConfigReadError as exc:
            outcome = core.ModelConfig(None, exc.reason.value, f"{exc.message}{note}; planning "
                                       "from the built-in catalog or spec.model.hints instead")
            keep = self.settings.model_config_retry_seconds
        self._configs[cache_key] = (time.monotonic() + keep, outcome)
        self._dirty.add(key)
        self._wake.set()

    async def _relist(self) -> set[Key]:
        """List the served ModelDeployments; adopt unknown ones, forget vanished ones."""
        patterns = self.settings.namespaces
        literal = [ns for ns in patterns if not any(c in ns for c in "*?[")]
        try:
            if patterns and len(literal) == len(patterns):
                items = [md for ns in literal
                         for md in await self.kube.list(MODELDEPLOYMENTS, namespace=ns)]
            else:
                items = await self.kube.list(MODELDEPLOYMENTS)
        except kube.ApiError as exc:
            log.warning("listing ModelDeployments failed: %s", exc)
            return set()
        seen: set[Key] = set()
        for md in items:
            meta = md.get("metadata") or {}
            key = (str(meta.get("namespace")), str(meta.get("name")))
            if patterns and not any(fnmatch.fnmatchcase(key[0], p) for p in patterns):
                continue
            seen.add(key)
            if key not in self.known:
                self.observe("ADDED", md)
        for key in set(self.known) - seen:
            self.observe("DELETED", self.known[key])
        return seen

    async def _active(self) -> bool:
        """Whether this replica may write (always, unless HA peering says another one runs)."""
        if self.settings.peering is None:
            return True
        name, priority, namespaces = self.settings.peering
        now = datetime.now(UTC)
        try:
            if not namespaces:
                objs = await self.kube.list(peering.CLUSTER_PEERINGS,
                                            field_selector=f"metadata.name={name}")
                return bool(objs) and peering.is_active(objs[0].get("status"), priority, now)
            for ns in namespaces:
                objs = await self.kube.list(peering.PEERINGS, namespace=ns,
                                            field_selector=f"metadata.name={name}")
                if not objs or not peering.is_active(objs[0].get("status"), priority, now):
                    return False
            return True
        except kube.ApiError as exc:
            log.warning("cannot read the peering object %s: %s; standing by", name, exc)
            return False

    async def _activator_pending(self) -> dict[Key, int]:
        """Requests the activator holds, by Service (= ModelDeployment name); {} when unknown."""
        if not self.settings.activator_url or self._http is None:
            return {}
        from prometheus_client.parser import text_string_to_metric_families

        try:
            async with self._http.get(self.settings.activator_url, timeout=aiohttp.ClientTimeout(
                    total=self.settings.scrape_timeout_seconds)) as resp:
                text = await resp.text()
            pending: dict[Key, int] = {}
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "modelplane_activator_pending":
                        key = (sample.labels.get("namespace", ""), sample.labels.get("service", ""))
                        pending[key] = int(sample.value)
            return pending
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            # No activator signal: scale-from-zero waits for the next scrape, nothing else changes.
            log.warning("activator at %s did not answer: %s", self.settings.activator_url, exc)
            return {}

    async def _cached_nodes(self) -> list[dict[str, Any]]:
        fetched_at, nodes = self._nodes
        if time.monotonic() - fetched_at > self.settings.nodes_cache_seconds or not nodes:
            nodes = await self.kube.list(kube.NODES)
            self._nodes = (time.monotonic(), nodes)
        return nodes

    async def post_event(self, body: Mapping[str, Any], event: core.EventSpec) -> None:
        """A core/v1 Event on the ModelDeployment, as `kubectl describe` shows it."""
        meta = body["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            await self.kube.create({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
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
