"""The rollout's view of the spec: steps and gate settings, and which changes are gated.

Built from the parsed API models (``api.models.ModelDeploymentSpec``), never from a dict: the API
models are the only place that knows a default (a step's ``pause``, the gate's ``maxRegression``,
the engine's image…), and this module only reads their typed fields.

Which spec changes roll out behind the gate? Those that can change what the model *answers*:

* ``model.source``, ``model.revision`` — another checkpoint;
* ``engine.image`` — another vLLM (kernels, sampling and chat-template handling change between
  releases);
* ``engine.quantization``, ``engine.dtype`` — other numerics;
* ``engine.maxModelLen`` — requests longer than the new limit are refused or truncated;
* ``engine.extraArgs``, ``engine.env`` — flags such as ``--chat-template``, ``--tokenizer-mode``,
  ``--generation-config`` or env such as ``VLLM_ATTENTION_BACKEND`` change outputs, and the operator
  cannot tell a harmless flag from one of those, so any change is gated (argument order counts; env
  order does not).

Everything else applies directly, with an ordinary rolling update of the workloads: probes,
``resources`` (GPU type/count, CPU, memory, cache), ``engine.gpuMemoryUtilization``,
``engine.maxNumSeqs``, ``model.servedName``, ``model.credentialsSecret``, ``model.hints``, ``scaling``,
``replicas`` and ``rollout`` itself. A change of GPU type can move numerics slightly; it is treated as
capacity, not as a new model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelplane.api import models


@dataclass(frozen=True)
class Step:
    weight: int  #: percent of requests on the canary, 1..100
    pause_seconds: float  #: how long the step lasts (its analysis window)


@dataclass(frozen=True)
class RolloutSpec:
    """``spec.rollout``, as the state machine needs it (built by ``rollout_spec_from_api``)."""

    steps: tuple[Step, ...]
    evaluation: bool  #: an evaluation gate is configured (suite or custom evaluator)
    analysis: bool  #: live analysis thresholds are configured
    min_score: float  #: 0 when the API's minScore is unset: scores are in [0, 1], so no floor
    max_regression: float
    confidence: float
    max_error_rate: float  #: share of suite cases that may fail (either side) and still give a verdict


def rollout_spec_from_api(rollout: models.RolloutSpec) -> RolloutSpec | None:
    """The machine's view of the parsed ``spec.rollout``; None when it has neither steps nor an
    evaluation (the API server defaults ``rollout`` to ``{}``, which means "no gate": a direct switch).

    Without an evaluation the gate's numbers are never read; they are then the API's defaults.
    """
    if not rollout.steps and rollout.evaluation is None:
        return None
    evaluation = rollout.evaluation or models.EvaluationSpec.model_construct()
    analysis = evaluation.analysis if rollout.evaluation is not None else None
    return RolloutSpec(
        steps=tuple(Step(s.weight, models.duration_seconds(s.pause)) for s in rollout.steps),
        evaluation=rollout.evaluation is not None,
        # Without a threshold a step simply lasts its pause (docs/rollouts.md, Live analysis).
        analysis=analysis is not None and (analysis.max_error_rate is not None
                                           or analysis.max_ttft_seconds_p95 is not None),
        min_score=evaluation.min_score if evaluation.min_score is not None else 0.0,
        max_regression=evaluation.max_regression,
        confidence=evaluation.confidence,
        max_error_rate=evaluation.max_error_rate,
    )


def gated_fields(spec: models.ModelDeploymentSpec) -> dict[str, Any]:
    """The part of a ModelDeployment spec that defines the revision, as camelCase JSON values.

    The Deployments keep it as their snapshot (``render.ANNOTATION_GATED``), so stable is rendered
    from its own values after the spec has moved on to the canary's; its canonical JSON is hashed
    into the fingerprint, so the shape and spelling here must not change (every running
    Deployment's fingerprint would, and every ModelDeployment would start a rollout).
    """
    engine = spec.engine
    env = sorted(({"name": e.name, "value": e.value} for e in engine.env), key=lambda e: e["name"])
    return {
        "model": {"source": spec.model.source, "revision": spec.model.revision},
        "engine": {
            "image": engine.image,
            "quantization": engine.quantization.value if engine.quantization is not None else None,
            "dtype": engine.dtype.value,
            "maxModelLen": engine.max_model_len,
            "extraArgs": list(engine.extra_args),
            "env": env,
        },
    }


def revision_fingerprint(spec: models.ModelDeploymentSpec) -> str:
    """A short stable id of the gated fields: the rollout's revision id and the pods' revision label."""
    canonical = json.dumps(gated_fields(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def needs_gated_rollout(old: models.ModelDeploymentSpec, new: models.ModelDeploymentSpec) -> bool:
    """True when going from ``old`` to ``new`` changes what the model answers (see above)."""
    return gated_fields(old) != gated_fields(new)


def spec_with_gated(spec: models.ModelDeploymentSpec, gated: Mapping[str, Any]) -> models.ModelDeploymentSpec:
    """The current spec with the gated fields of a snapshot (everything else follows the spec).

    The snapshot is a Deployment's annotation, so it is parsed like any input: a snapshot the API
    models refuse raises ``pydantic.ValidationError``.
    """
    out: dict[str, Any] = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    model = out.setdefault("model", {})
    engine = out.setdefault("engine", {})
    for key, value in (gated.get("model") or {}).items():
        model[key] = value
    for key, value in (gated.get("engine") or {}).items():
        if value is None or value == []:
            engine.pop(key, None)
        else:
            engine[key] = value
    return models.ModelDeploymentSpec.model_validate(out)
