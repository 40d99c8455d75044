"""``python -m bench.gateway.prefix [--quick]``: prefix affinity against least-request routing.

Issue 15's target: on the Mooncake conversation trace and on a synthetic mix of tenants with long
system prompts, routing by prefix affinity gives ≥ 40% lower TTFT p50 than least-request routing on
the same replicas, with the busiest replica's load ≤ 1.25× the mean.

For each workload (``prompts.py``) and each policy, in one process on real sockets:

1. start ``replicas`` vLLM simulators (``modelplane_dev.sim``, prefix caching on, cold caches),
   every step ``speedup`` times faster than the GPU's pace (``SimBehavior.latency_factor``);
2. start the real gateway (``modelplane.gateway.server.Gateway``) in front of them, its table fed by
   hand; least-request is its default picking, prefix affinity is ``--prefix-chars``;
3. replay a window of the trace, ``speedup`` times faster, as streaming ``/v1/completions`` whose
   prompt is the trace's blocks turned into text; each request's output is its trace's output
   length, capped at ``--max-output`` (each token is an SSE chunk through the gateway; the cap keeps
   a 2-core machine from measuring its own CPU);
4. TTFT is the client's: from sending to the first streamed token, multiplied by ``speedup`` (so in
   the trace's seconds); a replica's load is the requests it served.

Time-scaling everything by ``speedup`` keeps the queueing and the prefill the same as in real time,
except the gateway's and the client's own overhead (≈ 1 ms), which is multiplied by ``speedup``.

The report also gives, per workload, the share of prompt tokens that any cache could have served
(``reuse``: a token whose 512-token trace block, and every block before it, appeared in an earlier
request of the window) — the ceiling of any routing's hits — and the hits each policy got (the
simulators' ``vllm:prefix_cache_hits`` / ``queries``). It is printed and, with ``--write``, put in
bench/README.md between the GATEWAY-PREFIX markers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

from bench.gateway import prompts
from bench.gateway.prompts import TraceRequest
from modelplane.gateway.cache import StaticRoutes
from modelplane.gateway.server import Gateway, Settings, start
from modelplane.gateway.table import Backend, Endpoint
from modelplane_dev.sim.config import parse_vllm_args
from modelplane_dev.sim.engine import EngineModel, Event, EventKind
from modelplane_dev.sim.prefix import BlockHash
from modelplane_dev.sim.quality import SimBehavior
from modelplane_dev.sim.server import SimServer, offloading

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- GATEWAY-PREFIX:BEGIN -->", "<!-- GATEWAY-PREFIX:END -->"
MODEL = "bench"
TARGET_TTFT_CUT = 0.40
TARGET_BUSIEST = 1.25
#: The flags a report's command line shows when they differ from these.
COMMAND_DEFAULTS: dict[str, object] = {"workload": "all", "prefix_chars": 4096,
                                       "load_factor": Settings.affinity_load_factor,
                                       "max_output": 16, "offload_gib": 0.0}


@dataclass(frozen=True)
class Workload:
    name: str
    requests: tuple[TraceRequest, ...]
    replicas: int
    speedup: float
    vllm_args: tuple[str, ...]  #: the replicas' ``vllm serve`` args
    gpu_type: str
    description: str


@dataclass(frozen=True)
class Outcome:
    policy: str
    ttft_p50: float  #: seconds, trace time, as the client saw it
    ttft_p99: float
    replica_ttft_p50: float  #: seconds, trace time, as the replicas' engines timed it (no client or gateway)
    busiest: float  #: the busiest replica's requests served / the mean
    busiest_queue: float  #: the busiest replica's mean requests in its engine (running + waiting) / the mean
    hit_share: float  #: prefix cache hits / queries, in tokens, over the replicas
    answered: int
    failed: int


# ---- pure parts ------------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) by the nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = math.ceil(q * len(ordered) - 1e-9)  # the nearest rank, 1-based
    return ordered[min(len(ordered), max(rank, 1)) - 1]


def busiest_over_mean(counts: Sequence[float]) -> float:
    """The largest of ``counts`` over their mean (1.0: perfectly even; NaN when all are 0)."""
    total = sum(counts)
    return max(counts) / (total / len(counts)) if total else float("nan")


def reuse_share(requests: Sequence[TraceRequest]) -> float:
    """The share of prompt tokens in leading trace blocks already seen in an earlier request."""
    seen: set[int] = set()
    reused = total = 0
    for request in requests:
        leading = 0
        for hash_id in request.hash_ids:
            if hash_id not in seen:
                break
            leading += 1
        reused += min(leading * prompts.TRACE_BLOCK_TOKENS, request.input_tokens)
        total += request.input_tokens
        seen.update(request.hash_ids)
    return reused / total if total else 0.0


def markdown(results: Sequence[tuple[Workload, float, Sequence[Outcome]]], command: str) -> str:
    lines = [f"`{command}`", "",
             "| workload | policy | TTFT p50 (s) | TTFT p99 (s) | replica TTFT p50 (s) "
             "| busiest / mean: requests | queue | prefix hits | reuse ceiling | answered |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    verdicts = []
    for workload, reuse, outcomes in results:
        for o in outcomes:
            lines.append(f"| {workload.name} | {o.policy} | {o.ttft_p50:.3f} | {o.ttft_p99:.3f} | "
                         f"{o.replica_ttft_p50:.3f} | "
                         f"{o.busiest:.2f} | {o.busiest_queue:.2f} | {o.hit_share:.0%} | {reuse:.0%} | "
                         f"{o.answered}"
                         f"{f' ({o.failed} failed)' if o.failed else ''} |")
        by = {o.policy: o for o in outcomes}
        if "least-request" in by and "prefix-affinity" in by:
            cut = 1 - by["prefix-affinity"].ttft_p50 / by["least-request"].ttft_p50
            affinity = by["prefix-affinity"]
            busiest = max(affinity.busiest, affinity.busiest_queue)
            verdicts.append(
                f"- **{workload.name}**: TTFT p50 {cut:.0%} lower with prefix affinity "
                f"(target ≥ {TARGET_TTFT_CUT:.0%}: {'met' if cut >= TARGET_TTFT_CUT else 'missed'}), "
                f"p99 ratio {affinity.ttft_p99 / by['least-request'].ttft_p99:.2f}, replica-timed p50 "
                f"{1 - affinity.replica_ttft_p50 / by['least-request'].replica_ttft_p50:.0%} lower; "
                f"busiest replica "
                f"{affinity.busiest:.2f}× the mean in requests, {affinity.busiest_queue:.2f}× in queue "
                f"(target ≤ {TARGET_BUSIEST}: {'met' if busiest <= TARGET_BUSIEST else 'missed'}). "
                f"{workload.description}")
    return "\n".join([*lines, "", *verdicts])


# ---- the run -----------------------------------------------------------------------------------------

class RecordingEngine(EngineModel):
    """The simulator's engine, keeping each request's time to first token as the engine timed it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: dict[str, float] = {}
        self.ttfts: list[float] = []

    def submit(self, request_id: str, prompt_tokens: int, max_tokens: int, now: float, *,
               output_tokens: int | None = None, blocks: Sequence[BlockHash] = ()) -> None:
        super().submit(request_id, prompt_tokens, max_tokens, now, output_tokens=output_tokens, blocks=blocks)
        self.arrivals[request_id] = now

    def advance(self, now: float) -> list[Event]:
        events = super().advance(now)
        for event in events:
            if event.kind is EventKind.FIRST_TOKEN:
                self.ttfts.append(event.time - self.arrivals[event.request_id])
        return events


@contextlib.asynccontextmanager
async def replicas(workload: Workload) -> AsyncIterator[list[SimServer]]:
    config = parse_vllm_args(["serve", *workload.vllm_args, "--served-model-name", MODEL])
    config = replace(config, gpu_type=workload.gpu_type, host="127.0.0.1", port=0)
    behavior = SimBehavior(latency_factor=1 / workload.speedup)
    servers = [SimServer(config, behavior=behavior) for _ in range(workload.replicas)]
    for server in servers:  # the same engine as SimServer builds, recording
        server.engine = RecordingEngine(server.params, start=time.monotonic(),
                                        prefix_caching=config.enable_prefix_caching,
                                        **offloading(config, behavior.latency_factor))
    try:
        for server in servers:
            await server.start()
        yield servers
    finally:
        for server in servers:
            await server.stop()


async def one_request(http: aiohttp.ClientSession, url: str, request: TraceRequest, *, max_output: int,
                      start_at: float) -> float | None:
    """Sends ``request`` at ``start_at`` (loop time); its TTFT in wall seconds, None when it failed."""
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    body = {"model": MODEL, "prompt": prompts.prompt_text(request), "stream": True,
            "max_tokens": max(1, min(request.output_tokens, max_output)), "ignore_eos": True}
    sent = time.monotonic()
    ttft: float | None = None
    try:
        async with http.post(f"{url}/v1/completions", json=body) as response:
            if response.status != 200:
                await response.read()
                return None
            async for line in response.content:
                if ttft is None and line.startswith(b"data: {"):
                    ttft = time.monotonic() - sent
            return ttft
    except aiohttp.ClientError:
        return None


async def sample_queues(servers: Sequence[SimServer], sums: list[float], stop: asyncio.Event) -> None:
    """Adds each replica's running + waiting requests to ``sums`` every 20 ms until ``stop``."""
    while not stop.is_set():
        for i, server in enumerate(servers):
            server.pump()
            sums[i] += server.engine.num_running + server.engine.num_waiting
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.02)


async def run_policy(workload: Workload, policy: str, *, prefix_chars: int, load_factor: float,
                     max_output: int, t0: float) -> Outcome:
    settings = Settings(prefix_chars=prefix_chars if policy == "prefix-affinity" else 0,
                        affinity_load_factor=load_factor)
    async with replicas(workload) as servers:
        routes = StaticRoutes()
        routes.set_backends([Backend(namespace="bench", name=MODEL, served_name=MODEL, phase="Ready",
                                     endpoints=tuple(Endpoint(f"{s.host}:{s.port}", f"replica-{i}", "r")
                                                     for i, s in enumerate(servers)))])
        runner, port = await start(Gateway(routes, settings), host="127.0.0.1", port=0, shutdown_timeout=1.0)
        try:
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=None)
            queue_sums = [0.0] * len(servers)
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_queues(servers, queue_sums, stop))
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                ttfts = await asyncio.gather(*(
                    one_request(http, f"http://127.0.0.1:{port}", r, max_output=max_output,
                                start_at=t0 + r.arrival_s) for r in workload.requests))
            stop.set()
            await sampler
        finally:
            await runner.cleanup()
        served = [sum(n for (method, _, _), n in s.http_requests.items() if method == "POST")
                  for s in servers]
        queries = sum(s.engine.stats.prefix_cache_queries for s in servers)
        hits = sum(s.engine.stats.prefix_cache_hits for s in servers)
        replica_ttfts = [t * workload.speedup for s in servers if isinstance(s.engine, RecordingEngine)
                         for t in s.engine.ttfts]
    ok = [t * workload.speedup for t in ttfts if t is not None]
    print(f"    {policy}: mean TTFT client {statistics.fmean(ok):.3f} s, replicas' engines "
          f"{statistics.fmean(replica_ttfts):.3f} s; requests served {served}", flush=True)
    return Outcome(policy=policy, ttft_p50=percentile(ok, 0.5), ttft_p99=percentile(ok, 0.99),
                   replica_ttft_p50=percentile(replica_ttfts, 0.5),
                   busiest=busiest_over_mean(served),
                   busiest_queue=busiest_over_mean(queue_sums), hit_share=hits / queries if queries else 0.0,
                   answered=len(ok), failed=len(ttfts) - len(ok))


def workloads(*, quick: bool, only: str, offload_gib: float) -> list[Workload]:
    out = []
    if only in ("all", "mooncake"):
        window_s, speedup = (120.0, 4.0) if quick else (900.0, 4.0)
        requests = tuple(prompts.window(prompts.load_mooncake(), start_s=0.0, duration_s=window_s,
                                        speedup=speedup, max_input_tokens=120_000))
        base = ("meta-llama/Llama-3.1-8B-Instruct", "--max-model-len", "131072")
        where = (f"The trace's first {window_s:.0f} s, {speedup:.0f}× faster, on 4 replicas of Llama 3.1 8B "
                 "on H100 (KV cache 452k tokens each)")
        out.append(Workload(name="mooncake-conversation", requests=requests, replicas=4, speedup=speedup,
                            vllm_args=base, gpu_type="nvidia-h100-80gb", description=f"{where}."))
        if offload_gib > 0:
            out.append(Workload(
                name=f"mooncake-conversation, {offload_gib:g} GiB CPU tier", requests=requests, replicas=4,
                speedup=speedup, vllm_args=(*base, "--kv-offloading-backend", "native",
                                            "--kv-offloading-size", f"{offload_gib:g}"),
                gpu_type="nvidia-h100-80gb",
                description=f"{where}, each with {offload_gib:g} GiB of host memory for offloaded KV blocks "
                            f"({offload_gib * 2**30 / (128 * 2**10) / 1e6:.1f}M tokens)."))
    if only in ("all", "tenants"):
        duration_s, speedup = (90.0, 4.0) if quick else (600.0, 4.0)
        out.append(Workload(
            name="tenants",
            requests=tuple(prompts.window(prompts.synthetic_tenants(seed=1, tenants=24, system_blocks=8,
                                                                    zipf_s=0.5, rate=2.0,
                                                                    duration_s=duration_s),
                                          start_s=0.0, duration_s=duration_s, speedup=speedup)),
            replicas=4, speedup=speedup, vllm_args=("Qwen/Qwen3-32B", "--max-model-len", "32768"),
            gpu_type="nvidia-h100-80gb",
            description=f"24 tenants (Zipf 0.5), 4,096-token system prompts, 1-1,024-token user parts, "
                        "2 req/s "
                        f"for {duration_s:.0f} s (seed 1), {speedup:.0f}× faster, on 4 replicas of a 32B "
                        "model on H100 (KV cache 49.5k tokens each)."))
    return out


async def main_async(args: argparse.Namespace) -> str:
    results = []
    for workload in workloads(quick=args.quick, only=args.workload, offload_gib=args.offload_gib):
        reuse = reuse_share(workload.requests)
        print(f"{workload.name}: {len(workload.requests)} requests, reuse ceiling {reuse:.0%}", flush=True)
        # Both policies at once, each with its own gateway and replicas, on the same clock: whatever else
        # the machine does slows both alike.
        t0 = time.monotonic() + 1.0
        outcomes = await asyncio.gather(*(
            run_policy(workload, policy, prefix_chars=args.prefix_chars, load_factor=args.load_factor,
                       max_output=args.max_output, t0=t0) for policy in ("least-request", "prefix-affinity")))
        results.append((workload, reuse, outcomes))
    flags = [f"--{flag.replace('_', '-')} {format_flag(getattr(args, flag))}"
             for flag, default in COMMAND_DEFAULTS.items() if getattr(args, flag) != default]
    command = " ".join(["python -m bench.gateway.prefix", *(["--quick"] if args.quick else []), *flags])
    return markdown(results, command)


def format_flag(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def write_readme(report: str) -> None:
    text = README.read_text()
    block = f"{BEGIN}\n{report}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = f"{text.rstrip()}\n\n{block}\n"
    README.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway.prefix",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows (about a minute in all)")
    parser.add_argument("--workload", choices=("all", "mooncake", "tenants"), default="all")
    parser.add_argument("--prefix-chars", type=int, default=4096,
                        help="the gateway's --prefix-chars with prefix affinity (4096: 1,024 tokens)")
    parser.add_argument("--load-factor", type=float, default=Settings.affinity_load_factor,
                        help="the gateway's --affinity-load-factor (default: the gateway's)")
    parser.add_argument("--max-output", type=int, default=16, help="cap on each request's output tokens")
    parser.add_argument("--offload-gib", type=float, default=0.0,
                        help="also replay the Mooncake trace on replicas with this much CPU KV offloading")
    parser.add_argument("--write", action="store_true", help="put the table into bench/README.md")
    args = parser.parse_args(argv)
    report = asyncio.run(main_async(args))
    print(report)
    if args.write:
        write_readme(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
