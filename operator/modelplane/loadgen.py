"""``modelplane load``: an open-loop load generator for OpenAI-compatible chat endpoints.

Requests arrive as a Poisson process whose rate follows a schedule, whatever the server's state
(open loop: a slow server gets a growing backlog, as in production, instead of a politely slower
client). Each request is a streamed chat completion with a prompt and output length drawn from
distributions; the report gives the achieved rate, TTFT and end-to-end latency percentiles and
errors, and can be written as JSON. ``run_load`` is the library entry point for tests and the demo.

Schedules (``--schedule``), rates in requests/s, times in seconds from the start:

- ``constant:5``
- ``step:2@0,10@30`` (2/s from t=0, 10/s from t=30)
- ``diurnal:peak=10,trough=1,period=120`` (a cosine from trough at t=0 to peak at period/2)
- ``bursty:base=2,spike=20,every=60,for=10`` (the last ``for`` seconds of every ``every`` run at
  ``spike``)

Lengths (``--prompt-tokens``, ``--output-tokens``): ``200`` (fixed), ``uniform:100-400``,
``lognormal:median=200,sigma=0.6`` (capped at 16 x the median).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

# ---- schedules and distributions (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A request rate as a function of time since the start."""

    kind: str
    params: tuple[tuple[str, float], ...]
    steps: tuple[tuple[float, float], ...] = ()  # (start, rate) for kind "step"

    def rate(self, t: float) -> float:
        p = dict(self.params)
        if self.kind == "constant":
            return p["rate"]
        if self.kind == "step":
            current = 0.0
            for start, rate in self.steps:
                if t >= start:
                    current = rate
            return current
        if self.kind == "diurnal":
            phase = (1 - math.cos(2 * math.pi * t / p["period"])) / 2
            return p["trough"] + (p["peak"] - p["trough"]) * phase
        if self.kind == "bursty":
            in_spike = (t % p["every"]) >= p["every"] - p["for"]
            return p["spike"] if in_spike else p["base"]
        raise ValueError(f"unknown schedule kind {self.kind}")

    def max_rate(self) -> float:
        p = dict(self.params)
        if self.kind == "constant":
            return p["rate"]
        if self.kind == "step":
            return max(rate for _, rate in self.steps)
        if self.kind == "diurnal":
            return max(p["peak"], p["trough"])
        return max(p["spike"], p["base"])

    def mean_rate(self, duration: float, samples: int = 1000) -> float:
        """The average rate over [0, duration] (what a perfect client would achieve)."""
        if duration <= 0:
            return 0.0
        return sum(self.rate(duration * (i + 0.5) / samples) for i in range(samples)) / samples


def _key_values(text: str, required: set[str]) -> dict[str, float]:
    values: dict[str, float] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"expected key=value, got {part!r}")
        values[key.strip()] = float(value)
    missing = required - set(values)
    unknown = set(values) - required
    if missing or unknown:
        raise ValueError(f"need exactly {sorted(required)}; missing {sorted(missing)}, unknown {sorted(unknown)}")
    return values


def parse_schedule(spec: str) -> Schedule:
    """A ``Schedule`` from its spec (see the module docstring); ``ValueError`` with the reason otherwise."""
    kind, _, rest = spec.partition(":")
    try:
        if kind == "constant":
            rate = float(rest)
            if rate < 0:
                raise ValueError("rate must be >= 0")
            return Schedule("constant", (("rate", rate),))
        if kind == "step":
            steps = []
            for part in rest.split(","):
                rate_text, at, start_text = part.partition("@")
                if not at:
                    raise ValueError(f"expected RATE@START, got {part!r}")
                steps.append((float(start_text), float(rate_text)))
            steps.sort()
            if any(rate < 0 for _, rate in steps):
                raise ValueError("rates must be >= 0")
            return Schedule("step", (), tuple(steps))
        if kind == "diurnal":
            v = _key_values(rest, {"peak", "trough", "period"})
            if v["period"] <= 0 or v["peak"] < 0 or v["trough"] < 0:
                raise ValueError("period must be > 0 and rates >= 0")
            return Schedule("diurnal", tuple(sorted(v.items())))
        if kind == "bursty":
            v = _key_values(rest, {"base", "spike", "every", "for"})
            if v["every"] <= 0 or not 0 <= v["for"] <= v["every"] or v["base"] < 0 or v["spike"] < 0:
                raise ValueError("need every > 0, 0 <= for <= every, rates >= 0")
            return Schedule("bursty", tuple(sorted(v.items())))
    except ValueError as exc:
        raise ValueError(f"bad schedule {spec!r}: {exc}") from exc
    raise ValueError(f"bad schedule {spec!r}: kind must be constant, step, diurnal or bursty")


@dataclass(frozen=True)
class Lengths:
    """A distribution of token counts."""

    kind: str  # fixed | uniform | lognormal
    a: float
    b: float = 0.0

    def draw(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.a)
        if self.kind == "uniform":
            return rng.randint(int(self.a), int(self.b))
        value = rng.lognormvariate(math.log(self.a), self.b)
        return max(1, min(int(round(value)), int(16 * self.a)))


def parse_lengths(spec: str) -> Lengths:
    try:
        if spec.isdigit():
            if int(spec) < 1:
                raise ValueError("must be >= 1")
            return Lengths("fixed", int(spec))
        kind, _, rest = spec.partition(":")
        if kind == "uniform":
            low, _, high = rest.partition("-")
            if not 1 <= int(low) <= int(high):
                raise ValueError("need 1 <= low <= high")
            return Lengths("uniform", int(low), int(high))
        if kind == "lognormal":
            v = _key_values(rest, {"median", "sigma"})
            if v["median"] < 1 or v["sigma"] < 0:
                raise ValueError("need median >= 1 and sigma >= 0")
            return Lengths("lognormal", v["median"], v["sigma"])
    except ValueError as exc:
        raise ValueError(f"bad length distribution {spec!r}: {exc}") from exc
    raise ValueError(f"bad length distribution {spec!r}: use N, uniform:A-B or lognormal:median=M,sigma=S")


def arrival_times(schedule: Schedule, duration: float, rng: random.Random) -> list[float]:
    """Arrival times of a non-homogeneous Poisson process on [0, duration) (Lewis-Shedler thinning)."""
    peak = schedule.max_rate()
    times: list[float] = []
    if peak <= 0:
        return times
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= duration:
            return times
        if rng.random() * peak < schedule.rate(t):
            times.append(t)


_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "model", "plane", "query", "token", "cache", "batch")


def prompt_text(tokens: int, rng: random.Random) -> str:
    """A prompt of about ``tokens`` tokens (four characters a token)."""
    words: list[str] = []
    length = 0
    while length < tokens * 4:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[: tokens * 4]


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# ---- the run ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadConfig:
    base_url: str  #: the OpenAI base URL, e.g. http://127.0.0.1:8000/v1
    model: str | None = None  #: None: the first model of GET /models
    schedule: Schedule = field(default_factory=lambda: parse_schedule("constant:1"))
    duration_s: float = 10.0
    max_requests: int | None = None
    prompt_tokens: Lengths = field(default_factory=lambda: Lengths("fixed", 128))
    output_tokens: Lengths = field(default_factory=lambda: Lengths("fixed", 64))
    seed: int = 0
    request_timeout_s: float = 120.0
    max_in_flight: int = 2000  #: beyond this, arrivals are dropped (and counted) instead of sent
    api_key: str | None = None


@dataclass(frozen=True)
class Stats:
    p50: float | None
    p90: float | None
    p99: float | None
    mean: float | None

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        return cls(percentile(values, 0.5), percentile(values, 0.9), percentile(values, 0.99),
                   sum(values) / len(values) if values else None)


@dataclass(frozen=True)
class LoadReport:
    sent: int
    completed: int
    errors: int
    dropped: int
    errors_by_kind: dict[str, int]
    duration_s: float
    target_rate: float  #: the schedule's mean rate over the run
    achieved_rate: float  #: requests sent per second
    completed_rate: float
    output_tokens_per_s: float
    ttft_s: Stats
    latency_s: Stats

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


@dataclass(frozen=True)
class Progress:
    elapsed_s: float
    sent: int
    completed: int
    errors: int
    in_flight: int


@dataclass
class _Result:
    ok: bool
    error: str | None = None
    ttft: float | None = None
    latency: float | None = None
    output_tokens: int = 0


async def _one_request(http: aiohttp.ClientSession, config: LoadConfig, model: str, prompt: str,
                       max_tokens: int) -> _Result:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True},
            # vLLM extensions so that real servers produce the requested length, as the simulator does.
            "ignore_eos": True, "min_tokens": max_tokens}
    started = time.monotonic()
    ttft: float | None = None
    tokens = 0
    try:
        async with http.post(f"{config.base_url}/chat/completions", json=body,
                             timeout=aiohttp.ClientTimeout(total=config.request_timeout_s)) as response:
            if response.status != 200:
                await response.read()
                return _Result(False, f"http_{response.status}")
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                usage = chunk.get("usage")
                if usage:
                    tokens = int(usage.get("completion_tokens", tokens))
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content") and ttft is None:
                        ttft = time.monotonic() - started
    except TimeoutError:
        return _Result(False, "timeout")
    except aiohttp.ClientError as exc:
        return _Result(False, type(exc).__name__)
    except json.JSONDecodeError:
        return _Result(False, "bad_stream")
    return _Result(True, ttft=ttft, latency=time.monotonic() - started, output_tokens=tokens)


async def _first_model(http: aiohttp.ClientSession, base_url: str) -> str:
    async with http.get(f"{base_url}/models", timeout=aiohttp.ClientTimeout(total=30)) as response:
        response.raise_for_status()
        data = await response.json()
    return str(data["data"][0]["id"])


async def run_load(config: LoadConfig, *, progress: Callable[[Progress], None] | None = None,
                   progress_every_s: float = 5.0) -> LoadReport:
    """Drive ``config``'s schedule against ``config.base_url``; returns when every request sent has ended."""
    rng = random.Random(config.seed)
    arrivals = arrival_times(config.schedule, config.duration_s, rng)
    if config.max_requests is not None:
        arrivals = arrivals[: config.max_requests]
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    results: list[_Result] = []
    tasks: set[asyncio.Task[None]] = set()
    dropped = 0
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=0)) as http:
        model = config.model or await _first_model(http, config.base_url)
        start = time.monotonic()
        next_progress = progress_every_s

        async def send(prompt: str, max_tokens: int) -> None:
            results.append(await _one_request(http, config, model, prompt, max_tokens))

        def report_progress(now: float) -> None:
            if progress is not None:
                errors = sum(1 for r in results if not r.ok)
                progress(Progress(now, len(results) + len(tasks), len(results) - errors, errors, len(tasks)))

        for at in arrivals:
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elapsed = time.monotonic() - start
            while elapsed >= next_progress:
                report_progress(elapsed)
                next_progress += progress_every_s
            if len(tasks) >= config.max_in_flight:
                dropped += 1
                continue
            prompt = prompt_text(config.prompt_tokens.draw(rng), rng)
            task = asyncio.create_task(send(prompt, config.output_tokens.draw(rng)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
        report_progress(elapsed)
    sent_window = max(config.duration_s if config.max_requests is None else (arrivals[-1] if arrivals else 0.0),
                      1e-9)
    ok = [r for r in results if r.ok]
    errors_by_kind: dict[str, int] = {}
    for r in results:
        if not r.ok and r.error is not None:
            errors_by_kind[r.error] = errors_by_kind.get(r.error, 0) + 1
    if dropped:
        errors_by_kind["dropped"] = dropped
    return LoadReport(
        sent=len(results), completed=len(ok), errors=len(results) - len(ok), dropped=dropped,
        errors_by_kind=errors_by_kind, duration_s=elapsed,
        target_rate=config.schedule.mean_rate(config.duration_s),
        achieved_rate=len(results) / sent_window,
        completed_rate=len(ok) / max(elapsed, 1e-9),
        output_tokens_per_s=sum(r.output_tokens for r in ok) / max(elapsed, 1e-9),
        ttft_s=Stats.of([r.ttft for r in ok if r.ttft is not None]),
        latency_s=Stats.of([r.latency for r in ok if r.latency is not None]),
    )


# ---- the command -------------------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def format_report(report: LoadReport) -> str:
    lines = [
        f"sent {report.sent} in {report.duration_s:.1f}s: {report.completed} ok, {report.errors} errors, "
        f"{report.dropped} dropped",
        f"rate: target {report.target_rate:.2f}/s, achieved {report.achieved_rate:.2f}/s, "
        f"completed {report.completed_rate:.2f}/s, {report.output_tokens_per_s:.0f} output tokens/s",
        f"TTFT    p50 {_fmt(report.ttft_s.p50)}  p90 {_fmt(report.ttft_s.p90)}  p99 {_fmt(report.ttft_s.p99)}",
        f"latency p50 {_fmt(report.latency_s.p50)}  p90 {_fmt(report.latency_s.p90)}  "
        f"p99 {_fmt(report.latency_s.p99)}",
    ]
    if report.errors_by_kind:
        lines.append("errors: " + ", ".join(f"{k}={v}" for k, v in sorted(report.errors_by_kind.items())))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        config = LoadConfig(
            base_url=args.base_url.rstrip("/"), model=args.model, schedule=parse_schedule(args.schedule),
            duration_s=args.duration, max_requests=args.max_requests,
            prompt_tokens=parse_lengths(args.prompt_tokens), output_tokens=parse_lengths(args.output_tokens),
            seed=args.seed, request_timeout_s=args.timeout, api_key=args.api_key)
    except ValueError as exc:
        print(f"modelplane load: {exc}", file=sys.stderr)
        return 2

    def show(p: Progress) -> None:
        print(f"t={p.elapsed_s:6.1f}s sent={p.sent} ok={p.completed} errors={p.errors} in_flight={p.in_flight}",
              file=sys.stderr, flush=True)

    try:
        report = asyncio.run(run_load(config, progress=show, progress_every_s=args.progress_every))
    except (aiohttp.ClientError, OSError) as exc:
        print(f"modelplane load: cannot reach {config.base_url}: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(report.to_json() + "\n")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("load", help="drive open-loop chat load against an OpenAI-compatible URL",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="OpenAI base URL (with /v1)")
    parser.add_argument("--model", default=None, help="model name (default: the first of GET /models)")
    parser.add_argument("--schedule", default="constant:1", help="rate schedule (see above)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals")
    parser.add_argument("--max-requests", type=int, default=None, help="stop sending after this many")
    parser.add_argument("--prompt-tokens", default="128", help="prompt length distribution")
    parser.add_argument("--output-tokens", default="64", help="output length distribution")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, seconds")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines")
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    parser.set_defaults(func=run)
