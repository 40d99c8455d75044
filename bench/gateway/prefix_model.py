"""``python -m bench.gateway.prefix_model``: prefix affinity in virtual time, over many draws of addresses.

The real-time benchmark (``bench.gateway.prefix``) runs one fleet per policy, so it sees one draw
of the replicas' addresses — and with prefix affinity, which prefixes share a replica is decided by
a hash of the prefix and the address. This replays the same workloads in virtual time instead:
the simulator's engine model (``EngineModel``, prefix cache included) for each replica, the
gateway's own picking functions (``pick_endpoint``, ``pick_by_prefix``) fed with the requests each
replica has not finished (what the gateway counts as outstanding), and ``draws`` sets of random
addresses. It reports, per policy and load factor, the TTFT p50 and the busiest replica's requests
over the mean: the median and the worst over the draws. No sockets, no gateway process, no client:
a few seconds a run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

from bench.gateway import prompts
from bench.gateway.prefix import busiest_over_mean, percentile
from bench.gateway.prompts import TraceRequest
from modelplane.gateway.picking import pick_by_prefix, pick_endpoint
from modelplane.gateway.table import Endpoint
from modelplane.planner.performance import EngineParams
from modelplane_dev.sim.config import SimConfig
from modelplane_dev.sim.engine import EngineModel, EventKind
from modelplane_dev.sim.prefix import text_block_hashes


@dataclass(frozen=True)
class Replay:
    ttft_p50: float
    busiest: float  #: the busiest replica's requests / the mean
    hit_share: float


def replay(requests: Sequence[TraceRequest], params: EngineParams, addresses: Sequence[str], *,
           prefix_chars: int, load_factor: float | None, max_output: int, seed: int = 0) -> Replay:
    """Replays ``requests`` on one replica per address; ``load_factor`` None: least outstanding."""
    engines = {a: EngineModel(params) for a in addresses}
    endpoints = [Endpoint(a) for a in addresses]
    outstanding = dict.fromkeys(addresses, 0)
    served = dict.fromkeys(addresses, 0)
    arrivals: dict[str, float] = {}
    ttfts: list[float] = []
    rng = random.Random(seed)

    def advance(now: float) -> None:
        for address, engine in engines.items():
            for event in engine.advance(now):
                if event.kind is EventKind.FIRST_TOKEN:
                    ttfts.append(event.time - arrivals[event.request_id])
                elif event.kind is EventKind.FINISHED:
                    outstanding[address] -= 1

    for i, request in enumerate(requests):
        advance(request.arrival_s)
        text = prompts.prompt_text(request)
        if load_factor is None or len(text) < prefix_chars:
            endpoint = pick_endpoint(endpoints, outstanding, u=rng.random())
        else:
            endpoint = pick_by_prefix(endpoints, outstanding, prefix=text[:prefix_chars],
                                      load_factor=load_factor)
        assert endpoint is not None
        output = max(1, min(request.output_tokens, max_output))
        if request.input_tokens + output > params.max_model_len:
            continue
        arrivals[str(i)] = request.arrival_s
        engines[endpoint.address].submit(str(i), request.input_tokens, output, request.arrival_s,
                                         blocks=text_block_hashes(text))
        outstanding[endpoint.address] += 1
        served[endpoint.address] += 1
    advance(max((r.arrival_s for r in requests), default=0.0) + 1e6)  # everything finished
    queries = sum(e.stats.prefix_cache_queries for e in engines.values())
    hits = sum(e.stats.prefix_cache_hits for e in engines.values())
    return Replay(ttft_p50=percentile(ttfts, 0.5), busiest=busiest_over_mean(list(served.values())),
                  hit_share=hits / queries if queries else 0.0)


def random_addresses(rng: random.Random, n: int) -> list[str]:
    return [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}:8000" for _ in range(n)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway.prefix_model",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--workload", choices=("tenants", "mooncake"), default="tenants")
    parser.add_argument("--draws", type=int, default=8, help="sets of random replica addresses")
    parser.add_argument("--load-factors", type=float, nargs="+", default=[1.0, 1.25])
    parser.add_argument("--prefix-chars", type=int, default=4096)
    parser.add_argument("--max-output", type=int, default=16)
    args = parser.parse_args(argv)
    if args.workload == "tenants":  # as bench.gateway.prefix's full run
        requests = prompts.synthetic_tenants(seed=1, tenants=24, system_blocks=8, zipf_s=0.5, rate=2.0,
                                             duration_s=600.0)
        config = SimConfig(model="Qwen/Qwen3-32B", max_model_len=32768)
    else:
        requests = prompts.window(prompts.load_mooncake(), start_s=0.0, duration_s=900.0,
                                  max_input_tokens=120_000)
        config = SimConfig(model="meta-llama/Llama-3.1-8B-Instruct", max_model_len=131072)
    params = replace(config, gpu_type="nvidia-h100-80gb").engine_params()
    rng = random.Random(1)
    draws = [random_addresses(rng, 4) for _ in range(args.draws)]
    print(f"{args.workload}: {len(requests)} requests, 4 replicas, {args.draws} draws of addresses")
    policies: list[tuple[str, float | None]] = [("least-request", None)] + [
        (f"prefix-affinity {lf:g}", lf) for lf in args.load_factors]
    for name, factor in policies:
        runs = [replay(requests, params, addresses, prefix_chars=args.prefix_chars, load_factor=factor,
                       max_output=args.max_output) for addresses in draws]
        busiest = [r.busiest for r in runs]
        print(f"  {name:22} TTFT p50 {statistics.median(r.ttft_p50 for r in runs):.3f} s "
              f"(draws {min(r.ttft_p50 for r in runs):.3f}-{max(r.ttft_p50 for r in runs):.3f}), "
              f"hits {statistics.median(r.hit_share for r in runs):.0%}, busiest/mean median "
              f"{statistics.median(busiest):.2f}, worst {max(busiest):.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
