"""The gateway's HTTP server: one OpenAI endpoint in front of every ModelDeployment.

For each inference request (``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``):

1. read the body (at most ``max_body_bytes``: 413) and its ``model`` (400 without one);
2. find the ModelDeployment serving that name (404 when none does; 503 while the gateway has not
   read the cluster yet);
3. choose canary or stable by the canary's weight (``weights``), then the least loaded ready
   replica of that group (``picking``);
4. no ready replica: hold the request until one is ready (``activator``; 429 when too many are
   held, 503 at the deadline);
5. send the client's bytes; a failure before the replica answers is tried once more on another
   replica (502 when that fails too); relay the answer chunk by chunk (``proxy``).

``GET /v1/models`` lists every model served with its phase; ``/healthz`` is 200 while the gateway
runs (503 when a watch has been down for ``WATCH_GRACE_SECONDS``); ``/readyz`` is 200 once the
cluster has been read.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST

from modelplane.gateway import metrics
from modelplane.gateway.activator import HoldLimits, Holds
from modelplane.gateway.adapters import upstream_body
from modelplane.gateway.cache import Routes
from modelplane.gateway.errors import ErrorKind, GatewayError
from modelplane.gateway.meshserve import MeshServer
from modelplane.gateway.picking import pick_by_prefix, pick_endpoint
from modelplane.gateway.podload import PodLoads
from modelplane.gateway.proxy import Relayed, Upstream, UpstreamFailure, relay, request_headers, unreachable
from modelplane.gateway.routing import (
    INFERENCE_PATHS,
    SESSION_HEADER,
    RequestInfo,
    model_card,
    models_listing,
    parse_request,
    resolve,
)
from modelplane.gateway.spend import DEFAULT_REFERENCE_USD_PER_MTOK, Price
from modelplane.gateway.spend import record as record_spend
from modelplane.gateway.streaming import FirstTokenScanner
from modelplane.gateway.table import Backend, Endpoint
from modelplane.gateway.teams import Team, Teams
from modelplane.gateway.usage import Usage, UsageCounter
from modelplane.gateway.watched import Watched
from modelplane.gateway.weights import Group, choose_group, group_endpoints, session_point

#: A watch that reconnects within this long is a blip; longer, and /healthz says so.
WATCH_GRACE_SECONDS = 15.0
#: Attempts per request: the first, and one more on another replica after a failure before the answer.
MAX_ATTEMPTS = 2


@dataclass(frozen=True)
class Settings:
    max_body_bytes: int = 16 * 2**20  #: larger bodies are refused with 413
    holds: HoldLimits = field(default_factory=HoldLimits)
    connect_timeout_seconds: float = 5.0  #: to open a connection to a replica
    session_header: str = SESSION_HEADER  #: keeps a client on one side of a canary split
    serve_metrics: bool = False  #: also serve /metrics on the API port
    #: Prefix affinity: route by the prompt's first this-many characters (0: off, least outstanding).
    prefix_chars: int = 0
    #: Prefix affinity's load bound: no replica above this many times its share of outstanding requests
    #: (rounded up). 1.0: in bench/gateway/prefix*.py a flatter load than 1.25 for a TTFT within 7%.
    affinity_load_factor: float = 1.0
    #: How often each ready replica's vLLM /metrics is read, so that picking counts its whole queue
    #: and KV-cache use, not only this gateway's requests (``podload``); 0: not read.
    pod_metrics_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.pod_metrics_seconds < 0:
            raise ValueError(f"pod_metrics_seconds must be >= 0, got {self.pod_metrics_seconds}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")
        if self.prefix_chars < 0:
            raise ValueError(f"prefix_chars must be >= 0, got {self.prefix_chars}")
        if self.affinity_load_factor < 1:
            raise ValueError(f"affinity_load_factor must be >= 1, got {self.affinity_load_factor}")
        if self.connect_timeout_seconds <= 0:
            raise ValueError(f"connect_timeout_seconds must be > 0, got {self.connect_timeout_seconds}")


@dataclass
class _Pick:
    """The state of one request across its attempts."""

    group: Group | None = None  #: decided once, at the first endpoint found
    failures: list[UpstreamFailure] = field(default_factory=list)
    #: The metrics' labels: the ModelDeployment once known, and the revision of the last replica tried.
    where: metrics.Where = field(default_factory=metrics.Where)


class Gateway:
    """The request path of one process. ``application()`` is its aiohttp app."""

    def __init__(self, routes: Routes, settings: Settings | None = None, *,
                 rng: random.Random | None = None, mesh: MeshServer | None = None,
                 teams: Teams | None = None, ledger: Watched | None = None) -> None:
        self.routes = routes
        self.ledger = ledger  #: the usage ledger's watch of the other processes' shards (ledger.py)
        self.mesh = mesh  #: ModelRoutes (docs/model-mesh.md); None: model names only
        self.teams = teams  #: team keys and limits; None: no keys asked
        self.settings = settings or Settings()
        self.upstream = Upstream(connect_timeout=self.settings.connect_timeout_seconds)
        interval = self.settings.pod_metrics_seconds
        self.pod_loads = PodLoads(self.upstream.outstanding, interval=interval or 1.0,
                                  max_age=3 * (interval or 1.0))
        self._pod_reader: asyncio.Task[None] | None = None
        self.holds = Holds(self.settings.holds)
        self.rng = rng or random.Random()  # noqa: S311 — load spreading, not security
        #: Per ModelDeployment: (the canary revision it is for, canary requests owed; see weights).
        self._deficits: dict[tuple[str, str], tuple[str, float]] = {}

    def application(self) -> web.Application:
        # One byte over the limit, so that an over-long body is seen (and refused) as such.
        app = web.Application(client_max_size=self.settings.max_body_bytes + 1)
        for path in INFERENCE_PATHS:
            app.router.add_route("*", path, self.inference)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model:.+}", self.get_model)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        if self.settings.serve_metrics:
            app.router.add_get("/metrics", serve_metrics)
        app.router.add_route("*", "/{tail:.*}", self.unknown_path)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _: web.Application) -> None:
        await self.upstream.start()
        if self.mesh is not None:
            await self.mesh.start()
        if self.settings.pod_metrics_seconds > 0:
            self._pod_reader = asyncio.create_task(self.pod_loads.run(self._ready_addresses),
                                                   name="pod-metrics")

    async def _stop(self, _: web.Application) -> None:
        if self._pod_reader is not None:
            self._pod_reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pod_reader
        await self.upstream.close()
        if self.mesh is not None:
            await self.mesh.close()

    def _ready_addresses(self) -> list[str]:
        if not self.routes.synced:
            return []
        return [e.address for b in self.routes.table().models.values() for e in b.endpoints]

    # --- small endpoints --------------------------------------------------------------------

    async def list_models(self, _: web.Request) -> web.Response:
        if not self.routes.synced:
            return _starting().response()
        listing = models_listing(self.routes.table())
        if self.mesh is not None:
            listing["data"] += self.mesh.model_cards()
        return web.json_response(listing)

    async def get_model(self, request: web.Request) -> web.Response:
        if not self.routes.synced:
            return _starting().response()
        try:
            return web.json_response(model_card(resolve(self.routes.table(), request.match_info["model"])))
        except GatewayError as err:
            return err.response()

    async def healthz(self, _: web.Request) -> web.Response:
        down = {**self.routes.health(), **(self.mesh.mesh.health() if self.mesh is not None else {}),
                **(self.teams.health() if self.teams is not None else {}),
                **(self.ledger.health() if self.ledger is not None else {})}
        problems = [f"the watch of {name} has been down for {seconds:.0f} s"
                    for name, seconds in sorted(down.items()) if seconds >= WATCH_GRACE_SECONDS]
        body = {"ok": not problems, "synced": self.routes.synced, "problems": problems,
                "models": len(self.routes.table().models) if self.routes.synced else 0,
                "held": self.holds.total()}
        return web.json_response(body, status=200 if not problems else 503)

    async def readyz(self, _: web.Request) -> web.Response:
        ready = self._synced()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def unknown_path(self, request: web.Request) -> web.Response:
        return GatewayError(ErrorKind.NOT_FOUND, f"no route for {request.method} {request.path}; this "
                            f"gateway serves {', '.join(INFERENCE_PATHS)} and GET /v1/models").response()

    # --- inference --------------------------------------------------------------------------

    async def inference(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        state = _Pick()
        outcome: Relayed | None = None
        reason: str | None = None
        try:
            if request.method != "POST":
                raise GatewayError(ErrorKind.METHOD_NOT_ALLOWED,
                                   f"{request.path} takes POST, not {request.method}")
            if not self._synced():
                raise _starting()
            team = self.teams.admit(request.headers) if self.teams is not None else None
            info, body = await self._read(request)
            mesh = self.mesh
            route = mesh.mesh.find(info.model) if mesh is not None else None
            if mesh is not None and route is not None:
                answered = await mesh.serve(self, request, body, info, route, state)
                response, outcome = answered.response, answered.outcome
                backend_label, price = answered.backend, answered.price
            else:
                backend = resolve(self.routes.table(), info.model)
                state.where = metrics.Where(backend.namespace, backend.name)
                response, outcome = await self._forward(request, body, info, backend, state)
                backend_label = backend.name
                price = Price(external=False, output_usd_per_mtok=backend.usd_per_million_tokens or 0.0)
            if outcome.usage is not None and outcome.status == 200:
                self._account(team, info.model, backend_label, outcome.usage, price)
            if outcome.client_gone:
                reason = "client_disconnected"
                outcome.status = 499
            elif outcome.failed:
                reason = ErrorKind.UPSTREAM_FAILED.value
            elif outcome.status >= 500:
                reason = "upstream_status"
            return response
        except GatewayError as err:
            reason = err.kind.value
            outcome = Relayed(err.status)
            return err.response()
        except asyncio.CancelledError:
            reason = "client_disconnected"
            outcome = Relayed(499)  # nginx's code for a client that closed the connection
            raise
        finally:
            labels = state.where.labels
            status = outcome.status if outcome is not None else 500
            metrics.REQUESTS.labels(*labels, str(status)).inc()
            metrics.DURATION.labels(*labels).observe(time.monotonic() - started)
            if outcome is not None and outcome.first_token_at is not None:
                metrics.TTFT.labels(*labels).observe(outcome.first_token_at - started)
            if outcome is not None and outcome.usage is not None:
                metrics.count_tokens(labels, outcome.usage)
            if reason is not None:
                metrics.ERRORS.labels(*labels, reason).inc()

    def _synced(self) -> bool:
        return (self.routes.synced and (self.mesh is None or self.mesh.mesh.synced)
                and (self.teams is None or self.teams.synced) and (self.ledger is None or self.ledger.synced))

    def _account(self, team: Team | None, model: str, backend: str, usage: Usage, price: Price) -> None:
        """An answer's spend: the metrics, and the team's limits."""
        reference = (self.mesh.reference_usd_per_mtok if self.mesh is not None
                     else DEFAULT_REFERENCE_USD_PER_MTOK)
        cost = record_spend(team=team.name if team is not None else "", model=model, backend=backend,
                            usage=usage, price=price, reference_usd_per_mtok=reference)
        if team is not None and self.teams is not None:
            self.teams.account(team.name, tokens=(usage.prompt_tokens or 0) + (usage.completion_tokens or 0),
                               usd=cost)

    async def _read(self, request: web.Request) -> tuple[RequestInfo, bytes]:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise GatewayError(ErrorKind.TOO_LARGE, f"the request body is {request.content_length} bytes; "
                                                    f"this gateway accepts at most {limit}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise GatewayError(ErrorKind.TOO_LARGE, f"the request body is over {limit} bytes, "
                                                    "the most this gateway accepts") from None
        return parse_request(body, request.headers, max_bytes=limit,
                             session_header=self.settings.session_header,
                             prefix_chars=self.settings.prefix_chars), body

    async def _forward(self, request: web.Request, body: bytes, info: RequestInfo, backend: Backend,
                       state: _Pick) -> tuple[web.StreamResponse, Relayed]:
        key = backend.key
        headers = request_headers(request.headers)
        limits = self.settings.holds
        held_since: float | None = None  # while held
        first_held: float | None = None  # the hold deadline counts from the first time
        try:
            while True:
                backend = resolve(self.routes.table(), info.model)
                endpoint = self._pick(backend, info, state)
                if endpoint is None:
                    now = time.monotonic()
                    if first_held is None:
                        first_held = now
                    if held_since is None:
                        self.holds.acquire(backend.key)
                        key, held_since = backend.key, now
                    left = first_held + limits.timeout_seconds - now
                    if left <= 0 or not await self.routes.wait_changed(left):
                        if self._pick(resolve(self.routes.table(), info.model), info, state) is None:
                            raise self.holds.expired(key, time.monotonic() - first_held)
                    continue
                if held_since is not None:
                    self.holds.release(key)
                    metrics.HOLD_SECONDS.labels(*key).observe(time.monotonic() - held_since)
                    held_since = None
                state.where = metrics.Where(backend.namespace, backend.name, endpoint.revision or "")
                result = await self._attempt(request, body, info, endpoint, headers, state)
                if result is not None:
                    return result
                metrics.RETRIES.labels(*state.where.model).inc()
        finally:
            if held_since is not None:
                self.holds.release(key)
                metrics.HOLD_SECONDS.labels(*key).observe(time.monotonic() - held_since)

    async def _attempt(self, request: web.Request, body: bytes, info: RequestInfo, endpoint: Endpoint,
                       headers: CIMultiDict[str], state: _Pick) -> tuple[web.StreamResponse, Relayed] | None:
        """One try on ``endpoint``: the relayed answer, or None to try another replica."""
        in_flight = metrics.IN_FLIGHT.labels(*state.where.labels)
        self.upstream.begin(endpoint)
        in_flight.inc()
        try:
            try:
                # The last attempt relays a replica's 502/503/504 as it is, rather than retrying it.
                sent = body if endpoint.model is None else upstream_body(body, endpoint.model)
                response = await self.upstream.send(
                    endpoint, request.path, sent, headers,
                    retry_statuses=len(state.failures) + 1 < MAX_ATTEMPTS)
            except UpstreamFailure as failure:
                state.failures.append(failure)
                if len(state.failures) >= MAX_ATTEMPTS:
                    raise unreachable(state.failures) from None
                return None
            try:
                counter = UsageCounter(stream=info.stream) if response.status == 200 else None
                return await relay(request, response,
                                   scanner=FirstTokenScanner() if info.stream else None, counter=counter)
            except asyncio.CancelledError:
                response.close()  # the client left: drop the replica's connection, which aborts there
                raise
            finally:
                response.release()
        finally:
            self.upstream.end(endpoint)
            in_flight.dec()

    def _pick(self, backend: Backend, info: RequestInfo, state: _Pick) -> Endpoint | None:
        """The endpoint for this attempt; decides the canary group at the first endpoint found."""
        split = backend.split
        if split is None:
            return self._pick_in(backend.endpoints, info, state)
        group = state.group
        commit: float | None = None
        if group is None:
            revision, deficit = self._deficits.get(backend.key, (split.revision, 0.0))
            if revision != split.revision:
                deficit = 0.0
            session_u = (session_point(info.session, f"{backend.namespace}/{backend.name}/{split.revision}")
                         if info.session is not None else None)
            group, commit = choose_group(split.weight, deficit=deficit, u=self.rng.random(),
                                         session_u=session_u)
        candidates, used = group_endpoints(backend, group)
        endpoint = self._pick_in(candidates, info, state)
        if endpoint is not None and state.group is None:
            state.group = group
            if used is group and commit is not None:
                self._deficits[backend.key] = (split.revision, commit)
        return endpoint

    def _pick_in(self, candidates: Sequence[Endpoint], info: RequestInfo, state: _Pick) -> Endpoint | None:
        avoid = [f.endpoint.address for f in state.failures]
        loads = self.pod_loads.loads()
        if info.prefix is not None:
            return pick_by_prefix(candidates, loads, prefix=info.prefix,
                                  load_factor=self.settings.affinity_load_factor, avoid=avoid)
        return pick_endpoint(candidates, loads, u=self.rng.random(), avoid=avoid)


async def start(gateway: Gateway, *, host: str, port: int, reuse_port: bool = False,
                shutdown_timeout: float = 30.0) -> tuple[web.AppRunner, int]:
    """Listen on (host, port) (port 0: a free one); returns the runner and the port bound.

    Handlers are cancelled when their client disconnects: that is what aborts the replica's work.
    """
    runner = web.AppRunner(gateway.application(), access_log=None, handler_cancellation=True,
                           shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=1024).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


def _starting() -> GatewayError:
    return GatewayError(ErrorKind.STARTING, "the gateway is still reading the cluster; retry in a moment",
                        retry_after=1)


async def serve_metrics(_: web.Request) -> web.Response:
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})
