"""Integration tests run against the dev cluster's real control plane."""

from tests.clusterfixtures import (
    cluster,
    crds,
    kube_client,
    namespace,
    operator,
    pytest_runtest_makereport,
)

__all__ = ["cluster", "crds", "kube_client", "namespace", "operator", "pytest_runtest_makereport"]
