"""``python -m bench.gateway.overhead [--quick]``: what the gateway adds to a request, against HAProxy.

Issue 15's targets, measured in one run on this machine:

- **Overhead**: at 200 and 1000 concurrent streaming requests, time to first token (TTFT) p50 and
  p99 going straight to the pods (**direct**), through **HAProxy** (Debian's package, ``mode http``,
  ``balance leastconn``, one thread) and through the **gateway** (``modelplane gateway --routes``,
  one worker, uvloop). Added latency = via − direct; the target is ≤ 1 ms p50 and ≤ 5 ms p99 for
  the gateway, and gateway-added ≤ 2 × HAProxy-added.
- **Throughput ceiling**: small non-streaming requests, closed loop; requests per second, and
  requests per CPU-second of the proxy (its own ``/proc`` times), the target being ≥ 2,000.
- **Canary split**: 2,000 requests at each weight 1, 5, 10, 50, 90, 99 on 1:1, 1:4 and 4:1
  stable:canary replicas; each pod names itself in an ``x-pod`` header, so the share the canary
  served is counted at the client; the largest deviation from the weight, in points.

The parties and their cores (2 on this machine, shared with whatever else runs): the **load client**
(this process: raw asyncio sockets on uvloop, one connection per concurrent request, keep-alive)
and the **pods** (one process serving every replica on its own port) are pinned to CPU 0; the
**proxy under test** (HAProxy or the gateway) to CPU 1. Direct runs use CPU 0 only. Each party's
CPU time is read from ``/proc`` and reported, so the client's own ceiling is visible (a client
slower than the proxies would hide their difference). Phases are interleaved (direct, HAProxy,
gateway, in a rotating order, ``--rounds`` times) so that drift in the machine's other load falls
on all three alike.

The pods are a minimal OpenAI-shaped upstream, not the simulator: a stream's headers and its
role-only opening event go out at once, the first token after ``--ttft-ms`` (default 0), then a
token every ``--itl-ms`` (default 250) up to ``--tokens`` (default 8), then ``[DONE]``. The long
inter-token gap keeps 1000 streams open at a moderate request rate (1000 / 2 s = 500 requests/s),
so that TTFT measures the path, not a saturated core's queue.

HAProxy comes from ``hack/haproxy/install.sh`` (``make bench-deps``); the gateway is this checkout's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

MODEL = "overhead"
CANARY_WEIGHTS = (1, 5, 10, 50, 90, 99)
CANARY_SHAPES = ((1, 1), (1, 4), (4, 1))  #: (stable, canary) replicas
STABLE_PODS = 4
CANARY_PODS = 4
README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- GATEWAY-OVERHEAD:BEGIN -->", "<!-- GATEWAY-OVERHEAD:END -->"
TOKEN_MARK = b'"content":"t'  #: in every token event of the pods' streams, in no opening event


# --- the pods: a minimal upstream -------------------------------------------------------------------


@dataclass(frozen=True)
class PodShape:
    ttft_s: float = 0.0
    itl_s: float = 0.25
    tokens: int = 8


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_ROLE = _chunk(b'data: {"object":"chat.completion.chunk","choices":[{"index":0,'
               b'"delta":{"role":"assistant","content":""}}]}\n\n')
_DONE = _chunk(b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{},'
               b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n') + b"0\r\n\r\n"


def _token(i: int) -> bytes:
    return _chunk(b'data: {"object":"chat.completion.chunk","choices":[{"index":0,'
                  b'"delta":{"content":"tok%d "}}]}\n\n' % i)


class _PodProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive, one request at a time: a small JSON answer, or an SSE stream."""

    def __init__(self, name: bytes, shape: PodShape) -> None:
        self.name = name
        self.shape = shape
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.busy = False
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._next()

    def _next(self) -> None:
        if self.busy or self.transport is None:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        i = head.find(b"content-length:")
        length = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        body = self.buffer[end + 4:end + 4 + length]
        self.buffer = self.buffer[end + 4 + length:]
        if b'"stream":true' in body.replace(b" ", b""):
            self.busy = True
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 b"Transfer-Encoding: chunked\r\nx-pod: " + self.name + b"\r\n\r\n" + _ROLE)
            self.timer = self.loop.call_later(self.shape.ttft_s, self._send_token, 0)
        else:
            answer = (b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":'
                      b'{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":'
                      b'{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}')
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\nx-pod: %s\r\n\r\n%s"
                                 % (len(answer), self.name, answer))
            if self.buffer:
                self._next()

    def _send_token(self, i: int) -> None:
        self.timer = None
        if self.transport is None:
            return
        if i < self.shape.tokens:
            self.transport.write(_token(i))
            self.timer = self.loop.call_later(self.shape.itl_s, self._send_token, i + 1)
            return
        self.transport.write(_DONE)
        self.busy = False
        self._next()


def _pods_main(names: Sequence[str], shape: PodShape, cpus: set[int], conn: Any) -> None:
    """The pods' process: every pod on its own port of 127.0.0.1; sends the ports back on ``conn``."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cpus)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        servers = []
        for name in names:
            server = await loop.create_server(lambda n=name: _PodProtocol(n.encode(), shape),  # type: ignore[misc]
                                              "127.0.0.1", 0, backlog=4096)
            servers.append(server)
        conn.send([s.sockets[0].getsockname()[1] for s in servers])
        await loop.run_in_executor(None, conn.recv)  # any message, or EOF: stop

    import uvloop
    with contextlib.suppress(EOFError, KeyboardInterrupt):
        uvloop.run(main())


# --- the load client: raw asyncio sockets ---------------------------------------------------------


class _Closed(Exception):
    pass


@dataclass
class _Answer:
    status: int = 0
    pod: str = ""
    ttft: float | None = None  #: seconds from the request's write to its first token event
    done: float = 0.0


class _ClientProtocol(asyncio.Protocol):
    """One keep-alive connection; ``request`` sends and resolves with the answer when it is complete."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[_Answer] | None = None
        self.buffer = b""
        self.answer = _Answer()
        self.started = 0.0
        self.in_body = False
        self.chunked = False
        self.left = 0  #: bytes of the body (or of the current chunk, + its CRLF) still to come
        self.tail = b""  #: the last bytes of the body, for a token mark split across reads
        self.lost = False
        self.final = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(_Closed(str(exc)))

    def request(self, raw: bytes) -> asyncio.Future[_Answer]:
        if self.transport is None or self.lost:
            raise _Closed("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.answer = _Answer()
        self.in_body = False
        self.buffer = b""
        self.tail = b""
        self.final = False
        self.started = time.perf_counter()
        self.transport.write(raw)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.waiter is None or self.waiter.done():
            return
        if not self.in_body:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            self.answer.status = int(head[0].split(" ", 2)[1])
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            self.answer.pod = headers.get("x-pod", "")
            self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            self.left = int(headers.get("content-length", "0")) if not self.chunked else -1
            self.in_body = True
            data, self.buffer = self.buffer[end + 4:], b""
        if self.chunked:
            self._chunks(data, now)
        else:
            self.left -= len(data)
            if self.left <= 0:
                self._finish(now)

    def _chunks(self, data: bytes, now: float) -> None:
        if self.answer.ttft is None:
            window = self.tail + data
            if TOKEN_MARK in window:
                self.answer.ttft = now - self.started
            self.tail = window[-len(TOKEN_MARK):]
        self.buffer += data
        while True:
            if self.final:  # after the last chunk: its CRLF (no trailers)
                if len(self.buffer) >= 2:
                    self._finish(now)
                return
            if self.left > 0:  # inside a chunk (its data and CRLF)
                take = min(self.left, len(self.buffer))
                self.left -= take
                self.buffer = self.buffer[take:]
                if self.left > 0:
                    return
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                return
            size = int(self.buffer[:line_end].split(b";")[0], 16)
            self.buffer = self.buffer[line_end + 2:]
            if size == 0:
                self.final = True
            else:
                self.left = size + 2

    def _finish(self, now: float) -> None:
        self.answer.done = now - self.started
        self.in_body = False
        assert self.waiter is not None
        self.waiter.set_result(self.answer)


def _request(port: int, model: str, *, stream: bool) -> bytes:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hello."}],
                       "stream": stream, "max_tokens": 8}, separators=(",", ":")).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (port, len(body), body))


async def _connect(port: int) -> _ClientProtocol:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(_ClientProtocol, "127.0.0.1", port)
    return protocol


@dataclass
class Sample:
    started: float
    answer: _Answer


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cpu: dict[str, float] = field(default_factory=dict)  #: CPU-seconds by party during the window
    window: float = 0.0


async def closed_loop(ports: Sequence[int], raw: Callable[[int], bytes], *, connections: int, warmup: float,
                      window: float, stagger: float, cpu_of: dict[str, int],
                      stop_after: int | None = None) -> LoadResult:
    """``connections`` connections, each sending its next request as soon as the last is answered.

    Samples are the requests that start within the window (after ``warmup``); with ``stop_after``
    the run ends instead after that many answers (the canary counts). ``cpu_of`` names the pids
    whose CPU time is measured over the window; the client's own is ``client``.
    """
    result = LoadResult()
    loop = asyncio.get_running_loop()
    start = loop.time()
    begin, end = start + warmup, start + warmup + window
    stopping = asyncio.Event()
    count = 0

    async def worker(i: int) -> None:
        nonlocal count
        port = ports[i % len(ports)]
        request = raw(port)
        await asyncio.sleep(random.uniform(0, stagger))
        protocol: _ClientProtocol | None = None
        while not stopping.is_set():
            try:
                if protocol is None or protocol.lost:
                    protocol = await _connect(port)
                t = loop.time()
                answer = await protocol.request(request)
            except (OSError, _Closed) as exc:
                result.errors[type(exc).__name__] += 1
                protocol = None
                await asyncio.sleep(0.01)
                continue
            if answer.status != 200:
                result.errors[f"HTTP {answer.status}"] += 1
            if stop_after is not None:
                count += 1
                result.samples.append(Sample(t, answer))
                if count >= stop_after:
                    stopping.set()
            elif begin <= t < end:
                result.samples.append(Sample(t, answer))
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()

    tasks = [asyncio.create_task(worker(i)) for i in range(connections)]
    if stop_after is None:
        await asyncio.sleep(max(0.0, begin - loop.time()))
        before = _cpu_times(cpu_of)
        await asyncio.sleep(max(0.0, end - loop.time()))
        after = _cpu_times(cpu_of)
        result.cpu = {k: after[k] - before[k] for k in after}
        result.window = window
        stopping.set()
    else:
        before = _cpu_times(cpu_of)
        t0 = loop.time()
        await stopping.wait()
        result.window = loop.time() - t0
        after = _cpu_times(cpu_of)
        result.cpu = {k: after[k] - before[k] for k in after}
    await asyncio.gather(*tasks)
    return result


def _cpu_times(pids: dict[str, int]) -> dict[str, float]:
    """CPU-seconds (user + system) so far, by party; ``client`` is this process.

    Also ``<party> wait``: the seconds its main thread spent runnable but waiting for a CPU
    (``/proc/PID/schedstat``) — what other work on the machine cost it.
    """
    out = {"client": time.process_time()}
    tick = os.sysconf("SC_CLK_TCK")
    for name, pid in {"client": os.getpid(), **pids}.items():
        try:
            if name != "client":
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[name] = (int(fields[11]) + int(fields[12])) / tick
            out[f"{name} wait"] = int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            out[name] = float("nan")
    return out


# --- the proxies ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pin(cpus: str) -> list[str]:
    return ["taskset", "-c", cpus] if shutil.which("taskset") and cpus else []


HAPROXY_CONFIG = """\
global
    maxconn 8000
    nbthread 1
defaults
    mode http
    option http-no-delay
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend bench
    bind 127.0.0.1:{port}
    default_backend pods
backend pods
    balance leastconn
{servers}
"""


def haproxy_config(port: int, pods: Sequence[int]) -> str:
    """A plain L7 least-connections proxy over the pods (HAProxy's defaults otherwise).

    ``option http-no-delay``: without it HAProxy sends a stream's small chunks with ``MSG_MORE``
    and the kernel holds them up to 200 ms waiting for more (measured: TTFT +208 ms); its manual
    recommends the option for interactive streams, which SSE token streams are.
    """
    servers = "\n".join(f"    server pod{i} 127.0.0.1:{p}" for i, p in enumerate(pods))
    return HAPROXY_CONFIG.format(port=port, servers=servers)


def routes_file(stable: Sequence[int], canary: Sequence[int]) -> dict[str, Any]:
    """The gateway's fixed table: ``overhead`` on the stable pods, one model per canary case."""
    models: list[dict[str, Any]] = [{"name": MODEL, "endpoints": [f"127.0.0.1:{p}" for p in stable]}]
    for weight in CANARY_WEIGHTS:
        for s, c in CANARY_SHAPES:
            models.append({"name": _canary_model(weight, s, c),
                           "endpoints": [f"127.0.0.1:{p}" for p in stable[:s]],
                           "canary": {"weight": weight, "endpoints": [f"127.0.0.1:{p}" for p in canary[:c]]}})
    return {"models": models}


def _canary_model(weight: int, stable: int, canary: int) -> str:
    return f"canary-w{weight}-{stable}x{canary}"


async def _wait_http(port: int, model: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            protocol = await _connect(port)
            answer = await asyncio.wait_for(protocol.request(_request(port, model, stream=False)), 2)
            assert protocol.transport is not None
            protocol.transport.close()
            if answer.status == 200:
                return
        except (OSError, _Closed, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answers on 127.0.0.1:{port} after {timeout:.0f} s")
        await asyncio.sleep(0.2)


@dataclass
class Proxy:
    name: str
    port: int
    process: subprocess.Popen[bytes] | None = None


def start_haproxy(workdir: Path, pods: Sequence[int], cpus: str) -> Proxy:
    binary = shutil.which("haproxy")
    if binary is None:
        raise SystemExit("haproxy is not installed: run `make bench-deps` (hack/haproxy/install.sh)")
    port = _free_port()
    config = workdir / "haproxy.cfg"
    config.write_text(haproxy_config(port, pods))
    process = subprocess.Popen([*_pin(cpus), binary, "-f", str(config), "-db"],
                               stdout=subprocess.DEVNULL, stderr=(workdir / "haproxy.log").open("wb"))
    return Proxy("HAProxy", port, process)


def start_gateway(workdir: Path, stable: Sequence[int], canary: Sequence[int], cpus: str,
                  extra: Sequence[str] = ()) -> Proxy:
    import yaml

    port = _free_port()
    routes = workdir / "routes.yaml"
    routes.write_text(yaml.safe_dump(routes_file(stable, canary)))
    env = dict(os.environ)
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root / "operator"), str(root), env.get("PYTHONPATH", "")])
    process = subprocess.Popen(
        [*_pin(cpus), sys.executable, "-m", "modelplane.cli", "gateway", "--routes", str(routes),
         "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0", "--log-level", "WARNING",
         *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=(workdir / "gateway.log").open("wb"))
    return Proxy("gateway", port, process)


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- the run --------------------------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class Options:
    quick: bool
    concurrency: tuple[int, ...]
    rounds: int
    window: float
    shape: PodShape
    throughput_connections: int
    client_cpus: str = "0"
    proxy_cpus: str = "1"
    gateway_args: tuple[str, ...] = ()


async def run(options: Options) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    context = multiprocessing.get_context("spawn")
    names = [f"s{i}" for i in range(STABLE_PODS)] + [f"c{i}" for i in range(CANARY_PODS)]
    parent, child = context.Pipe()
    client_cpus = {int(c) for c in options.client_cpus.split(",")} if options.client_cpus else set()
    pod_cpus = client_cpus or set(range(os.cpu_count() or 1))
    pods = context.Process(target=_pods_main, args=(names, options.shape, pod_cpus, child), daemon=True)
    pods.start()
    if client_cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, client_cpus)
    ports: list[int] = parent.recv()
    stable, canary = ports[:STABLE_PODS], ports[STABLE_PODS:]
    haproxy = gateway = None
    lines: list[str] = []
    try:
        haproxy = start_haproxy(workdir, stable, options.proxy_cpus)
        gateway = start_gateway(workdir, stable, canary, options.proxy_cpus, options.gateway_args)
        for proxy in (haproxy, gateway):
            try:
                await _wait_http(proxy.port, MODEL)
            except RuntimeError as exc:
                log = (workdir / f"{proxy.name.lower()}.log").read_text()[-2000:]
                raise SystemExit(f"{proxy.name}: {exc}\n{log}") from None
        assert pods.pid is not None and haproxy.process is not None and gateway.process is not None
        targets: dict[str, tuple[list[int], dict[str, int]]] = {
            "direct": (stable, {"pods": pods.pid}),
            "HAProxy": ([haproxy.port], {"pods": pods.pid, "proxy": haproxy.process.pid}),
            "gateway": ([gateway.port], {"pods": pods.pid, "proxy": gateway.process.pid}),
        }
        lines += _header(options)
        lines += await _overhead(options, targets)
        lines += await _throughput(options, targets)
        lines += await _canary(options, gateway.port, gateway.process.pid)
    finally:
        for started in (haproxy, gateway):
            stop(started.process if started else None)
        with contextlib.suppress(OSError):
            parent.send("stop")
        pods.join(5)
        if pods.is_alive():
            pods.terminate()
        shutil.rmtree(workdir, ignore_errors=True)
    return "\n".join(lines)


def _header(options: Options) -> list[str]:
    haproxy_version = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    shape = options.shape
    return [
        f"Mode: {'quick' if options.quick else 'full'}; {os.cpu_count()} CPUs; {haproxy_version.strip()}; "
        f"Python {sys.version.split()[0]}.",
        f"Client and pods pinned to CPU {options.client_cpus}, the proxy under test to CPU "
        f"{options.proxy_cpus}. Pods: {STABLE_PODS} replicas, streams of {shape.tokens} tokens, first token "
        f"after {shape.ttft_s * 1000:.0f} ms, then one every {shape.itl_s * 1000:.0f} ms. "
        f"{options.rounds} round(s) of {options.window:.0f} s per party and concurrency, interleaved; "
        f"niceness {os.nice(0)}; load average at the start {_load()} (the machine's other work).",
        ""]


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


async def _overhead(options: Options, targets: dict[str, tuple[list[int], dict[str, int]]]) -> list[str]:
    shape = options.shape
    duration = shape.ttft_s + shape.tokens * shape.itl_s
    order = list(targets)
    lines = ["| concurrent streams | path | requests | TTFT p50 ms | TTFT p99 ms | added p50 ms "
             "| added p99 ms | added vs HAProxy (p50, p99) | errors "
             "| CPU s/s: client, pods, proxy; proxy waiting for a CPU s/s |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for concurrency in options.concurrency:
        merged: dict[str, LoadResult] = {name: LoadResult() for name in targets}
        for r in range(options.rounds):
            for name in order[r % 3:] + order[:r % 3]:
                ports, pids = targets[name]
                res = await closed_loop(ports, lambda p: _request(p, MODEL, stream=True),
                                        connections=concurrency, warmup=duration + 1.0,
                                        window=options.window, stagger=duration, cpu_of=pids)
                merged[name].samples += res.samples
                merged[name].errors.update(res.errors)
                for k, v in res.cpu.items():
                    merged[name].cpu[k] = merged[name].cpu.get(k, 0.0) + v
                merged[name].window += res.window
                print(f"  {concurrency} streams via {name}: {len(res.samples)} requests", file=sys.stderr)
        p = {}
        for name, res in merged.items():
            ttfts = [s.answer.ttft for s in res.samples if s.answer.ttft is not None]
            p[name] = (_percentile(ttfts, 0.5) * 1000, _percentile(ttfts, 0.99) * 1000, len(ttfts))
        for name, res in merged.items():
            p50, p99, n = p[name]
            cpu = "; ".join(", ".join(f"{res.cpu[k] / res.window:.2f}" if k in res.cpu else "–" for k in keys)
                            for keys in (("client", "pods", "proxy"), ("proxy wait",)))
            errors = sum(res.errors.values())
            if name == "direct":
                lines.append(f"| {concurrency} | {name} | {n} | {p50:.2f} | {p99:.2f} | | | | {errors} "
                             f"| {cpu} |")
                continue
            a50, a99 = p50 - p["direct"][0], p99 - p["direct"][1]
            ratio = ""
            if name == "gateway":
                h50, h99 = p["HAProxy"][0] - p["direct"][0], p["HAProxy"][1] - p["direct"][1]
                ratio = f"{_ratio(a50, h50)}, {_ratio(a99, h99)}"
            lines.append(f"| {concurrency} | {name} | {n} | {p50:.2f} | {p99:.2f} | {a50:+.2f} "
                         f"| {a99:+.2f} | {ratio} | {errors} | {cpu} |")
    return [*lines, ""]


def _ratio(ours: float, theirs: float) -> str:
    if theirs <= 0.01:
        return f"{ours:+.2f} ms vs ≤ 0.01 ms"
    return f"{ours / theirs:.1f}×"


async def _throughput(options: Options, targets: dict[str, tuple[list[int], dict[str, int]]]) -> list[str]:
    lines = ["| small non-streaming requests | requests/s | proxy CPU (cores) "
             "| requests per proxy CPU-second | client CPU µs/request | pods CPU µs/request | errors |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    merged: dict[str, LoadResult] = {name: LoadResult() for name in targets}
    order = list(targets)
    for r in range(options.rounds):
        for name in order[r % 3:] + order[:r % 3]:
            ports, pids = targets[name]
            res = await closed_loop(ports, lambda p: _request(p, MODEL, stream=False),
                                    connections=options.throughput_connections, warmup=1.0,
                                    window=options.window, stagger=0.01, cpu_of=pids)
            merged[name].samples += res.samples
            merged[name].errors.update(res.errors)
            for k, v in res.cpu.items():
                merged[name].cpu[k] = merged[name].cpu.get(k, 0.0) + v
            merged[name].window += res.window
    for name, res in merged.items():
        n = len(res.samples)
        rate = n / res.window
        proxy = res.cpu.get("proxy")
        per_core = f"{n / proxy:,.0f}" if proxy else "–"
        util = f"{proxy / res.window:.2f}" if proxy is not None else "–"
        lines.append(f"| {name} ({options.throughput_connections} connections) | {rate:,.0f} | {util} "
                     f"| {per_core} | {res.cpu['client'] / n * 1e6:.0f} | {res.cpu['pods'] / n * 1e6:.0f} | "
                     f"{sum(res.errors.values())} |")
    return [*lines, ""]


async def _canary(options: Options, port: int, pid: int) -> list[str]:
    lines = ["| canary weight | " + " | ".join(f"{s}:{c} stable:canary" for s, c in CANARY_SHAPES) + " |",
             "| ---: | " + " | ".join("---:" for _ in CANARY_SHAPES) + " |"]
    worst = 0.0
    total = 2000
    for weight in CANARY_WEIGHTS:
        cells = []
        for s, c in CANARY_SHAPES:
            model = _canary_model(weight, s, c)
            res = await closed_loop([port], lambda p, m=model: _request(p, m, stream=False),  # type: ignore[misc]
                                    connections=16, warmup=0, window=0, stagger=0, cpu_of={"proxy": pid},
                                    stop_after=total)
            answers = [x.answer for x in res.samples if x.answer.status == 200][:total]
            share = 100 * sum(a.pod.startswith("c") for a in answers) / max(1, len(answers))
            worst = max(worst, abs(share - weight))
            cells.append(f"{share:.2f}%")
        lines.append(f"| {weight} | " + " | ".join(cells) + " |")
    lines += ["", f"Canary split over {total} requests each: largest deviation from the weight "
                  f"{worst:.2f} points (target ≤ 2)."]
    return lines


def write_readme(report: str, command: str) -> None:
    text = README.read_text()
    block = f"{BEGIN}\n`{command}`\n\n{report}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        title = "## Gateway overhead (`python -m bench.gateway.overhead`)"
        text = text.rstrip("\n") + f"\n\n{title}\n\n{block}\n"
    README.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway.overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round of 4 s per party (about a minute)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds per measurement (default 3; quick 1)")
    parser.add_argument("--window", type=float, default=None, help="seconds measured per party and round "
                                                                  "(default 10; quick 4)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--itl-ms", type=float, default=250.0)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--throughput-connections", type=int, default=64)
    parser.add_argument("--client-cpus", default="0",
                        help="CPUs of the client and pods (default 0; '' unpinned)")
    parser.add_argument("--proxy-cpus", default="1",
                        help="CPUs of the proxy under test (default 1; '' unpinned)")
    parser.add_argument("--gateway-arg", action="append", default=[],
                        help="an extra argument for `modelplane gateway` (repeatable), "
                             "e.g. --gateway-arg=--workers=2")
    parser.add_argument("--nice", type=int, default=0,
                        help="run every party at this niceness (e.g. -10, as root), so that other work on a "
                             "shared machine delays them less; all parties alike")
    parser.add_argument("--write", action="store_true", help="write the tables into bench/README.md")
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.tokens < 1 or args.itl_ms < 0 or args.ttft_ms < 0:
        parser.error("--concurrency and --tokens must be >= 1, --itl-ms and --ttft-ms >= 0")
    options = Options(quick=args.quick, concurrency=tuple(args.concurrency),
                      rounds=args.rounds or (1 if args.quick else 3),
                      window=args.window or (4.0 if args.quick else 10.0),
                      shape=PodShape(ttft_s=args.ttft_ms / 1000, itl_s=args.itl_ms / 1000,
                                     tokens=args.tokens),
                      throughput_connections=args.throughput_connections, client_cpus=args.client_cpus,
                      proxy_cpus=args.proxy_cpus, gateway_args=tuple(args.gateway_arg))
    if args.nice:
        try:
            os.nice(args.nice)  # inherited by the pods, HAProxy and the gateway
        except PermissionError:
            parser.error(f"--nice {args.nice}: not permitted (a negative niceness needs root)")
    import uvloop

    started = time.monotonic()
    report = uvloop.run(run(options))
    report += f"\n\nRun time: {time.monotonic() - started:.0f} s; load average at the end {_load()}."
    print(report)
    if args.write:
        write_readme(report, " ".join(["python -m bench.gateway.overhead", *(argv or sys.argv[1:])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
