"""``python -m bench.autoscale [--quick|--full] [--trace FILE --time-scale F --rate-scale R] [--real ...]``.

Runs every policy on the synthetic traces, a replayed CSV (the bundled sample unless ``--trace``
is given) and the real traces (Azure code, Mooncake conversation) at each of ``--real-scales``,
prints the table, writes it into bench/README.md between the RESULTS markers and one PNG
per trace under bench/autoscale/results/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.autoscale import run, traces
from bench.readme import replace_section

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
REAL = ("azure-code", "mooncake")

def markers(quick: bool) -> tuple[str, str]:
    """Where a run's table goes in bench/README.md: the quick and the full run each have a section."""
    tag = "RESULTS" if quick else "RESULTS-FULL"
    return f"<!-- {tag}:BEGIN -->", f"<!-- {tag}:END -->"


def build_traces(args: argparse.Namespace) -> list[traces.Trace]:
    duration = 1800.0 if args.quick else 4 * 3600.0
    out = [traces.steady(duration, rate=12.0), traces.diurnal(duration, low=2.0, high=24.0),
           traces.bursty(duration)]
    path = Path(args.trace) if args.trace else HERE / "sample_trace.csv"
    rate_scale = args.rate_scale if args.rate_scale is not None else (4.0 if not args.trace else 1.0)
    out.append(traces.load_csv(path, time_scale=args.time_scale, rate_scale=rate_scale))
    # The real traces whole (an hour each) in both modes: a shorter cut would be a different trace.
    out += [traces.real(name, rate_scale=scale) for name in args.real for scale in args.real_scales]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscale", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", default=True, help="30-minute traces (default)")
    mode.add_argument("--full", dest="quick", action="store_false", help="4-hour traces")
    parser.add_argument("--trace", help="CSV with TIMESTAMP,ContextTokens,GeneratedTokens (Azure format)")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiply the trace's time offsets (0.5 replays an hour in 30 minutes)")
    parser.add_argument("--rate-scale", type=float, default=None,
                        help="multiply the request rate (default 4 for the bundled sample, else 1)")
    parser.add_argument("--real", nargs="*", default=list(REAL), choices=REAL,
                        help="real traces to replay (default: both; none with an empty list)")
    parser.add_argument("--real-scales", nargs="+", type=float, default=[1.0, 3.0],
                        help="rate scales of the real traces (default 1 3)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    parser.add_argument("--no-sweep", action="store_true",
                        help="skip the iso-SLO sweep of the baselines' targets and static fleets")
    parser.add_argument("--no-write", action="store_true", help="print only; leave README and PNGs alone")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    trace_list = build_traces(args)
    results = run.run_all(trace_list, workers=args.workers, sweep=not args.no_sweep)
    main_results = run.main_results(results)
    elapsed = time.perf_counter() - started
    table = run.markdown_table(main_results)
    verdict = run.targets_table(results)
    iso = "" if args.no_sweep else (
        "\n\nAt our SLO (each baseline's and the oracle's cheapest run, of its default and the swept "
        "settings, whose SLO attainment is within half a point of ours or above; `not reached`: none "
        "is):\n\n"
        + run.iso_slo_table(results))
    objective = (f"\n\nWith a latency objective (`scaling.objective: {{ttft: {run.SLO_TTFT:g}s, percentile: "
                 f"{run.OBJECTIVE_PERCENTILE:g}}}`; each cell GPU-hours / SLO attainment; \"profile 2× "
                 f"optimistic\": the engine profile says the replicas are twice as fast as they are):\n\n"
                 + run.objective_table(results))
    traces_md = "\n".join(f"- `{t.name}`: {t.description}; {len(t.requests)} requests over "
                          f"{t.duration / 60:.0f} min" for t in trace_list)
    begin, end = markers(args.quick)
    section = (f"{begin}\nMode: {'quick' if args.quick else 'full'}; {elapsed:.0f} s on this machine.\n\n"
               f"{traces_md}\n\n{table}\n\nTargets (issue 18; each against the other policy's cheapest "
               f"run whose SLO attainment is ours or better, within half a point):\n\n{verdict}{iso}"
               f"{objective}\n{end}")
    print(section)
    if not args.no_write:
        for path in run.plot(main_results, HERE / "results" if args.quick else HERE / "results" / "full"):
            print(f"wrote {path.relative_to(HERE.parent.parent)}")
        replace_section(README, section, begin=begin, end=end)
        print(f"updated {README.relative_to(HERE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
