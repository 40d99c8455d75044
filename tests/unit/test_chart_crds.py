"""The modelplane-crds chart (charts/modelplane-crds): the CRDs as templates, so `helm upgrade`
updates them (docs/install.md). Rendered with helm (built and cached by tests/chart.py)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.chart import CHART, REPO, helm

CRD_CHART = REPO / "charts" / "modelplane-crds"
ALL = {"modeldeployments.modelplane.dev", "modelroutes.modelplane.dev", "modeladapters.modelplane.dev",
       "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"}


def rendered(*args: str) -> dict[str, dict[str, Any]]:
    done = helm("template", "modelplane-crds", str(CRD_CHART), *args)
    assert done.returncode == 0, done.stderr
    return {d["metadata"]["name"]: d for d in yaml.safe_load_all(done.stdout) if d}


def source_crds() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for path in sorted((CHART / "crds").glob("*.yaml"))
            for d in yaml.safe_load_all(path.read_text()) if d}


def test_its_files_are_the_main_charts_crds() -> None:
    """`make crds` copies the generated CRD to both charts; a stale copy fails here."""
    files = {p.name: p.read_text() for p in (CRD_CHART / "files").glob("*.yaml")}
    assert files == {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}, (
        "charts/modelplane-crds/files/ differs from charts/modelplane/crds/: run `make crds`")


def test_the_versions_follow_the_main_chart() -> None:
    main, crds = (yaml.safe_load((c / "Chart.yaml").read_text()) for c in (CHART, CRD_CHART))
    assert (crds["version"], crds["appVersion"]) == (main["version"], main["appVersion"])


def test_lint_is_clean() -> None:
    done = helm("lint", "--strict", str(CRD_CHART))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("args", "names", "kept"), [
    ((), ALL, True),
    (("--set", "kopfPeering=false"), {"modeldeployments.modelplane.dev", "modelroutes.modelplane.dev",
                                      "modeladapters.modelplane.dev"}, True),
    (("--set", "keep=false"), ALL, False),
])
def test_renders_each_crd_unchanged_with_labels_and_the_keep_policy(
        args: tuple[str, ...], names: set[str], kept: bool) -> None:
    crds, source = rendered(*args), source_crds()
    assert set(crds) == names
    for name, crd in crds.items():
        assert crd["spec"] == source[name]["spec"], name
        assert crd["metadata"]["labels"]["app.kubernetes.io/instance"] == "modelplane-crds"
        policy = (crd["metadata"].get("annotations") or {}).get("helm.sh/resource-policy")
        assert policy == ("keep" if kept else None), name


def test_the_crds_are_templates_not_crds_dir() -> None:
    """Helm installs a chart's crds/ once and never upgrades it: the CRD chart must not use it."""
    assert not (CRD_CHART / "crds").exists()
    assert (CRD_CHART / "templates" / "crds.yaml").is_file()
    assert {crd["kind"] for crd in rendered().values()} == {"CustomResourceDefinition"}
