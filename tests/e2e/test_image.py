"""The operator image, built by ``make image`` (hack/image/build.sh), started from its own entrypoint
with ``buildah run --isolation chroot`` against the dev cluster.

As the chart runs it: as the image's non-root user (uid 10001), on a read-only root filesystem with
a writable ``/tmp`` (a tmpfs, the chart's emptyDir). Chroot isolation shares the host's network, so
the operator reaches the dev cluster and the loopback Hub mirror, and the test reaches its /healthz.

Read-only root filesystem, as near as chroot isolation gets: buildah refuses a read-only bind of the
whole root (it creates its own mount points, /run/.containerenv, in it), so every top-level directory
of the image (/usr, /etc, /opt, /var, ...) is bound read-only onto itself, and /run/lock too; ``/``
itself is root's (0755), so uid 10001 cannot create anything there. The test checks each of these is
unwritable before it starts the operator.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelplane.controller import kube
from tests.clusterfixtures import ClusterHandle
from tests.e2e.test_examples_on_cluster import model_deployment, referenced_objects, wait_settled
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
#: A warm build (cached base and layers) takes seconds; a cold one runs mmdebstrap and pip.
BUILD_TIMEOUT_SECONDS = 1200
#: Top-level entries that the runtime provides (chroot isolation mounts its own /proc, /sys, /dev;
#: /tmp is the writable tmpfs; /run holds buildah's mount points, its /run/lock is bound separately).
RUNTIME_DIRS = frozenset({"proc", "sys", "dev", "tmp", "run"})
IMAGE_UID = 10001
EXAMPLE = "mistral-7b.yaml"


def read_only_binds(rootfs: Path) -> list[str]:
    """``--mount`` options that bind each real top-level directory of ``rootfs`` read-only onto itself."""
    binds = []
    for entry in sorted(rootfs.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and entry.name not in RUNTIME_DIRS:
            binds.append(f"type=bind,source={entry},destination=/{entry.name},ro=true")
    if (rootfs / "run" / "lock").is_dir():
        binds.append(f"type=bind,source={rootfs / 'run' / 'lock'},destination=/run/lock,ro=true")
    return binds


def buildah(*args: str, timeout: float = 60) -> str:
    proc = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, f"buildah {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def image() -> str:
    """``make image``'s build (without make, so the venv's Python writes the SBOM)."""
    proc = subprocess.run(["bash", str(REPO / "hack" / "image" / "build.sh")], cwd=REPO,
                          env=dict(os.environ, PYTHON=sys.executable), capture_output=True,
                          text=True, timeout=BUILD_TIMEOUT_SECONDS, check=False)
    assert proc.returncode == 0, f"hack/image/build.sh failed:\n{proc.stderr[-4000:]}"
    return proc.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Container:
    name: str
    config: dict[str, Any]  #: the image's OCI config (Entrypoint, Cmd, User, Env)
    mounts: tuple[str, ...]  #: the read-only root and the writable /tmp

    def run_args(self, *extra_mounts: str, env: tuple[str, ...] = ()) -> list[str]:
        return ["buildah", "run", "--isolation", "chroot", *(arg for e in env for arg in ("--env", e)),
                *(arg for m in (*self.mounts, *extra_mounts) for arg in ("--mount", m)), self.name, "--"]


@pytest.fixture
def container(image: str) -> Iterator[Container]:
    name = buildah("from", "--pull-never", image)
    try:
        rootfs = Path(buildah("mount", name))
        config = json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"]
        yield Container(name, config, (*read_only_binds(rootfs), "type=tmpfs,destination=/tmp"))
    finally:
        buildah("rm", name)


def test_the_image_runs_as_uid_10001_on_a_read_only_root(container: Container) -> None:
    assert container.config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert container.config["Entrypoint"] == ["modelplane"]
    assert container.config["Cmd"] == ["run"]
    probe = ("id -u; for f in /x /usr/x /etc/x /opt/x /var/tmp/x /run/lock/x /tmp/x; do "
             "if touch $f 2>/dev/null; then echo $f writable; else echo $f refused; fi; done")
    out = subprocess.run([*container.run_args(), "sh", "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split("\n")
    assert out[0] == str(IMAGE_UID)
    assert out[1:8] == [f"{p} refused" for p in ("/x", "/usr/x", "/etc/x", "/opt/x", "/var/tmp/x",
                                                  "/run/lock/x")] + ["/tmp/x writable"]


def operator_uids(port: int) -> list[int]:
    """The real uids of the processes started with ``--metrics-port PORT``, buildah's own excepted:
    the operator inside the container."""
    needle = f"--metrics-port\0{port}\0".encode()
    uids = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            argv = (pid_dir / "cmdline").read_bytes()
            if needle not in argv or b"buildah" in argv.split(b"\0")[0]:
                continue
            for line in (pid_dir / "status").read_text().splitlines():
                if line.startswith("Uid:"):
                    uids.append(int(line.split()[1]))
        except OSError:
            continue
    return uids


@pytest.fixture
async def namespace(kube_client: kube.Kube) -> AsyncIterator[str]:
    """A namespace of this test alone: the session's operator (if another test started it) watches
    ``t<session>-*`` namespaces, and must not reconcile what the image's operator is tested on."""
    name = "image-" + hashlib.sha1(f"{os.getpid()}{time.time()}".encode()).hexdigest()[:8]
    await kube_client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    await kube_client.delete(kube.NAMESPACES, name)


async def test_the_images_entrypoint_reconciles_an_example_to_ready(
        container: Container, cluster: ClusterHandle, kube_client: kube.Kube, namespace: str,
        hf_endpoint: tuple[str, list[str]], crds: Path, tmp_path: Path) -> None:
    # The kubeconfig, readable by uid 10001 (the dev cluster's own is root's, 0600).
    kubeconfig = tmp_path / "kubeconfig"
    shutil.copyfile(cluster.kubeconfig, kubeconfig)
    kubeconfig.chmod(0o644)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [*container.run_args(f"type=bind,source={kubeconfig},destination=/tmp/kubeconfig,ro=true",
                                env=("KUBECONFIG=/tmp/kubeconfig",)),
            *container.config["Entrypoint"], *container.config["Cmd"],
            "--metrics-host", "127.0.0.1", "--metrics-port", str(port), "--resync-seconds", "1",
            "--namespace", namespace, "--hf-endpoint", hf_endpoint[0]]
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the image's operator exited with {proc.returncode}:\n"
                                 + log.read_text(errors="replace")[-3000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    try:
        wait_until(healthy, timeout=60, what=f"the image's /healthz on port {port}")
        assert operator_uids(port) == [IMAGE_UID]
        doc = model_deployment(EXAMPLE)
        for needed in referenced_objects(doc):
            obj = copy.deepcopy(needed)
            obj["metadata"]["namespace"] = namespace
            await kube_client.create(obj)
        md = copy.deepcopy(doc)
        md["metadata"]["namespace"] = namespace
        await kube_client.create(md)
        name = md["metadata"]["name"]
        try:
            await wait_settled(kube_client, namespace, {name: (EXAMPLE, 1)},
                               what=f"{EXAMPLE} to be Ready under the image's operator")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noperator log:\n{log.read_text(errors='replace')[-3000:]}") from None
        await kube_client.delete(kube.MODELDEPLOYMENTS, name, namespace=namespace)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
    assert operator_uids(port) == [], "the operator outlived its buildah run"
