"""``modelplane get NAME [--watch]`` (and ``kubectl modelplane get``): a ModelDeployment's rollout
and autoscaler at a glance, live with ``--watch``.

One GET, drawn by ``modelplane.rollout.view.render``; with ``--watch``, a watch on that one object
(a field selector on its name) redraws it on every change, as ``kubectl argo rollouts get rollout
--watch`` does, and collects the autoscaler decisions it sees (status keeps only the last one). On
a terminal the screen is cleared before each redraw; otherwise views are separated by a blank line.
Ctrl-C ends the watch. Every failure is one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from pydantic import ValidationError

from modelplane.api.models import ScalingDecision
from modelplane.controller import credentials, kube
from modelplane.rollout.view import parse_status, render

CLEAR = "\x1b[H\x1b[2J"


class _Gone(Exception):
    """The object was deleted while watched."""


def _decision(obj: kube.Obj) -> ScalingDecision | None:
    status = parse_status(obj)
    return status.autoscaler.last_decision if status and status.autoscaler else None


async def show(client: kube.Kube, *, name: str, namespace: str, watch: bool, out: TextIO,
               clear: bool) -> None:
    """Print the view once, or redraw it on every change until cancelled. Raises ``kube.NotFound``."""
    obj = await client.get(kube.MODELDEPLOYMENTS, name, namespace=namespace)
    if obj is None:
        raise kube.NotFound(404, "NotFound", f"modeldeployment {name} in namespace {namespace} not found")
    decisions: list[ScalingDecision] = []
    drawn = 0

    def draw(current: kube.Obj) -> None:
        nonlocal drawn
        decision = _decision(current)
        if decision is not None and (not decisions or decisions[-1] != decision):
            decisions.append(decision)
        text = render(current, decisions=decisions, now=datetime.now(UTC))
        out.write((CLEAR if clear else ("\n" if drawn else "")) + text)
        out.flush()
        drawn += 1

    draw(obj)
    if not watch:
        return
    version = str(obj.get("metadata", {}).get("resourceVersion") or "")
    while True:
        try:
            async for event in client.watch(kube.MODELDEPLOYMENTS, namespace=namespace,
                                            field_selector=f"metadata.name={name}",
                                            resource_version=version or None, timeout_seconds=300):
                if event.type == "BOOKMARK":
                    version = str(event.object.get("metadata", {}).get("resourceVersion") or version)
                    continue
                if event.type == "DELETED":
                    raise _Gone
                if event.type == "ERROR":
                    version = ""  # expired (410): start again from the current object
                    break
                version = str(event.object.get("metadata", {}).get("resourceVersion") or version)
                draw(event.object)
        except kube.ApiError as exc:
            if exc.status != 410:
                raise
            version = ""
        if not version:
            fresh = await client.get(kube.MODELDEPLOYMENTS, name, namespace=namespace)
            if fresh is None:
                raise _Gone
            version = str(fresh.get("metadata", {}).get("resourceVersion") or "")
            draw(fresh)


def _run(args: argparse.Namespace) -> int:
    prefix = "modelplane get"
    try:
        config = credentials.from_args(args)
    except kube.ConfigError as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return 1
    namespace = args.namespace or config.namespace
    target = f"modeldeployment {args.name} in namespace {namespace}"

    async def go() -> None:
        async with kube.Kube(config) as client:
            await show(client, name=args.name, namespace=namespace, watch=args.watch, out=sys.stdout,
                       clear=args.watch and sys.stdout.isatty())

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        return 0
    except _Gone:
        print(f"{prefix}: {target} was deleted", file=sys.stderr)
        return 1
    except ValidationError as exc:
        print(f"{prefix}: the status of {target} is not one this version reads: "
              f"{kube.one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        line = kube.cli_error(exc, config=config, action="read", target=target, namespace=namespace)
        if line is None:
            raise
        print(f"{prefix}: {line}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "get", help="show a ModelDeployment's rollout (steps, scores, weights), autoscaler decisions and "
                    "conditions; --watch redraws it on every change")
    parser.add_argument("name", help="the ModelDeployment")
    parser.add_argument("--namespace", "-n", default=None, help="its namespace (default: the context's)")
    parser.add_argument("--watch", "-w", action="store_true", help="redraw on every change until Ctrl-C")
    credentials.add_arguments(parser)
    parser.set_defaults(func=_run)
