"""End-to-end tests run against the dev cluster's real control plane with the simulator behind pod IPs."""

from tests.clusterfixtures import (
    cluster,
    crds,
    gateways,
    hf_endpoint,
    kube_client,
    namespace,
    operator,
    pytest_runtest_makereport,
    pytest_runtest_teardown,
)

__all__ = ["cluster", "crds", "gateways", "hf_endpoint", "kube_client", "namespace", "operator",
           "pytest_runtest_makereport",
           "pytest_runtest_teardown"]
