"""A continuous-batching model of one vLLM replica: pure, clock-agnostic, event-driven.

The simulator's HTTP server drives it in real time and the autoscaling benchmark drives it in
virtual time, so it knows no clock: every call carries ``now`` (seconds, any origin, never going
back). It does no I/O and no asyncio.

What it models (vLLM V1's scheduler, simplified):

- at most ``max_num_seqs`` sequences run; the rest wait in FIFO order (head-of-line blocking, as
  vLLM's scheduler stops at the first request it cannot place);
- a KV cache of ``kv_cache_tokens`` tokens holds the prompt and generated tokens of every running
  sequence; a request is admitted only when a slot is free and its context fits; when decoding
  fills the cache, the most recently admitted sequence is preempted (vLLM's recompute mode: it goes
  back to the head of the queue and re-runs its prefill later);
- the engine runs in steps. A step in which requests are admitted prefills them (whole prompts,
  within a token budget of ``max_num_batched_tokens``) and decodes one token for everyone running;
  a pure decode step yields one token per running sequence. Step time is memory-bound:
  ``step_base_s + step_per_seq_s * running`` plus ``prefill tokens / prefill_tokens_per_s``, so
  aggregate tokens/s rises sub-linearly with the batch while each sequence slows down;
- prefix caching (``sim/prefix.py``): a request may name its prompt's blocks (a hash chain); the
  leading blocks this replica has computed before, and still holds, are not prefilled again — they
  cost neither prefill time nor prefill budget (they still take their room in the KV cache); blocks
  found only in the host-memory tier (CPU offloading) cost their copy back instead.

Why it is fast: between two events (an admission, a finish, a preemption, an arrival) the batch
does not change, so every step has the same length and every running sequence gains one token per
step. ``advance`` jumps over all those steps at once. A global step counter gives each sequence's
progress in O(1) (``steps - offset``) and a heap of finish steps gives the next finish in O(log n),
so the cost is per request, not per token: hours of virtual traffic on many replicas take seconds.

``advance(now)`` commits only the steps that END by ``now``, so an event is never reported before it
happens; the step in progress is recomputed on the next call from the same inputs (arrivals are
only ever submitted at or after the last ``now``, and a step's batch is fixed at its start).
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from modelplane.planner.performance import EngineParams
from modelplane_dev.sim.prefix import BLOCK_TOKENS, BlockHash, PrefixCache

#: vLLM V1's buckets (vllm/v1/metrics/loggers.py), so histograms compare one to one with real vLLM.
TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0)
REQUEST_LATENCY_BUCKETS: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
    960.0, 1920.0, 7680.0)

# Tolerance for float step arithmetic: a step ending at now +- 1 ns counts as ended.
_EPS = 1e-9


class FinishReason(StrEnum):
    """Why a request ended, as vLLM labels ``vllm:request_success_total{finished_reason}``.

    vLLM exposes a series for each reason from the start; the simulated engine never finishes a
    request with ``ERROR`` or ``REPETITION`` (vLLM 0.32's newer reasons), so theirs stay at 0.
    """

    STOP = "stop"  #: the output ended on its own
    LENGTH = "length"  #: ``max_tokens`` was reached
    ABORT = "abort"  #: the client went away
    ERROR = "error"  #: the engine failed the request (answered 500, or an error event in a stream)
    REPETITION = "repetition"  #: vLLM stopped a repetitive output


class EventKind(StrEnum):
    FIRST_TOKEN = "first_token"
    FINISHED = "finished"


@dataclass(frozen=True)
class Event:
    """Something that happened to a request at ``time`` (engine clock)."""

    kind: EventKind
    request_id: str
    time: float
    generation_tokens: int  #: tokens generated so far (1 for FIRST_TOKEN)
    reason: FinishReason | None = None  #: set on FINISHED


class Histogram:
    """A cumulative Prometheus-style histogram: bucket counts, sum and count."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets: tuple[float, ...] = tuple(buckets)
        self.counts: list[int] = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, count: int = 1) -> None:
        if count <= 0:
            return
        self.counts[bisect_left(self.buckets, value)] += count
        self.sum += value * count
        self.count += count

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, ending with (+inf, count)."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.buckets, math.inf), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass
class _Request:
    id: str
    prompt_tokens: int
    target_tokens: int  # tokens generated when the request finishes
    reason: FinishReason  # the reason it will finish with
    arrival: float
    generated_before: int = 0  # tokens kept across a preemption (recomputed on re-admission)
    offset: int = 0  # generated = engine steps - offset while running
    first_token_at: float | None = None
    queued_observed: bool = False
    blocks: tuple[BlockHash, ...] = ()  # the prompt's block hash chain (empty: nothing to cache)
    cached_tokens: int = 0  # prompt tokens found in the prefix cache, as of the last admission plan
    loaded_tokens: int = 0  # of those, the ones found only in the host-memory tier (copied back)


@dataclass
class EngineStats:
    """Counters and histograms, cumulative since the engine started (what ``/metrics`` shows)."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    prefix_cache_queries: int = 0  #: prompt tokens looked up in the prefix cache (vLLM's, in tokens)
    prefix_cache_hits: int = 0  #: of those, tokens found cached
    success: dict[FinishReason, int] = field(default_factory=lambda: dict.fromkeys(FinishReason, 0))
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    inter_token_latency: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e_latency: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    queue_time: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))


class EngineModel:
    """One replica's scheduler and step clock. See the module docstring for the model."""

    def __init__(self, params: EngineParams, *, start: float = 0.0, prefix_caching: bool = True,
                 prefix_cache_blocks: int | None = None, offload_blocks: int = 0,
                 offload_tokens_per_s: float = math.inf) -> None:
        """``prefix_cache_blocks``: the prefix cache's room (default: the whole KV cache, in blocks).

        ``offload_blocks``: the host-memory tier's room (CPU offloading; 0: none), whose blocks are
        copied back at ``offload_tokens_per_s``.
        """
        self.params = params
        self.stats = EngineStats()
        capacity = (params.kv_cache_tokens // BLOCK_TOKENS if prefix_cache_blocks is None
                    else prefix_cache_blocks)
        self.prefix_cache = PrefixCache(capacity if prefix_caching else 0, offload_blocks)
        if offload_tokens_per_s <= 0:
            raise ValueError(f"offload_tokens_per_s must be > 0, got {offload_tokens_per_s}")
        self._offload_tokens_per_s = offload_tokens_per_s
        self._t = start  # all steps ending at or before _t are committed
        self._steps = 0  # decode steps committed so far (each gives every running sequence a token)
        self._running: dict[str, _Request] = {}  # insertion order = admission order (for preemption)
        self._waiting: deque[_Request] = deque()
        self._waiting_ids: dict[str, _Request] = {}
        self._finish_heap: list[tuple[int, int, str]] = []  # (finish step, tiebreak, id); lazy deletion
        self._tiebreak = 0
        self._last_now = start
        # Running sums so that KV usage is O(1): used = prompts + n * steps - offsets.
        self._sum_context_base = 0  # sum over running of (prompt_tokens + generated_before)
        self._sum_offsets = 0  # sum over running of (offset + generated_before)

    # ---- inputs -------------------------------------------------------------------------------------

    def submit(self, request_id: str, prompt_tokens: int, max_tokens: int, now: float, *,
               output_tokens: int | None = None, blocks: Sequence[BlockHash] = ()) -> None:
        """A request arrives at ``now``.

        It generates ``min(output_tokens, max_tokens)`` tokens; it finishes with ``stop`` when its own
        output (``output_tokens``) ends first, else with ``length``. ``output_tokens=None`` means the
        output runs to ``max_tokens``. ``blocks``: its prompt's block hashes (``sim/prefix.py``), for
        the prefix cache. Raises ``ValueError`` for what vLLM answers with HTTP 400.
        """
        self._check_time(now)
        if request_id in self._running or request_id in self._waiting_ids:
            raise ValueError(f"duplicate request id {request_id!r}")
        if prompt_tokens < 1 or max_tokens < 1:
            raise ValueError("prompt_tokens and max_tokens must be >= 1")
        if prompt_tokens + max_tokens > self.params.max_model_len:
            raise ValueError(
                f"This model's maximum context length is {self.params.max_model_len} tokens. However, you "
                f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
                f"{max_tokens} in the completion).")
        if output_tokens is not None and output_tokens < max_tokens:
            target, reason = max(output_tokens, 1), FinishReason.STOP
        else:
            target, reason = max_tokens, FinishReason.LENGTH
        req = _Request(request_id, prompt_tokens, target, reason, arrival=now, blocks=tuple(blocks))
        self._waiting.append(req)
        self._waiting_ids[request_id] = req

    def abort(self, request_id: str, now: float) -> bool:
        """The client went away at ``now``; frees its slot and KV. False when it is not known."""
        self._check_time(now)
        req = self._running.pop(request_id, None)
        if req is not None:
            self._sum_context_base -= req.prompt_tokens + req.generated_before
            self._sum_offsets -= req.offset + req.generated_before
            self.stats.success[FinishReason.ABORT] += 1
            return True
        queued = self._waiting_ids.pop(request_id, None)
        if queued is not None:
            self._waiting.remove(queued)  # O(queue), but aborts are rare
            self.stats.success[FinishReason.ABORT] += 1
            return True
        return False

    # ---- gauges -------------------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """The engine clock: the end of the last committed step, or the last ``now`` when idle."""
        return self._t

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_cache_used_tokens(self) -> int:
        return self._sum_context_base + len(self._running) * self._steps - self._sum_offsets

    @property
    def kv_cache_usage(self) -> float:
        return min(1.0, self.kv_cache_used_tokens / self.params.kv_cache_tokens)

    @property
    def idle(self) -> bool:
        return not self._running and not self._waiting

    def is_running(self, request_id: str) -> bool:
        """Whether the request holds a batch slot now (False while it waits, or when unknown)."""
        return request_id in self._running

    def generated_tokens(self, request_id: str) -> int:
        """Tokens a running request has generated as of the last ``advance``; 0 while it waits."""
        req = self._running.get(request_id)
        if req is None:
            queued = self._waiting_ids.get(request_id)
            return queued.generated_before if queued is not None else 0
        return self._steps - req.offset

    def step_time(self, running: int, prefill_tokens: int = 0) -> float:
        p = self.params
        return p.step_base_s + p.step_per_seq_s * running + prefill_tokens / p.prefill_tokens_per_s

    def next_step_end(self) -> float | None:
        """When the step in progress ends (a hint for real-time drivers); None when idle."""
        if not self._running:
            if not self._waiting:
                return None
            head = self._waiting[0]
            start = max(self._t, head.arrival)
            context = head.prompt_tokens + head.generated_before
            on_gpu, offloaded = self.prefix_cache.hit_split(head.blocks, context)
            return (start + self.step_time(1, context - (on_gpu + offloaded) * BLOCK_TOKENS)
                    + offloaded * BLOCK_TOKENS / self._offload_tokens_per_s)
        return self._t + self.step_time(len(self._running))

    # ---- the clock ----------------------------------------------------------------------------------

    def advance(self, now: float) -> list[Event]:
        """Run every step that ends by ``now``; return the events of those steps, in time order."""
        self._check_time(now)
        self._last_now = now
        events: list[Event] = []
        while True:
            if not self._running:
                if not self._waiting:
                    self._t = max(self._t, now)  # idle: the next arrival starts a step at once
                    break
                head_arrival = self._waiting[0].arrival
                if head_arrival > now:
                    self._t = max(self._t, now)
                    break
                self._t = max(self._t, head_arrival)
            admitted = self._plan_admission()
            if admitted:
                if not self._admission_step(admitted, now, events):
                    break
                continue
            if not self._running:
                break  # nothing fits even in an empty engine (submit prevents this)
            n = len(self._running)
            if self.kv_cache_used_tokens + n > self.params.kv_cache_tokens:
                self._preempt_last()
                continue
            if not self._decode_jump(now, events):
                break
        return events

    def _check_time(self, now: float) -> None:
        if now < self._last_now - _EPS:
            raise ValueError(f"time went back: {now} < {self._last_now}")
        self._last_now = max(self._last_now, now)

    def _plan_admission(self) -> list[_Request]:
        """Requests admitted at the step starting at ``_t``: FIFO, while a slot, KV room and budget last."""
        p = self.params
        admitted: list[_Request] = []
        slots = p.max_num_seqs - len(self._running)
        kv_free = p.kv_cache_tokens - self.kv_cache_used_tokens - len(self._running)  # room for this step
        budget = p.max_num_batched_tokens
        computing: set[BlockHash] = set()  # blocks computed in this step by the requests admitted before
        for req in self._waiting:
            if req.arrival > self._t + _EPS or slots <= 0:
                break
            context = req.prompt_tokens + req.generated_before
            if context + 1 > kv_free:
                break
            on_gpu, offloaded = self.prefix_cache.hit_split(req.blocks, context, computing)
            req.cached_tokens = (on_gpu + offloaded) * BLOCK_TOKENS
            req.loaded_tokens = offloaded * BLOCK_TOKENS
            new = context - req.cached_tokens
            if admitted and new > budget:
                break
            admitted.append(req)
            computing.update(req.blocks)
            slots -= 1
            kv_free -= context + 1
            budget -= new
        return admitted

    def _admission_step(self, admitted: list[_Request], now: float, events: list[Event]) -> bool:
        prefill = sum(r.prompt_tokens + r.generated_before - r.cached_tokens for r in admitted)
        decoding = len(self._running)
        loaded = sum(r.loaded_tokens for r in admitted)
        duration = self.step_time(decoding + len(admitted), prefill) + loaded / self._offload_tokens_per_s
        end = self._t + duration
        if end > now + _EPS:
            return False  # the step is still in progress at `now`
        start = self._t
        for req in admitted:
            self._waiting.popleft()
            del self._waiting_ids[req.id]
            if not req.queued_observed:
                self.stats.queue_time.observe(start - req.arrival)
                self.stats.prompt_tokens += req.prompt_tokens
                req.queued_observed = True
            self.stats.prefix_cache_queries += req.prompt_tokens + req.generated_before
            self.stats.prefix_cache_hits += req.cached_tokens
            self.prefix_cache.use(req.blocks)
            req.offset = self._steps - req.generated_before
            self._running[req.id] = req
            self._sum_context_base += req.prompt_tokens + req.generated_before
            self._sum_offsets += req.offset + req.generated_before
            heapq.heappush(self._finish_heap, (req.offset + req.target_tokens, self._tiebreak, req.id))
            self._tiebreak += 1
        self._steps += 1
        self._t = end
        self.stats.generation_tokens += len(self._running)
        self.stats.inter_token_latency.observe(duration, decoding)
        for req in admitted:
            if req.first_token_at is None:
                req.first_token_at = end
                self.stats.ttft.observe(end - req.arrival)
                events.append(Event(EventKind.FIRST_TOKEN, req.id, end, 1))
        self._finish_due(events)
        return True

    def _decode_jump(self, now: float, events: list[Event]) -> bool:
        n = len(self._running)
        duration = self.step_time(n)
        k = math.floor((now - self._t) / duration + _EPS)
        if k <= 0:
            return False
        k = min(k, self._steps_to_next_finish())
        kv_room = self.params.kv_cache_tokens - self.kv_cache_used_tokens
        k = min(k, max(kv_room // n, 1))
        if self._waiting and len(self._running) < self.params.max_num_seqs:
            head_arrival = self._waiting[0].arrival
            if head_arrival > self._t + _EPS:
                # Stop at the first step boundary after the arrival, where it may be admitted.
                k = min(k, max(1, math.ceil((head_arrival - self._t) / duration - _EPS)))
        self._steps += k
        self._t += k * duration
        self.stats.generation_tokens += n * k
        self.stats.inter_token_latency.observe(duration, n * k)
        self._finish_due(events)
        return True

    def _steps_to_next_finish(self) -> int:
        while self._finish_heap:
            step, _, rid = self._finish_heap[0]
            req = self._running.get(rid)
            if req is None or req.offset + req.target_tokens != step:
                heapq.heappop(self._finish_heap)  # finished, aborted or preempted since it was pushed
                continue
            return max(step - self._steps, 1)
        return 1 << 62

    def _finish_due(self, events: list[Event]) -> None:
        while self._finish_heap and self._finish_heap[0][0] <= self._steps:
            step, _, rid = heapq.heappop(self._finish_heap)
            req = self._running.get(rid)
            if req is None or req.offset + req.target_tokens != step:
                continue
            del self._running[rid]
            self._sum_context_base -= req.prompt_tokens + req.generated_before
            self._sum_offsets -= req.offset + req.generated_before
            self.stats.success[req.reason] += 1
            self.stats.e2e_latency.observe(self._t - req.arrival)
            events.append(Event(EventKind.FINISHED, rid, self._t, req.target_tokens, req.reason))

    def _preempt_last(self) -> None:
        rid = next(reversed(self._running))
        req = self._running.pop(rid)
        self._sum_context_base -= req.prompt_tokens + req.generated_before
        self._sum_offsets -= req.offset + req.generated_before
        req.generated_before = self._steps - req.offset
        self._waiting.appendleft(req)
        self._waiting_ids[req.id] = req
        self.stats.preemptions += 1
