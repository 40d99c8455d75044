"""The simulator as an external provider: an API key required, and faults on demand.

A hosted API is not a vLLM pod: it wants ``Authorization: Bearer <key>`` (401 without the right one,
as OpenAI answers) and it has bad moments. ``ProviderMode`` adds both to a ``SimServer``:

- every ``/v1/*`` request must carry the key;
- ``POST /sim/provider`` (same key) sets the fault mode for the requests that follow:
  ``{"mode": "ok"}``, ``{"mode": "fail"}`` (500), ``{"mode": "throttle"}`` (429 with
  ``Retry-After``), ``{"mode": "slow", "delaySeconds": 5}`` (the answer begins that much later);
  ``"count": N`` limits the fault to the next N requests (then ``ok`` again);
- ``GET /sim/provider`` says the mode and how many requests were answered, refused or faulted.

``modelplane sim --provider-api-key KEY [--provider-mode MODE]`` runs it from the command line.
"""

from __future__ import annotations

import asyncio
import hmac
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODES = ("ok", "fail", "throttle", "slow")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, kind: str, **headers: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": kind}},
                             status=status, headers=headers or None)


@dataclass
class ProviderMode:
    api_key: str
    mode: str = "ok"
    delay_seconds: float = 0.0
    left: int | None = None  #: requests the fault still applies to (None: until changed)
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("provider mode needs a non-empty API key")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    def authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), self.api_key)

    def set(self, doc: Any) -> None:
        """Apply a ``POST /sim/provider`` body; raises ``ValueError`` naming the bad field."""
        if not isinstance(doc, dict):
            raise ValueError("the body must be a JSON object")
        mode = doc.get("mode")
        if mode not in MODES:
            raise ValueError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
        delay = doc.get("delaySeconds", 0)
        if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
            raise ValueError(f"delaySeconds: must be a number >= 0, got {delay!r}")
        count = doc.get("count")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
            raise ValueError(f"count: must be an integer >= 1, got {count!r}")
        self.mode, self.delay_seconds, self.left = mode, float(delay), count

    def _take_fault(self) -> str:
        mode = self.mode
        if mode != "ok" and self.left is not None:
            self.left -= 1
            if self.left <= 0:
                self.mode, self.left = "ok", None
        return mode

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/sim/provider", self.status)
        app.router.add_post("/sim/provider", self.status)

    async def status(self, request: web.Request) -> web.Response:
        """``GET``: the mode and counts; ``POST``: set the mode first."""
        if not self.authorized(request):
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        if request.method == "POST":
            try:
                self.set(await request.json())
            except ValueError as exc:
                return _error(400, str(exc), "invalid_request_error")
        return web.json_response({"mode": self.mode, "delaySeconds": self.delay_seconds, "left": self.left,
                                  "counts": dict(self.counts)})

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/v1/"):
            return await handler(request)
        if not self.authorized(request):
            self.counts["unauthorized"] += 1
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        mode = self._take_fault()
        if mode == "fail":
            self.counts["failed"] += 1
            return _error(500, "The server had an error while processing your request.", "server_error")
        if mode == "throttle":
            self.counts["throttled"] += 1
            return _error(429, "Rate limit reached for requests.", "rate_limit_exceeded",
                          **{"Retry-After": "1"})
        if mode == "slow":
            self.counts["slowed"] += 1
            await asyncio.sleep(self.delay_seconds)
        response = await handler(request)
        self.counts["answered"] += 1
        return response
