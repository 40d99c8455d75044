"""The ModelAdapter CRD and its API reference, from ``api/adapter.py`` (``kindgen`` renders)."""

from __future__ import annotations

from pathlib import Path

from modelplane.api import kindgen
from modelplane.api.adapter import (
    ADAPTER_API_VERSION,
    ADAPTER_KIND,
    ADAPTER_PLURAL,
    ADAPTER_SHORT_NAME,
    ADAPTER_SINGULAR,
    ModelAdapterSpec,
    ModelAdapterStatus,
)
from modelplane.api.models import CATEGORIES, DNS1123_SUBDOMAIN

DOC = kindgen.KindDoc(
    kind=ADAPTER_KIND, plural=ADAPTER_PLURAL, singular=ADAPTER_SINGULAR, short_name=ADAPTER_SHORT_NAME,
    categories=tuple(CATEGORIES), api_version=ADAPTER_API_VERSION,
    source="operator/modelplane/api/adapter.py",
    description=f"A {ADAPTER_KIND} is a LoRA adapter that the operator loads at runtime on every ready "
                "replica of a base ModelDeployment (no new pod), and that the gateway serves under "
                "its own model name.",
    metadata_name={"type": "string", "maxLength": 253, "pattern": DNS1123_SUBDOMAIN,
                   "description": "A DNS-1123 subdomain: the default served name."},
    spec=ModelAdapterSpec, status=ModelAdapterStatus,
    printer_columns=(
        {"name": "Base", "type": "string", "jsonPath": ".spec.base",
         "description": "The base ModelDeployment."},
        {"name": "Served", "type": "string", "jsonPath": ".status.servedName",
         "description": "The model name clients send."},
        {"name": "Loaded", "type": "integer", "jsonPath": ".status.loadedReplicas",
         "description": "Ready base replicas holding the adapter."},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas",
         "description": "Ready replicas of the base."},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Summary state."},
        {"name": "Serving", "type": "string", "jsonPath": ".status.stable.revision",
         "description": "The revision the served name serves."},
        {"name": "Canary", "type": "string", "jsonPath": ".status.canary.summary",
         "description": "The revision being rolled out: revision, weight, phase."},
        {"name": "Source", "type": "string", "jsonPath": ".spec.source", "priority": 1,
         "description": "Where the adapter comes from."},
        {"name": "Revision", "type": "string", "jsonPath": ".spec.revision", "priority": 1,
         "description": "The adapter revision."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
    intro=f"`kubectl explain {ADAPTER_PLURAL}.spec` prints the same descriptions. Short name "
          f"`{ADAPTER_SHORT_NAME}`. How adapters are loaded, routed and what restarts a base: "
          "[adapters.md](adapters.md). The operator never writes `spec`.",
    reference=Path("docs") / "api-reference-modeladapter.md",
)
