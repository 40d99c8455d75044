"""kopf's settings, for the one job kopf still does here: HA peering.

The controller watches the cluster through its own informers (``modelplane.controller.informer``),
which survive any API-server outage and cost no LIST at steady state; kopf's watchers gave up after
an API-server restart and needed a process restart to come back. kopf runs only in an HA install
(``modelplane run`` with ``MODELPLANE_PEERING`` set), where it keeps this replica's heartbeat in the
shared peering object and the controller reads from that object which replica is active
(``modelplane.controller.peering``). No resource handlers are registered: kopf's change-detecting
handlers store progress in annotations of the user's object and its timers put a finalizer on it,
and either would make a GitOps tool see the operator editing objects it owns.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from modelplane.controller.credentials import KubeConfig


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Our Events carry reasons and numbers; kopf's own per-handler log Events would only add noise.
    settings.posting.enabled = False
    # Long watches with a client-side bound, so a silently dropped connection is noticed.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)


@kopf.on.login()
async def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """kopf logs in with the controller's own credentials (same ``--kubeconfig``/``--context``,
    exec plugin or ServiceAccount), refreshed first; kopf asks again after ``expiration``."""
    config: KubeConfig = memo.controller.kube.config
    header: str | None = f"Bearer {config.token}" if config.token else None
    if config.auth is not None:
        await config.auth.refresh()
        header = config.auth.header() or header
    scheme, _space, token = (header or "").partition(" ")
    return kopf.ConnectionInfo(
        server=config.server, ca_data=config.ca_data, insecure=config.insecure or None,
        scheme=scheme or None, token=token or None, certificate_data=config.cert_data,
        private_key_data=config.key_data, default_namespace=config.namespace,
        expiration=config.auth.expiry() if config.auth is not None else None)
