"""The controller counts the rollout's evaluation suite beside the reconcile (for the power check)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from modelplane.api.models import ModelDeploymentSpec
from modelplane.controller import kube
from modelplane.controller.loop import Controller
from modelplane.rollout.spec import revision_fingerprint

SUITE = "\n".join(json.dumps({"id": f"c{i}", "prompt": f"q{i}", "expected": "a"}) for i in range(3))


class FakeKube:
    """Just the reads the suite count makes."""

    def __init__(self, config_maps: dict[str, dict[str, str]], *, fail: bool = False) -> None:
        self.config_maps = config_maps
        self.fail = fail
        self.reads = 0

    async def get(self, resource: kube.Resource, name: str, *, namespace: str | None = None) -> Any:
        assert resource is kube.CONFIGMAPS and namespace == "ns"
        self.reads += 1
        if self.fail:
            raise kube.Forbidden(403, "Forbidden", "configmaps is forbidden")
        data = self.config_maps.get(name)
        return None if data is None else {"data": data}


def body(evaluation: dict[str, Any], *, stable: str = "0123456789ab") -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "chat"},
            "spec": {"model": {"source": "hf://a/b", "revision": "new"},
                     "rollout": {"steps": [{"weight": 50}], "evaluation": evaluation}},
            "status": {"stable": {"fingerprint": stable}, "canary": {"phase": "Promoted"}}}


async def counted(client: FakeKube, md: dict[str, Any]) -> tuple[int | None, int | None]:
    controller = Controller(client)  # type: ignore[arg-type]
    spec = ModelDeploymentSpec.model_validate(md["spec"])
    first = controller._suite_cases(("ns", "chat"), spec, md)
    await asyncio.gather(*controller._suite_reads.values())
    return first, controller._suite_cases(("ns", "chat"), spec, md)


@pytest.mark.parametrize(
    ("config_maps", "evaluation", "fail", "cases"),
    [
        pytest.param({"qa": {"suite.jsonl": SUITE}}, {"suiteRef": {"configMap": "qa"}}, False, 3,
                     id="counted"),
        pytest.param({"qa": {"cases": SUITE}}, {"suiteRef": {"configMap": "qa", "key": "cases"}}, False, 3,
                     id="own-key"),
        pytest.param({}, {"suiteRef": {"configMap": "qa"}}, False, None, id="no-configmap"),
        pytest.param({"qa": {"suite.jsonl": "not json"}}, {"suiteRef": {"configMap": "qa"}}, False, None,
                     id="unparsable"),
        pytest.param({"qa": {"suite.jsonl": SUITE}}, {"suiteRef": {"configMap": "qa"}}, True, None,
                     id="forbidden"),
    ],
)
async def test_the_suite_is_counted_beside_the_reconcile(config_maps: dict[str, dict[str, str]],
                                                         evaluation: dict[str, Any], fail: bool,
                                                         cases: int | None) -> None:
    client = FakeKube(config_maps, fail=fail)
    first, then = await counted(client, body(evaluation))
    assert first is None and then == cases and client.reads == 1


async def test_no_read_when_no_rollout_can_start() -> None:
    client = FakeKube({"qa": {"suite.jsonl": SUITE}})
    settled = body({"suiteRef": {"configMap": "qa"}})
    spec = ModelDeploymentSpec.model_validate(settled["spec"])
    settled["status"]["stable"]["fingerprint"] = revision_fingerprint(spec)
    assert await counted(client, settled) == (None, None) and client.reads == 0
