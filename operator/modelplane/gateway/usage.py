"""Counting an answer's tokens as it is relayed (pure).

The gateway reads no answer in full. It keeps the answer's last ``TAIL_BYTES`` and, for a stream,
counts the events that carry output as the chunks pass:

- **From ``usage``**: vLLM ends every non-streamed answer with its ``usage`` object, and a stream
  with one when the request asked for it (``stream_options: {"include_usage": true}``); the last
  ``"usage": {...}`` in the tail gives ``prompt_tokens`` and ``completion_tokens`` exactly.
- **Counted from the stream**: a stream without ``usage`` has its generated tokens counted as its
  events whose ``content``/``text``/``reasoning_content`` delta is not empty (vLLM streams one
  event per decoding step: one token, or a few with speculative decoding, so this can count low).
  Its prompt tokens are then unknown and not counted.

The patterns are looked for in the bytes as they come (``bytes.count``, no JSON parse per event),
with the few bytes before each chunk kept so that a pattern split across two chunks is counted
once. JSON strings cannot hold a raw quote, so ``"content":"`` followed by anything but ``"``
starts a non-empty string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: How much of an answer's end is kept to find its ``usage`` (vLLM's is under 300 bytes).
TAIL_BYTES = 16 * 1024

#: A non-empty output string in a stream event, in compact and in spaced JSON.
_OUTPUT_KEYS = (b"content", b"text", b"reasoning_content")
_STARTS = tuple(b'"' + k + sep + b'"' for k in _OUTPUT_KEYS for sep in (b'":', b'": '))
_EMPTY = tuple(s + b'"' for s in _STARTS)
_CARRY = max(len(p) for p in _EMPTY) - 1


@dataclass(frozen=True)
class Usage:
    """An answer's tokens, and where they were counted from (``usage``, ``stream`` or ``none``)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    source: str = "none"


def usage_in(tail: bytes) -> Usage | None:
    """The last ``"usage": {...}`` object in ``tail`` with token counts; None when there is none."""
    decoder = json.JSONDecoder()
    end = len(tail)
    while True:
        i = tail.rfind(b'"usage"', 0, end)
        if i < 0:
            return None
        end = i
        rest = tail[i + len(b'"usage"'):].lstrip()
        if not rest.startswith(b":"):
            continue
        try:
            value: Any = decoder.raw_decode(rest[1:].lstrip().decode("utf-8", errors="replace"))[0]
        except ValueError:
            continue
        if not isinstance(value, dict):
            continue  # "usage": null in an event before the last
        prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
        if not isinstance(prompt, int) and not isinstance(completion, int):
            continue
        return Usage(prompt if isinstance(prompt, int) and prompt >= 0 else None,
                     completion if isinstance(completion, int) and completion >= 0 else None, "usage")


def _count(data: bytes, patterns: tuple[bytes, ...]) -> int:
    return sum(data.count(p) for p in patterns)


class UsageCounter:
    """Feed it an answer's chunks in order; ``result`` says its tokens."""

    def __init__(self, *, stream: bool) -> None:
        self.stream = stream
        self._tail = b""
        self._carry = b""
        self._outputs = 0

    def feed(self, chunk: bytes) -> None:
        self._tail = (self._tail + chunk)[-TAIL_BYTES:]
        if self.stream:
            window = self._carry + chunk
            # A match wholly inside the carry was counted with the chunk before (subtracted); one
            # that starts in it and ends in this chunk was not (the carry is shorter than the
            # longest pattern, so every split match is seen whole here).
            self._outputs += (_count(window, _STARTS) - _count(self._carry, _STARTS)
                              - _count(window, _EMPTY) + _count(self._carry, _EMPTY))
            self._carry = window[-_CARRY:]

    def result(self) -> Usage:
        found = usage_in(self._tail)
        if found is not None:
            return found
        if self.stream:
            return Usage(None, self._outputs, "stream")
        return Usage()
