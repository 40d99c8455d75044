"""``modelplane usage``: spend by team, model and backend, from the gateways' metrics or a Prometheus;
``modelplane team-key``: a new team API key and the Secret that stores its hash.

``usage`` reads ``modelplane_gateway_spend_*`` (``gateway/spend.py``):

- from the gateway replicas' /metrics (``--metrics-url``, repeatable; or ``--gateway-selector``
  with ``--gateway-namespace`` to find their pods), summed over the replicas: the totals since
  each started, or with ``--window 5m`` what was spent over the next five minutes (two readings);
- from a Prometheus that scrapes them (``--prometheus URL --window 30d``): ``increase`` over the
  window, so restarts of the gateways do not lose spend.

Each row: team, model (what clients sent: a ModelRoute or a served name), backend, prompt and
generated tokens, $ self-hosted, $ external, and what the same tokens would have cost at the
reference price; then the total, and the saving against the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import yaml

from modelplane import durations
from modelplane.controller import credentials, kube
from modelplane.controller.gateways import metrics_urls
from modelplane.gateway.teams import MONTHLY_BUDGET, TEAM_LABEL, TOKENS_PER_MINUTE, hash_key, new_key
from modelplane.metrics.spendtext import Report, Spend, from_exposition, from_prometheus, prometheus_queries


def render(report: Report) -> str:
    header = ("TEAM", "MODEL", "BACKEND", "PROMPT TOK", "GEN TOK", "$ SELF-HOSTED", "$ EXTERNAL", "$ TOTAL",
              "$ AT REFERENCE")
    lines = [header]
    total = Spend()
    for (team, model, backend), s in sorted(report.rows.items()):
        lines.append((team or "-", model, backend, f"{s.prompt_tokens:.0f}", f"{s.completion_tokens:.0f}",
                      f"{s.self_hosted_usd:.4f}", f"{s.external_usd:.4f}",
                      f"{s.self_hosted_usd + s.external_usd:.4f}", f"{s.reference_usd:.4f}"))
        total = total.plus(s)
    spent = total.self_hosted_usd + total.external_usd
    lines.append(("TOTAL", "", "", f"{total.prompt_tokens:.0f}", f"{total.completion_tokens:.0f}",
                  f"{total.self_hosted_usd:.4f}", f"{total.external_usd:.4f}", f"{spent:.4f}",
                  f"{total.reference_usd:.4f}"))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines]
    if total.reference_usd > 0:
        out.append(f"\nspent ${spent:.4f}, {100 * spent / total.reference_usd:.1f}% of the "
                   f"${total.reference_usd:.4f} the same tokens cost at the reference price")
    return "\n".join(out)


async def _read_gateways(urls: Sequence[str]) -> list[str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async def one(url: str) -> str:
            async with http.get(url) as resp:
                resp.raise_for_status()
                return await resp.text()
        return list(await asyncio.gather(*(one(u) for u in urls)))


async def _gateway_urls(args: argparse.Namespace) -> list[str]:
    urls = list(args.metrics_url)
    if args.gateway_selector:
        config = credentials.from_args(args)
        async with kube.Kube(config) as client:
            pods = await client.list(kube.PODS, namespace=args.gateway_namespace,
                                     label_selector=args.gateway_selector)
        urls = metrics_urls(pods, urls)
    return urls


async def _usage(args: argparse.Namespace) -> Report:
    if args.prometheus:
        window = args.window or "30d"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            answers = {}
            for name, query in prometheus_queries(window).items():
                url = f"{args.prometheus.rstrip('/')}/api/v1/query"
                async with http.get(url, params={"query": query}) as resp:
                    resp.raise_for_status()
                    answers[name] = await resp.json()
        return from_prometheus(answers)
    urls = await _gateway_urls(args)
    if not urls:
        raise SystemExit("modelplane usage: no gateway found: pass --metrics-url, --gateway-selector or "
                         "--prometheus")
    first = from_exposition(await _read_gateways(urls))
    if not args.window:
        return first
    await asyncio.sleep(durations.seconds(args.window))
    return from_exposition(await _read_gateways(urls)).minus(first)


def run_usage(args: argparse.Namespace) -> int:
    if args.window and not args.prometheus:
        try:
            durations.seconds(args.window)
        except ValueError as exc:
            print(f"modelplane usage: --window: {exc}", file=sys.stderr)
            return 2
    try:
        report = asyncio.run(_usage(args))
    except (aiohttp.ClientError, OSError, TimeoutError, kube.ApiError, credentials.ConfigError) as exc:
        print(f"modelplane usage: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"|".join(k): v.__dict__ for k, v in sorted(report.rows.items())}, indent=1)
          if args.json else render(report))
    return 0


def team_secret(team: str, key: str, *, namespace: str, name: str, tokens_per_minute: int | None,
                monthly_budget_usd: float | None) -> dict[str, Any]:
    """The Secret that makes ``key`` one of ``team``'s (its hash only)."""
    annotations: dict[str, str] = {}
    if tokens_per_minute is not None:
        annotations[TOKENS_PER_MINUTE] = str(tokens_per_minute)
    if monthly_budget_usd is not None:
        annotations[MONTHLY_BUDGET] = f"{monthly_budget_usd:g}"
    key_id = f"key-{int(time.time())}"
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "labels": {TEAM_LABEL: team},
                         **({"annotations": annotations} if annotations else {})},
            "type": "Opaque", "data": {key_id: base64.b64encode(hash_key(key).encode()).decode()}}


def run_team_key(args: argparse.Namespace) -> int:
    key = new_key()
    secret = team_secret(args.team, key, namespace=args.namespace, name=args.secret or f"team-{args.team}",
                         tokens_per_minute=args.tokens_per_minute, monthly_budget_usd=args.monthly_budget_usd)
    print(f"# The API key of team {args.team} (shown once; only its SHA-256 is stored):\n# {key}",
          file=sys.stderr)
    print(yaml.safe_dump(secret, sort_keys=False), end="")
    return 0


def register(subparsers: Any) -> None:
    usage = subparsers.add_parser("usage", help="spend by team, model and backend, from the gateways' "
                                                "metrics", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    usage.add_argument("--metrics-url", action="append", default=[],
                       help="a gateway replica's /metrics URL (repeatable)")
    usage.add_argument("--gateway-selector", default=None,
                       help="find the gateway replicas by this pod label selector "
                            "(e.g. app.kubernetes.io/component=gateway)")
    usage.add_argument("--gateway-namespace", default=None, help="the gateway pods' namespace")
    usage.add_argument("--prometheus", default=None,
                       help="a Prometheus that scrapes the gateways (its base URL)")
    usage.add_argument("--window", default=None,
                       help="gateways: read twice this long apart and print the difference (e.g. 5m); "
                            "Prometheus: the increase over this window (default 30d)")
    usage.add_argument("--json", action="store_true", help="print JSON instead of a table")
    credentials.add_arguments(usage)
    usage.set_defaults(func=run_usage)
    key = subparsers.add_parser("team-key", help="make a team API key and print the Secret holding its "
                                                 "hash",
                                description="Prints the Secret (apply it with kubectl apply -f -) on stdout "
                                            "and the key, once, on stderr (docs/model-mesh.md).")
    key.add_argument("--team", required=True, help="the team's name")
    key.add_argument("--namespace", "-n", default="default",
                     help="the Secret's namespace (one the gateway serves)")
    key.add_argument("--secret", default=None, help="the Secret's name (default team-<team>)")
    key.add_argument("--tokens-per-minute", type=int, default=None, help="the team's token rate limit")
    key.add_argument("--monthly-budget-usd", type=float, default=None, help="the team's monthly budget")
    key.set_defaults(func=run_team_key)
