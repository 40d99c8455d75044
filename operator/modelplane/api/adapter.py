"""The ``ModelAdapter`` custom resource: a LoRA adapter served at runtime on a base ModelDeployment.

Like ``api/models.py`` for ModelDeployment, this is the one source of truth: the CRD
(``crds/modeladapters.modelplane.dev.yaml``) and ``docs/api-reference-modeladapter.md`` are generated
from these models by ``modelplane.api.crdgen``. The API server refuses what a schema can judge
(source form, rank range, names); what needs the rest of the cluster (the base exists, has LoRA
headroom, accepts the rank; the served name is free) is the operator's, reported as the ``Loadable``
condition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, ValidationError

from modelplane.api.models import (
    DNS1035_LABEL,
    LORA_RANKS,
    SOURCE_MAX_LENGTH,
    CanaryStatus,
    Condition,
    InvalidSpecError,
    LoRASpec,
    ModelDeployment,
    RolloutRecord,
    RolloutSpec,
    _check_source,
    _Model,
    _source_rules,
    _SpecModel,
    field_problems,
    to_camel,
)

ADAPTER_KIND: Final = "ModelAdapter"
ADAPTER_PLURAL = "modeladapters"
ADAPTER_SINGULAR = "modeladapter"
ADAPTER_SHORT_NAME = "mad"
ADAPTER_API_VERSION: Final = "modelplane.dev/v1alpha1"
#: The schemes an adapter may come from (an OCI modelcar holds a whole model, not an adapter).
ADAPTER_SCHEMES = ("hf", "s3", "gs", "pvc")
#: The highest rank vLLM accepts at all (the largest --max-lora-rank).
MAX_RANK = 512


def _check_adapter_source(value: str) -> str:
    return _check_source(value, ADAPTER_SCHEMES)


class ModelAdapterSpec(_SpecModel):
    """A LoRA adapter and the base model it runs on."""

    base: str = Field(
        min_length=1, max_length=63, pattern=DNS1035_LABEL,
        description="metadata.name of the ModelDeployment in this namespace whose replicas load the adapter "
                    "(its model must be the one the adapter was trained on). Required. Its replicas run "
                    "with LoRA enabled (spec.engine.lora) once an adapter names it.")
    source: Annotated[str, AfterValidator(_check_adapter_source)] = Field(
        max_length=SOURCE_MAX_LENGTH, pattern=r"^(hf|s3|gs|pvc)://",
        json_schema_extra=_source_rules(ADAPTER_SCHEMES),
        description="Where the adapter (a PEFT directory: adapter_config.json and the weights) is. "
                    "hf://<org>/<name> (vLLM fetches it from the Hub; the base's credentialsSecret token "
                    "is used), s3://<bucket>/<path> or gs://<bucket>/<path> (passed to vLLM as is), "
                    "pvc://<claim>[/<path>] (the claim must be the base's own model claim, mounted at "
                    "/models). Required.")
    revision: str = Field(
        default="main", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="The adapter revision: a label you change when the weights at the source change. A "
                    "change of source or revision is a new revision: without spec.rollout it replaces the "
                    "serving one in place; with it, it is rolled out beside the serving one behind the "
                    "gate (docs/adapters.md, Rollouts). Default main.")
    served_name: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="The OpenAI `model` name clients send to reach the adapter (vLLM's lora_name). Must "
                    "differ from every ModelDeployment's and other adapter's served name in the "
                    "namespace (else NotLoadable/ServedNameConflict). Default: metadata.name.")
    rank: StrictInt = Field(
        default=16, ge=1, le=MAX_RANK,
        description="The adapter's LoRA rank (r in its adapter_config.json): the base's maxLoraRank is "
                    "sized to fit it. 1-512. Default 16.")
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec,
        description="How a new revision (source or revision changed) replaces the serving one: the same "
                    "block as a ModelDeployment's (steps, evaluation suite, live analysis). The new "
                    "revision is loaded beside the serving one on the same replicas, under the served "
                    "name followed by @ and its fingerprint; the gateway sends it each step's share of "
                    "the served name's requests. Empty (default): the new revision replaces the serving "
                    "one in place, ungated.")

    @property
    def scheme(self) -> str:
        return self.source.split("://", 1)[0]


class AdapterPhase(StrEnum):
    PENDING = "Pending"  #: no Ready replica of the base yet, or loads in progress
    READY = "Ready"  #: loaded on every Ready replica of the base
    DEGRADED = "Degraded"  #: loaded on some Ready replicas, failed on others
    FAILED = "Failed"  #: not loadable, or failed on every Ready replica


class ReplicaState(StrEnum):
    LOADED = "Loaded"
    FAILED = "Failed"


class AdapterConditionType(StrEnum):
    LOADABLE = "Loadable"
    READY = "Ready"
    PROGRESSING = "Progressing"
    EVALUATING = "Evaluating"


class AdapterReason(StrEnum):
    """The reasons of the adapter's conditions."""

    ACCEPTED = "Accepted"
    INVALID_SPEC = "InvalidSpec"
    UNKNOWN_BASE = "UnknownBase"
    RANK_ABOVE_MAXIMUM = "RankAboveMaximum"
    NO_LORA_HEADROOM = "NoLoRAHeadroom"
    SERVED_NAME_CONFLICT = "ServedNameConflict"
    CLAIM_NOT_MOUNTED = "ClaimNotMounted"
    LOADED = "Loaded"
    LOADING = "Loading"
    NO_READY_REPLICA = "NoReadyReplica"
    LOAD_FAILED = "LoadFailed"
    NO_ROLLOUT = "NoRollout"


class AdapterCondition(Condition):
    """One observation about the adapter, as in metav1.Condition."""

    type: str = Field(min_length=1, max_length=316,
                      description="Loadable: whether the operator can load the adapter at all (False says "
                                  "why). Ready: whether every Ready replica of the base holds it. "
                                  "Progressing: whether a rollout runs. Evaluating: the last gate's numbers.")


class ReplicaAdapterStatus(_Model):
    """The adapter on one replica (pod) of the base."""

    pod: str = Field(description="The base's pod.")
    state: ReplicaState = Field(description="Loaded, or Failed (message: vLLM's answer).")
    path: str = Field(description="The lora_path the replica was asked to load.")
    message: str = Field(default="", max_length=4096, description="vLLM's error message when Failed.")


class AdapterRevisionStatus(_Model):
    """The revision the served name serves (the rollout's stable one)."""

    source: str | None = Field(default=None, description="Its spec.source.")
    revision: str | None = Field(default=None, description="Its spec.revision.")
    fingerprint: str | None = Field(default=None, description="12 hex digits of source and revision.")


class AdapterCanaryStatus(CanaryStatus):
    """The rollout state machine, as a ModelDeployment's, plus where the new revision is loaded."""

    source: str | None = Field(default=None, description="spec.source of the revision being rolled out.")
    served_name: str | None = Field(
        default=None, description="The name the revision being rolled out is loaded under on the replicas "
                                  "(servedName@fingerprint[:8]); the gateway rewrites its share of requests "
                                  "to it.")
    replicas: list[ReplicaAdapterStatus] = Field(
        default_factory=list, description="Per Ready replica of the base: whether that revision is loaded.")


class ModelAdapterStatus(_Model):
    """What the operator observed and did; it is the only writer."""

    observed_generation: StrictInt | None = Field(default=None, ge=0,
                                                  description="metadata.generation last acted on.")
    phase: AdapterPhase | None = Field(default=None, description="Pending, Ready, Degraded or Failed.")
    served_name: str | None = Field(default=None, description="The model name clients send.")
    loaded_replicas: StrictInt | None = Field(default=None, ge=0,
                                              description="Ready base replicas holding the adapter.")
    ready_replicas: StrictInt | None = Field(default=None, ge=0, description="Ready replicas of the base.")
    replicas: list[ReplicaAdapterStatus] = Field(
        default_factory=list, description="Per Ready replica of the base: whether the adapter is loaded.")
    stable: AdapterRevisionStatus | None = Field(
        default=None, description="The revision the served name serves. It survives an operator restart: a "
                                  "spec that names another revision is rolled out (or switched to) from it.")
    canary: AdapterCanaryStatus | None = Field(
        default=None, description="The revision being rolled out, or the outcome of the last rollout "
                                  "(phase, weight, both evaluation scores, rejectedRevision).")
    rollout_history: list[RolloutRecord] = Field(
        default_factory=list, max_length=10, description="The last 10 rollouts, newest last.")
    conditions: list[AdapterCondition] = Field(
        default_factory=list,
        description="Loadable: False when the operator cannot load it (reason UnknownBase, RankAboveMaximum, "
                    "NoLoRAHeadroom, ServedNameConflict, ClaimNotMounted, InvalidSpec). Ready: True "
                    "when every Ready replica of the base holds it (False with LoadFailed carries vLLM's "
                    "message). Progressing: True while a rollout runs (reason: the rollout's). "
                    "Evaluating: the last evaluation gate's numbers.")


class ModelAdapter(BaseModel):
    """A ModelAdapter object as the API server returns it."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    api_version: Literal["modelplane.dev/v1alpha1"] = Field(default=ADAPTER_API_VERSION)
    kind: Literal["ModelAdapter"] = Field(default=ADAPTER_KIND)
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelAdapterSpec

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> ModelAdapter:
        """Validate a raw object's metadata and spec; raises InvalidSpecError naming each failing field.

        The status is not read: readers take what they need from the raw one, and an odd status (an
        older operator's) must not make a good spec unusable.
        """
        try:
            return cls.model_validate({k: v for k, v in obj.items() if k != "status"})
        except ValidationError as exc:
            raise InvalidSpecError(field_problems(exc)) from None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", ""))

    @property
    def generation(self) -> int | None:
        value = self.metadata.get("generation")
        return value if isinstance(value, int) else None

    @property
    def created(self) -> str:
        return str(self.metadata.get("creationTimestamp", ""))

    @property
    def served_name(self) -> str:
        return self.spec.served_name or self.name


# --- the base's LoRA settings, with their defaults ---

#: ``maxLoras`` when the base does not set it (vLLM's default is 1: one adapter per batch).
DEFAULT_MAX_LORAS = 4
#: The least ``maxLoraRank`` rendered by default (vLLM's own default).
DEFAULT_MIN_RANK = 16
#: The least ``maxCpuLoras`` rendered by default.
DEFAULT_MIN_CPU_LORAS = 16


def _pow2_at_least(n: int) -> int:
    power = 1
    while power < n:
        power *= 2
    return power


def effective_lora(explicit: LoRASpec | None, adapters: Sequence[ModelAdapter]) -> LoRASpec | None:
    """The LoRA settings a base renders with (None: LoRA off: no block and no adapter).

    The explicit fields win; ``maxLoras`` defaults to 4, ``maxLoraRank`` to the smallest vLLM value
    that fits the highest adapter rank (at least 16), ``maxCpuLoras`` to the adapter count rounded up
    to a power of two (at least 16, and at least maxLoras). Rounding keeps the flags (and so the pods)
    still while adapters come and go below the next power of two.
    """
    if explicit is None and not adapters:
        return None
    explicit = explicit or LoRASpec()
    max_loras = explicit.max_loras or DEFAULT_MAX_LORAS
    rank: int | None = explicit.max_lora_rank
    if rank is None:
        highest = max((a.spec.rank for a in adapters), default=0)
        rank = next(r for r in LORA_RANKS if r >= max(highest, DEFAULT_MIN_RANK) or r == LORA_RANKS[-1])
    cpu = explicit.max_cpu_loras or max(_pow2_at_least(max(len(adapters), DEFAULT_MIN_CPU_LORAS)), max_loras)
    return LoRASpec.model_validate({"maxLoras": max_loras, "maxLoraRank": rank, "maxCpuLoras": cpu})


def with_effective_lora(md: ModelDeployment, adapters: Sequence[ModelAdapter]) -> ModelDeployment:
    """``md`` with ``spec.engine.lora`` as rendered and planned (the object itself is not changed)."""
    lora = effective_lora(md.spec.engine.lora, adapters)
    if lora == md.spec.engine.lora:
        return md
    engine = md.spec.engine.model_copy(update={"lora": lora})
    return md.model_copy(update={"spec": md.spec.model_copy(update={"engine": engine})})
