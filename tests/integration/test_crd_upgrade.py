"""CRDs on upgrade, the way docs/install.md tells users: the ``modelplane-crds`` chart (CRDs as
templates, which ``helm upgrade`` updates, unlike a chart's ``crds/``), on the dev cluster.

The ModelDeployment CRD the session's other tests use is already there (the ``crds`` fixture,
applied with kubectl), as on a cluster where the modelplane chart put it: the test adopts it into a
``modelplane-crds`` release as docs/install.md says, creates a ModelDeployment, upgrades the release
to a copy of the chart whose CRD has one more optional field, and checks that the field is served
(an object using it keeps it, where the old CRD pruned it) and that the existing object kept its
spec. Then it upgrades back to the repository's chart and uninstalls the release: the CRD stays
(``helm.sh/resource-policy: keep``).
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane.controller import kube
from tests.chart import REPO, helm
from tests.clusterfixtures import ClusterHandle
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

CRD_CHART = REPO / "charts" / "modelplane-crds"
CRD_NAME = "modeldeployments.modelplane.dev"
CRD_FILE = "modeldeployments.modelplane.dev.yaml"
#: Every modelplane.dev CRD the chart holds (ModelDeployment, ModelRoute, ModelAdapter): the session
#: installed each with kubectl, so the release adopts each.
OUR_CRDS = sorted(yaml.safe_load(f.read_text())["metadata"]["name"]
                  for f in (CRD_CHART / "files").glob("*.modelplane.dev.yaml"))
NEW_FIELD = "upgradeProbe"

MD: dict[str, Any] = {
    "apiVersion": "modelplane.dev/v1alpha1", "kind": "ModelDeployment",
    "metadata": {"name": "before"},
    "spec": {"model": {"source": "hf://mistralai/Mistral-7B-Instruct-v0.3", "servedName": "m7b"},
             "scaling": {"minReplicas": 1, "maxReplicas": 3}},
}


def chart_with_new_field(dest: Path) -> Path:
    """A copy of the CRD chart at version 0.1.1 whose CRD has the optional ``spec.upgradeProbe``."""
    chart = dest / "modelplane-crds"
    shutil.copytree(CRD_CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"] = "0.1.1"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    crd = yaml.safe_load((chart / "files" / CRD_FILE).read_text())
    for version in crd["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        assert NEW_FIELD not in spec["properties"]
        spec["properties"][NEW_FIELD] = {"type": "string", "description": "Added by the upgrade."}
    (chart / "files" / CRD_FILE).write_text(yaml.safe_dump(crd))
    return chart


@pytest.fixture
async def own_namespace(kube_client: kube.Kube) -> AsyncIterator[str]:
    """A namespace no session operator watches (they watch ``t<session>-*``): the objects here are
    only stored, never reconciled."""
    name = "crd-upgrade-" + hashlib.sha1(str(time.time()).encode()).hexdigest()[:6]
    await kube_client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    await kube_client.delete(kube.NAMESPACES, name)


def helm_ok(cluster: ClusterHandle, *args: str) -> str:
    done = helm(*args, "--kubeconfig", str(cluster.kubeconfig))
    assert done.returncode == 0, f"helm {' '.join(args)}: {done.stderr}"
    return done.stdout


async def test_helm_upgrade_of_the_crd_chart_serves_a_new_field_and_keeps_objects(
        cluster: ClusterHandle, crds: Path, kube_client: kube.Kube, own_namespace: str,
        tmp_path: Path) -> None:
    release = own_namespace  # unique, and the namespace Helm keeps the release in
    # Adopt the CRDs the modelplane chart's crds/ (here: kubectl) created, as docs/install.md says.
    assert CRD_NAME in OUR_CRDS and len(OUR_CRDS) >= 3, OUR_CRDS
    for name in OUR_CRDS:
        cluster.run_kubectl("label", "crd", name, "app.kubernetes.io/managed-by=Helm", "--overwrite")
        cluster.run_kubectl("annotate", "crd", name, f"meta.helm.sh/release-name={release}",
                            f"meta.helm.sh/release-namespace={own_namespace}", "--overwrite")
    helm_ok(cluster, "install", release, str(CRD_CHART), "-n", own_namespace,
            "--set", "kopfPeering=false")
    try:
        before = copy.deepcopy(MD)
        before["metadata"]["namespace"] = own_namespace
        stored = await kube_client.create(before)
        # The old schema prunes the field: what makes the check after the upgrade mean something.
        pruned = copy.deepcopy(before)
        pruned["metadata"]["name"] = "pruned"
        pruned["spec"][NEW_FIELD] = "dropped"
        assert NEW_FIELD not in (await kube_client.create(pruned))["spec"]

        helm_ok(cluster, "upgrade", release, str(chart_with_new_field(tmp_path)), "-n", own_namespace,
                "--set", "kopfPeering=false")
        served = await kube_client.get(kube.CRDS, CRD_NAME)
        assert served is not None
        assert NEW_FIELD in served["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
            "properties"]["spec"]["properties"]

        attempt = 0

        async def new_field_kept() -> bool:
            # The API server takes up a changed schema a moment after the update: try new objects
            # until one keeps the field.
            nonlocal attempt
            attempt += 1
            after = copy.deepcopy(before)
            after["metadata"]["name"] = f"after-{attempt}"
            after["spec"][NEW_FIELD] = "kept"
            created = await kube_client.create(after)
            return bool(created["spec"].get(NEW_FIELD) == "kept")

        await wait_for(new_field_kept, timeout=30, interval=0.5,
                       what=f"a ModelDeployment to keep spec.{NEW_FIELD} after the upgrade")
        kept = await kube_client.get(kube.MODELDEPLOYMENTS, "before", namespace=own_namespace)
        assert kept is not None
        assert kept["spec"] == stored["spec"]  # as created, with the defaults the old CRD set
        assert kept["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
        status = helm_ok(cluster, "list", "-n", own_namespace, "-o", "yaml")
        assert yaml.safe_load(status)[0]["chart"] == "modelplane-crds-0.1.1"
    finally:
        # Back to the repository's CRD for the rest of the session, then uninstall: the CRD stays.
        helm_ok(cluster, "upgrade", release, str(CRD_CHART), "-n", own_namespace,
                "--set", "kopfPeering=false")
        helm_ok(cluster, "uninstall", release, "-n", own_namespace)
    for name in OUR_CRDS:
        kept_crd = await kube_client.get(kube.CRDS, name)
        assert kept_crd is not None, name
        assert kept_crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        # Leave the CRD as the session found it: without the release's labels and annotations.
        cluster.run_kubectl("label", "crd", name, *(f"{k}-" for k in kept_crd["metadata"]["labels"]
                                                    if k.startswith(("app.kubernetes.io/", "helm.sh/"))))
        cluster.run_kubectl("annotate", "crd", name, *(f"{k}-" for k in kept_crd["metadata"]["annotations"]
                                                       if k.startswith(("meta.helm.sh/", "helm.sh/"))))

