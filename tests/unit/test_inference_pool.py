"""spec.inferencePool (Gateway API Inference Extension): the InferencePool and HTTPRoute render builds,
what the reconcile core applies, deletes and says for each state of the cluster's CRDs, and the
informer that tells a missing CRD from an outage. No cluster: the API server's acceptance of the
rendered objects is tests/integration/test_inference_pool.py.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import pytest

from modelplane import render
from modelplane.api import crdgen
from modelplane.api.models import ModelDeployment
from modelplane.controller import kube
from modelplane.controller.informer import Backoff, Informer
from modelplane.controller.reconcile import APPLIED_HASH, Result
from tests.unit.test_informer import Script, pod
from tests.unit.test_reconcile import materialise, md, run
from tests.waiting import wait_for

PICKER = {"service": "chat-epp", "port": 9002}
ROUTE = {"parentRefs": [{"name": "inference-gateway"}]}


def parse(**pool: Any) -> ModelDeployment:
    return ModelDeployment.parse(md(inferencePool=pool))


def children(pool: dict[str, Any] | None, *, key: str | None = None,
             served_name: str = "chat") -> list[render.Manifest]:
    body = md() if pool is None else md(inferencePool=pool)
    parsed = ModelDeployment.parse(body)
    return render.build_inference_children(parsed, parsed.spec, served_name=served_name, key=key)


# --- render --------------------------------------------------------------------------------------


def test_the_pool_selects_the_server_pods_on_the_vllm_port_and_names_the_picker() -> None:
    [pool] = children({"endpointPicker": PICKER})
    assert pool == {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {
            "name": "chat", "namespace": "ns",
            "labels": {"app.kubernetes.io/name": "modelplane-server", "app.kubernetes.io/instance": "chat",
                       "app.kubernetes.io/component": "server", "app.kubernetes.io/managed-by": "modelplane",
                       "modelplane.dev/model-deployment": "chat"},
            "ownerReferences": [{"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
                                 "name": "chat", "uid": "uid-1", "controller": True,
                                 "blockOwnerDeletion": True}],
        },
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "modelplane-server",
                                         "app.kubernetes.io/instance": "chat",
                                         "app.kubernetes.io/component": "server"}},
            "targetPorts": [{"number": 8000}],
            "endpointPickerRef": {"group": "", "kind": "Service", "name": "chat-epp",
                                  "port": {"number": 9002}, "failureMode": "FailClose"},
        },
    }


def test_the_pool_selects_what_the_service_selects() -> None:
    parsed = parse(endpointPicker=PICKER)
    for key in (None, "abcd1234"):
        service = render.build_service(parsed, key=key)
        [pool] = render.build_inference_children(parsed, parsed.spec, served_name="chat", key=key)
        assert pool["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


def test_the_route_sends_its_gateways_requests_to_the_pool() -> None:
    _, route = children({"endpointPicker": PICKER, "httpRoute": ROUTE})
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1" and route["kind"] == "HTTPRoute"
    assert route["metadata"]["name"] == "chat"
    assert route["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert route["spec"] == {
        "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                        "name": "inference-gateway"}],
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                   "backendRefs": [{"group": "inference.networking.k8s.io", "kind": "InferencePool",
                                    "name": "chat"}]}],
    }


Check = Callable[[list[render.Manifest]], bool]


def _pool(c: list[render.Manifest]) -> dict[str, Any]:
    return c[0]["spec"] if c else {}


def _route(c: list[render.Manifest]) -> dict[str, Any]:
    return c[1]["spec"] if len(c) > 1 else {}


#: Each field of spec.inferencePool, a value for it, and what that value changes in the render
#: (against the base {endpointPicker: PICKER, httpRoute: ROUTE}, where the check must fail).
INFERENCE_EFFECTS: list[tuple[str, dict[str, Any], Check]] = [
    ("enabled", {"enabled": False}, lambda c: c == []),
    ("endpointPicker.service", {"endpointPicker": {**PICKER, "service": "other-epp"}},
     lambda c: _pool(c)["endpointPickerRef"]["name"] == "other-epp"),
    ("endpointPicker.port", {"endpointPicker": {**PICKER, "port": 9999}},
     lambda c: _pool(c)["endpointPickerRef"]["port"] == {"number": 9999}),
    ("endpointPicker.failureMode", {"endpointPicker": {**PICKER, "failureMode": "FailOpen"}},
     lambda c: _pool(c)["endpointPickerRef"]["failureMode"] == "FailOpen"),
    ("httpRoute.parentRefs[].name", {"httpRoute": {"parentRefs": [{"name": "gw-b"}, {"name": "gw-c"}]}},
     lambda c: [p["name"] for p in _route(c)["parentRefs"]] == ["gw-b", "gw-c"]),
    ("httpRoute.parentRefs[].namespace", {"httpRoute": {"parentRefs": [{"name": "gw", "namespace": "gws"}]}},
     lambda c: _route(c)["parentRefs"][0].get("namespace") == "gws"),
    ("httpRoute.parentRefs[].sectionName",
     {"httpRoute": {"parentRefs": [{"name": "gw", "sectionName": "https"}]}},
     lambda c: _route(c)["parentRefs"][0].get("sectionName") == "https"),
    ("httpRoute.hostnames", {"httpRoute": {**ROUTE, "hostnames": ["llm.example.com", "*.example.org"]}},
     lambda c: _route(c).get("hostnames") == ["llm.example.com", "*.example.org"]),
    ("httpRoute.matchModelHeader", {"httpRoute": {**ROUTE, "matchModelHeader": True}},
     lambda c: _route(c)["rules"][0]["matches"][0].get("headers")
     == [{"type": "Exact", "name": "X-Gateway-Model-Name", "value": "chat"}]),
]


@pytest.mark.parametrize(("field", "patch", "check"), INFERENCE_EFFECTS,
                         ids=[f for f, _, _ in INFERENCE_EFFECTS])
def test_inference_pool_field_effect(field: str, patch: dict[str, Any], check: Check) -> None:
    base = {"endpointPicker": PICKER, "httpRoute": ROUTE}
    assert not check(children(base)), "the check must fail on the base spec"
    assert check(children({**base, **patch}))


def test_every_inference_pool_field_has_an_asserted_effect() -> None:
    def leaves(node: dict[str, Any], path: str) -> list[str]:
        if "properties" in node:
            return [leaf for name, child in node["properties"].items()
                    for leaf in leaves(child, f"{path}.{name}" if path else name)]
        if "properties" in node.get("items", {}):
            return leaves(node["items"], f"{path}[]")
        return [path]

    schema = crdgen.openapi_schema()["properties"]["spec"]["properties"]["inferencePool"]
    assert sorted(leaves(schema, "")) == sorted(f for f, _, _ in INFERENCE_EFFECTS)


def test_the_model_header_carries_the_served_name() -> None:
    _, route = children({"endpointPicker": PICKER, "httpRoute": {**ROUTE, "matchModelHeader": True}},
                        served_name="llama-3.1-8b")
    assert route["spec"]["rules"][0]["matches"][0]["headers"][0]["value"] == "llama-3.1-8b"


@pytest.mark.parametrize("pool", [None, {"enabled": False}, {"enabled": False, "endpointPicker": PICKER,
                                                               "httpRoute": ROUTE}])
def test_no_enabled_pool_renders_nothing(pool: dict[str, Any] | None) -> None:
    assert children(pool) == []


# --- the reconcile core --------------------------------------------------------------------------


def _observed_children(result: Result) -> dict[str, tuple[dict[str, Any], ...]]:
    """The pools and routes as the API server holds them after ``result`` was applied."""
    applied = [copy.deepcopy(c) for c in result.apply]
    return {"inference_pools": tuple(c for c in applied if c["kind"] == "InferencePool"),
            "http_routes": tuple(c for c in applied if c["kind"] == "HTTPRoute")}


def _world(pool: dict[str, Any] | None, **observed: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ModelDeployment whose workload exists, and what the cluster holds of it."""
    body = md() if pool is None else md(inferencePool=pool)
    first = run(body)
    return body, {**materialise(first, ready=1), **observed}


def _existing(*, owner_uid: str = "uid-1") -> dict[str, tuple[dict[str, Any], ...]]:
    body = md(inferencePool={"endpointPicker": PICKER, "httpRoute": ROUTE})
    made = _observed_children(run(body, inference_pool_api=True, http_route_api=True))
    for obj in (*made["inference_pools"], *made["http_routes"]):
        obj["metadata"]["ownerReferences"][0]["uid"] = owner_uid
    return made


def _condition(result: Result) -> tuple[str, str] | None:
    assert result.status is not None
    for c in result.status["conditions"]:
        if c["type"] == "InferencePoolReady":
            return c["status"], c["reason"]
    return None


WITH_ROUTE = {"endpointPicker": PICKER, "httpRoute": ROUTE}


@pytest.mark.parametrize(
    ("pool", "pool_api", "route_api", "existing", "applied", "deleted", "condition"), [
        pytest.param(None, True, True, None, [], [], None, id="no spec: nothing"),
        pytest.param({"endpointPicker": PICKER}, True, True, None, ["InferencePool"], [],
                     ("True", "InferencePoolApplied"), id="pool only"),
        pytest.param(WITH_ROUTE, True, True, None, ["InferencePool", "HTTPRoute"], [],
                     ("True", "InferencePoolApplied"), id="pool and route"),
        pytest.param(WITH_ROUTE, True, True, "owned", [], [], ("True", "InferencePoolApplied"),
                     id="unchanged: no write"),
        pytest.param(WITH_ROUTE, True, False, None, ["InferencePool"], [],
                     ("False", "HTTPRouteCRDMissing"), id="no Gateway API CRDs: the pool alone"),
        pytest.param(WITH_ROUTE, False, False, None, [], [], ("False", "InferencePoolCRDMissing"),
                     id="no CRDs at all"),
        pytest.param({"endpointPicker": PICKER}, False, True, None, [], [],
                     ("False", "InferencePoolCRDMissing"), id="no InferencePool CRD"),
        pytest.param({"endpointPicker": PICKER}, None, None, None, [], [], ("False", "APINotYetListed"),
                     id="not listed yet: nothing applied"),
        pytest.param({"endpointPicker": PICKER}, True, True, "owned", [], ["HTTPRoute"],
                     ("True", "InferencePoolApplied"), id="route no longer asked: deleted"),
        pytest.param({**WITH_ROUTE, "enabled": False}, True, True, "owned", [],
                     ["HTTPRoute", "InferencePool"], None, id="disabled: both deleted, the route first"),
        pytest.param(None, True, True, "owned", [], ["HTTPRoute", "InferencePool"], None,
                     id="spec removed: both deleted"),
        pytest.param(None, True, True, "foreign", [], [], None,
                     id="another owner's objects under the label: left alone"),
    ])
def test_reconcile_applies_deletes_and_says(pool: dict[str, Any] | None, pool_api: bool | None,
                                            route_api: bool | None, existing: str | None,
                                            applied: list[str], deleted: list[str],
                                            condition: tuple[str, str] | None) -> None:
    have = {} if existing is None else _existing(owner_uid="uid-1" if existing == "owned" else "uid-other")
    body, observed = _world(pool, inference_pool_api=pool_api, http_route_api=route_api, **have)
    result = run(body, **observed)
    assert [c["kind"] for c in result.apply] == applied
    assert all(c["metadata"]["annotations"][APPLIED_HASH] for c in result.apply)
    assert [r.kind for r, _ in result.delete] == deleted
    assert all(name == "chat" for _, name in result.delete)
    assert _condition(result) == condition


@pytest.mark.parametrize(("pool_api", "route_api", "crd"), [
    (False, True, "inferencepools.inference.networking.k8s.io/v1"),
    (True, False, "httproutes.gateway.networking.k8s.io/v1"),
])
def test_a_missing_crd_is_named_once_in_an_event(pool_api: bool, route_api: bool, crd: str) -> None:
    body, observed = _world(WITH_ROUTE, inference_pool_api=pool_api, http_route_api=route_api)
    result = run(body, **observed)
    assert result.status is not None
    [cond] = [c for c in result.status["conditions"] if c["type"] == "InferencePoolReady"]
    assert crd in cond["message"] and "docs/inference-extension.md" in cond["message"]
    warned = [e for e in result.events if e.reason == cond["reason"]]
    assert len(warned) == 1 and warned[0].type == "Warning"
    # The serving status is not touched: the model still serves through its Service.
    assert result.status["phase"] != "Degraded"
    again = run({**body, "status": result.status}, **observed)
    assert not [e for e in again.events if e.reason == cond["reason"]]


@pytest.mark.parametrize("rejected", ["InferencePool chat: spec.targetPorts: Too many",
                                      "Deployment chat-1a2b3c4d: spec.template: Invalid value"])
def test_a_refusal_is_said_in_the_condition(rejected: str) -> None:
    """Whether the pool or a child applied before it was refused, the pool is not in place."""
    body, observed = _world({"endpointPicker": PICKER}, inference_pool_api=True, http_route_api=True,
                            rejected=rejected)
    result = run(body, **observed)
    assert _condition(result) == ("False", "ChildRejected")


# --- the informer of a kind whose CRD may be absent ----------------------------------------------

NOT_SERVED = kube.NotFound(404, "NotFound", "the server could not find the requested resource")


@pytest.mark.parametrize(("lists", "watches", "calls", "heard", "served"), [
    pytest.param([NOT_SERVED, ([pod("p1", "1")], "10")], [], ["list", "list", "watch@10"],
                 [("ADDED", "p1")], [False, True], id="absent, then installed"),
    pytest.param([([pod("p1", "1")], "10"), NOT_SERVED, ([], "20")], [NOT_SERVED],
                 ["list", "watch@10", "list", "list", "watch@20"],
                 [("ADDED", "p1"), ("DELETED", "p1")], [True, False, True],
                 id="removed while watched: the cache empties, then installed again"),
    pytest.param([NOT_SERVED, NOT_SERVED, NOT_SERVED, ([], "5")], [], ["list"] * 4 + ["watch@5"],
                 [], [False, True], id="absent for a while: said once"),
])
async def test_an_optional_informer_tells_a_missing_crd_from_an_outage(
        lists: list[Any], watches: list[Any], calls: list[str], heard: list[tuple[str, str]],
        served: list[bool]) -> None:
    script = Script(lists, watches)
    got: list[tuple[str, str]] = []
    seen: list[bool | None] = []
    informer = Informer(script, kube.INFERENCEPOOLS, backoff=Backoff(first=10, cap=10),  # type: ignore[arg-type]
                        handler=lambda t, o: got.append((t, o["metadata"]["name"])), optional=True,
                        absent_retry_seconds=0.001, on_served_change=lambda: seen.append(informer.served))
    task = asyncio.create_task(informer.run())
    await asyncio.wait_for(script.done.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert script.calls == calls
    assert got == heard
    assert seen == served
    # Never an outage: /healthz is not failed by a CRD nobody installed.
    assert informer.down_since is None and informer.served is True


async def test_a_404_is_an_outage_for_a_kind_that_must_exist() -> None:
    script = Script([NOT_SERVED] * 1000, [])  # more than the wait below can use
    informer = Informer(script, kube.PODS, backoff=Backoff(first=0.01, cap=0.01))  # type: ignore[arg-type]
    task = asyncio.create_task(informer.run())
    await wait_for(lambda: informer.down_since is not None, timeout=5, what="the informer down")
    assert informer.down_since is not None and informer.served is None and not informer.absent
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- the controller's side: which kinds are served, whom a change wakes -------------------------


def _controller_with(states: dict[str, list[bool | None]]) -> Any:
    from modelplane.controller.loop import Controller, Settings

    controller = Controller(None, Settings(namespaces=("a", "b")))  # type: ignore[arg-type]  # never runs
    for kind, served in states.items():
        for informer, state in zip(controller.informers[kind], served, strict=True):
            if state is not None:
                informer.synced.set()
                informer.absent = not state
    return controller


@pytest.mark.parametrize(("served", "expected"), [
    ([None, None], None), ([True, None], None), ([True, True], True), ([True, False], False),
    ([False, False], False),
], ids=["none listed", "one listed", "both served", "one absent", "both absent"])
def test_a_kind_is_served_when_every_namespace_informer_finds_it(served: list[bool | None],
                                                                 expected: bool | None) -> None:
    controller = _controller_with({"inferencepools": served})
    assert controller._served("inferencepools") is expected  # noqa: SLF001


def test_a_crd_coming_or_going_wakes_only_the_models_that_ask_for_a_pool() -> None:
    controller = _controller_with({})
    controller.known = {("a", "pooled"): md(inferencePool={"endpointPicker": PICKER}),
                        ("a", "plain"): md()}
    controller._on_inference_api_change()  # noqa: SLF001
    assert set(controller._due) == {("a", "pooled")}  # noqa: SLF001


def test_cluster_up_with_the_flag_installs_the_crds(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from modelplane.cli import build_parser
    from modelplane_dev.devcluster import inference_extension
    from modelplane_dev.devcluster.cluster import DevCluster

    class Up:
        bin_dir, kubeconfig = str(tmp_path / "bin"), str(tmp_path / "kubeconfig")

    installed: list[tuple[str, str]] = []
    monkeypatch.setattr(DevCluster, "up", lambda self, options: Up())
    monkeypatch.setattr(inference_extension, "install",
                        lambda kubectl, kubeconfig: installed.append((kubectl, str(kubeconfig))))
    for argv, calls in ((["cluster", "up"], []),
                        (["cluster", "up", "--with-inference-extension"],
                         [(str(tmp_path / "bin" / "kubectl"), str(tmp_path / "kubeconfig"))])):
        installed.clear()
        args = build_parser().parse_args(argv)
        assert args.func(args) == 0
        assert installed == calls


def test_a_refused_optional_watch_does_not_fail_healthz() -> None:
    controller = _controller_with({})
    pools = controller.informers["inferencepools"][0]
    pods = controller.informers["pods"][0]
    pools._failed(kube.Forbidden(403, "Forbidden", "inferencepools is forbidden"))  # noqa: SLF001
    assert controller.watch_health(now=pools.down_since + 60) == {}
    pods._failed(kube.Forbidden(403, "Forbidden", "pods is forbidden"))  # noqa: SLF001
    assert list(controller.watch_health(now=pods.down_since + 60)) == [pods.name]
