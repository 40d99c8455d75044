"""The ModelDeployment API, ``modelplane.dev/v1alpha1``: spec, status and the object wrapper.

These models are the single source of truth for the API. ``modelplane.api.crdgen`` turns them into
the CRD's structural schema and the API reference, so every ``description`` here is what
``kubectl explain`` prints: each says the default, the unit, what the field does and its range.

Validation lives in two places that must agree: Python validators here (used by the operator and
the tests) and CEL rules (``x-kubernetes-validations``, declared next to the field they guard with
``rules(...)``) that the API server runs. Bad input is refused by the API server before it reaches
the operator; the Python side exists so that tools and tests can say the same thing offline.
Field names are snake_case in Python and camelCase on the wire (``alias_generator``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from modelplane import durations
from modelplane.durations import DURATION_PATTERN
from modelplane.gpus import GPU_TYPE_NAMES

GROUP: Final = "modelplane.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "modelplane.dev/v1alpha1"
KIND: Final = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAME = "md"
CATEGORIES: tuple[str, ...] = ("modelplane",)
FIELD_MANAGER = "modelplane"

DEFAULT_IMAGE = "vllm/vllm-openai:v0.32.0"

# --- patterns shared by the Python validators and the CRD (RE2 and Rust regex both accept them) ---

#: A DNS-1123 subdomain: the names of Secrets, ConfigMaps and PersistentVolumeClaims.
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A DNS-1035 label: the ModelDeployment's own name, because it also names its Service.
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
#: A non-negative Kubernetes resource quantity ("500m", "16Gi", "1.5", "2e3"). Kubernetes parses "-8Gi"
#: too, but refuses it in a container's resources and an emptyDir's sizeLimit: a Deployment rendered
#: from it would fail to create on every reconcile, so the sign is refused here with the syntax.
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
#: How the refusal of a bad quantity string words it, in the CRD's rule and the Python error alike.
QUANTITY_WORDS = "a non-negative quantity such as 7500m or 64Gi"
#: An environment variable name, as Kubernetes accepts it.
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
#: A condition reason (metav1.Condition): CamelCase, machine-readable.
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

#: A path inside a bucket or claim: "/" then at least one character that is neither "/" nor a space.
_PATH = r"/[^\s/][^\s]*"
#: One pattern per source scheme, with the form the refusal message shows. Each message names every
#: part its pattern requires, and shows an optional part in brackets.
SOURCE_SCHEMES: Mapping[str, tuple[str, str]] = {
    # The Hub names every model <org>/<name> (the old unprefixed names redirect to one), and the
    # planner reads config.json only for such an id; "hf://Llama-3.1-8B" is a forgotten org.
    "hf": (r"^hf://[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$",
           "hf://<org>/<name>, e.g. hf://meta-llama/Llama-3.1-8B-Instruct"),
    "s3": (r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]" + _PATH + "$",
           "s3://<bucket>/<path>, the bucket a valid S3 bucket name and the path (the folder holding "
           "the model) not empty"),
    "gs": (r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]" + _PATH + "$",
           "gs://<bucket>/<path>, the bucket a valid GCS bucket name and the path (the folder holding "
           "the model) not empty"),
    # The path is optional here: without it the model is at the root of the claim (mounted at /models).
    "pvc": (r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(" + _PATH + ")?/?$",
            "pvc://<claim>[/<path>], the claim a DNS-1123 name in the same namespace (no path: the model "
            "is at the claim's root)"),
    "oci": (r"^oci://[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)+"
            r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})?$",
            "oci://<registry>/<repository>[:<tag>|@sha256:<digest>]"),
}
SOURCE_MAX_LENGTH = 1024



@dataclass(frozen=True)
class OwnedFlag:
    """A vLLM flag that ``engine.extraArgs`` may not set, because the operator derives it (from a
    typed field or on its own) or because it changes how many GPUs a replica needs."""

    names: tuple[str, ...]  #: the long name, then vLLM's short aliases
    instead: str  #: what to do instead, for the refusal message
    #: Source schemes for which the operator renders the flag; empty: refused whatever the source.
    schemes: tuple[str, ...] = ()

    @property
    def pattern(self) -> str:
        """Every spelling vLLM's parser reads as this flag: ``--max-model-len`` and ``--max_model_len``
        (it turns underscores into dashes), each alone or as ``--flag=value``; a one-letter alias
        also with its value attached (``-qfp8``, as argparse allows)."""
        forms: list[str] = []
        for name in self.names:
            if name.startswith("--"):
                forms.append("--" + "[-_]".join(name[2:].split("-")) + "(=|$)")
            elif len(name) == 2:
                forms.append(name)
            else:
                forms.append(name + "(=|$)")
        return "^(" + "|".join(forms) + ")"

    @property
    def message(self) -> str:
        where = f" with an {' or '.join(s + '://' for s in self.schemes)} source" if self.schemes else ""
        return f"extraArgs must not set {' or '.join(self.names)}{where}: {self.instead}"

    def refuses(self, args: list[str], source: str) -> bool:
        """Whether ``args`` set this flag where the operator owns it (the Python side of the CEL rule)."""
        if self.schemes and source.split("://", 1)[0] not in self.schemes:
            return False
        return any(re.match(self.pattern, arg) for arg in args)


_NOT_SUPPORTED_PARALLELISM = ("a replica's GPUs (spec.resources.gpu.count) all serve tensor parallelism, "
                              "so a replica would ask for more GPUs than the plan gives it")

#: Every vLLM flag the operator renders (render.vllm_args), every flag a typed field stands for, and
#: the parallelism flags that multiply a replica's GPUs: the planner sizes and prices the replica, and
#: status reports its revision, from the typed fields, so extraArgs may not contradict them.
OWNED_FLAGS: tuple[OwnedFlag, ...] = (
    OwnedFlag(("--model",), "use spec.model.source"),
    OwnedFlag(("--revision",), "use spec.model.revision (status reports the revision it names)"),
    OwnedFlag(("--served-model-name",), "use spec.model.servedName"),
    OwnedFlag(("--tensor-parallel-size", "-tp"),
              "use spec.resources.gpu.count (a replica's GPUs are its tensor-parallel size)"),
    OwnedFlag(("--pipeline-parallel-size", "-pp"), _NOT_SUPPORTED_PARALLELISM),
    OwnedFlag(("--data-parallel-size", "-dp"), _NOT_SUPPORTED_PARALLELISM),
    OwnedFlag(("--data-parallel-size-local", "-dpl"), _NOT_SUPPORTED_PARALLELISM),
    OwnedFlag(("--max-model-len",), "use spec.engine.maxModelLen (the planner sizes the KV cache for it)"),
    OwnedFlag(("--max-num-seqs",), "use spec.engine.maxNumSeqs (the planner sizes the KV cache for it)"),
    OwnedFlag(("--gpu-memory-utilization",), "use spec.engine.gpuMemoryUtilization"),
    OwnedFlag(("--quantization", "-q"), "use spec.engine.quantization"),
    OwnedFlag(("--dtype",), "use spec.engine.dtype"),
    OwnedFlag(("--port",), "the operator sets it: the probes and the Service use port 8000"),
    OwnedFlag(("--download-dir",), "the operator sets it to the model cache (spec.resources.modelCache)"),
    OwnedFlag(("--enable-lora", "--max-loras", "--max-lora-rank", "--max-cpu-loras"),
              "use spec.engine.lora (the operator renders them when ModelAdapters name this model, and the "
              "planner reserves their memory)"),
    # Other sources may choose their format (a Mistral checkpoint asks for --load-format mistral).
    OwnedFlag(("--load-format",), "the operator sets runai_streamer to stream the weights from the bucket",
              schemes=("s3", "gs")),
)

#: Environment variables that carry a credential: a plain ``engine.env`` value would sit in the spec
#: for anyone who can read the object. GOOGLE_APPLICATION_CREDENTIALS is not here: it names a file.
SECRET_ENV_NAMES: tuple[str, ...] = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY",
                                     "AWS_SESSION_TOKEN")
SECRET_ENV_MESSAGE = (
    f"{', '.join(SECRET_ENV_NAMES[:-1])} and {SECRET_ENV_NAMES[-1]} carry credentials: put the value in the "
    "Secret that spec.model.credentialsSecret names (its key HF_TOKEN becomes the Hugging Face token; for "
    "s3:// and gs:// every key becomes a variable), never in a plain env value")


def rules(*items: tuple[str, str] | tuple[str, str, str]) -> dict[str, Any]:
    """CEL rules for the CRD, as ``json_schema_extra``: each ``(rule, message[, fieldPath])``."""
    out: list[dict[str, str]] = []
    for item in items:
        rule: dict[str, str] = {"rule": item[0], "message": item[1]}
        if len(item) == 3:
            rule["fieldPath"] = item[2]
        out.append(rule)
    return {"x-kubernetes-validations": out}


_ACRONYMS = {"usd": "USD", "ttft": "TTFT", "gib": "GiB"}


def to_camel(name: str) -> str:
    """snake_case → the camelCase JSON name, keeping the acronyms people expect (hourlyUSD)."""
    first, *rest = name.split("_")
    return first + "".join(_ACRONYMS.get(word, word.capitalize()) for word in rest)


class _Model(BaseModel):
    """Common configuration: camelCase on the wire, unknown fields refused (typos are errors)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class _SpecModel(_Model):
    """Spec values are the user's and immutable to the operator."""

    model_config = ConfigDict(frozen=True)


# --- reusable field types ---

def _check_source(value: str, schemes: Sequence[str] = tuple(SOURCE_SCHEMES)) -> str:
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in schemes:
        raise ValueError(f"source must start with one of {', '.join(s + '://' for s in schemes)}")
    pattern, example = SOURCE_SCHEMES[scheme]
    if not re.match(pattern, value):
        raise ValueError(f"malformed {scheme}:// source: expected {example}")
    return value


def _source_rules(schemes: Sequence[str] = tuple(SOURCE_SCHEMES)) -> dict[str, Any]:
    return rules(*(
        (f"!self.startsWith('{scheme}://') || self.matches(r'{SOURCE_SCHEMES[scheme][0]}')",
         f"malformed {scheme}:// source: expected {SOURCE_SCHEMES[scheme][1]}")
        for scheme in schemes
    ))


def _check_gpu_type(value: str) -> str:
    if value not in GPU_TYPE_NAMES:
        raise ValueError(f"unknown GPU type {value!r}; known: {', '.join(GPU_TYPE_NAMES)}")
    return value


#: A GPU type from the catalog in ``modelplane.gpus``; adding one there adds it to the CRD's enum.
GPUTypeName = Annotated[str, AfterValidator(_check_gpu_type),
                        WithJsonSchema({"type": "string", "enum": list(GPU_TYPE_NAMES)})]
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN)]
Duration = Annotated[str, Field(min_length=2, max_length=32, pattern=DURATION_PATTERN)]


def _check_quantity(value: int | str) -> int | str:
    if (value < 0) if isinstance(value, int) else not re.match(QUANTITY_PATTERN, value):
        # The words of the CRD rule's message (crdgen builds it from the schema below).
        raise ValueError(f"must be an integer >= 0 or {QUANTITY_WORDS}, got {value!r}")
    return value


#: int or string, like Kubernetes resource quantities (``cpu: 4`` and ``memory: 16Gi``), never negative.
#: One validator checks both branches, so an error says one thing; the string branch's description
#: words its part of the CRD rule's message (crdgen).
Quantity = Annotated[
    StrictInt | Annotated[str, Field(max_length=64)], AfterValidator(_check_quantity),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0},
                              {"type": "string", "maxLength": 64, "pattern": QUANTITY_PATTERN,
                               "description": QUANTITY_WORDS}]})]
GPUCount = Annotated[StrictInt, Field(ge=1, le=8)] | Literal["auto"]


def duration_seconds(value: str) -> float:
    """Seconds in a duration string such as ``"1h30m"`` or ``"500ms"``."""
    return durations.seconds(value)


# --- enums ---

class Quantization(StrEnum):
    """Weight quantization vLLM applies (``--quantization``)."""

    FP8 = "fp8"
    AWQ = "awq"
    GPTQ = "gptq"


class DType(StrEnum):
    """Activation and weight dtype (``--dtype``)."""

    AUTO = "auto"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class WeightPrecision(StrEnum):
    """How a checkpoint's weights are stored, for the planner (``modelplane.planner.Precision``)."""

    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    INT8 = "int8"
    INT4 = "int4"


class ScalingMode(StrEnum):
    """Who decides the replica count."""

    BUILTIN = "Builtin"
    EXTERNAL = "External"


class Phase(StrEnum):
    """The one-word summary of a ModelDeployment's state."""

    PENDING = "Pending"
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    SCALED_TO_ZERO = "ScaledToZero"
    FAILED = "Failed"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(StrEnum):
    """The condition types the operator writes; the status descriptions list them from here."""

    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    SCALING_LIMITED = "ScalingLimited"
    METRICS_AVAILABLE = "MetricsAvailable"
    MODEL_CONFIG_LOADED = "ModelConfigLoaded"
    EVALUATING = "Evaluating"
    #: True while the evaluation suite is too small to pass an equal canary with 80% probability.
    SUITE_UNDERPOWERED = "SuiteUnderpowered"
    #: Only with spec.inferencePool: whether the InferencePool (and HTTPRoute) are in place.
    INFERENCE_POOL_READY = "InferencePoolReady"
    #: Only with multi-node replicas (LeaderWorkerSet groups): whether a group was recreated.
    GROUP_RECREATED = "GroupRecreated"


#: What each condition type says, for the status field descriptions (``kubectl explain``).
CONDITION_MEANINGS: Mapping[ConditionType, str] = {
    ConditionType.READY: "True when the desired replicas serve (during a rollout: at least one)",
    ConditionType.PROGRESSING: "True while replicas start, a revision switches or a rollout drives",
    ConditionType.DEGRADED: "True when a problem keeps replicas from serving or no GPU plan fits (the "
                            "reason names which)",
    ConditionType.SCALING_LIMITED: "True when maxReplicas or the budget holds the built-in autoscaler back",
    ConditionType.METRICS_AVAILABLE: "False when a ready replica's metrics could not be read, so the "
                                     "built-in autoscaler holds its last decision",
    ConditionType.MODEL_CONFIG_LOADED: "True when the model's config.json was read to size the plan "
                                       "(False says why not)",
    ConditionType.EVALUATING: "True while the rollout's evaluation gate runs, then False with the last "
                              "gate's scores",
    ConditionType.SUITE_UNDERPOWERED: "True while the evaluation suite is too small to pass an equal canary "
                                      "with 80% probability at its margin and confidence (the message "
                                      "gives the size that would suffice); a warning, never a block",
    ConditionType.INFERENCE_POOL_READY: "Only with spec.inferencePool enabled: True when the InferencePool "
                                        "(and the HTTPRoute, when asked) are applied; False when the "
                                        "cluster lacks their CRDs (the reason names which) or the API "
                                        "server refused them",
    ConditionType.GROUP_RECREATED: "Only with multi-node replicas: True when the LeaderWorkerSet controller "
                                   "recreated a group because one of its pods failed, restarted or was "
                                   "deleted (the message names the pod, the group, when, and how many "
                                   "groups are ready now), as long as the API server keeps its Events",
}


# --- spec ---

class ModelHints(_SpecModel):
    """Model shape for the GPU planner, for when the operator cannot read the model's config.json
    (private buckets, OCI images, gated repositories without a token). Used only when config.json
    was not read; laid over the built-in catalog entry when the source matches one. Hints change
    the plan only, never the vLLM flags."""

    model_config = ConfigDict(json_schema_extra=rules(
        ("!has(self.activeParametersBillions) || !has(self.parametersBillions) || "
         "self.activeParametersBillions <= self.parametersBillions",
         "activeParametersBillions must be <= parametersBillions", ".activeParametersBillions"),
        ("!has(self.numKeyValueHeads) || !has(self.numAttentionHeads) || "
         "self.numKeyValueHeads <= self.numAttentionHeads",
         "numKeyValueHeads must be <= numAttentionHeads", ".numKeyValueHeads"),
    ))

    parameters_billions: StrictFloat | None = Field(
        default=None, gt=0, le=10000,
        description="Total parameters, in billions (e.g. 8.03 for Llama 3.1 8B). Sizes the weights. "
                    "Range (0, 10000].")
    active_parameters_billions: StrictFloat | None = Field(
        default=None, gt=0, le=10000,
        description="Parameters active per token, in billions, for mixture-of-experts models "
                    "(e.g. 13 for Mixtral 8x7B). At most parametersBillions. Unset: all parameters.")
    num_layers: StrictInt | None = Field(
        default=None, ge=1, le=1000,
        description="Transformer layers (num_hidden_layers). Sizes the KV cache. 1-1000.")
    hidden_size: StrictInt | None = Field(
        default=None, ge=1, le=1_000_000, description="Hidden dimension (hidden_size). 1-1000000.")
    num_attention_heads: StrictInt | None = Field(
        default=None, ge=1, le=4096,
        description="Attention heads per layer. 1-4096. Setting it, numKeyValueHeads or headDim describes "
                    "the attention completely: the KV cache is sized as grouped-query attention from the "
                    "hints, and nothing of a catalog entry's attention (e.g. DeepSeek's compressed latent) "
                    "is kept.")
    num_key_value_heads: StrictInt | None = Field(
        default=None, ge=1, le=4096,
        description="Key/value heads per layer (grouped-query attention); at most numAttentionHeads. "
                    "Sizes the KV cache. Unset: numAttentionHeads (the largest KV cache), or the catalog "
                    "entry's when the source matches one and numAttentionHeads is not hinted.")
    head_dim: StrictInt | None = Field(
        default=None, ge=1, le=4096,
        description="Dimension of one attention head. Unset: the catalog entry's when neither hiddenSize "
                    "nor numAttentionHeads is hinted, else hiddenSize / numAttentionHeads.")
    num_experts: StrictInt | None = Field(
        default=None, ge=1, le=4096,
        description="Experts in each mixture-of-experts layer. Unset: a dense model.")
    precision: WeightPrecision | None = Field(
        default=None,
        description="How the checkpoint's weights are stored: bf16, fp16, fp8, int8 (GPTQ 8-bit, W8A8) or "
                    "int4 (AWQ, GPTQ 4-bit, W4A16). Sizes the weights, and fp8 plans only onto GPUs with "
                    "FP8 support. Planning only: it adds no vLLM flag and does not start a rollout "
                    "(engine.quantization asks vLLM to quantize). Unset: the precision the model's name "
                    "states (FP8, AWQ, GPTQ, INT4, INT8, W4A16, W8A8, ... as a word of the name), else "
                    "the catalog entry's, else bf16.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.active_parameters_billions is not None and self.parameters_billions is not None
                and self.active_parameters_billions > self.parameters_billions):
            raise ValueError("activeParametersBillions must be <= parametersBillions")
        if (self.num_key_value_heads is not None and self.num_attention_heads is not None
                and self.num_key_value_heads > self.num_attention_heads):
            raise ValueError("numKeyValueHeads must be <= numAttentionHeads")
        return self


class ModelSpec(_SpecModel):
    """Which model to serve, at which revision, under which name."""

    source: Annotated[str, AfterValidator(_check_source)] = Field(
        max_length=SOURCE_MAX_LENGTH, pattern=r"^(hf|s3|gs|pvc|oci)://",
        json_schema_extra=_source_rules(),
        description="Where the weights are. hf://<org>/<name> (Hugging Face Hub), s3://<bucket>/<path>, "
                    "gs://<bucket>/<path> (streamed by vLLM's Run:ai model streamer), "
                    "pvc://<claim>[/<path>] (a PersistentVolumeClaim in the same namespace, mounted "
                    "read-only; no path: the model is at its root), "
                    "oci://<registry>/<repository>[:<tag>|@sha256:<digest>] (an image holding the model "
                    "under /models, mounted as an image volume). Required.")
    revision: str = Field(
        default="main", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="The model revision: a Hugging Face branch, tag or commit (passed as --revision), "
                    "or for other schemes a label you change when the weights at the source change. "
                    "Default main. Pin a commit in production; changing it starts a rollout.")
    served_name: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="The OpenAI `model` name clients send (--served-model-name). "
                    "Default: the ModelDeployment's metadata.name.")
    credentials_secret: ObjectName | None = Field(
        default=None,
        description="Name of a Secret in the same namespace. hf:// and pvc://: its key HF_TOKEN becomes the "
                    "Hugging Face token; s3:// and gs://: all its keys become environment variables "
                    "(e.g. AWS_ACCESS_KEY_ID); oci://: it is the image pull secret. The operator reads its "
                    "HF_TOKEN only to fetch the model's config.json for sizing, and only where it may get "
                    "Secrets (chart value rbac.readModelCredentials); it never logs, stores or copies the "
                    "value. Optional.")
    hints: ModelHints | None = Field(
        default=None,
        description="Model shape for the GPU planner when config.json cannot be read. Optional.")


def _check_env_name(name: str) -> str:
    if name in SECRET_ENV_NAMES:
        raise ValueError(f"{name}: {SECRET_ENV_MESSAGE}")
    return name


def _secret_env_rule() -> dict[str, Any]:
    names = ", ".join(f"'{n}'" for n in SECRET_ENV_NAMES)
    return rules((f"!(self in [{names}])", SECRET_ENV_MESSAGE))


class EnvVar(_SpecModel):
    """One environment variable of the vLLM container."""

    name: Annotated[str, AfterValidator(_check_env_name)] = Field(
        min_length=1, max_length=256, pattern=ENV_NAME_PATTERN, json_schema_extra=_secret_env_rule(),
        description=f"Variable name, e.g. VLLM_ATTENTION_BACKEND. Not {', '.join(SECRET_ENV_NAMES)}: "
                    "those carry credentials, which belong in the Secret model.credentialsSecret names.")
    value: str = Field(default="", max_length=32768, description="Variable value. Default empty.")


def _check_extra_args(args: list[str]) -> list[str]:
    problems = [flag.message for flag in OWNED_FLAGS if not flag.schemes and flag.refuses(args, "")]
    if problems:
        raise ValueError("; ".join(problems))
    return args


def _owned_flag_rules() -> dict[str, Any]:
    """The rules on engine.extraArgs itself, for the flags owned whatever the source."""
    return rules(*((f"!self.exists(a, a.matches(r'{flag.pattern}'))", flag.message)
                   for flag in OWNED_FLAGS if not flag.schemes))


def _scheme_owned_flag_rules() -> list[tuple[str, str, str]]:
    """The rules on the spec, for flags owned only with some sources (they need model.source)."""
    out: list[tuple[str, str, str]] = []
    for flag in OWNED_FLAGS:
        if flag.schemes:
            sources = " || ".join(f"self.model.source.startsWith('{s}://')" for s in flag.schemes)
            out.append((f"!({sources}) || !has(self.engine.extraArgs) || "
                        f"!self.engine.extraArgs.exists(a, a.matches(r'{flag.pattern}'))",
                        flag.message, ".engine.extraArgs"))
    return out


def _owned_flags_doc() -> str:
    return ", ".join("/".join(flag.names) + (f" (with {' and '.join(s + '://' for s in flag.schemes)})"
                                             if flag.schemes else "") for flag in OWNED_FLAGS)


#: The values vLLM accepts for --max-lora-rank (its LoRAConfig).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class LoRASpec(_SpecModel):
    """LoRA serving on this model's replicas, for the ModelAdapters whose spec.base names it."""

    max_loras: StrictInt | None = Field(
        default=None, ge=1, le=256,
        description="Adapters one batch may mix (--max-loras); vLLM reserves GPU memory for this many, "
                    "at maxLoraRank, and the planner counts it. Default: 4 once an adapter points here. "
                    "1-256. A change restarts the replicas.")
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] | None = Field(
        default=None,
        description="The largest adapter rank the replicas accept (--max-lora-rank): one of vLLM's "
                    "values 1, 8, 16, 32, 64, 128, 256, 320, 512. Default: the smallest of those that fits "
                    "the highest rank among this model's adapters (at least 16). A change restarts the "
                    "replicas; an adapter of a higher rank is reported NotLoadable (RankAboveMaximum).")
    max_cpu_loras: StrictInt | None = Field(
        default=None, ge=1, le=4096,
        description="Adapters each replica holds loaded at once (--max-cpu-loras, in host memory; must be "
                    ">= maxLoras). Default: the number of adapters on this model rounded up to a power of "
                    "two, at least 16, so adding adapters restarts the replicas only when it crosses 16, "
                    "32, 64... Adapters beyond it are reported NotLoadable (NoLoRAHeadroom). 1-4096.")

    @model_validator(mode="after")
    def _checks(self) -> Self:
        cpu, gpu = self.max_cpu_loras, self.max_loras
        if cpu is not None and gpu is not None and cpu < gpu:
            raise ValueError("maxCpuLoras must be >= maxLoras")
        return self


class EngineSpec(_SpecModel):
    """The vLLM engine: typed fields for what the operator plans around, extraArgs for the rest."""

    image: str = Field(
        default=DEFAULT_IMAGE, min_length=1, max_length=512, pattern=r"^[^\s]+$",
        description=f"The vLLM OpenAI-server image. Default {DEFAULT_IMAGE}.")
    max_model_len: StrictInt | None = Field(
        default=None, ge=1, le=16_777_216,
        description="Maximum context length in tokens (--max-model-len). Sizes the KV cache the planner "
                    "reserves. Default: the model's own maximum. 1-16777216.")
    quantization: Quantization | None = Field(
        default=None,
        description="Weight quantization (--quantization): fp8 (8-bit weights; planned only onto GPUs with "
                    "FP8 support, L4, L40S, H100 and H200, not A100 or A10G), awq or gptq (4-bit weights; "
                    "the checkpoint must be quantized that way). Default: none, the checkpoint's own "
                    "precision. To tell the planner the precision of an already quantized checkpoint "
                    "without adding the flag, use model.hints.precision.")
    dtype: DType = Field(
        default=DType.AUTO,
        description="Weight and activation dtype (--dtype): auto, bfloat16 or float16. Default auto "
                    "(the checkpoint's dtype; the planner assumes bfloat16).")
    gpu_memory_utilization: StrictFloat = Field(
        default=0.9, gt=0, le=1,
        description="Fraction of each GPU's memory vLLM may use for weights, activations and KV cache "
                    "(--gpu-memory-utilization). Default 0.9. Range (0, 1].")
    max_num_seqs: StrictInt | None = Field(
        default=None, ge=1, le=65536,
        description="Maximum concurrent sequences per replica (--max-num-seqs). The planner sizes the KV "
                    "cache for this concurrency. Default: vLLM's (256). 1-65536.")
    extra_args: Annotated[list[Annotated[str, Field(max_length=1024)]],
                          AfterValidator(_check_extra_args)] = Field(
        default_factory=list, max_length=64,
        json_schema_extra=_owned_flag_rules(),
        description="More vLLM arguments, appended after the ones the operator derives, e.g. "
                    "[\"--enable-prefix-caching\"]. At most 64. Refused, in any spelling vLLM reads "
                    "(--flag value, --flag=value, --flag_with_underscores): the flags the operator renders "
                    "or a typed field stands for, and the parallelism flags that would need more GPUs than "
                    f"a replica gets: {_owned_flags_doc()}. The message names the field to use instead.")
    env: list[EnvVar] = Field(
        default_factory=list, max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Extra environment variables for the vLLM container (names unique; "
                    f"{', '.join(SECRET_ENV_NAMES)} are refused here: put credentials in the Secret "
                    "model.credentialsSecret names). At most 64.")
    lora: LoRASpec | None = Field(
        default=None,
        json_schema_extra=rules((
            "!has(self.maxCpuLoras) || !has(self.maxLoras) || self.maxCpuLoras >= self.maxLoras",
            "maxCpuLoras must be >= maxLoras", ".maxCpuLoras")),
        description="LoRA adapters served at runtime (--enable-lora with VLLM_ALLOW_RUNTIME_LORA_UPDATING). "
                    "Set it to serve ModelAdapters with fixed limits, so that adding an adapter never "
                    "restarts a replica; without it, LoRA turns on (and the replicas restart once) when the "
                    "first ModelAdapter names this model, with the defaults below. docs/adapters.md.")

    @model_validator(mode="after")
    def _checks(self) -> Self:
        names = [e.name for e in self.env]
        if len(names) != len(set(names)):
            raise ValueError("env names must be unique")
        return self


class GPUSpec(_SpecModel):
    """GPUs for each replica."""

    count: GPUCount = Field(
        default="auto",
        description="GPUs per replica, 1-8, which is also vLLM's tensor-parallel size; or \"auto\" to let "
                    "the planner pick the smallest count whose memory holds the weights and the KV cache. "
                    "Default auto.")
    types: list[GPUTypeName] | None = Field(
        default=None, min_length=1, max_length=len(GPU_TYPE_NAMES),
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="GPU types the pods may run on, in no particular order; the planner picks the "
                    "cheapest that fits, whether or not the cluster has a node of it right now (a node pool "
                    "scaled to zero is grown by the cluster autoscaler for the pending pod; the Degraded "
                    f"condition says WaitingForGPUNode meanwhile). Known: {', '.join(GPU_TYPE_NAMES)}. "
                    "Default: any of them.")
    max_nodes: StrictInt = Field(
        default=1, ge=1, le=16,
        description="Nodes one replica may span, 1-16. When no single node of an allowed type holds the "
                    "model (count auto), a replica becomes a group of whole nodes run as a LeaderWorkerSet: "
                    "tensor parallelism within a node, one pipeline stage per node; the planner takes the "
                    "fewest nodes of the cheapest type that fits, and replicas, autoscaling, rollouts and "
                    "cost count groups (docs/multi-node.md). Needs the LeaderWorkerSet controller in the "
                    "cluster. Default 1: single-node replicas only.")


class ModelCacheSpec(_SpecModel):
    """Where downloaded weights are kept (vLLM --download-dir)."""

    model_config = ConfigDict(json_schema_extra=rules(
        ("!(has(self.pvc) && has(self.sizeLimit))",
         "sizeLimit applies to the emptyDir cache; size a PVC on the claim itself", ".sizeLimit"),
    ))

    pvc: ObjectName | None = Field(
        default=None,
        description="Name of a PersistentVolumeClaim in the same namespace to cache weights across restarts "
                    "(ReadWriteMany when replicas share it). Default: an emptyDir per pod.")
    size_limit: Quantity | None = Field(
        default=None,
        description="Size limit of the emptyDir cache, a quantity such as 100Gi. Default: none. "
                          "Not allowed with pvc.")

    @model_validator(mode="after")
    def _checks(self) -> Self:
        if self.pvc is not None and self.size_limit is not None:
            raise ValueError("sizeLimit applies to the emptyDir cache; size a PVC on the claim itself")
        return self


class ResourcesSpec(_SpecModel):
    """Compute for each replica."""

    gpu: GPUSpec = Field(default_factory=GPUSpec, description="GPU count and allowed types per replica.")
    cpu: Quantity | None = Field(
        default=None,
        description="CPU request of the vLLM container, a quantity such as 8 or \"7500m\" (no limit: "
                    "a CPU limit throttles the tokenizer and scheduler threads). Default: none.")
    memory: Quantity | None = Field(
        default=None,
        description="Memory request and limit of the vLLM container, a quantity such as 64Gi. Default: none.")
    model_cache: ModelCacheSpec | None = Field(
        default=None, description="The model cache volume. Default: an emptyDir per pod.")


class CostSpec(_SpecModel):
    """Budget limits the built-in autoscaler keeps to."""

    max_hourly_usd: StrictFloat | None = Field(
        default=None, gt=0, le=1_000_000,
        description="Ceiling on the GPU cost of all replicas, in US dollars per hour; the autoscaler never "
                    "scales above it (and says so in the ScalingLimited condition). Default: no ceiling.")
    target_usd_per_million_tokens: StrictFloat | None = Field(
        default=None, gt=0, le=1_000_000,
        description="Target cost in US dollars per million generated tokens; the autoscaler removes "
                    "replicas that push the cost above it when queues allow. Default: no target.")


#: A latency objective's bounds: above 10 ms (below it no engine answers) and at most 10 minutes.
OBJECTIVE_MIN_SECONDS, OBJECTIVE_MAX_SECONDS = 0.01, 600.0


class LatencyObjective(_SpecModel):
    """A latency objective the built-in autoscaler keeps at least cost (docs/autoscaling.md)."""

    model_config = ConfigDict(json_schema_extra=rules(
        ("duration(self.ttft) >= duration('10ms') && duration(self.ttft) <= duration('10m')",
         "ttft must be between 10ms and 10m", ".ttft"),
        ("!has(self.tpot) || (duration(self.tpot) >= duration('10ms') "
         "&& duration(self.tpot) <= duration('10m'))",
         "tpot must be between 10ms and 10m", ".tpot"),
    ))

    ttft: Duration = Field(
        description="Time to first token the requests must get, e.g. 2s: from the request's arrival at "
                    "the gateway (waiting at zero replicas included) when the operator reads a gateway, "
                    "else from its arrival at the pod. Required. 10ms-10m.")
    percentile: StrictFloat = Field(
        default=95, ge=50, lt=100,
        description="Percent of requests that must be within the objective, e.g. 95 or 99.9. The "
                    "autoscaler measures this share (status.autoscaler.objective.attainment) and sizes "
                    "replicas for it. Default 95. Range [50, 100).")
    tpot: Duration | None = Field(
        default=None,
        description="Time per output token the requests must also get, e.g. 50ms (from the pods' "
                    "vllm:request_time_per_output_token_seconds). Optional. 10ms-10m.")

    @field_validator("ttft", "tpot")
    @classmethod
    def _bounds(cls, value: str | None, info: ValidationInfo) -> str | None:
        low, high = OBJECTIVE_MIN_SECONDS, OBJECTIVE_MAX_SECONDS
        if value is not None and not low <= durations.seconds(value) <= high:
            # The words of the CRD rule's message.
            raise ValueError(f"{info.field_name} must be between 10ms and 10m, got {value}")
        return value


class ScalingSpec(_SpecModel):
    """How many replicas run, and who decides."""

    model_config = ConfigDict(json_schema_extra=rules(
        ("self.minReplicas <= self.maxReplicas", "minReplicas must be <= maxReplicas", ".minReplicas"),
        ("!has(self.scaleToZeroAfter) || self.minReplicas == 0",
         "scaleToZeroAfter needs minReplicas: 0", ".scaleToZeroAfter"),
        ("!has(self.objective) || !has(self.mode) || self.mode == 'Builtin'",
         "objective needs mode: Builtin", ".objective"),
    ))

    mode: ScalingMode = Field(
        default=ScalingMode.BUILTIN,
        description="Builtin: the operator's autoscaler sets replicas from queue depth, cold starts and the "
                    "budget. External: an HPA or KEDA sets spec.replicas through the /scale subresource. "
                    "Default Builtin.")
    min_replicas: StrictInt = Field(
        default=1, ge=0, le=1000,
        description="Fewest replicas (Builtin mode). 0 allows scaling to zero (with scaleToZeroAfter). "
                    "Default 1. 0-1000.")
    max_replicas: StrictInt = Field(
        default=4, ge=1, le=1000,
        description="Most replicas (Builtin mode). Default 4. 1-1000, >= minReplicas.")
    target_queue_depth: StrictFloat = Field(
        default=4, gt=0, le=10000,
        description="Waiting requests per ready replica the autoscaler aims for; more scales up. Default 4. "
                    "Range (0, 10000].")
    scale_to_zero_after: Duration | None = Field(
        default=None,
        description="Idle time (no requests running or waiting) after which the last replica is removed, "
                    "e.g. 15m. Only with minReplicas 0. Default: never.")
    scale_down_delay: Duration = Field(
        default="5m",
        description="How long a lower replica count must be wanted before replicas are removed, so short "
                    "lulls do not cost a cold start. The autoscaler doubles it (up to 4x) after a "
                    "scale-down it had to undo, and shortens it back after quiet periods "
                    "(docs/autoscaling.md). Default 5m.")
    cost: CostSpec | None = Field(default=None, description="Budget limits. Optional.")
    objective: LatencyObjective | None = Field(
        default=None,
        description="A latency objective, e.g. {ttft: 2s, percentile: 95}: the autoscaler measures the "
                    "share of requests within it and corrects the load it puts on each replica from what "
                    "it measures, so the objective is met at the fewest replicas (docs/autoscaling.md). "
                    "Without it, targetQueueDepth is the signal. Builtin mode only. Optional.")

    @model_validator(mode="after")
    def _checks(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) must be <= "
                             f"maxReplicas ({self.max_replicas})")
        if self.scale_to_zero_after is not None and self.min_replicas != 0:
            raise ValueError("scaleToZeroAfter needs minReplicas: 0")
        if self.objective is not None and self.mode != ScalingMode.BUILTIN:
            raise ValueError("objective needs mode: Builtin")
        return self


class RolloutStep(_SpecModel):
    """One canary step: send this share of traffic to the new revision, then wait."""

    weight: StrictInt = Field(
        ge=1, le=100,
        description="Percent of requests sent to the new revision during this step, 1-100, split per "
                    "request by the modelplane gateway (status.canary.weight); the new revision runs "
                    "ceil(weight% of the replicas), at least 1, beside the full stable fleet. Clients "
                    "that go to the ModelDeployment's Service directly reach only the stable revision "
                    "until the promotion. Steps must increase strictly. Required.")
    pause: Duration = Field(
        default="5m",
        description="How long to hold this step while live analysis runs, e.g. 10m. Default 5m.")


class SuiteRef(_SpecModel):
    """A ConfigMap holding the evaluation suite."""

    config_map: ObjectName = Field(description="Name of the ConfigMap in the same namespace. Required.")
    key: str = Field(
        default="suite.jsonl", min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key in the ConfigMap whose value is the suite, one JSON case per line. "
                    "Default suite.jsonl.")


class JudgeRef(_SpecModel):
    """Another ModelDeployment that grades the suite's ``judge`` cases."""

    model_deployment: ObjectName = Field(
        description="Name of a ModelDeployment in the same namespace. For each case graded \"judge\", the "
                    "operator asks one of its Ready pods (OpenAI chat API, temperature 0) whether the "
                    "answer matches the case's expected answer, YES or NO. Required.")


class EvaluatorSpec(_SpecModel):
    """A custom evaluator run as a Job; it receives the canary and stable endpoints in its environment."""

    image: str = Field(min_length=1, max_length=512, pattern=r"^[^\s]+$",
                       description="The evaluator's container image. Required.")
    command: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list, max_length=32, description="Entrypoint override. Default: the image's.")
    args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list, max_length=64, description="Arguments. Default: none.")


class AnalysisSpec(_SpecModel):
    """Live metrics the canary must keep to during each step's pause."""

    max_error_rate: StrictFloat | None = Field(
        default=None, ge=0, le=1,
        description="Largest share of failed requests on the canary, 0-1 (e.g. 0.01). Default: not checked.")
    max_ttft_seconds_p95: StrictFloat | None = Field(
        default=None, gt=0, le=3600,
        description="Largest 95th-percentile time to first token on the canary, in seconds. "
                    "Default: not checked.")


class EvaluationSpec(_SpecModel):
    """The gate a new revision passes before it gets traffic: a suite scored on canary and stable."""

    model_config = ConfigDict(json_schema_extra=rules(
        ("has(self.suiteRef) || has(self.evaluator)", "evaluation needs suiteRef or evaluator"),
    ))

    suite_ref: SuiteRef | None = Field(
        default=None, description="The suite to run. Needed unless evaluator is set.")
    min_score: StrictFloat | None = Field(
        default=None, ge=0, le=1,
        description="Lowest acceptable canary score, 0-1. Default: no absolute floor.")
    max_regression: StrictFloat = Field(
        default=0.02, ge=0, le=1,
        description="Largest acceptable drop of the canary's score below the stable revision's on the same "
                    "suite, 0-1, judged at the given confidence. Default 0.02.")
    confidence: StrictFloat = Field(
        default=0.95, ge=0.5, lt=1,
        description="Confidence of the statistical gate (lower bound of the score difference). "
                    "Default 0.95. Range [0.5, 1).")
    max_error_rate: StrictFloat = Field(
        default=0.05, ge=0, le=1,
        description="Largest share of suite cases, 0-1, whose request fails (after retries) on the canary, "
                    "on stable or on both and the evaluation still gives a verdict. Such cases are left out "
                    "of the comparison on both sides (an error is neither a right nor a wrong answer); with "
                    "more of them the evaluation has no verdict, is tried again (3 attempts in all) and the "
                    "canary is then rolled back with reason EvaluationErrors, never promoted. Default 0.05. "
                    "Not to be confused with analysis.maxErrorRate, the live error rate during the steps.")
    concurrency: StrictInt = Field(
        default=4, ge=1, le=256, description="Suite requests in flight at once. Default 4. 1-256.")
    timeout_seconds: StrictInt = Field(
        default=60, ge=1, le=3600,
        description="Timeout of one suite request, in seconds. Default 60. 1-3600.")
    evaluator: EvaluatorSpec | None = Field(
        default=None, description="A custom evaluator Job instead of the built-in suite runner. Optional.")
    judge: JudgeRef | None = Field(
        default=None, description="The judge model for cases graded \"judge\". Needed when the suite has "
                                  "such cases. Optional.")
    analysis: AnalysisSpec | None = Field(
        default=None, description="Live metric checks during each step's pause. Optional.")

    @model_validator(mode="after")
    def _checks(self) -> Self:
        if self.suite_ref is None and self.evaluator is None:
            raise ValueError("evaluation needs suiteRef or evaluator")
        return self


class RolloutSpec(_SpecModel):
    """How a new revision replaces the serving one."""

    steps: list[RolloutStep] = Field(
        default_factory=list, max_length=10,
        json_schema_extra=rules(
            ("self.all(i, s, i == 0 || self[i - 1].weight < s.weight)",
             "steps must have strictly increasing weights"),
        ),
        description="Canary steps, weights strictly increasing and at most 100. After the last step the "
                    "new revision is promoted: it scales to all replicas, keeps the last step's share of "
                    "requests until every one is ready (rolled back if not within 1 h), then takes all "
                    "requests. Empty (default): promote as soon as the new revision is ready and has "
                    "passed evaluation; it takes requests once all its replicas are ready. At most 10.")
    evaluation: EvaluationSpec | None = Field(
        default=None, description="The evaluation gate. Default: none (readiness only).")

    @model_validator(mode="after")
    def _checks(self) -> Self:
        weights = [s.weight for s in self.steps]
        if any(a >= b for a, b in zip(weights, weights[1:], strict=False)):
            raise ValueError(f"steps must have strictly increasing weights, got {weights}")
        return self


#: A Gateway API hostname (HTTPRoute spec.hostnames): a DNS name, optionally "*." in front.
HOSTNAME_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A DNS-1123 label: a namespace's name.
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: The header the Inference Extension's body-based router sets from the request body's ``model``.
MODEL_NAME_HEADER = "X-Gateway-Model-Name"


class FailureMode(StrEnum):
    """What the gateway does when the endpoint picker does not answer (InferencePool v1)."""

    FAIL_CLOSE = "FailClose"
    FAIL_OPEN = "FailOpen"


class EndpointPickerSpec(_SpecModel):
    """The endpoint picker (EPP) the gateway asks which pod serves each request."""

    service: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1035_LABEL)] = Field(
        description="Name of the Service of an endpoint picker you run, in the ModelDeployment's namespace "
                    "(the Inference Extension's reference picker, or another that speaks its protocol). "
                    "The operator does not deploy it. Required.")
    port: StrictInt = Field(
        ge=1, le=65535,
        description="The picker Service's gRPC ext-proc port (the reference picker listens on 9002). "
                    "Required. 1-65535.")
    failure_mode: FailureMode = Field(
        default=FailureMode.FAIL_CLOSE,
        description="FailClose: the gateway refuses a request when the picker does not answer. FailOpen: "
                    "it then sends the request to a pod of the pool on its own. Default FailClose.")


class ParentRef(_SpecModel):
    """A Gateway (or one of its listeners) that the HTTPRoute attaches to."""

    name: ObjectName = Field(description="Name of the Gateway. Required.")
    namespace: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)] | None = Field(
        default=None,
        description="Namespace of the Gateway. Default: the ModelDeployment's (a Gateway in another "
                    "namespace must allow routes from this one in its listeners' allowedRoutes).")
    section_name: ObjectName | None = Field(
        default=None, description="Name of one listener of the Gateway. Default: every listener.")


def _parent_key(ref: ParentRef) -> tuple[str, str, str]:
    return (ref.name, ref.namespace or "", ref.section_name or "")


#: Two parentRefs name the same listener (CEL, over ``p`` and ``q``). ``namespace`` is a CEL keyword,
#: so the API server's CEL spells the field ``__namespace__``.
_SAME_PARENT = ("q.name == p.name && has(q.__namespace__) == has(p.__namespace__) && "
                "(!has(p.__namespace__) || q.__namespace__ == p.__namespace__) && "
                "has(q.sectionName) == has(p.sectionName) && "
                "(!has(p.sectionName) || q.sectionName == p.sectionName)")


class HTTPRouteSpec(_SpecModel):
    """An HTTPRoute that sends a Gateway's requests to the ModelDeployment's InferencePool."""

    parent_refs: list[ParentRef] = Field(
        min_length=1, max_length=32,
        json_schema_extra=rules(
            (f"self.all(p, self.exists_one(q, {_SAME_PARENT}))",
             "parentRefs must be unique (name, namespace and sectionName)"),
        ),
        description="The Gateways the route attaches to, each at most once. Required. 1-32.")
    hostnames: list[Annotated[str, Field(min_length=1, max_length=253, pattern=HOSTNAME_PATTERN)]] = Field(
        default_factory=list, max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Host names the route matches, e.g. llm.example.com or *.example.com, each at most "
                    "once. Default: every host name of the listener. At most 16.")
    match_model_header: StrictBool = Field(
        default=False,
        description=f"Also match the header {MODEL_NAME_HEADER} equal to the served model name "
                    "(model.servedName, or the ModelDeployment's name). The Inference Extension's "
                    "body-based router sets that header from the request body's model field, so several "
                    "ModelDeployments can share one Gateway, host name and path. Default false: every "
                    "request the route's Gateway and host names take goes to this model.")

    @model_validator(mode="after")
    def _checks(self) -> Self:
        keys = [_parent_key(p) for p in self.parent_refs]
        if len(keys) != len(set(keys)):
            raise ValueError("parentRefs must be unique (name, namespace and sectionName)")
        if len(self.hostnames) != len(set(self.hostnames)):
            raise ValueError("hostnames must be unique")
        return self


class InferencePoolSpec(_SpecModel):
    """The Gateway API Inference Extension: an InferencePool (and optionally an HTTPRoute) for a gateway
    that speaks it (docs/inference-extension.md)."""

    model_config = ConfigDict(json_schema_extra=rules(
        ("(has(self.enabled) && !self.enabled) || has(self.endpointPicker)",
         "endpointPicker is required when the InferencePool is enabled", ".endpointPicker"),
    ))

    enabled: StrictBool = Field(
        default=True,
        description="Render the InferencePool (inference.networking.k8s.io/v1, named like the "
                    "ModelDeployment, selecting its server pods on the vLLM port). False removes it and "
                    "the HTTPRoute and keeps the settings. The cluster must have the InferencePool CRD; "
                    "without it the InferencePoolReady condition says so. Default true.")
    endpoint_picker: EndpointPickerSpec | None = Field(
        default=None, description="The endpoint picker the pool names. Required when enabled.")
    http_route: HTTPRouteSpec | None = Field(
        default=None,
        description="Also render an HTTPRoute (gateway.networking.k8s.io/v1, named like the "
                    "ModelDeployment) whose backend is the pool. Default: no route (bring your own).")

    @model_validator(mode="after")
    def _checks(self) -> Self:
        if self.enabled and self.endpoint_picker is None:
            raise ValueError("endpointPicker is required when the InferencePool is enabled")
        return self


class ModelDeploymentSpec(_SpecModel):
    """What to serve and how: the user's side of the object. The operator never writes it."""

    model_config = ConfigDict(json_schema_extra=rules(
        ("!has(self.replicas) || self.scaling.mode == 'External'",
         "replicas may only be set with scaling.mode: External (the built-in autoscaler owns it otherwise)",
         ".replicas"),
        # The /scale subresource cannot be read without spec.replicas, and HPA reads it first.
        ("self.scaling.mode != 'External' || has(self.replicas)",
         "scaling.mode External needs replicas (the starting count an HPA or KEDA then drives)", ".replicas"),
        *_scheme_owned_flag_rules(),
    ))

    model: ModelSpec = Field(description="The model to serve. Required.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="The vLLM engine settings.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Compute per replica.")
    replicas: StrictInt | None = Field(
        default=None, ge=0, le=1000,
        description="Replica count set by an external autoscaler (HPA, KEDA) through the /scale subresource. "
                    "Required with scaling.mode External (the starting count), not allowed otherwise. "
                    "0-1000.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Autoscaling.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="How revision changes roll out.")
    inference_pool: InferencePoolSpec | None = Field(
        default=None,
        description="Gateway API Inference Extension: an InferencePool for the server pods, and an "
                    "HTTPRoute when asked, for clusters that run a gateway that speaks it. Default: none.")

    @model_validator(mode="after")
    def _checks(self) -> Self:
        if self.replicas is not None and self.scaling.mode != ScalingMode.EXTERNAL:
            raise ValueError("replicas may only be set with scaling.mode: External")
        if self.replicas is None and self.scaling.mode == ScalingMode.EXTERNAL:
            raise ValueError("scaling.mode External needs replicas "
                             "(the starting count an HPA or KEDA then drives)")
        for flag in OWNED_FLAGS:
            if flag.schemes and flag.refuses(list(self.engine.extra_args), self.model.source):
                raise ValueError(f"engine.extraArgs: {flag.message}")
        return self


# --- status ---

class Condition(_Model):
    """One observation about the object, as in metav1.Condition."""

    type: str = Field(
        min_length=1, max_length=316,
        description="Condition type. " + " ".join(f"{t.value}: {meaning}."
                                                  for t, meaning in CONDITION_MEANINGS.items()))
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(min_length=1, max_length=1024, pattern=REASON_PATTERN,
                        description="CamelCase reason a person can act on, e.g. InsufficientGPU.")
    message: str = Field(default="", max_length=32768, description="Human-readable detail, with the numbers.")
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: StrictInt | None = Field(
        default=None, ge=0, description="metadata.generation the condition was computed from.")


class StableStatus(_Model):
    """The revision serving most traffic."""

    revision: str | None = Field(default=None, description="Model revision (spec.model.revision) it serves.")
    fingerprint: str | None = Field(
        default=None, description="12 hex digits of the gated fields it runs (model, image, numerics, "
                                  "args, env): the rollout's revision id.")
    source: str | None = Field(default=None, description="Model source URI.")
    deployment: str | None = Field(default=None, description="Name of its Deployment.")


class GatePowerStatus(_Model):
    """How often the evaluation gate would pass a canary exactly as good as stable on this suite."""

    cases: StrictInt = Field(ge=0, description="Cases in the suite.")
    max_regression: StrictFloat = Field(description="The gate's maxRegression.")
    confidence: StrictFloat = Field(description="The gate's confidence.")
    discordance: StrictFloat = Field(
        description="Share of cases on which canary and stable answer differently, used for the "
                    "computation: measured by the last evaluation (rounded up to half a point), else 0.10.")
    discordance_measured: StrictBool = Field(
        description="True when the discordance was measured, false when it is the assumed 0.10.")
    pass_probability: StrictFloat = Field(
        ge=0, le=1, description="Exact probability that an equal canary passes the gate, 0-1.")
    cases_needed: StrictInt | None = Field(
        default=None, ge=1,
        description="Suite size from which on that probability is at least 0.8; set when the suite is "
                    "underpowered (empty beyond 200000 cases).")
    underpowered: StrictBool = Field(
        description="The probability is under 0.8 (condition SuiteUnderpowered).")
    message: str | None = Field(default=None, description="The same in a sentence.")


class CanaryStatus(_Model):
    """The rollout state machine: the revision being rolled out, or the outcome of the last rollout."""

    phase: str | None = Field(
        default=None, description="Rollout phase: Idle, Deploying, Evaluating, Stepping, Analyzing, Paused, "
                                  "Promoting, Promoted, RollingBack, RolledBack or Aborted.")
    revision: str | None = Field(default=None, description="Model revision of the canary.")
    fingerprint: str | None = Field(default=None, description="Fingerprint of the canary's gated fields.")
    weight: StrictInt | None = Field(
        default=None, ge=0, le=100, description="Percent of traffic asked of the canary now.")
    step: StrictInt | None = Field(
        default=None, ge=0, description="Index of the current rollout step (0-based).")
    started_at: datetime | None = Field(default=None, description="When this rollout began.")
    phase_since: datetime | None = Field(
        default=None, description="When the phase (or the current evaluation attempt) began.")
    step_started_at: datetime | None = Field(
        default=None, description="Start of the current step's analysis window.")
    window_extensions: StrictInt | None = Field(
        default=None, ge=0, description="Times the current window was extended (inconclusive analysis).")
    evaluation_attempts: StrictInt | None = Field(
        default=None, ge=0, description="Evaluation runs started for this canary (at most 3).")
    eval_score: StrictFloat | None = Field(
        default=None, description="Canary score on the evaluation suite, 0-1.")
    baseline_score: StrictFloat | None = Field(
        default=None, description="Stable revision's score on the same suite.")
    lower_bound: StrictFloat | None = Field(
        default=None, description="One-sided lower confidence bound of canary minus stable score.")
    cases: StrictInt | None = Field(default=None, ge=0, description="Suite cases scored.")
    failing_cases: list[str] = Field(
        default_factory=list, max_length=20,
        description="IDs of (up to 20) cases the canary failed, regressions first; the report ConfigMap "
                    "<name>-eval-<fingerprint> has all.")
    canary_errors: StrictInt | None = Field(
        default=None, ge=0,
        description="Suite cases of the last evaluation whose canary request failed (left out of the "
                    "comparison).")
    stable_errors: StrictInt | None = Field(
        default=None, ge=0,
        description="Suite cases of the last evaluation whose stable request failed (left out of the "
                    "comparison).")
    discordance: StrictFloat | None = Field(
        default=None, ge=0, le=1,
        description="Share of the compared cases on which canary and stable answered differently.")
    power: GatePowerStatus | None = Field(
        default=None, description="The gate's power on this canary's suite, checked when the rollout starts.")
    decision: str | None = Field(
        default=None, description="The outcome being executed or reached: Promoted, RolledBack, Aborted, "
                                  "Superseded or Direct.")
    reason: str | None = Field(default=None, description="CamelCase reason of the current phase.")
    message: str | None = Field(default=None, description="Why, with the numbers.")
    hold: StrictBool | None = Field(
        default=None, description="A pause was asked before the first traffic step.")
    rejected_revision: str | None = Field(
        default=None, description="A revision rolled back or aborted: not retried until the spec changes "
                                  "or a resume control asks for it.")
    rejected_fingerprint: str | None = Field(default=None, description="Fingerprint of rejectedRevision.")
    handled_control: str | None = Field(
        default=None, description="The last modelplane.dev/rollout-control value acted on (each acts once).")
    summary: str | None = Field(default=None, description="Short text for kubectl get, e.g. \"rev-b 10%\".")


class PlanMemory(_Model):
    """Per-GPU memory accounting of the plan, in GiB."""

    weights_gib: StrictFloat | None = Field(default=None, description="Model weights per GPU, GiB.")
    kv_cache_gib: StrictFloat | None = Field(default=None, description="KV cache reserved per GPU, GiB.")
    overhead_gib: StrictFloat | None = Field(
        default=None, description="Activations and runtime overhead per GPU, GiB.")
    required_gib: StrictFloat | None = Field(default=None, description="Total needed per GPU, GiB.")
    available_gib: StrictFloat | None = Field(
        default=None, description="Usable per GPU (memory x gpuMemoryUtilization), GiB.")
    per_gpu_required_gib: StrictFloat | None = Field(
        default=None, alias="perGPURequiredGiB",
        description="Needed on each GPU of the replica (its share of weights, KV cache and overhead), GiB.")
    per_gpu_available_gib: StrictFloat | None = Field(
        default=None, alias="perGPUAvailableGiB",
        description="Usable on each GPU (GPU memory x gpuMemoryUtilization), GiB.")


class PlanStatus(_Model):
    """The GPU plan: the shape every replica gets."""

    gpu_type: str | None = Field(default=None, description="Chosen GPU type.")
    gpus_per_replica: StrictInt | None = Field(default=None, ge=0, description="GPUs per replica.")
    tensor_parallel_size: StrictInt | None = Field(
        default=None, ge=0, description="vLLM tensor-parallel size.")
    hourly_usd_per_replica: StrictFloat | None = Field(
        default=None, description="GPU cost of one replica, USD/hour.")
    shape: str | None = Field(
        default=None, description="Short form for kubectl get, e.g. \"2x nvidia-h100-80gb\".")
    nodes: StrictInt | None = Field(
        default=None, ge=2,
        description="Nodes of one replica when it spans several (a LeaderWorkerSet group); absent for a "
                    "single-node replica.")
    gpus_per_node: StrictInt | None = Field(
        default=None, ge=1,
        description="GPUs of each node of a multi-node replica (the tensor-parallel size).")
    pipeline_parallel_size: StrictInt | None = Field(
        default=None, ge=2,
        description="vLLM pipeline-parallel size of a multi-node replica: one stage per node.")
    memory: PlanMemory | None = Field(default=None, description="Memory accounting.")
    reason: str | None = Field(default=None, description="Why this plan, or why none fits.")


class CostStatus(_Model):
    """What the deployment costs."""

    hourly_usd: StrictFloat | None = Field(
        default=None, description="GPU cost of the running replicas, USD/hour.")
    desired_hourly_usd: StrictFloat | None = Field(
        default=None, description="GPU cost at the desired replicas, USD/hour.")
    usd_per_million_tokens: StrictFloat | None = Field(
        default=None,
        description="Cost per million generated tokens, USD: hourlyUSD divided by the tokens per hour "
                    "the ready pods generated over the last 60 s (the sum of each pod's rate from its "
                    "vllm:generation_tokens_total readings in that window). Recomputed at every "
                    "reconcile, so it follows a change of load within 60 s. Absent while idle, until "
                    "the operator has read the counters for 60 s (after its start or a scale from "
                    "zero), when none were read in the last 60 s, and in External scaling mode.")


class ScalingDecision(_Model):
    """One decision of the built-in autoscaler, with its inputs."""

    time: datetime | None = Field(default=None, description="When it was made.")
    desired_replicas: StrictInt | None = Field(default=None, ge=0, description="Replicas it asked for.")
    reason: str | None = Field(default=None, description="Why, with the numbers.")
    queue_depth: StrictFloat | None = Field(default=None, description="Waiting requests per ready replica.")
    running_requests: StrictFloat | None = Field(default=None, description="Running requests, all replicas.")
    kv_cache_usage: StrictFloat | None = Field(default=None, description="Mean KV cache usage, 0-1.")
    cold_start_seconds: StrictFloat | None = Field(
        default=None, ge=0,
        description="Seconds a replica takes from creation to Ready: the median of the last pods "
                    "the autoscaler saw start, or its 90 s prior before any. It sizes a rising load "
                    "this far ahead, or 90 s when that is longer.")


class ObjectiveStatus(_Model):
    """The latency objective as the autoscaler measures it (spec.scaling.objective)."""

    attainment: StrictFloat | None = Field(
        default=None, ge=0, le=1,
        description="Share of the requests of the last 5 minutes within the objective (TTFT, and TPOT "
                    "when set), 0-1. Absent when none was measured (no traffic, or no latency "
                    "histogram to read).")
    requests: StrictInt | None = Field(default=None, ge=0, description="Requests it was measured on.")
    met: StrictBool | None = Field(
        default=None, description="attainment >= percentile / 100. Absent with attainment.")
    source: str | None = Field(
        default=None,
        description="Where it was measured: Gateway (the gateway's TTFT histogram, as clients see "
                    "it) or Pods (the pods' vLLM histograms). Absent when there is none to read.")
    capacity_factor: StrictFloat | None = Field(
        default=None, ge=0,
        description="The learnt correction of the load each replica is sized for: 1 is the engine "
                    "profile's, below 1 the replicas are slower than configured (or the prompts longer) "
                    "and each gets less, above 1 they get more.")
    replica_capacity: StrictFloat | None = Field(
        default=None, ge=0,
        description="The load one replica is sized to carry after that correction: engine-seconds "
                    "of work per second when the engine profile's token rates are known (throughput "
                    "sizing), else requests in flight (running plus waiting).")


class AutoscalerStatus(_Model):
    """What the built-in autoscaler last did."""

    last_decision: ScalingDecision | None = Field(default=None, description="The latest decision.")
    objective: ObjectiveStatus | None = Field(
        default=None, description="The latency objective's attainment and learnt capacity; only with "
                                  "spec.scaling.objective.")


class RolloutRecord(_Model):
    """A finished rollout."""

    revision: str | None = Field(default=None, description="Revision rolled out.")
    fingerprint: str | None = Field(default=None, description="Fingerprint of its gated fields.")
    decision: str | None = Field(
        default=None, description="Promoted, RolledBack, Aborted, Superseded or Direct.")
    eval_score: StrictFloat | None = Field(default=None, description="Canary score.")
    baseline_score: StrictFloat | None = Field(default=None, description="Stable score.")
    lower_bound: StrictFloat | None = Field(
        default=None, description="Lower confidence bound of canary minus stable score.")
    discordance: StrictFloat | None = Field(
        default=None, ge=0, le=1,
        description="Share of compared suite cases on which canary and stable answered differently.")
    started_at: datetime | None = Field(default=None, description="When it started.")
    finished_at: datetime | None = Field(default=None, description="When it ended.")
    reason: str | None = Field(default=None, description="Why it ended so.")
    message: str | None = Field(default=None, description="Detail, with the numbers.")


class ModelDeploymentStatus(_Model):
    """What the operator observes and decides: its only writable surface on the object."""

    observed_generation: StrictInt | None = Field(
        default=None, ge=0, description="metadata.generation this status reflects.")
    phase: Phase = Field(
        default=Phase.PENDING, description="Pending, Ready, Progressing, Degraded, ScaledToZero or Failed.")
    replicas: StrictInt = Field(default=0, ge=0, description="vLLM pods that exist, all revisions.")
    ready_replicas: StrictInt = Field(default=0, ge=0, description="vLLM pods ready to serve, all revisions.")
    desired_replicas: StrictInt = Field(
        default=0, ge=0, description="Replicas wanted now (autoscaler or spec.replicas).")
    selector: str | None = Field(
        default=None, description="Label selector of the server pods, for the /scale subresource (HPA).")
    conditions: list[Condition] = Field(
        default_factory=list, max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="One per type: " + ", ".join(t.value for t in ConditionType)
                    + " (conditions[].type says what each means). ScalingLimited and MetricsAvailable "
                      "appear with the built-in autoscaler, ModelConfigLoaded once config.json was tried, "
                      "Evaluating with an evaluation gate.")
    stable: StableStatus | None = Field(default=None, description="The serving revision.")
    canary: CanaryStatus | None = Field(default=None, description="The revision being rolled out, if any.")
    plan: PlanStatus | None = Field(default=None, description="The GPU plan.")
    cost: CostStatus | None = Field(default=None, description="Cost now and at the desired replicas.")
    autoscaler: AutoscalerStatus | None = Field(
        default=None, description="The built-in autoscaler's last decision.")
    rollout_history: list[RolloutRecord] = Field(
        default_factory=list, max_length=20,
        description="The last (up to 20) finished rollouts, newest last.")
    endpoint: str | None = Field(default=None, description="OpenAI-compatible base URL inside the cluster.")
    serving_revision: str | None = Field(
        default=None,
        description="The model revision serving traffic; differs from spec.model.revision after a "
                          "rollback until the spec is changed.")
    desired_revision_live: StrictBool | None = Field(
        default=None, description="True when spec.model.revision is the revision serving traffic.")


# --- the object ---

class InvalidSpecError(ValueError):
    """A ModelDeployment that fails validation; the message names each failing field's path."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        # pydantic adds union members (int, constrained-int, literal['auto']) to the location;
        # field names never contain "-" or "[".
        elif part in ("int", "str", "float", "bool") or "[" in part or "-" in part:
            continue
        else:
            path += f".{part}" if path else part
    return path or "<root>"


def field_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """Each of pydantic's errors as (field path, message)."""
    # "Value error, " is pydantic's prefix for a validator's message; the message says it all.
    return [(_field_path(tuple(e["loc"])),
             "unknown field" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, "))
            for e in exc.errors()]


class KubeObject(BaseModel):
    """An object of this API as the API server returns it: ``parse`` it, read its name."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    metadata: dict[str, Any] = Field(default_factory=dict, description="Object metadata.")

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Self:
        """Validate a raw object; raises InvalidSpecError naming each failing field path."""
        try:
            return cls.model_validate(dict(obj))
        except ValidationError as exc:
            raise InvalidSpecError(field_problems(exc)) from None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", ""))

    @property
    def uid(self) -> str:
        return str(self.metadata.get("uid", ""))


class ModelDeployment(KubeObject):
    """A ModelDeployment object as the API server returns it."""

    api_version: Literal["modelplane.dev/v1alpha1"] = Field(default=API_VERSION, description="API version.")
    kind: Literal["ModelDeployment"] = Field(default=KIND, description="Kind.")
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None

    @model_validator(mode="after")
    def _name(self) -> Self:
        name = self.metadata.get("name")
        if isinstance(name, str) and not (len(name) <= 63 and re.match(DNS1035_LABEL, name)):
            raise ValueError("metadata.name must be a DNS-1035 label of at most 63 characters "
                             "(lowercase letters, digits, '-', starting with a letter): it names the Service")
        return self

    @property
    def served_name(self) -> str:
        """The OpenAI model name: spec.model.servedName, defaulting to metadata.name."""
        return self.spec.model.served_name or self.name
