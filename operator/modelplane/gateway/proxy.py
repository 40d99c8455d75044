"""Carrying one request to a replica and its answer back, chunk by chunk.

One ``aiohttp.ClientSession`` per process, over a pooled ``TCPConnector`` (no limit of its own:
the replicas' queues are the limit), with decompression off so that bytes pass through as the
replica sent them. The request body goes out as the client's bytes; hop-by-hop headers are
dropped both ways.

A failure before the replica's status line (connection refused or reset, a connect timeout, a
kept-alive connection the replica closed) or a 502/503/504 status is reported as
``UpstreamFailure`` so the caller can send the request once more to another replica; nothing has
reached the client yet. After the status has gone to the client, a failure ends the answer: an SSE
stream gets a final ``data: {"error": ...}`` event (the ``openai`` clients raise it), any other
answer is cut (the client sees a truncated body, never a complete-looking one).

A client that goes away cancels its handler (the server runs with handler cancellation); the
cancellation closes the connection to the replica, which aborts the request there (vLLM frees
the sequence when its client disconnects).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from modelplane.gateway.errors import ErrorKind, GatewayError
from modelplane.gateway.streaming import FirstTokenScanner
from modelplane.gateway.table import Endpoint

#: Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus those aiohttp sets.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host", "expect",
                        "content-length"})
#: Replica statuses worth one more try on another replica (nothing is sent to the client yet).
RETRY_STATUSES = frozenset({502, 503, 504})


class UpstreamFailure(Exception):
    """The replica failed before its answer began; the request may go to another one."""

    def __init__(self, endpoint: Endpoint, reason: str) -> None:
        super().__init__(f"{endpoint.address}: {reason}")
        self.endpoint = endpoint
        self.reason = reason


@dataclass
class Relayed:
    """How an answer went: its status, when its first output arrived, whether the replica failed midway."""

    status: int
    first_token_at: float | None = None
    failed: bool = False  #: the replica failed after the status was sent
    client_gone: bool = False  #: the client closed the connection before the end


def request_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


def response_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


class Upstream:
    """The pooled connections to the replicas, and the requests outstanding on each."""

    def __init__(self, *, connect_timeout: float = 5.0) -> None:
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        #: Requests sent and not yet answered in full, by endpoint address (the picker reads it).
        self.outstanding: dict[str, int] = {}

    async def start(self) -> None:
        # vLLM's server (uvicorn) closes an idle connection after 5 s (VLLM_HTTP_TIMEOUT_KEEP_ALIVE);
        # dropping ours first keeps a request from meeting a connection the replica is closing.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=4.0)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream used before start()")
        return self._session

    def begin(self, endpoint: Endpoint) -> None:
        self.outstanding[endpoint.address] = self.outstanding.get(endpoint.address, 0) + 1

    def end(self, endpoint: Endpoint) -> None:
        left = self.outstanding.get(endpoint.address, 0) - 1
        if left > 0:
            self.outstanding[endpoint.address] = left
        else:
            self.outstanding.pop(endpoint.address, None)

    async def send(self, endpoint: Endpoint, path: str, body: bytes,
                   headers: CIMultiDict[str], retry_statuses: bool = True) -> aiohttp.ClientResponse:
        """POST to the replica and return once its status and headers are in.

        Raises ``UpstreamFailure`` for a failure before that, or (``retry_statuses``) for a 502, 503
        or 504 status.
        """
        try:
            response = await self.session.post(endpoint.url + path, data=body, headers=headers,
                                               allow_redirects=False)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise UpstreamFailure(endpoint, f"{type(exc).__name__}: {exc}") from exc
        if retry_statuses and response.status in RETRY_STATUSES:
            response.close()
            raise UpstreamFailure(endpoint, f"answered {response.status}")
        return response


def unreachable(failures: list[UpstreamFailure]) -> GatewayError:
    tried = "; ".join(str(f) for f in failures)
    return GatewayError(ErrorKind.UPSTREAM_UNREACHABLE, f"no replica answered: {tried}")


async def relay(request: web.Request, response: aiohttp.ClientResponse, *,
                scanner: FirstTokenScanner | None) -> tuple[web.StreamResponse, Relayed]:
    """Send the replica's answer to the client; SSE and unsized bodies chunk by chunk, as they come."""
    status = response.status
    headers = response_headers(response.headers)
    streamed = (response.headers.get("Content-Type", "").startswith("text/event-stream")
                or response.content_length is None)
    if not streamed:
        try:
            data = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GatewayError(ErrorKind.UPSTREAM_FAILED,
                               f"the replica failed while answering: {type(exc).__name__}: {exc}") from exc
        return web.Response(status=status, body=data, headers=headers), Relayed(status)
    out = web.StreamResponse(status=status, headers=headers)
    outcome = Relayed(status)
    chunks = response.content.iter_any()
    try:
        await out.prepare(request)
        while True:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome.failed = True
                await _end_failed(request, out, exc)
                return out, outcome
            if scanner is not None and outcome.first_token_at is None and scanner.feed(chunk):
                outcome.first_token_at = time.monotonic()
            await out.write(chunk)
        await out.write_eof()
    except ConnectionError:
        # The client went away (a write to it failed before its handler was cancelled); the
        # caller's release of ``response`` closes the replica's connection, which aborts there.
        outcome.client_gone = True
    return out, outcome


async def _end_failed(request: web.Request, out: web.StreamResponse, exc: BaseException) -> None:
    """End an answer whose replica failed midway: an SSE error event, or a cut connection."""
    if out.headers.get("Content-Type", "").startswith("text/event-stream"):
        error = GatewayError(ErrorKind.UPSTREAM_FAILED,
                             f"the replica failed mid-stream: {type(exc).__name__}: {exc}")
        await out.write(b"data: " + error.encode() + b"\n\n")
        await out.write_eof()
    elif request.transport is not None:
        request.transport.close()  # a cut body, not a complete-looking one

