"""The ``modelplane`` command: one entry point, one subcommand per component.

Each component owns its subcommands in its own module, which exposes
``register(subparsers) -> None`` and sets ``func`` (taking the parsed ``argparse.Namespace`` and
returning an exit code) on each parser it adds. Modules are imported here, so a broken one fails
loudly at start rather than hiding a subcommand.

The operator's own subcommands are listed here; the developer tools (``modelplane_dev``, a separate
distribution) add theirs (``cluster``, ``demo``, ``load``, ``sim``) through the
``modelplane.commands`` entry points, so the operator image has none of them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import NoReturn

from modelplane import __version__
from modelplane.controller import credentials

#: Modules that contribute subcommands, in the order ``--help`` lists them.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "modelplane.controller.run",
    "modelplane.gateway.run",
    "modelplane.planner.cli",
    "modelplane.rollout.controls",
    "modelplane.rollout.get",
    "modelplane.usagecli",
)
#: The entry-point group through which other distributions add subcommand modules.
PLUGIN_GROUP = "modelplane.commands"


def subcommand_modules() -> list[str]:
    """The operator's subcommand modules, then those of installed plugins, by entry-point name."""
    plugins = sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name)
    return [*SUBCOMMAND_MODULES, *(ep.value for ep in plugins)]


class _Parser(argparse.ArgumentParser):
    """A usage error is one line (the command, what is wrong, where the help is), not the usage dump.

    Subcommand parsers are made with the parent's class, so this holds for every subcommand.
    """

    #: The subcommands' parsers by name (on the top-level parser).
    commands: Mapping[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> _Parser:
    parser = _Parser(
        prog="modelplane",
        description="Serve open-weight models on Kubernetes GPUs with vLLM.",
    )
    parser.add_argument("--version", action="version", version=f"modelplane {__version__}")
    credentials.add_arguments(parser, top_level=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in subcommand_modules():
        importlib.import_module(name).register(subparsers)
    parser.commands = subparsers.choices
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Said by the subcommand's parser, so the line points at its --help.
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
