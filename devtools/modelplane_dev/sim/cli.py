"""``modelplane sim``: run one simulated vLLM replica in the foreground until Ctrl-C.

    modelplane sim --host 127.0.0.1 --port 8000 --gpu-type nvidia-l4 --behavior-file b.yaml \\
        -- serve meta-llama/Llama-3.1-8B-Instruct --served-model-name chat --max-model-len 8192

Everything after ``--`` is read as the args of ``vllm serve`` (unknown flags are ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from modelplane.gpus import GPU_TYPE_NAMES
from modelplane_dev.sim.config import DEFAULT_GPU_TYPE, SimConfig, parse_vllm_args
from modelplane_dev.sim.lora import runtime_updating_allowed
from modelplane_dev.sim.provider import ProviderMode
from modelplane_dev.sim.quality import read_behaviors
from modelplane_dev.sim.server import SimServer, serve_forever


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None,
                        help="address to listen on (default: vLLM's --host, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: vLLM's --port, else 8000)")
    parser.add_argument("--gpu-type", default=DEFAULT_GPU_TYPE, choices=GPU_TYPE_NAMES,
                        help="the GPU the replica pretends to run on")
    parser.add_argument("--parameters-billions", type=float, default=None,
                        help="model size (default: read from the model name, else 8)")
    parser.add_argument("--behavior-file", default=None,
                        help="YAML/JSON map checkpoint -> "
                             "{accuracy, error_rate, latency_factor, load_seconds}")
    parser.add_argument("--provider-api-key", default=None,
                        help="act as an external provider: require Authorization: Bearer <this key> and "
                             "take fault modes at POST /sim/provider (sim/provider.py); "
                             "env MODELPLANE_SIM_API_KEY")
    parser.add_argument("--provider-mode", default="ok", choices=("ok", "fail", "throttle", "slow"),
                        help="the provider's fault mode at start (default ok)")
    parser.add_argument("--provider-delay-seconds", type=float, default=0.0,
                        help="with --provider-mode slow: how much later answers begin")
    parser.add_argument("vllm_args", nargs=argparse.REMAINDER, help="-- then the args of `vllm serve`")


def build_config(args: argparse.Namespace) -> SimConfig:
    vllm_args = list(args.vllm_args)
    if vllm_args and vllm_args[0] == "--":
        vllm_args = vllm_args[1:]
    config = parse_vllm_args(vllm_args, base=SimConfig(gpu_type=args.gpu_type))
    # vLLM reads VLLM_ALLOW_RUNTIME_LORA_UPDATING from its environment; so does the simulator.
    overrides: dict[str, Any] = {"gpu_type": args.gpu_type,
                                 "allow_runtime_lora_updating": runtime_updating_allowed(os.environ)}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.parameters_billions is not None:
        overrides["parameters_billions"] = args.parameters_billions
    return replace(config, **overrides)


async def _run(server: SimServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve_forever([server], stop=stop)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = build_config(args)
        key = args.provider_api_key or os.environ.get("MODELPLANE_SIM_API_KEY")
        provider = (ProviderMode(key, mode=args.provider_mode, delay_seconds=args.provider_delay_seconds)
                    if key else None)
        server = SimServer(config, behaviors=read_behaviors(path=args.behavior_file), provider=provider)
    except (ValueError, OSError) as exc:
        print(f"modelplane sim: {exc}", file=sys.stderr)
        return 2
    print(f"serving {config.served_name} ({config.model}) as on {config.gpu_type} at "
          f"http://{config.host}:{config.port} (max_model_len {server.params.max_model_len}, "
          f"KV cache {server.params.kv_cache_tokens} tokens, behaviour {server.behavior}"
          f"{', as an external provider (API key required)' if provider else ''})", flush=True)
    asyncio.run(_run(server))
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("sim", help="run a simulated vLLM replica (OpenAI API and vLLM metrics)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelplane_dev.sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
