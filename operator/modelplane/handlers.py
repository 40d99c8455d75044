"""kopf registrations and operator settings — and nothing else.

Handlers here only hand what kopf sees to the controller (``modelplane.controller``), which reads
the world, calls the pure core and applies the result. Only event handlers are used: kopf's
change-detecting handlers store their progress in annotations of the user's object, and its timers
and daemons put a finalizer on it; either would make GitOps tools see the operator editing objects
they own. Our own resync loop (in the controller) replaces the timers.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from modelplane.api.models import GROUP, PLURAL, VERSION
from modelplane.controller import Controller

MANAGED = {"app.kubernetes.io/managed-by": "modelplane"}


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


def _controller(memo: Any) -> Controller:
    controller: Controller = memo["controller"]
    return controller


@kopf.on.event(GROUP, VERSION, PLURAL)
async def model_deployment_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).observe(str(event.get("type") or ""), dict(event["object"]))


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
async def deployment_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).poke_owner(body.metadata.namespace, dict(body.metadata.labels))


@kopf.on.event("", "v1", "pods", labels=MANAGED)
async def pod_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _controller(memo).poke_owner(body.metadata.namespace, dict(body.metadata.labels))
