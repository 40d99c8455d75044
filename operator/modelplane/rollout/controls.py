"""Manual rollout controls: ``modelplane promote|pause|resume|abort NAME [-n NS]``.

Each sets the annotation ``modelplane.dev/rollout-control: <command>@<time>`` on the
ModelDeployment (a JSON merge patch of that one annotation, as the user: field manager
``modelplane-cli``). The time makes every control a new value, so it acts once and an operator
restart does not replay it. The operator only READS this annotation; it never writes annotations,
labels or spec of the object (a GitOps tool that owns the object keeps owning it — if it prunes
unknown annotations, the control has usually acted by then; the status says so in
``status.canary.handledControl``).

The same commands work as a kubectl plugin: the ``kubectl-modelplane`` console script dispatches
to this CLI, so ``kubectl modelplane promote support-chat -n team-a`` does the same. Credentials
are kubectl's: ``--kubeconfig``, ``--context``, ``$KUBECONFIG`` lists and exec credential plugins
(``modelplane.controller.credentials``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from modelplane.controller import credentials, kube
from modelplane.rollout.machine import CONTROL_ANNOTATION, Command

FIELD_MANAGER = "modelplane-cli"

_HELP = {
    Command.PROMOTE: "promote the canary now (skips the remaining steps; from Evaluating, the gate too)",
    Command.PAUSE: "hold the rollout at its current weight (before traffic: stop after the gate)",
    Command.RESUME: "resume a paused rollout (or retry a rolled-back revision the spec still names)",
    Command.ABORT: "roll the canary back; the revision is not retried until the spec changes",
}


def control_value(command: Command, now: datetime) -> str:
    """``promote@2026-11-26T10:00:00.123456Z``: the command and a unique id."""
    return f"{command.value}@{now.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"


def build_patch(command: Command, now: datetime) -> dict[str, Any]:
    return {"metadata": {"annotations": {CONTROL_ANNOTATION: control_value(command, now)}}}


async def send_control(client: kube.Kube, *, name: str, namespace: str, command: Command,
                       now: datetime | None = None) -> str:
    """Set the control annotation; returns the value set. Raises ``kube.NotFound`` for a wrong name."""
    patch = build_patch(command, now or datetime.now(UTC))
    await client.patch(kube.MODELDEPLOYMENTS, name, patch, namespace=namespace, field_manager=FIELD_MANAGER)
    return str(patch["metadata"]["annotations"][CONTROL_ANNOTATION])


def _run(args: argparse.Namespace) -> int:
    """Send one control; every ordinary failure is one line on stderr and exit code 1."""
    command = Command(args.control)
    prefix = f"modelplane {command.value}"
    try:
        config = credentials.from_args(args)
    except kube.ConfigError as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return 1
    namespace = args.namespace or config.namespace
    target = f"modeldeployment {args.name} in namespace {namespace}"

    async def go() -> str:
        async with kube.Kube(config) as client:
            return await send_control(client, name=args.name, namespace=namespace, command=command)

    try:
        value = asyncio.run(go())
    except Exception as exc:
        line = kube.cli_error(exc, config=config, action="patch", target=target, namespace=namespace)
        if line is None:
            raise
        print(f"{prefix}: {line}", file=sys.stderr)
        return 1
    print(f"modeldeployment {args.name}: {CONTROL_ANNOTATION}={value} "
          "(kubectl describe md shows what the operator did)")
    return 0


def register(subparsers: Any) -> None:
    for command in Command:
        parser = subparsers.add_parser(command.value, help=_HELP[command])
        parser.add_argument("name", help="the ModelDeployment")
        parser.add_argument("--namespace", "-n", default=None,
                            help="its namespace (default: the kubeconfig context's)")
        credentials.add_arguments(parser)
        parser.set_defaults(func=_run, control=command.value)


def kubectl_plugin(argv: Sequence[str] | None = None) -> int:
    """``kubectl modelplane …``: the same CLI, found by kubectl as ``kubectl-modelplane`` on PATH."""
    from modelplane.cli import main

    return main(list(sys.argv[1:] if argv is None else argv))
