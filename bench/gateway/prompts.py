"""Workloads for the prefix benchmark (pure): traces of block hash ids, turned into prompt text.

A **trace request** is an arrival time, an input and an output length in tokens, and the ids of
the input's blocks of ``TRACE_BLOCK_TOKENS`` (512) tokens, as in the Mooncake traces: two requests
that share a block id share those 512 tokens, and (the traces' convention) every block before it.

**From ids to text.** The simulator's tokenizer is 4 characters a token, so a 512-token block is
2,048 characters; ``block_text(id)`` is the same text for the same id, different from the first
character block on for different ids (``"b{id} "`` repeated). A request's prompt is its blocks'
texts in order, the last cut to the input's remaining tokens: so requests that share leading ids
share leading text, character for character, and the simulator's prefix cache (16-token blocks,
``sim/prefix.py``) and the gateway's prefix affinity see exactly the sharing the trace records.

**Mooncake conversation** (``load_mooncake``): kvcache-ai/Mooncake,
``FAST25-release/traces/conversation_trace.jsonl`` (Apache-2.0; see traces/README.md): one hour,
12,031 requests, ``timestamp`` in ms.

**Tenants with long system prompts** (``synthetic_tenants``, seeded): ``tenants`` tenants, each with
its own system prompt of ``system_blocks`` blocks; each request picks its tenant by a Zipf law
(weight ``1 / rank**zipf_s``), and adds a user message of its own of 1 to ``user_blocks_max`` blocks
(a fresh block id: never shared); Poisson arrivals at ``rate`` per second; output lengths uniform in
``output_tokens``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

#: Tokens per block id in the traces (Mooncake's hash ids cover 512 tokens).
TRACE_BLOCK_TOKENS = 512
#: Characters per token, as the simulator counts them (``sim.quality.CHARS_PER_TOKEN``).
CHARS_PER_TOKEN = 4
MOONCAKE_CONVERSATION = Path(__file__).parent / "traces" / "mooncake_conversation_trace.jsonl"


@dataclass(frozen=True)
class TraceRequest:
    arrival_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.input_tokens < 1 or self.output_tokens < 0:
            raise ValueError(f"bad lengths: input {self.input_tokens}, output {self.output_tokens}")
        needed = -(-self.input_tokens // TRACE_BLOCK_TOKENS)
        if len(self.hash_ids) != needed:
            raise ValueError(f"{self.input_tokens} input tokens need {needed} block ids, "
                             f"got {len(self.hash_ids)}")


def block_text(hash_id: int, tokens: int = TRACE_BLOCK_TOKENS) -> str:
    """The text of the first ``tokens`` tokens of block ``hash_id`` (``CHARS_PER_TOKEN`` chars each)."""
    unit = f"b{hash_id} "
    chars = tokens * CHARS_PER_TOKEN
    return (unit * (chars // len(unit) + 1))[:chars]


def prompt_text(request: TraceRequest) -> str:
    """The prompt of ``request``: its blocks' texts in order, the last one cut to the input length."""
    pieces = []
    left = request.input_tokens
    for hash_id in request.hash_ids:
        pieces.append(block_text(hash_id, min(left, TRACE_BLOCK_TOKENS)))
        left -= TRACE_BLOCK_TOKENS
    return "".join(pieces)


def parse_mooncake(lines: Iterable[str]) -> list[TraceRequest]:
    """Mooncake trace lines (``timestamp`` ms, ``input_length``, ``output_length``, ``hash_ids``)."""
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append(TraceRequest(arrival_s=row["timestamp"] / 1000.0,
                                    input_tokens=int(row["input_length"]),
                                    output_tokens=int(row["output_length"]),
                                    hash_ids=tuple(int(h) for h in row["hash_ids"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"trace line {number}: {exc}") from None
    return out


def load_mooncake(path: Path = MOONCAKE_CONVERSATION) -> list[TraceRequest]:
    with path.open() as f:
        return parse_mooncake(f)


def window(requests: Sequence[TraceRequest], *, start_s: float, duration_s: float, speedup: float = 1.0,
           max_input_tokens: int | None = None) -> list[TraceRequest]:
    """The requests arriving in [start_s, start_s + duration_s), re-timed from 0 and ``speedup`` times faster.

    Requests longer than ``max_input_tokens`` are left out (the replicas' context would refuse them).
    """
    if speedup <= 0 or duration_s <= 0:
        raise ValueError("speedup and duration_s must be > 0")
    return [replace(r, arrival_s=(r.arrival_s - start_s) / speedup) for r in requests
            if start_s <= r.arrival_s < start_s + duration_s
            and (max_input_tokens is None or r.input_tokens <= max_input_tokens)]


def synthetic_tenants(*, seed: int, tenants: int = 24, system_blocks: int = 8, user_blocks_max: int = 2,
                      rate: float = 4.0, duration_s: float = 600.0, zipf_s: float = 1.0,
                      output_tokens: tuple[int, int] = (50, 400)) -> list[TraceRequest]:
    """A seeded mix of tenants with long system prompts (see the module docstring)."""
    if tenants < 1 or system_blocks < 1 or user_blocks_max < 1 or rate <= 0:
        raise ValueError("tenants, system_blocks, user_blocks_max and rate must be positive")
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) ** zipf_s for rank in range(tenants)]
    # Tenant t's system prompt is ids t*system_blocks .. ; users' blocks are numbered after them all.
    next_id = tenants * system_blocks
    out = []
    t = rng.expovariate(rate)
    while t < duration_s:
        tenant = rng.choices(range(tenants), weights)[0]
        user_blocks = rng.randint(1, user_blocks_max)
        last_tokens = rng.randint(1, TRACE_BLOCK_TOKENS)
        ids = tuple(range(tenant * system_blocks, (tenant + 1) * system_blocks)) + tuple(
            range(next_id, next_id + user_blocks))
        next_id += user_blocks
        out.append(TraceRequest(arrival_s=t, output_tokens=rng.randint(*output_tokens), hash_ids=ids,
                                input_tokens=(system_blocks + user_blocks - 1) * TRACE_BLOCK_TOKENS
                                + last_tokens))
        t += rng.expovariate(rate)
    return out
