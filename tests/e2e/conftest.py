"""End-to-end scenarios on the dev cluster: the operator as a process, the simulator on pod IPs."""

from tests.clusterfixtures import (
    cluster,
    crds,
    kube_client,
    namespace,
    operator,
    pytest_runtest_makereport,
)

__all__ = ["cluster", "crds", "kube_client", "namespace", "operator", "pytest_runtest_makereport"]
