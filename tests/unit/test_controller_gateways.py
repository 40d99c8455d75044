"""How the operator learns of the requests the gateway holds: finding the replicas, reading and
summing ``modelplane_gateway_held_requests``, and waking the ModelDeployments whose count changed."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from modelplane.controller import gateways
from modelplane.controller.gateways import changed, metrics_url, metrics_urls, parse_held, sum_held
from tests.waiting import wait_for


def gw_pod(ip: str | None = "10.1.0.1", *, phase: str | None = "Running",
           ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if ip is not None:
        status["podIP"] = ip
    if phase is not None:
        status["phase"] = phase
    container = {"name": "gateway", "ports": [{"name": "http", "containerPort": 8000},
                                              {"name": "metrics", "containerPort": 9100}]
                 if ports is None else ports}
    return {"metadata": {"name": "gw", "namespace": "mp"}, "spec": {"containers": [container]},
            "status": status}


@pytest.mark.parametrize(("pod", "expected"), [
    pytest.param(gw_pod(), "http://10.1.0.1:9100/metrics", id="the-metrics-port"),
    pytest.param(gw_pod(ports=[{"name": "http", "containerPort": 8000}]), "http://10.1.0.1:9090/metrics",
                 id="no-metrics-port-the-default"),
    pytest.param(gw_pod(ip=None), None, id="no-ip-yet"),
    pytest.param(gw_pod(phase="Pending"), None, id="pending"),
    pytest.param(gw_pod(phase="Succeeded"), None, id="ended"),
    pytest.param(gw_pod(phase=None), "http://10.1.0.1:9100/metrics", id="no-phase-yet-but-an-ip"),
    pytest.param(gw_pod(ip="fd00::7"), "http://[fd00::7]:9100/metrics", id="ipv6"),
])
def test_metrics_url(pod: dict[str, Any], expected: str | None) -> None:
    assert metrics_url(pod) == expected


def test_metrics_urls_fixed_first_then_pods_sorted_each_once() -> None:
    pods = [gw_pod("10.1.0.2"), gw_pod("10.1.0.1"), gw_pod("10.1.0.1"), gw_pod(None)]
    assert metrics_urls(pods, ["http://127.0.0.1:1/metrics"]) == [
        "http://127.0.0.1:1/metrics", "http://10.1.0.1:9100/metrics", "http://10.1.0.2:9100/metrics"]


def held_text(*samples: tuple[str, str, float]) -> str:
    lines = ["# HELP modelplane_gateway_held_requests Requests waiting.",
             "# TYPE modelplane_gateway_held_requests gauge"]
    lines += [f'modelplane_gateway_held_requests{{model_deployment="{md}",namespace="{ns}"}} {v}'
              for ns, md, v in samples]
    lines += ["# TYPE modelplane_gateway_in_flight_requests gauge",
              'modelplane_gateway_in_flight_requests{model_deployment="a",namespace="ns",revision="r"} 7.0']
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("", {}, id="empty"),
    pytest.param(held_text(("ns", "a", 3.0), ("ns", "b", 0.0)), {("ns", "a"): 3}, id="zero-left-out"),
    pytest.param(held_text(("ns", "a", 2.0), ("other", "a", 5.0)), {("ns", "a"): 2, ("other", "a"): 5},
                 id="per-namespace"),
    pytest.param(held_text(("", "", 4.0)), {}, id="no-model-deployment"),
    pytest.param(held_text(), {}, id="only-other-metrics"),
])
def test_parse_held(text: str, expected: dict[tuple[str, str], int]) -> None:
    assert parse_held(text) == expected


def test_parse_held_refuses_what_is_not_prometheus_text() -> None:
    with pytest.raises(ValueError):
        parse_held("<html>not metrics</html>\n")


@pytest.mark.parametrize(("replicas", "expected"), [
    pytest.param([], {}, id="no-replica"),
    pytest.param([{("ns", "a"): 250}, {("ns", "a"): 250, ("ns", "b"): 1}], {("ns", "a"): 500, ("ns", "b"): 1},
                 id="summed-over-replicas"),
    pytest.param([{("ns", "a"): 0}], {}, id="zero-dropped"),
])
def test_sum_held(replicas: list[dict[tuple[str, str], int]], expected: dict[tuple[str, str], int]) -> None:
    assert sum_held(replicas) == expected


@pytest.mark.parametrize(("before", "after", "expected"), [
    pytest.param({}, {}, set(), id="nothing"),
    pytest.param({}, {("ns", "a"): 1}, {("ns", "a")}, id="first-held"),
    pytest.param({("ns", "a"): 1}, {}, {("ns", "a")}, id="released"),
    pytest.param({("ns", "a"): 1, ("ns", "b"): 2}, {("ns", "a"): 1, ("ns", "b"): 3}, {("ns", "b")},
                 id="only-the-changed-one"),
])
def test_changed(before: dict[tuple[str, str], int], after: dict[tuple[str, str], int],
                 expected: set[tuple[str, str]]) -> None:
    assert changed(before, after) == expected


@pytest.mark.parametrize(("flags", "message"), [
    (["--gateway-scrape-seconds", "0"], "--gateway-scrape-seconds must be a number of seconds > 0"),
    (["--gateway-namespace", "mp"], "--gateway-namespace needs --gateway-selector"),
    (["--gateway-metrics-url", "127.0.0.1:9090/metrics"], "--gateway-metrics-url must be an http(s) URL"),
], ids=["zero-interval", "namespace-alone", "url-without-scheme"])
def test_bad_gateway_flags_stop_modelplane_run_with_the_reason(flags: list[str], message: str) -> None:
    from modelplane.cli import build_parser
    from modelplane.controller.run import StartupError, build_settings

    with pytest.raises(StartupError, match=re.escape(message)):
        build_settings(build_parser().parse_args(["run", *flags]))


def test_gateway_flags_reach_the_settings() -> None:
    from modelplane.cli import build_parser
    from modelplane.controller.run import build_settings

    settings = build_settings(build_parser().parse_args(
        ["run", "--gateway-selector", "app.kubernetes.io/component=gateway", "--gateway-namespace", "mp",
         "--gateway-metrics-url", "http://127.0.0.1:9/metrics", "--gateway-scrape-seconds", "0.1"]))
    assert (settings.gateway_selector, settings.gateway_namespace, settings.gateway_metrics_urls,
            settings.gateway_scrape_seconds) == ("app.kubernetes.io/component=gateway", "mp",
                                                 ("http://127.0.0.1:9/metrics",), 0.1)


class FakeGateway:
    """A gateway replica's /metrics: whatever ``held`` says; ``down`` answers 500."""

    def __init__(self) -> None:
        self.held: list[tuple[str, str, float]] = []
        self.down = False
        self.reads = 0  #: /metrics requests answered
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def metrics(self, _: web.Request) -> web.Response:
        self.reads += 1
        if self.down:
            return web.Response(status=500)
        return web.Response(text=held_text(*self.held), content_type="text/plain")

    async def start(self) -> FakeGateway:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/metrics"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_the_operator_sums_the_replicas_and_wakes_the_model_deployments_that_changed() -> None:
    from modelplane.controller.loop import Controller, Settings

    a, b = await FakeGateway().start(), await FakeGateway().start()
    controller = Controller(None, Settings(gateway_metrics_urls=(a.url, b.url),  # type: ignore[arg-type]
                                           gateway_scrape_seconds=0.02, gateway_stale_seconds=1.0))
    controller.known = {("ns", "lazy"): {}, ("ns", "busy"): {}}
    poked: list[tuple[str, str]] = []

    def poke(key: tuple[str, str], at: float | None = None, *, urgent: bool | None = None) -> None:
        poked.append(key)

    controller.poke = poke  # type: ignore[method-assign]
    controller._http = aiohttp.ClientSession()  # noqa: SLF001
    task = asyncio.create_task(controller._follow_gateways())  # noqa: SLF001
    try:
        a.held, b.held = [("ns", "lazy", 250)], [("ns", "lazy", 250), ("ns", "gone", 3)]
        await wait_for(lambda: controller._pending == {("ns", "lazy"): 500, ("ns", "gone"): 3},  # noqa: SLF001
                       timeout=5, what="the sum over both replicas")
        assert poked == [("ns", "lazy")], "woken once, and only a ModelDeployment it knows"
        # A replica that fails to answer keeps its last reading a while: a blip releases nothing...
        b.down = True
        await asyncio.sleep(0.2)
        assert controller._pending[("ns", "lazy")] == 500  # noqa: SLF001
        # ... but one that stays down (killed, with what it held) stops counting.
        await wait_for(lambda: controller._pending == {("ns", "lazy"): 250}, timeout=5,  # noqa: SLF001
                       what="the silent replica's reading to go stale")
        b.down = False
        a.held, b.held = [], []
        await wait_for(lambda: controller._pending == {}, timeout=5, what="every held request released")  # noqa: SLF001
        assert poked == [("ns", "lazy")] * 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await controller._http.close()  # noqa: SLF001
        await a.stop()
        await b.stop()


def test_the_gateway_pods_are_watched_only_when_a_selector_is_given() -> None:
    from modelplane.controller.loop import Controller, Settings

    assert "gateways" not in Controller(None, Settings()).informers  # type: ignore[arg-type]
    watching = Controller(None, Settings(gateway_selector="app=gw", gateway_namespace="mp"))  # type: ignore[arg-type]
    [informer] = watching.informers["gateways"]
    assert (informer.resource.plural, informer.namespace, informer.label_selector) == ("pods", "mp", "app=gw")
    assert gateways.HELD_METRIC == "modelplane_gateway_held_requests"


async def test_the_gateways_metrics_are_kept_for_live_analysis_and_parsed_once_per_reading() -> None:
    from modelplane.controller.loop import Controller, Settings

    assert Controller(None, Settings())._gateway_views() is None  # type: ignore[arg-type]  # noqa: SLF001
    a = await FakeGateway().start()
    controller = Controller(None, Settings(gateway_metrics_urls=(a.url,),  # type: ignore[arg-type]
                                           gateway_scrape_seconds=0.02, gateway_stale_seconds=0.5))
    controller._http = aiohttp.ClientSession()  # noqa: SLF001
    task = asyncio.create_task(controller._follow_gateways())  # noqa: SLF001
    try:
        a.held = [("ns", "lazy", 7)]
        await wait_for(lambda: controller._pending == {("ns", "lazy"): 7}, timeout=5,  # noqa: SLF001
                       what="a reading")
        views = controller._gateway_views()  # noqa: SLF001
        assert views is not None and list(views) == [a.url]
        assert views[a.url].gauges[("modelplane_gateway_held_requests",
                                    (("model_deployment", "lazy"), ("namespace", "ns")))] == 7
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        again = controller._gateway_views()  # noqa: SLF001
        assert again is not None and again[a.url] is views[a.url]  # the same reading: not parsed again
        await wait_for(lambda: controller._gateway_views() == {}, timeout=5,  # noqa: SLF001
                       what="a stale reading to be left out")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await controller._http.close()  # noqa: SLF001
        await a.stop()


def test_a_reading_gives_held_and_in_flight_requests_summed_over_revisions() -> None:
    from modelplane.controller.gateways import parse_reading

    text = held_text(("ns", "a", 2.0)) + (
        'modelplane_gateway_in_flight_requests{model_deployment="a",namespace="ns",revision="s"} 3.0\n'
        'modelplane_gateway_in_flight_requests{model_deployment="b",namespace="ns",revision="s"} 0.0\n')
    assert parse_reading(text) == ({("ns", "a"): 2}, {("ns", "a"): 10})


@pytest.mark.parametrize(("at_reconcile", "now", "expected"), [
    pytest.param({("ns", "a"): 10}, {("ns", "a"): 15}, {("ns", "a")}, id="half-again"),
    pytest.param({("ns", "a"): 10}, {("ns", "a"): 14}, set(), id="below-1.5x"),
    # Small numbers: 1 → 2 is double but one request; 1 → 3 is a surge.
    pytest.param({("ns", "a"): 1}, {("ns", "a"): 2}, set(), id="one-more"),
    pytest.param({("ns", "a"): 1}, {("ns", "a"): 3}, {("ns", "a")}, id="two-more"),
    # Never reconciled since the gateway saw it (or reconciled at 0): 2 in flight is a surge.
    pytest.param({}, {("ns", "b"): 2}, {("ns", "b")}, id="new"),
    pytest.param({("ns", "a"): 30}, {("ns", "a"): 3}, set(), id="falling"),
])
def test_a_surge_at_the_gateways_wakes_the_model_deployment(
        at_reconcile: dict[tuple[str, str], int], now: dict[tuple[str, str], int],
        expected: set[tuple[str, str]]) -> None:
    from modelplane.controller.gateways import surged

    assert surged(at_reconcile, now) == expected


async def test_the_operator_wakes_a_model_deployment_whose_requests_surge_at_the_gateways() -> None:
    from modelplane.controller.loop import Controller, Settings

    a = await FakeGateway().start()
    controller = Controller(None, Settings(gateway_metrics_urls=(a.url,),  # type: ignore[arg-type]
                                           gateway_scrape_seconds=0.02, gateway_stale_seconds=1.0))
    controller.known = {("ns", "a"): {}}
    poked: list[tuple[str, str]] = []

    def poke(key: tuple[str, str], at: float | None = None, *, urgent: bool | None = None) -> None:
        poked.append(key)

    controller.poke = poke  # type: ignore[method-assign]
    controller._in_flight_at_reconcile = {("ns", "a"): 4}  # noqa: SLF001  # 7 now (held_text): 1.75×
    controller._http = aiohttp.ClientSession()  # noqa: SLF001
    task = asyncio.create_task(controller._follow_gateways())  # noqa: SLF001
    try:
        await wait_for(lambda: poked == [("ns", "a")], timeout=5, what="the surge to wake it")
        # Fifteen readings more of the same surge: still woken once (at most once a second).
        read = a.reads
        await wait_for(lambda: a.reads >= read + 15, timeout=5, what="fifteen more gateway readings")
        assert poked == [("ns", "a")]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await controller._http.close()  # noqa: SLF001
        await a.stop()
