"""How the operator learns of the requests the gateway holds (pure; the I/O is in ``loop``).

A ModelDeployment scaled to zero has no pod to scrape: the only sign of demand is the requests
``modelplane gateway`` holds for it while none of its replicas is ready. Every gateway replica
exports them as ``modelplane_gateway_held_requests{namespace, model_deployment}`` on its /metrics.
The operator finds the replicas and reads each one's /metrics every ``--gateway-scrape-seconds``
(default 0.25 s), sums the gauge per ModelDeployment over the replicas, and wakes a
ModelDeployment whose sum changed, so that scale from zero starts within a fraction of a second
of the first held request rather than at the next resync.

The same reading gives each ModelDeployment's requests in flight at the gateways
(``modelplane_gateway_in_flight_requests``): when they rise to 1.5 times what they were at its
last reconcile (and by at least 2), the ModelDeployment is reconciled at once, its pods read and
the autoscaler asked, instead of at its next 2 s beat (``surged``; at most once a second each).

The replicas are found either way (docs/gateway.md):

- ``--gateway-selector`` (with ``--gateway-namespace``): the operator watches the pods of that
  label selector in that namespace — the chart passes the gateway Deployment's own labels and the
  release namespace — and reads ``http://<podIP>:<the container port named metrics>/metrics`` of
  each running pod with an IP (a terminating one too: it may still hold requests while it drains).
- ``--gateway-metrics-url``: fixed URLs (gateways that are not pods, e.g. processes on a laptop).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, str]  #: (namespace, ModelDeployment name)

HELD_METRIC = "modelplane_gateway_held_requests"
#: Requests sent to a replica and not yet answered, per revision: the load as clients make it.
IN_FLIGHT_METRIC = "modelplane_gateway_in_flight_requests"
#: A rise of in-flight requests that wakes a ModelDeployment before its next beat (``surged``).
SURGE_FACTOR = 1.5
SURGE_MINIMUM = 2
#: The gateway's default --metrics-port, used when its pod names no ``metrics`` container port.
DEFAULT_METRICS_PORT = 9090
METRICS_PORT_NAME = "metrics"


def metrics_url(pod: Mapping[str, Any]) -> str | None:
    """The /metrics URL of one gateway pod, or None when it has no IP or is not running."""
    status = pod.get("status") or {}
    host = status.get("podIP")
    if not host or status.get("phase") not in (None, "Running"):
        return None
    ports = [p for c in (pod.get("spec") or {}).get("containers") or [] for p in c.get("ports") or []
             if isinstance(p, dict) and p.get("name") == METRICS_PORT_NAME
             and isinstance(p.get("containerPort"), int)]
    port = ports[0]["containerPort"] if ports else DEFAULT_METRICS_PORT
    host = str(host)
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"


def metrics_urls(pods: Iterable[Mapping[str, Any]], fixed: Iterable[str] = ()) -> list[str]:
    """Every gateway replica's /metrics URL: the fixed ones, then the pods', sorted, each once."""
    found = {u for u in (metrics_url(p) for p in pods) if u is not None}
    return list(dict.fromkeys([*fixed, *sorted(found)]))


def parse_reading(text: str) -> tuple[dict[Key, int], dict[Key, int]]:
    """One replica's (held, in flight) requests per ModelDeployment, from its /metrics text.

    Raises ``ValueError`` for text that is not Prometheus' exposition format.
    """
    held: dict[Key, int] = {}
    in_flight: dict[Key, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == HELD_METRIC:
                into = held
            elif sample.name == IN_FLIGHT_METRIC:
                into = in_flight
            else:
                continue
            key = (sample.labels.get("namespace", ""), sample.labels.get("model_deployment", ""))
            if key[0] and key[1] and sample.value > 0:
                into[key] = into.get(key, 0) + int(sample.value)
    return held, in_flight


def parse_held(text: str) -> dict[Key, int]:
    """One replica's held requests per ModelDeployment (see ``parse_reading``)."""
    return parse_reading(text)[0]


def surged(at_reconcile: Mapping[Key, int], now: Mapping[Key, int], *, factor: float = SURGE_FACTOR,
           minimum: int = SURGE_MINIMUM) -> set[Key]:
    """The ModelDeployments whose requests in flight at the gateways rose to ``factor`` times what
    they were at their last reconcile, and by at least ``minimum``: their load grew faster than
    the pods' scrape beat would tell, so they are reconciled (and their pods read) now."""
    return {k for k, n in now.items()
            if n - at_reconcile.get(k, 0) >= minimum and n >= factor * at_reconcile.get(k, 0)}


def sum_held(per_replica: Iterable[Mapping[Key, int]]) -> dict[Key, int]:
    """Held requests per ModelDeployment over every gateway replica."""
    total: dict[Key, int] = {}
    for held in per_replica:
        for key, n in held.items():
            total[key] = total.get(key, 0) + n
    return {k: n for k, n in total.items() if n > 0}


def changed(before: Mapping[Key, int], after: Mapping[Key, int]) -> set[Key]:
    """The ModelDeployments whose held count differs (each needs a reconcile now)."""
    return {k for k in set(before) | set(after) if before.get(k, 0) != after.get(k, 0)}
