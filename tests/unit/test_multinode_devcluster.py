"""The dev cluster's LeaderWorkerSet parts that need no cluster: the webhook registrations, the
controller's configuration, the serving certificate, the multinode profile, the simulator's flags."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from modelplane_dev.devcluster import lws as dev_lws
from modelplane_dev.devcluster.cluster import load_profiles
from modelplane_dev.devcluster.pki import issue_serving_cert, write_pki
from modelplane_dev.sim.config import parse_vllm_args


def test_webhooks_call_the_controller_on_loopback_with_the_cluster_ca() -> None:
    docs = dev_lws.webhook_configurations(9443, b"CA PEM")
    assert [d["kind"] for d in docs] == ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
    hooks = [h for d in docs for h in d["webhooks"]]
    assert {h["name"] for h in hooks} == {"mleaderworkerset.kb.io", "mpod.kb.io", "vleaderworkerset.kb.io",
                                          "vpod.kb.io"}
    for hook in hooks:
        assert hook["clientConfig"]["url"].startswith("https://127.0.0.1:9443/")
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == b"CA PEM"
        # Only a LeaderWorkerSet's pods go through the pod webhooks: every other pod is untouched.
        is_pod = hook["rules"][0]["resources"] == ["pods"]
        assert ("objectSelector" in hook) is is_pod


def test_controller_config_uses_issued_certificates_and_no_leader_election(tmp_path: Path) -> None:
    config = dev_lws.controller_config(webhook_port=1, health_port=2, cert_dir=tmp_path)
    assert config["internalCertManagement"] == {"enable": False}
    assert config["leaderElection"] == {"leaderElect": False}
    assert config["webhook"] == {"host": "127.0.0.1", "port": 1, "certDir": str(tmp_path)}
    assert config["health"]["healthProbeBindAddress"] == "127.0.0.1:2"


def test_the_webhook_certificate_is_signed_by_the_cluster_ca_for_loopback(tmp_path: Path) -> None:
    write_pki(tmp_path / "pki")
    issue_serving_cert(tmp_path / "pki", tmp_path / "certs", "lws-webhook")
    ca = x509.load_pem_x509_certificate((tmp_path / "pki" / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "certs" / "tls.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert (tmp_path / "certs" / "tls.key").is_file()


def test_the_multinode_profile_holds_two_groups_of_two_h100_nodes() -> None:
    groups = load_profiles()["multinode"]
    h100 = [g for g in groups if g.gpu == "nvidia-h100-80gb"]
    assert sum(g.count for g in h100) >= 4 and all(g.gpus == 8 for g in h100)


@pytest.mark.parametrize(("args", "tp", "pp"), [
    (["vllm", "serve", "m", "--tensor-parallel-size", "8", "--pipeline-parallel-size", "2", "--nnodes", "2",
      "--node-rank", "0", "--master-addr", "$(LWS_LEADER_ADDRESS)", "--master-port", "29501"], 8, 2),
    (["vllm", "serve", "m", "-tp", "4", "-pp", "4", "--headless"], 4, 4),
    (["vllm", "serve", "m"], 1, 1),
], ids=["leader", "short-flags-headless", "single"])
def test_the_simulator_reads_pipeline_stages(args: list[str], tp: int, pp: int) -> None:
    config = parse_vllm_args(args)
    assert (config.tensor_parallel_size, config.pipeline_parallel_size, config.gpus) == (tp, pp, tp * pp)
    assert config.model == "m"


def test_cluster_up_with_lws_starts_the_controller(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from modelplane.cli import build_parser
    from modelplane_dev.devcluster.cluster import DevCluster

    class Up:
        bin_dir, kubeconfig = str(tmp_path / "bin"), str(tmp_path / "kubeconfig")

    ensured: list[Path] = []
    monkeypatch.setattr(DevCluster, "up", lambda self, options: Up())
    monkeypatch.setattr(dev_lws, "ensure", lambda cluster: ensured.append(cluster.run_dir))
    for argv, calls in ((["cluster", "--dir", str(tmp_path), "up"], 0),
                        (["cluster", "--dir", str(tmp_path), "up", "--with-lws"], 1)):
        ensured.clear()
        args = build_parser().parse_args(argv)
        assert args.func(args) == 0
        assert len(ensured) == calls


def test_the_operator_wakes_on_the_crd_and_on_a_recreated_group() -> None:
    from modelplane import lws
    from modelplane.controller.loop import Controller, Settings

    controller = Controller(None, Settings(namespaces=("a",)))  # type: ignore[arg-type]  # never runs
    body = {"metadata": {"name": "r1", "namespace": "a"}, "spec": {}}
    controller.known = {("a", "r1"): body, ("a", "other"): body}
    controller._on_group_api_change()  # noqa: SLF001
    assert set(controller._due) == {("a", "r1"), ("a", "other")}  # noqa: SLF001
    controller._due.clear()  # noqa: SLF001
    group = {"metadata": {"name": "r1-abc", "namespace": "a", "resourceVersion": "1",
                          "labels": {"modelplane.dev/model-deployment": "r1"}}}
    controller.informers["leaderworkersets"][0]._replace([group])  # noqa: SLF001
    involved = {"kind": lws.KIND, "namespace": "a", "name": "r1-abc"}
    event: dict[str, Any] = {"reason": lws.RECREATE_GROUP_REASON, "involvedObject": involved}
    controller._on_group_event("ADDED", event)  # noqa: SLF001
    assert set(controller._due) == {("a", "r1")}  # noqa: SLF001
    # An Event about another kind of object with that name wakes nothing.
    controller._due.clear()  # noqa: SLF001
    about_a_pod = {**event, "involvedObject": {**involved, "kind": "Pod"}}
    controller._on_group_event("ADDED", about_a_pod)  # noqa: SLF001
    assert not controller._due  # noqa: SLF001
