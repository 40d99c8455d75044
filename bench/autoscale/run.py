"""Runs every policy on every trace and writes the table (bench/README.md) and one PNG per trace.

The setup is one realistic deployment: Llama 3.1 70B in FP8 on 2× H100 80 GB per replica
(tensor parallel 2, ``maxModelLen`` 8192, ``maxNumSeqs`` 256), engine figures from
``modelplane.sim.profiles.params_for``, $2.69 per GPU-hour (the catalog's default), a cold start of
90 s from scale-up to Ready (FACTS.md: 70B FP8 with a persisted compile cache), SLO: time to first
token ≤ 2 s measured from the gateway (queue wait included).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.autoscale import policies, traces
from bench.autoscale.harness import Autoscaler, RunResult, SimConfig, run
from modelplane.autoscaler.cost import replica_hourly_usd
from modelplane.autoscaler.policy import PolicySpec
from modelplane.gpus import GPU_TYPES
from modelplane.sim.engine import EngineModel, EngineParams
from modelplane.sim.profiles import params_for, saturated_tokens_per_s

GPU = "nvidia-h100-80gb"
GPUS_PER_REPLICA = 2
MAX_MODEL_LEN = 8192
MAX_NUM_SEQS = 32
TARGET_QUEUE_DEPTH = 4.0
MIN_REPLICAS, MAX_REPLICAS = 1, 16
COLD_START = 90.0
SLO_TTFT = 2.0
POLICY_ORDER = ("modelplane", "HPA", "KEDA", "KubeAI", "static peak", "oracle")


def engine_params() -> EngineParams:
    return params_for(GPU, 70.0, GPUS_PER_REPLICA, MAX_MODEL_LEN, MAX_NUM_SEQS, quantization="fp8")


def throughput_priors(params: EngineParams, *, error: float = 1.0) -> dict[str, float]:
    """Our policy's prior of a replica's token rates, from the engine profile (what the planner knows).

    ``error`` multiplies both, to check that the learned capacity corrects a wrong profile.
    """
    return {"prefill_tokens_per_second": params.prefill_tokens_per_s * error,
            "decode_tokens_per_second": saturated_tokens_per_s(params) * error}


def _make_engine(params: EngineParams, start: float) -> EngineModel:
    return EngineModel(params, start=start)


def sim_config(params: EngineParams, *, cold_start: float = COLD_START) -> SimConfig:
    return SimConfig(engine_factory=partial(_make_engine, params), cold_start=cold_start,
                     gpus_per_replica=GPUS_PER_REPLICA, usd_per_gpu_hour=GPU_TYPES[GPU].usd_per_hour,
                     max_model_len=MAX_MODEL_LEN, slo_ttft=SLO_TTFT)


def build_policies(trace: traces.Trace, params: EngineParams, *, cold_start: float = COLD_START,
                   max_replicas: int = MAX_REPLICAS) -> tuple[list[Autoscaler], int]:
    """The six policies for ``trace``, and the replicas every run starts with (ready at t=0)."""
    needed = policies.needed_replicas(trace, policies.replica_capacity(params, trace))
    initial = needed[0]
    per_replica = MAX_NUM_SEQS + TARGET_QUEUE_DEPTH
    spec = PolicySpec(min_replicas=MIN_REPLICAS, max_replicas=max_replicas,
                      target_queue_depth=TARGET_QUEUE_DEPTH, scale_down_delay=300.0,
                      usd_per_replica_hour=replica_hourly_usd(GPU, GPUS_PER_REPLICA),
                      replica_concurrency=MAX_NUM_SEQS, **throughput_priors(params))
    built: list[Autoscaler] = [
        policies.Ours(spec),
        policies.HPAStyle(target_per_pod=per_replica, min_replicas=MIN_REPLICAS, max_replicas=max_replicas),
        policies.KEDAStyle(queue_per_replica=TARGET_QUEUE_DEPTH, min_replicas=MIN_REPLICAS,
                           max_replicas=max_replicas),
        policies.KubeAIStyle(target_requests=per_replica, min_replicas=MIN_REPLICAS,
                             max_replicas=max_replicas, initial_average=initial * per_replica * 0.9),
        policies.Static(min(max(needed), max_replicas)),
        policies.Oracle(needed, cold_start=cold_start),
    ]
    return built, initial


def run_one(trace: traces.Trace, policy_name: str, cold_start: float = COLD_START) -> RunResult:
    params = engine_params()
    built, initial = build_policies(trace, params, cold_start=cold_start)
    policy = next(p for p in built if p.name == policy_name)
    return run(trace, policy, sim_config(params, cold_start=cold_start), initial_replicas=initial)


def _run_job(job: tuple[traces.Trace, str]) -> RunResult:
    return run_one(*job)


def run_all(trace_list: Sequence[traces.Trace], *, workers: int | None = None) -> list[RunResult]:
    jobs = [(t, name) for t in trace_list for name in POLICY_ORDER]
    workers = workers or min(2, os.cpu_count() or 1)
    if workers <= 1:
        return [_run_job(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_run_job, jobs))


@dataclass(frozen=True)
class Verdict:
    trace: str
    fewest_gpu_hours: bool  #: fewer GPU-hours than every other policy with equal or better SLO
    below_static: float  #: our GPU-hours saving against static peak (0.3 = 30% fewer)
    over_oracle: float  #: how much more than the oracle (0.1 = 10% more)
    slo_vs_best: float  #: our SLO attainment minus the best baseline's


def verdicts(results: Sequence[RunResult]) -> list[Verdict]:
    out = []
    for name in dict.fromkeys(r.trace for r in results):
        rows = {r.policy: r for r in results if r.trace == name}
        ours = rows["modelplane"]
        others = [r for p, r in rows.items() if p not in ("modelplane", "oracle")]
        # Like for like: fewer GPU-hours than each of them AND an SLO attainment at least as good.
        fewest = all(ours.gpu_hours < r.gpu_hours and ours.slo_attainment >= r.slo_attainment - 0.005
                     for r in others)
        static = rows["static peak"]
        oracle = rows["oracle"]
        out.append(Verdict(
            trace=name, fewest_gpu_hours=fewest,
            below_static=1 - ours.gpu_hours / static.gpu_hours if static.gpu_hours else math.nan,
            over_oracle=ours.gpu_hours / oracle.gpu_hours - 1 if oracle.gpu_hours else math.nan,
            slo_vs_best=ours.slo_attainment - max(r.slo_attainment for r in others)))
    return out


def markdown_table(results: Sequence[RunResult]) -> str:
    lines = ["| trace | policy | GPU-hours | cost $ | vs static | vs oracle | SLO (TTFT ≤ 2 s) | TTFT p95 s "
             "| direction changes | max replicas | lost |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in dict.fromkeys(r.trace for r in results):
        rows = {r.policy: r for r in results if r.trace == name}
        static, oracle = rows["static peak"].gpu_hours, rows["oracle"].gpu_hours
        for policy in POLICY_ORDER:
            r = rows[policy]
            label = f"**{policy}**" if policy == "modelplane" else policy
            p95 = "∞" if math.isinf(r.ttft_p95) else f"{r.ttft_p95:.2f}"
            lines.append(
                f"| {name} | {label} | {r.gpu_hours:.2f} | {r.cost_usd:.2f} | {r.gpu_hours / static:.2f}× | "
                f"{r.gpu_hours / oracle:.2f}× | {100 * r.slo_attainment:.1f}% | {p95} | "
                f"{r.direction_changes} | {r.max_replicas} | {r.lost} |")
    return "\n".join(lines)


def verdict_lines(results: Sequence[RunResult]) -> str:
    lines = ["| trace | fewest GPU-hours at ≥ SLO | below static peak (target ≥ 30%) | above oracle "
             "(target ≤ 15%) | SLO vs best baseline |", "| --- | --- | ---: | ---: | ---: |"]
    for v in verdicts(results):
        lines.append(f"| {v.trace} | {'yes' if v.fewest_gpu_hours else 'no'} | {100 * v.below_static:.0f}% | "
                     f"{100 * v.over_oracle:+.0f}% | {100 * v.slo_vs_best:+.1f} pts |")
    return "\n".join(lines)


def plot(results: Sequence[RunResult], out_dir: Path) -> list[Path]:
    """One PNG per trace: replicas and queue over time for each policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in dict.fromkeys(r.trace for r in results):
        rows = [r for r in results if r.trace == name]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
        for r in sorted(rows, key=lambda r: POLICY_ORDER.index(r.policy)):
            minutes = [t / 60 for t in r.times]
            width = 2.2 if r.policy == "modelplane" else 1.1
            style = "--" if r.policy in ("oracle", "static peak") else "-"
            top.step(minutes, r.replicas, where="post", label=r.policy, linewidth=width, linestyle=style)
            bottom.plot(minutes, r.queue, label=r.policy, linewidth=width, linestyle=style)
        top.set_ylabel("replicas (asked)")
        top.set_title(f"{name}: replicas and queue over time")
        top.legend(loc="upper left", fontsize=8, ncol=3)
        bottom.set_ylabel("waiting requests")
        bottom.set_xlabel("minutes")
        bottom.set_yscale("symlog", linthresh=10)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def timed(fn: partial[list[RunResult]]) -> tuple[list[RunResult], float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started
