{{/*
Names, labels, and the RBAC rules: the one place that says which verbs the operator needs.
*/}}

{{- define "modelplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelplane.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "modelplane.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "modelplane.labels" -}}
helm.sh/chart: {{ include "modelplane.chart" . }}
{{ include "modelplane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelplane
{{- end }}

{{- define "modelplane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelplane.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "modelplane.peeringName" -}}
{{- default (include "modelplane.fullname" .) .Values.ha.peeringName | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Rules for the namespaced resources, granted cluster-wide (ClusterRole) or in each watched namespace
(Role). Each rule names the code that makes the call; tests/unit/test_chart.py holds the same list
as (apiGroup, resource, verb) triples and fails when the two differ in either direction.
*/}}
{{- define "modelplane.rules.namespaced" -}}
# The controller's informer lists and watches ModelDeployments (controller.loop._build_informers);
# the operator never writes their spec, labels or annotations.
- apiGroups: [modelplane.dev]
  resources: [modeldeployments]
  verbs: [list, watch]
# Status is written by server-side apply, a PATCH of the status subresource (loop._reconcile).
- apiGroups: [modelplane.dev]
  resources: [modeldeployments/status]
  verbs: [patch]
# ModelRoutes: watched, and their status (RoutesResolved) applied by controller/routes.py.
- apiGroups: [modelplane.dev]
  resources: [modelroutes]
  verbs: [list, watch]
- apiGroups: [modelplane.dev]
  resources: [modelroutes/status]
  verbs: [patch]
# Children carry an ownerReference with blockOwnerDeletion (render._owner_references), which the
# OwnerReferencesPermissionEnforcement admission plugin (on in OpenShift) allows only to a client
# that may update the owner's finalizers. The operator never sets a finalizer.
- apiGroups: [modelplane.dev]
  resources: [modeldeployments/finalizers]
  verbs: [update]
# ModelAdapters: read (controller.adapterloop), status written by server-side apply; never their spec.
- apiGroups: [modelplane.dev]
  resources: [modeladapters]
  verbs: [list, watch]
- apiGroups: [modelplane.dev]
  resources: [modeladapters/status]
  verbs: [patch]
# An adapter rollout's evaluation report (and custom evaluator Job) is owned by its ModelAdapter,
# with blockOwnerDeletion, as above.
- apiGroups: [modelplane.dev]
  resources: [modeladapters/finalizers]
  verbs: [update]
# vLLM Deployments: the controller's informer lists and watches the labelled ones; the controller
# applies them and deletes old revisions. Server-side apply is a PATCH, but the API server
# authorizes a PATCH that creates the object as `create` (tests/e2e/test_rbac.py found out).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch, delete]
# The model's Service and PodDisruptionBudget: watched (informers) and applied (created, then
# patched).
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch]
# vLLM pods: watched for readiness, scrape targets and problems (health.pod_problem).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# FailedScheduling events are watched to explain pending pods; the operator posts its own Events
# (loop.post_event). kopf's own event posting is switched off (handlers.configure).
- apiGroups: [""]
  resources: [events]
  verbs: [list, watch, create]
# Rollouts: the evaluation suite is read from the ConfigMap the spec names, and the evaluation
# report is written to a ConfigMap of the operator's.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, patch]
# Rollouts with a custom evaluator (spec.rollout.evaluation.evaluator) run it as a Job (created,
# then read until it ends; it is owner-referenced, so it goes with the ModelDeployment).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, create]
# spec.inferencePool (Gateway API Inference Extension): the InferencePool and HTTPRoute of a
# ModelDeployment are watched (informers, which tolerate the CRDs being absent), applied, and deleted
# when the spec stops asking for them.
- apiGroups: [inference.networking.k8s.io]
  resources: [inferencepools]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [list, watch, create, patch, delete]
# Multi-node replicas (docs/multi-node.md): a revision whose replicas span several nodes is a
# LeaderWorkerSet (its CRD may be absent: the informer tolerates it); its controller's RecreateGroup
# Events are read like the scheduler's.
- apiGroups: [leaderworkerset.x-k8s.io]
  resources: [leaderworkersets]
  verbs: [list, watch, create, patch, delete]
{{- if .Values.rbac.readModelCredentials }}
# A gated model's config.json is fetched with the HF_TOKEN of its credentialsSecret
# (loop._read_model_config); only `get` of a named Secret, never list or watch.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}
{{- if and .Values.ha.enabled .Values.watchNamespaces }}
# HA in namespaced mode: kopf keeps its heartbeat in a KopfPeering in each served namespace.
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [list, watch, patch]
{{- end }}
{{- end }}

{{/*
Rules for cluster-scoped resources: always a ClusterRole, in both modes.
*/}}
{{- define "modelplane.rules.cluster" -}}
# GPU nodes: watched to explain pending pods (health: the largest GPU node, no node of a type).
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch]
{{- if .Values.metrics.authentication.enabled }}
# metrics.authentication: who is asking for /metrics (TokenReview), and may they (SubjectAccessReview).
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
- apiGroups: [authorization.k8s.io]
  resources: [subjectaccessreviews]
  verbs: [create]
{{- end }}
{{- if .Values.ha.enabled }}
# HA only (kopf runs for peering): kopf discovers resources and follows CRD changes (kopf
# resource_observer).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}
{{- if and .Values.ha.enabled .Values.watchNamespaces }}
# HA in namespaced mode: kopf follows namespaces coming and going (kopf namespace_observer). In
# cluster-wide mode kopf serves all namespaces without listing them, so this rule is left out.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- if and .Values.ha.enabled (not .Values.watchNamespaces) }}
# HA in cluster-wide mode: kopf keeps its heartbeat in a ClusterKopfPeering.
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [list, watch, patch]
{{- end }}
{{- end }}

{{/*
The gateway (`modelplane gateway`): its names, labels and RBAC rules.
*/}}
{{- define "modelplane.gateway.fullname" -}}
{{- printf "%s-gateway" (include "modelplane.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelplane.gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "modelplane.gateway.labels" -}}
helm.sh/chart: {{ include "modelplane.chart" . }}
{{ include "modelplane.gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelplane
{{- end }}

{{/* The label selector of the gateway's pods, as `modelplane run --gateway-selector` takes it. */}}
{{- define "modelplane.gateway.selector" -}}
app.kubernetes.io/component=gateway,app.kubernetes.io/instance={{ .Release.Name }},app.kubernetes.io/name={{ include "modelplane.name" . }}
{{- end }}

{{- define "modelplane.gateway.serviceAccountName" -}}
{{- default (include "modelplane.gateway.fullname" .) .Values.gateway.serviceAccount.name }}
{{- end }}

{{/*
The gateway only reads: its informers (gateway.cache.ClusterRoutes) list and watch the
ModelDeployments, the server pods (its endpoints) and the server Deployments and LeaderWorkerSets
(which one is the canary). tests/unit/test_chart.py compares these rules with those informers.
*/}}
{{- define "modelplane.gateway.rules" -}}
- apiGroups: [modelplane.dev]
  resources: [modeldeployments, modelroutes, modeladapters]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch]
- apiGroups: [leaderworkerset.x-k8s.io]
  resources: [leaderworkersets]
  verbs: [list, watch]
# An external backend's API key, read by name from the Secret its ModelRoute names (gateway/meshroutes.py).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- if .Values.gateway.teams }}
# Teams: the Secrets labelled modelplane.dev/team (their key hashes and limits; gateway/teams.py).
- apiGroups: [""]
  resources: [secrets]
  verbs: [list, watch]
{{- end }}
{{- end }}
