"""modelplane: a Kubernetes operator that serves open-weight models on GPUs with vLLM.

The package is layered: pure cores (``api``, ``render``, ``planner``, ``autoscaler``, ``rollout``)
that know nothing of the network; ``kube`` and ``metrics`` clients that do all I/O; ``handlers``
that glue them together under kopf; and tooling (``devcluster``, ``sim``) for local runs and tests.
"""

__version__ = "0.1.0"
