"""Scrape vLLM's ``/metrics`` on every ready pod of a ModelDeployment, concurrently, with timeouts.

No Prometheus is needed: the operator reads each pod's own page on its pod IP. A pod that does not
answer in time, or answers garbage, yields ``None`` for its metrics; the autoscaler then holds
(``MetricsUnavailable``) rather than acting on half the picture.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from modelplane.autoscaler.policy import PodMetrics
from modelplane.metrics.vllm import MetricsError, parse_vllm_metrics

SCRAPE_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class ScrapeTarget:
    pod: str
    ip: str
    port: int = 8000


@dataclass(frozen=True)
class ScrapeResult:
    pod: str
    metrics: PodMetrics | None
    text: str | None  #: the raw page, for the rollout's live analysis
    error: str | None


async def scrape_one(session: aiohttp.ClientSession, target: ScrapeTarget, *,
                     served_name: str | None, timeout: float) -> ScrapeResult:
    url = f"http://{target.ip}:{target.port}/metrics"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                return ScrapeResult(target.pod, None, None, f"{url} answered {resp.status}")
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return ScrapeResult(target.pod, None, None, f"{url}: {type(exc).__name__} {exc}")
    try:
        metrics = parse_vllm_metrics(text, scraped_at=time.monotonic(), model_name=served_name)
    except MetricsError as exc:
        return ScrapeResult(target.pod, None, text, f"{url}: {exc}")
    return ScrapeResult(target.pod, metrics, text, None)


async def scrape_all(session: aiohttp.ClientSession, targets: Sequence[ScrapeTarget], *,
                     served_name: str | None,
                     timeout: float = SCRAPE_TIMEOUT_SECONDS) -> list[ScrapeResult]:
    return list(await asyncio.gather(*(scrape_one(session, t, served_name=served_name,
                                                  timeout=timeout) for t in targets)))
