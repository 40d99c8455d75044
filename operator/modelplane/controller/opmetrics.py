"""The operator's own Prometheus metrics, served on ``/metrics`` by ``modelplane run``.

Every decision the operator makes is visible here as well as in conditions and Events: reconciles
and their errors, writes to the API, the autoscaler's desired versus actual replicas and the queue
it saw, the fleet's $/hour, and objects by phase. The process itself is there too
(``process_resident_memory_bytes``, ``process_cpu_seconds_total``, open file descriptors, the
Python version and garbage collections), so its memory can be alerted on against its limit.
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

REGISTRY = CollectorRegistry(auto_describe=True)
# Our own registry leaves out the default one's process, platform and GC collectors: add them.
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

RECONCILES = Counter("modelplane_reconciles_total", "Reconciles of ModelDeployments.",
                     ["namespace", "name", "result"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("modelplane_reconcile_duration_seconds", "Time one reconcile took.",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                              registry=REGISTRY)
RECONCILE_ERRORS = Counter("modelplane_reconcile_errors_total", "Reconciles that raised.",
                           ["namespace", "name", "error"], registry=REGISTRY)
API_REQUESTS = Counter("modelplane_api_requests_total",
                       "Requests the operator made to the API server (a watch counts once, when it opens).",
                       ["verb", "resource"], registry=REGISTRY)
WATCHES_DOWN = Gauge("modelplane_watches_down", "Informers without a working watch right now.",
                     registry=REGISTRY)
API_WRITES = Counter("modelplane_api_writes_total", "Writes the operator made to the API server.",
                     ["kind", "verb"], registry=REGISTRY)
PHASE = Gauge("modelplane_modeldeployments", "ModelDeployments by phase.", ["namespace", "name", "phase"],
              registry=REGISTRY)
DESIRED_REPLICAS = Gauge("modelplane_desired_replicas", "Replicas the autoscaler asks for.",
                         ["namespace", "name"], registry=REGISTRY)
READY_REPLICAS = Gauge("modelplane_ready_replicas", "Replicas Ready now.", ["namespace", "name"],
                       registry=REGISTRY)
QUEUE_DEPTH = Gauge("modelplane_queue_depth", "Waiting requests per ready replica, as scraped.",
                    ["namespace", "name"], registry=REGISTRY)
HOURLY_USD = Gauge("modelplane_fleet_hourly_usd", "GPU cost of the running replicas, USD per hour.",
                   ["namespace", "name"], registry=REGISTRY)
SCALE_DECISIONS = Counter("modelplane_scale_decisions_total", "Changes of desired replicas by reason.",
                          ["namespace", "name", "reason"], registry=REGISTRY)
EVENTS_DROPPED = Counter("modelplane_events_dropped_total",
                         "Events not posted because the queue of Events to send was full.", registry=REGISTRY)
SCRAPE_ERRORS = Counter("modelplane_scrape_errors_total", "Failed scrapes of vLLM /metrics.",
                        ["namespace", "name"], registry=REGISTRY)
ROLLOUT_DECISIONS = Counter("modelplane_rollout_decisions_total", "Rollout decisions by kind.",
                            ["namespace", "name", "decision"], registry=REGISTRY)


def forget(namespace: str, name: str) -> None:
    """Drop the series of a deleted ModelDeployment, so dashboards don't show ghosts."""
    for gauge in (DESIRED_REPLICAS, READY_REPLICAS, QUEUE_DEPTH, HOURLY_USD):
        try:
            gauge.remove(namespace, name)
        except KeyError:
            pass
    for labels in list(PHASE._metrics):  # noqa: SLF001 — prometheus-client has no prefix removal
        if labels[:2] == (namespace, name):
            PHASE.remove(*labels)
