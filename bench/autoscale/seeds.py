"""``python -m bench.autoscale.seeds``: the bursty trace over seeds the policy was not tuned on.

The main benchmark's bursty trace is one seed (3), the one the burst rhythm was developed on. This
plays 4-hour bursty traces of other seeds (same shape: spikes of 1.5–3 minutes to 24 req/s, 5–8
minutes apart) with our policy, static peak, the oracle and the oracle blind to timing (it knows
each spike's size but not when, within 5–8 minutes, it comes: the floor for a policy that learns
the schedule perfectly), and prints a row per seed and the range, so a reader can see how far the
main table's numbers generalize. About 100 s for the default 8 seeds on two cores; prints only.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial

from bench.autoscale import run, traces
from bench.autoscale.harness import RunResult


def one(seed: int, hours: float = 4.0) -> tuple[int, RunResult, RunResult, RunResult, RunResult]:
    trace = traces.bursty(hours * 3600.0, seed=seed)
    ours, static, oracle, blind = (run.run_one(trace, name) for name in (
        "modelplane", "static peak", "oracle", "oracle blind to timing"))
    return seed, ours, static, oracle, blind


def _cell(r: RunResult) -> str:
    return f"{r.gpu_hours:.1f} / {100 * r.slo_attainment:.1f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscale.seeds", description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(11, 19)))
    parser.add_argument("--hours", type=float, default=4.0, help="length of each trace (default 4)")
    args = parser.parse_args(argv)
    if args.hours <= 0:
        parser.error("--hours must be > 0")
    print("| seed | ours GPU-h / SLO | static peak | oracle | oracle blind to timing | below static | "
          "over oracle | blind over oracle | ours over blind |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    below, over, blind_over = [], [], []
    with ProcessPoolExecutor(max_workers=2) as pool:
        for seed, ours, static, oracle, blind in pool.map(partial(one, hours=args.hours), args.seeds):
            below.append(1 - ours.gpu_hours / static.gpu_hours)
            over.append(ours.gpu_hours / oracle.gpu_hours - 1)
            blind_over.append(blind.gpu_hours / oracle.gpu_hours - 1)
            print(f"| {seed} | {_cell(ours)} | {_cell(static)} | {_cell(oracle)} | {_cell(blind)} | "
                  f"{100 * below[-1]:.0f}% | {100 * over[-1]:+.0f}% | {100 * blind_over[-1]:+.0f}% | "
                  f"{100 * (ours.gpu_hours / blind.gpu_hours - 1):+.0f}% |", flush=True)
    print(f"\nbelow static peak {100 * min(below):.0f}–{100 * max(below):.0f}%, "
          f"over the oracle {100 * min(over):+.0f} to {100 * max(over):+.0f}%; "
          f"the oracle blind to timing {100 * min(blind_over):+.0f} to {100 * max(blind_over):+.0f}% over it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
