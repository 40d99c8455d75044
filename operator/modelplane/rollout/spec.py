"""The rollout's view of the spec: steps and gate settings, durations, and which changes are gated.

Pure functions over the raw camelCase spec dicts (``model_dump(by_alias=True)`` of the API models or
the object as the API server returns it), so this package does not depend on the API models.

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
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelplane import durations
from modelplane.api.models import DEFAULT_IMAGE

DEFAULT_REVISION = "main"



def parse_duration(value: str | float | int | None) -> float:
    """Seconds in ``"30s"``, ``"5m"``, ``"1h30m"``, ``"500ms"``; a bare number is seconds; None or
    "" is 0. The grammar is the API's (``modelplane.durations``)."""
    if value is None:
        return 0.0
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must be >= 0, got {value}")
        return float(value)
    text = value.strip()
    if not text:
        return 0.0
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    return durations.seconds(text)


def _or_default(value: Any, default: float) -> Any:
    # Not ``value or default``: an explicit 0 (e.g. maxRegression 0) is a meaningful setting.
    return default if value is None else value


@dataclass(frozen=True)
class Step:
    weight: int  #: percent of traffic on the canary, 1..100
    pause_seconds: float  #: how long the step lasts (its analysis window)


@dataclass(frozen=True)
class RolloutSpec:
    """``spec.rollout``, as the state machine needs it."""

    steps: tuple[Step, ...] = ()
    evaluation: bool = False  #: an evaluation gate is configured (suite or custom evaluator)
    analysis: bool = False  #: live analysis thresholds are configured
    min_score: float = 0.0
    max_regression: float = 0.02
    confidence: float = 0.95
    max_error_rate: float = 0.05  #: share of suite cases that may fail (either side) and still give a verdict

    @classmethod
    def from_spec(cls, rollout: Mapping[str, Any] | None) -> RolloutSpec | None:
        """None when the spec has no ``rollout`` (changes then switch directly)."""
        if rollout is None:
            return None
        steps = []
        for i, raw in enumerate(rollout.get("steps") or []):
            weight = int(raw["weight"])
            if not 1 <= weight <= 100:
                raise ValueError(f"rollout.steps[{i}].weight must be 1..100, got {weight}")
            steps.append(Step(weight=weight, pause_seconds=parse_duration(raw.get("pause"))))
        evaluation: Mapping[str, Any] | None = rollout.get("evaluation")
        ev = evaluation or {}
        return cls(
            steps=tuple(steps),
            evaluation=bool(ev.get("suiteRef") or ev.get("evaluator")),
            analysis=bool(ev.get("analysis")),
            min_score=float(_or_default(ev.get("minScore"), 0.0)),
            max_regression=float(_or_default(ev.get("maxRegression"), 0.02)),
            confidence=float(_or_default(ev.get("confidence"), 0.95)),
            max_error_rate=float(_or_default(ev.get("maxErrorRate"), 0.05)),
        )


def gated_fields(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a ModelDeployment spec that defines the revision, defaults filled in.

    The handler keeps this for the stable revision (it must render stable from it after the spec has
    moved on to the canary's values).
    """
    model: Mapping[str, Any] = spec.get("model") or {}
    engine: Mapping[str, Any] = spec.get("engine") or {}
    env = sorted(
        ({"name": str(e.get("name")), "value": str(e.get("value", ""))} for e in engine.get("env") or []),
        key=lambda e: e["name"],
    )
    return {
        "model": {
            "source": model.get("source"),
            "revision": model.get("revision") or DEFAULT_REVISION,
        },
        "engine": {
            "image": engine.get("image") or DEFAULT_IMAGE,
            "quantization": engine.get("quantization"),
            "dtype": engine.get("dtype") or "auto",
            "maxModelLen": engine.get("maxModelLen"),
            "extraArgs": [str(a) for a in engine.get("extraArgs") or []],
            "env": env,
        },
    }


def revision_fingerprint(spec: Mapping[str, Any]) -> str:
    """A short stable id of the gated fields: the rollout's revision id and the pods' revision label."""
    canonical = json.dumps(gated_fields(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def needs_gated_rollout(old_spec: Mapping[str, Any], new_spec: Mapping[str, Any]) -> bool:
    """True when going from ``old_spec`` to ``new_spec`` changes what the model answers (see above)."""
    return gated_fields(old_spec) != gated_fields(new_spec)
