"""The ModelRoute CRD and its API reference, from ``modelplane.api.route`` (``kindgen`` renders)."""

from __future__ import annotations

from pathlib import Path

from modelplane.api import kindgen
from modelplane.api.models import API_VERSION
from modelplane.api.route import (
    ROUTE_CATEGORIES,
    ROUTE_KIND,
    ROUTE_PLURAL,
    ROUTE_SHORT_NAME,
    ROUTE_SINGULAR,
    ModelRouteSpec,
    ModelRouteStatus,
)

DOC = kindgen.KindDoc(
    kind=ROUTE_KIND, plural=ROUTE_PLURAL, singular=ROUTE_SINGULAR, short_name=ROUTE_SHORT_NAME,
    categories=tuple(ROUTE_CATEGORIES), api_version=API_VERSION, source="operator/modelplane/api/route.py",
    description=f"A {ROUTE_KIND} is a model name clients send to the gateway, routed by ordered rules "
                "to ModelDeployments, other routes and external OpenAI-compatible providers, with "
                "weights and fallbacks (docs/model-mesh.md).",
    metadata_name={"type": "string", "maxLength": 253,
                   "description": "The model name clients send in the body's model field."},
    spec=ModelRouteSpec, status=ModelRouteStatus,
    printer_columns=(
        {"name": "Rules", "type": "string", "jsonPath": ".status.summary",
         "description": "The rules in order: match → backends."},
        {"name": "Resolved", "type": "string",
         "jsonPath": ".status.conditions[?(@.type==\"RoutesResolved\")].status",
         "description": "Whether every backend exists and no route loops."},
        {"name": "Reason", "type": "string",
         "jsonPath": ".status.conditions[?(@.type==\"RoutesResolved\")].reason",
         "priority": 1, "description": "Why not, when not."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
    intro=f"`kubectl explain {ROUTE_PLURAL}.spec` prints the same descriptions. Short name "
          f"`{ROUTE_SHORT_NAME}`, category `{ROUTE_CATEGORIES[0]}`. The route's `metadata.name` is the "
          "model name clients send; docs/model-mesh.md explains the rules, weights, fallbacks and "
          "budgets. The operator never writes `spec`; it checks the backends and reports in `status`.",
    reference=Path("docs") / "api-reference-modelroute.md",
)
