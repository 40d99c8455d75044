"""``modelplane load``: an open-loop load generator for OpenAI-compatible chat endpoints.

Requests arrive as a Poisson process whose rate follows a schedule, whatever the server's state
(open loop: a slow server gets a growing backlog, as in production, instead of a politely slower
client). Each request is a streamed chat completion with a prompt and output length drawn from
distributions; the report gives the achieved rate, TTFT and end-to-end latency percentiles and
errors by kind (``http_<status>``, ``timeout``, a client error's name, ``bad_stream`` for a stream
that is not JSON, ``stream_error`` for an error event inside a stream that began with 200), and can
be written as JSON. ``run_load`` is the library entry point for tests and the demo.

Schedules (``--schedule``), rates in requests/s, times in seconds from the start:

- ``constant:5``
- ``step:2@0,10@30`` (2/s from t=0, 10/s from t=30)
- ``diurnal:peak=10,trough=1,period=120`` (a cosine from trough at t=0 to peak at period/2)
- ``bursty:base=2,spike=20,every=60,for=10`` (the last ``for`` seconds of every ``every`` run at
  ``spike``)

Lengths (``--prompt-tokens``, ``--output-tokens``): ``200`` (always 200) or
``lognormal:mean=200,sigma=0.6[,min=10,max=2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# ---- schedules and distributions (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A request rate as a function of time since the start."""

    kind: str
    params: tuple[tuple[str, float], ...]
    steps: tuple[tuple[float, float], ...] = ()  # (start, rate) for kind "step"

    def __call__(self, t: float) -> float:
        return self.rate(t)

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
        raise ValueError(f"need exactly {sorted(required)}; missing {sorted(missing)}, "
                         f"unknown {sorted(unknown)}")
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
            if steps[0][0] != 0:
                raise ValueError("the first step must start at 0")
            return Schedule("step", (), tuple(steps))
        if kind == "diurnal":
            v = _key_values(rest, {"peak", "trough", "period"})
            if v["period"] <= 0 or not 0 <= v["trough"] <= v["peak"]:
                raise ValueError("need period > 0 and 0 <= trough <= peak")
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
    """A distribution of token counts: lognormal with this mean and ``sigma`` (0 = always ``mean``),
    clipped to [minimum, maximum]."""

    mean: float
    minimum: int = 1
    maximum: int | None = None
    sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.mean < 1 or self.minimum < 1 or self.sigma < 0:
            raise ValueError("need mean >= 1, minimum >= 1 and sigma >= 0")
        if self.maximum is not None and self.maximum < self.minimum:
            raise ValueError("maximum must be >= minimum")

    def draw(self, rng: random.Random) -> int:
        if self.sigma == 0:
            value = self.mean
        else:
            # mu chosen so that the mean (not the median) is `mean`.
            value = rng.lognormvariate(math.log(self.mean) - self.sigma**2 / 2, self.sigma)
        count = max(self.minimum, int(round(value)))
        return count if self.maximum is None else min(count, self.maximum)


def parse_lengths(spec: str) -> Lengths:
    """``200`` (always 200) or ``lognormal:mean=200,sigma=0.6[,min=10,max=2000]``."""
    try:
        if spec.isdigit():
            return Lengths(int(spec))
        kind, _, rest = spec.partition(":")
        if kind == "lognormal":
            values: dict[str, float] = {}
            for part in rest.split(","):
                key, eq, value = part.partition("=")
                if not eq or key not in ("mean", "sigma", "min", "max"):
                    raise ValueError(f"unknown or malformed {part!r}")
                values[key] = float(value)
            maximum = values.get("max")
            return Lengths(values["mean"], int(values.get("min", 1)),
                           int(maximum) if maximum is not None else None, values.get("sigma", 0.5))
    except (ValueError, KeyError) as exc:
        raise ValueError(f"bad length distribution {spec!r}: {exc}") from exc
    raise ValueError(f"bad length distribution {spec!r}: use N or lognormal:mean=M,sigma=S[,min=A,max=B]")


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


#: The name the tests and the demo use.
arrivals = arrival_times


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
    """The q-th percentile (q in 0..100) by the nearest-rank method; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# ---- the run ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadConfig:
    base_url: str  #: the OpenAI base URL, e.g. http://127.0.0.1:8000/v1
    model: str | None = None  #: None: the first model of GET /models
    schedule: Schedule = field(default_factory=lambda: parse_schedule("constant:1"))
    duration: float = 10.0  #: seconds of arrivals
    max_requests: int | None = None  #: stop sending after this many
    prompt_tokens: Lengths = field(default_factory=lambda: Lengths(128))
    output_tokens: Lengths = field(default_factory=lambda: Lengths(64))
    seed: int = 0
    timeout: float = 120.0  #: per request, seconds
    max_in_flight: int = 2000  #: beyond this, arrivals are dropped (and counted as errors) instead of sent
    api_key: str | None = None


@dataclass(frozen=True)
class Progress:
    elapsed: float
    sent: int
    ok: int
    errors: int
    in_flight: int


@dataclass
class LoadReport:
    """What a run measured. ``ttft`` and ``latency`` hold one value per successful request, in order."""

    duration: float  #: seconds from the first send to the last answer
    window: float  #: seconds of arrivals
    target_rps: float  #: the schedule's mean rate over the window
    sent: int = 0
    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    generated_tokens: int = 0

    @property
    def achieved_rps(self) -> float:
        return self.sent / self.window if self.window > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        def stats(values: list[float]) -> dict[str, float | None]:
            return {"p50": percentile(values, 50), "p90": percentile(values, 90),
                    "p99": percentile(values, 99), "mean": sum(values) / len(values) if values else None}

        return {
            "sent": self.sent, "ok": self.ok, "errors": self.errors, "errorKinds": dict(self.error_kinds),
            "durationSeconds": self.duration, "targetRPS": self.target_rps, "achievedRPS": self.achieved_rps,
            "completedRPS": self.ok / self.duration if self.duration > 0 else 0.0,
            "outputTokensPerSecond": self.generated_tokens / self.duration if self.duration > 0 else 0.0,
            "generatedTokens": self.generated_tokens,
            "ttftSeconds": stats(self.ttft), "latencySeconds": stats(self.latency),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


@dataclass
class _Result:
    ok: bool
    error: str | None = None
    ttft: float = 0.0
    latency: float = 0.0
    output_tokens: int = 0


async def _one_request(http: aiohttp.ClientSession, config: LoadConfig, model: str, prompt: str,
                       max_tokens: int) -> _Result:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True},
            # vLLM extensions so that a real server produces the requested length, as the simulator does.
            "ignore_eos": True, "min_tokens": max_tokens}
    started = time.monotonic()
    ttft: float | None = None
    tokens = 0
    try:
        async with http.post(f"{config.base_url}/chat/completions", json=body,
                             timeout=aiohttp.ClientTimeout(total=config.timeout)) as response:
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
                if chunk.get("error"):
                    # vLLM reports a failure after the 200 this way (e.g. vLLM 0.32's engine errors).
                    return _Result(False, "stream_error")
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
    latency = time.monotonic() - started
    # An empty answer has no first token; count its end as the first (and only) moment it answered.
    return _Result(True, ttft=ttft if ttft is not None else latency, latency=latency, output_tokens=tokens)


async def _first_model(http: aiohttp.ClientSession, base_url: str, timeout: float) -> str:
    async with http.get(f"{base_url}/models", timeout=aiohttp.ClientTimeout(total=timeout)) as response:
        response.raise_for_status()
        data = await response.json()
    return str(data["data"][0]["id"])


async def run_load(config: LoadConfig, *, progress: Callable[[Progress], None] | None = None,
                   progress_every: float = 5.0, stop: asyncio.Event | None = None) -> LoadReport:
    """Drive ``config``'s schedule against ``config.base_url``; returns when every request sent has ended.

    Failures of single requests are counted by kind, never raised; only finding the model (when
    ``config.model`` is None) may raise ``aiohttp.ClientError``. Setting ``stop`` ends the arrivals
    early (a test that waits for a condition under load); the requests in flight still finish, and
    the report's ``window`` is then the seconds of arrivals there were.
    """
    rng = random.Random(config.seed)
    times = arrival_times(config.schedule, config.duration, rng)
    if config.max_requests is not None:
        times = times[: config.max_requests]
    window = config.duration if config.max_requests is None or len(times) < config.max_requests \
        else (times[-1] if times else 0.0)
    report = LoadReport(duration=0.0, window=window, target_rps=config.schedule.mean_rate(config.duration))
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    tasks: set[asyncio.Task[None]] = set()

    def record(result: _Result) -> None:
        if result.ok:
            report.ok += 1
            report.ttft.append(result.ttft)
            report.latency.append(result.latency)
            report.generated_tokens += result.output_tokens
        else:
            report.errors += 1
            kind = result.error or "error"
            report.error_kinds[kind] = report.error_kinds.get(kind, 0) + 1

    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=0)) as http:
        model = config.model or await _first_model(http, config.base_url, config.timeout)
        start = time.monotonic()
        next_progress = progress_every

        async def send(prompt: str, max_tokens: int) -> None:
            record(await _one_request(http, config, model, prompt, max_tokens))

        def report_progress(elapsed: float) -> None:
            if progress is not None:
                progress(Progress(elapsed, report.sent, report.ok, report.errors, len(tasks)))

        try:
            for at in times:
                delay = start + at - time.monotonic()
                if stop is not None and delay > 0:
                    with contextlib.suppress(TimeoutError):  # the next arrival's time, or the stop
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                elif delay > 0:
                    await asyncio.sleep(delay)
                if stop is not None and stop.is_set():
                    report.window = time.monotonic() - start
                    break
                elapsed = time.monotonic() - start
                while elapsed >= next_progress:
                    report_progress(elapsed)
                    next_progress += progress_every
                report.sent += 1
                if len(tasks) >= config.max_in_flight:
                    record(_Result(False, "dropped"))
                    continue
                prompt = prompt_text(config.prompt_tokens.draw(rng), rng)
                task = asyncio.create_task(send(prompt, config.output_tokens.draw(rng)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        report.duration = time.monotonic() - start
        report_progress(report.duration)
    return report


# ---- the command -------------------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def format_report(report: LoadReport) -> str:
    d = report.to_dict()
    ttft, latency = d["ttftSeconds"], d["latencySeconds"]
    lines = [
        f"sent {report.sent} in {report.duration:.1f}s: {report.ok} ok, {report.errors} errors",
        f"rate: target {report.target_rps:.2f}/s, achieved {report.achieved_rps:.2f}/s, "
        f"completed {d['completedRPS']:.2f}/s, {d['outputTokensPerSecond']:.0f} output tokens/s",
        f"TTFT    p50 {_fmt(ttft['p50'])}  p90 {_fmt(ttft['p90'])}  p99 {_fmt(ttft['p99'])}",
        f"latency p50 {_fmt(latency['p50'])}  p90 {_fmt(latency['p90'])}  p99 {_fmt(latency['p99'])}",
    ]
    if report.error_kinds:
        lines.append("errors: " + ", ".join(f"{k}={v}" for k, v in sorted(report.error_kinds.items())))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        config = LoadConfig(
            base_url=args.base_url.rstrip("/"), model=args.model, schedule=parse_schedule(args.schedule),
            duration=args.duration, max_requests=args.max_requests,
            prompt_tokens=parse_lengths(args.prompt_tokens), output_tokens=parse_lengths(args.output_tokens),
            seed=args.seed, timeout=args.timeout, api_key=args.api_key)
    except ValueError as exc:
        print(f"modelplane load: {exc}", file=sys.stderr)
        return 2

    def show(p: Progress) -> None:
        print(f"t={p.elapsed:6.1f}s sent={p.sent} ok={p.ok} errors={p.errors} in_flight={p.in_flight}",
              file=sys.stderr, flush=True)

    try:
        report = asyncio.run(run_load(config, progress=show, progress_every=args.progress_every))
    except (aiohttp.ClientError, OSError) as exc:
        print(f"modelplane load: cannot reach {config.base_url}: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(report.to_json() + "\n")
    return 0 if report.errors == 0 else 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("load", help="drive open-loop chat load against an OpenAI-compatible URL",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", "--url", dest="base_url", default="http://127.0.0.1:8000/v1",
                        help="OpenAI base URL, with /v1 (--url is the same option)")
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
