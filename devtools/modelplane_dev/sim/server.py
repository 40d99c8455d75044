"""A simulated vLLM replica on a real socket: vLLM's OpenAI server, driven by the engine model.

It answers what clients and the operator use of ``vllm serve``: ``GET /health`` (503 until the
emulated model load is over, then 200), ``GET /v1/models``, ``POST /v1/completions`` and
``POST /v1/chat/completions`` (JSON or SSE ``data: {...}`` chunks ending with ``data: [DONE]``,
``usage``, ``stream_options.include_usage``), ``GET /version`` and ``GET /metrics`` with vLLM V1's
metric names and labels (``model_name`` = the served name, ``engine="0"``), plus the HTTP counter
``http_requests_total{method,status,handler}`` that vLLM's API server exports through
prometheus-fastapi-instrumentator: status grouped as "2xx"/"4xx"/"5xx", handler the route path ("none"
for a path no route matches), and vLLM's excluded handlers (``/metrics``, ``/health``, ``/version``…)
not counted. The failed requests the operator's live analysis sees come from this counter.

Prefix caching is on, as in vLLM V1 (``--no-enable-prefix-caching`` turns it off): the prompt as
the engine sees it (a completion's prompt, a chat rendered by ``render_chat``, or token ids) is cut
into 16-token blocks of 64 characters, and the leading blocks the replica computed before and still
holds cost no prefill (``sim/prefix.py``); with ``--kv-offloading-size`` GiB, blocks evicted from
the GPU but kept in host memory cost their copy back instead; ``vllm:prefix_cache_queries_total`` and
``vllm:prefix_cache_hits_total`` count prompt tokens looked up and found, as vLLM's do.

Tokens stream out at the engine model's pace: one pump task per replica advances the engine to the
wall clock (the event loop's monotonic clock) after every step and hands each request the tokens
it has been given. Before the model is "loaded" every endpoint answers 503 (real vLLM does not
listen yet; a 503 keeps the socket the pod agent bound and still fails every probe).

One process can run many replicas: every ``SimServer`` has its own engine, pump, metrics and
(host, port).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from modelplane.planner.performance import kv_bytes_per_token
from modelplane_dev.sim.config import SimConfig, parse_vllm_args
from modelplane_dev.sim.engine import EngineModel, EventKind, FinishReason, Histogram
from modelplane_dev.sim.lora import (
    LOAD_PATH,
    UNLOAD_PATH,
    LoRAError,
    LoRARegistry,
    lora_info_labels,
    permission,
    runtime_updating_allowed,
)
from modelplane_dev.sim.prefix import (
    BLOCK_TOKENS,
    OFFLOAD_BYTES_PER_S,
    BlockHash,
    text_block_hashes,
    token_block_hashes,
)
from modelplane_dev.sim.provider import ProviderMode
from modelplane_dev.sim.quality import (
    DEFAULT_BEHAVIOR,
    BehaviorMap,
    SimBehavior,
    answer,
    count_tokens,
    filler_text,
    last_user_text,
    render_chat,
    split_tokens,
    unit_draw,
)

log = logging.getLogger(__name__)

#: The vLLM version the simulator imitates: the operator's default image's (``api.models.DEFAULT_IMAGE``);
#: docs/vllm-versions.md lists what changed since 0.11.
VLLM_VERSION = "0.32.0"
#: vLLM's default ``max_tokens`` for the legacy completions API.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
# The pump never sleeps longer than this while requests run, so streams stay smooth.
_MAX_PUMP_SLEEP_S = 0.05
#: The HTTP request counter of vLLM's API server (prometheus-fastapi-instrumentator's default metric).
HTTP_REQUESTS_TOTAL = "http_requests_total"
#: Its label names, in the instrumentator's order.
HTTP_REQUESTS_LABELS = ("method", "status", "handler")
#: vLLM (0.11 and 0.32 alike) leaves these out of the counter (``mount_metrics``: the Instrumentator's
#: ``excluded_handlers``, regexes searched in the path). Besides matching vLLM, leaving /health out
#: keeps the probes' 503s during the model load from reading as failed requests.
UNCOUNTED_HANDLERS = ("/metrics", "/health", "/load", "/ping", "/version", "/server_info")
# The status a streamed response has already sent, for a stream that then fails (a client that went
# away): the instrumentator counts the status the response started with.
_SENT_STATUS = web.RequestKey("modelplane_sim_sent_status", int)


@dataclass
class _Stream:
    """A request in flight, as its HTTP handler sees it."""

    request_id: str
    pieces: list[str]
    prompt_tokens: int
    adapter: str | None = None  #: the LoRA adapter serving it (None: the base model)
    generated: int = 0
    finish: FinishReason | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def _error(status: int, message: str, kind: str) -> web.Response:
    # OpenAI's error shape; the openai client raises the matching APIStatusError subclass.
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.json_response(body, status=status)


def _bound(value: float) -> str:
    """A bucket bound as Prometheus writes it (``le="0.5"``, ``le="+Inf"``)."""
    return "+Inf" if math.isinf(value) else repr(float(value))


def http_requests_labels(*, method: str, path: str, status: int,
                         routes: frozenset[str]) -> tuple[str, str, str] | None:
    """The ``http_requests_total`` labels of one answered request, or None when vLLM does not count it.

    As prometheus-fastapi-instrumentator's defaults in vLLM: the status grouped by its first digit,
    the handler the route's path or "none" when no route matched the path.
    """
    if any(excluded in path for excluded in UNCOUNTED_HANDLERS):
        return None
    return method, f"{str(status)[0]}xx", path if path in routes else "none"


class _EngineCollector(Collector):
    """Exposes one engine's gauges, counters and histograms under vLLM V1's names."""

    def __init__(self, server: SimServer) -> None:
        self._server = server

    def collect(self) -> Iterable[Metric]:
        engine = self._server.engine
        labels = ["model_name", "engine"]
        values = [self._server.config.served_name, "0"]

        def gauge(name: str, doc: str, value: float) -> Metric:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> Metric:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        def histogram(name: str, doc: str, hist: Histogram) -> Metric:
            family = HistogramMetricFamily(name, doc, labels=labels)
            buckets = [(_bound(bound), float(count)) for bound, count in hist.cumulative()]
            family.add_metric(values, buckets, hist.sum)
            return family

        stats = engine.stats
        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                    engine.num_running)
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                    engine.num_waiting)
        # vLLM 0.32: the waiting requests split by reason (the simulated engine defers none: no LoRA
        # budget, no KV transfer), and the sleep state (the simulator never sleeps).
        waiting = GaugeMetricFamily("vllm:num_requests_waiting_by_reason",
                                    "Number of waiting requests by reason.", labels=[*labels, "reason"])
        waiting.add_metric([*values, "capacity"], engine.num_waiting)
        waiting.add_metric([*values, "deferred"], 0)
        yield waiting
        sleep = GaugeMetricFamily("vllm:engine_sleep_state", "Engine sleep state.",
                                  labels=[*labels, "sleep_state"])
        for state, value in (("awake", 1), ("weights_offloaded", 0), ("discard_all", 0)):
            sleep.add_metric([*values, state], value)
        yield sleep
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                    engine.kv_cache_usage)
        yield counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                      stats.preemptions)
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens)
        # vLLM V1's prefix cache counters, in tokens (vllm/v1/metrics/loggers.py).
        yield counter("vllm:prefix_cache_queries",
                      "Prefix cache queries, in terms of number of queried tokens.",
                      stats.prefix_cache_queries)
        yield counter("vllm:prefix_cache_hits",
                      "Prefix cache hits, in terms of number of cached tokens.", stats.prefix_cache_hits)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.",
                      stats.generation_tokens)
        success = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                      labels=[*labels, "finished_reason"])
        for reason in FinishReason:
            success.add_metric([*values, reason.value], stats.success[reason])
        yield success
        yield histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                        stats.ttft)
        yield histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                        stats.inter_token_latency)
        yield histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                        stats.e2e_latency)
        yield histogram("vllm:request_queue_time_seconds",
                        "Histogram of time spent in WAITING phase for request.", stats.queue_time)
        # Not vLLM's engine's but its API server's; like a labelled Counter, no series before a request.
        http = CounterMetricFamily(HTTP_REQUESTS_TOTAL,
                                   "Total number of requests by method, status and handler.",
                                   labels=list(HTTP_REQUESTS_LABELS))
        for key, count in sorted(self._server.http_requests.items()):
            http.add_metric(list(key), count)
        yield http
        if self._server.config.enable_lora:
            # vLLM's gauge has no model_name/engine labels: (max_lora, waiting, running) only.
            info = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                                     labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"])
            for key, stamp in self._server.lora_info.items():
                info.add_metric(list(key), stamp)
            yield info


def offloading(config: SimConfig, latency_factor: float = 1.0) -> dict[str, Any]:
    """The engine's host-memory tier for ``--kv-offloading-size`` GiB: its room in blocks, its copy rate.

    KV bytes per token as the planner sizes them; the copy at ``OFFLOAD_BYTES_PER_S`` per GPU (each
    tensor-parallel rank copies its share), slowed like every step by ``latency_factor``.
    """
    if not config.kv_offloading_size:
        return {}
    per_token = kv_bytes_per_token(config.size_billions())
    return {"offload_blocks": int(config.kv_offloading_size * 2**30 / per_token) // BLOCK_TOKENS,
            "offload_tokens_per_s": OFFLOAD_BYTES_PER_S * config.tensor_parallel_size / per_token
            / latency_factor}


class SimServer:
    """One simulated vLLM replica. ``await start()``, then talk to ``url``; ``await stop()`` at the end."""

    def __init__(self, config: SimConfig, *, behavior: SimBehavior | None = None,
                 behaviors: BehaviorMap | None = None, provider: ProviderMode | None = None) -> None:
        """``behavior`` wins; else the entry of ``behaviors`` for this checkpoint; else the default.

        Raises ``ValueError`` when the model cannot run on the configured GPUs (as vLLM would fail).
        """
        self.config = config
        self.provider = provider  #: external-provider mode: an API key and faults on demand (sim/provider.py)
        if behavior is None:
            behavior = (behaviors.for_checkpoint(config.model, config.revision) if behaviors is not None
                        else DEFAULT_BEHAVIOR)
        self.behavior = behavior
        self.behaviors = behaviors if behaviors is not None else BehaviorMap(default=behavior)
        self.lora = LoRARegistry(enabled=config.enable_lora, max_loras=config.max_loras,
                                 max_lora_rank=config.max_lora_rank, max_cpu_loras=config.max_cpu_loras)
        #: ``vllm:lora_requests_info``: (max_lora, waiting, running) -> wall time it was last current.
        self.lora_info: dict[tuple[str, str, str], float] = {}
        self.params = config.engine_params().slowed(behavior.latency_factor)
        self.engine = EngineModel(self.params, start=time.monotonic(),
                                  prefix_caching=config.enable_prefix_caching,
                                  **offloading(config, behavior.latency_factor))
        self._streams: dict[str, _Stream] = {}
        self._request_counter = itertools.count()
        self._runner: web.AppRunner | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._started_at = 0.0
        self._created = int(time.time())
        #: Answered HTTP requests by (method, status class, handler), as ``http_requests_total``.
        self.http_requests: Counter[tuple[str, str, str]] = Counter()
        self._routes: frozenset[str] = frozenset()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_EngineCollector(self))
        self.host = config.host
        self.port = config.port

    @classmethod
    def from_vllm_args(cls, argv: Sequence[str], *, gpu_type: str, behaviors: BehaviorMap | None = None,
                       host: str | None = None, port: int | None = None,
                       env: Mapping[str, str] | None = None) -> SimServer:
        """A replica configured from a vLLM container's args, environment and its node's GPU type."""
        config = parse_vllm_args(argv, base=SimConfig(gpu_type=gpu_type))
        overrides: dict[str, Any] = {}
        if env is not None:
            overrides["allow_runtime_lora_updating"] = runtime_updating_allowed(env)
        if host is not None:
            overrides["host"] = host
        if port is not None:
            overrides["port"] = port
        if overrides:
            config = replace(config, **overrides)
        return cls(config, behaviors=behaviors)

    # ---- lifecycle ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL (``http://host:port``); the OpenAI API is under ``/v1``."""
        return f"http://{self.host}:{self.port}"

    @property
    def loaded(self) -> bool:
        return self._runner is not None and self._loop_time() - self._started_at >= self.behavior.load_seconds

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        """Listen on (host, port) (port 0: a free one) and start the emulated model load; returns the port."""
        if self._runner is not None:
            raise RuntimeError("already started")
        host = self.config.host if host is None else host
        port = self.config.port if port is None else port
        middlewares = [self._count_requests]
        if self.provider is not None:
            middlewares.append(self.provider.middleware)
        app = web.Application(client_max_size=64 * 2**20, middlewares=middlewares)
        if self.provider is not None:
            self.provider.add_routes(app)
        app.router.add_get("/health", self._health)
        app.router.add_get("/version", self._version)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/metrics", self._metrics)
        if self.config.allow_runtime_lora_updating:
            app.router.add_post(LOAD_PATH, self._load_lora)
            app.router.add_post(UNLOAD_PATH, self._unload_lora)
        self._routes = frozenset(resource.canonical for resource in app.router.resources())
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0]
        self.host, self.port = host, int(bound[1])
        self._started_at = self._loop_time()
        self._pump_task = asyncio.create_task(self._pump_loop(), name=f"sim-pump-{self.port}")
        return self.port

    async def stop(self) -> None:
        """Stop listening; requests in flight end as aborted."""
        for stream in self._streams.values():
            if stream.finish is None:
                stream.finish = FinishReason.ABORT
                stream.changed.set()
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
            self._pump_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_loaded(self) -> None:
        """Return once ``/health`` answers 200."""
        while not self.loaded:
            await asyncio.sleep(min(0.05, max(0.001, self.behavior.load_seconds)))

    # ---- the engine pump -----------------------------------------------------------------------------

    @staticmethod
    def _loop_time() -> float:
        # The event loop's clock is time.monotonic(); the engine was started on the same clock.
        return time.monotonic()

    def pump(self) -> None:
        """Advance the engine to now and hand every stream its new tokens (also done before a scrape)."""
        for event in self.engine.advance(self._loop_time()):
            stream = self._streams.get(event.request_id)
            if stream is None:
                continue
            if event.kind is EventKind.FINISHED:
                stream.generated = event.generation_tokens
                stream.finish = event.reason
                stream.changed.set()
        for stream in self._streams.values():
            if stream.finish is None:
                generated = self.engine.generated_tokens(stream.request_id)
                if generated > stream.generated:
                    stream.generated = generated
                    stream.changed.set()
        if self.config.enable_lora:
            self._note_lora_info()

    def _note_lora_info(self) -> None:
        """Stamp the current (waiting, running) adapters, as vLLM's stats logger does every step."""
        waiting: list[str] = []
        running: list[str] = []
        for stream in self._streams.values():
            if stream.adapter is not None and stream.finish is None:
                (running if self.engine.is_running(stream.request_id) else waiting).append(stream.adapter)
        key = lora_info_labels(max_loras=self.config.max_loras, waiting=waiting, running=running)
        self.lora_info[key] = time.time()

    async def _pump_loop(self) -> None:
        while True:
            self.pump()
            next_end = self.engine.next_step_end()
            if next_end is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = min(max(next_end - self._loop_time(), 0.001), _MAX_PUMP_SLEEP_S)
            await asyncio.sleep(delay)

    # ---- endpoints -----------------------------------------------------------------------------------

    @web.middleware
    async def _count_requests(
            self, request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Count each answered request in ``http_requests_total``: errors, and 503s before the load, too."""
        status = 500  # what aiohttp answers when a handler raises something else than an HTTP error
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # a path no route matches (404), a method not allowed (405)
            status = exc.status
            raise
        except BaseException:
            status = request.get(_SENT_STATUS, status)
            raise
        finally:
            labels = http_requests_labels(method=request.method, path=request.path, status=status,
                                          routes=self._routes)
            if labels is not None:
                self.http_requests[labels] += 1

    def _not_loaded(self) -> web.Response | None:
        if self.loaded:
            return None
        return _error(503, "the model is loading", "ServiceUnavailableError")

    async def _health(self, request: web.Request) -> web.Response:
        if not self.loaded:
            return web.Response(status=503)
        return web.Response(status=200)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VLLM_VERSION})

    async def _models(self, request: web.Request) -> web.Response:
        if (refusal := self._not_loaded()) is not None:
            return refusal
        served = self.config.served_name
        card = {
            "id": served, "object": "model", "created": self._created, "owned_by": "vllm",
            "root": self.config.model, "parent": None, "max_model_len": self.params.max_model_len,
            "permission": [permission(self._created, ident=f"modelperm-{uuid.uuid4().hex}")],
        }
        cards = [card, *self.lora.model_cards(base_name=served, created=self._created)]
        return web.json_response({"object": "list", "data": cards})

    async def _load_lora(self, request: web.Request) -> web.Response:
        return await self._lora_admin(request, load=True)

    async def _unload_lora(self, request: web.Request) -> web.Response:
        return await self._lora_admin(request, load=False)

    async def _lora_admin(self, request: web.Request, *, load: bool) -> web.Response:
        if (refusal := self._not_loaded()) is not None:
            return refusal
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"the body is not JSON: {exc}", "BadRequestError")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object", "BadRequestError")
        try:
            if load:
                path, name = body.get("lora_path"), body.get("lora_name")
                behavior = self.behaviors.for_adapter(str(path), str(name))
                text = self.lora.load(body, rank=behavior.lora_rank, missing=behavior.lora_missing)
            else:
                text = self.lora.unload(body)
        except LoRAError as exc:
            return _error(exc.status, exc.message, exc.kind)
        log.info("%s: %s", self.url, text)
        # vLLM answers with a bare ``Response(content=str)``: no JSON, no media type.
        return web.Response(status=200, body=text.encode())

    async def _metrics(self, request: web.Request) -> web.Response:
        if (refusal := self._not_loaded()) is not None:
            return refusal
        self.pump()
        return web.Response(body=generate_latest(self._registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if (refusal := self._not_loaded()) is not None:
            return refusal
        try:
            body = await self._read_body(request)
            messages = body.get("messages")
            if (not isinstance(messages, list) or not messages
                    or not all(isinstance(m, dict) for m in messages)):
                raise _HTTPError(400, "messages must be a non-empty list of message objects",
                                 "BadRequestError")
            rendered = render_chat(messages)
            max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
            return await self._generate(request, body, chat=True, question=last_user_text(messages),
                                        prompt_tokens=count_tokens(rendered), max_tokens=max_tokens,
                                        blocks=text_block_hashes(rendered))
        except _HTTPError as exc:
            return _error(exc.status, exc.message, exc.kind)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        if (refusal := self._not_loaded()) is not None:
            return refusal
        try:
            body = await self._read_body(request)
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
                prompt = prompt[0]
            blocks: list[BlockHash]
            if isinstance(prompt, str):
                text, prompt_tokens, blocks = prompt, count_tokens(prompt), text_block_hashes(prompt)
            elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
                text, prompt_tokens = " ".join(map(str, prompt)), len(prompt)
                blocks = token_block_hashes(prompt)
            else:
                raise _HTTPError(400, "prompt must be a string, a list of one string, or a list of token ids",
                                 "BadRequestError")
            max_tokens = body.get("max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS)
            return await self._generate(request, body, chat=False, question=text,
                                        prompt_tokens=prompt_tokens, max_tokens=max_tokens, blocks=blocks)
        except _HTTPError as exc:
            return _error(exc.status, exc.message, exc.kind)

    async def _read_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _HTTPError(400, f"the body is not JSON: {exc}", "BadRequestError") from exc
        if not isinstance(body, dict):
            raise _HTTPError(400, "the body must be a JSON object", "BadRequestError")
        model = body.get("model")
        if model is not None and model != self.config.served_name and model not in self.lora.adapters:
            # vLLM 0.32's text (entrypoints/serve/engine/serving.py): the base's served names, not adapters.
            raise _HTTPError(404, f"The model `{model}` does not exist. "
                                  f"Valid aliases: {self.config.served_name}.", "NotFoundError")
        n = body.get("n", 1)
        if n not in (None, 1):
            raise _HTTPError(400, "the simulator serves n=1 only", "BadRequestError")
        return body

    async def _generate(self, request: web.Request, body: Mapping[str, Any], *, chat: bool, question: str,
                        prompt_tokens: int, max_tokens: Any,
                        blocks: Sequence[BlockHash] = ()) -> web.StreamResponse:
        limit = self.params.max_model_len
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                       or max_tokens < 1):
            raise _HTTPError(400, "max_tokens must be a positive integer", "BadRequestError")
        requested = max_tokens if max_tokens is not None else limit - prompt_tokens
        if prompt_tokens + max(requested, 1) > limit:
            raise _HTTPError(
                400, f"This model's maximum context length is {limit} tokens. However, you requested "
                     f"{prompt_tokens + max(requested, 0)} tokens ({prompt_tokens} in the messages, "
                     f"{requested} in the completion). Please reduce the length of the messages or "
                     "completion.",
                "BadRequestError")
        seq = next(self._request_counter)
        adapter = self.lora.adapters.get(str(body.get("model")))
        checkpoint, behavior = self.config.checkpoint, self.behavior
        if adapter is not None:
            # The adapter's answers: its own quality identity (its path) and behaviour.
            checkpoint, behavior = adapter.path, self.behaviors.for_adapter(adapter.path, adapter.name)
        if unit_draw("error", self.config.seed, checkpoint, seq) < behavior.error_rate:
            raise _HTTPError(500, "simulated engine failure", "InternalServerError")

        reply = answer(question, checkpoint=checkpoint, behavior=behavior, seed=self.config.seed)
        output_tokens: int | None
        if reply.evaluated:
            pieces = split_tokens(reply.text)
            output_tokens = len(pieces)
        elif max_tokens is not None:
            # Filler runs to max_tokens, like a benchmark request with ignore_eos.
            pieces = split_tokens(filler_text(f"{checkpoint}\x1f{question}", max_tokens))
            output_tokens = None
        else:
            length = 32 + int(unit_draw("length", checkpoint, question) * 224)
            pieces = split_tokens(filler_text(f"{checkpoint}\x1f{question}", length))
            output_tokens = len(pieces)
        pieces = pieces[:requested]
        if output_tokens is not None and output_tokens > requested:
            output_tokens = None  # cut by max_tokens: finishes with "length"

        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        stream_state = _Stream(request_id, pieces, prompt_tokens,
                               adapter=adapter.name if adapter is not None else None)
        self._streams[request_id] = stream_state
        try:
            self.engine.submit(request_id, prompt_tokens, requested, self._loop_time(),
                               output_tokens=output_tokens, blocks=blocks)
            self._wake.set()
            if body.get("stream"):
                options = body.get("stream_options") or {}
                include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
                return await self._stream(request, stream_state, chat=chat, include_usage=include_usage)
            while stream_state.finish is None:
                stream_state.changed.clear()
                await stream_state.changed.wait()
            if stream_state.finish is FinishReason.ABORT:
                raise _HTTPError(503, "the server is shutting down", "ServiceUnavailableError")
            return web.json_response(self._full_response(stream_state, chat=chat))
        finally:
            if stream_state.finish is None:
                self.engine.abort(request_id, self._loop_time())
            del self._streams[request_id]

    def _usage(self, stream: _Stream) -> dict[str, Any]:
        return {"prompt_tokens": stream.prompt_tokens,
                "total_tokens": stream.prompt_tokens + stream.generated,
                "completion_tokens": stream.generated, "prompt_tokens_details": None}

    def _full_response(self, stream: _Stream, *, chat: bool) -> dict[str, Any]:
        text = "".join(stream.pieces[: stream.generated])
        reason = stream.finish.value if stream.finish is not None else None
        choice: dict[str, Any]
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None,
                                              "tool_calls": [], "reasoning_content": None},
                      "logprobs": None, "finish_reason": reason, "stop_reason": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason,
                      "stop_reason": None, "prompt_logprobs": None}
        return {"id": stream.request_id, "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": stream.adapter or self.config.served_name,
                "choices": [choice],
                "usage": self._usage(stream)}

    async def _stream(self, request: web.Request, stream: _Stream, *, chat: bool,
                      include_usage: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        request[_SENT_STATUS] = response.status
        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            payload: dict[str, Any] = {"id": stream.request_id, "object": kind, "created": created,
                                       "model": stream.adapter or self.config.served_name, "choices": choices}
            if usage is not None:
                payload["usage"] = usage
            return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

        def choice(text: str, finish: str | None) -> dict[str, Any]:
            if chat:
                return {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish,
                        "stop_reason": None}
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}

        if chat:
            await response.write(chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}]))
        sent = 0
        while True:
            stream.changed.clear()
            finish = stream.finish
            upto = min(stream.generated, len(stream.pieces))
            if finish is FinishReason.ABORT:
                break
            # Hold the last piece back until the finish is known, so it carries the finish_reason.
            last = upto if finish is not None else min(upto, len(stream.pieces) - 1)
            while sent < last:
                is_last = finish is not None and sent == last - 1
                await response.write(chunk([choice(stream.pieces[sent], finish.value if is_last and finish
                                                   else None)]))
                sent += 1
            if finish is not None:
                if last == 0:
                    await response.write(chunk([choice("", finish.value)]))
                break
            await stream.changed.wait()
        if include_usage and stream.finish is not FinishReason.ABORT:
            await response.write(chunk([], self._usage(stream)))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def serve_forever(servers: Sequence[SimServer], *, stop: asyncio.Event) -> None:
    """Start ``servers``, run until ``stop`` is set, then stop them (used by ``modelplane sim``)."""
    started: list[SimServer] = []
    try:
        for server in servers:
            await server.start()
            started.append(server)
            log.info("simulated vLLM %s (%s, %s) on %s", server.config.served_name, server.config.model,
                     server.config.gpu_type, server.url)
        await stop.wait()
    finally:
        for server in started:
            await server.stop()
