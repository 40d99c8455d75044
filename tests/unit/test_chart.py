"""The Helm chart, rendered by a real helm (built from its Go module) and read back as YAML.

What must hold for every value set: `helm lint --strict` is clean; the RBAC grants exactly the
(apiGroup, resource, verb) triples the operator uses, with no wildcard; the operator runs
`modelplane run` with flags its parser accepts, non-root, on a read-only root filesystem, probed on
/healthz at the metrics port; the chart's CRD is the generated one in crds/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelplane import gpus
from modelplane.cli import build_parser
from modelplane.controller import opmetrics
from modelplane.controller.run import load_prices, prometheus_source
from tests.chart import CHART, REPO, lint, one, permissions, pick, render

# A cold helm build (first run on a machine) takes minutes; warm, these tests take seconds.
pytestmark = pytest.mark.timeout(1800)

RELEASE, NAMESPACE = "mp", "modelplane-system"
FULLNAME = "mp-modelplane"


def _triples(group: str, resource: str, *verbs: str) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for verb in verbs}


# What the operator calls, read from its code (kube.py verbs as used by controller/loop.py, its
# informers and rollout/runtime.py; kopf's own needs in HA) — kept here independently of the chart
# so the two are compared.
NAMESPACED_NEEDS = (
    _triples("modelplane.dev", "modeldeployments", "list", "watch")            # informer
    | _triples("modelplane.dev", "modeldeployments/status", "patch")           # status SSA
    | _triples("modelplane.dev", "modeldeployments/finalizers", "update")      # blockOwnerDeletion
    | _triples("modelplane.dev", "modeladapters", "list", "watch")             # adapterloop
    | _triples("modelplane.dev", "modeladapters/status", "patch")              # adapter status SSA
    | _triples("modelplane.dev", "modeladapters/finalizers", "update")         # adapter eval report owner
    | _triples("apps", "deployments", "list", "watch", "create", "patch", "delete")  # children
    | _triples("", "services", "list", "watch", "create", "patch")
    | _triples("policy", "poddisruptionbudgets", "list", "watch", "create", "patch")
    | _triples("", "pods", "list", "watch")
    | _triples("", "events", "list", "watch", "create")
    | _triples("", "configmaps", "get", "create", "patch")                     # evaluation suite/report
    | _triples("batch", "jobs", "get", "create")                               # custom evaluator
    | _triples("inference.networking.k8s.io", "inferencepools",               # spec.inferencePool
               "list", "watch", "create", "patch", "delete")
    | _triples("gateway.networking.k8s.io", "httproutes", "list", "watch", "create", "patch", "delete")
    | _triples("modelplane.dev", "modelroutes", "list", "watch")               # informer (routes.py)
    | _triples("modelplane.dev", "modelroutes/status", "patch")                # status SSA
    # Multi-node replicas (docs/multi-node.md): a group revision is a LeaderWorkerSet.
    | _triples("leaderworkerset.x-k8s.io", "leaderworkersets", "list", "watch", "create", "patch", "delete")
)
CLUSTER_NEEDS = _triples("", "nodes", "list", "watch")
#: kopf runs only in HA (peering); it discovers resources through the CRDs.
HA_CLUSTER_NEEDS = _triples("apiextensions.k8s.io", "customresourcedefinitions", "list", "watch")
#: kopf lists and watches namespaces only when it serves a chosen set of them (HA).
NAMESPACES_NEEDS = _triples("", "namespaces", "list", "watch")
CLUSTER_PEERING_NEEDS = _triples("kopf.dev", "clusterkopfpeerings", "list", "watch", "patch")
NAMESPACED_PEERING_NEEDS = _triples("kopf.dev", "kopfpeerings", "list", "watch", "patch")
#: Only with rbac.readModelCredentials: a gated model's HF_TOKEN, read by name.
CREDENTIALS_NEEDS = _triples("", "secrets", "get")
#: The gateway only reads: its informers (gateway.cache.ClusterRoutes), nothing else.
GATEWAY_NEEDS = (_triples("modelplane.dev", "modeldeployments", "list", "watch")
                 | _triples("modelplane.dev", "modeladapters", "list", "watch")
                 | _triples("", "pods", "list", "watch")
                 | _triples("apps", "deployments", "list", "watch")
                 | _triples("modelplane.dev", "modelroutes", "list", "watch")  # gateway.meshroutes
                 | _triples("", "secrets", "get")  # external backends' API keys, by name
                 | _triples("leaderworkerset.x-k8s.io", "leaderworkersets", "list", "watch"))
#: With gateway.teams: the team Secrets, watched (gateway.teams.ClusterTeams).
GATEWAY_TEAMS_NEEDS = _triples("", "secrets", "list", "watch")
#: The usage ledger (gateway/ledger.py): its shards, ConfigMaps in the release namespace only.
GATEWAY_LEDGER_NEEDS = _triples("", "configmaps", "get", "list", "watch", "create", "update", "delete")
#: The operator finds the gateway's replicas by watching their pods in the release namespace.
OPERATOR_GATEWAY_NEEDS = _triples("", "pods", "list", "watch")
GATEWAY = f"{FULLNAME}-gateway"
#: With metrics.authentication (the default): who asks for /metrics, and may they.
METRICS_AUTH_NEEDS = (_triples("authentication.k8s.io", "tokenreviews", "create")
                      | _triples("authorization.k8s.io", "subjectaccessreviews", "create"))

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["a", "b"]},
    "ha": {"ha": {"enabled": True}, "replicas": 2},
    "ha-namespaced": {"ha": {"enabled": True}, "replicas": 3, "watchNamespaces": ["a", "b"]},
    "observability": {"serviceMonitor": {"enabled": True, "interval": "15s"},
                      "grafanaDashboard": {"enabled": True},
                      "gpuPrices": {"nvidia-h100-80gb": 2.49, "nvidia-l4": 0.7}},
    "credentials": {"rbac": {"readModelCredentials": True}},
    "credentials-namespaced": {"rbac": {"readModelCredentials": True}, "watchNamespaces": ["a"]},
    "prometheus": {"prometheusSource": {"url": "http://prometheus-operated.monitoring:9090",
                                        "podLabel": "kubernetes_pod_name", "maxAgeSeconds": 90,
                                        "tokenSecret": "prom-token"}},
    "tuned": {"metrics": {"port": 9090}, "resyncSeconds": 5, "logLevel": "DEBUG",
              "image": {"repository": "registry.example/modelplane", "tag": "dev"}},
    "gateway-tuned": {"gateway": {"replicas": 4, "workers": 2, "port": 8080, "metricsPort": 9100,
                                  "maxBodyBytes": 1048576, "prefixChars": 2048, "heldScrapeSeconds": 0.5,
                                  "hold": {"maxPerModel": 50, "timeoutSeconds": 60, "retryAfterSeconds": 2},
                                  "resources": {"requests": {"cpu": "2", "memory": "1Gi"}},
                                  "pdb": {"maxUnavailable": 2}, "service": {"port": 8000}},
                      "watchNamespaces": ["a"]},
    "no-gateway": {"gateway": {"enabled": False}},
    "operator-flags": {"operator": {"hfEndpoint": "https://hf-mirror.example", "readModelConfig": False,
                                    "extraArgs": ["--prometheus-namespace-label=kubernetes_namespace"],
                                    "env": [{"name": "A", "value": "1"}]},
                       "extraEnv": [{"name": "B", "value": "2"}],
                       "proxy": {"httpsProxy": "http://proxy.corp:3128", "httpProxy": "http://proxy.corp:3128",
                                 "noProxy": ".svc,.cluster.local,prom.internal"}},
    "metrics-private": {"metrics": {"host": "10.1.2.3", "healthPort": 8081,
                                    "authentication": {"enabled": False}},
                        "serviceMonitor": {"enabled": True}},
    "metrics-readers": {"metrics": {"authentication": {"readers": [
        {"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"}]}},
        "serviceMonitor": {"enabled": True}},
    "prometheus-namespaced": {"prometheusSource": {"url": "http://prom:9090",
                                                   "podMonitor": {"interval": "10s", "labels": {"r": "k"}}},
                              "watchNamespaces": ["a"]},
    "prometheus-no-podmonitor": {"prometheusSource": {"url": "http://prom:9090",
                                                      "podMonitor": {"enabled": False}}},
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(values, release=RELEASE, namespace=NAMESPACE) for name, values in VALUE_SETS.items()}


def _deployment(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return one(manifests, "Deployment", FULLNAME, NAMESPACE)


def _container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    containers = _deployment(manifests)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


# --- lint ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_helm_lint_is_clean(name: str) -> None:
    proc = lint(VALUE_SETS[name])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


# --- RBAC ------------------------------------------------------------------------------------------


def _expected(values: dict[str, Any]) -> tuple[set[tuple[str, str, str]], set[tuple[str, str, str]]]:
    """(namespaced, cluster-scoped) permissions the operator needs with ``values``."""
    namespaced, cluster = set(NAMESPACED_NEEDS), set(CLUSTER_NEEDS)
    ha = values.get("ha", {}).get("enabled", False)
    if values.get("rbac", {}).get("readModelCredentials", False):
        namespaced |= CREDENTIALS_NEEDS
    if values.get("metrics", {}).get("authentication", {}).get("enabled", True):
        cluster |= METRICS_AUTH_NEEDS
    if ha:
        cluster |= HA_CLUSTER_NEEDS
        if values.get("watchNamespaces"):
            cluster |= NAMESPACES_NEEDS
            namespaced |= NAMESPACED_PEERING_NEEDS
        else:
            cluster |= CLUSTER_PEERING_NEEDS
    return namespaced, cluster


@pytest.mark.parametrize("name", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_rbac_grants_exactly_what_the_operator_uses(name: str, rendered: dict[str, Any]) -> None:
    manifests, values = rendered[name], VALUE_SETS[name]
    namespaced, cluster = _expected(values)
    subject = {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    one(manifests, "ServiceAccount", FULLNAME, NAMESPACE)
    watch = values.get("watchNamespaces") or []
    if not watch:
        role = one(manifests, "ClusterRole", FULLNAME)
        assert permissions(role["rules"]) == namespaced | cluster
        binding = one(manifests, "ClusterRoleBinding", FULLNAME)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                      "name": FULLNAME}
        assert binding["subjects"] == [subject]
        # No Role of the operator's (the gateway's ledger Role is checked with the gateway).
        assert not [m for kind in ("Role", "RoleBinding") for m in pick(manifests, kind)
                    if not m["metadata"]["name"].startswith(GATEWAY)]
        return
    cluster_role = one(manifests, "ClusterRole", f"{FULLNAME}-cluster")
    assert permissions(cluster_role["rules"]) == cluster
    assert one(manifests, "ClusterRoleBinding", f"{FULLNAME}-cluster")["subjects"] == [subject]
    roles = [r for r in pick(manifests, "Role") if r["metadata"]["name"] == FULLNAME]
    assert {r["metadata"]["namespace"] for r in roles} == set(watch)
    for ns in watch:
        assert permissions(one(manifests, "Role", FULLNAME, ns)["rules"]) == namespaced
        binding = one(manifests, "RoleBinding", FULLNAME, ns)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": FULLNAME}
        assert binding["subjects"] == [subject]


@pytest.mark.parametrize("name", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_rbac_has_no_wildcards(name: str, rendered: dict[str, Any]) -> None:
    roles = pick(rendered[name], "ClusterRole") + pick(rendered[name], "Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            if role["metadata"]["name"] == f"{FULLNAME}-metrics-reader":
                assert rule == {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}  # for scrapers
                continue
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], (role["metadata"]["name"], rule)
            assert "nonResourceURLs" not in rule


@pytest.mark.parametrize("peering", [None, ("mp", 1, ()), ("mp", 1, ("a", "b"))],
                         ids=["standalone", "ha", "ha-namespaced"])
def test_every_informer_is_granted_list_and_watch(peering: Any) -> None:
    """Adding an informer on a new resource without RBAC fails here, before the cluster test."""
    from modelplane.controller.loop import Controller, Settings

    controller = Controller(None, Settings(peering=peering))  # type: ignore[arg-type]  # never runs
    watched = {(i.resource.group, i.resource.plural) for i in controller._all_informers()}  # noqa: SLF001
    needs = NAMESPACED_NEEDS | CLUSTER_NEEDS | CLUSTER_PEERING_NEEDS | NAMESPACED_PEERING_NEEDS
    for group, plural in watched:
        assert {(group, plural, "list"), (group, plural, "watch")} <= needs, (group, plural)
    assert ("", "nodes") in watched and ("modelplane.dev", "modeldeployments") in watched


@pytest.mark.parametrize(("gateway", "peering"), [(True, None), (True, ("mp", 1, ("a",))), (False, None)],
                         ids=["gateway", "gateway-ha-namespaced", "no-gateway"])
def test_the_operator_watches_the_gateway_pods_only_with_a_selector_and_is_granted_it(
        gateway: bool, peering: Any) -> None:
    from modelplane.controller.loop import Controller, Settings

    settings = Settings(peering=peering, gateway_selector="app=gw" if gateway else None,
                        gateway_namespace="mp" if gateway else None)
    controller = Controller(None, settings)  # type: ignore[arg-type]  # never runs
    watched = {(i.resource.group, i.resource.plural)
               for i in controller.informers.get("gateways", [])}
    assert watched == ({("", "pods")} if gateway else set())
    for group, plural in watched:
        assert {(group, plural, "list"), (group, plural, "watch")} <= OPERATOR_GATEWAY_NEEDS


# --- the gateway -----------------------------------------------------------------------------------


def test_the_gateway_watches_exactly_what_its_rbac_grants() -> None:
    """An informer added to the gateway without its RBAC (or RBAC it no longer uses) fails here."""
    from modelplane.gateway.cache import ClusterRoutes
    from modelplane.gateway.ledger import ClusterLedger
    from modelplane.gateway.meshroutes import ClusterMesh
    from modelplane.gateway.teams import ClusterTeams

    ledger = ClusterLedger(None, NAMESPACE, "shard")  # type: ignore[arg-type]  # never runs
    [shards] = ledger.informers
    assert shards.namespace == NAMESPACE
    # It lists and watches its shards, reads its own back after a conflict, creates, updates and
    # deletes (ledger.ClusterLedger.publish, sweep).
    assert {("", shards.resource.plural, v) for v in ("list", "watch", "get", "create", "update", "delete")} \
        == GATEWAY_LEDGER_NEEDS

    for namespaces in ((), ("a", "b")):
        routes = ClusterRoutes(None, namespaces)  # type: ignore[arg-type]  # never runs
        mesh = ClusterMesh(None, namespaces)  # type: ignore[arg-type]
        teams = ClusterTeams(None, namespaces)  # type: ignore[arg-type]
        watched = {(i.resource.group, i.resource.plural, verb) for i in [*routes.informers, *mesh.informers]
                   for verb in ("list", "watch")}
        assert watched | _triples("", "secrets", "get") == GATEWAY_NEEDS
        assert {(i.resource.group, i.resource.plural, verb) for i in teams.informers
                for verb in ("list", "watch")} == GATEWAY_TEAMS_NEEDS


def test_with_teams_the_gateway_may_also_watch_secrets_and_is_told_so() -> None:
    manifests = render({"gateway": {"teams": True}}, release=RELEASE, namespace=NAMESPACE)
    assert permissions(one(manifests, "ClusterRole", GATEWAY)["rules"]) == GATEWAY_NEEDS | GATEWAY_TEAMS_NEEDS
    pod = one(manifests, "Deployment", GATEWAY, NAMESPACE)["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--teams" in args and "--reference-usd-per-mtok=15" in args


@pytest.mark.parametrize("name", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_gateway_rbac_is_read_only_but_its_ledger_and_exactly_what_it_uses(
        name: str, rendered: dict[str, Any]) -> None:
    manifests, values = rendered[name], VALUE_SETS[name]
    if not values.get("gateway", {}).get("enabled", True):
        assert not [m for m in manifests if m["metadata"]["name"].startswith(GATEWAY)]
        return
    one(manifests, "ServiceAccount", GATEWAY, NAMESPACE)
    subject = [{"kind": "ServiceAccount", "name": GATEWAY, "namespace": NAMESPACE}]
    # Its one write: the usage ledger's ConfigMaps, in the release namespace only.
    ledger = one(manifests, "Role", f"{GATEWAY}-ledger", NAMESPACE)
    assert permissions(ledger["rules"]) == GATEWAY_LEDGER_NEEDS
    assert one(manifests, "RoleBinding", f"{GATEWAY}-ledger", NAMESPACE)["subjects"] == subject
    assert pick(manifests, "Role", f"{GATEWAY}-ledger") == [ledger]
    [container] = one(manifests, "Deployment", GATEWAY, NAMESPACE)["spec"]["template"]["spec"]["containers"]
    assert f"--ledger-namespace={NAMESPACE}" in container["args"]
    operator = [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    watch = values.get("watchNamespaces") or []
    if not watch:
        assert permissions(one(manifests, "ClusterRole", GATEWAY)["rules"]) == GATEWAY_NEEDS
        binding = one(manifests, "ClusterRoleBinding", GATEWAY)
        assert binding["subjects"] == subject and binding["roleRef"]["name"] == GATEWAY
        assert not pick(manifests, "Role", f"{FULLNAME}-gateway-pods")
        # The operator's ClusterRole covers the gateway's pods in the release namespace.
        assert OPERATOR_GATEWAY_NEEDS <= permissions(one(manifests, "ClusterRole", FULLNAME)["rules"])
        return
    assert not pick(manifests, "ClusterRole", GATEWAY)
    for ns in watch:
        assert permissions(one(manifests, "Role", GATEWAY, ns)["rules"]) == GATEWAY_NEEDS
        assert one(manifests, "RoleBinding", GATEWAY, ns)["subjects"] == subject
    pods = one(manifests, "Role", f"{FULLNAME}-gateway-pods", NAMESPACE)
    assert permissions(pods["rules"]) == OPERATOR_GATEWAY_NEEDS
    assert one(manifests, "RoleBinding", f"{FULLNAME}-gateway-pods", NAMESPACE)["subjects"] == operator


@pytest.mark.parametrize("name", ["default", "gateway-tuned", "namespaced"])
def test_gateway_deployment_service_and_pdb(name: str, rendered: dict[str, Any]) -> None:
    manifests, values = rendered[name], VALUE_SETS[name]
    g = values.get("gateway", {})
    deployment = one(manifests, "Deployment", GATEWAY, NAMESPACE)
    assert deployment["spec"]["replicas"] == g.get("replicas", 2) >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == GATEWAY
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["command"] == ["modelplane"]
    args = build_parser().parse_args(container["args"])
    hold = g.get("hold", {})
    assert (args.command, args.port, args.metrics_port, args.workers, args.max_body_bytes, args.max_held,
            args.hold_timeout, args.retry_after, args.prefix_chars, args.namespace) == (
        "gateway", g.get("port", 8000), g.get("metricsPort", 9090), g.get("workers", 1),
        g.get("maxBodyBytes", 16 * 2**20), hold.get("maxPerModel", 1000), hold.get("timeoutSeconds", 300),
        hold.get("retryAfterSeconds", 5), g.get("prefixChars", 0), values.get("watchNamespaces", []))
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": g.get("port", 8000), "metrics": g.get("metricsPort", 9090)}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    if "resources" in g:
        assert container["resources"]["requests"] == g["resources"]["requests"]
    else:
        assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    match = deployment["spec"]["selector"]["matchLabels"]
    assert match.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert match != _deployment(manifests)["spec"]["selector"]["matchLabels"], "not the operator's pods"
    service = one(manifests, "Service", GATEWAY, NAMESPACE)
    assert service["spec"]["selector"] == match
    assert {"name": "http", "port": g.get("service", {}).get("port", 80), "targetPort": "http",
            "protocol": "TCP"} in service["spec"]["ports"]
    pdb = one(manifests, "PodDisruptionBudget", GATEWAY, NAMESPACE)
    assert pdb["spec"]["selector"]["matchLabels"] == match
    assert pdb["spec"]["maxUnavailable"] == g.get("pdb", {}).get("maxUnavailable", 1)
    assert pdb["spec"]["maxUnavailable"] < deployment["spec"]["replicas"], "a drain leaves one serving"


def _gateway_value_paths() -> set[str]:
    """Every ``gateway.*`` value the templates read."""
    paths: set[str] = set()
    for template in (CHART / "templates").glob("*.yaml"):
        text = template.read_text()
        paths.update("gateway." + p for p in re.findall(r"\$g\.([A-Za-z][\w.]*)", text))
        paths.update("gateway." + p for p in re.findall(r"\.Values\.gateway\.([A-Za-z][\w.]*)", text))
    return paths


def test_every_gateway_value_is_in_values_yaml_and_documented() -> None:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    lines = text.splitlines()
    paths = _gateway_value_paths()
    assert {"gateway.replicas", "gateway.resources", "gateway.hold.maxPerModel", "gateway.maxBodyBytes",
            "gateway.pdb.maxUnavailable"} <= paths
    for path in sorted(paths):
        node: Any = values
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"{path} is read by a template, not in values"
            node = node[part]
        # The key's own line, or one of its parents', is right below a comment block that starts
        # with `# --` (helm-docs' convention).
        documented, indent, start = False, 0, 0
        for part in path.split("."):
            at = next(i for i in range(start, len(lines)) if lines[i].startswith(" " * indent + part + ":"))
            first = at
            while first > 0 and lines[first - 1].strip().startswith("#"):
                first -= 1
            documented = documented or (first < at and lines[first].strip().startswith("# --"))
            start, indent = at + 1, indent + 2
        assert documented, f"{path}: no `# --` comment on it or a parent in values.yaml"


# --- the operator Deployment -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_deployment_runs_modelplane_run_with_flags_its_parser_accepts(name: str,
                                                                      rendered: dict[str, Any]) -> None:
    values = VALUE_SETS[name]
    container = _container(rendered[name])
    assert container["command"] == ["modelplane"]
    args = build_parser().parse_args(container["args"])
    assert args.command == "run"
    metrics = values.get("metrics", {})
    assert args.metrics_port == metrics.get("port", 8080)
    assert args.metrics_host == metrics.get("host", "0.0.0.0")
    assert args.health_port == (metrics.get("healthPort") or None)
    assert args.metrics_auth == ("kubernetes" if metrics.get("authentication", {}).get("enabled", True)
                                 else "none")
    operator = values.get("operator", {})
    assert args.hf_endpoint == (operator.get("hfEndpoint") or None)
    assert args.no_model_config is not operator.get("readModelConfig", True)
    assert container["args"][len(container["args"]) - len(operator.get("extraArgs", [])):] == \
        operator.get("extraArgs", [])
    if operator.get("extraArgs"):
        assert args.prometheus_namespace_label == "kubernetes_namespace"
    assert args.resync_seconds == values.get("resyncSeconds", 2)
    assert args.log_level == values.get("logLevel", "INFO")
    assert args.namespace == values.get("watchNamespaces", [])
    if values.get("gateway", {}).get("enabled", True):
        gateway_pod = one(rendered[name], "Deployment", GATEWAY, NAMESPACE)["spec"]["template"]
        labels = gateway_pod["metadata"]["labels"]
        selector = dict(term.split("=", 1) for term in args.gateway_selector.split(","))
        assert selector.items() <= labels.items(), "the operator finds the gateway's pods"
        assert args.gateway_namespace == NAMESPACE
        assert args.gateway_scrape_seconds == values.get("gateway", {}).get("heldScrapeSeconds", 0.25)
    else:
        assert args.gateway_selector is None and not args.gateway_metrics_url
    image = values.get("image", {})
    repository, tag = image.get("repository", "modelplane/operator"), image.get("tag", "0.1.0")
    assert container["image"] == f"{repository}:{tag}"
    if values.get("gpuPrices"):
        assert args.prices == Path("/etc/modelplane/prices/prices.yaml")
    else:
        assert args.prices is None
    prom = values.get("prometheusSource", {})
    source = prometheus_source(args)
    if prom.get("url"):
        assert source is not None
        assert (source.url, source.pod_label, source.namespace_label, source.max_age_seconds) == (
            prom["url"], prom.get("podLabel", "pod"), prom.get("namespaceLabel", "namespace"),
            prom.get("maxAgeSeconds", 120))
        pod = _deployment(rendered[name])["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        if prom.get("tokenSecret"):
            assert source.bearer_token_file == Path(mounts["prometheus-token"]) / "token"
            assert volumes["prometheus-token"]["secret"]["secretName"] == prom["tokenSecret"]
    else:
        assert source is None
        assert "prometheus-token" not in {m["name"] for m in container.get("volumeMounts", [])}


@pytest.mark.parametrize("name", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_deployment_is_non_root_read_only_and_probed_on_healthz(name: str, rendered: dict[str, Any]) -> None:
    values = VALUE_SETS[name]
    pod = _deployment(rendered[name])["spec"]["template"]["spec"]
    container = _container(rendered[name])
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    port = values.get("metrics", {}).get("port", 8080)
    health = values.get("metrics", {}).get("healthPort")
    assert container["ports"][0] == {"name": "metrics", "containerPort": port, "protocol": "TCP"}
    if health:
        assert container["ports"][1:] == [{"name": "health", "containerPort": health, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health" if health else "metrics"}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    # The read-only root needs a writable /tmp.
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    service = one(rendered[name], "Service", f"{FULLNAME}-metrics", NAMESPACE)
    assert service["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": "metrics",
                                         "protocol": "TCP"}]
    assert service["spec"]["selector"] == _deployment(rendered[name])["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize(("name", "strategy"), [("default", "Recreate"), ("ha", "RollingUpdate")],
                         ids=["single-replica-recreates", "ha-rolls"])
def test_upgrade_strategy(name: str, strategy: str, rendered: dict[str, Any]) -> None:
    assert _deployment(rendered[name])["spec"]["strategy"]["type"] == strategy


# --- HA: kopf peering ------------------------------------------------------------------------------


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


@pytest.mark.parametrize(("name", "kind", "namespaces"), [
    ("ha", "ClusterKopfPeering", [None]),
    ("ha-namespaced", "KopfPeering", ["a", "b"]),
], ids=["cluster-wide", "namespaced"])
def test_ha_sets_peering_and_creates_the_peering_object(name: str, kind: str, namespaces: list[str | None],
                                                        rendered: dict[str, Any]) -> None:
    manifests = rendered[name]
    assert _deployment(manifests)["spec"]["replicas"] == VALUE_SETS[name]["replicas"]
    peering = _env(_container(manifests))["MODELPLANE_PEERING"]
    objects = pick(manifests, kind)
    assert [o["metadata"]["name"] for o in objects] == [peering] * len(namespaces)
    assert [o["metadata"].get("namespace") for o in objects] == namespaces
    assert all(o["apiVersion"] == "kopf.dev/v1" for o in objects)


def test_without_ha_there_is_no_peering() -> None:
    manifests = render({}, release=RELEASE, namespace=NAMESPACE)
    assert "MODELPLANE_PEERING" not in _env(_container(manifests))
    assert not pick(manifests, "ClusterKopfPeering") and not pick(manifests, "KopfPeering")


def test_peering_crds_serve_the_kinds_kopf_uses() -> None:
    crds = {d["spec"]["names"]["plural"]: d for d in
            yaml.safe_load_all((CHART / "crds" / "kopfpeerings.kopf.dev.yaml").read_text())}
    assert set(crds) == {"clusterkopfpeerings", "kopfpeerings"}
    assert crds["clusterkopfpeerings"]["spec"]["scope"] == "Cluster"
    assert crds["kopfpeerings"]["spec"]["scope"] == "Namespaced"
    for crd in crds.values():
        assert crd["spec"]["group"] == "kopf.dev"
        assert [v["name"] for v in crd["spec"]["versions"]] == ["v1"]


# --- refused values --------------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "message"), [
    ({"replicas": 2}, "replicas > 1 needs ha.enabled=true"),
    ({"gpuPrices": {"nvidia-b200": 5.0}}, "at '/gpuPrices': additional properties 'nvidia-b200' not allowed"),
    ({"gpuPrices": {"nvidia-l4": -1}}, "at '/gpuPrices/nvidia-l4': minimum: got -1, want 0"),
    ({"serviceMonitor": {"enabled": True}, "metrics": {"service": {"enabled": False}}},
     "serviceMonitor.enabled needs metrics.service.enabled"),
    ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
    ({"gateway": {"replicas": 0}}, "gateway.replicas must be >= 1"),
    ({"gateway": {"workers": 0}}, "gateway.workers must be >= 1"),
], ids=["replicas-without-ha", "unknown-gpu-price", "negative-price", "monitor-without-service",
        "no-service-account-name", "no-gateway-replica", "no-gateway-worker"])
def test_refused_values_say_why(values: dict[str, Any], message: str) -> None:
    from tests.chart import HelmError

    with pytest.raises(HelmError, match=re.escape(message)):
        render(values)


# --- prices, metrics, dashboard --------------------------------------------------------------------


def test_gpu_prices_configmap_is_what_modelplane_run_loads(rendered: dict[str, Any], tmp_path: Path) -> None:
    manifests = rendered["observability"]
    cm = one(manifests, "ConfigMap", f"{FULLNAME}-prices", NAMESPACE)
    prices = tmp_path / "prices.yaml"
    prices.write_text(cm["data"]["prices.yaml"])
    assert load_prices(prices) == {"nvidia-h100-80gb": 2.49, "nvidia-l4": 0.7}
    pod = _deployment(manifests)["spec"]["template"]["spec"]
    assert {"name": "prices", "configMap": {"name": f"{FULLNAME}-prices"}} in pod["volumes"]
    assert "checksum/prices" in _deployment(manifests)["spec"]["template"]["metadata"]["annotations"]


def test_chart_knows_the_same_gpu_types_as_the_catalog() -> None:
    text = (CHART / "templates" / "prices-configmap.yaml").read_text()
    listed = re.search(r"\$known := list (.*?) \}\}", text)
    assert listed is not None
    assert tuple(re.findall(r'"([^"]+)"', listed.group(1))) == gpus.GPU_TYPE_NAMES


def test_service_monitor_scrapes_the_metrics_port(rendered: dict[str, Any]) -> None:
    monitor = one(rendered["observability"], "ServiceMonitor", FULLNAME, NAMESPACE)
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s",
                                             "scrapeTimeout": "10s", "bearerTokenFile": SA_TOKEN}]
    private = one(rendered["metrics-private"], "ServiceMonitor", FULLNAME, NAMESPACE)
    assert "bearerTokenFile" not in private["spec"]["endpoints"][0]
    assert monitor["spec"]["selector"]["matchLabels"] == \
        _deployment(rendered["observability"])["spec"]["selector"]["matchLabels"]
    assert not pick(rendered["default"], "ServiceMonitor")


SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def test_the_operator_env_has_the_proxy_and_the_extra_variables(rendered: dict[str, Any]) -> None:
    env = _container(rendered["operator-flags"])["env"]
    names = [e["name"] for e in env]
    assert names[-5:] == ["HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "A", "B"]
    assert _env(_container(rendered["operator-flags"]))["NO_PROXY"] == ".svc,.cluster.local,prom.internal"
    assert "HTTPS_PROXY" not in _env(_container(rendered["default"]))


@pytest.mark.parametrize(("name", "readers"), [
    ("default", None), ("metrics-private", "no role"),
    ("metrics-readers", [{"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"}])])
def test_metrics_readers(name: str, readers: Any, rendered: dict[str, Any]) -> None:
    roles = pick(rendered[name], "ClusterRole", f"{FULLNAME}-metrics-reader")
    bindings = pick(rendered[name], "ClusterRoleBinding", f"{FULLNAME}-metrics-reader")
    if readers == "no role":
        assert not roles and not bindings
        return
    assert [r["rules"] for r in roles] == [[{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]]
    assert [b["subjects"] for b in bindings] == ([readers] if readers else [])


@pytest.mark.parametrize(("name", "namespaces"), [("prometheus", {"any": True}),
                                                  ("prometheus-namespaced", {"matchNames": ["a"]}),
                                                  ("prometheus-no-podmonitor", None), ("default", None)])
def test_pod_monitor_scrapes_the_vllm_pods(name: str, namespaces: Any, rendered: dict[str, Any]) -> None:
    from modelplane import render as mp_render

    monitors = pick(rendered[name], "PodMonitor")
    if namespaces is None:
        assert not monitors
        return
    (monitor,) = monitors
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"] == {mp_render.LABEL_NAME: mp_render.APP_NAME,
                                                          mp_render.LABEL_COMPONENT: mp_render.COMPONENT}
    assert monitor["spec"]["namespaceSelector"] == namespaces
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == (mp_render.PORT_NAME, "/metrics")


def test_set_string_of_a_price_fails_with_the_schemas_message() -> None:
    from tests.chart import helm

    proc = helm("template", "mp", str(CHART), "--set-string", "gpuPrices.nvidia-l4=abc")
    assert proc.returncode != 0
    assert "at '/gpuPrices/nvidia-l4': got string, want number" in proc.stderr


@pytest.mark.parametrize(("values", "message"), [
    ({"logLevel": "loud"}, "at '/logLevel': value must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR'"),
    ({"metrics": {"port": 0}}, "at '/metrics/port': minimum: got 0, want 1"),
    ({"metricz": {"port": 1}}, "additional properties 'metricz' not allowed"),
    ({"resyncSeconds": "2"}, "at '/resyncSeconds': got string, want number"),
    ({"operator": {"extraArgs": ["run"]}}, "at '/operator/extraArgs/0'"),
    ({"proxy": {"httpsProxy": "proxy:3128"}}, "at '/proxy/httpsProxy'"),
    ({"serviceMonitor": {"interval": "often"}}, "at '/serviceMonitor/interval'"),
], ids=["log-level", "port-0", "typo", "resync-string", "extra-arg-not-a-flag", "proxy-no-scheme",
        "interval"])
def test_the_schema_refuses_bad_values(values: dict[str, Any], message: str) -> None:
    from tests.chart import HelmError

    with pytest.raises(HelmError, match=re.escape(message)):
        render(values)


def test_the_schema_knows_the_same_gpu_types_as_the_catalog() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert tuple(schema["properties"]["gpuPrices"]["properties"]) == gpus.GPU_TYPE_NAMES


def _exposed_metric_names() -> set[str]:
    names: set[str] = set()
    for family in opmetrics.REGISTRY.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def test_grafana_dashboard_queries_only_metrics_the_operator_exports(rendered: dict[str, Any]) -> None:
    cm = one(rendered["observability"], "ConfigMap", f"{FULLNAME}-dashboard", NAMESPACE)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["modelplane.json"])
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\b(modelplane_[a-z_]+)\b", expr)}
    assert used <= _exposed_metric_names(), used - _exposed_metric_names()
    # The panels the brief asks for: desired vs ready, queue depth, $/hour, errors, rollout decisions.
    for metric in ("modelplane_desired_replicas", "modelplane_ready_replicas", "modelplane_queue_depth",
                   "modelplane_fleet_hourly_usd", "modelplane_reconcile_errors_total",
                   "modelplane_rollout_decisions_total"):
        assert metric in used
    assert not pick(rendered["default"], "ConfigMap")


# --- CRDs ------------------------------------------------------------------------------------------


def test_chart_crd_is_the_generated_crd() -> None:
    """The chart's copy of crds/; after `make crds`, copy it: cp crds/*.yaml charts/modelplane/crds/."""
    generated = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    assert generated
    for name in generated:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), name


def test_include_crds_renders_the_crds() -> None:
    manifests = render({}, include_crds=True)
    names = {m["metadata"]["name"] for m in pick(manifests, "CustomResourceDefinition")}
    assert names == {"modeldeployments.modelplane.dev", "modelroutes.modelplane.dev",
                     "modeladapters.modelplane.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
