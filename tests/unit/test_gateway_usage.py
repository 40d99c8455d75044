"""The gateway's token counts: from ``usage``, else counted from the stream, whatever the chunking."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelplane.gateway.usage import TAIL_BYTES, Usage, UsageCounter, usage_in


def sse(*events: Any, done: bool = True, spaced: bool = False) -> bytes:
    seps = (", ", ": ") if spaced else (",", ":")
    out = b"".join(b"data: " + json.dumps(e, separators=seps).encode() + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


def chat(content: str | None, *, finish: str | None = None, usage: Any = ...) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    event: dict[str, Any] = {"object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not ...:
        event["usage"] = usage
    return event


OPENING = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}

CASES = [
    # A non-streamed answer ends with its usage: exact.
    ("completion", False, json.dumps({"id": "x", "choices": [{"text": 'a "usage": {} b'}],
                                      "usage": USAGE}).encode(), Usage(12, 3, "usage")),
    ("embedding", False, json.dumps({"data": [{"embedding": [0.1]}],
                                     "usage": {"prompt_tokens": 7, "total_tokens": 7}}).encode(),
     Usage(7, None, "usage")),
    ("no-usage", False, b'{"choices": []}', Usage()),
    # A stream with include_usage: the last event's usage (earlier events carry "usage": null).
    ("stream-usage", True, sse(OPENING, chat("He", usage=None), chat("llo", usage=None),
                               chat(None, finish="stop", usage=None), {"choices": [], "usage": USAGE}),
     Usage(12, 3, "usage")),
    # Without it: the events with output are counted; the opening, the finish and [DONE] are not.
    ("stream-counted", True, sse(OPENING, chat("He"), chat("llo"), chat(""), chat(None, finish="stop")),
     Usage(None, 2, "stream")),
    ("stream-spaced-json", True, sse(OPENING, chat("a"), chat("b"), chat("c"), spaced=True),
     Usage(None, 3, "stream")),
    # A completions stream, and text that looks like a pattern (escaped quotes cannot end it).
    ("completions-stream", True, sse({"choices": [{"text": 'say "text":"x"'}]}, {"choices": [{"text": "!"}]}),
     Usage(None, 2, "stream")),
    ("reasoning", True, sse({"choices": [{"delta": {"reasoning_content": "hm"}}]}, chat("ok")),
     Usage(None, 2, "stream")),
]


@pytest.mark.parametrize(("stream", "body", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
def test_usage_whatever_the_chunks(stream: bool, body: bytes, expected: Usage, chunk: int) -> None:
    counter = UsageCounter(stream=stream)
    for i in range(0, len(body), chunk):
        counter.feed(body[i:i + chunk])
    assert counter.result() == expected


def test_a_long_answer_keeps_only_its_tail_and_still_finds_its_usage() -> None:
    body = json.dumps({"choices": [{"text": "x" * (4 * TAIL_BYTES)}], "usage": USAGE}).encode()
    counter = UsageCounter(stream=False)
    for i in range(0, len(body), 4096):
        counter.feed(body[i:i + 4096])
    assert counter.result() == Usage(12, 3, "usage")
    assert len(counter._tail) <= TAIL_BYTES  # noqa: SLF001


@pytest.mark.parametrize(("tail", "expected"), [
    (b'"usage": null}', None),
    (b'"usage": {"prompt_tokens": -1, "completion_tokens": 4}}', Usage(None, 4, "usage")),
    (b'"usage": {"total_tokens": 4}}', None),
    (b'"usage": {"prompt_tokens": 2, "completion', None),  # cut: no usable object
    (b'"usage"', None),
])
def test_usage_in(tail: bytes, expected: Usage | None) -> None:
    assert usage_in(tail) == expected
