"""``modelplane gateway``: the gateway process — the OpenAI API port, /metrics, and the watches.

One process by default. ``--workers N`` starts N worker processes that share the API port and
the metrics port (``SO_REUSEPORT``: the kernel spreads connections over them); each worker has its
own watches, connection pool and held requests, and they write their metrics to one directory so
that whichever answers /metrics reports the sum. uvloop runs the event loop when it is installed
(``--no-uvloop`` to use asyncio's own). SIGTERM or SIGINT stops accepting connections and lets the
requests in flight finish for up to ``--shutdown-timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from modelplane.controller import credentials, kube
from modelplane.gateway.activator import HoldLimits
from modelplane.gateway.cache import ClusterRoutes, Routes, StaticRoutes, load_routes_file
from modelplane.gateway.ledger import DEFAULT_SYNC_SECONDS, ClusterLedger, shard_name
from modelplane.gateway.meshroutes import ClusterMesh
from modelplane.gateway.meshserve import MeshServer
from modelplane.gateway.routing import SESSION_HEADER
from modelplane.gateway.server import Gateway, Settings, serve_metrics, start
from modelplane.gateway.spend import DEFAULT_REFERENCE_USD_PER_MTOK
from modelplane.gateway.teams import ClusterTeams

log = logging.getLogger("modelplane.gateway")

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class Config:
    """Everything a worker needs (picklable: workers are spawned with it)."""

    host: str = "0.0.0.0"
    port: int = 8000
    metrics_port: int = 9090
    namespaces: tuple[str, ...] = ()
    routes_file: Path | None = None
    settings: Settings = field(default_factory=Settings)
    shutdown_timeout: float = 30.0
    uvloop: bool = True
    log_level: str = "INFO"
    #: kubectl's --kubeconfig and --context (None: $KUBECONFIG, or the ServiceAccount in a pod).
    kubeconfig: str | None = None
    context: str | None = None
    teams: bool = False  #: ask every request for a team's key (docs/model-mesh.md)
    reference_usd_per_mtok: float = DEFAULT_REFERENCE_USD_PER_MTOK
    #: where the usage ledger's shards live (ledger.py), and how often this process writes its own
    ledger_namespace: str = "default"
    ledger_sync_seconds: float = DEFAULT_SYNC_SECONDS
    ledger_id: str = ""  #: this replica's name in the ledger ("": the host name, a pod's name)
    worker: int = 0  #: this process's index among --workers (names its ledger shard)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "gateway", help="run the OpenAI-compatible gateway in front of every ModelDeployment",
        description="One OpenAI endpoint for every model: routes by the body's model, holds requests "
                    "while a ModelDeployment has no ready replica, splits canary traffic by weight, "
                    "and picks the least loaded replica (docs/gateway.md).")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8000, help="the OpenAI API port (default 8000)")
    parser.add_argument("--metrics-port", type=int, default=9090,
                        help="port of /metrics, /healthz and /readyz (default 9090; 0: serve /metrics "
                             "on the API port)")
    parser.add_argument("--namespace", "-n", action="append", default=[],
                        help="serve only the ModelDeployments of this namespace (repeatable); "
                             "default: all namespaces")
    parser.add_argument("--routes", type=Path, default=None,
                        help="serve a fixed table from this YAML file instead of reading the cluster "
                             "(benchmarks and tests; docs/gateway.md)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes sharing the ports (default 1); about one per core")
    parser.add_argument("--max-body-bytes", type=int, default=Settings.max_body_bytes,
                        help="largest request body accepted; larger ones get 413 (default 16 MiB)")
    defaults = HoldLimits()
    parser.add_argument("--max-held", type=int, default=defaults.max_per_model,
                        help="requests held per ModelDeployment while none of its replicas is ready; "
                             f"one more gets 429 (default {defaults.max_per_model}, per worker)")
    parser.add_argument("--hold-timeout", type=float, default=defaults.timeout_seconds,
                        help="seconds a request is held before it gets 503 "
                             f"(default {defaults.timeout_seconds:.0f}: a cold start's download and load)")
    parser.add_argument("--retry-after", type=int, default=defaults.retry_after_seconds,
                        help="the Retry-After of 429 and 503 answers, seconds "
                             f"(default {defaults.retry_after_seconds})")
    parser.add_argument("--connect-timeout", type=float, default=Settings.connect_timeout_seconds,
                        help="seconds to connect to a replica before trying another (default 5)")
    parser.add_argument("--session-header", default=SESSION_HEADER,
                        help="request header that keeps a client on one side of a canary split "
                             f"(default {SESSION_HEADER}; the body's user field otherwise)")
    parser.add_argument("--prefix-chars", type=int, default=0,
                        help="prefix affinity: send requests whose prompts share their first this-many "
                             "characters to the same replica, within --affinity-load-factor "
                             "(default 0: off, least outstanding requests); e.g. 2048, about 512 tokens")
    parser.add_argument("--affinity-load-factor", type=float, default=Settings.affinity_load_factor,
                        help="prefix affinity's bound: a replica takes at most this many times its share "
                             "of the outstanding requests, rounded up (default 1.0)")
    parser.add_argument("--pod-metrics-seconds", type=float, default=Settings.pod_metrics_seconds,
                        help="read each ready replica's vLLM /metrics this often, so that picking "
                             "counts its whole queue and KV-cache use, not only this gateway's "
                             "requests (default 1; 0: off)")
    parser.add_argument("--teams", action="store_true",
                        help="serve teams: every request needs Authorization: Bearer <a team's key>; keys, "
                             "token rate limits and monthly budgets come from Secrets labelled "
                             "modelplane.dev/team (docs/model-mesh.md)")
    parser.add_argument("--reference-usd-per-mtok", type=float, default=DEFAULT_REFERENCE_USD_PER_MTOK,
                        help="the proprietary price spend is compared with, USD per million tokens "
                             f"(default {DEFAULT_REFERENCE_USD_PER_MTOK:g})")
    parser.add_argument("--ledger-namespace", default=None,
                        help="namespace of the usage ledger's ConfigMaps, where every gateway process "
                             "counts teams' tokens and spend and routes' external spend so that limits "
                             "hold across replicas (default: the pod's own namespace, else 'default')")
    parser.add_argument("--ledger-id", default="",
                        help="this replica's name in the usage ledger; two gateway replicas must not "
                             "share one (default: the host name, which in a pod is the pod's name)")
    parser.add_argument("--ledger-sync-seconds", type=float, default=DEFAULT_SYNC_SECONDS,
                        help="write this process's counts to the ledger at most this often while they "
                             f"change (default {DEFAULT_SYNC_SECONDS:g})")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0,
                        help="seconds requests in flight get to finish on SIGTERM (default 30)")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's event loop, not uvloop")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    credentials.add_arguments(parser)
    parser.set_defaults(func=main)


def config_from(args: argparse.Namespace) -> Config:
    if args.workers < 1:
        raise SystemExit(f"--workers must be >= 1, got {args.workers}")
    if args.workers > 1 and args.port == 0:
        raise SystemExit("--workers > 1 needs a fixed --port: the workers share it")
    try:
        settings = Settings(
            max_body_bytes=args.max_body_bytes, connect_timeout_seconds=args.connect_timeout,
            session_header=args.session_header.lower(), serve_metrics=args.metrics_port == 0,
            prefix_chars=args.prefix_chars, affinity_load_factor=args.affinity_load_factor,
            pod_metrics_seconds=args.pod_metrics_seconds,
            holds=HoldLimits(max_per_model=args.max_held, timeout_seconds=args.hold_timeout,
                             retry_after_seconds=args.retry_after))
    except ValueError as exc:
        raise SystemExit(f"modelplane gateway: {exc}") from None
    if args.reference_usd_per_mtok < 0:
        raise SystemExit(f"--reference-usd-per-mtok must be >= 0, got {args.reference_usd_per_mtok}")
    if args.ledger_sync_seconds <= 0:
        raise SystemExit(f"--ledger-sync-seconds must be > 0, got {args.ledger_sync_seconds}")
    if args.routes is not None and args.teams:
        raise SystemExit("--teams reads the cluster's Secrets; it cannot go with --routes")
    if args.routes is not None:
        try:
            load_routes_file(args.routes)  # refuse a bad file before anything starts
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--routes: {exc}") from None
    else:
        try:
            credentials.from_args(args)  # refuse unusable credentials before anything starts
        except credentials.ConfigError as exc:
            raise SystemExit(f"modelplane gateway: {exc}") from None
    return Config(host=args.host, port=args.port, metrics_port=args.metrics_port,
                  namespaces=tuple(args.namespace), routes_file=args.routes, settings=settings,
                  shutdown_timeout=args.shutdown_timeout, uvloop=not args.no_uvloop,
                  log_level=args.log_level, kubeconfig=args.kubeconfig, context=args.context,
                  teams=args.teams, reference_usd_per_mtok=args.reference_usd_per_mtok,
                  ledger_namespace=args.ledger_namespace or _own_namespace(),
                  ledger_sync_seconds=args.ledger_sync_seconds, ledger_id=args.ledger_id)


def _own_namespace() -> str:
    """The pod's namespace (its ServiceAccount's), or 'default' outside a pod."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


async def serve(config: Config, *, reuse_port: bool = False, stop: asyncio.Event | None = None) -> None:
    """Run one gateway process until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None)."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        routes: Routes
        sources: list[Coroutine[Any, Any, None]] = []
        mesh: MeshServer | None = None
        teams: ClusterTeams | None = None
        ledger: ClusterLedger | None = None
        if config.routes_file is not None:
            routes = StaticRoutes(load_routes_file(config.routes_file))
        else:
            client = await stack.enter_async_context(kube.Kube(kube.auto_config(
                kubeconfig=config.kubeconfig, context=config.context)))
            routes = ClusterRoutes(client, config.namespaces)
            ledger = ClusterLedger(client, config.ledger_namespace,
                                   shard_name(config.ledger_id or socket.gethostname(), config.port,
                                              config.worker),
                                   sync_seconds=config.ledger_sync_seconds)
            cluster_mesh = ClusterMesh(client, config.namespaces)
            mesh = MeshServer(cluster_mesh, reference_usd_per_mtok=config.reference_usd_per_mtok,
                              connect_timeout=config.settings.connect_timeout_seconds, ledger=ledger)
            sources += [cluster_mesh.run(), ledger.run()]
            if config.teams:
                teams = ClusterTeams(client, config.namespaces, ledger=ledger)
                sources.append(teams.run())
        gateway = Gateway(routes, config.settings, mesh=mesh, teams=teams, ledger=ledger)
        watching = asyncio.create_task(_gather(routes.run(), *sources), name="gateway-routes")
        runners = []
        try:
            runner, port = await start(gateway, host=config.host, port=config.port, reuse_port=reuse_port,
                                       shutdown_timeout=config.shutdown_timeout)
            runners.append(runner)
            log.info("gateway listening on %s:%d (pid %d)", config.host, port, os.getpid())
            if config.metrics_port:
                side = web.Application()
                side.router.add_get("/metrics", serve_metrics)
                side.router.add_get("/healthz", gateway.healthz)
                side.router.add_get("/readyz", gateway.readyz)
                side_runner = web.AppRunner(side, access_log=None)
                await side_runner.setup()
                runners.append(side_runner)
                await web.TCPSite(side_runner, config.host, config.metrics_port,
                                  reuse_port=reuse_port or None).start()
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopping, watching], return_when=asyncio.FIRST_COMPLETED)
            if watching in done and not watching.cancelled() and watching.exception() is not None:
                log.error("the watches ended: %r", watching.exception())
            stopping.cancel()
        finally:
            log.info("stopping (pid %d)", os.getpid())
            for runner in reversed(runners):
                await runner.cleanup()
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching


async def _gather(*coros: Coroutine[Any, Any, None]) -> None:
    await asyncio.gather(*coros)


def _run(coro: Coroutine[Any, Any, None], *, use_uvloop: bool) -> None:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            log.info("uvloop is not installed; using asyncio's event loop")
        else:
            uvloop.run(coro)
            return
    asyncio.run(coro)


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")


def _worker(config: Config) -> None:
    """A spawned worker: its own loop, sharing the ports."""
    _logging(config.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        _run(serve(config, reuse_port=True), use_uvloop=config.uvloop)


def run_workers(config: Config, workers: int) -> int:
    """Start ``workers`` processes and wait; if one dies, stop the others and fail (the pod restarts)."""
    metrics_dir = tempfile.mkdtemp(prefix="modelplane-gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by the spawned workers
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(replace(config, worker=i),),
                                 name=f"gateway-worker-{i}") for i in range(workers)]
    stopping = False

    def stop(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in processes:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for p in processes:
            p.start()
        code = 0
        while any(p.is_alive() for p in processes):
            multiprocessing.connection.wait([p.sentinel for p in processes if p.is_alive()])
            for p in processes:
                if not p.is_alive() and p.exitcode not in (0, None) and not stopping:
                    log.error("%s (pid %s) exited with %s; stopping the others", p.name, p.pid, p.exitcode)
                    code = 1
                    stop(signal.SIGTERM, None)
        return code
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def main(args: argparse.Namespace) -> int:
    _logging(args.log_level)
    config = config_from(args)
    if args.workers > 1:
        return run_workers(config, args.workers)
    with contextlib.suppress(KeyboardInterrupt):
        _run(serve(config), use_uvloop=config.uvloop)
    return 0
