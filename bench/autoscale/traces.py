"""Request traces for the autoscaling benchmark: synthetic shapes and replayed CSV files.

A trace is a time-ordered list of requests (arrival second, prompt tokens, generated tokens). The
synthetic traces draw arrivals from a non-homogeneous Poisson process (thinning) with sizes from
log-normal distributions near the Azure LLM inference traces (a prompt of ~1,000 tokens, ~200
generated); they are seeded, so every run and every policy sees the same requests.

Replayed traces are CSV in the Azure LLM inference trace format: ``TIMESTAMP,ContextTokens,
GeneratedTokens``, TIMESTAMP being a date-time (``2023-11-16 18:15:46.6805900``) or seconds.
``time_scale`` stretches time (0.5 plays an hour in 30 minutes) and ``rate_scale`` multiplies the
request rate (2.0 sends every request twice, 0.5 every other one on average).
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class Request:
    at: float  #: seconds from the start of the trace
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Trace:
    name: str
    description: str
    requests: tuple[Request, ...]
    duration: float  #: seconds; the run measures GPU-hours over this span
    #: A bursty trace's bursts (start, end in seconds), and the shortest quiet its generator allows
    #: between two (None: no such bound, the gaps are random); for the oracle blind to timing.
    bursts: tuple[tuple[float, float], ...] = ()
    quiet_min: float | None = None
    #: Recorded production traffic (not generated): gets the cold-start distribution in the bench.
    real: bool = False

    @property
    def mean_rate(self) -> float:
        return len(self.requests) / self.duration if self.duration > 0 else 0.0


def _sizes(rng: random.Random) -> tuple[int, int]:
    prompt = int(min(6000, max(16, rng.lognormvariate(math.log(1000), 0.8))))
    output = int(min(1500, max(4, rng.lognormvariate(math.log(180), 0.7))))
    return prompt, output


def poisson_trace(name: str, description: str, rate: Callable[[float], float], peak: float,
                  duration: float, *, seed: int) -> Trace:
    """Arrivals at ``rate(t)`` requests/s (never above ``peak``) by thinning a Poisson process."""
    rng = random.Random(seed)
    requests = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= duration:
            break
        if rng.random() * peak <= rate(t):
            prompt, output = _sizes(rng)
            requests.append(Request(t, prompt, output))
    return Trace(name, description, tuple(requests), duration)


def steady(duration: float, *, rate: float = 20.0, seed: int = 1) -> Trace:
    return poisson_trace("steady", f"Poisson, {rate:g} req/s", lambda _t: rate, rate, duration, seed=seed)


def diurnal(duration: float, *, low: float = 3.0, high: float = 36.0, seed: int = 2) -> Trace:
    """One day compressed into ``duration``: night, a morning ramp, a peak, an evening decline."""
    def rate(t: float) -> float:
        return low + (high - low) * (0.5 - 0.5 * math.cos(2 * math.pi * t / duration))
    return poisson_trace("diurnal", f"one compressed day, {low:g}→{high:g}→{low:g} req/s", rate, high,
                         duration, seed=seed)


#: The quiet between two bursts of ``bursty``, seconds (uniform between the two).
_BURSTY_QUIET = (300.0, 480.0)


def bursty(duration: float, *, base: float = 6.0, spike: float = 24.0, seed: int = 3,
           random_gaps: bool = False) -> Trace:
    """A base load with spikes of 1.5–3 minutes every 5–8 minutes, ramping up in ~10 s.

    With ``random_gaps`` the quiet between spikes is exponential (memoryless) with the same mean,
    390 s, instead of 300–480 s: spikes with no rhythm to learn.
    """
    rng = random.Random(seed + (2000 if random_gaps else 1000))
    spikes = []
    t = 120.0
    while t < duration:
        length = rng.uniform(90, 180)
        spikes.append((t, t + length))
        t += length + (rng.expovariate(1 / 390) if random_gaps else rng.uniform(*_BURSTY_QUIET))

    def rate(t: float) -> float:
        for start, end in spikes:
            if start <= t < end:
                return base + (spike - base) * min(1.0, (t - start) / 10.0)
        return base
    trace = poisson_trace("bursty", f"{base:g} req/s with {len(spikes)} spikes to {spike:g} req/s", rate,
                          spike, duration, seed=seed)
    return replace(trace, bursts=tuple(spikes), quiet_min=None if random_gaps else _BURSTY_QUIET[0])


def _parse_time(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    # Azure writes 7 fractional digits; datetime takes at most 6.
    if "." in text:
        head, frac = text.rsplit(".", 1)
        text = f"{head}.{frac[:6]}"
    return datetime.fromisoformat(text).timestamp()


def load_csv(path: Path, *, time_scale: float = 1.0, rate_scale: float = 1.0, seed: int = 7,
             max_duration: float | None = None) -> Trace:
    """A trace from an Azure-format CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``)."""
    rows: list[tuple[float, int, int]] = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = {name.strip().lower(): name for name in reader.fieldnames or ()}
        try:
            ts, ctx, gen = fields["timestamp"], fields["contexttokens"], fields["generatedtokens"]
        except KeyError as exc:
            raise ValueError(f"{path}: need columns TIMESTAMP, ContextTokens, GeneratedTokens; "
                             f"got {reader.fieldnames}") from exc
        for line, row in enumerate(reader, start=2):
            try:
                rows.append((_parse_time(row[ts]), int(float(row[ctx])), int(float(row[gen]))))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{line}: {exc}") from exc
    return _scaled(path.stem, f"replayed {path.name}", rows, time_scale=time_scale,
                   rate_scale=rate_scale, seed=seed, max_duration=max_duration)


HERE = Path(__file__).resolve().parent
#: One hour of Azure's production code-completion service (2023-11-16), CC-BY 4.0: real/README.md.
AZURE_CODE = HERE / "real" / "AzureLLMInferenceTrace_code.csv"
#: One hour of Kimi's conversation traffic (Mooncake, FAST '25), Apache-2.0: bench/gateway/traces/.
MOONCAKE = HERE.parent / "gateway" / "traces" / "mooncake_conversation_trace.jsonl"


def _scaled(name: str, description: str, rows: list[tuple[float, int, int]], *, time_scale: float,
            rate_scale: float, seed: int, max_duration: float | None) -> Trace:
    """``rows`` (arrival s from the first, prompt, output) re-timed and re-rated (module docstring)."""
    if time_scale <= 0 or rate_scale <= 0:
        raise ValueError("time_scale and rate_scale must be > 0")
    if not rows:
        raise ValueError(f"{name}: no requests")
    rows.sort()
    t0 = rows[0][0]
    rng = random.Random(seed)
    requests = []
    for at, prompt, output in rows:
        t = (at - t0) * time_scale
        if max_duration is not None and t >= max_duration:
            break
        copies = int(rate_scale) + (1 if rng.random() < rate_scale - int(rate_scale) else 0)
        for i in range(copies):
            # Copies spread over a second, so a scaled trace does not arrive in lock-step bursts.
            jitter = 0.0 if i == 0 else rng.random()
            requests.append(Request(t + jitter, max(1, prompt), max(1, output)))
    requests.sort(key=lambda r: r.at)
    duration = max(requests[-1].at + 1.0, 1.0) if max_duration is None else max_duration
    return Trace(name, f"{description} (time ×{time_scale:g}, rate ×{rate_scale:g})", tuple(requests),
                 duration)


def load_mooncake(path: Path = MOONCAKE, *, time_scale: float = 1.0, rate_scale: float = 1.0,
                  seed: int = 7, max_duration: float | None = None) -> Trace:
    """A trace from Mooncake's JSON lines (``timestamp`` in ms, ``input_length``, ``output_length``)."""
    rows: list[tuple[float, int, int]] = []
    with path.open() as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                rows.append((float(item["timestamp"]) / 1000.0, int(item["input_length"]),
                             int(item["output_length"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{line_no}: {exc!r}") from exc
    return _scaled(path.stem, f"replayed {path.name}", rows, time_scale=time_scale,
                   rate_scale=rate_scale, seed=seed, max_duration=max_duration)


def real(name: str, *, rate_scale: float = 1.0, max_duration: float | None = None) -> Trace:
    """A bundled real trace by short name (``azure-code`` or ``mooncake``), named with its scale."""
    if name == "azure-code":
        trace = load_csv(AZURE_CODE, rate_scale=rate_scale, max_duration=max_duration)
        what = "Azure code completion, 2023-11-16 (real)"
    elif name == "mooncake":
        trace = load_mooncake(MOONCAKE, rate_scale=rate_scale, max_duration=max_duration)
        what = "Mooncake/Kimi conversation (real)"
    else:
        raise ValueError(f"unknown real trace {name!r}: azure-code or mooncake")
    return replace(trace, name=f"{name} ×{rate_scale:g}", description=f"{what}, rate ×{rate_scale:g}",
                   real=True)


def write_sample_csv(path: Path, *, duration: float = 900.0, seed: int = 11) -> int:
    """Write a small Azure-format CSV (a ramp with a burst); returns the number of requests."""
    def rate(t: float) -> float:
        burst = 2.0 if 420 <= t < 540 else 0.0
        return 1.0 + 2.0 * t / duration + burst
    trace = poisson_trace("sample", "", rate, 5.0, duration, seed=seed)
    start = datetime(2023, 11, 16, 18, 0, 0).timestamp()
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
        for r in trace.requests:
            stamp = datetime.fromtimestamp(start + r.at).strftime("%Y-%m-%d %H:%M:%S.%f") + "0"
            writer.writerow([stamp, r.prompt_tokens, r.output_tokens])
    return len(trace.requests)
