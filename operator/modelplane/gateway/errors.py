"""The gateway's errors, as OpenAI's API shapes them: one table of kinds, each with its HTTP status.

Every refusal the gateway makes itself is a ``GatewayError`` of one ``ErrorKind``; the body is
OpenAI's ``{"error": {"message", "type", "param", "code"}}`` (``code`` is the kind), so the
``openai`` clients raise their usual exception classes. Errors a model server returns are relayed as
they are, never rewritten. ``Retry-After`` accompanies the answers that say "not now" (429, 503).
"""

from __future__ import annotations

import json
from enum import StrEnum

from aiohttp import web


class ErrorKind(StrEnum):
    """Why the gateway refused or failed a request: the ``code`` of the body and the metrics' reason."""

    BAD_REQUEST = "invalid_body"  #: 400: the body is not a JSON object, or has no string ``model``
    NOT_FOUND = "not_found"  #: 404: no such path
    MODEL_NOT_FOUND = "model_not_found"  #: 404: no ModelDeployment serves this ``model``
    METHOD_NOT_ALLOWED = "method_not_allowed"  #: 405
    TOO_LARGE = "request_too_large"  #: 413: the body is over ``--max-body-bytes``
    OVERLOADED = "too_many_held_requests"  #: 429: the model already holds ``--max-held`` requests
    STARTING = "gateway_starting"  #: 503: the gateway has not read the cluster yet
    NO_READY_REPLICA = "no_ready_replica"  #: 503: held for ``--hold-timeout`` and no replica got ready
    UPSTREAM_UNREACHABLE = "upstream_unreachable"  #: 502: two replicas failed before answering
    UPSTREAM_FAILED = "upstream_failed"  #: a replica failed mid-response (after the status was sent)
    BUDGET_EXHAUSTED = "budget_exhausted"  #: 429: a team's or a route's monthly budget is spent (model mesh)
    RATE_LIMITED = "rate_limit_exceeded"  #: 429: a team's tokens per minute are used up (model mesh)
    INVALID_API_KEY = "invalid_api_key"  #: 401: teams are on and the request has no known key


#: (HTTP status, OpenAI error type) of each kind.
STATUS: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.BAD_REQUEST: (400, "invalid_request_error"),
    ErrorKind.NOT_FOUND: (404, "invalid_request_error"),
    ErrorKind.MODEL_NOT_FOUND: (404, "invalid_request_error"),
    ErrorKind.METHOD_NOT_ALLOWED: (405, "invalid_request_error"),
    ErrorKind.TOO_LARGE: (413, "invalid_request_error"),
    ErrorKind.OVERLOADED: (429, "rate_limit_error"),
    ErrorKind.STARTING: (503, "server_error"),
    ErrorKind.NO_READY_REPLICA: (503, "server_error"),
    ErrorKind.UPSTREAM_UNREACHABLE: (502, "server_error"),
    ErrorKind.UPSTREAM_FAILED: (502, "server_error"),
    ErrorKind.BUDGET_EXHAUSTED: (429, "insufficient_quota"),
    ErrorKind.RATE_LIMITED: (429, "rate_limit_error"),
    ErrorKind.INVALID_API_KEY: (401, "invalid_request_error"),
}


class GatewayError(Exception):
    """A request the gateway answers itself, with an error."""

    def __init__(self, kind: ErrorKind, message: str, *, param: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return STATUS[self.kind][0]

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": STATUS[self.kind][1], "param": self.param,
                          "code": self.kind.value}}

    def encode(self) -> bytes:
        return json.dumps(self.body(), separators=(",", ":")).encode()

    def response(self) -> web.Response:
        headers = {"Content-Type": "application/json"}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return web.Response(status=self.status, body=self.encode(), headers=headers)
