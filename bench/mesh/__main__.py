"""``python -m bench.mesh [--rate-scale R] [--trace FILE]``: the model mesh's overflow route against
self-hosted only and external only (``bench/mesh/run.py``); writes its section of bench/README.md."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.autoscale import traces
from bench.mesh import run
from bench.readme import replace_section

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- MESH:BEGIN -->", "<!-- MESH:END -->"
HEADING = ("## The model mesh: overflow to an API vs self-hosted vs external "
           "(`python -m bench.mesh`)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mesh", description=__doc__)
    parser.add_argument("--trace", type=Path, default=run.TRACE,
                        help="an Azure-format CSV (default: the code trace)")
    parser.add_argument("--rate-scale", type=float, default=1.0,
                        help="multiply the trace's rate (default 1: the trace as recorded)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/README.md alone")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    trace = traces.load_csv(args.trace, rate_scale=args.rate_scale)
    outcomes = run.run_all(trace)
    elapsed = time.perf_counter() - started
    command = f"python -m bench.mesh --rate-scale {args.rate_scale:g}"
    section = (f"{BEGIN}\n{run.__doc__.strip() if run.__doc__ else ''}\n\n"
               f"Trace: {trace.description}; {len(trace.requests)} requests over "
               f"{trace.duration / 60:.0f} min. {elapsed:.0f} s on this machine (`{command}`).\n\n"
               f"{run.table(outcomes)}\n\n"
               "Total $ as the API's price varies (bold: the cheapest at >= 99% SLO):\n\n"
               f"{run.price_table(outcomes)}\n\n{run.verdict(outcomes)}\n{run.crossover(outcomes)}\n{END}")
    print(section)
    if not args.no_write:
        replace_section(README, section, begin=BEGIN, end=END, heading=HEADING)
        print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
