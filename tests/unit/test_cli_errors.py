"""The ``modelplane`` command's ordinary failures: an exit code and one line that names the cause.

No kubeconfig, an unreadable or broken one, an API server that cannot be reached or that refuses,
an object that does not exist, a bad flag or ``--prices`` file: each is one line on stderr, never a
traceback. The commands run through ``cli.main`` (and once as a process) against a stand-in API
server on localhost.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from modelplane import __version__, cli

ROOT = Path(__file__).parents[2]


@dataclass
class FakeApiServer:
    """Answers every request with ``status`` and a Kubernetes Status (or the object on 200)."""

    status: int = 200
    url: str = ""
    patches: int = 0


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    fake = FakeApiServer()

    class Handler(BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:  # noqa: N802 — http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            fake.patches += 1
            reason = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 500: "InternalError"}
            body = {"kind": "ModelDeployment", "metadata": {"name": "chat"}} if fake.status == 200 else {
                "kind": "Status", "status": "Failure", "reason": reason.get(fake.status, "Unknown"),
                "message": 'modeldeployments.modelplane.dev "chat" is forbidden: User "dev" cannot\n'
                           'patch resource "modeldeployments" in the namespace "team-a"'}
            data = json.dumps(body).encode()
            self.send_response(fake.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


def kubeconfig(path: Path, server: str, **cluster: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": "dev", "namespace": "team-a"}}],
        "clusters": [{"name": "dev", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "dev", "user": {"token": "t"}}]}))
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _no_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No in-cluster credentials, and a home without ~/.kube."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- rollout controls --------------------------------------------------------------------------

# (how the kubeconfig is set up, the API server's answer, what the one line must say)
CONTROL_CASES: dict[str, tuple[str, int, str]] = {
    "no kubeconfig": ("none", 200, "cannot read kubeconfig {home}/.kube/config: No such file or directory"),
    "KUBECONFIG=/nope": ("/nope", 200, "cannot read kubeconfig /nope: No such file or directory"),
    "not YAML": ("not-yaml", 200, "is not YAML"),
    "a context without a server": ("no-server", 200, "which has no server"),
    "a CA file that is not there": ("ca-file", 200, "cannot read certificate-authority /nope/ca.crt"),
    "CA data that is no certificate": ("ca-data", 200, "TLS settings for https://"),
    "unreachable": ("closed", 200, "cannot reach the API server http://127.0.0.1:"),
    "not found": ("ok", 404, "modeldeployment chat in namespace team-a not found"),
    "forbidden": ("ok", 403, 'not allowed to patch modeldeployment chat in namespace team-a: 403 Forbidden: '
                             'modeldeployments.modelplane.dev "chat" is forbidden: User "dev" cannot patch'),
    "unauthorized": ("ok", 401, "the API server did not accept the credentials of context dev of "
                                "{tmp}/kubeconfig: 401 Unauthorized"),
    "server error": ("ok", 500, "the API server refused to patch modeldeployment chat in namespace team-a: "
                                "500 InternalError"),
}


def _setup(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api: FakeApiServer) -> None:
    path = tmp_path / "kubeconfig"
    if kind == "none":
        return
    if kind == "/nope":
        monkeypatch.setenv("KUBECONFIG", "/nope")
        return
    if kind == "not-yaml":
        path.write_text("{: bad")
    elif kind == "no-server":
        path.write_text("current-context: c\ncontexts: [{name: c, context: {cluster: gone, user: u}}]\n")
    elif kind == "ca-file":
        kubeconfig(path, "https://127.0.0.1:6443", **{"certificate-authority": "/nope/ca.crt"})
    elif kind == "ca-data":
        kubeconfig(path, "https://127.0.0.1:6443",
                   **{"certificate-authority-data": base64.b64encode(b"garbage").decode()})
    elif kind == "closed":
        kubeconfig(path, f"http://127.0.0.1:{closed_port()}")
    else:
        kubeconfig(path, api.url)
    monkeypatch.setenv("KUBECONFIG", str(path))


@pytest.mark.parametrize(("kind", "status", "message"), list(CONTROL_CASES.values()), ids=list(CONTROL_CASES))
@pytest.mark.parametrize("command", ["promote", "pause", "resume", "abort"])
def test_a_rollout_control_that_cannot_act_says_why_in_one_line(
        command: str, kind: str, status: int, message: str, api_server: FakeApiServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _setup(kind, tmp_path, monkeypatch, api_server)
    api_server.status = status
    assert cli.main([command, "chat"]) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"modelplane {command}: ")
    assert message.format(home=tmp_path / "home", tmp=tmp_path) in line


def test_a_rollout_control_that_acts_says_what_it_set(api_server: FakeApiServer, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _setup("ok", tmp_path, monkeypatch, api_server)
    assert cli.main(["pause", "chat", "-n", "team-a"]) == 0
    assert api_server.patches == 1
    assert "modelplane.dev/rollout-control=pause@" in capsys.readouterr().out


def test_kubectl_modelplane_fails_the_same_way(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from modelplane.rollout.controls import kubectl_plugin

    monkeypatch.setenv("KUBECONFIG", "/nope")
    assert kubectl_plugin(["promote", "chat", "-n", "team-a"]) == 1
    assert one_error_line(capsys) == ("modelplane promote: cannot read kubeconfig /nope: No such file or "
                                      "directory (set KUBECONFIG or create ~/.kube/config)")


@pytest.mark.parametrize("argv", [["promote", "chat"], ["run", "--metrics-port", "0"], ["get", "chat"],
                                  ["get", "chat", "--watch"], ["gateway"]],
                         ids=["promote", "run", "get", "get-watch", "gateway"])
def test_the_installed_command_prints_no_traceback(argv: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": "/nope", "HOME": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "devtools"), str(ROOT)])}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    done = subprocess.run([sys.executable, "-m", "modelplane.cli", *argv], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr == f"modelplane {argv[0]}: cannot read kubeconfig /nope: No such file or directory " \
                          "(set KUBECONFIG or create ~/.kube/config)\n"


# --- modelplane run: what stops it at start ------------------------------------------------------

PRICES = {
    "missing": (None, "cannot read it: No such file or directory"),
    "not YAML": ("{: bad", "not JSON or YAML: expected the node content"),
    "not a mapping": ("- 1\n- 2\n", "expected a mapping of GPU type to $/GPU-hour"),
    "not a number": ("nvidia-h100-80gb: cheap\n", "the price of nvidia-h100-80gb must be a number"),
    "unknown type": ("nvidia-h999: 1.0\n", "unknown GPU types in price overrides: nvidia-h999"),
    "negative": ('{"nvidia-l4": -1}', "price of nvidia-l4 must be >= 0"),
}


@pytest.mark.parametrize(("content", "message"), list(PRICES.values()), ids=list(PRICES))
def test_modelplane_run_refuses_a_bad_prices_file_in_one_line(
        content: str | None, message: str, tmp_path: Path, api_server: FakeApiServer,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kubeconfig", api_server.url)))
    prices = tmp_path / "prices.yaml"
    if content is not None:
        prices.write_text(content)
    assert cli.main(["run", "--metrics-port", "0", "--prices", str(prices)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"modelplane run: --prices {prices}: ") and message in line
    assert api_server.patches == 0


RUN_FLAGS = {
    "resync 0": (["--resync-seconds", "0"], "--resync-seconds must be a number of seconds > 0"),
    "port out of range": (["--metrics-port", "70000"], "--metrics-port must be 0 (off) or a port"),
    "port not a number": (["--metrics-port", "x"], "error: argument --metrics-port: invalid int"),
    "log level": (["--log-level", "loud"], "error: argument --log-level: invalid choice: 'LOUD'"),
    "unknown flag": (["--frobnicate", "2"], "error: unrecognized arguments: --frobnicate 2"),
    "prometheus url": (["--prometheus-url", "prom:9090"], "--prometheus-*: Prometheus URL must"),
}


@pytest.mark.parametrize(("flags", "message"), list(RUN_FLAGS.values()), ids=list(RUN_FLAGS))
def test_modelplane_run_refuses_a_bad_flag_in_one_line(
        flags: list[str], message: str, tmp_path: Path, api_server: FakeApiServer,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kubeconfig", api_server.url)))
    try:
        code = cli.main(["run", *flags])
    except SystemExit as exc:  # argparse's own refusals exit from parse_args
        code = int(exc.code or 0)
    assert code == 2
    assert one_error_line(capsys).startswith(f"modelplane run: {message}")


@pytest.mark.parametrize(("kind", "message"), [
    ("none", "cannot read kubeconfig {home}/.kube/config: No such file or directory (set KUBECONFIG"),
    ("/nope", "cannot read kubeconfig /nope: No such file or directory"),
    ("not-yaml", "is not YAML: expected the node content, but found ':' (line 1, column 2)"),
    ("no-server", "context 'c' names cluster 'gone', which has no server"),
    ("ca-data", "the TLS settings for https://127.0.0.1:6443 (certificate-authority, client-certificate or "
                "client-key) cannot be used"),
], ids=["no kubeconfig", "KUBECONFIG=/nope", "not YAML", "no server", "bad CA data"])
def test_modelplane_run_without_usable_credentials_says_why_in_one_line(
        kind: str, message: str, tmp_path: Path, api_server: FakeApiServer, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _setup(kind, tmp_path, monkeypatch, api_server)
    assert cli.main(["run", "--metrics-port", "0"]) == 1
    line = one_error_line(capsys)
    assert line.startswith("modelplane run: ") and message.format(home=tmp_path / "home") in line


def test_modelplane_run_on_a_port_in_use_says_so_in_one_line(
        tmp_path: Path, api_server: FakeApiServer, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kubeconfig", api_server.url)))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["run", "--metrics-host", "127.0.0.1", "--metrics-port", str(port)]) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"modelplane run: cannot serve /healthz and /metrics on 127.0.0.1:{port}: ")
    assert "address already in use" in line


# --- the command itself -----------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"modelplane {__version__}\n"


def test_no_command_is_one_line_that_points_at_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([])
    assert exited.value.code == 2
    assert one_error_line(capsys) == ("modelplane: error: the following arguments are required: COMMAND "
                                      "(see modelplane --help)")
