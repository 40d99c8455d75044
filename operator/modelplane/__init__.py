"""modelplane: a Kubernetes operator that serves open-weight models on GPUs with vLLM.

One subpackage per component, so that each decision has one home:

- ``api``: the pydantic models of the resource (spec and status), the only place that knows
  defaults, and the CRD generated from them;
- ``planner``: model size x precision x context x GPU catalog -> the GPU shape and its cost;
- ``render`` (a module): spec + plan + replicas -> the child manifests;
- ``autoscaler``: the scaling policy -> a replica count;
- ``rollout``: the canary state machine, the evaluation gate, live analysis and the rollout's I/O;
- ``metrics``: reading vLLM's metrics from the pods or from a Prometheus;
- ``controller``: the kopf shell (the process, the watch-fed controller loop, the API client,
  peering, the operator's own metrics) and the pure reconcile that calls the cores.

The simulator, the dev cluster, the demo and the load generator are a separate distribution
(``modelplane_dev`` in ``devtools/``), never shipped in the operator image.
"""

__version__ = "0.1.0"
