"""Reading config.json: a real HTTP server on 127.0.0.1 standing in for the Hub, and a temp dir for a PVC."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from modelplane.api.models import ModelDeploymentSpec
from modelplane.planner import (
    ConfigReadError,
    ConfigReadReason,
    Precision,
    build_plan,
    plan_request_from_spec,
    read_model_arch,
    read_model_config,
)
from modelplane.planner.source import hf_config_url

TOKEN = "hf_test_token_do_not_leak"

# The fields of meta-llama/Llama-3.1-8B-Instruct's config.json the planner reads (plus a few it ignores).
LLAMA_8B_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "rope_theta": 500000.0,
}
CUSTOM_MOE_CONFIG: dict[str, Any] = {
    "model_type": "mixtral", "hidden_size": 2048, "intermediate_size": 4096, "num_hidden_layers": 16,
    "num_attention_heads": 16, "num_key_value_heads": 4, "num_local_experts": 8, "num_experts_per_tok": 2,
    "vocab_size": 32000, "max_position_embeddings": 16384, "torch_dtype": "bfloat16",
    "quantization_config": {"quant_method": "fp8"},
}


@dataclass
class FakeHub:
    base_url: str
    release: asyncio.Event
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Authorization)


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    release = asyncio.Event()
    state = FakeHub(base_url="", release=release)

    async def config(request: web.Request) -> web.StreamResponse:
        org, name, revision = request.match_info["org"], request.match_info["name"], request.match_info["rev"]
        state.requests.append((request.path, request.headers.get("Authorization")))
        if org == "meta-llama":  # gated: needs the token
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                return web.Response(status=401, text="Access to model is restricted")
            if revision not in ("main", "0e9e39f"):
                return web.Response(status=404, text="Revision not found")
            return web.json_response(LLAMA_8B_CONFIG)
        if org == "forbidden":
            return web.Response(status=403)
        if org == "acme" and name == "custom-moe":
            return web.json_response(CUSTOM_MOE_CONFIG)
        if org == "acme" and name == "slow":
            await release.wait()  # answers only when the test is over
            return web.json_response(LLAMA_8B_CONFIG)
        if org == "acme" and name == "garbage":
            return web.Response(text="<html>not json</html>")
        if org == "acme" and name == "huge":
            return web.Response(body=b"{" + b" " * (2 << 20) + b"}")
        if org == "acme" and name == "list":
            return web.json_response([1, 2])
        if org == "acme" and name == "broken":
            return web.Response(status=500)
        if org == "acme" and name == "moved":
            raise web.HTTPTemporaryRedirect(f"/acme/custom-moe/resolve/{revision}/config.json")
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{org}/{name}/resolve/{rev}/config.json", config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.base_url = f"http://{host}:{port}"
    try:
        yield state
    finally:
        release.set()
        await runner.cleanup()


def test_hf_config_url() -> None:
    assert hf_config_url("hf://meta-llama/Llama-3.1-8B-Instruct", "0e9e39f") == (
        "https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/resolve/0e9e39f/config.json")
    assert hf_config_url("hf://org/repo/sub/dir", "refs/pr/1", base_url="http://x/") == (
        "http://x/org/repo/resolve/refs%2Fpr%2F1/sub/dir/config.json")


async def test_reads_a_gated_config_with_the_token(hub: FakeHub) -> None:
    arch = await read_model_arch(source="hf://meta-llama/Llama-3.1-8B-Instruct", revision="0e9e39f",
                                 token=TOKEN, hf_base_url=hub.base_url, timeout=5)
    path = "/meta-llama/Llama-3.1-8B-Instruct/resolve/0e9e39f/config.json"
    assert hub.requests == [(path, f"Bearer {TOKEN}")]
    assert arch.name == "Llama-3.1-8B"
    # The model card's figure: the count computed from the config agrees with it within 5%.
    assert arch.total_params == pytest.approx(8.03e9)
    geometry = (arch.num_layers, arch.num_kv_heads, arch.head_dim, arch.max_position_embeddings)
    assert geometry == (32, 8, 128, 131072)


async def test_computes_parameters_of_a_model_the_catalog_does_not_know(hub: FakeHub) -> None:
    arch = await read_model_arch(source="hf://acme/custom-moe", hf_base_url=hub.base_url, timeout=5)
    embeddings = 2 * 32000 * 2048
    attention = 16 * (2 * 2048 * 2048 + 2 * 2048 * 4 * 128)
    experts = 16 * (8 * 3 * 2048 * 4096 + 2048 * 8)
    norms = 16 * 2 * 2048 + 2048
    assert arch.total_params == embeddings + attention + experts + norms
    assert arch.is_moe and arch.experts_per_token == 2 and arch.native_precision is Precision.FP8


async def test_follows_redirects(hub: FakeHub) -> None:
    config = await read_model_config(source="hf://acme/moved", hf_base_url=hub.base_url, timeout=5)
    assert config["num_local_experts"] == 8


@pytest.mark.parametrize(("source", "token", "revision", "reason"), [
    ("hf://meta-llama/Llama-3.1-8B-Instruct", None, "main", ConfigReadReason.UNAUTHORIZED),
    ("hf://meta-llama/Llama-3.1-8B-Instruct", "hf_wrong", "main", ConfigReadReason.UNAUTHORIZED),
    ("hf://meta-llama/Llama-3.1-8B-Instruct", TOKEN, "nope", ConfigReadReason.NOT_FOUND),
    ("hf://forbidden/model", TOKEN, "main", ConfigReadReason.FORBIDDEN),
    ("hf://acme/missing", None, "main", ConfigReadReason.NOT_FOUND),
    ("hf://acme/garbage", None, "main", ConfigReadReason.INVALID_CONFIG),
    ("hf://acme/huge", None, "main", ConfigReadReason.INVALID_CONFIG),
    ("hf://acme/list", None, "main", ConfigReadReason.INVALID_CONFIG),
    ("hf://acme/broken", None, "main", ConfigReadReason.HTTP_ERROR),
    ("hf://acme", None, "main", ConfigReadReason.UNSUPPORTED_SOURCE),
    ("s3://bucket/models/llama", None, "main", ConfigReadReason.UNSUPPORTED_SOURCE),
    ("oci://ghcr.io/acme/model:v1", None, "main", ConfigReadReason.UNSUPPORTED_SOURCE),
], ids=["no-token", "wrong-token", "no-revision", "gated-no-access", "missing", "not-json", "too-large",
        "not-an-object", "server-error", "no-repo-name", "s3", "oci"])
async def test_typed_errors(hub: FakeHub, source: str, token: str | None, revision: str,
                            reason: ConfigReadReason) -> None:
    with pytest.raises(ConfigReadError) as caught:
        await read_model_arch(source=source, revision=revision, token=token, hf_base_url=hub.base_url,
                              timeout=5)
    assert caught.value.reason is reason
    assert TOKEN not in str(caught.value)


async def test_timeout(hub: FakeHub) -> None:
    with pytest.raises(ConfigReadError) as caught:
        await read_model_config(source="hf://acme/slow", hf_base_url=hub.base_url, timeout=0.2)
    assert caught.value.reason is ConfigReadReason.TIMEOUT


async def test_unreachable() -> None:
    # A bound socket that does not listen: connections to it are refused.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        with pytest.raises(ConfigReadError) as caught:
            await read_model_config(source="hf://acme/x", token=TOKEN, hf_base_url=f"http://127.0.0.1:{port}",
                                    timeout=5)
    assert caught.value.reason is ConfigReadReason.UNREACHABLE
    assert TOKEN not in str(caught.value)


async def test_invalid_architecture_is_an_invalid_config(tmp_path: Path) -> None:
    (tmp_path / "models" / "odd").mkdir(parents=True)
    (tmp_path / "models" / "odd" / "config.json").write_text(json.dumps({"model_type": "odd"}))
    with pytest.raises(ConfigReadError) as caught:
        await read_model_arch(source="pvc://models/odd", pvc_root=tmp_path, timeout=5)
    assert caught.value.reason is ConfigReadReason.INVALID_CONFIG


async def test_reads_a_mounted_pvc(tmp_path: Path) -> None:
    target = tmp_path / "model-cache" / "checkpoints" / "support-v2"
    target.mkdir(parents=True)
    (target / "config.json").write_text(json.dumps(CUSTOM_MOE_CONFIG))
    arch = await read_model_arch(source="pvc://model-cache/checkpoints/support-v2", pvc_root=tmp_path,
                                 timeout=5)
    assert arch.name == "support-v2" and arch.num_experts == 8


@pytest.mark.parametrize(("source", "mounted", "reason"), [
    ("pvc://model-cache/absent", True, ConfigReadReason.NOT_FOUND),
    ("pvc://model-cache/../../etc", True, ConfigReadReason.INVALID_CONFIG),
    ("pvc://model-cache/model", False, ConfigReadReason.NOT_MOUNTED),
], ids=["absent", "escapes-the-volume", "not-mounted"])
async def test_pvc_errors(tmp_path: Path, source: str, mounted: bool, reason: ConfigReadReason) -> None:
    (tmp_path / "model-cache").mkdir()
    with pytest.raises(ConfigReadError) as caught:
        await read_model_arch(source=source, pvc_root=tmp_path if mounted else None, timeout=5)
    assert caught.value.reason is reason


async def test_a_read_config_drives_the_plan(hub: FakeHub) -> None:
    """The handler's sequence: read config.json, then plan from it."""
    arch = await read_model_arch(source="hf://acme/custom-moe", hf_base_url=hub.base_url, timeout=5)
    request = plan_request_from_spec(
        ModelDeploymentSpec.model_validate({"model": {"source": "hf://acme/custom-moe"}}), config_arch=arch)
    plan = build_plan(request, {})
    assert request.arch_source == "config.json"
    # An empty catalog is reported, not crashed on.
    assert not plan.fits
