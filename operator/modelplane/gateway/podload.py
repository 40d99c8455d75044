"""What each replica says of its own load, folded into the gateway's picking.

The gateway counts the requests it has outstanding on each replica, but a replica also serves the
other gateway replicas' requests and any client that reaches it directly. So the gateway reads each
ready replica's vLLM ``/metrics`` every ``interval`` seconds (``vllm:num_requests_running``,
``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``) and picks by an estimate of the
replica's whole load now (``estimated_loads``, pure):

    load = outstanding here now + max(0, running + waiting at the read − outstanding here at the read)

the second term being the others' requests as the replica last reported them. A replica whose KV
cache is at least ``KV_FULL`` used is about to queue (or preempt) whatever it is sent next, so
it counts ``KV_FULL_PENALTY`` more. A report older than ``max_age`` seconds (or none: the replica
is new, or its ``/metrics`` fails) adds nothing: the gateway's own count is used alone, as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import aiohttp

from modelplane.metrics.vllm import MetricsError, parse_vllm_metrics

log = logging.getLogger("modelplane.gateway")

#: KV-cache use from which a replica counts as full, and what being full adds to its load.
KV_FULL = 0.95
KV_FULL_PENALTY = 8


@dataclass(frozen=True)
class Report:
    """One read of a replica's ``/metrics``, with what this gateway had outstanding on it then."""

    running: float
    waiting: float
    kv_cache_usage: float
    outstanding_here: int
    at: float  #: time.monotonic() of the read


def estimated_loads(outstanding: Mapping[str, int], reports: Mapping[str, Report], *, now: float,
                    max_age: float) -> dict[str, int]:
    """Each address's estimated load now (see the module's docstring); addresses with neither a
    request outstanding nor a fresh report are left out (load 0)."""
    loads = {address: count for address, count in outstanding.items() if count > 0}
    for address, report in reports.items():
        if now - report.at > max_age:
            continue
        others = max(0, round(report.running + report.waiting) - report.outstanding_here)
        penalty = KV_FULL_PENALTY if report.kv_cache_usage >= KV_FULL else 0
        extra = others + penalty
        if extra:
            loads[address] = loads.get(address, 0) + extra
    return loads


class PodLoads:
    """Reads the replicas' ``/metrics`` on a beat; ``loads()`` is what picking uses."""

    def __init__(self, outstanding: Mapping[str, int], *, interval: float = 1.0, timeout: float = 0.5,
                 max_age: float = 3.0) -> None:
        self.outstanding = outstanding
        self.interval, self.timeout, self.max_age = interval, timeout, max_age
        self.reports: dict[str, Report] = {}

    def loads(self) -> Mapping[str, int]:
        if not self.reports:
            return self.outstanding
        return estimated_loads(self.outstanding, self.reports, now=time.monotonic(), max_age=self.max_age)

    async def run(self, addresses: Callable[[], Iterable[str]]) -> None:
        """Read every address ``addresses()`` gives, every ``interval`` s, until cancelled."""
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                started = time.monotonic()
                wanted = set(addresses())
                for gone in set(self.reports) - wanted:
                    del self.reports[gone]
                await asyncio.gather(*(self._read(http, a) for a in wanted))
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def _read(self, http: aiohttp.ClientSession, address: str) -> None:
        here = self.outstanding.get(address, 0)
        try:
            async with http.get(f"http://{address}/metrics") as response:
                text = await response.text()
            pod = parse_vllm_metrics(text, scraped_at=time.monotonic())
        except (aiohttp.ClientError, TimeoutError, OSError, MetricsError) as exc:
            log.debug("reading %s/metrics: %s", address, exc)
            self.reports.pop(address, None)  # no stale figure: the gateway's own count alone
            return
        self.reports[address] = Report(pod.running, pod.waiting, pod.kv_cache_usage, here, time.monotonic())
