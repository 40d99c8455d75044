"""Pure parts of the dev cluster: profiles, node manifests, kwok stages, durations."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelplane import gpus
from modelplane_dev.devcluster.cluster import (
    DevCluster,
    DevClusterError,
    NodeGroup,
    build_kwok_config,
    build_nodes,
    load_profiles,
    parse_duration_ms,
    pod_cidr_for,
)


def test_default_profile_has_the_fleet_the_issue_asks_for() -> None:
    groups = {g.name: g for g in load_profiles()["default"]}
    assert (groups["h100"].count, groups["h100"].gpus, groups["h100"].gpu) == (2, 8, "nvidia-h100-80gb")
    assert (groups["h200"].count, groups["h200"].gpus) == (1, 8)
    assert (groups["l40s"].count, groups["l40s"].gpus) == (2, 4)
    assert (groups["l4"].count, groups["l4"].gpus) == (4, 1)
    assert (groups["cpu"].count, groups["cpu"].gpu) == (2, None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"nodes": [{"name": "x", "gpu": "nvidia-b200", "gpus": 8, "cpu": "1", "memory": "1Gi"}]},
         "unknown GPU type 'nvidia-b200'"),
        ({"nodes": [{"name": "x", "count": 0, "cpu": "1", "memory": "1Gi"}]}, "count must be >= 1"),
        ({"nodes": [{"name": "x", "gpu": "nvidia-l4", "gpus": 0, "cpu": "1", "memory": "1Gi"}]},
         "gpus 1..16"),
    ],
    ids=["unknown-gpu", "zero-count", "gpu-node-without-gpus"],
)
def test_bad_profiles_are_refused_with_the_cause(tmp_path: Path, body: dict[str, object],
                                                 message: str) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text(yaml.safe_dump({"profiles": {"bad": body}}))
    with pytest.raises(DevClusterError, match=message):
        load_profiles(path)


@pytest.mark.parametrize(
    ("group", "expect_gpu"),
    [
        (NodeGroup("l4", 2, "16", "64Gi", "g6.4xlarge", "nvidia-l4", 1), "1"),
        (NodeGroup("h100", 1, "192", "2048Gi", "p5.48xlarge", "nvidia-h100-80gb", 8), "8"),
        (NodeGroup("cpu", 1, "16", "64Gi", "m7i.4xlarge"), None),
    ],
    ids=["l4", "h100", "cpu-only"],
)
def test_nodes_carry_gpu_feature_discovery_labels_taint_and_capacity(
        group: NodeGroup, expect_gpu: str | None) -> None:
    nodes = build_nodes([group])
    assert [n["metadata"]["name"] for n in nodes] == [f"kwok-{group.name}-{i}" for i in range(group.count)]
    node = nodes[0]
    labels = node["metadata"]["labels"]
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert node["status"]["capacity"]["cpu"] == group.cpu
    assert node["status"]["allocatable"]["memory"] == group.memory
    assert node["status"]["capacity"].get(gpus.GPU_RESOURCE) == expect_gpu
    if expect_gpu is None:
        assert gpus.PRODUCT_LABEL not in labels
        assert node["spec"] == {}
    else:
        assert group.gpu is not None
        gpu = gpus.GPU_TYPES[group.gpu]
        assert labels[gpus.PRODUCT_LABEL] == gpu.product
        assert labels[gpus.COUNT_LABEL] == expect_gpu
        assert labels[gpus.MEMORY_LABEL] == str(gpu.memory_mib)
        assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present",
                                           "effect": "NoSchedule"}]


def test_kwok_config_replaces_pod_stages_with_a_model_load_delay() -> None:
    docs = list(yaml.safe_load_all(build_kwok_config(ready_delay_ms=20_000, ready_jitter_ms=5_000)))
    assert docs[0]["kind"] == "KwokConfiguration"
    assert docs[0]["options"]["cidr"].startswith("127.")
    stages = {d["metadata"]["name"]: d["spec"] for d in docs[1:]}
    assert set(stages) == {"node-initialize", "node-heartbeat", "pod-create", "pod-ready",
                           "pod-complete", "pod-delete"}
    ready = stages["pod-ready"]["delay"]
    assert ready["durationMilliseconds"] == 20_000
    assert ready["jitterDurationMilliseconds"] == 25_000  # kwok's jitter is an absolute upper bound
    assert "pod-ready.stage.kwok.x-k8s.io/delay" in ready["durationFrom"]["expressionFrom"]
    assert stages["pod-delete"]["next"] == {"delete": True}


@pytest.mark.parametrize(
    ("text", "ms"),
    [("20s", 20_000), ("500ms", 500), ("1m", 60_000), ("2", 2_000), ("0.5s", 500), ("0s", 0)],
)
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["abc", "-1s", "s"])
def test_parse_duration_refuses_garbage(text: str) -> None:
    with pytest.raises(DevClusterError):
        parse_duration_ms(text)


@pytest.mark.parametrize(("action", "component", "error"), [
    ("kill", "kubelet", "unknown component 'kubelet'; known: etcd, kube-apiserver"),
    ("start", "kubelet", "unknown component 'kubelet'; known: etcd, kube-apiserver"),
    ("kill", "kube-apiserver", "kube-apiserver is not running in"),
    ("start", "kube-apiserver", "no dev cluster runs in"),
])
def test_one_component_at_a_time_refuses_what_cannot_be_done(
        tmp_path: Path, action: str, component: str, error: str) -> None:
    cluster = DevCluster(tmp_path, log=lambda _: None)
    call = cluster.kill_component if action == "kill" else cluster.start_component
    with pytest.raises(DevClusterError, match=error):
        call(component)
    assert list(tmp_path.iterdir()) == []  # nothing was started or written


def test_each_run_directory_gets_its_own_pod_ip_range() -> None:
    """kwok hands out pod IPs in order from the start of its range: two clusters with one range
    would serve their first pods on the same IPs, and each one's pod agent would answer for both."""
    dirs = [Path(f"/work/{name}/.run/devcluster") for name in ("main", "wt-a", "wt-b", "wt-c")]
    cidrs = [pod_cidr_for(d) for d in dirs]
    assert len(set(cidrs)) == len(dirs)  # these four differ (any two collide 1 time in 128)
    for cidr in cidrs:
        second = int(cidr.split(".")[1])
        assert cidr == f"127.{second}.0.0/16" and 64 <= second <= 191
    assert pod_cidr_for(dirs[0]) == cidrs[0]  # the same directory always gets the same range
    doc = next(yaml.safe_load_all(build_kwok_config(ready_delay_ms=0, ready_jitter_ms=0,
                                                    pod_cidr=cidrs[0])))
    assert doc["options"]["cidr"] == cidrs[0]
