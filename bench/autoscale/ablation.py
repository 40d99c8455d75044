"""``python -m bench.autoscale.ablation``: what each of our policy's rules gains, trace by trace.

Runs our policy (the benchmark's settings, ``bench.autoscale.run.build_policies``) with every rule
on, with each optional rule (``modelplane.autoscaler.policy.Rule``) off in turn, and with all of
them off, over the synthetic traces and the real ones (Azure code, Mooncake conversation) at each
rate scale. Turning a rule off changes GPU-hours and SLO attainment; to weigh one against the other
a point of SLO attainment counts as 1% of GPU-hours (``POINT_IS``): a rule *pays* on a trace when
turning it off costs more than ``GPU_TOLERANCE`` so weighed, *hurts* when it gains that much, and
does *none* otherwise. The raw numbers are in every cell, so another rate can be read off them.
Prints a markdown table; ``--write`` puts it in bench/README.md between the ABLATION markers.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.autoscale import policies, run, traces
from bench.autoscale.harness import RunResult
from bench.autoscale.harness import run as run_trace
from bench.readme import replace_section
from modelplane.autoscaler.policy import DEFAULT_RULES, Rule

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- ABLATION:BEGIN -->", "<!-- ABLATION:END -->"
#: A net effect within this share of GPU-hours counts as none.
GPU_TOLERANCE = 0.01
#: A point of SLO attainment weighs as much as this share of GPU-hours.
POINT_IS = 0.01
ALL, NONE = "all rules", "no optional rule"


def variants(rules: frozenset[Rule] = DEFAULT_RULES) -> list[tuple[str, frozenset[Rule]]]:
    """(label, rules on): all of ``rules``, each one of them off, none."""
    out = [(ALL, rules)]
    out += [(f"without {rule.value}", rules - {rule}) for rule in Rule if rule in rules]
    out.append((NONE, frozenset()))
    return out


def one(job: tuple[traces.Trace, str, frozenset[Rule]]) -> tuple[str, str, RunResult]:
    trace, label, rules = job
    params = run.engine_params()
    cold = run.cold_start_of(trace)
    built, initial = run.build_policies(trace, params, cold_start=cold)
    ours = built[0]
    assert isinstance(ours, policies.Ours)
    ours.spec = dataclasses.replace(ours.spec, rules=rules)
    return trace.name, label, run_trace(trace, ours, run.sim_config(params, cold_start=cold),
                                        initial_replicas=initial)


@dataclass(frozen=True)
class Effect:
    gpu: float  #: GPU-hours with the rule off over with it on, minus 1 (0.1: off costs 10% more)
    slo: float  #: SLO attainment with it on minus with it off (0.02: the rule gains 2 points)

    @property
    def net(self) -> float:
        """What turning the rule off costs, in shares of GPU-hours (negative: it saves)."""
        return self.gpu + self.slo * 100 * POINT_IS

    @property
    def verdict(self) -> str:
        if self.net > GPU_TOLERANCE:
            return "pays"
        return "hurts" if self.net < -GPU_TOLERANCE else "none"


def effect(with_rule: RunResult, without: RunResult) -> Effect:
    return Effect(gpu=without.gpu_hours / with_rule.gpu_hours - 1,
                  slo=with_rule.slo_attainment - without.slo_attainment)


def table(results: Sequence[tuple[str, str, RunResult]]) -> str:
    names = list(dict.fromkeys(t for t, _, _ in results))
    labels = list(dict.fromkeys(label for _, label, _ in results))
    by = {(t, label): r for t, label, r in results}
    head = "| variant | " + " | ".join(names) + " | pays on | hurts on |"
    lines = [head, "| --- | " + " | ".join("---:" for _ in names) + " | ---: | ---: |"]
    for label in labels:
        cells, pays, hurts = [], 0, 0
        for t in names:
            r, base = by[(t, label)], by[(t, ALL)]
            cell = f"{r.gpu_hours:.2f} / {100 * r.slo_attainment:.1f}%"
            if label != ALL:
                e = effect(base, r)
                cell += f" ({100 * e.gpu:+.0f}%, {100 * -e.slo:+.1f} pt: {e.verdict})"
                pays += e.verdict == "pays"
                hurts += e.verdict == "hurts"
            cells.append(cell)
        tail = " – | – |" if label == ALL else f" {pays} | {hurts} |"
        lines.append(f"| {label} | " + " | ".join(cells) + " |" + tail)
    return "\n".join(lines)


def trace_set(*, full: bool, scales: Sequence[float]) -> list[traces.Trace]:
    duration = 4 * 3600.0 if full else 1800.0
    out = [traces.steady(duration, rate=12.0), traces.diurnal(duration, low=2.0, high=24.0),
           traces.bursty(duration)]
    out += [traces.real(name, rate_scale=s) for name in ("azure-code", "mooncake") for s in scales]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscale.ablation", description=__doc__)
    parser.add_argument("--full", action="store_true", help="4-hour synthetic traces (default 30 min)")
    parser.add_argument("--real-scales", nargs="+", type=float, default=[1.0, 3.0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="write the table into bench/README.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    trace_list = trace_set(full=args.full, scales=args.real_scales)
    jobs = [(t, label, rules) for t in trace_list for label, rules in variants()]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(one, jobs))
    elapsed = time.perf_counter() - started
    command = "python -m bench.autoscale.ablation" + (" --full" if args.full else "")
    section = (f"{BEGIN}\n`{command}` ({elapsed:.0f} s on this machine). Each cell: GPU-hours / SLO "
               f"attainment; for a variant, (GPU-hours vs all rules, SLO vs all rules: the verdict on "
               f"the rule turned off, a point of SLO weighed as {100 * POINT_IS:g}% of GPU-hours).\n\n"
               f"{table(results)}\n{END}")
    print(section)
    if args.write:
        replace_section(README, section, begin=BEGIN, end=END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
