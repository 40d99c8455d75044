"""Where the credentials for the API server come from: kubectl's rules, through kubernetes' own loader.

The official ``kubernetes`` client's configuration loader (``kubernetes.config``) does the reading:
a ``KUBECONFIG`` list of files merged as kubectl merges it, the context chosen with ``--context``,
exec credential plugins (``client.authentication.k8s.io/v1`` and ``v1beta1``: the command is run
with its env and args, its ExecCredential's ``status.token`` or client certificate and key are used,
and it runs again when ``status.expirationTimestamp`` has passed), and the in-cluster ServiceAccount
mount, whose projected token rotates and is re-read every minute. Our own aiohttp client
(``kube.Kube``) still makes every request; from the loader it takes only the server, the CA, the
client certificate and key, the token and the way to refresh them (``Auth``).

Two places where the loader and kubectl differ are corrected here: kubectl takes ``current-context``
from the first file of a ``KUBECONFIG`` list that sets it (the loader takes the last), and a failing
exec plugin is an error that names its cause (the loader logs it and carries on without
credentials). Every failure is a ``ConfigError`` whose message is one line for a person.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from kubernetes.client import Configuration
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.dateutil import UTC, parse_rfc3339
from kubernetes.config.exec_provider import ExecProvider
from kubernetes.config.incluster_config import InClusterConfigLoader
from kubernetes.config.kube_config import (
    ENV_KUBECONFIG_PATH_SEPARATOR,
    ConfigNode,
    FileOrData,
    KubeConfigLoader,
    KubeConfigMerger,
)

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = "~/.kube/config"
#: A credential is refreshed this long before it expires, as the kubernetes loader does.
EXPIRY_SKEW = datetime.timedelta(minutes=5)


class ConfigError(ValueError):
    """The kubeconfig or the in-cluster credentials cannot be used; the message says which and why."""


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- the result: what a request needs --------------------------------------------------------


class Auth:
    """The credentials that the kubernetes loader keeps fresh, as an Authorization header and a
    client certificate.

    ``refresh()`` runs the loader's refresh, in a thread (an exec plugin is a subprocess, which must
    not block the event loop), only when it is due: the exec plugin again once its credential is
    within five minutes of ``expirationTimestamp``, the ServiceAccount token file again every
    minute. ``refresh(force=True)`` re-runs the plugin whatever the expiry says (after a 401, as
    kubectl does). A static token or certificate is never refreshed and costs nothing per request.
    """

    def __init__(self, configuration: Configuration,
                 loader: KubeConfigLoader | InClusterConfigLoader) -> None:
        self._configuration = configuration
        self._loader = loader
        self._lock = asyncio.Lock()

    def header(self) -> str | None:
        """The Authorization header's value ("Bearer …", or "Basic …" for a username and password)."""
        value = self._configuration.api_key.get("BearerToken")
        if not value:
            return None
        scheme, _, token = str(value).strip().partition(" ")
        # The in-cluster loader writes "bearer <file content>"; the header wants "Bearer <token>".
        return f"{scheme.capitalize()} {token.strip()}" if token else f"Bearer {scheme}"

    def client_files(self) -> tuple[str | None, str | None]:
        """The client certificate and key files (the loader writes data fields to private temp files)."""
        return self._configuration.cert_file or None, self._configuration.key_file or None

    def expiry(self) -> datetime.datetime | None:
        """When an exec plugin's credential expires (None: it does not say, or none is used)."""
        expiry = getattr(self._loader, "expiry", None)
        return None if expiry is None else parse_rfc3339(expiry)

    def _expired(self) -> bool:
        when = self.expiry()
        return when is not None and when - EXPIRY_SKEW <= datetime.datetime.now(tz=UTC)

    def _due(self) -> bool:
        if isinstance(self._loader, InClusterConfigLoader):
            # The loader re-reads the token file a minute after the last read.
            due_at = getattr(self._loader, "token_expires_at", None)
            return due_at is not None and due_at <= datetime.datetime.now()
        return self._expired()

    def _refresh_blocking(self, force: bool) -> None:
        try:
            if isinstance(self._loader, InClusterConfigLoader) and not force:
                self._configuration.refresh_api_key_hook(self._configuration)
            else:
                # Runs the exec plugin again (token or client certificate), or re-reads the files.
                self._loader.load_and_set(self._configuration)
        except (ConfigException, OSError, ValueError) as exc:
            raise ConfigError(f"cannot refresh the credentials: {_one_line(str(exc))}") from exc

    async def refresh(self, *, force: bool = False) -> None:
        if not (force or self._due()):
            return
        async with self._lock:
            if force or self._due():  # another request may have refreshed it meanwhile
                await asyncio.to_thread(self._refresh_blocking, force)

    @property
    def refreshable(self) -> bool:
        """Whether running the loader again can give another credential (exec plugins, the SA token)."""
        if isinstance(self._loader, InClusterConfigLoader):
            return True
        return "exec" in (self._loader._user or {})


@dataclass(frozen=True)
class KubeConfig:
    """How to reach and authenticate to one API server."""

    server: str
    ca_data: bytes | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    token: str | None = None
    insecure: bool = False
    namespace: str = "default"
    #: The name the server's certificate is checked against, when it is not the server's host.
    tls_server_name: str | None = None
    #: An HTTP proxy for the API server (the cluster's ``proxy-url``).
    proxy: str | None = None
    #: Where the context came from, for error messages: "context kind-dev of ~/.kube/config".
    source: str = ""
    #: Honour HTTPS_PROXY/HTTP_PROXY/NO_PROXY for the API server, as kubectl does from a kubeconfig.
    #: Never in a pod: the API server is in the cluster, and a proxy meant for the Internet would
    #: be asked for it unless NO_PROXY happened to list its address.
    trust_env: bool = False
    #: Credentials that change (exec plugins, the rotating ServiceAccount token); None: static ones.
    auth: Auth | None = field(default=None, compare=False, repr=False)


# --- kubeconfig files -------------------------------------------------------------------------


def kubeconfig_paths(kubeconfig: str | os.PathLike[str] | None = None,
                     env: Mapping[str, str] | None = None) -> tuple[list[Path], bool]:
    """The files to read, and whether they come from ``--kubeconfig``, by kubectl's rules.

    ``--kubeconfig`` names one file, which must exist. Otherwise ``$KUBECONFIG`` is a list
    (colon-separated; empty entries and missing files are skipped), else ``~/.kube/config``.
    """
    env = os.environ if env is None else env
    if kubeconfig:
        return [Path(os.path.expanduser(str(kubeconfig)))], True
    listed = env.get("KUBECONFIG", "")
    if listed:
        return [Path(os.path.expanduser(p)) for p in listed.split(ENV_KUBECONFIG_PATH_SEPARATOR) if p], False
    return [Path(os.path.expanduser(DEFAULT_KUBECONFIG))], False


def merge_kubeconfigs(paths: list[Path], *, from_flag: bool = False) -> KubeConfigMerger:
    """The files merged by the kubernetes loader, with kubectl's ``current-context`` rule.

    The first file to set a cluster, user or context by name wins, and the first to set
    ``current-context`` wins. Files of a ``KUBECONFIG`` list that do not exist are skipped, as
    kubectl skips them, unless none exists; a ``--kubeconfig`` file (``from_flag``) must exist.
    ``ConfigError`` names the file that cannot be used and why.
    """
    hint = "--kubeconfig" if from_flag else "set KUBECONFIG or create ~/.kube/config"
    existing = [p for p in paths if p.exists()]
    missing = [p for p in paths if not p.exists()]
    if from_flag and missing or not existing:
        if len(paths) == 1:
            raise ConfigError(f"cannot read kubeconfig {paths[0]}: No such file or directory ({hint})")
        raise ConfigError(f"none of the kubeconfig files in KUBECONFIG exists: "
                          f"{ENV_KUBECONFIG_PATH_SEPARATOR.join(map(str, paths))} ({hint})")
    for path in existing:
        _check_file(path)
    try:
        merger = KubeConfigMerger(ENV_KUBECONFIG_PATH_SEPARATOR.join(str(p) for p in existing))
    except (ConfigException, KeyError, TypeError) as exc:
        raise ConfigError(f"the kubeconfig files {', '.join(map(str, existing))} cannot be merged: "
                          f"{_one_line(str(exc))}") from exc
    # kubectl: the first file that sets current-context wins (the loader lets the last one win).
    for path in merger.paths:
        current = merger.config_files[path].get("current-context")
        if current:
            merger.config_merged.value["current-context"] = current
            break
    return merger


def _check_file(path: Path) -> None:
    """Refuse, naming the file, what the loader would fail on with a traceback or a vague message."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read kubeconfig {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        what = (f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"  # type: ignore[attr-defined]
                if mark is not None else _one_line(str(exc)))
        raise ConfigError(f"kubeconfig {path} is not YAML: {what}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path} is not a kubeconfig (a YAML mapping)")
    for key in ("clusters", "contexts", "users"):
        entries = doc.get(key) or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) and e.get("name") for e in entries):
            raise ConfigError(f"kubeconfig {path}: {key} must be a list of entries with a name")


class _Loader(KubeConfigLoader):  # type: ignore[misc]
    """kubernetes' loader, except that an exec plugin that fails is an error naming its cause.

    The parent logs the failure and goes on without credentials, so the user would see only the
    API server's 401. The rest is the parent's: the plugin is run by ``ExecProvider`` with its env,
    args and ``KUBERNETES_EXEC_INFO``; a client certificate it returns is written to private temp
    files; ``expirationTimestamp`` sets ``expiry``, after which the loader runs it again.
    """

    def _load_from_exec_plugin(self) -> bool | None:
        if "exec" not in self._user:
            return None
        exec_config = self._user["exec"]
        base_path = self._get_base_path(self._cluster.path)
        command = exec_config.safe_get("command") or "(no command)"
        try:
            status = ExecProvider(exec_config, base_path, self._cluster).run()
        except OSError as exc:  # not found, not executable
            hint = exec_config.safe_get("installHint")
            raise ConfigException(f"exec credential plugin {command}: {exc.strerror or exc}"
                                  + (f" ({_one_line(str(hint))})" if hint else "")) from exc
        except ConfigException as exc:
            raise ConfigException(f"exec credential plugin {command}: "
                                  f"{str(exc).removeprefix('exec: ')}") from exc
        if not isinstance(status, dict):
            raise ConfigException(f"exec credential plugin {command}: status is not a mapping")
        if status.get("token"):
            self.token = f"Bearer {status['token']}"
        elif status.get("clientCertificateData") and status.get("clientKeyData"):
            for attr, key in (("cert_file", "clientCertificateData"), ("key_file", "clientKeyData")):
                setattr(self, attr, FileOrData(status, None, data_key_name=key, file_base_path=base_path,
                                               base64_file_content=False,
                                               temp_file_path=self._temp_file_path).as_file())
        else:
            raise ConfigException(f"exec credential plugin {command} printed an ExecCredential with "
                                  "neither status.token nor status.clientCertificateData and clientKeyData")
        if status.get("expirationTimestamp"):
            try:
                self.expiry = parse_rfc3339(status["expirationTimestamp"])
            except ValueError as exc:
                raise ConfigException(f"exec credential plugin {command}: {exc}") from exc
        return True


def _entries(merged: Mapping[str, Any], key: str, inner: str) -> dict[str, tuple[dict[str, Any], Path]]:
    """A merged list (``contexts``, ``clusters``, ``users``) by name: each entry's ``inner`` mapping
    and the directory of the file it came from (relative paths in it are relative to that)."""
    named: dict[str, tuple[dict[str, Any], Path]] = {}
    for entry in merged.get(key) or []:
        value = entry.value if isinstance(entry, ConfigNode) else entry
        base = Path(entry.path).parent if isinstance(entry, ConfigNode) and entry.path else Path()
        named[str(value["name"])] = (dict(value.get(inner) or {}), base)
    return named


def _check_files(entry: Mapping[str, Any], base: Path, keys: tuple[str, ...], where: str) -> None:
    """A file a kubeconfig entry names must be readable (the loader's message names no key)."""
    for key in keys:
        if entry.get(key) and not entry.get(f"{key}-data"):
            path = base / os.path.expanduser(str(entry[key]))
            try:
                path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"kubeconfig {where}: cannot read {key} {path}: {exc.strerror}") from exc


def _read(path: str | None, what: str, source: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read {what} {path}: {exc.strerror}") from exc


def load_kubeconfig(path: str | os.PathLike[str] | None = None, *, context: str | None = None,
                    env: Mapping[str, str] | None = None) -> KubeConfig:
    """The credentials of a kubeconfig context, by kubectl's rules (``kubeconfig_paths``).

    ``path`` is ``--kubeconfig``, ``context`` is ``--context`` (default: the merged
    ``current-context``). Raises ``ConfigError`` naming the file and the problem: missing or
    unreadable, not YAML, no such context, a context without a cluster server, a certificate file
    that cannot be read, or an exec plugin that fails.
    """
    paths, from_flag = kubeconfig_paths(path, env)
    merger = merge_kubeconfigs(paths, from_flag=from_flag)
    where = ", ".join(map(str, merger.paths))
    merged = merger.config_merged.value
    name = context or merged.get("current-context")
    if not name:
        raise ConfigError(f"kubeconfig {where} sets no current-context (pass --context)")
    contexts = _entries(merged, "contexts", "context")
    clusters, users = _entries(merged, "clusters", "cluster"), _entries(merged, "users", "user")
    if name not in contexts:
        known = f" (it has: {', '.join(contexts)})" if contexts else ""
        raise ConfigError(f"kubeconfig {where} has no context {name!r}{known}")
    ctx = contexts[name][0]
    cluster, cluster_base = clusters.get(str(ctx.get("cluster")), ({}, Path()))
    if not cluster.get("server"):
        raise ConfigError(f"kubeconfig {where}: context {name!r} names cluster {ctx.get('cluster')!r}, "
                          "which has no server")
    _check_files(cluster, cluster_base, ("certificate-authority",), where)
    user, user_base = users.get(str(ctx.get("user")), ({}, Path()))
    _check_files(user, user_base, ("client-certificate", "client-key", "tokenFile"), where)
    source = f"context {name} of {where}"
    try:
        loader = _Loader(config_dict=merger.config, active_context=name, config_base_path=None)
        configuration = Configuration()
        loader.load_and_set(configuration)
    except ConfigException as exc:
        raise ConfigError(f"{source}: {_one_line(str(exc))}") from exc
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read {exc.filename}: {exc.strerror}") from exc
    except ValueError as exc:  # bad base64 in a *-data field
        raise ConfigError(f"{source}: {_one_line(str(exc))}") from exc
    return _from_configuration(configuration, loader, namespace=str(ctx.get("namespace") or "default"),
                               source=source, trust_env=True)


def _is_loopback(url: str) -> bool:
    """A server on this machine: never through a proxy (Go's ProxyFromEnvironment, hence kubectl,
    skips localhost and loopback addresses whatever NO_PROXY says)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _from_configuration(configuration: Configuration, loader: KubeConfigLoader | InClusterConfigLoader, *,
                        namespace: str, source: str, trust_env: bool) -> KubeConfig:
    auth = Auth(configuration, loader)
    cert_file, key_file = auth.client_files()
    return KubeConfig(
        server=str(configuration.host).rstrip("/"),
        ca_data=_read(configuration.ssl_ca_cert, "certificate-authority", source),
        cert_data=_read(cert_file, "client-certificate", source),
        key_data=_read(key_file, "client-key", source),
        insecure=not configuration.verify_ssl,
        namespace=namespace,
        tls_server_name=configuration.tls_server_name or None,
        proxy=configuration.proxy or None,
        source=source,
        trust_env=trust_env and not configuration.proxy and not _is_loopback(str(configuration.host)),
        auth=auth,
    )


# --- in a pod ---------------------------------------------------------------------------------


def in_cluster_config(sa_dir: Path = SA_DIR, env: Mapping[str, str] | None = None) -> KubeConfig:
    """The ServiceAccount credentials mounted into a pod; the token is re-read every minute."""
    env = os.environ if env is None else env
    if not env.get("KUBERNETES_SERVICE_HOST"):
        raise ConfigError("not running in a cluster: KUBERNETES_SERVICE_HOST is not set")
    environ = {"KUBERNETES_SERVICE_PORT": "443", **env}
    loader = InClusterConfigLoader(token_filename=str(sa_dir / "token"), cert_filename=str(sa_dir / "ca.crt"),
                                   environ=environ)
    configuration = Configuration()
    try:
        loader.load_and_set(configuration)
        namespace = (sa_dir / "namespace").read_text().strip()
    except ConfigException as exc:
        raise ConfigError(f"the ServiceAccount credentials in {sa_dir} cannot be used: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read the ServiceAccount credentials in {sa_dir}: {exc.strerror}") from exc
    return _from_configuration(configuration, loader, namespace=namespace or "default",
                               source=f"the ServiceAccount in {sa_dir}", trust_env=False)


def auto_config(*, kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None,
                sa_dir: Path = SA_DIR, env: Mapping[str, str] | None = None) -> KubeConfig:
    """What kubectl would use: the kubeconfig when ``--kubeconfig`` or ``--context`` is given,
    the ServiceAccount inside a pod, the kubeconfig otherwise."""
    env = os.environ if env is None else env
    if not kubeconfig and not context and env.get("KUBERNETES_SERVICE_HOST") and (sa_dir / "token").exists():
        return in_cluster_config(sa_dir, env)
    return load_kubeconfig(kubeconfig, context=context, env=env)


def ssl_context(cfg: KubeConfig) -> ssl.SSLContext | bool:
    """The TLS settings of ``cfg``; a client certificate is loaded from files the loader wrote."""
    if not cfg.server.startswith("https"):
        return False
    if cfg.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif cfg.ca_data:
        ctx = ssl.create_default_context(cadata=cfg.ca_data.decode())
    else:
        ctx = ssl.create_default_context()
    load_client_cert(ctx, cfg.cert_data, cfg.key_data)
    return ctx


def load_client_cert(ctx: ssl.SSLContext, cert: bytes | None, key: bytes | None) -> None:
    """Load a client certificate into ``ctx`` (again after a refresh: new connections use the new one)."""
    if not (cert and key):
        return
    import tempfile

    # ssl can only load a client certificate from files; keep them private and short-lived.
    with tempfile.TemporaryDirectory(prefix="modelplane-tls-") as tmp:
        cert_path, key_path = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert_path.write_bytes(cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        ctx.load_cert_chain(str(cert_path), str(key_path))


# --- the command line -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    """kubectl's ``--kubeconfig`` and ``--context``: on a subcommand that talks to the cluster, and
    on the top-level parser so that ``kubectl modelplane --context prod get chat`` works too (the
    subcommand's own copy has no default, so it does not overwrite the top-level one)."""
    default = None if top_level else argparse.SUPPRESS
    parser.add_argument("--kubeconfig", default=default, metavar="FILE",
                        help="kubeconfig file to use (default: $KUBECONFIG, a list merged as kubectl "
                             "merges it, else ~/.kube/config; in a pod: the ServiceAccount)")
    parser.add_argument("--context", default=default,
                        help="kubeconfig context to use (default: the current-context)")


def from_args(args: argparse.Namespace) -> KubeConfig:
    """The credentials the ``--kubeconfig`` and ``--context`` flags (or their absence) select."""
    return auto_config(kubeconfig=getattr(args, "kubeconfig", None), context=getattr(args, "context", None))
