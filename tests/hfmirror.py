"""A stand-in for the Hugging Face Hub on loopback: serves config.json of the catalog's models.

The operator reads a model's config.json to size it. Tests must not reach the internet, so the
operator they start reads from this mirror instead (``--hf-endpoint``). It answers
``/{org}/{name}/resolve/{revision}/config.json`` for every model in the planner's catalog, with
the config fields the catalog cites, and 404 for anything else — as the Hub would for a repo that
does not exist. Revision ``gated`` stands for a gated repository: it needs the mirror's token.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from modelplane.planner.arch import Precision
from modelplane.planner.catalog import match_model

SERVED = web.AppKey("served", list)

#: A loopback port nothing listens on: an operator pointed here fails fast, with no traffic out.
NOWHERE = "http://127.0.0.1:9"
#: The revision the mirror treats as gated: its config.json needs ``Authorization: Bearer`` with
#: ``GATED_TOKEN`` (401 without a token, 403 with another one — what the Hub answers).
GATED_REVISION = "gated"
GATED_TOKEN = "hf_mirror_test_token"


async def _config(request: web.Request) -> web.Response:
    source = f"hf://{request.match_info['org']}/{request.match_info['name']}"
    match = match_model(source)
    if match is None:
        return web.Response(status=404, text="Repository Not Found", headers={"Connection": "close"})
    if request.match_info["revision"] == GATED_REVISION:
        auth = request.headers.get("Authorization", "")
        if not auth:
            return web.Response(status=401, text="Access to this model is restricted",
                                headers={"Connection": "close"})
        if auth != f"Bearer {GATED_TOKEN}":
            return web.Response(status=403, text="Access to this model is not granted",
                                headers={"Connection": "close"})
    request.app[SERVED].append(source)
    config = dict(match.entry.config)
    if match.arch.native_precision == Precision.FP8 and "quantization_config" not in config:
        # An FP8 checkpoint's own config.json says so (Llama 4 Maverick FP8 is FBGEMM FP8); the
        # catalog keeps only the base architecture.
        config["quantization_config"] = {"quant_method": "fbgemm_fp8"}
    # One request per connection: no idle keep-alive socket lingers in this thread's loop, to be
    # garbage-collected later in the middle of some unrelated test.
    return web.Response(text=json.dumps(config), content_type="application/json",
                        headers={"Connection": "close"})


@contextmanager
def hf_mirror() -> Iterator[tuple[str, list[str]]]:
    """Run the mirror in a thread of its own; yields (base URL, sources served so far)."""
    loop = asyncio.new_event_loop()
    served: list[str] = []
    started = threading.Event()
    holder: dict[str, object] = {}

    async def start() -> None:
        app = web.Application()
        app[SERVED] = served
        app.router.add_get("/{org}/{name}/resolve/{revision}/config.json", _config)
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        holder["runner"] = runner
        holder["port"] = runner.addresses[0][1]
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()),
                              daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the Hugging Face mirror did not start")
    try:
        yield f"http://127.0.0.1:{holder['port']}", served
    finally:
        runner = holder["runner"]
        assert isinstance(runner, web.AppRunner)
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
