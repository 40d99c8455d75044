"""A userspace stand-in for kube-proxy in front of one Service of the dev cluster.

The dev cluster has no kube-proxy, so a Service's ClusterIP leads nowhere. This proxy listens on a
loopback port and forwards each HTTP request to one of the Service's endpoints — the Ready,
non-terminating pods its selector matches, read from the API server like an EndpointSlice
controller would — choosing the endpoint with the fewest requests in flight. Streaming responses
are relayed chunk by chunk. While no endpoint is Ready (scaled to zero, or every pod starting) it
answers 503 at once, as a Service with no endpoint refuses connections: it holds nothing. Holding
requests at zero replicas, and telling the operator about them, is the gateway's job
(``modelplane gateway``, docs/gateway.md).

The demo and some end-to-end tests send their load through it, so traffic follows the Service's
selector exactly as it would in a real cluster: during a rollout that is stable's workload only
(the canary gets its share through the gateway, by ``status.canary.weight``; docs/rollouts.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from modelplane.controller import kube

log = logging.getLogger("modelplane.serviceproxy")

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
                "upgrade", "proxy-connection", "te", "trailer"}


class _Relayed(Exception):
    """The upstream failed after the response had started; carries what the client got."""

    def __init__(self, response: web.StreamResponse, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.response = response
        self.cause = cause


@dataclass
class Endpoint:
    pod: str
    ip: str
    port: int
    in_flight: int = 0


@dataclass
class ProxyStats:
    forwarded: int = 0
    failed: int = 0  #: requests that got no answer from any endpoint (5xx from the proxy itself)
    by_pod: dict[str, int] = field(default_factory=dict)


class ServiceProxy:
    def __init__(self, client: kube.Kube, *, namespace: str, service: str,
                 refresh_seconds: float = 0.5) -> None:
        self.kube = client
        self.namespace = namespace
        self.service = service
        self.refresh_seconds = refresh_seconds
        self.endpoints: dict[str, Endpoint] = {}
        self.stats = ProxyStats()
        self._runner: web.AppRunner | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tiebreak = itertools.count()
        #: Every client connection's protocol (aiohttp's RequestHandler), closed on stop whatever
        #: state aiohttp left it in: a stopped proxy leaves no open socket behind.
        self._connections: dict[web.RequestHandler, float] = {}  #: → when accepted
        self._listener: asyncio.Server | None = None
        self.port = 0

    async def refresh(self) -> None:
        svc = await self.kube.get(kube.SERVICES, self.service, namespace=self.namespace)
        selector = ((svc or {}).get("spec") or {}).get("selector") or {}
        ports = ((svc or {}).get("spec") or {}).get("ports") or [{}]
        target = ports[0].get("targetPort", ports[0].get("port", 8000))
        fresh: dict[str, Endpoint] = {}
        if selector:
            label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
            for pod in await self.kube.list(kube.PODS, namespace=self.namespace,
                                            label_selector=label_selector):
                meta, status = pod["metadata"], pod.get("status") or {}
                ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                            for c in status.get("conditions") or [])
                if not ready or meta.get("deletionTimestamp") or not status.get("podIP"):
                    continue
                port = target
                if isinstance(target, str):  # a named port: look it up in the pod
                    port = next((p["containerPort"] for c in pod["spec"]["containers"]
                                 for p in c.get("ports") or [] if p.get("name") == target), 8000)
                old = self.endpoints.get(meta["name"])
                fresh[meta["name"]] = Endpoint(meta["name"], status["podIP"], int(port),
                                               old.in_flight if old else 0)
        self.endpoints = fresh

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except (kube.ApiError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("endpoint refresh failed: %s", exc)
            await asyncio.sleep(self.refresh_seconds)

    def _pick(self) -> Endpoint | None:
        if not self.endpoints:
            return None
        return min(self.endpoints.values(), key=lambda e: (e.in_flight, next(self._tiebreak)))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        attempts = 0
        while True:
            endpoint = self._pick()
            if endpoint is None:
                # No Ready endpoint: a Service with none refuses; the proxy holds nothing.
                self.stats.failed += 1
                return web.json_response({"error": {"message": "no ready endpoint"}}, status=503)
            attempts += 1
            endpoint.in_flight += 1
            try:
                return await self._forward(request, body, endpoint)
            except _Relayed as relayed:
                # The answer had started to flow to the client: it cannot be retried elsewhere.
                self.stats.failed += 1
                log.warning("upstream %s broke off mid-response: %s", endpoint.pod, relayed.cause)
                return relayed.response
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                # The pod went away between the refresh and the connect (a scale-down or a
                # promotion): drop it and try another, as kube-proxy's retries would.
                self.endpoints.pop(endpoint.pod, None)
                if attempts >= 3:
                    self.stats.failed += 1
                    return web.json_response({"error": {"message": f"upstream failed: {exc}"}},
                                             status=502)
            finally:
                endpoint.in_flight -= 1

    async def _forward(self, request: web.Request, body: bytes,
                       endpoint: Endpoint) -> web.StreamResponse:
        assert self._session is not None
        url = f"http://{endpoint.ip}:{endpoint.port}{request.path_qs}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        response: web.StreamResponse | None = None
        complete = False
        try:
            async with self._session.request(request.method, url, data=body or None,
                                             headers=headers) as upstream:
                response = web.StreamResponse(status=upstream.status, headers={
                    k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS})
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    if not await self._relay(response, chunk):
                        break  # the client hung up (e.g. after reading [DONE]): nothing to fix
                else:
                    await self._relay(response, None)
                complete = True
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            if response is None or not response.prepared:
                raise  # nothing reached the client yet: the caller may try another endpoint
            if not complete:
                raise _Relayed(response, exc) from exc
            # The client has the whole answer; closing the upstream connection failed. Harmless.
        assert response is not None
        self.stats.forwarded += 1
        self.stats.by_pod[endpoint.pod] = self.stats.by_pod.get(endpoint.pod, 0) + 1
        return response

    @staticmethod
    async def _relay(response: web.StreamResponse, chunk: bytes | None) -> bool:
        """Write a chunk (None: the end) to the client; False when the client is gone."""
        try:
            if chunk is None:
                await response.write_eof()
            else:
                await response.write(chunk)
            return True
        except ConnectionResetError:
            return False

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=5, sock_read=300))
        try:
            await self.refresh()
        except BaseException:
            await self._session.close()  # a failed start leaves no open connection behind
            raise
        self._refresher = asyncio.create_task(self._refresh_loop())
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        handlers = self._runner.server
        assert handlers is not None

        def connection() -> web.RequestHandler:
            handler = handlers()
            # (RequestHandler takes no weak reference.) Forget the closed ones: no transport any
            # more, and accepted long enough ago to have had one.
            now = time.monotonic()
            self._connections = {h: at for h, at in self._connections.items()
                                 if h.transport is not None or now - at < 10}
            self._connections[handler] = now
            return handler

        # Our own listener around aiohttp's protocol factory, so that every connection is known —
        # also one accepted while the runner shuts down, which aiohttp's shutdown would miss.
        self._listener = await asyncio.get_running_loop().create_server(connection, host, port)
        self.port = int(self._listener.sockets[0].getsockname()[1])
        log.info("service proxy for %s/%s on 127.0.0.1:%d", self.namespace, self.service, self.port)
        return self.port

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()  # graceful: requests in flight end, idle ones close
        # A connection accepted just before the listener closed gets its transport (aiohttp's
        # connection_made) an iteration or two later, when it may already have been passed over
        # above: close what is open a few iterations in a row. (Seen in the scale-to-zero e2e
        # test: connections made while the test thread was blocked stopping the operator.)
        for _ in range(5):
            for handler in self._connections:
                handler.force_close()
            await asyncio.sleep(0.01)
        self._connections.clear()
        if self._session is not None:
            await self._session.close()
        await asyncio.sleep(0)  # a closed transport lets go of its socket on the next iteration
