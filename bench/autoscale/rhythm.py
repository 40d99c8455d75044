"""``python -m bench.autoscale.rhythm``: the burst rhythm with and without, on other bursty traces.

The main benchmark's bursty trace is one seed. This check runs our policy with the rhythm on (the
defaults) and off (``rhythm_min_gaps`` out of reach) over 4-hour bursty traces of other seeds —
spikes 5–8 minutes apart, where a rhythm exists — and over spikes at exponential (memoryless)
gaps of the same mean, where none does and the policy must keep holding its fleet. Static peak is
printed alongside. About a minute on two cores; prints only.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from concurrent.futures import ProcessPoolExecutor

from bench.autoscale import policies, run, traces
from bench.autoscale.harness import run as run_trace

DURATION = 4 * 3600.0


def one(job: tuple[str, int, bool]) -> str:
    kind, seed, rhythm = job
    trace = traces.bursty(DURATION, seed=seed, random_gaps=kind == "random-gaps")
    params = run.engine_params()
    built, initial = run.build_policies(trace, params)
    ours = built[0]
    assert isinstance(ours, policies.Ours)
    if not rhythm:
        ours.spec = dataclasses.replace(ours.spec, rhythm_gaps=10**6, rhythm_min_gaps=10**6)
    config = run.sim_config(params)
    r = run_trace(trace, ours, config, initial_replicas=initial)
    s = run_trace(trace, built[4], config, initial_replicas=initial)
    return (f"| {kind} | {seed} | {'on' if rhythm else 'off'} | {r.gpu_hours:.1f} | "
            f"{100 * r.slo_attainment:.1f}% | {s.gpu_hours:.1f} | {100 * s.slo_attainment:.1f}% |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscale.rhythm", description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[5, 9])
    args = parser.parse_args(argv)
    jobs = [(kind, seed, rhythm) for kind in ("bursty", "random-gaps") for seed in args.seeds
            for rhythm in (False, True)]
    print("| trace | seed | rhythm | ours GPU-h | ours SLO | static peak GPU-h | static SLO |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    with ProcessPoolExecutor(max_workers=2) as pool:
        for line in pool.map(one, jobs):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
