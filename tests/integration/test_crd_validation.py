"""Bad input is refused by the API server itself — schema and CEL rules — with a message that
names the field, and nothing reaches the operator. Each manifest in tests/data/invalid/ says in
its first line (``# expect: …``) what the refusal must contain, and in ``# message: …`` lines the
words of the rule's message (the Python validators say the same: tests/unit/test_api_models.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane.controller import kube
from tests.clusterfixtures import ClusterHandle

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
INVALID = sorted((DATA / "invalid").glob("*.yaml"))
VALID = sorted((DATA / "valid").glob("*.yaml"))


def expectation(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path} lacks its '# expect:' line"
    return first.removeprefix("# expect: ").strip()


def messages(path: Path) -> list[str]:
    return [line.removeprefix("# message: ").strip() for line in path.read_text().splitlines()
            if line.startswith("# message: ")]


def test_there_are_enough_invalid_manifests() -> None:
    assert len(INVALID) >= 15


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
async def test_invalid_manifest_is_refused_naming_the_field(
        path: Path, kube_client: kube.Kube, namespace: str, crds: Path) -> None:
    body: dict[str, Any] = yaml.safe_load(path.read_text())
    body["metadata"]["namespace"] = namespace
    with pytest.raises(kube.Invalid) as info:
        await kube_client.create(body)
    assert expectation(path) in info.value.message, info.value.message
    for message in messages(path):
        assert message in info.value.message, info.value.message
    assert await kube_client.list(kube.MODELDEPLOYMENTS, namespace=namespace) == []


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
async def test_valid_manifest_is_accepted(path: Path, kube_client: kube.Kube, namespace: str,
                                          crds: Path) -> None:
    body: dict[str, Any] = yaml.safe_load(path.read_text())
    body["metadata"]["namespace"] = namespace
    created = await kube_client.create(body)
    assert created["metadata"]["name"] == body["metadata"]["name"]


def test_kubectl_explain_shows_the_field_docs(cluster: ClusterHandle, crds: Path) -> None:
    out = cluster.run_kubectl("explain", "modeldeployment.spec.scaling.targetQueueDepth").stdout
    assert "targetQueueDepth" in out and "DESCRIPTION" in out.upper()
    assert len(out.split("DESCRIPTION:", 1)[-1].strip()) > 20
