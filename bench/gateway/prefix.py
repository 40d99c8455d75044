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
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

from bench.gateway import prompts
from bench.gateway.prompts import TraceRequest
from modelplane.gateway.cache import StaticRoutes
from modelplane.gateway.server import Gateway, Settings, start
from modelplane.gateway.table import Backend, Endpoint
from modelplane_dev.sim.config import parse_vllm_args
from modelplane_dev.sim.quality import SimBehavior
from modelplane_dev.sim.server import SimServer

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- GATEWAY-PREFIX:BEGIN -->", "<!-- GATEWAY-PREFIX:END -->"
MODEL = "bench"
TARGET_TTFT_CUT = 0.40
TARGET_BUSIEST = 1.25


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
    ttft_p50: float  #: seconds, trace time
    ttft_p99: float
    busiest: float  #: the busiest replica's requests / the mean
    hit_share: float  #: prefix cache hits / queries, in tokens, over the replicas
    answered: int
    failed: int


# ---- pure parts ------------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) by the nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def busiest_over_mean(counts: Sequence[int]) -> float:
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
             "| workload | policy | TTFT p50 (s) | TTFT p99 (s) | busiest / mean | prefix hits | reuse ceiling "
             "| answered |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    verdicts = []
    for workload, reuse, outcomes in results:
        for o in outcomes:
            lines.append(f"| {workload.name} | {o.policy} | {o.ttft_p50:.3f} | {o.ttft_p99:.3f} | "
                         f"{o.busiest:.2f} | {o.hit_share:.0%} | {reuse:.0%} | {o.answered}"
                         f"{f' ({o.failed} failed)' if o.failed else ''} |")
        by = {o.policy: o for o in outcomes}
        if "least-request" in by and "prefix-affinity" in by:
            cut = 1 - by["prefix-affinity"].ttft_p50 / by["least-request"].ttft_p50
            busiest = by["prefix-affinity"].busiest
            verdicts.append(
                f"- **{workload.name}**: TTFT p50 {cut:+.0%} lower with prefix affinity "
                f"(target ≥ {TARGET_TTFT_CUT:.0%}: {'met' if cut >= TARGET_TTFT_CUT else 'missed'}), "
                f"p99 ratio {by['prefix-affinity'].ttft_p99 / by['least-request'].ttft_p99:.2f}; "
                f"busiest replica {busiest:.2f}× the mean (target ≤ {TARGET_BUSIEST}: "
                f"{'met' if busiest <= TARGET_BUSIEST else 'missed'}). {workload.description}")
    return "\n".join([*lines, "", *verdicts])


# ---- the run -----------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def replicas(workload: Workload) -> AsyncIterator[list[SimServer]]:
    config = parse_vllm_args(["serve", *workload.vllm_args, "--served-model-name", MODEL])
    config = replace(config, gpu_type=workload.gpu_type, host="127.0.0.1", port=0)
    servers = [SimServer(config, behavior=SimBehavior(latency_factor=1 / workload.speedup))
               for _ in range(workload.replicas)]
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


async def run_policy(workload: Workload, policy: str, *, prefix_chars: int, load_factor: float,
                     max_output: int) -> Outcome:
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
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                t0 = time.monotonic() + 0.5
                ttfts = await asyncio.gather(*(
                    one_request(http, f"http://127.0.0.1:{port}", r, max_output=max_output,
                                start_at=t0 + r.arrival_s) for r in workload.requests))
        finally:
            await runner.cleanup()
        served = [sum(n for (method, _, _), n in s.http_requests.items() if method == "POST") for s in servers]
        queries = sum(s.engine.stats.prefix_cache_queries for s in servers)
        hits = sum(s.engine.stats.prefix_cache_hits for s in servers)
        engine_ttft = (sum(s.engine.stats.ttft.sum for s in servers)
                       / max(1, sum(s.engine.stats.ttft.count for s in servers)) * workload.speedup)
    ok = [t * workload.speedup for t in ttfts if t is not None]
    print(f"    mean TTFT: client {statistics.fmean(ok):.3f} s, replicas' engines {engine_ttft:.3f} s", flush=True)
    return Outcome(policy=policy, ttft_p50=percentile(ok, 0.5), ttft_p99=percentile(ok, 0.99),
                   busiest=busiest_over_mean(served), hit_share=hits / queries if queries else 0.0,
                   answered=len(ok), failed=len(ttfts) - len(ok))


def workloads(*, quick: bool, only: str) -> list[Workload]:
    out = []
    if only in ("all", "mooncake"):
        window_s, speedup = (120.0, 4.0) if quick else (900.0, 4.0)
        out.append(Workload(
            name="mooncake-conversation",
            requests=tuple(prompts.window(prompts.load_mooncake(), start_s=0.0, duration_s=window_s,
                                          speedup=speedup, max_input_tokens=120_000)),
            replicas=4, speedup=speedup, vllm_args=("meta-llama/Llama-3.1-8B-Instruct", "--max-model-len",
                                                    "131072"),
            gpu_type="nvidia-h100-80gb",
            description=f"The trace's first {window_s:.0f} s, {speedup:.0f}× faster, on 4 replicas of "
                        "Llama 3.1 8B on H100 (KV cache 452k tokens each)."))
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
            description=f"24 tenants (Zipf 0.5), 4,096-token system prompts, 1-1,024-token user parts, 2 req/s "
                        f"for {duration_s:.0f} s (seed 1), {speedup:.0f}× faster, on 4 replicas of a 32B "
                        "model on H100 (KV cache 49.5k tokens each)."))
    return out


async def main_async(args: argparse.Namespace) -> str:
    results = []
    for workload in workloads(quick=args.quick, only=args.workload):
        reuse = reuse_share(workload.requests)
        print(f"{workload.name}: {len(workload.requests)} requests, reuse ceiling {reuse:.0%}", flush=True)
        outcomes = []
        for policy in ("least-request", "prefix-affinity"):
            outcome = await run_policy(workload, policy, prefix_chars=args.prefix_chars,
                                       load_factor=args.load_factor, max_output=args.max_output)
            print(f"  {outcome}", flush=True)
            outcomes.append(outcome)
        results.append((workload, reuse, outcomes))
    command = "python -m bench.gateway.prefix" + (" --quick" if args.quick else "")
    return markdown(results, command)


def write_readme(report: str) -> None:
    text = README.read_text()
    block = f"{BEGIN}\n{report}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Gateway prefix affinity (`python -m bench.gateway.prefix`)\n\n" + block + "\n"
    README.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway.prefix", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows (about a minute in all)")
    parser.add_argument("--workload", choices=("all", "mooncake", "tenants"), default="all")
    parser.add_argument("--prefix-chars", type=int, default=4096,
                        help="the gateway's --prefix-chars with prefix affinity (4096: 1,024 tokens)")
    parser.add_argument("--load-factor", type=float, default=1.25, help="the gateway's --affinity-load-factor")
    parser.add_argument("--max-output", type=int, default=16, help="cap on each request's output tokens")
    parser.add_argument("--write", action="store_true", help="put the table into bench/README.md")
    args = parser.parse_args(argv)
    report = asyncio.run(main_async(args))
    print(report)
    if args.write:
        write_readme(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
