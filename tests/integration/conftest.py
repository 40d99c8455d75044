"""Integration tests run against the dev cluster's real control plane."""

from tests.clusterfixtures import (
    cluster,
    crds,
    hf_endpoint,
    kube_client,
    namespace,
    operator,
    pytest_runtest_makereport,
    pytest_runtest_teardown,
)

__all__ = ["cluster", "crds", "hf_endpoint", "kube_client", "namespace", "operator",
           "pytest_runtest_makereport",
           "pytest_runtest_teardown"]
