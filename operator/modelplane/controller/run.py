"""``modelplane run``: the operator process — the controller loop, /healthz + /metrics, and kopf.

They run side by side on one event loop. The controller watches the cluster through its own
informers; kopf runs only in an HA install, for its peering (which replica is active). /healthz
tells the truth: 503 while the controller's loop has not turned within the last minute, or while a
watch has been down longer than ``WATCH_GRACE_SECONDS`` (the API server is unreachable or refuses
us), with the reason in its JSON. SIGTERM or SIGINT stops everything within about a second.

What cannot work is refused at start with one line on stderr and no traceback (``StartupError``):
a bad flag value or ``--prices`` file (exit code 2), missing or unusable credentials, or a port
that cannot be bound (exit code 1). An API server that cannot be reached is not one of these: the
watches retry, and /healthz reports it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelplane.controller import credentials, kube, metricsauth, opmetrics
from modelplane.controller.loop import Controller, Settings
from modelplane.metrics.promquery import PrometheusSource
from modelplane.planner.source import HF_BASE_URL

log = logging.getLogger("modelplane")

#: The controller loop turns every resync interval; a minute of silence means it is stuck.
LIVENESS_SECONDS = 60.0
#: A watch that reconnects within this long is a blip; longer, and /healthz says so.
WATCH_GRACE_SECONDS = 15.0
#: How long shutdown waits for the tasks to end after it has cancelled them.
SHUTDOWN_SECONDS = 1.5
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class StartupError(Exception):
    """The operator cannot start as asked; the message says why, as one line for a person."""

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="run the operator against the current kubeconfig (or in-cluster credentials)")
    parser.add_argument("--namespace", "-n", action="append", default=[],
                        help="watch only this namespace (repeatable); default: all namespaces")
    parser.add_argument("--metrics-port", type=int, default=8080,
                        help="port of /healthz and /metrics (default 8080; 0 disables)")
    parser.add_argument("--metrics-host", default="0.0.0.0",
                        help="address /healthz and /metrics listen on (default 0.0.0.0)")
    parser.add_argument("--metrics-auth", choices=("none", "kubernetes"), default="none",
                        help="kubernetes: /metrics answers only a bearer token that the API server "
                             "authenticates (TokenReview) and allows to get /metrics "
                             "(SubjectAccessReview), as kube-rbac-proxy does; none (default): anyone "
                             "who reaches the port")
    parser.add_argument("--health-port", type=int, default=None,
                        help="serve /healthz on its own port, on all interfaces (for probes when "
                             "--metrics-host is a private interface); default: the metrics port")
    parser.add_argument("--resync-seconds", type=float, default=2.0,
                        help="how often every ModelDeployment is reconciled and its pods scraped")
    parser.add_argument("--prices", type=Path, default=None,
                        help="JSON or YAML file mapping GPU type to $/GPU-hour (provider prices)")
    gw = parser.add_argument_group(
        "gateway", "where the operator reads the requests `modelplane gateway` holds while a "
                   "ModelDeployment has no ready replica, so that scale from zero starts at once "
                   "(docs/gateway.md)")
    gw.add_argument("--gateway-selector", default=None,
                    help="label selector of the gateway's pods, e.g. "
                         "app.kubernetes.io/component=gateway (the chart sets it)")
    gw.add_argument("--gateway-namespace", default=None,
                    help="namespace of the gateway's pods (default: all namespaces)")
    gw.add_argument("--gateway-metrics-url", action="append", default=[],
                    help="a gateway replica's /metrics URL, for gateways that are not pods (repeatable)")
    gw.add_argument("--gateway-scrape-seconds", type=float, default=0.25,
                    help="how often each gateway replica's held requests are read (default 0.25)")
    prom = parser.add_argument_group(
        "Prometheus", "read the pods' vLLM metrics from a Prometheus that scrapes them, instead of "
                      "scraping the pods (docs/autoscaling.md)")
    prom.add_argument("--prometheus-url", default=None,
                      help="base URL of the Prometheus query API, e.g. http://prometheus:9090")
    prom.add_argument("--prometheus-pod-label", default="pod",
                      help="the label that names a series' pod (default pod)")
    prom.add_argument("--prometheus-namespace-label", default="namespace",
                      help="the label that names a series' namespace (default namespace)")
    prom.add_argument("--prometheus-max-age", type=float, default=120.0,
                      help="seconds after which a pod's newest sample is stale and the autoscaler "
                           "holds (default 120: a few scrape intervals)")
    prom.add_argument("--prometheus-token-file", type=Path, default=None,
                      help="file with a bearer token for the query API (re-read for every query)")
    parser.add_argument("--hf-endpoint", default=None,
                        help="Hugging Face Hub (or mirror) to read models' config.json from "
                             "(default https://huggingface.co)")
    parser.add_argument("--no-model-config", action="store_true",
                        help="never read config.json; plan from the catalog and spec.model.hints")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help="DEBUG, INFO (default), WARNING or ERROR")
    credentials.add_arguments(parser)
    parser.set_defaults(func=main)


def prometheus_source(args: argparse.Namespace) -> PrometheusSource | None:
    """The ``--prometheus-*`` flags as a source; None without ``--prometheus-url``."""
    if not args.prometheus_url:
        return None
    try:
        return PrometheusSource(
            url=args.prometheus_url, pod_label=args.prometheus_pod_label,
            namespace_label=args.prometheus_namespace_label,
            lookback_seconds=max(120.0, args.prometheus_max_age), max_age_seconds=args.prometheus_max_age,
            bearer_token_file=args.prometheus_token_file)
    except ValueError as exc:
        raise StartupError(f"--prometheus-*: {exc}") from exc


def load_prices(path: Path | None) -> dict[str, float]:
    """The ``--prices`` file: a JSON or YAML mapping of GPU type to $/GPU-hour. ``StartupError``
    names the file and the problem: unreadable, not YAML, not a mapping, a price that is not a
    number >= 0, or an unknown GPU type."""
    if path is None:
        return {}
    import yaml

    from modelplane import gpus

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StartupError(f"--prices {path}: cannot read it: {exc.strerror}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise StartupError(f"--prices {path}: not JSON or YAML: {kube.one_line(exc)}") from exc
    if not isinstance(data, dict):
        raise StartupError(f"--prices {path}: expected a mapping of GPU type to $/GPU-hour, e.g. "
                           "'nvidia-h100-80gb: 2.49'")
    prices: dict[str, float] = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise StartupError(f"--prices {path}: the price of {name} must be a number of $/GPU-hour, "
                               f"got {value!r}")
        prices[str(name)] = float(value)
    try:
        gpus.with_prices(prices)  # refuses unknown types and negative prices, naming them
    except ValueError as exc:
        raise StartupError(f"--prices {path}: {exc}") from exc
    return prices


def build_settings(args: argparse.Namespace) -> Settings:
    """The flags as the controller's settings; ``StartupError`` for a value that cannot work."""
    if not (math.isfinite(args.resync_seconds) and args.resync_seconds > 0):
        raise StartupError(f"--resync-seconds must be a number of seconds > 0, got {args.resync_seconds:g}")
    if not (math.isfinite(args.gateway_scrape_seconds) and args.gateway_scrape_seconds > 0):
        raise StartupError("--gateway-scrape-seconds must be a number of seconds > 0, "
                           f"got {args.gateway_scrape_seconds:g}")
    if args.gateway_namespace and not args.gateway_selector:
        raise StartupError("--gateway-namespace needs --gateway-selector (which pods are the gateway's)")
    for url in args.gateway_metrics_url:
        if not url.startswith(("http://", "https://")):
            raise StartupError(f"--gateway-metrics-url must be an http(s) URL, got {url!r}")
    if not 0 <= args.metrics_port <= 65535:
        raise StartupError(f"--metrics-port must be 0 (off) or a port 1-65535, got {args.metrics_port}")
    if args.health_port is not None and not 1 <= args.health_port <= 65535:
        raise StartupError(f"--health-port must be a port 1-65535, got {args.health_port}")
    if args.health_port is not None and args.health_port == args.metrics_port:
        raise StartupError(f"--health-port {args.health_port} is the metrics port: leave it out to share it")
    # HA: every replica gets its own random priority; kopf runs the highest one and pauses the
    # others (equal priorities would pause them all), and our loop follows kopf's verdict.
    peering_name = os.environ.get("MODELPLANE_PEERING") or None
    priority = random.SystemRandom().randint(1, 2**31 - 1)
    return Settings(resync_seconds=args.resync_seconds, prices=load_prices(args.prices),
                    gateway_selector=args.gateway_selector or None,
                    gateway_namespace=args.gateway_namespace or None,
                    gateway_metrics_urls=tuple(args.gateway_metrics_url),
                    gateway_scrape_seconds=args.gateway_scrape_seconds,
                    prometheus=prometheus_source(args),
                    read_model_config=not args.no_model_config,
                    namespaces=tuple(args.namespace),
                    hf_endpoint=args.hf_endpoint or HF_BASE_URL,
                    peering=(peering_name, priority, tuple(args.namespace)) if peering_name else None)


def health_report(controller: Controller, now: float | None = None) -> tuple[dict[str, Any], int]:
    """/healthz's body and status: the loop's age and every watch that is down, and why."""
    now = time.monotonic() if now is None else now
    age = now - controller.alive_at
    down = controller.watch_health(now)
    problems = []
    if age >= LIVENESS_SECONDS:
        problems.append(f"the controller loop has not turned for {age:.0f} s")
    for name, seconds in sorted(down.items()):
        if seconds >= WATCH_GRACE_SECONDS:
            problems.append(f"the watch of {name} has been down for {seconds:.0f} s")
    ok = not problems
    body = {"ok": ok, "loopAgeSeconds": round(age, 1), "modelDeployments": len(controller.known),
            "synced": controller.synced, "watchesDown": down, "problems": problems}
    return body, 200 if ok else 503


async def serve_http(controller: Controller, host: str, port: int, *,
                     auth: metricsauth.MetricsAuth | None = None,
                     health_port: int | None = None) -> list[web.AppRunner]:
    """/metrics (behind ``auth`` when given) and /healthz on host:port, or /healthz apart on
    0.0.0.0:health_port."""
    async def healthz(_: web.Request) -> web.Response:
        body, status = health_report(controller)
        return web.json_response(body, status=status)

    async def metrics(request: web.Request) -> web.Response:
        if auth is not None:
            try:
                verdict = await auth.check(request.headers.get("Authorization"))
            except (kube.ApiError, *kube.UNREACHABLE) as exc:
                return web.Response(status=503, text=f"cannot check the token: {kube.one_line(exc)}\n")
            if verdict.status != 200:
                headers = {"WWW-Authenticate": "Bearer"} if verdict.status == 401 else {}
                return web.Response(status=verdict.status, text=verdict.reason + "\n", headers=headers)
        body = generate_latest(opmetrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    runners = []
    app = web.Application()
    app.router.add_get("/metrics", metrics)
    if health_port is None:
        app.router.add_get("/healthz", healthz)
    sites = [(app, host, port)]
    if health_port is not None:
        health = web.Application()
        health.router.add_get("/healthz", healthz)
        sites.append((health, "0.0.0.0", health_port))
    for application, bind, number in sites:
        runner = web.AppRunner(application, access_log=None)
        await runner.setup()
        runners.append(runner)
        try:
            await web.TCPSite(runner, bind, number).start()
        except OSError:
            for started in runners:
                await started.cleanup()
            raise
    return runners


async def operate(args: argparse.Namespace, settings: Settings, config: kube.KubeConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    peering_name, priority = settings.peering[:2] if settings.peering else (None, 0)
    async with contextlib.AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(kube.Kube(config))
        except kube.ConfigError as exc:  # the TLS settings
            raise StartupError(str(exc), exit_code=1) from exc
        controller = Controller(client, settings)
        runners: list[web.AppRunner] = []
        if args.metrics_port:
            auth = metricsauth.MetricsAuth(client) if args.metrics_auth == "kubernetes" else None
            try:
                runners = await serve_http(controller, args.metrics_host, args.metrics_port, auth=auth,
                                           health_port=args.health_port)
            except OSError as exc:
                raise StartupError(f"cannot serve /healthz and /metrics on {args.metrics_host}:"
                                   f"{args.metrics_port}: {exc.strerror or kube.one_line(exc)} "
                                   "(--metrics-port, --metrics-host, --health-port)", exit_code=1) from exc
            log.info("serving /metrics%s on %s:%d%s", " (TokenReview + SubjectAccessReview)" if auth else "",
                     args.metrics_host, args.metrics_port,
                     f", /healthz on 0.0.0.0:{args.health_port}" if args.health_port else " with /healthz")
        tasks = [asyncio.create_task(controller.run(), name="modelplane-controller")]
        if peering_name:
            # HA (the chart's `ha.enabled` sets MODELPLANE_PEERING to the peering object's name):
            # kopf keeps this replica's heartbeat in it and the controller reads who is active.
            import modelplane.controller.handlers  # noqa: F401 — kopf's settings

            tasks.append(asyncio.create_task(kopf.operator(
                clusterwide=not args.namespace, namespaces=list(args.namespace),
                standalone=False, peering_name=peering_name, priority=priority, stop_flag=stop,
                memo=kopf.Memo(controller=controller)), name="kopf-peering"))
        stopping = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopping and not task.cancelled() and task.exception() is not None:
                    log.error("%s ended: %r", task.get_name(), task.exception())
        finally:
            log.info("stopping")
            for task in [stopping, *tasks]:
                task.cancel()
            await asyncio.wait([stopping, *tasks], timeout=SHUTDOWN_SECONDS)
            for runner in runners:
                await runner.cleanup()


def main(args: argparse.Namespace) -> int:
    try:
        settings = build_settings(args)
        try:
            config = credentials.from_args(args)
        except kube.ConfigError as exc:
            raise StartupError(str(exc), exit_code=1) from exc
        logging.basicConfig(level=getattr(logging, args.log_level, logging.INFO),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        asyncio.run(operate(args, settings, config))
    except StartupError as exc:
        print(f"modelplane run: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        pass
    return 0
