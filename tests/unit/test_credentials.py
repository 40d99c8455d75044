"""Credentials by kubectl's rules, through the kubernetes client's loader (modelplane.controller.credentials).

Tables of kubeconfig setups: two contexts and ``--context``, a merged ``KUBECONFIG`` list (the first
file to set a key wins, ``current-context`` included), exec credential plugins (a script that prints
an ExecCredential: token or client certificate, v1 and v1beta1, env and args, refresh on expiry and
after a 401), the in-cluster ServiceAccount (its token rotates), and the one-line errors.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import stat
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web

from modelplane import cli
from modelplane.controller import credentials, kube

CA = base64.b64encode(b"ca-bytes").decode()


def write_config(path: Path, *, current: str | None, contexts: Mapping[str, tuple[str, str, str | None]],
                 clusters: Mapping[str, str], users: Mapping[str, Mapping[str, Any]]) -> Path:
    """A kubeconfig: contexts name → (cluster, user, namespace); clusters name → server."""
    doc: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config",
        "contexts": [{"name": n, "context": {"cluster": c, "user": u, **({"namespace": ns} if ns else {})}}
                     for n, (c, u, ns) in contexts.items()],
        "clusters": [{"name": n, "cluster": {"server": s}} for n, s in clusters.items()],
        "users": [{"name": n, "user": dict(u)} for n, u in users.items()],
    }
    if current:
        doc["current-context"] = current
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(autouse=True)
def _no_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


# --- two contexts, --context, a merged KUBECONFIG list ------------------------------------------

@pytest.fixture
def two_files(tmp_path: Path) -> tuple[Path, Path]:
    first = write_config(tmp_path / "first", current="prod",
                         contexts={"prod": ("prod", "alice", "team-a"), "dev": ("dev", "alice", None)},
                         clusters={"prod": "https://prod.example:6443", "dev": "http://127.0.0.1:1"},
                         users={"alice": {"token": "alice-token"}})
    second = write_config(tmp_path / "second", current="staging",
                          contexts={"staging": ("staging", "bob", "team-s"), "prod": ("other", "bob", "x")},
                          clusters={"staging": "https://staging.example:6443", "prod": "https://wrong:1"},
                          users={"bob": {"token": "bob-token"}, "alice": {"token": "wrong"}})
    return first, second


# (KUBECONFIG as a list of "first"/"second"/"missing", --kubeconfig, --context) →
# (server, namespace, Authorization)
CONTEXTS: dict[str, tuple[list[str], str | None, str | None, tuple[str, str, str]]] = {
    "one file, its current-context": (["first"], None, None,
                                      ("https://prod.example:6443", "team-a", "Bearer alice-token")),
    "one file, --context": (["first"], None, "dev", ("http://127.0.0.1:1", "default", "Bearer alice-token")),
    "a list: the first current-context wins": (["first", "second"], None, None,
                                               ("https://prod.example:6443", "team-a", "Bearer alice-token")),
    "a list, the other order": (["second", "first"], None, None,
                                ("https://staging.example:6443", "team-s", "Bearer bob-token")),
    "a list: a context of the second file": (["first", "second"], None, "staging",
                                             ("https://staging.example:6443", "team-s", "Bearer bob-token")),
    "a list: the first file's entries win by name": (["second", "first"], None, "dev",
                                                     ("http://127.0.0.1:1", "default", "Bearer wrong")),
    "a missing file in the list is skipped": (["missing", "second"], None, None,
                                              ("https://staging.example:6443", "team-s", "Bearer bob-token")),
    "--kubeconfig replaces KUBECONFIG": (["first"], "second", None,
                                         ("https://staging.example:6443", "team-s", "Bearer bob-token")),
}


@pytest.mark.parametrize(("listed", "flag", "context", "want"), list(CONTEXTS.values()), ids=list(CONTEXTS))
def test_kubectl_picks_the_context(listed: list[str], flag: str | None, context: str | None,
                                   want: tuple[str, str, str], two_files: tuple[Path, Path],
                                   tmp_path: Path) -> None:
    files = {"first": two_files[0], "second": two_files[1], "missing": tmp_path / "missing"}
    env = {"KUBECONFIG": os.pathsep.join(str(files[n]) for n in listed)}
    cfg = credentials.auto_config(kubeconfig=files[flag] if flag else None, context=context, env=env)
    assert cfg.auth is not None
    assert (cfg.server, cfg.namespace, cfg.auth.header()) == want


# (setup, --kubeconfig, --context) → what the one line says
ERRORS: dict[str, tuple[str, str | None, str | None, str]] = {
    "KUBECONFIG=/nope": ("/nope", None, None, "cannot read kubeconfig /nope: No such file or directory "
                                              "(set KUBECONFIG or create ~/.kube/config)"),
    "no file of a list exists": ("/nope:/nope2", None, None,
                                 "none of the kubeconfig files in KUBECONFIG exists: /nope:/nope2"),
    "--kubeconfig that is not there": (
        "", "/nope", None, "cannot read kubeconfig /nope: No such file or directory (--kubeconfig)"),
    "no ~/.kube/config": ("", None, None, "cannot read kubeconfig {home}/.kube/config: No such file"),
    "an unknown context": ("first", None, "nope", "has no context 'nope' (it has: prod, dev)"),
    "not YAML": ("bad-yaml", None, None, "is not YAML: "),
    "not a mapping": ("list", None, None, "is not a kubeconfig (a YAML mapping)"),
    "no current-context": ("no-current", None, None, "sets no current-context (pass --context)"),
    "a CA file that is missing": ("ca-file", None, None, "cannot read certificate-authority"),
}


@pytest.mark.parametrize(("setup", "flag", "context", "says"), list(ERRORS.values()), ids=list(ERRORS))
def test_unusable_credentials_are_one_line(setup: str, flag: str | None, context: str | None, says: str,
                                           two_files: tuple[Path, Path], tmp_path: Path) -> None:
    files = {"first": str(two_files[0])}
    if setup == "bad-yaml":
        (tmp_path / "bad").write_text("{: bad")
        files[setup] = str(tmp_path / "bad")
    elif setup == "list":
        (tmp_path / "list").write_text("- 1\n")
        files[setup] = str(tmp_path / "list")
    elif setup == "no-current":
        files[setup] = str(write_config(tmp_path / "nc", current=None, contexts={"a": ("a", "u", None)},
                                        clusters={"a": "https://a"}, users={"u": {}}))
    elif setup == "ca-file":
        path = tmp_path / "ca"
        path.write_text(json.dumps({"current-context": "a", "contexts": [{"name": "a", "context": {
            "cluster": "a", "user": "u"}}], "clusters": [{"name": "a", "cluster": {
                "server": "https://a", "certificate-authority": "no/ca.crt"}}], "users": []}))
        files[setup] = str(path)
    env = {"KUBECONFIG": files.get(setup, setup)} if setup else {}
    with pytest.raises(credentials.ConfigError) as caught:
        credentials.auto_config(kubeconfig=flag, context=context, env=env)
    message = str(caught.value)
    assert "\n" not in message
    assert says.format(home=tmp_path / "home") in message


# --- exec credential plugins --------------------------------------------------------------------

PLUGIN = """#!{python}
import json, os, sys
from pathlib import Path
calls = Path(os.environ["CALLS_FILE"])
n = int(calls.read_text()) + 1 if calls.exists() else 1
calls.write_text(str(n))
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
api = info["apiVersion"]
mode = os.environ["PLUGIN_MODE"]
if mode == "fail":
    print("token service said no", file=sys.stderr)
    sys.exit(3)
status = {{}}
if mode == "cert":
    status = {{"clientCertificateData": "CERT-" + str(n), "clientKeyData": "KEY-" + str(n)}}
elif mode == "garbage":
    print("not json")
    sys.exit(0)
elif mode == "empty":
    status = {{}}
else:
    status = {{"token": sys.argv[1] + "-" + os.environ["TOKEN_PREFIX"] + "-" + str(n)}}
expires = os.environ.get("EXPIRES")
if expires:
    status["expirationTimestamp"] = expires
print(json.dumps({{"apiVersion": api, "kind": "ExecCredential", "status": status}}))
"""


def exec_kubeconfig(tmp_path: Path, *, mode: str, api: str = "client.authentication.k8s.io/v1",
                    expires: str | None = None, server: str = "http://127.0.0.1:1",
                    command: str | None = None) -> Path:
    script = tmp_path / "plugin.py"
    script.write_text(PLUGIN.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env = [{"name": "TOKEN_PREFIX", "value": "from-env"}, {"name": "PLUGIN_MODE", "value": mode},
           {"name": "CALLS_FILE", "value": str(tmp_path / "calls")}]
    if expires:
        env.append({"name": "EXPIRES", "value": expires})
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "current-context": "eks", "contexts": [{"name": "eks", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"exec": {
            "apiVersion": api, "command": command or str(script), "args": ["from-arg"], "env": env,
            "installHint": "install it with: pip install the-plugin", "interactiveMode": "Never"}}}]}))
    return path


def calls(tmp_path: Path) -> int:
    return int((tmp_path / "calls").read_text())


def in_(minutes: float) -> str:
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=minutes)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("api", ["client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"])
def test_an_exec_plugin_token_with_its_env_and_args(api: str, tmp_path: Path) -> None:
    cfg = credentials.load_kubeconfig(exec_kubeconfig(tmp_path, mode="token", api=api))
    assert cfg.auth is not None and cfg.auth.header() == "Bearer from-arg-from-env-1"
    assert calls(tmp_path) == 1


def test_an_exec_plugin_client_certificate(tmp_path: Path) -> None:
    cfg = credentials.load_kubeconfig(exec_kubeconfig(tmp_path, mode="cert"))
    assert (cfg.cert_data, cfg.key_data) == (b"CERT-1", b"KEY-1")
    assert cfg.auth is not None and cfg.auth.header() is None


# expirationTimestamp → plugin runs after load and three refreshes (it runs again within 5 min of expiry)
EXPIRY = {"no expiry": (None, 1), "an hour away": (60.0, 1), "two minutes away": (2.0, 4),
          "already past": (-1.0, 4)}


@pytest.mark.parametrize(("minutes", "runs"), list(EXPIRY.values()), ids=list(EXPIRY))
async def test_an_exec_token_is_refreshed_on_expiry(minutes: float | None, runs: int, tmp_path: Path) -> None:
    cfg = credentials.load_kubeconfig(exec_kubeconfig(
        tmp_path, mode="token", expires=in_(minutes) if minutes is not None else None))
    assert cfg.auth is not None
    for _ in range(3):
        await cfg.auth.refresh()
    assert calls(tmp_path) == runs
    assert cfg.auth.header() == f"Bearer from-arg-from-env-{runs}"


async def test_an_exec_certificate_is_refreshed_on_expiry(tmp_path: Path) -> None:
    cfg = credentials.load_kubeconfig(exec_kubeconfig(tmp_path, mode="cert", expires=in_(1)))
    assert cfg.auth is not None
    await cfg.auth.refresh()
    cert, key = cfg.auth.client_files()
    assert (Path(str(cert)).read_bytes(), Path(str(key)).read_bytes()) == (b"CERT-2", b"KEY-2")


PLUGIN_ERRORS = {
    "it fails": ("fail", None, "exec credential plugin {script}: process returned 3. token service said no"),
    "not JSON": ("garbage", None, "exec credential plugin {script}: failed to decode process output"),
    "no credential": ("empty", None, "printed an ExecCredential with neither status.token nor"),
    "not installed": ("token", "/nope/aws-iam-authenticator",
                      "exec credential plugin /nope/aws-iam-authenticator: No such file or directory "
                      "(install it with: pip install the-plugin)"),
}


@pytest.mark.parametrize(("mode", "command", "says"), list(PLUGIN_ERRORS.values()), ids=list(PLUGIN_ERRORS))
def test_an_exec_plugin_that_fails_says_why_in_one_line(mode: str, command: str | None, says: str,
                                                       tmp_path: Path) -> None:
    with pytest.raises(credentials.ConfigError) as caught:
        credentials.load_kubeconfig(exec_kubeconfig(tmp_path, mode=mode, command=command))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("context eks of ")
    assert says.format(script=tmp_path / "plugin.py") in message


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """An API server on loopback that accepts only the token named in ``state['accept']``."""
    state: dict[str, Any] = {"accept": "", "seen": []}

    async def handler(request: web.Request) -> web.Response:
        state["seen"].append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != f"Bearer {state['accept']}":
            return web.json_response({"kind": "Status", "reason": "Unauthorized", "message": "Unauthorized"},
                                     status=401)
        return web.json_response({"kind": "Namespace", "metadata": {"name": "default"}})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


async def test_a_401_runs_the_plugin_again_once(api: dict[str, Any], tmp_path: Path) -> None:
    cfg = credentials.load_kubeconfig(exec_kubeconfig(tmp_path, mode="token", server=api["url"],
                                                      expires=in_(60)))
    api["accept"] = "from-arg-from-env-2"  # the first token was revoked
    async with kube.Kube(cfg) as client:
        assert await client.get(kube.NAMESPACES, "default") is not None
        api["accept"] = "never"
        with pytest.raises(kube.Unauthorized):
            await client.get(kube.NAMESPACES, "default")
    assert api["seen"] == ["Bearer from-arg-from-env-1", "Bearer from-arg-from-env-2",
                           "Bearer from-arg-from-env-2", "Bearer from-arg-from-env-3"]


# --- in a pod -----------------------------------------------------------------------------------

def sa_dir(tmp_path: Path, token: str = "sa-token-1\n") -> Path:
    path = tmp_path / "sa"
    path.mkdir(exist_ok=True)
    (path / "token").write_text(token)
    (path / "ca.crt").write_text("ca")
    (path / "namespace").write_text("modelplane-system")
    return path


IN_CLUSTER = {
    "a pod": ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, None,
              ("https://10.0.0.1:443", "modelplane-system", "Bearer sa-token-1")),
    "IPv6": ({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}, None,
             ("https://[fd00::1]:6443", "modelplane-system", "Bearer sa-token-1")),
    "--context in a pod means the kubeconfig": (
        {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, "dev",
        ("http://127.0.0.1:1", "default", "Bearer alice-token")),
}


@pytest.mark.parametrize(("env", "context", "want"), list(IN_CLUSTER.values()), ids=list(IN_CLUSTER))
def test_in_cluster(env: dict[str, str], context: str | None, want: tuple[str, str, str], tmp_path: Path,
                    two_files: tuple[Path, Path]) -> None:
    cfg = credentials.auto_config(context=context, sa_dir=sa_dir(tmp_path),
                                  env={**env, "KUBECONFIG": str(two_files[0])})
    assert cfg.auth is not None
    assert (cfg.server, cfg.namespace, cfg.auth.header()) == want


async def test_the_service_account_token_rotates(tmp_path: Path) -> None:
    path = sa_dir(tmp_path)
    cfg = credentials.in_cluster_config(path, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    assert cfg.auth is not None and cfg.ca_data == b"ca"
    (path / "token").write_text("sa-token-2")
    await cfg.auth.refresh()
    assert cfg.auth.header() == "Bearer sa-token-1"  # re-read once a minute, as the kubernetes loader does
    cfg.auth._loader.token_expires_at = datetime.datetime.now() - datetime.timedelta(seconds=1)
    await cfg.auth.refresh()
    assert cfg.auth.header() == "Bearer sa-token-2"


def test_no_service_account_files(tmp_path: Path) -> None:
    with pytest.raises(credentials.ConfigError, match="ServiceAccount credentials in .* cannot be used"):
        credentials.in_cluster_config(tmp_path, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"})


# --- the commands ---------------------------------------------------------------------------------

def test_the_commands_take_kubectl_flags(two_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # The dev context's server is a closed port: the line names it, so the flags were followed.
    monkeypatch.setenv("KUBECONFIG", "/nope")
    assert cli.main(["pause", "chat", "--kubeconfig", str(two_files[0]), "--context", "dev"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("modelplane pause: cannot reach the API server http://127.0.0.1:1")


async def test_kopf_logs_in_with_the_same_credentials(tmp_path: Path) -> None:
    import kopf

    from modelplane.controller.handlers import login

    cfg = credentials.load_kubeconfig(exec_kubeconfig(tmp_path, mode="token", expires=in_(60)))
    memo = kopf.Memo(controller=type("C", (), {"kube": kube.Kube(cfg)})())
    info = await cast(Any, login)(memo=memo)  # kopf's decorator types it as its handler protocol
    assert (info.server, info.scheme, info.token) == ("http://127.0.0.1:1", "Bearer", "from-arg-from-env-1")
    assert info.expiration is not None and info.expiration > datetime.datetime.now(datetime.UTC)


@pytest.mark.parametrize("argv", [
    ["pause", "chat", "--kubeconfig", "{first}", "--context", "dev"],
    ["--kubeconfig", "{first}", "--context", "dev", "pause", "chat"],
    ["--context", "prod", "--kubeconfig", "{first}", "pause", "chat", "--context", "dev"],
], ids=["after the command", "before it (kubectl modelplane --context dev pause)", "the command's wins"])
def test_the_flags_before_or_after_the_command(argv: list[str], two_files: tuple[Path, Path]) -> None:
    args = cli.build_parser().parse_args([a.format(first=two_files[0]) for a in argv])
    assert credentials.from_args(args).server == "http://127.0.0.1:1"
