"""The model mesh's overflow route against self-hosted only and external only, on a real trace.

The world is the autoscaling benchmark's (``bench.autoscale``): Llama 3.1 70B FP8 on 2× H100 80 GB
per replica on the simulator's engine model, $2.69 per GPU-hour, a 90 s cold start, the operator's
own autoscaler (``modelplane.autoscaler.policy``, at least one replica), and a TTFT SLO of 2 s from
the gateway. The traffic is the Azure LLM inference trace of code completions
(``/work/shared/traces/AzureLLMInferenceTrace_code.csv``; long prompts, short answers), replayed
at its own rate (``--rate-scale`` to scale it).

- **self-hosted**: every request to the replicas (held while none is ready);
- **self-hosted, static N**: the smallest fixed fleet (no autoscaler, ready from the start) whose
  SLO attainment reaches 99% (or 16, the autoscaler's maxReplicas, when none does): what
  self-hosting alone costs at, or as near as it gets to, the SLO;
- **external**: every request to an OpenAI-compatible API, at $``input``/$``output`` per million
  prompt/generated tokens; no GPU. Its TTFT is modelled as ``EXTERNAL_BASE_TTFT`` +
  prompt tokens / ``EXTERNAL_PREFILL_TOKENS_PER_S`` (an assumption, not a measurement: a hosted API
  whose queue never builds up; its SLO is then met for every prompt this trace has);
- **overflow (T)**: the route ``[modelDeployment, external]`` with ``saturationQueuePerReplica: T``
  and ``whenCold``: a request goes to the API when no replica is ready or the ready replicas have
  more than T requests waiting each (the gateway's rule, ``gateway.mesh.skip_reason``), else to the
  replicas. The autoscaler sees what the replicas see.

Cost = GPU-hours × $/GPU-hour + the API's tokens × its prices. SLO attainment counts every request:
the API's by the model above, the replicas' by the engine. The external price is then swept (as a
multiple of the list price) to show where external-only becomes cheaper than self-hosting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.autoscale import policies, traces
from bench.autoscale import run as autoscale
from bench.autoscale.harness import Overflow, RunResult, run

TRACE = Path("/work/shared/traces/AzureLLMInferenceTrace_code.csv")
#: The hosted API's modelled time to first token: a fixed part and its prefill rate (assumptions).
EXTERNAL_BASE_TTFT = 0.4
EXTERNAL_PREFILL_TOKENS_PER_S = 10_000.0
#: List prices of a proprietary API, $ per million prompt / generated tokens (FACTS.md: ~$15 per
#: million generated tokens is the comparison users make; prompts are usually a fifth of that).
INPUT_USD_PER_MTOK, OUTPUT_USD_PER_MTOK = 3.0, 15.0
THRESHOLDS = (2, 4, 8)
PRICE_FACTORS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
SLO_TARGET = 0.99
#: The largest fixed fleet tried for self-hosting at the SLO (the autoscaler's maxReplicas).
MAX_STATIC = autoscale.MAX_REPLICAS


def external_ttft(prompt_tokens: int) -> float:
    return EXTERNAL_BASE_TTFT + prompt_tokens / EXTERNAL_PREFILL_TOKENS_PER_S


@dataclass(frozen=True)
class Outcome:
    name: str
    requests: int
    within_slo: int
    gpu_hours: float
    gpu_usd: float
    external_requests: int
    external_prompt_tokens: int
    external_output_tokens: int

    @property
    def slo_attainment(self) -> float:
        return self.within_slo / self.requests if self.requests else 1.0

    def external_usd(self, price_factor: float = 1.0) -> float:
        return price_factor * (self.external_prompt_tokens * INPUT_USD_PER_MTOK
                               + self.external_output_tokens * OUTPUT_USD_PER_MTOK) / 1e6

    def total_usd(self, price_factor: float = 1.0) -> float:
        return self.gpu_usd + self.external_usd(price_factor)


def outcome(name: str, trace: traces.Trace, result: RunResult | None, slo: float) -> Outcome:
    """Fold a harness run (None: no replicas at all) and its requests sent away into one outcome."""
    sent_away = result.external if result is not None else list(range(len(trace.requests)))
    away = [trace.requests[i] for i in sent_away]
    within_away = sum(1 for r in away if external_ttft(r.prompt_tokens) <= slo)
    return Outcome(name=name, requests=len(trace.requests),
                   within_slo=(result.within_slo if result is not None else 0) + within_away,
                   gpu_hours=result.gpu_hours if result is not None else 0.0,
                   gpu_usd=result.cost_usd if result is not None else 0.0,
                   external_requests=len(away), external_prompt_tokens=sum(r.prompt_tokens for r in away),
                   external_output_tokens=sum(r.output_tokens for r in away))


def saturated_over(threshold: int) -> Overflow:
    """The gateway's choice: away when no replica is ready or more than ``threshold`` wait per replica."""
    def decide(waiting: list[int]) -> bool:
        return not waiting or sum(waiting) / len(waiting) > threshold
    return decide


def run_all(trace: traces.Trace, thresholds: Sequence[int] = THRESHOLDS) -> list[Outcome]:
    params = autoscale.engine_params()
    config = autoscale.sim_config(params)

    def once(overflow: Overflow | None) -> RunResult:
        built, initial = autoscale.build_policies(trace, params)
        ours = next(p for p in built if p.name == "modelplane")
        return run(trace, ours, config, initial_replicas=initial, overflow=overflow)

    out = [outcome("self-hosted", trace, once(None), config.slo_ttft)]
    for fleet in range(1, MAX_STATIC + 1):  # the smallest fixed fleet at the SLO
        static = outcome(f"self-hosted, static {fleet}", trace,
                         run(trace, policies.Static(fleet), config, initial_replicas=fleet), config.slo_ttft)
        if static.slo_attainment >= SLO_TARGET or fleet == MAX_STATIC:
            out.append(static)
            break
    out.append(outcome("external", trace, None, config.slo_ttft))
    out += [outcome(f"overflow (T={t})", trace, once(saturated_over(t)), config.slo_ttft) for t in thresholds]
    return out


def table(outcomes: Sequence[Outcome]) -> str:
    lines = ["| strategy | SLO attainment | GPU-hours | $ GPUs | requests to the API | $ API | $ total |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for o in outcomes:
        lines.append(f"| {o.name} | {100 * o.slo_attainment:.2f}% | {o.gpu_hours:.2f} | {o.gpu_usd:.2f} | "
                     f"{o.external_requests} ({100 * o.external_requests / o.requests:.1f}%) | "
                     f"{o.external_usd():.2f} | {o.total_usd():.2f} |")
    return "\n".join(lines)


def price_table(outcomes: Sequence[Outcome]) -> str:
    """Total $ of each strategy as the API's price varies; the cheapest at the SLO target in bold."""
    head = "| API price (× list) | $/Mtok in / out | " + " | ".join(o.name for o in outcomes) + " |"
    lines = [head, "| --- | --- | " + " | ".join("---" for _ in outcomes) + " |"]
    for factor in PRICE_FACTORS:
        meeting = [o for o in outcomes if o.slo_attainment >= SLO_TARGET]
        best = min(meeting, key=lambda o: o.total_usd(factor)) if meeting else None
        cells = []
        for o in outcomes:
            cell = f"{o.total_usd(factor):.2f}"
            cells.append(f"**{cell}**" if o is best else cell)
        prices = f"{INPUT_USD_PER_MTOK * factor:.3g} / {OUTPUT_USD_PER_MTOK * factor:.3g}"
        lines.append(f"| {factor:g} | {prices} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(outcomes: Sequence[Outcome]) -> str:
    """The issue's target at list price: an overflow route at >= 99% SLO cheaper than both pure options."""
    by_name = {o.name: o for o in outcomes}
    own, api = by_name["self-hosted"], by_name["external"]
    static = next((o for o in outcomes if o.name.startswith("self-hosted, static")), None)
    overflows = [o for o in outcomes if o.name.startswith("overflow") and o.slo_attainment >= SLO_TARGET]
    if not overflows:
        return "- **not met**: no overflow route reached 99% SLO attainment"
    best = min(overflows, key=lambda o: o.total_usd())
    cheaper = best.total_usd() < own.total_usd() and best.total_usd() < api.total_usd()
    line = (f"- {'**met**' if cheaper else '**not met**'} at list price: {best.name} reaches "
            f"{100 * best.slo_attainment:.2f}% SLO for ${best.total_usd():.2f}, against "
            f"${own.total_usd():.2f} self-hosted only ({100 * own.slo_attainment:.2f}% SLO) and "
            f"${api.total_usd():.2f} external only ({100 * api.slo_attainment:.2f}% SLO)")
    if static is not None:
        line += (f"; self-hosting at the SLO ({static.name}, {100 * static.slo_attainment:.2f}%) costs "
                 f"${static.total_usd():.2f}")
    return line


def crossover(outcomes: Sequence[Outcome]) -> str:
    """The API price at which external-only costs what self-hosting does."""
    by_name = {o.name: o for o in outcomes}
    own, api = by_name["self-hosted"], by_name["external"]
    if api.external_usd() <= 0:
        return ""
    factor = own.total_usd() / api.external_usd()
    return (f"- external only costs what self-hosting does at {factor:.3g}× the list price "
            f"(${INPUT_USD_PER_MTOK * factor:.3g} / ${OUTPUT_USD_PER_MTOK * factor:.3g} per million "
            f"prompt / generated tokens); below that the API alone is cheaper")
