"""Integration tests run against the dev cluster's real control plane."""

from tests.clusterfixtures import cluster, kube_client, namespace, pytest_runtest_makereport

__all__ = ["cluster", "kube_client", "namespace", "pytest_runtest_makereport"]
