"""The ModelDeployment API (``modelplane.dev/v1alpha1``): pydantic models and the CRD generator.

``models`` is the one place the API is defined; ``crdgen`` turns it into ``crds/`` and
``docs/api-reference.md``. Nothing here does I/O except ``crdgen``'s command line.
"""

from __future__ import annotations

from modelplane.api.models import (
    API_VERSION,
    FIELD_MANAGER,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    VERSION,
    Condition,
    InvalidSpecError,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)

__all__ = [
    "API_VERSION",
    "FIELD_MANAGER",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAME",
    "VERSION",
    "Condition",
    "InvalidSpecError",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
]
