"""A small Prometheus query API for tests of ``modelplane.metrics.promquery``.

It keeps the pages it is given (or scrapes pods itself, every ``interval`` seconds), stores every
sample with the scrape's wall-clock time and the target labels Prometheus adds (``job``,
``instance``, the pod and namespace labels), and answers ``POST /api/v1/query`` for the range
selector the operator sends — ``{__name__=~"…", NS_LABEL="…", POD_LABEL=~"…"}[Ns]`` — with a
``matrix`` as Prometheus does. It understands that form only and answers anything else with
Prometheus' ``bad_data`` error, so a change of the query shape fails the tests that use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[float, dict[str, str], float]  # (wall time, labels with __name__, value)

_STRING = r'"((?:[^"\\]|\\.)*)"'


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), text)


@dataclass
class FakePrometheus:
    namespace_label: str = "namespace"
    pod_label: str = "pod"
    job: str = "vllm"
    samples: list[Sample] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    #: (HTTP status, JSON body) to answer instead of the data, e.g. (503, {"status": "error", ...}).
    fail_with: tuple[int, dict[str, object]] | None = None
    #: (namespace, pod) → URL of its /metrics, scraped every ``interval`` seconds once started.
    targets: dict[tuple[str, str], str] = field(default_factory=dict)
    interval: float = 1.0
    #: When set, queries need ``Authorization: Bearer <token>`` (else 401, as behind an auth proxy).
    token: str | None = None
    url: str = ""
    _runner: web.AppRunner | None = None
    _scraper: asyncio.Task[None] | None = None

    def record(self, namespace: str, pod: str, page: str, *, at: float | None = None,
               job: str | None = None) -> None:
        """Store one scrape of ``pod``'s page, as Prometheus would (target labels added)."""
        at = time.time() if at is None else at
        for family in text_string_to_metric_families(page):
            for s in family.samples:
                labels = dict(s.labels, __name__=s.name, job=job or self.job,
                              instance=f"{pod}:8000")
                labels[self.namespace_label] = namespace
                labels[self.pod_label] = pod
                self.samples.append((at, labels, float(s.value)))

    def _parse(self, query: str) -> tuple[re.Pattern[str], str, re.Pattern[str], float]:
        m = re.fullmatch(rf'\{{__name__=~{_STRING}, {re.escape(self.namespace_label)}={_STRING}, '
                         rf'{re.escape(self.pod_label)}=~{_STRING}\}}\[(\d+)s\]', query)
        if m is None:
            raise ValueError(f"unsupported query {query!r}")
        return (re.compile(_unquote(m.group(1))), _unquote(m.group(2)), re.compile(_unquote(m.group(3))),
                float(m.group(4)))

    async def _query(self, request: web.Request) -> web.Response:
        form = await request.post()
        query = str(form.get("query", ""))
        self.queries.append(query)
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"status": "error", "errorType": "unauthorized",
                                      "error": "bearer token required"}, status=401)
        if self.fail_with is not None:
            status, body = self.fail_with
            return web.json_response(body, status=status)
        try:
            names, namespace, pods, lookback = self._parse(query)
        except ValueError as exc:
            return web.json_response({"status": "error", "errorType": "bad_data", "error": str(exc)},
                                     status=400)
        now = time.time()
        series: dict[tuple[tuple[str, str], ...], list[list[object]]] = {}
        for at, labels, value in self.samples:
            if (now - lookback < at <= now and names.fullmatch(labels["__name__"])
                    and labels.get(self.namespace_label) == namespace
                    and pods.fullmatch(labels.get(self.pod_label, ""))):
                series.setdefault(tuple(sorted(labels.items())), []).append([at, repr(value)
                                                                             if value == value else "NaN"])
        result = [{"metric": dict(key), "values": sorted(values, key=lambda v: float(str(v[0])))}
                  for key, values in series.items()]
        return web.json_response({"status": "success", "data": {"resultType": "matrix", "result": result}})

    async def _scrape_loop(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                for (namespace, pod), url in list(self.targets.items()):
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError, ValueError):
                        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                            self.record(namespace, pod, await resp.text())
                cutoff = time.time() - 600
                self.samples = [s for s in self.samples if s[0] >= cutoff]
                await asyncio.sleep(self.interval)

    async def start(self) -> FakePrometheus:
        app = web.Application()
        app.router.add_post("/api/v1/query", self._query)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        self._scraper = asyncio.create_task(self._scrape_loop())
        return self

    async def stop(self) -> None:
        if self._scraper is not None:
            self._scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scraper
        if self._runner is not None:
            await self._runner.cleanup()
