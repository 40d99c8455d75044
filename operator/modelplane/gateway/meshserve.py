"""Serving a request whose ``model`` names a ModelRoute: the plan of ``mesh``, carried out.

Each planned backend is tried in turn (at most ``mesh.MAX_TRIES``):

- a **ModelDeployment**: the body goes out with ``model`` set to its served name. Before the last
  try, one replica is picked and sent the request with the route's ``fallback.timeoutSeconds`` to
  begin its answer; a failure, the timeout or a status in ``fallback.onStatus`` moves on to the next
  backend, closing the connection (which aborts the work there). The last try takes the gateway's
  usual path (``Gateway._forward``): held while the model has no ready replica, its answer relayed
  whatever it is.
- an **external provider**: the body goes out with ``model`` set to the provider's name, to
  ``baseURL`` + the path after ``/v1``, with ``Authorization: Bearer <the Secret's key>`` in place of
  the client's; its answer is relayed chunk by chunk as it comes (streams pass through). A missing
  key counts as a failure before the answer.

For a rule with ``policy: cheapest`` the order of the backends is ``cheapest.rule_order``'s: the
self-hosted prices are the routing table's measured ones, the TTFTs this gateway's own window
(``MeshServer.ttfts``), fed by every attempt: a streamed answer's first-token time, or the time a
failed or timed-out attempt took.

Nothing reaches the client before an answer is chosen, so a fallback never repeats bytes. A stream
asks the backend for its usage (``stream_options.include_usage``) so spend is counted exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from modelplane.api.route import ExternalBackend, ModelRoute, RouteRule
from modelplane.gateway import cheapest, mesh, metrics, spend
from modelplane.gateway.errors import ErrorKind, GatewayError
from modelplane.gateway.ledger import Ledger, route_key
from modelplane.gateway.meshroutes import Mesh
from modelplane.gateway.proxy import Relayed, UpstreamBroken, UpstreamFailure, relay, request_headers
from modelplane.gateway.routing import RequestInfo
from modelplane.gateway.streaming import FirstTokenScanner
from modelplane.gateway.table import Backend, Endpoint
from modelplane.gateway.usage import UsageCounter

if TYPE_CHECKING:
    from modelplane.gateway.server import Gateway, _Pick

log = logging.getLogger("modelplane.gateway")


@dataclass
class Answered:
    """What ``serve_route`` hands back: the response, how it went, and what answered (for spend)."""

    response: web.StreamResponse
    outcome: Relayed
    backend: str
    price: spend.Price


def _route_budget_key(route: ModelRoute) -> str:
    return route_key(route.namespace, route.name)


class MeshServer:
    """The route half of the gateway: its external client, budgets, and the request flow."""

    def __init__(self, mesh_: Mesh, *, reference_usd_per_mtok: float = spend.DEFAULT_REFERENCE_USD_PER_MTOK,
                 connect_timeout: float = 5.0, ledger: Ledger | None = None) -> None:
        self.mesh = mesh_
        self.reference_usd_per_mtok = reference_usd_per_mtok
        self.connect_timeout = connect_timeout
        #: routes' external spend, shared by the gateway's processes (ledger.py)
        self.ledger = ledger if ledger is not None else Ledger()
        self.ttfts = cheapest.TtftWindow()
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # auto_decompress off and identity asked for: the provider's bytes pass as they are, and
        # their usage can be read.
        self._http = aiohttp.ClientSession(
            auto_decompress=False, trust_env=True,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def model_cards(self) -> list[dict[str, Any]]:
        """``/v1/models`` entries of the routes (after the ModelDeployments'), by name."""
        return [{"id": name, "object": "model", "created": 0, "owned_by": route.namespace,
                 "namespace": route.namespace, "model_route": name}
                for name in self.mesh.names() if (route := self.mesh.find(name)) is not None]

    def over_budget(self, route: ModelRoute, now: float) -> bool:
        budget = route.spec.budget
        if budget is None or budget.external_usd_per_month is None:
            return False
        return self.ledger.spent(_route_budget_key(route), now=now) >= budget.external_usd_per_month

    async def serve(self, gw: Gateway, request: web.Request, body: bytes, info: RequestInfo,
                    route: ModelRoute, state: _Pick) -> Answered:
        doc: Any = json.loads(body)  # parse_request has checked it is a JSON object
        features = mesh.features(doc, request.headers)
        models = _models_by_key(gw)
        targets = mesh.candidates(route, features, self.mesh.routes, u=gw.rng.random(),
                                  cheapest=self._cheapest_order(models, features, doc))
        if not targets:
            raise GatewayError(ErrorKind.MODEL_NOT_FOUND,
                               f"no rule of ModelRoute {route.namespace}/{route.name} matches this request "
                               "and it has no default rule", param="model")
        loads = {key: mesh.Load(len(b.endpoints), _waiting(gw, b.endpoints)) for key, b in models.items()}
        now = time.time()
        fallback = route.spec.fallback
        plan = mesh.plan(targets, loads, fallback, over_budget=self.over_budget(route, now))
        for target, why in plan.skipped:
            spend.FALLBACKS.labels(route.name, target.label, why).inc()
        if not plan.tries:
            if any(why == "budget" for _, why in plan.skipped):
                limit = route.spec.budget.external_usd_per_month if route.spec.budget else None
                raise GatewayError(ErrorKind.BUDGET_EXHAUSTED,
                                   f"ModelRoute {route.namespace}/{route.name} has spent its external budget "
                                   f"of ${limit:g} this month (spec.budget.externalUSDPerMonth) and no "
                                   "self-hosted backend can take the request", retry_after=3600)
            raise GatewayError(ErrorKind.MODEL_NOT_FOUND,
                               f"ModelRoute {route.namespace}/{route.name}: none of its backends exists "
                               f"({', '.join(t.label for t, _ in plan.skipped)})", param="model")
        # A cold ModelDeployment passed over counts as holding the request while another backend
        # serves it: the operator scales from zero on held requests, and would otherwise never see
        # the demand.
        waking: list[tuple[str, str]] = []
        for target, why in plan.skipped:
            key = (target.namespace, target.model_deployment or "")
            if why == "cold" and key in models and key not in waking:
                with contextlib.suppress(GatewayError):  # past --max-held: it is woken already
                    gw.holds.acquire(key)
                    waking.append(key)
        try:
            return await self._try(gw, request, doc, info, route, plan, models, state, waking)
        finally:
            for key in waking:
                gw.holds.release(key)

    def _cheapest_order(self, models: dict[tuple[str, str], Backend], features: mesh.Features,
                        doc: dict[str, Any]) -> mesh.CheapestOrder:
        prices = {key: b.usd_per_million_tokens for key, b in models.items()}
        now = time.monotonic()

        def rule_order(route: ModelRoute, rule: RouteRule) -> list[int]:
            objective = route.spec.objective
            keys = [cheapest.backend_key(route.namespace, b) for b in rule.backends]
            ttfts = {key: cheapest.ttft_of(self.ttfts, key, objective, now=now) for key in keys}
            return cheapest.rule_order(route.namespace, rule.backends, self_hosted_prices=prices, ttfts=ttfts,
                                       objective=objective, prompt_tokens=features.prompt_tokens,
                                       completion_tokens=cheapest.completion_tokens(doc))
        return rule_order

    def _observe(self, target: mesh.Target, started: float, answered: Answered | None, failed: bool) -> None:
        """Feed the TTFT window: a streamed answer's first token, or a failed attempt's time."""
        key = (target.namespace, target.label)
        now = time.monotonic()
        if answered is not None and answered.outcome.first_token_at is not None:
            self.ttfts.observe(key, answered.outcome.first_token_at - started, now=now)
        elif answered is None and failed:
            self.ttfts.observe(key, now - started, now=now)

    async def _try(self, gw: Gateway, request: web.Request, doc: dict[str, Any], info: RequestInfo,
                   route: ModelRoute, plan: mesh.Plan, models: dict[tuple[str, str], Backend],
                   state: _Pick, waking: list[tuple[str, str]]) -> Answered:
        fallback = route.spec.fallback
        headers = request_headers(request.headers)
        for i, target in enumerate(plan.tries):
            last = i == len(plan.tries) - 1
            answered: Answered | None
            started, failures = time.monotonic(), len(state.failures)
            if target.external is not None:
                try:
                    answered = await self._external(request, doc, info, target, target.external, headers,
                                                    state, last=last, timeout=float(fallback.timeout_seconds),
                                                    on_status=fallback.on_status, route=route.name)
                except GatewayError:
                    self._observe(target, started, None, True)
                    raise
            else:
                backend = models.get((target.namespace, target.model_deployment or ""))
                if backend is None:
                    continue
                if backend.key in waking:  # tried now: it holds the request itself while cold
                    waking.remove(backend.key)
                    gw.holds.release(backend.key)
                answered = await self._self_hosted(gw, request, doc, info, backend, headers, state, last=last,
                                                   timeout=float(fallback.timeout_seconds),
                                                   on_status=fallback.on_status, route=route.name)
            self._observe(target, started, answered, len(state.failures) > failures)
            if answered is not None:
                spend.ROUTED.labels(route.name, target.rule, answered.backend).inc()
                if answered.price.external and answered.outcome.usage is not None:
                    cost = answered.price.usd(answered.outcome.usage)
                    self.ledger.add(_route_budget_key(route), cost, now=time.time())
                return answered
        raise GatewayError(ErrorKind.UPSTREAM_UNREACHABLE,
                           f"ModelRoute {route.namespace}/{route.name}: no backend answered: "
                           + "; ".join(str(f) for f in state.failures))

    async def _self_hosted(self, gw: Gateway, request: web.Request, doc: dict[str, Any], info: RequestInfo,
                           backend: Backend, headers: CIMultiDict[str], state: _Pick, *, last: bool,
                           timeout: float, on_status: list[int], route: str) -> Answered | None:
        body = mesh.rewrite_model(doc, backend.served_name, stream_usage=True)
        served = replace(info, model=backend.served_name)
        price = spend.Price(external=False, output_usd_per_mtok=backend.usd_per_million_tokens or 0.0)
        state.where = metrics.Where(backend.namespace, backend.name)
        if last:
            forwarded, outcome = await gw._forward(request, body, served, backend, state)
            return Answered(forwarded, outcome, backend.name, price)
        endpoint = gw._pick(backend, served, state)
        if endpoint is None:
            spend.FALLBACKS.labels(route, backend.name, "cold").inc()
            return None
        state.where = metrics.Where(backend.namespace, backend.name, endpoint.revision or "")
        in_flight = metrics.IN_FLIGHT.labels(*state.where.labels)
        gw.upstream.begin(endpoint)
        in_flight.inc()
        try:
            try:
                response = await asyncio.wait_for(
                    gw.upstream.send(endpoint, request.path, body, headers, retry_statuses=False), timeout)
            except UpstreamFailure as failure:
                return self._failed(state, failure, route, backend.name, "failure")
            except TimeoutError:
                return self._failed(state, UpstreamFailure(endpoint, f"no answer in {timeout:g} s"), route,
                                    backend.name, "timeout")
            if response.status in on_status:
                response.close()
                return self._failed(state, UpstreamFailure(endpoint, f"answered {response.status}"), route,
                                    backend.name, f"status_{response.status}")
            try:
                counter = UsageCounter(stream=info.stream) if response.status == 200 else None
                relayed = await relay(request, response, scanner=FirstTokenScanner() if info.stream else None,
                                      counter=counter)
                return Answered(relayed[0], relayed[1], backend.name, price)
            except asyncio.CancelledError:
                response.close()
                raise
            finally:
                response.release()
        finally:
            gw.upstream.end(endpoint)
            in_flight.dec()

    @staticmethod
    def _failed(state: _Pick, failure: UpstreamFailure, route: str, backend: str,
                reason: str) -> Answered | None:
        """Note an attempt that failed before its answer; None: try the next backend."""
        state.failures.append(failure)
        spend.FALLBACKS.labels(route, backend, reason).inc()
        log.info("ModelRoute %s: %s (%s), trying the next backend", route, failure, reason)
        return None

    async def _external(self, request: web.Request, doc: dict[str, Any], info: RequestInfo,
                        target: mesh.Target, ext: ExternalBackend, headers: CIMultiDict[str], state: _Pick, *,
                        last: bool, timeout: float, on_status: list[int], route: str) -> Answered | None:
        assert self._http is not None, "MeshServer used before start()"
        label = target.label
        state.where = metrics.Where(target.namespace, label)
        price = spend.Price(external=True, input_usd_per_mtok=float(ext.input_usd_per_million_tokens),
                            output_usd_per_mtok=float(ext.output_usd_per_million_tokens))
        where = Endpoint(address=ext.base_url, pod=label)
        out_headers = CIMultiDict((k, v) for k, v in headers.items()
                                  if k.lower() not in ("authorization", "accept-encoding"))
        out_headers["Accept-Encoding"] = "identity"
        out_headers["Content-Type"] = "application/json"
        if ext.api_key_secret is not None:
            key = await self.mesh.api_key(target.namespace, ext.api_key_secret)
            if key is None:
                ref = ext.api_key_secret
                failure = UpstreamFailure(where, f"Secret {target.namespace}/{ref.name} has no key {ref.key}")
                return self._external_failed(state, failure, route, label, "failure", last)
            out_headers["Authorization"] = f"Bearer {key}"
        url = ext.base_url.rstrip("/") + request.path.removeprefix("/v1")
        body = mesh.rewrite_model(doc, ext.model, stream_usage=True)
        http = self._http

        async def send() -> aiohttp.ClientResponse:
            return await http.post(url, data=body, headers=out_headers, allow_redirects=False)

        try:
            response = await asyncio.wait_for(send(), None if last else timeout)
        except TimeoutError:
            return self._external_failed(state, UpstreamFailure(where, f"no answer in {timeout:g} s"), route,
                                         label, "timeout", last)
        except (aiohttp.ClientError, OSError) as exc:
            return self._external_failed(state, UpstreamFailure(where, f"{type(exc).__name__}: {exc}"), route,
                                         label, "failure", last)
        try:
            if not last and response.status in on_status:
                failure = UpstreamFailure(where, f"answered {response.status}")
                return self._external_failed(state, failure, route, label, f"status_{response.status}", last)
            counter = UsageCounter(stream=info.stream) if response.status == 200 else None
            scanner = FirstTokenScanner() if info.stream else None
            relayed, outcome = await relay(request, ProviderAnswer(response), scanner=scanner,
                                           counter=counter)
            return Answered(relayed, outcome, label, price)
        finally:
            response.release()

    def _external_failed(self, state: _Pick, failure: UpstreamFailure, route: str, backend: str, reason: str,
                         last: bool) -> Answered | None:
        self._failed(state, failure, route, backend, reason)
        if not last:
            return None
        raise GatewayError(ErrorKind.UPSTREAM_UNREACHABLE, f"ModelRoute {route}: no backend answered: "
                               + "; ".join(str(f) for f in state.failures))


class ProviderAnswer:
    """An external provider's answer as ``proxy.relay`` reads one (its failures as ``UpstreamBroken``)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = response.headers
        self.content_length = response.content_length

    async def next_chunk(self) -> bytes:
        try:
            return await self._response.content.readany()
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamBroken(f"the provider failed while answering: {type(exc).__name__}: {exc}") from exc

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.next_chunk():
            parts.append(chunk)
        return b"".join(parts)


def _models_by_key(gw: Gateway) -> dict[tuple[str, str], Backend]:
    return {b.key: b for b in gw.routes.table().models.values()}


def _waiting(gw: Gateway, endpoints: tuple[Endpoint, ...]) -> int:
    """Requests waiting in these replicas' queues, as their last fresh /metrics said."""
    reports = gw.pod_loads.reports
    now = time.monotonic()
    return int(sum(r.waiting for e in endpoints if (r := reports.get(e.address)) is not None
                   and now - r.at <= gw.pod_loads.max_age))
