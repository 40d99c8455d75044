"""The gateway's HTTP/1.1 client to the replicas: reading answers however the bytes are split.

Each answer is fed to one pooled connection (over a stand-in transport) in two pieces, split at
every position, and in single bytes: the status, headers, body and whether the connection may be
reused must come out the same every time. The end-to-end behaviour (retries, mid-stream failures,
cancellation) is in test_gateway_server.py, against real sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from modelplane.gateway.proxy import Upstream, UpstreamBroken, UpstreamResponse, _Connection
from modelplane.gateway.table import Endpoint
from tests.waiting import wait_for


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False
        self.paused = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closed


_started: list[Upstream] = []


@pytest.fixture(autouse=True)
async def _close_upstreams() -> AsyncIterator[None]:
    yield
    while _started:
        await _started.pop().close()


async def started(upstream: Upstream) -> Upstream:
    await upstream.start()
    _started.append(upstream)
    return upstream


SSE = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"

ANSWERS = [
    # (id, raw answer, status, body, keep-alive afterwards)
    ("length", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
     b"{\"ok\":true}", 200, b"{\"ok\":true}", True),
    ("empty-length", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, b"", True),
    ("no-content", b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", True),
    ("chunked-sse", b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n" + b"%x\r\n%s\r\n" % (len(SSE), SSE) + b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n", 200,
     SSE + b"data: [DONE]\n\n", True),
    ("chunk-extension-and-trailer", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5;name=value\r\nhello\r\n0\r\nX-Trailer: yes\r\n\r\n", 200, b"hello", True),
    ("connection-close", b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n"
     b"\r\noops", 500, b"oops", False),
    ("interim-100", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
     201, b"ok", True),
    ("http-1.0", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok", False),
]


def splits(raw: bytes) -> list[list[bytes]]:
    """The answer in two pieces at every position, and byte by byte."""
    return [[raw[:i], raw[i:]] for i in range(1, len(raw))] + [[raw[i:i + 1] for i in range(len(raw))]]


async def answer(pieces: list[bytes], *, close_after: bool = False) -> tuple[UpstreamResponse, bytes,
                                                                             Upstream, _Connection]:
    upstream = await started(Upstream())
    connection = _Connection(upstream, "10.0.0.1:8000")
    transport = FakeTransport()
    connection.connection_made(transport)
    ready = connection.send(b"POST / HTTP/1.1\r\n\r\n", b"{}")
    for piece in pieces:
        connection.data_received(piece)
    if close_after:
        connection.connection_lost(None)
    response = await asyncio.wait_for(ready, 1)
    body = await asyncio.wait_for(response.read(), 1)
    return response, body, upstream, connection


@pytest.mark.parametrize(("raw", "status", "body", "keep_alive"),
                         [pytest.param(*case[1:], id=case[0]) for case in ANSWERS])
async def test_an_answer_reads_the_same_however_it_is_split(raw: bytes, status: int, body: bytes,
                                                            keep_alive: bool) -> None:
    for pieces in splits(raw):
        response, got, upstream, connection = await answer(pieces)
        assert (response.status, got, response.complete) == (status, body, True), pieces
        response.release()
        assert (upstream._idle.get("10.0.0.1:8000") == [connection]) is keep_alive
        assert connection.transport is not None and connection.transport.is_closing() is not keep_alive


async def test_headers_are_read_with_their_case_kept_and_looked_up_without() -> None:
    response, _, _, _ = await answer([b"HTTP/1.1 200 OK\r\nX-Pod: s0\r\nset-cookie: a\r\nSet-Cookie: b\r\n"
                                      b"Content-Length: 0\r\n\r\n"])
    assert response.headers["x-pod"] == "s0"
    assert response.headers.getall("Set-Cookie") == ["a", "b"]
    assert list(response.headers)[0] == "X-Pod"


async def test_a_body_up_to_the_connections_end() -> None:
    response, got, _, connection = await answer([b"HTTP/1.1 200 OK\r\n\r\nall of ", b"it"], close_after=True)
    assert (got, response.complete, response.keep_alive) == (b"all of it", True, False)
    assert connection.closed


@pytest.mark.parametrize("pieces", [
    pytest.param([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"], id="short-body"),
    pytest.param([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"], id="cut-chunk"),
    pytest.param([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"], id="bad-chunk-size"),
])
async def test_a_body_cut_short_is_an_error_not_a_complete_answer(pieces: list[bytes]) -> None:
    with pytest.raises(UpstreamBroken):
        await answer(pieces, close_after=True)


@pytest.mark.parametrize("pieces", [
    pytest.param([], id="closed-before-answering"),
    pytest.param([b"HTTP/1.1 200 OK\r\nContent-"], id="closed-mid-headers"),
    pytest.param([b"SSH-2.0-OpenSSH\r\n\r\n"], id="not-http"),
    pytest.param([b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"], id="bad-header"),
])
async def test_a_failure_before_the_answer_fails_its_headers(pieces: list[bytes]) -> None:
    with pytest.raises(UpstreamBroken):
        await answer(pieces, close_after=True)


async def test_the_request_goes_out_in_one_write_with_host_and_length() -> None:
    upstream = await started(Upstream())
    connection = _Connection(upstream, "10.0.0.1:8000")
    transport = FakeTransport()
    connection.connection_made(transport)
    upstream._put(connection)
    body = b'{"model": "chat"}'
    endpoint = Endpoint("10.0.0.1:8000", "pod-0", "r")
    sending = asyncio.create_task(upstream.send(endpoint, "/v1/chat/completions", body,
                                                {"Content-Type": "application/json", "X-Id": "é"}))
    await asyncio.sleep(0)
    assert transport.written == [b"POST /v1/chat/completions HTTP/1.1\r\nHost: 10.0.0.1:8000\r\n"
                                 b"Content-Length: 17\r\nContent-Type: application/json\r\n"
                                 b"X-Id: \xc3\xa9\r\n\r\n" + body]
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    response = await sending
    assert response.status == 200


async def test_a_slow_client_pauses_reading_from_the_replica() -> None:
    big = b"x" * (300 * 1024)
    upstream = await started(Upstream())
    connection = _Connection(upstream, "10.0.0.1:8000")
    transport = FakeTransport()
    connection.connection_made(transport)
    ready = connection.send(b"POST / HTTP/1.1\r\n\r\n", b"")
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (2 * len(big)) + big)
    response = await ready
    assert transport.paused
    assert await response.next_chunk() == big
    assert not transport.paused


async def test_idle_connections_are_closed_after_the_keepalive_timeout() -> None:
    upstream = await started(Upstream(keepalive_timeout=0.2))
    try:
        connections = []
        for _ in range(2):
            connection = _Connection(upstream, "10.0.0.1:8000")
            connection.connection_made(FakeTransport())
            upstream._put(connection)
            connections.append(connection)
        assert upstream._idle == {"10.0.0.1:8000": connections}
        await wait_for(lambda: upstream._idle == {}, timeout=5, what="the idle connections to be closed")
        assert all(c.transport is not None and c.transport.is_closing() for c in connections)
    finally:
        await upstream.close()


async def test_large_bodies_both_ways_over_a_real_socket() -> None:
    """A body over one write's worth goes out whole; a large answer comes back whole, read slowly."""
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body * 4, headers={"X-Got": str(len(body))})

    app = web.Application(client_max_size=2**22)
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        endpoint = Endpoint(f"127.0.0.1:{runner.addresses[0][1]}", "pod-0", "r")
        upstream = await started(Upstream())
        body = bytes(range(256)) * 1200  # 300 KiB
        for _ in range(2):  # the second time over the pooled connection
            response = await upstream.send(endpoint, "/echo", body, {})
            assert (response.status, response.headers["X-Got"]) == (200, str(len(body)))
            got = bytearray()
            while chunk := await response.next_chunk():
                got += chunk
                await asyncio.sleep(0)  # a slow reader: the replica's connection is paused and resumed
            assert bytes(got) == body * 4
            response.release()
        assert len(upstream._idle[endpoint.address]) == 1
    finally:
        await runner.cleanup()
