"""Integration tests run against the dev cluster's real control plane."""

from tests.clusterfixtures import (
    cluster,
    collect_garbage,
    crds,
    hf_endpoint,
    kube_client,
    namespace,
    operator,
    pytest_runtest_makereport,
)

__all__ = ["cluster", "collect_garbage", "crds", "hf_endpoint", "kube_client", "namespace", "operator",
           "pytest_runtest_makereport"]
