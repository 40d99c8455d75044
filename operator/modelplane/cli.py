"""The ``modelplane`` command: one entry point, one subcommand per component.

Each component owns its subcommands in its own module, which exposes
``register(subparsers) -> None`` and sets ``func`` (taking the parsed ``argparse.Namespace`` and
returning an exit code) on each parser it adds. Modules are imported here, so a broken one fails
loudly at start rather than hiding a subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Modules that contribute subcommands, in the order ``--help`` lists them.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "modelplane.devcluster.cli",
    "modelplane.run",
    "modelplane.demo",
    "modelplane.loadgen",
    "modelplane.sim.cli",
    "modelplane.planner.cli",
    "modelplane.controls",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelplane",
        description="Serve open-weight models on Kubernetes GPUs with vLLM.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
