"""HTTPS_PROXY/HTTP_PROXY/NO_PROXY: honoured by calls that may leave the cluster (the Hugging Face
Hub, the API server from a kubeconfig, as kubectl does), never by the in-cluster API server.

Two servers on loopback answer every request: "direct" (the target) and "proxy" (an HTTP proxy,
which receives the absolute URL). Which one saw the request says whether the proxy was used.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from modelplane.controller import credentials, kube
from modelplane.planner.source import fetch_hf_config


async def _server(hits: list[str]) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.Response:
        hits.append(str(request.url))
        return web.json_response({"model_type": "llama", "kind": "Namespace"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, Any]]:
    state: dict[str, Any] = {"direct": [], "proxy": []}
    direct, state["direct_url"] = await _server(state["direct"])
    proxy, state["proxy_url"] = await _server(state["proxy"])
    yield state
    await direct.cleanup()
    await proxy.cleanup()


# env → which server sees the request
HF_CASES = {
    "no proxy set": ({}, "direct"),
    "HTTP_PROXY": ({"HTTP_PROXY": "{proxy}"}, "proxy"),
    "NO_PROXY lists the host": ({"HTTP_PROXY": "{proxy}", "NO_PROXY": "127.0.0.1"}, "direct"),
    "NO_PROXY lists another host": ({"HTTP_PROXY": "{proxy}", "NO_PROXY": ".svc,.cluster.local"}, "proxy"),
}


@pytest.mark.parametrize(("env", "via"), list(HF_CASES.values()), ids=list(HF_CASES))
async def test_the_hub_is_read_through_the_proxy_env(env: dict[str, str], via: str, servers: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(proxy=servers["proxy_url"]))
    config = await fetch_hf_config(source="hf://org/model", base_url=servers["direct_url"])
    assert config["model_type"] == "llama"
    other = "proxy" if via == "direct" else "direct"
    assert len(servers[via]) == 1 and not servers[other]


def test_only_a_kubeconfig_trusts_the_proxy_env(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "current-context": "a", "contexts": [{"name": "a", "context": {"cluster": "a", "user": "u"}},
                                             {"name": "b", "context": {"cluster": "b", "user": "u"}},
                                             {"name": "c", "context": {"cluster": "c", "user": "u"}},
                                             {"name": "d", "context": {"cluster": "d", "user": "u"}}],
        "clusters": [{"name": "a", "cluster": {"server": "https://a"}},
                     {"name": "b", "cluster": {"server": "https://b", "proxy-url": "http://corp:3128"}},
                     {"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}},
                     {"name": "d", "cluster": {"server": "https://localhost:6443"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    sa = tmp_path / "sa"
    sa.mkdir()
    for name, text in (("token", "t"), ("ca.crt", "ca"), ("namespace", "ns")):
        (sa / name).write_text(text)
    from_kubeconfig = credentials.load_kubeconfig(path)
    with_proxy_url = credentials.load_kubeconfig(path, context="b")
    in_pod = credentials.in_cluster_config(sa, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    assert (from_kubeconfig.trust_env, from_kubeconfig.proxy) == (True, None)
    assert (with_proxy_url.trust_env, with_proxy_url.proxy) == (False, "http://corp:3128")
    assert (in_pod.trust_env, in_pod.proxy) == (False, None)
    # As kubectl (Go's ProxyFromEnvironment): a server on this machine is never proxied.
    assert not credentials.load_kubeconfig(path, context="c").trust_env
    assert not credentials.load_kubeconfig(path, context="d").trust_env


@pytest.mark.parametrize(("trust_env", "via"), [(True, "proxy"), (False, "direct")])
async def test_the_kube_client_follows_trust_env(trust_env: bool, via: str, servers: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("HTTP_PROXY", servers["proxy_url"])
    async with kube.Kube(kube.KubeConfig(server=servers["direct_url"], trust_env=trust_env)) as client:
        await client.get(kube.NAMESPACES, "default")
    assert len(servers[via]) == 1
