"""Spotting a relayed stream's first token (pure)."""

from __future__ import annotations

import pytest

from modelplane.gateway.streaming import MAX_HEAD_BYTES, FirstTokenScanner, carries_output

ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'


@pytest.mark.parametrize(("data", "expected"), [
    pytest.param(b'{"choices":[{"delta":{"role":"assistant","content":""}}]}', False, id="chat-role-opening"),
    pytest.param(b'{"choices":[{"delta":{"content":"Hi"}}]}', True, id="chat-content"),
    pytest.param(b'{"choices":[{"delta":{"reasoning_content":"hm"}}]}', True, id="reasoning"),
    pytest.param(b'{"choices":[{"delta":{"tool_calls":[{"id":"t"}]}}]}', True, id="tool-call"),
    pytest.param(b'{"choices":[{"text":"Hi","finish_reason":null}]}', True, id="completion-text"),
    pytest.param(b'{"choices":[{"text":"","finish_reason":null}]}', False, id="completion-empty"),
    pytest.param(b'{"choices":[{"text":"","finish_reason":"length"}]}', True, id="finish"),
    pytest.param(b'{"choices":[],"usage":{"prompt_tokens":3}}', False, id="usage-only"),
    pytest.param(b'{"error":{"message":"x"}}', True, id="error"),
    pytest.param(b"[DONE]", True, id="done"),
    pytest.param(b"not json", True, id="unknown"),
    pytest.param(b"[1, 2]", True, id="not-an-object"),
])
def test_carries_output(data: bytes, expected: bool) -> None:
    assert carries_output(data) is expected


@pytest.mark.parametrize(("chunks", "seen_after"), [
    pytest.param([ROLE, TOKEN], 2, id="role-then-token"),
    pytest.param([ROLE + TOKEN], 1, id="both-in-one-chunk"),
    pytest.param([TOKEN[:20], TOKEN[20:]], 2, id="token-split-across-chunks"),
    pytest.param([ROLE, b"data: [DONE]\n\n"], 2, id="empty-answer"),
    pytest.param([ROLE.replace(b"\n\n", b"\r\n\r\n"), TOKEN.replace(b"\n\n", b"\r\n\r\n")], 2, id="crlf"),
    pytest.param([b": keep-alive\n\n", TOKEN], 2, id="comment-first"),
    pytest.param([ROLE, b"x" * (MAX_HEAD_BYTES + 1)], 2, id="giant-head-gives-up"),
    pytest.param([ROLE, ROLE], None, id="never"),
])
def test_first_token_scanner(chunks: list[bytes], seen_after: int | None) -> None:
    scanner = FirstTokenScanner()
    results = [scanner.feed(c) for c in chunks]
    first = results.index(True) + 1 if True in results else None
    assert first == seen_after
    if seen_after is not None:
        assert all(results[seen_after - 1:])
