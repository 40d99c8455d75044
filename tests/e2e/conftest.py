"""End-to-end tests run against the dev cluster's real control plane with the simulator behind pod IPs."""

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
