"""``modelplane cluster up|down|status``: the dev cluster from the command line (and `make`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modelplane_dev.devcluster import inference_extension, lws
from modelplane_dev.devcluster.cluster import DevCluster, DevClusterError, Options


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cluster", help="start, stop or inspect the local dev cluster",
        description="A real Kubernetes control plane on loopback with simulated GPU nodes (kwok).")
    parser.add_argument("--dir", type=Path, default=None,
                        help="run directory (default: .run/devcluster in the checkout, or "
                             "$MODELPLANE_DEVCLUSTER_DIR)")
    sub = parser.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)

    up = sub.add_parser("up", help="start the dev cluster, or reuse the running one")
    up.add_argument("--profile", default="default", help="node profile from profiles.yaml")
    up.add_argument("--pod-ready-delay", default="20s",
                    help="how long a pod takes to turn Ready, standing for a model load (20s)")
    up.add_argument("--pod-ready-jitter", default="5s", help="extra random delay, up to (5s)")
    up.add_argument("--port", type=int, default=None, help="API server port (default: a free one)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    up.add_argument("--with-inference-extension", action="store_true",
                    help="also install the Gateway API (GatewayClass, Gateway, HTTPRoute) and Inference "
                         "Extension (InferencePool v1) CRDs, fetched from their Go modules at pinned "
                         "versions (docs/inference-extension.md)")
    up.add_argument("--with-lws", action="store_true",
                    help="also run the LeaderWorkerSet controller (built from its Go module at the pinned "
                         "version; its CRD and webhooks installed) for multi-node replicas "
                         "(docs/multi-node.md)")
    up.set_defaults(func=_up)

    down = sub.add_parser("down", help="stop every process of the dev cluster (safe twice)")
    down.add_argument("--remove", action="store_true", help="also delete the run directory")
    down.set_defaults(func=_down)

    status = sub.add_parser("status", help="say whether the dev cluster runs, and where")
    status.set_defaults(func=_status)


def _up(args: argparse.Namespace) -> int:
    cluster = DevCluster(args.dir)
    try:
        state = cluster.up(Options(profile=args.profile, pod_ready_delay=args.pod_ready_delay,
                                   pod_ready_jitter=args.pod_ready_jitter, apiserver_port=args.port,
                                   start_timeout=args.timeout))
        if args.with_inference_extension:
            inference_extension.install(str(Path(state.bin_dir) / "kubectl"), Path(state.kubeconfig))
        if args.with_lws:
            lws.ensure(cluster)
    except DevClusterError as exc:
        print(f"modelplane cluster up: {exc}")
        return 1
    print(state.kubeconfig)
    return 0


def _down(args: argparse.Namespace) -> int:
    DevCluster(args.dir).down(remove=args.remove)
    return 0


def _status(args: argparse.Namespace) -> int:
    cluster = DevCluster(args.dir)
    state = cluster.state()
    if state is None or not cluster.is_healthy():
        running = cluster.running_pids()
        print(f"not running (run directory {cluster.run_dir}"
              + (f"; stray processes: {running}" if running else "") + ")")
        return 1
    print(f"running: API server {state.server}, profile {state.profile}, "
          f"{len(state.nodes)} nodes, KUBECONFIG={state.kubeconfig}")
    return 0
