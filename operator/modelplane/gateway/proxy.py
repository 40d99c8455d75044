"""Carrying one request to a replica and its answer back, chunk by chunk.

The replicas are reached over the gateway's own small HTTP/1.1 client (``Upstream``): pooled
keep-alive connections (no limit of their own: the replicas' queues are the limit), the request
in one write, the answer's body handed on as it arrives, never decompressed, so that bytes pass
through as the replica sent them. (aiohttp's ``ClientSession`` did this at about a third of the
gateway's CPU per request: ``bench/README.md``, GATEWAY OVERHEAD.) The request body goes out as
the client's bytes; hop-by-hop headers are dropped both ways.

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

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, cast

from aiohttp import web
from multidict import CIMultiDict

from modelplane.gateway.errors import ErrorKind, GatewayError
from modelplane.gateway.streaming import FirstTokenScanner
from modelplane.gateway.table import Endpoint
from modelplane.gateway.usage import Usage, UsageCounter

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
    usage: Usage | None = None  #: its tokens, when a counter was given and the answer was complete


def request_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


def response_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


class UpstreamBroken(Exception):
    """The replica's connection failed (or closed) before its answer was complete."""


#: Bytes of an answer buffered for a slow client before the replica's connection stops being read.
_HIGH_WATER = 256 * 1024


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to a replica, reused for one request after another (keep-alive).

    It parses the answer's status line and headers, then hands its body on as it arrives: by
    ``Content-Length``, chunked (decoded: the gateway's own server chunks it again for the client),
    or up to the connection's end.
    """

    def __init__(self, upstream: Upstream, address: str) -> None:
        self.upstream = upstream
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._head = bytearray()
        self._response: UpstreamResponse | None = None
        self._headers_ready: asyncio.Future[UpstreamResponse] | None = None
        self._body_left = 0  #: Content-Length bytes still to come (body by length)
        self._mode = ""  #: "" (head), "length", "chunked", "close"
        self._chunk_left = 0  #: bytes of the current chunk still to come, its CRLF included
        self._chunk_state = "size"  #: size, data, trailer
        self._buffer = b""  #: unparsed bytes of a chunked body
        self._reading = True

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # a stream's small writes go out at once
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.upstream._forget(self)
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "the replica closed the connection"
        if self._headers_ready is not None and not self._headers_ready.done():
            self._headers_ready.set_exception(UpstreamBroken(reason))
        response = self._response
        if response is not None and not response.complete:
            if self._mode == "close":
                self._done()
            else:
                response._fail(UpstreamBroken(f"the replica failed while answering: {reason}"))

    def data_received(self, data: bytes) -> None:
        if self._response is None:
            if self._headers_ready is None:
                return  # bytes nobody asked for (a replica talking out of turn): dropped with the connection
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > 65536:
                    self._headers_ready.set_exception(UpstreamBroken("the answer's headers are too long"))
                    self.close()
                return
            head, rest = bytes(self._head[:end]), bytes(self._head[end + 4:])
            self._head.clear()
            try:
                response = self._start(head)
            except ValueError as exc:
                self._headers_ready.set_exception(UpstreamBroken(f"a malformed answer: {exc}"))
                self.close()
                return
            if response is None:  # an interim 1xx answer: the real one follows
                if rest:
                    self.data_received(rest)
                return
            self._headers_ready.set_result(response)
            if self._mode == "length" and self._body_left == 0:
                self._done()
                return
            data = rest
            if not data:
                return
        if self._mode == "":  # bytes after the answer's end: not HTTP we can reuse
            self.close()
        elif self._mode == "length":
            take = data[:self._body_left]
            self._body_left -= len(take)
            self._feed(take)
            if self._body_left == 0:
                self._done()
        elif self._mode == "chunked":
            self._dechunk(data)
        else:
            self._feed(data)

    # --- the request ---

    def send(self, head: bytes, body: bytes) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        self._headers_ready = asyncio.get_running_loop().create_future()
        self._response = None
        self.transport.write(head + body if len(body) < 16384 else head)
        if len(body) >= 16384:
            self.transport.write(body)
        return self._headers_ready

    def _start(self, head: bytes) -> UpstreamResponse | None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError(f"status line {lines[0][:80]!r}")
        status = int(parts[1])
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise ValueError(f"header line {line[:80]!r}")
            headers.add(name.strip().decode("latin-1"), value.strip().decode("utf-8", "surrogateescape"))
        if 100 <= status < 200:
            return None
        keep_alive = parts[0] == b"HTTP/1.1" and "close" not in headers.get("Connection", "").lower()
        length: int | None = None
        if status in (204, 304):
            self._mode, self._body_left, length = "length", 0, 0
        elif "chunked" in headers.get("Transfer-Encoding", "").lower():
            self._mode, self._chunk_state, self._buffer = "chunked", "size", b""
        elif "Content-Length" in headers:
            length = int(headers["Content-Length"])
            if length < 0:
                raise ValueError(f"Content-Length {length}")
            self._mode, self._body_left = "length", length
        else:
            self._mode, keep_alive = "close", False
        self._response = UpstreamResponse(self, status, headers, length, keep_alive)
        return self._response

    def _dechunk(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        while buffer:
            if self._chunk_state == "data":
                if self._chunk_left > 2:
                    piece = buffer[:self._chunk_left - 2]
                    self._feed(piece)
                    self._chunk_left -= len(piece)
                    buffer = buffer[len(piece):]
                    continue
                take = min(self._chunk_left, len(buffer))  # the chunk's closing CRLF
                self._chunk_left -= take
                buffer = buffer[take:]
                if self._chunk_left == 0:
                    self._chunk_state = "size"
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > 4096:
                    self._broken("a malformed chunk size line")
                    return
                break
            line, buffer = buffer[:end], buffer[end + 2:]
            if self._chunk_state == "trailer":
                if not line:  # the end of the trailers: the body is complete
                    self._buffer = b""
                    self._done()
                    return
                continue
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self._broken(f"a malformed chunk size {line[:40]!r}")
                return
            if size == 0:
                self._chunk_state = "trailer"
            else:
                self._chunk_state, self._chunk_left = "data", size + 2
        self._buffer = buffer

    def _feed(self, data: bytes) -> None:
        if data and self._response is not None:
            self._response._feed(data)
            if self._response._buffered > _HIGH_WATER and self._reading and self.transport is not None:
                self._reading = False
                self.transport.pause_reading()

    def resume(self) -> None:
        if not self._reading and self.transport is not None and not self.closed:
            self._reading = True
            self.transport.resume_reading()

    def _broken(self, reason: str) -> None:
        if self._response is not None:
            self._response._fail(UpstreamBroken(f"the replica sent {reason}"))
        self.close()

    def _done(self) -> None:
        self._mode = ""
        if self._response is not None:
            self._response._finish()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """A replica's answer: status and headers at once, the body as it arrives."""

    def __init__(self, connection: _Connection, status: int, headers: CIMultiDict[str],
                 content_length: int | None, keep_alive: bool) -> None:
        self._connection = connection
        self.status = status
        self.headers = headers
        self.content_length = content_length
        self.keep_alive = keep_alive
        self.complete = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._error: UpstreamBroken | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, error: UpstreamBroken) -> None:
        self._error = error
        self._wake()

    async def next_chunk(self) -> bytes:
        """The body's next bytes as they came; b"" at its end. Raises ``UpstreamBroken``."""
        while not self._chunks:
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered < _HIGH_WATER // 4:
            self._connection.resume()
        return chunk

    async def read(self) -> bytes:
        """The whole body. Raises ``UpstreamBroken``."""
        parts = []
        while chunk := await self.next_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Drop the connection (which aborts the request at the replica)."""
        self._released = True
        self._connection.close()

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool if the answer was complete."""
        if self._released:
            return
        self._released = True
        connection = self._connection
        if self.complete and self.keep_alive and not self._chunks and not connection.closed:
            connection.upstream._put(connection)
        else:
            connection.close()


class Upstream:
    """The pooled connections to the replicas, and the requests outstanding on each.

    HTTP/1.1 keep-alive connections, at most one request on each at a time, kept per replica while
    idle for less than ``keepalive_timeout`` (vLLM's server, uvicorn, closes an idle connection
    after 5 s: dropping ours first keeps a request from meeting a connection the replica is
    closing). The request goes out in one write: its line, the client's headers less the hop-by-hop
    ones, ``Host`` and ``Content-Length``, and the client's bytes.
    """

    def __init__(self, *, connect_timeout: float = 5.0, keepalive_timeout: float = 4.0) -> None:
        self.connect_timeout = connect_timeout
        self.keepalive_timeout = keepalive_timeout
        self._idle: dict[str, list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._started = False
        self._sweeper: asyncio.Task[None] | None = None
        #: Requests sent and not yet answered in full, by endpoint address (the picker reads it).
        self.outstanding: dict[str, int] = {}

    async def start(self) -> None:
        self._started = True
        self._sweeper = asyncio.create_task(self._sweep(), name="gateway-upstream-sweeper")

    async def _sweep(self) -> None:
        """Close the connections idle for ``keepalive_timeout`` (a replica gone away leaves its own)."""
        while True:
            await asyncio.sleep(self.keepalive_timeout / 2)
            self.close_idle(time.monotonic() - self.keepalive_timeout)

    def close_idle(self, before: float) -> None:
        """Close the idle connections idle since before ``before`` (monotonic seconds)."""
        for address, idle in list(self._idle.items()):
            for connection in [c for c in idle if c.idle_since < before]:
                connection.close()
                idle.remove(connection)
            if not idle:
                del self._idle[address]

    async def close(self) -> None:
        self._started = False
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self._all):
            connection.close()
        self._all.clear()
        self._idle.clear()

    def begin(self, endpoint: Endpoint) -> None:
        self.outstanding[endpoint.address] = self.outstanding.get(endpoint.address, 0) + 1

    def end(self, endpoint: Endpoint) -> None:
        left = self.outstanding.get(endpoint.address, 0) - 1
        if left > 0:
            self.outstanding[endpoint.address] = left
        else:
            self.outstanding.pop(endpoint.address, None)

    def _put(self, connection: _Connection) -> None:
        if not self._started:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.address, []).append(connection)

    def _forget(self, connection: _Connection) -> None:
        self._all.discard(connection)
        idle = self._idle.get(connection.address)
        if idle and connection in idle:
            idle.remove(connection)

    async def _connection(self, endpoint: Endpoint) -> tuple[_Connection, bool]:
        """A connection to ``endpoint``: an idle one (True) or a new one (False)."""
        idle = self._idle.get(endpoint.address)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be closing
            if not connection.closed and now - connection.idle_since < self.keepalive_timeout:
                return connection, True
            connection.close()
        host, _, port = endpoint.address.rpartition(":")
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(lambda: _Connection(self, endpoint.address), host.strip("[]"), int(port)),
            self.connect_timeout)
        self._all.add(protocol)
        return protocol, False

    async def send(self, endpoint: Endpoint, path: str, body: bytes,
                   headers: Mapping[str, str], retry_statuses: bool = True) -> UpstreamResponse:
        """POST to the replica and return once its status and headers are in.

        Raises ``UpstreamFailure`` for a failure before that, or (``retry_statuses``) for a 502, 503
        or 504 status.
        """
        if not self._started:
            raise RuntimeError("Upstream used before start()")
        lines = [f"POST {path} HTTP/1.1\r\nHost: {endpoint.address}\r\nContent-Length: {len(body)}\r\n"]
        lines += [f"{k}: {v}\r\n" for k, v in headers.items()]
        lines.append("\r\n")
        head = "".join(lines).encode("utf-8", "surrogateescape")
        connection: _Connection | None = None
        try:
            connection, _ = await self._connection(endpoint)
            response = await connection.send(head, body)
        except (OSError, TimeoutError, UpstreamBroken) as exc:
            if connection is not None:
                connection.close()
            raise UpstreamFailure(endpoint, f"{type(exc).__name__}: {exc}") from exc
        except BaseException:  # cancelled (the client left): the replica's connection goes too
            if connection is not None:
                connection.close()
            raise
        if retry_statuses and response.status in RETRY_STATUSES:
            response.close()
            raise UpstreamFailure(endpoint, f"answered {response.status}")
        return response


def unreachable(failures: list[UpstreamFailure]) -> GatewayError:
    tried = "; ".join(str(f) for f in failures)
    return GatewayError(ErrorKind.UPSTREAM_UNREACHABLE, f"no replica answered: {tried}")


class Answer(Protocol):
    """What ``relay`` reads of an answer: a replica's (``UpstreamResponse``) or an external API's."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content_length(self) -> int | None: ...
    async def next_chunk(self) -> bytes:
        """The body's next bytes; b"" at its end. Raises ``UpstreamBroken``."""
        ...
    async def read(self) -> bytes:
        """The whole body. Raises ``UpstreamBroken``."""
        ...


async def relay(request: web.Request, response: Answer, *,
                scanner: FirstTokenScanner | None,
                counter: UsageCounter | None = None) -> tuple[web.StreamResponse, Relayed]:
    """Send the replica's answer to the client; SSE and unsized bodies chunk by chunk, as they come."""
    status = response.status
    headers = response_headers(response.headers)
    streamed = (response.headers.get("Content-Type", "").startswith("text/event-stream")
                or response.content_length is None)
    if not streamed:
        try:
            data = await response.read()
        except UpstreamBroken as exc:
            raise GatewayError(ErrorKind.UPSTREAM_FAILED, str(exc)) from exc
        done = Relayed(status)
        if counter is not None:
            counter.feed(data)
            done.usage = counter.result()
        return web.Response(status=status, body=data, headers=headers), done
    out = web.StreamResponse(status=status, headers=headers)
    outcome = Relayed(status)
    try:
        await out.prepare(request)
        while True:
            try:
                chunk = await response.next_chunk()
            except UpstreamBroken as exc:
                outcome.failed = True
                await _end_failed(request, out, exc)
                return out, outcome
            if not chunk:
                break
            if scanner is not None and outcome.first_token_at is None and scanner.feed(chunk):
                outcome.first_token_at = time.monotonic()
            if counter is not None:
                counter.feed(chunk)
            await out.write(chunk)
        await out.write_eof()
        if counter is not None:
            outcome.usage = counter.result()
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

