"""``kubectl get md`` shows the CRD's printer columns filled from status, as a user sees them.

The columns come from ``additionalPrinterColumns`` in crds/ (read here, not repeated), so a column
renamed there is checked under its new name; the values must be the ones status holds.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from modelplane.controller import kube
from tests.clusterfixtures import CRD_PATH, ClusterHandle, OperatorHandle
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def printer_columns(*, wide: bool) -> list[dict[str, Any]]:
    """The served version's columns; the ones with a priority show only with ``-o wide``."""
    crd = yaml.safe_load(CRD_PATH.read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("served"))
    return [c for c in version["additionalPrinterColumns"] if wide or not c.get("priority")]


def parse_table(text: str) -> tuple[list[str], list[list[str]]]:
    """kubectl's table: the header's column starts cut every row (cells may hold spaces)."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    names = [header[a:b].strip() for a, b in bounds]
    rows = [[line[a:b].strip() for a, b in bounds] for line in lines[1:]]
    return names, rows


def manifest(name: str) -> dict[str, Any]:
    return {"apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": "rev-a"},
                     "engine": {"maxModelLen": 8192},
                     "resources": {"gpu": {"count": "auto", "types": ["nvidia-l40s"]}},
                     "scaling": {"minReplicas": 1, "maxReplicas": 2}}}


def test_the_crd_names_the_columns_users_read() -> None:
    names = [c["name"].upper() for c in printer_columns(wide=False)]
    assert names[:5] == ["READY", "DESIRED", "GPU", "PHASE", "$/H"]


@pytest.mark.parametrize("wide", [False, True], ids=["default", "wide"])
async def test_kubectl_get_shows_the_status_in_the_printer_columns(
        wide: bool, cluster: ClusterHandle, kube_client: kube.Kube, namespace: str,
        operator: OperatorHandle) -> None:
    await kube_client.create(manifest("chat"), namespace=namespace)

    async def ready() -> dict[str, Any] | None:
        md = await kube_client.get(kube.MODELDEPLOYMENTS, "chat", namespace=namespace)
        status = (md or {}).get("status") or {}
        done = (status.get("phase") == "Ready" and status.get("readyReplicas") == 1
                and (status.get("cost") or {}).get("hourlyUSD") is not None
                and status.get("observedGeneration") == (md or {})["metadata"]["generation"])
        return md if done else None

    md = await wait_for(ready, timeout=90, what="chat to be Ready")
    args = ["get", "md", "-n", namespace, *(["-o", "wide"] if wide else [])]
    table = cluster.run_kubectl(*args).stdout
    header, rows = parse_table(table)
    columns = printer_columns(wide=wide)
    assert header == ["NAME", *(c["name"].upper() for c in columns)], table
    assert len(rows) == 1, table
    row = dict(zip(header, rows[0], strict=True))
    status = md["status"]
    assert row["NAME"] == "chat"
    assert row["READY"] == "1"
    assert row["DESIRED"] == str(status["desiredReplicas"]) == "1"
    assert row["GPU"] == status["plan"]["shape"] == "1x nvidia-l40s"
    assert row["PHASE"] == "Ready"
    assert float(row["$/H"]) == pytest.approx(float(status["cost"]["hourlyUSD"]), abs=0.01)
    assert float(row["$/H"]) > 0
    assert row["CANARY"] == ""  # no rollout under way
    if wide:
        assert row["REVISION"] == status["servingRevision"] == "rev-a"
        assert row["SOURCE"] == "hf://meta-llama/Llama-3.1-8B-Instruct"
    else:
        assert "REVISION" not in row and "SOURCE" not in row
