"""Pure builders: a ModelDeployment and its workload plans → the child manifests, as plain dicts.

One Deployment per model revision (``<md-name>-<hash of source+revision>``), so a stable and a canary
revision run side by side; one ClusterIP Service over the serving (stable) revision's pods, and one
PodDisruptionBudget over the server pods of every revision. The split of requests between stable
and a canary is the gateway's (by ``status.canary.weight``), not a replica ratio. No I/O, no clock,
no randomness: the same input renders byte-identical output, which is what lets the handler skip
writes on a resync.

How each source scheme reaches vLLM (the model argument of ``vllm serve``):

* ``hf://org/name`` → ``org/name``, downloaded into the model cache, ``--revision`` pinned;
  ``credentialsSecret`` supplies ``HF_TOKEN`` by ``secretKeyRef``.
* ``pvc://claim/path`` → ``/models/path``, the claim mounted read-only at ``/models``.
* ``s3://…`` and ``gs://…`` → the URI itself with ``--load-format runai_streamer`` (vLLM streams
  the safetensors from object storage); ``credentialsSecret`` is passed whole with ``envFrom``
  (``AWS_*`` or ``GOOGLE_APPLICATION_CREDENTIALS``-style keys).
* ``oci://registry/repo:tag`` → an image volume (KServe "modelcar" layout: the model under
  ``/models`` in the image) mounted at ``/model-image``, served from ``/model-image/models``;
  ``credentialsSecret`` becomes an image pull secret.

The role label (stable/canary) is on the Deployment only, never on the pod template: promoting a
canary relabels its Deployment without restarting its pods.

With ``spec.inferencePool`` (Gateway API Inference Extension), an InferencePool named like the
ModelDeployment selects the same pods as the Service on the vLLM port and names the user's endpoint
picker; with ``inferencePool.httpRoute``, an HTTPRoute of the same name sends its Gateways' requests
to that pool (``build_inference_children``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NotRequired, Protocol, TypedDict

from modelplane.api.models import (
    API_VERSION,
    KIND,
    MODEL_NAME_HEADER,
    DType,
    HTTPRouteSpec,
    InferencePoolSpec,
    LoRASpec,
    ModelDeploymentSpec,
    ModelSpec,
)
from modelplane.gpus import GPU_RESOURCE, GPU_TYPE_NAMES, GPU_TYPES, PRODUCT_LABEL

PORT = 8000
PORT_NAME = "http"
CACHE_DIR = "/models-cache"
PVC_MOUNT = "/models"
OCI_MOUNT = "/model-image"
OCI_MODEL_DIR = "models"  # where a KServe modelcar image keeps the model
SHM_MOUNT = "/dev/shm"
#: Turns on vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter (an admin API: docs/adapters.md).
LORA_RUNTIME_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"

#: Kubernetes practice from gateway-api-inference-extension's vLLM manifest (shared/FACTS.md).
PROBE_PERIOD_SECONDS = 1
LIVENESS_FAILURE_THRESHOLD = 5
READINESS_FAILURE_THRESHOLD = 1
PRESTOP_SLEEP_SECONDS = 30
TERMINATION_GRACE_SECONDS = 130
DEFAULT_STARTUP_BUDGET_SECONDS = 1200

APP_NAME = "modelplane-server"
COMPONENT = "server"
MANAGED_BY = "modelplane"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_MODEL_DEPLOYMENT = "modelplane.dev/model-deployment"
LABEL_REVISION_HASH = "modelplane.dev/revision-hash"
LABEL_ROLE = "modelplane.dev/role"
LABEL_SPEC_HASH = "modelplane.dev/spec-hash"
ANNOTATION_SOURCE = "modelplane.dev/source"
ANNOTATION_REVISION = "modelplane.dev/revision"
#: The rollout's revision id of a Deployment (``rollout.spec.revision_fingerprint``).
ANNOTATION_FINGERPRINT = "modelplane.dev/fingerprint"
#: The gated fields (``rollout.spec.gated_fields``, JSON) and GPU shape a Deployment was rendered from,
#: so stable is rendered from ITS values after the spec has moved on to a canary's (and after an
#: operator restart).
ANNOTATION_GATED = "modelplane.dev/gated-fields"

_MAX_NAME = 63

#: The Gateway API Inference Extension's group, and the InferencePool version rendered.
INFERENCE_GROUP = "inference.networking.k8s.io"
INFERENCE_POOL_API_VERSION = f"{INFERENCE_GROUP}/v1"
GATEWAY_GROUP = "gateway.networking.k8s.io"
HTTP_ROUTE_API_VERSION = f"{GATEWAY_GROUP}/v1"


class Role(StrEnum):
    STABLE = "stable"
    CANARY = "canary"


@dataclass(frozen=True)
class WorkloadPlan:
    """What one revision's Deployment runs: decided by the planner, autoscaler and rollout."""

    role: Role
    source: str
    revision: str
    replicas: int
    gpu_type: str | None  #: the planned type; None lets the pods land on any allowed type
    gpus_per_replica: int
    tensor_parallel_size: int
    #: Time the startup probe allows for download, load, compile and CUDA graphs (startup_budget_for).
    startup_budget_seconds: int = DEFAULT_STARTUP_BUDGET_SECONDS
    #: Names the Deployment (``<md>-<key>``) and is the pods' revision-hash label (the selector);
    #: None: ``revision_hash(source, revision)``. Two workloads of one source and revision that differ in
    #: other gated fields (an image change behind the gate) need distinct keys.
    key: str | None = None
    #: The spec this workload renders from (stable keeps its own gated fields while a canary runs);
    #: None: the spec passed to the builder.
    spec: ModelDeploymentSpec | None = None
    #: Extra Deployment annotations (fingerprint and gated-field snapshot), sorted pairs.
    annotations: tuple[tuple[str, str], ...] = ()
    #: Nodes of one replica: > 1 renders a LeaderWorkerSet whose groups are the replicas (one pod
    #: per node, one pipeline stage each; ``modelplane.lws``); ``gpus_per_replica`` counts the group.
    nodes: int = 1

    @property
    def gpus_per_pod(self) -> int:
        """GPUs of each pod: the replica's, or one node's share of the group's."""
        return self.gpus_per_replica // self.nodes

    @property
    def workload_key(self) -> str:
        return self.key or revision_hash(self.source, self.revision)

    def __post_init__(self) -> None:
        try:
            # Accept the plain strings "stable"/"canary" too, and store the enum.
            object.__setattr__(self, "role", Role(self.role))
        except ValueError:
            raise ValueError(f"role must be stable or canary, got {self.role!r}") from None
        if self.replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {self.replicas}")
        if self.gpus_per_replica < 1 or self.tensor_parallel_size < 1:
            raise ValueError("gpus_per_replica and tensor_parallel_size must be >= 1")
        if self.tensor_parallel_size > self.gpus_per_replica:
            raise ValueError(f"tensor_parallel_size {self.tensor_parallel_size} > "
                             f"gpus_per_replica {self.gpus_per_replica}")
        if self.nodes < 1 or self.gpus_per_replica % self.nodes != 0 or (
                self.nodes > 1 and self.tensor_parallel_size * self.nodes != self.gpus_per_replica):
            raise ValueError(f"a group of {self.nodes} nodes needs gpus_per_replica "
                             f"({self.gpus_per_replica}) = nodes x tensor_parallel_size "
                             f"({self.tensor_parallel_size})")
        if self.gpu_type is not None and self.gpu_type not in GPU_TYPES:
            raise ValueError(f"unknown GPU type {self.gpu_type!r}")
        if self.startup_budget_seconds < 1:
            raise ValueError("startup_budget_seconds must be >= 1")


class Owner(Protocol):
    """What the builders need of the ModelDeployment; ``ModelDeployment`` provides it."""

    @property
    def name(self) -> str: ...

    @property
    def namespace(self) -> str: ...

    @property
    def uid(self) -> str: ...


class OwnerReference(TypedDict):
    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: bool
    blockOwnerDeletion: bool


class ObjectMeta(TypedDict):
    name: str
    namespace: str
    labels: dict[str, str]
    ownerReferences: list[OwnerReference]
    annotations: NotRequired[dict[str, str]]


class Manifest(TypedDict):
    """A child object as sent to server-side apply."""

    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: dict[str, Any]


# --- names, labels, hashes ---

def _hash(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def revision_hash(source: str, revision: str) -> str:
    """8 hex characters naming one (source, revision) pair."""
    return _hash(f"{source}\n{revision}", 8)


def deployment_name(md_name: str, source: str, revision: str) -> str:
    """``<md-name>-<hash>``, the md name cut so that the result is a DNS-1123 label (≤ 63)."""
    suffix = "-" + revision_hash(source, revision)
    return md_name[: _MAX_NAME - len(suffix)].rstrip("-") + suffix


def server_selector(md: Owner) -> dict[str, str]:
    """The labels every server pod of ``md`` carries, whatever its revision (Service, PDB, /scale)."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: md.name, LABEL_COMPONENT: COMPONENT}


def workload_name(md_name: str, key: str) -> str:
    """``<md-name>-<key>``, the md name cut so that the result is a DNS-1123 label (≤ 63)."""
    suffix = "-" + key
    return md_name[: _MAX_NAME - len(suffix)].rstrip("-") + suffix


def selector_string(md: Owner) -> str:
    """``status.selector`` for the scale subresource: the server pods of every revision."""
    return ",".join(f"{k}={v}" for k, v in sorted(server_selector(md).items()))


def endpoint(md: Owner) -> str:
    """The OpenAI base URL inside the cluster."""
    return f"http://{md.name}.{md.namespace}.svc:{PORT}/v1"


def _common_labels(md: Owner) -> dict[str, str]:
    return {**server_selector(md), LABEL_MANAGED_BY: MANAGED_BY, LABEL_MODEL_DEPLOYMENT: md.name}


def owner_references(md: Owner) -> list[OwnerReference]:
    """The controller reference every child of ``md`` carries."""
    return _owner_references(md)


def _owner_references(md: Owner) -> list[OwnerReference]:
    return [{"apiVersion": API_VERSION, "kind": KIND, "name": md.name, "uid": md.uid,
             "controller": True, "blockOwnerDeletion": True}]


def startup_budget_for(weights_gib: float) -> int:
    """Seconds to allow a cold start with ``weights_gib`` of weights to download and load.

    From shared/FACTS.md: an 8B model (16 GB) takes ~5 min uncached on L40S (download, load, compile,
    CUDA graphs), a 72B model on TP4 ~17 min. 240 s of fixed work plus 8 s per GiB fits both, and
    half as much again covers slow links; the result is kept between 10 minutes and 2 hours.
    """
    if weights_gib < 0:
        raise ValueError(f"weights_gib must be >= 0, got {weights_gib}")
    return int(min(7200, max(600, math.ceil((240 + 8 * weights_gib) * 1.5))))


# --- the vLLM container ---

def _scheme(source: str) -> tuple[str, str]:
    scheme, _, rest = source.partition("://")
    return scheme, rest


def model_argument(source: str) -> str:
    """The model argument of ``vllm serve`` for a source URI (see the module docstring)."""
    scheme, rest = _scheme(source)
    if scheme == "hf":
        return rest
    if scheme == "pvc":
        _claim, _, path = rest.partition("/")
        return f"{PVC_MOUNT}/{path}".rstrip("/") if path else PVC_MOUNT
    if scheme in ("s3", "gs"):
        return source
    if scheme == "oci":
        return f"{OCI_MOUNT}/{OCI_MODEL_DIR}"
    raise ValueError(f"unsupported model source {source!r}")


def _number(value: float) -> str:
    return repr(float(value))


def vllm_args(md_name: str, spec: ModelDeploymentSpec, workload: WorkloadPlan) -> list[str]:
    """The arguments after ``vllm serve``: the model, the flags from typed fields, then extraArgs."""
    engine = spec.engine
    args = [
        model_argument(workload.source),
        "--port", str(PORT),
        "--served-model-name", spec.model.served_name or md_name,
        "--tensor-parallel-size", str(workload.tensor_parallel_size),
        "--gpu-memory-utilization", _number(engine.gpu_memory_utilization),
        "--download-dir", CACHE_DIR,
    ]
    scheme, _ = _scheme(workload.source)
    if scheme == "hf":
        # Other schemes have no hub revision; there the revision only names the rollout.
        args += ["--revision", workload.revision]
    if scheme in ("s3", "gs"):
        args += ["--load-format", "runai_streamer"]
    if engine.max_model_len is not None:
        args += ["--max-model-len", str(engine.max_model_len)]
    if engine.quantization is not None:
        args += ["--quantization", engine.quantization.value]
    if engine.dtype != DType.AUTO:
        args += ["--dtype", engine.dtype.value]
    if engine.max_num_seqs is not None:
        args += ["--max-num-seqs", str(engine.max_num_seqs)]
    args += lora_args(engine.lora)
    return args + list(engine.extra_args)


def lora_args(lora: LoRASpec | None) -> list[str]:
    """vLLM's LoRA flags for ``spec.engine.lora`` (as ``adapters.effective_lora`` filled it in);
    each one set is rendered, the rest keep vLLM's defaults. None: LoRA off, no flag."""
    if lora is None:
        return []
    args = ["--enable-lora"]
    for flag, value in (("--max-loras", lora.max_loras), ("--max-lora-rank", lora.max_lora_rank),
                        ("--max-cpu-loras", lora.max_cpu_loras)):
        if value is not None:
            args += [flag, str(value)]
    return args


def _env(model: ModelSpec, spec: ModelDeploymentSpec, scheme: str) -> list[dict[str, Any]]:
    env: dict[str, dict[str, Any]] = {
        # Keep the hub files and vLLM's torch.compile cache with the weights, so a PVC cache also
        # saves the recompilation on restart (shared/FACTS.md, cold starts).
        "HF_HOME": {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
        "VLLM_CACHE_ROOT": {"name": "VLLM_CACHE_ROOT", "value": f"{CACHE_DIR}/vllm"},
    }
    if model.credentials_secret and scheme in ("hf", "pvc"):
        # By reference only: the token never passes through the operator.
        env["HF_TOKEN"] = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": model.credentials_secret, "key": "HF_TOKEN"}}}
    if spec.engine.lora is not None:
        # The operator loads ModelAdapters through vLLM's runtime endpoints (docs/adapters.md).
        env[LORA_RUNTIME_ENV] = {"name": LORA_RUNTIME_ENV, "value": "True"}
    for var in spec.engine.env:
        # The user's value wins; one entry per name, since env is a map list under server-side apply.
        env[var.name] = {"name": var.name, "value": var.value}
    return list(env.values())


def _resources(spec: ModelDeploymentSpec, workload: WorkloadPlan) -> dict[str, Any]:
    gpus = str(workload.gpus_per_pod)
    requests: dict[str, Any] = {GPU_RESOURCE: gpus}
    limits: dict[str, Any] = {GPU_RESOURCE: gpus}
    if spec.resources.cpu is not None:
        # A request only: a CPU limit throttles the tokenizer and scheduler threads under load.
        requests["cpu"] = spec.resources.cpu
    if spec.resources.memory is not None:
        requests["memory"] = spec.resources.memory
        limits["memory"] = spec.resources.memory
    return {"requests": requests, "limits": limits}


def _gpu_products(spec: ModelDeploymentSpec, workload: WorkloadPlan) -> list[str]:
    if workload.gpu_type is not None:
        names: Sequence[str] = [workload.gpu_type]
    else:
        allowed = spec.resources.gpu.types or GPU_TYPE_NAMES
        names = [n for n in GPU_TYPE_NAMES if n in allowed]  # catalog order: stable output
    return [GPU_TYPES[n].product for n in names]


def _probe(failure_threshold: int) -> dict[str, Any]:
    return {"httpGet": {"path": "/health", "port": PORT_NAME}, "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": failure_threshold}


def _volumes(spec: ModelDeploymentSpec, source: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and the vLLM container's mounts: shared memory, the model cache, the model source."""
    cache = spec.resources.model_cache
    if cache is not None and cache.pvc is not None:
        cache_volume: dict[str, Any] = {"name": "model-cache",
                                        "persistentVolumeClaim": {"claimName": cache.pvc}}
    else:
        empty: dict[str, Any] = {}
        if cache is not None and cache.size_limit is not None:
            empty["sizeLimit"] = cache.size_limit
        cache_volume = {"name": "model-cache", "emptyDir": empty}
    volumes: list[dict[str, Any]] = [
        # Tensor parallelism exchanges activations through /dev/shm; the container default is 64 MiB.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        cache_volume,
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "dshm", "mountPath": SHM_MOUNT},
        {"name": "model-cache", "mountPath": CACHE_DIR},
    ]
    scheme, rest = _scheme(source)
    if scheme == "pvc":
        claim = rest.partition("/")[0]
        volumes.append({"name": "model-source",
                        "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "model-source", "mountPath": PVC_MOUNT, "readOnly": True})
    elif scheme == "oci":
        volumes.append({"name": "model-source", "image": {"reference": rest, "pullPolicy": "IfNotPresent"}})
        mounts.append({"name": "model-source", "mountPath": OCI_MOUNT, "readOnly": True})
    return volumes, mounts


def build_pod_template(md: Owner, spec: ModelDeploymentSpec, workload: WorkloadPlan) -> dict[str, Any]:
    """The pod template of one revision's Deployment (without the spec-hash label)."""
    scheme, _ = _scheme(workload.source)
    volumes, mounts = _volumes(spec, workload.source)
    container: dict[str, Any] = {
        "name": "vllm",
        "image": spec.engine.image,
        "command": ["vllm", "serve"],
        "args": vllm_args(md.name, spec, workload),
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "env": _env(spec.model, spec, scheme),
        "resources": _resources(spec, workload),
        "volumeMounts": mounts,
        "startupProbe": _probe(math.ceil(workload.startup_budget_seconds / PROBE_PERIOD_SECONDS)),
        "readinessProbe": _probe(READINESS_FAILURE_THRESHOLD),
        "livenessProbe": _probe(LIVENESS_FAILURE_THRESHOLD),
        # Keep serving while the Service stops sending new requests, then let in-flight ones finish.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_SECONDS)]}}},
    }
    if spec.model.credentials_secret and scheme in ("s3", "gs"):
        container["envFrom"] = [{"secretRef": {"name": spec.model.credentials_secret}}]
    pod_spec: dict[str, Any] = {
        # A Service named like a vLLM variable (e.g. "vllm" → VLLM_PORT) would crash the server.
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": PRODUCT_LABEL, "operator": "In", "values": _gpu_products(spec, workload)}]}]}}},
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [container],
        "volumes": volumes,
    }
    if spec.model.credentials_secret and scheme == "oci":
        pod_spec["imagePullSecrets"] = [{"name": spec.model.credentials_secret}]
    labels = {**_common_labels(md), LABEL_REVISION_HASH: workload.workload_key}
    return {"metadata": {"labels": labels}, "spec": pod_spec}


def spec_hash(template: dict[str, Any]) -> str:
    """10 hex characters that change whenever anything in the pod template changes."""
    return _hash(json.dumps(template, sort_keys=True, separators=(",", ":")), 10)


def build_deployment(md: Owner, spec: ModelDeploymentSpec, workload: WorkloadPlan) -> Manifest:
    """The Deployment running one revision with ``workload.replicas`` pods."""
    spec = workload.spec or spec
    rev_hash = workload.workload_key
    template = build_pod_template(md, spec, workload)
    template_hash = spec_hash(template)
    template["metadata"]["labels"][LABEL_SPEC_HASH] = template_hash
    labels = {**_common_labels(md), LABEL_REVISION_HASH: rev_hash, LABEL_ROLE: workload.role.value,
              LABEL_SPEC_HASH: template_hash}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": workload_name(md.name, rev_hash),
            "namespace": md.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_SOURCE: workload.source, ANNOTATION_REVISION: workload.revision,
                            **dict(workload.annotations)},
            "ownerReferences": _owner_references(md),
        },
        "spec": {
            "replicas": workload.replicas,
            # Immutable once created, so only labels that never change for this Deployment.
            "selector": {"matchLabels": {**server_selector(md), LABEL_REVISION_HASH: rev_hash}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            # A model load can outlast the default 600 s; let the startup probe judge, not the deadline.
            "progressDeadlineSeconds": workload.startup_budget_seconds + 300,
            "revisionHistoryLimit": 3,
            "template": template,
        },
    }


def serving_pods(md: Owner, key: str | None) -> dict[str, str]:
    """The labels of the pods that take the Service's traffic: workload ``key``'s server pods
    (every server pod when ``key`` is None)."""
    selector = server_selector(md)
    return {**selector, LABEL_REVISION_HASH: key} if key is not None else selector


def build_service(md: Owner, *, key: str | None = None) -> Manifest:
    """The ModelDeployment's ClusterIP Service for the OpenAI port: the pods of workload ``key``.

    It selects one workload, the serving (stable) one, so a client that goes to it straight is
    served by stable only; a canary takes its share of requests through the gateway, which reads
    every server pod and splits by ``status.canary.weight``. The selector changes only when the
    serving workload does (a promotion, a revision switch), which restarts nothing. ``key`` None:
    every server pod of every revision.
    """
    selector = serving_pods(md, key)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": md.name, "namespace": md.namespace, "labels": _common_labels(md),
                     "ownerReferences": _owner_references(md)},
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP",
                       "appProtocol": "http"}],
        },
    }


def build_pdb(md: Owner) -> Manifest:
    """At most one server pod voluntarily disrupted at a time, across revisions."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": md.name, "namespace": md.namespace, "labels": _common_labels(md),
                     "ownerReferences": _owner_references(md)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": server_selector(md)}},
    }


def build_children(md: Owner, spec: ModelDeploymentSpec, workloads: Sequence[WorkloadPlan], *,
                   service_key: str | None = None) -> list[Manifest]:
    """Every child of ``md``: one Deployment per workload (stable first) — a LeaderWorkerSet for a
    workload whose replicas span several nodes —, the Service (over the pods of workload
    ``service_key``), the PDB."""
    names = [workload_name(md.name, w.workload_key) for w in workloads]
    if len(set(names)) != len(names):
        raise ValueError(f"two workloads render the same Deployment: {names}")
    ordered = sorted(workloads, key=lambda w: 0 if w.role == Role.STABLE else 1)
    from modelplane import lws  # it builds on this module

    return [*(build_deployment(md, spec, w) if w.nodes == 1 else lws.build_leader_worker_set(md, spec, w)
              for w in ordered), build_service(md, key=service_key), build_pdb(md)]


# --- Gateway API Inference Extension ---------------------------------------------------------------

def build_inference_pool(md: Owner, pool: InferencePoolSpec, *, key: str | None = None) -> Manifest:
    """The InferencePool (v1) over the pods the Service selects (workload ``key``, see
    ``build_service``), on the vLLM port, naming the picker.

    Like the Service it holds the serving (stable) workload only: a canary is reached by the
    evaluation and, at its weight, through modelplane's gateway, not through the pool, until it is
    promoted (docs/inference-extension.md).
    """
    picker = pool.endpoint_picker
    if picker is None:
        raise ValueError("an InferencePool needs spec.inferencePool.endpointPicker")
    return {
        "apiVersion": INFERENCE_POOL_API_VERSION,
        "kind": "InferencePool",
        "metadata": {"name": md.name, "namespace": md.namespace, "labels": _common_labels(md),
                     "ownerReferences": _owner_references(md)},
        "spec": {
            "selector": {"matchLabels": serving_pods(md, key)},
            "targetPorts": [{"number": PORT}],
            "endpointPickerRef": {"group": "", "kind": "Service", "name": picker.service,
                                  "port": {"number": picker.port},
                                  "failureMode": picker.failure_mode.value},
        },
    }


def build_http_route(md: Owner, route: HTTPRouteSpec, *, served_name: str) -> Manifest:
    """The HTTPRoute from the user's Gateways to the InferencePool of ``md`` (same name)."""
    parents: list[dict[str, Any]] = []
    for ref in route.parent_refs:
        parent: dict[str, Any] = {"group": GATEWAY_GROUP, "kind": "Gateway", "name": ref.name}
        if ref.namespace is not None:
            parent["namespace"] = ref.namespace
        if ref.section_name is not None:
            parent["sectionName"] = ref.section_name
        parents.append(parent)
    match: dict[str, Any] = {"path": {"type": "PathPrefix", "value": "/"}}
    if route.match_model_header:
        match["headers"] = [{"type": "Exact", "name": MODEL_NAME_HEADER, "value": served_name}]
    spec: dict[str, Any] = {
        "parentRefs": parents,
        "rules": [{"matches": [match],
                   "backendRefs": [{"group": INFERENCE_GROUP, "kind": "InferencePool", "name": md.name}]}],
    }
    if route.hostnames:
        spec["hostnames"] = list(route.hostnames)
    return {
        "apiVersion": HTTP_ROUTE_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": {"name": md.name, "namespace": md.namespace, "labels": _common_labels(md),
                     "ownerReferences": _owner_references(md)},
        "spec": spec,
    }


def build_inference_children(md: Owner, spec: ModelDeploymentSpec, *, served_name: str,
                             key: str | None = None) -> list[Manifest]:
    """The InferencePool, then the HTTPRoute when asked; none without an enabled spec.inferencePool."""
    pool = spec.inference_pool
    if pool is None or not pool.enabled:
        return []
    children = [build_inference_pool(md, pool, key=key)]
    if pool.http_route is not None:
        children.append(build_http_route(md, pool.http_route, served_name=served_name))
    return children
