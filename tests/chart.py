"""The Helm chart as tests see it: build helm (cached), render ``charts/modelplane``, pick manifests.

The chart is the one place that says which RBAC the operator gets (``templates/_helpers.tpl``). The
unit tests (tests/unit/test_chart.py) check it against the calls the operator makes; the lifecycle
test on the dev cluster applies the same manifests (``rbac_manifests``) and runs the operator with
that ServiceAccount's token, so a missing verb fails there too.

helm is built from its Go module by ``hack/helm/build.sh`` (a release binary cannot be downloaded
here); the first build on a machine takes a few minutes, later calls return the cached binary.

From a shell, the RBAC manifests for the dev cluster::

    .venv/bin/python -m tests.chart rbac --namespace modelplane-system [--watch-namespace team-a ...]
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "modelplane"
HELM_BUILD = REPO / "hack" / "helm" / "build.sh"
#: A cold build compiles helm and its Kubernetes client libraries: minutes on a busy 2-core machine.
HELM_BUILD_TIMEOUT_SECONDS = 1800
HELM_TIMEOUT_SECONDS = 120

Manifest = dict[str, Any]
#: (apiGroup, resource, verb); the core group is "".
Permission = tuple[str, str, str]

RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


class HelmError(RuntimeError):
    """helm failed; the message carries its stderr."""


@functools.cache
def helm_binary() -> Path:
    """The path of helm, built from hack/helm on first use (then cached under ~/.cache/modelplane)."""
    proc = subprocess.run(["bash", str(HELM_BUILD)], capture_output=True, text=True,
                          timeout=HELM_BUILD_TIMEOUT_SECONDS, check=False)
    if proc.returncode != 0:
        raise HelmError(f"hack/helm/build.sh failed ({proc.returncode}):\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])


def helm(*args: str, timeout: float = HELM_TIMEOUT_SECONDS) -> subprocess.CompletedProcess[str]:
    """Run helm; the result is returned whatever the exit code (callers assert on it)."""
    return subprocess.run([str(helm_binary()), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _values_file(values: Mapping[str, Any] | None, directory: str) -> list[str]:
    if not values:
        return []
    path = Path(directory) / "values.json"
    path.write_text(json.dumps(dict(values)))  # JSON is YAML, and keeps floats floats
    return ["--values", str(path)]


def lint(values: Mapping[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """``helm lint --strict`` of the chart with ``values``."""
    with tempfile.TemporaryDirectory(prefix="modelplane-chart-") as tmp:
        return helm("lint", str(CHART), "--strict", *_values_file(values, tmp))


def render(values: Mapping[str, Any] | None = None, *, release: str = "modelplane",
           namespace: str = "modelplane-system", include_crds: bool = False) -> list[Manifest]:
    """The manifests ``helm template`` renders for ``values``; raises HelmError when it fails."""
    with tempfile.TemporaryDirectory(prefix="modelplane-chart-") as tmp:
        args = ["template", release, str(CHART), "--namespace", namespace, *_values_file(values, tmp)]
        if include_crds:
            args.append("--include-crds")
        proc = helm(*args)
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip())
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def pick(manifests: Iterable[Manifest], kind: str, name: str | None = None,
         namespace: str | None = None) -> list[Manifest]:
    """The manifests of ``kind`` (and ``name``/``namespace`` when given)."""
    return [m for m in manifests if m.get("kind") == kind
            and (name is None or m["metadata"]["name"] == name)
            and (namespace is None or m["metadata"].get("namespace") == namespace)]


def one(manifests: Iterable[Manifest], kind: str, name: str | None = None,
        namespace: str | None = None) -> Manifest:
    found = pick(manifests, kind, name, namespace)
    if len(found) != 1:
        raise LookupError(f"expected one {kind} {name or ''} in {namespace or 'any namespace'}, "
                          f"found {len(found)}")
    return found[0]


def rbac_manifests(values: Mapping[str, Any] | None = None, *, release: str = "modelplane",
                   namespace: str = "modelplane-system") -> list[Manifest]:
    """The ServiceAccount, (Cluster)Roles and bindings the chart creates, in apply order.

    The ServiceAccount lives in ``namespace`` (the release namespace); with ``watchNamespaces`` in
    ``values`` there is a Role and RoleBinding in each of them (which must exist before applying).
    """
    manifests = render(values, release=release, namespace=namespace)
    return [m for kind in RBAC_KINDS for m in pick(manifests, kind)]


def permissions(rules: Sequence[Mapping[str, Any]]) -> set[Permission]:
    """Every (apiGroup, resource, verb) a list of PolicyRules grants."""
    granted: set[Permission] = set()
    for rule in rules:
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                for verb in rule.get("verbs") or []:
                    granted.add((str(group), str(resource), str(verb)))
    return granted


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chart",
                                     description="Print manifests rendered from the Helm chart.")
    sub = parser.add_subparsers(dest="command", required=True)
    rbac = sub.add_parser("rbac", help="the ServiceAccount, (Cluster)Roles and bindings, as YAML")
    rbac.add_argument("--namespace", default="modelplane-system",
                      help="namespace of the operator's ServiceAccount (the release namespace)")
    rbac.add_argument("--release", default="modelplane")
    rbac.add_argument("--watch-namespace", action="append", default=[],
                      help="namespaced mode: a Role in this namespace (repeatable)")
    rbac.add_argument("--ha", action="store_true", help="include the kopf peering rules")
    args = parser.parse_args(argv)
    values: dict[str, Any] = {"watchNamespaces": args.watch_namespace, "ha": {"enabled": args.ha}}
    docs = rbac_manifests(values, release=args.release, namespace=args.namespace)
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
