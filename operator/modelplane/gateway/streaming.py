"""Reading a relayed SSE stream just enough to see its first token (pure).

The proxy writes every chunk to the client as it arrives; it also hands the chunks to a
``FirstTokenScanner`` until the scanner has seen the first event that carries output: text,
content, reasoning or tool-call deltas, a finish reason, an error, or ``[DONE]``. A chat stream's
first event usually carries only the role (``{"delta": {"role": "assistant", "content": ""}}``)
and is sent before any token is computed, so the first byte is not the first token. After the
first token the scanner is no longer fed: the rest of the stream costs nothing to relay.
"""

from __future__ import annotations

import json
from typing import Any

#: Bytes of the stream's head kept while looking for the first token; past it, the stream is taken
#: to have started (a single event this large carries output).
MAX_HEAD_BYTES = 64 * 1024


def carries_output(data: bytes) -> bool:
    """Whether an SSE event's ``data`` is past the stream's empty opening."""
    if data.strip() == b"[DONE]":
        return True
    try:
        event: Any = json.loads(data)
    except ValueError:
        return True  # not JSON: not an opening we know, so count it
    if not isinstance(event, dict):
        return True
    if event.get("error"):
        return True
    for choice in event.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        if choice.get("text") or choice.get("finish_reason"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(delta.get(k) for k in (
                "content", "reasoning_content", "reasoning", "tool_calls", "function_call", "refusal")):
            return True
    return False


class FirstTokenScanner:
    """Feed it the stream's chunks; ``feed`` returns True once the first output event has arrived."""

    def __init__(self) -> None:
        self._buffer = b""
        self.seen = False

    def feed(self, chunk: bytes) -> bool:
        if self.seen:
            return True
        self._buffer += chunk
        while not self.seen:
            end = self._event_end()
            if end is None:
                break
            event, self._buffer = self._buffer[:end[0]], self._buffer[end[1]:]
            self.seen = any(carries_output(line[5:].lstrip()) for line in event.splitlines()
                            if line.startswith(b"data:"))
        if len(self._buffer) > MAX_HEAD_BYTES:
            self.seen = True
        if self.seen:
            self._buffer = b""
        return self.seen

    def _event_end(self) -> tuple[int, int] | None:
        """(end of the first complete event, start of the next) in the buffer, or None."""
        best: tuple[int, int] | None = None
        for separator in (b"\n\n", b"\r\n\r\n"):
            i = self._buffer.find(separator)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, i + len(separator))
        return best
