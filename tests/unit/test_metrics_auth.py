"""/metrics behind Kubernetes authentication (TokenReview) and authorization (SubjectAccessReview),
as kube-rbac-proxy does; process metrics on it; /healthz open (probes carry no token)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from modelplane.controller import kube, metricsauth
from modelplane.controller.loop import Controller, Settings
from modelplane.controller.run import serve_http

ALLOWED = {"status": {"allowed": True}}
DENIED = {"status": {"allowed": False, "reason": "no RBAC policy matched"}}
USER = {"username": "system:serviceaccount:monitoring:prometheus", "uid": "u1",
        "groups": ["system:serviceaccounts"], "extra": {"k": ["v"]}}

DECISIONS: dict[str, tuple[Any, Any, int, str]] = {
    "no token": (None, None, 401, "/metrics needs a bearer token"),
    "unknown token": ({"status": {"authenticated": False, "error": "invalid bearer token"}}, None, 401,
                      "the token was not accepted: invalid bearer token"),
    "allowed": ({"status": {"authenticated": True, "user": USER}}, ALLOWED, 200,
                "system:serviceaccount:monitoring:prometheus may get /metrics"),
    "not allowed": ({"status": {"authenticated": True, "user": USER}}, DENIED, 403,
                    "may not get /metrics: no RBAC policy matched"),
}


@pytest.mark.parametrize(("review", "access", "status", "reason"), list(DECISIONS.values()),
                         ids=list(DECISIONS))
def test_decide(review: Any, access: Any, status: int, reason: str) -> None:
    verdict = metricsauth.decide(review, access, path="/metrics")
    assert verdict.status == status and reason in verdict.reason


@pytest.mark.parametrize(("header", "token"), [
    (None, None), ("", None), ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None),
    ("Bearer", None)])
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert metricsauth.bearer_token(header) == token


def test_the_access_review_asks_for_the_user_and_the_path() -> None:
    review = metricsauth.build_access_review(USER, path="/metrics")
    assert review["spec"] == {
        "user": USER["username"], "groups": ["system:serviceaccounts"], "uid": "u1", "extra": {"k": ["v"]},
        "nonResourceAttributes": {"path": "/metrics", "verb": "get"}}


@pytest.fixture
async def api() -> AsyncIterator[dict[str, Any]]:
    """An API server that knows token "good" (allowed) and "nosy" (not allowed)."""
    state: dict[str, Any] = {"calls": []}

    async def reviews(request: web.Request) -> web.Response:
        body = await request.json()
        state["calls"].append(body["kind"])
        if body["kind"] == "TokenReview":
            token = body["spec"]["token"]
            if token not in ("good", "nosy"):
                return web.json_response({**body, "status": {"authenticated": False, "error": "unknown"}})
            return web.json_response({**body, "status": {"authenticated": True, "user": {"username": token}}})
        spec = body["spec"]
        allowed = spec["user"] == "good" and spec["nonResourceAttributes"]["path"] == "/metrics"
        return web.json_response({**body, "status": {"allowed": allowed}})

    app = web.Application()
    app.router.add_post("/{tail:.*}", reviews)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


async def test_metrics_answer_only_an_allowed_token(api: dict[str, Any]) -> None:
    async with kube.Kube(kube.KubeConfig(server=api["url"])) as client:
        controller = Controller(client, Settings())
        runners = await serve_http(controller, "127.0.0.1", 0, auth=metricsauth.MetricsAuth(client))
        port = runners[0].addresses[0][1]
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                answers = {}
                for name, headers in (("none", {}), ("unknown", {"Authorization": "Bearer who"}),
                                      ("nosy", {"Authorization": "Bearer nosy"}),
                                      ("good", {"Authorization": "Bearer good"}),
                                      ("good again", {"Authorization": "Bearer good"})):
                    async with http.get(url + "/metrics", headers=headers) as resp:
                        answers[name] = (resp.status, await resp.text())
                async with http.get(url + "/healthz") as resp:
                    health = resp.status
        finally:
            for runner in runners:
                await runner.cleanup()
    assert {k: v[0] for k, v in answers.items()} == {"none": 401, "unknown": 401, "nosy": 403, "good": 200,
                                                      "good again": 200}
    assert "nosy may not get /metrics" in answers["nosy"][1]
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "modelplane_reconciles_total"):
        assert name in answers["good"][1]
    assert health in (200, 503)  # answered without a token (503: the loop is not running here)
    # unknown: 1 review; nosy and good: 2 each; "good again" from the cache
    assert api["calls"] == ["TokenReview", "TokenReview", "SubjectAccessReview", "TokenReview",
                            "SubjectAccessReview"]


async def test_healthz_on_its_own_port(api: dict[str, Any]) -> None:
    async with kube.Kube(kube.KubeConfig(server=api["url"])) as client:
        controller = Controller(client, Settings())
        runners = await serve_http(controller, "127.0.0.1", 0, health_port=0)
        try:
            metrics_port, health_port = (r.addresses[0][1] for r in runners)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{metrics_port}/healthz") as resp:
                    assert resp.status == 404
                async with http.get(f"http://127.0.0.1:{health_port}/healthz") as resp:
                    assert resp.status in (200, 503)
                async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                    assert resp.status == 200
        finally:
            for runner in runners:
                await runner.cleanup()


def test_the_gateway_exports_its_process_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelplane.gateway import metrics

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    text = metrics.exposition().decode()
    assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text
