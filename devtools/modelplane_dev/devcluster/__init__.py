"""The dev cluster: real Kubernetes control-plane binaries on loopback, with kwok GPU nodes."""

from modelplane_dev.devcluster.cluster import DevCluster, DevClusterError, Options, State

__all__ = ["DevCluster", "DevClusterError", "Options", "State"]
